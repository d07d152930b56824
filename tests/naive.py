"""Naive float64 loops, written independently of the ops, that check the reference math.

One pixel (memory), one caption-image pair (word-region) or one logit (the DAMSM losses) at a
time, in plain Python over small tensors. Slow on purpose: use tiny inputs.
"""
import math

import torch


def _softmax(values, keep):
    """Softmax over the entries where keep is True; all zeros when none is kept."""
    kept = [v for v, k in zip(values, keep) if k]
    if not kept:
        return [0.0] * len(values)
    top = max(kept)
    exps = [math.exp(v - top) if k else 0.0 for v, k in zip(values, keep)]
    total = sum(exps)
    return [e / total for e in exps]


def memory_read(query, key, value, mask=None, scale=1.0, mask_compat=False):
    """Returns out (B,Cv,H,W) and attn (B,T,H,W), pixel by pixel."""
    batch, channels, height, width = query.shape
    slots, n_pixels = key.shape[2], height * width
    q = query.double().reshape(batch, channels, n_pixels)
    out = torch.zeros(batch, value.shape[1], n_pixels, dtype=torch.float64)
    attn = torch.zeros(batch, slots, n_pixels, dtype=torch.float64)
    for b in range(batch):
        for n in range(n_pixels):
            row = (b * n_pixels + n) % batch if mask_compat else b
            keep = [mask is None or not bool(mask[row, t]) for t in range(slots)]
            scores = [scale * float(q[b, :, n] @ key[b, :, t].double()) for t in range(slots)]
            alpha = _softmax(scores, keep)
            for t in range(slots):
                attn[b, t, n] = alpha[t]
                out[b, :, n] += alpha[t] * value[b, :, t].double()
    return out.reshape(batch, -1, height, width), attn.reshape(batch, slots, height, width)


def response_gate(h, o, weight, bias):
    batch, channels, height, width = h.shape
    w = weight.double().reshape(-1)
    out = torch.zeros(h.shape, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                hv, ov = h[b, :, y, x].double(), o[b, :, y, x].double()
                z = float(w[:channels] @ hv + w[channels:] @ ov) + float(bias.reshape(()))
                g = 1.0 / (1.0 + math.exp(-z))
                out[b, :, y, x] = hv * (1 - g) + g * ov
    return out


def word_region_pair(words, regions, n_words, gamma1):
    """One caption (D,T) with its first n_words valid against one image (D,R).

    Returns context (D,T) and attn (T,R); padded words get zeros.
    """
    dim, slots = words.shape
    n_regions = regions.shape[1]
    w, r = words.double(), regions.double()
    a = [_softmax([float(r[:, j] @ w[:, t]) for t in range(slots)],
                  [t < n_words for t in range(slots)]) for j in range(n_regions)]
    context = torch.zeros(dim, slots, dtype=torch.float64)
    attn = torch.zeros(slots, n_regions, dtype=torch.float64)
    for t in range(n_words):
        beta = _softmax([gamma1 * a[j][t] for j in range(n_regions)], [True] * n_regions)
        for j in range(n_regions):
            attn[t, j] = beta[j]
            context[:, t] += beta[j] * r[:, j]
    return context, attn


def word_region_similarity(regions, words, cap_lens, gamma1, gamma2):
    n_img, dim = regions.shape[:2]
    flat = regions.reshape(n_img, dim, -1)
    sim = torch.zeros(n_img, words.shape[0], dtype=torch.float64)
    for j in range(n_img):
        for i in range(words.shape[0]):
            n_words = int(cap_lens[i])
            context, _ = word_region_pair(words[i], flat[j], n_words, gamma1)
            total = 0.0
            for t in range(n_words):
                w, c = words[i, :, t].double(), context[:, t]
                cos = float(w @ c) / max(float(w.norm() * c.norm()), 1e-8)
                total += math.exp(gamma2 * cos)
            sim[j, i] = math.log(total)
    return sim


def sentence_similarity(image_code, sent_code, eps=1e-8):
    """(B, B) cosines of image i's code with sentence j's, the norm product clamped at eps."""
    n = image_code.shape[0]
    sim = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            x, y = image_code[i].double(), sent_code[j].double()
            sim[i, j] = float(x @ y) / max(float(x.norm() * y.norm()), eps)
    return sim


def matching_losses(sim, class_ids=None):
    """The two mean cross-entropies of a (B, B) logit matrix whose row i is image i and column
    j caption j, the right match on the diagonal: over each row (image -> caption), then over
    each column (caption -> image); pairs i != j of the same class are no negatives."""
    n = sim.shape[0]

    def cross_entropy(logit):
        total = 0.0
        for i in range(n):
            kept = [logit(i, j) for j in range(n)
                    if j == i or class_ids is None or class_ids[i] != class_ids[j]]
            top = max(kept)
            total += top + math.log(sum(math.exp(v - top) for v in kept)) - logit(i, i)
        return total / n

    return (cross_entropy(lambda i, j: float(sim[i, j])),
            cross_entropy(lambda i, j: float(sim[j, i])))

"""Eager implementations in the style of the upstream code (AttnGAN / DM-GAN), written from
their published descriptions. They are the baselines the drop-in modules must equal and the
benchmarks compare against (the per-caption loop of `words_loss`)."""
import torch
import torch.nn.functional as F


def func_attention(words, regions, gamma1):
    """words (B,D,T), regions (B,D,H,W) -> context (B,D,T), attn (B,T,H,W); no mask."""
    batch, dim, height, width = regions.shape
    flat = regions.reshape(batch, dim, -1)
    attn = torch.bmm(flat.transpose(1, 2), words)                    # (B, R, T)
    attn = torch.softmax(attn, dim=2).transpose(1, 2) * gamma1       # word softmax per region
    attn = torch.softmax(attn, dim=2)                                # region softmax per word
    context = torch.bmm(flat, attn.transpose(1, 2))
    return context, attn.reshape(batch, -1, height, width)


def cosine(x, y, dim, eps=1e-8):
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim)).clamp(min=eps)


def word_similarity_loop(regions, words, cap_lens, gamma1=4.0, gamma2=5.0):
    """The per-caption loop: S (B_img, B_cap), one func_attention call per caption."""
    n_img = regions.shape[0]
    columns = []
    for i in range(words.shape[0]):
        n_words = int(cap_lens[i])
        word = words[i:i + 1, :, :n_words].expand(n_img, -1, -1)
        context, _ = func_attention(word, regions, gamma1)
        sim = cosine(word, context, dim=1)                           # (B_img, n_words)
        columns.append(torch.log(torch.exp(gamma2 * sim).sum(dim=1, keepdim=True)))
    return torch.cat(columns, dim=1)


def class_mask(class_ids):
    ids = torch.as_tensor(class_ids)
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool)


def words_loss(regions, words, cap_lens, class_ids=None, gamma1=4.0, gamma2=5.0, gamma3=10.0):
    sim = gamma3 * word_similarity_loop(regions, words, cap_lens, gamma1, gamma2)
    if class_ids is not None:
        sim = sim.masked_fill(class_mask(class_ids).to(sim.device), float("-inf"))
    labels = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(sim, labels), F.cross_entropy(sim.t(), labels)


def sent_loss(img_code, sent_code, class_ids=None, gamma3=10.0, eps=1e-8):
    scores = torch.mm(img_code, sent_code.t())
    norms = torch.mm(img_code.norm(dim=1, keepdim=True), sent_code.norm(dim=1, keepdim=True).t())
    scores = gamma3 * scores / norms.clamp(min=eps)
    if class_ids is not None:
        scores = scores.masked_fill(class_mask(class_ids).to(scores.device), float("-inf"))
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def memory_tiled(query, key, value, mask):
    """DM-GAN Memory.forward with the upstream tiled mask (AttnGAN #93)."""
    batch, channels, height, width = query.shape
    n_pixels = height * width
    weight = torch.bmm(query.reshape(batch, channels, n_pixels).transpose(1, 2), key)
    weight = weight.reshape(batch * n_pixels, -1)
    if mask is not None:
        weight = weight.masked_fill(mask.repeat(n_pixels, 1), float("-inf"))
    weight = torch.softmax(weight, dim=1).reshape(batch, n_pixels, -1).transpose(1, 2)
    return torch.bmm(value, weight).reshape(batch, -1, height, width), \
        weight.reshape(batch, -1, height, width)

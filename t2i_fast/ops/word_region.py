"""The word-region family: word_region_attention and word_region_similarity (DAMSM / ITM).

Math for one caption (words w, D x T) and one image (regions r, D x R), valid words t < len:

    s[r,t]   = sum_d r[d,r] w[d,t]
    a[r,t]   = softmax over the valid words t of s[r,t]            (per region: AttnGAN eq. 8)
    b[t,r]   = softmax over the regions r of gamma1 * a[r,t]        (per word:   AttnGAN eq. 9)
    c[d,t]   = sum_r r[d,r] b[t,r]                                  (word context)

word_region_attention returns c and b (as attn (B,T,H,W)) for index-paired inputs; padded words
get context 0 and attention 0. word_region_similarity scores every image j against every caption
i at once:

    S[j,i] = log sum_{t < len_i} exp(gamma2 * cos(w_i[:,t], c_ji[:,t]))

in the upstream code's form (no 1/gamma2; cosine with the norm product clamped at 1e-8).

The reference implementations come first. The fast backends compute all B_img x B_cap pairs in
one launch and save O(B_img * B_cap * T) statistics for backward instead of B^2 * R * T
attention maps.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from t2i_fast import backends
from t2i_fast.ops import _checks
from t2i_fast.ops._autograd import forbid_double_backward
from t2i_fast.ops._math import cosine, safe_softmax


# --------------------------------------------------------------------------------------------
# Reference implementations
# --------------------------------------------------------------------------------------------

def _double_softmax(scores, word_pad, gamma1):
    """scores (..., R, T), word_pad (..., 1, T) -> b (..., T, R); padded words get zeros."""
    a = safe_softmax(scores, word_pad, dim=-1)
    b = torch.softmax(gamma1 * a.transpose(-1, -2), dim=-1)
    if word_pad is None:
        return b
    return b.masked_fill(word_pad.transpose(-1, -2), 0.0)


def word_region_attention_reference(words, regions, gamma1, word_mask=None):
    batch, dim, height, width = regions.shape
    flat = regions.reshape(batch, dim, height * width)
    scores = torch.einsum("bdr,bdt->brt", flat, words)
    pad = None if word_mask is None else word_mask[:, None, :]
    attn = _double_softmax(scores, pad, gamma1)
    context = torch.einsum("bdr,btr->bdt", flat, attn)
    return context, attn.reshape(batch, words.shape[2], height, width)


def word_region_similarity_reference(regions, words, cap_lens, gamma1=4.0, gamma2=5.0):
    n_img, dim, height, width = regions.shape
    slots = words.shape[2]
    flat = regions.reshape(n_img, dim, height * width)
    pad = torch.arange(slots, device=words.device)[None, :] >= cap_lens[:, None]   # (Bc, T)
    scores = torch.einsum("jdr,idt->jirt", flat, words)
    attn = _double_softmax(scores, pad[None, :, None, :], gamma1)                  # (j,i,T,R)
    context = torch.einsum("jdr,jitr->jidt", flat, attn)
    cos = cosine(words[None], context, dim=2)                                       # (j,i,T)
    return torch.logsumexp((gamma2 * cos).masked_fill(pad[None], float("-inf")), dim=2)


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------

def word_region_attention(words, regions, gamma1, word_mask=None, *, impl=None):
    """AttnGAN's func_attention with an optional word mask, for index-paired inputs.

    words (B,D,T), regions (B,D,H,W), word_mask bool (B,T) True = padded or None
    -> context (B,D,T), attn (B,T,H,W).
    """
    op = "word_region_attention"
    _checks.tensor(op, "words", words, 3)
    _checks.tensor(op, "regions", regions, 4)
    words, regions = _checks.autocast(words.device, words, regions)
    _checks.size(op, "regions", regions, 0, words.shape[0], "the batch B of words")
    _checks.size(op, "regions", regions, 1, words.shape[1], "the width D of words")
    _checks.same(op, "words", words, regions=regions)
    _checks.mask(op, "word_mask", word_mask, words.shape[0], words.shape[2], words.device)
    _checks.at_least_one(op, "words", words, (2,), "word slot (T >= 1)")
    _checks.at_least_one(op, "regions", regions, (2, 3), "region (H*W >= 1)")
    gamma1 = float(gamma1)
    backend = backends.select(op, words.device, words.dtype, impl,
                              empty=_checks.empty(words, regions), batch=words.shape[0],
                              slots=words.shape[2], gamma1=gamma1)
    if backend == "reference":
        return word_region_attention_reference(words, regions, gamma1, word_mask)
    batch, dim, height, width = regions.shape
    context, attn, _ = _attention_forward(
        words, regions.reshape(batch, dim, height * width), word_mask, gamma1, backend)
    return context, attn.reshape(batch, words.shape[2], height, width)


def word_region_similarity(regions, words, cap_lens, gamma1=4.0, gamma2=5.0, *, impl=None):
    """DAMSM word-level similarity of every image with every caption.

    regions (B_img,D,H,W), words (B_cap,D,T), cap_lens (B_cap,) ints in 1..T
    -> S (B_img, B_cap), rows images, columns captions.
    """
    op = "word_region_similarity"
    _checks.tensor(op, "regions", regions, 4)
    _checks.tensor(op, "words", words, 3)
    regions, words = _checks.autocast(regions.device, regions, words, lower=False)
    _checks.size(op, "words", words, 1, regions.shape[1], "the width D of regions")
    _checks.same(op, "regions", regions, words=words)
    _checks.at_least_one(op, "words", words, (2,), "word slot (T >= 1)")
    _checks.at_least_one(op, "regions", regions, (2, 3), "region (H*W >= 1)")
    cap_lens = _checks.lengths(op, "cap_lens", cap_lens, words.shape[0], words.shape[2],
                               words.device)
    gamma1, gamma2 = float(gamma1), float(gamma2)
    backend = backends.select(op, regions.device, regions.dtype, impl,
                              empty=_checks.empty(regions, words), images=regions.shape[0],
                              captions=words.shape[0], slots=words.shape[2], gamma1=gamma1)
    if backend == "reference":
        return word_region_similarity_reference(regions, words, cap_lens, gamma1, gamma2)
    n_img, dim, height, width = regions.shape
    sim, _ = _similarity_forward(regions.reshape(n_img, dim, height * width), words, cap_lens,
                                 gamma1, gamma2, backend)
    return sim


# --------------------------------------------------------------------------------------------
# The fast path: custom-op pairs registered for torch.compile, autograd by recomputation
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("t2i_fast::word_region_similarity_fwd", mutates_args=())
def _similarity_forward(regions: Tensor, words: Tensor, cap_lens: Tensor, gamma1: float,
                        gamma2: float, backend: str) -> Tuple[Tensor, Tensor]:
    outs = backends.kernel(backend, "word_region_similarity_forward")(
        regions, words, cap_lens, gamma1, gamma2)
    return tuple(outs)


@_similarity_forward.register_fake
def _(regions, words, cap_lens, gamma1, gamma2, backend):
    n_img, n_cap, slots = regions.shape[0], words.shape[0], words.shape[2]
    return (regions.new_empty(n_img, n_cap),
            regions.new_empty(n_img, n_cap, slots, dtype=torch.float32))


@torch.library.custom_op("t2i_fast::word_region_similarity_bwd", mutates_args=())
def _similarity_backward(grad_s: Tensor, regions: Tensor, words: Tensor, cap_lens: Tensor,
                         lse: Tensor, gamma1: float, gamma2: float,
                         backend: str) -> Tuple[Tensor, Tensor]:
    outs = backends.kernel(backend, "word_region_similarity_backward")(
        grad_s, regions, words, cap_lens, lse, gamma1, gamma2)
    return tuple(outs)


@_similarity_backward.register_fake
def _(grad_s, regions, words, cap_lens, lse, gamma1, gamma2, backend):
    return (torch.empty_like(regions, memory_format=torch.contiguous_format),
            torch.empty_like(words, memory_format=torch.contiguous_format))


def _similarity_setup(ctx, inputs, output):
    regions, words, cap_lens, gamma1, gamma2, backend = inputs
    ctx.save_for_backward(regions, words, cap_lens, output[1])
    ctx.gamma1, ctx.gamma2, ctx.backend = gamma1, gamma2, backend


def _similarity_grads(ctx, grad_s, grad_lse):
    regions, words, cap_lens, lse = ctx.saved_tensors
    d_regions, d_words = _similarity_backward(grad_s, regions, words, cap_lens, lse,
                                              ctx.gamma1, ctx.gamma2, ctx.backend)
    return d_regions, d_words, None, None, None, None


@torch.library.custom_op("t2i_fast::word_region_attention_fwd", mutates_args=())
def _attention_forward(words: Tensor, regions: Tensor, word_mask: Optional[Tensor],
                       gamma1: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    outs = backends.kernel(backend, "word_region_attention_forward")(
        words, regions, word_mask, gamma1)
    return tuple(outs)


@_attention_forward.register_fake
def _(words, regions, word_mask, gamma1, backend):
    batch, dim, slots = words.shape
    return (words.new_empty(batch, dim, slots), words.new_empty(batch, slots, regions.shape[2]),
            words.new_empty(batch, slots, dtype=torch.float32))


@torch.library.custom_op("t2i_fast::word_region_attention_bwd", mutates_args=())
def _attention_backward(grad_context: Tensor, grad_attn: Optional[Tensor], words: Tensor,
                        regions: Tensor, word_mask: Optional[Tensor], lse: Tensor,
                        gamma1: float, backend: str) -> Tuple[Tensor, Tensor]:
    outs = backends.kernel(backend, "word_region_attention_backward")(
        grad_context, grad_attn, words, regions, word_mask, lse, gamma1)
    return tuple(outs)


@_attention_backward.register_fake
def _(grad_context, grad_attn, words, regions, word_mask, lse, gamma1, backend):
    return (torch.empty_like(words, memory_format=torch.contiguous_format),
            torch.empty_like(regions, memory_format=torch.contiguous_format))


def _attention_setup(ctx, inputs, output):
    words, regions, word_mask, gamma1, backend = inputs
    ctx.save_for_backward(words, regions, word_mask, output[2])
    ctx.gamma1, ctx.backend = gamma1, backend
    ctx.set_materialize_grads(False)


def _attention_grads(ctx, grad_context, grad_attn, grad_lse):
    words, regions, word_mask, lse = ctx.saved_tensors
    if grad_context is None:
        grad_context = torch.zeros_like(words)
    d_words, d_regions = _attention_backward(grad_context, grad_attn, words, regions, word_mask,
                                             lse, ctx.gamma1, ctx.backend)
    return d_words, d_regions, None, None, None


_similarity_forward.register_autograd(_similarity_grads, setup_context=_similarity_setup)
_attention_forward.register_autograd(_attention_grads, setup_context=_attention_setup)
forbid_double_backward(_similarity_backward, "word_region_similarity")
forbid_double_backward(_attention_backward, "word_region_attention")

"""What the tests of word_region_attention and word_region_similarity share: named cases,
random inputs in both layouts, and the comparison of a backend's outputs, every gradient and the
kernels' per-word log-sum-exp with the float64 reference."""
import math
from dataclasses import dataclass

import torch

from conftest import (assert_all_close, assert_close, cast_floats, named, padding_mask,
                      statistic_dtype)
from t2i_fast import backends, ops
from t2i_fast.ops._math import safe_softmax


@dataclass(frozen=True)
class Case:
    """Word width D, slots T, regions height x width, one length per caption (similarity: in
    1..T; attention: 0..T, 0 being a fully padded caption)."""
    dim: int
    slots: int
    height: int
    width: int
    lengths: tuple
    images: int = 0            # similarity's B_img (attention pairs image b with caption b)
    mask: str = "lengths"      # attention: "lengths", "holes" (random, one row all padded), "none"
    layout: str = "contiguous"  # or "transposed": (B, H, W, D) regions, (B, T, D) words storage
    grad_attn: str = "given"   # attention: "given" or "none" (the loss reads the context only)
    gamma1: float = 4.0
    gamma2: float = 5.0
    seed: int = 0
    shape_id: str = ""         # the test id, when the sizes alone do not say enough

    def __str__(self):
        images = f"{self.images}x" if self.images else ""
        return self.shape_id or (f"{images}{self.captions}-D{self.dim}-T{self.slots}-"
                                 f"{self.height}x{self.width}-{self.mask}-{self.layout}")

    @property
    def captions(self):
        return len(self.lengths)


def _randn(gen, shape, dtype, device, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device, dtype)


def make_inputs(case, dtype, device):
    """regions (B_img, D, H, W), words (B_cap, D, T), cap_lens (B_cap,), word_mask (B_cap, T)."""
    gen = torch.Generator().manual_seed(case.seed)
    n_img = case.images or case.captions
    shape_r, shape_w = (n_img, case.height, case.width, case.dim), \
        (case.captions, case.slots, case.dim)
    if case.layout == "transposed":
        regions = _randn(gen, shape_r, dtype, device).permute(0, 3, 1, 2)
        words = _randn(gen, shape_w, dtype, device, 0.3).transpose(1, 2)
    else:
        regions = _randn(gen, shape_r, dtype, device).permute(0, 3, 1, 2).contiguous()
        words = _randn(gen, shape_w, dtype, device, 0.3).transpose(1, 2).contiguous()
    lens = torch.tensor(case.lengths, dtype=torch.long, device=device)
    if case.mask == "none":
        mask = None
    elif case.mask == "holes":
        mask = torch.rand(case.captions, case.slots, generator=gen) < 0.4
        mask[0] = True
        mask = mask.to(device)
    else:
        mask = padding_mask(lens, case.slots, device)
    return {"regions": regions, "words": words, "cap_lens": lens, "mask": mask}


def run(op, args, impl, case):
    """The public op; always a tuple (S) or (context, attn)."""
    if op == "word_region_similarity":
        return (ops.word_region_similarity(args["regions"], args["words"], args["cap_lens"],
                                           case.gamma1, case.gamma2, impl=impl),)
    return ops.word_region_attention(args["words"], args["regions"], case.gamma1, args["mask"],
                                     impl=impl)


def outputs_and_grads(op, args, impl, case, grads=None):
    """Outputs and the gradients of regions and words; `grads`: the upstream gradients (random
    float64 values rounded to the outputs' dtype when None; None entries stay out of the
    loss)."""
    leaves = {k: v.detach().clone().requires_grad_() if k in ("regions", "words") else v
              for k, v in args.items()}
    outs = run(op, leaves, impl, case)
    if grads is None:
        gen = torch.Generator().manual_seed(case.seed + 1)
        grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
                 for o in outs]
        if op == "word_region_attention":
            grads[0] = grads[0].transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous
            if case.grad_attn == "none":
                grads[1] = None
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, grads) if g is not None]
    d = torch.autograd.grad([o for o, _ in pairs], [leaves["regions"], leaves["words"]],
                            [g for _, g in pairs])
    return [o.detach() for o in outs], dict(zip(("regions", "words"), d)), grads


def lse_reference(regions, words, pad, gamma1, paired):
    """log sum over regions of exp(gamma1 * a) per word, +inf for padded words, in the inputs'
    dtype: (B_img, B_cap, T), or (B, T) for index-paired inputs."""
    flat = regions.reshape(regions.shape[0], regions.shape[1], -1)
    if paired:
        scores = torch.einsum("bdr,bdt->brt", flat, words)
        a = safe_softmax(scores, None if pad is None else pad[:, None, :], dim=-1)
        lse = torch.logsumexp(gamma1 * a, dim=1)
        return lse if pad is None else lse.masked_fill(pad, math.inf)
    scores = torch.einsum("jdr,idt->jirt", flat, words)
    a = safe_softmax(scores, pad[None, :, None, :], dim=-1)
    return torch.logsumexp(gamma1 * a, dim=2).masked_fill(pad[None], math.inf)


def kernel_forward(op, args, backend, case):
    """The backend's forward kernel called directly: (S, lse) or (context, attn, lse)."""
    regions = args["regions"]
    flat = regions.reshape(regions.shape[0], regions.shape[1], -1)
    if op == "word_region_similarity":
        return backends.kernel(backend, "word_region_similarity_forward")(
            flat, args["words"], args["cap_lens"], case.gamma1, case.gamma2)
    return backends.kernel(backend, "word_region_attention_forward")(
        args["words"], flat, args["mask"], case.gamma1)


def check(op, case, backend, dtype, device):
    """Outputs and both gradients of `backend` against the float64 reference (PyTorch in
    `dtype` setting the low-precision bound), then the kernels' per-word log-sum-exp."""
    args = make_inputs(case, dtype, device)
    outs, grads, upstream = outputs_and_grads(op, args, backend, case)
    exact = outputs_and_grads(op, cast_floats(args, torch.float64), "reference", case, upstream)
    native = outputs_and_grads(op, args, "reference", case, upstream)
    assert_all_close(named(outs, grads), named(*exact[:2]), named(*native[:2]), dtype, op)

    lse = kernel_forward(op, args, backend, case)[-1]
    assert lse.dtype == torch.float32
    paired = op == "word_region_attention"
    pad = args["mask"] if paired else padding_mask(args["cap_lens"], case.slots, device)
    low = statistic_dtype(dtype)
    exact, native = cast_floats(args, torch.float64), cast_floats(args, low)
    assert_close(lse, lse_reference(exact["regions"], exact["words"], pad, case.gamma1, paired),
                 low, lse_reference(native["regions"], native["words"], pad, case.gamma1, paired),
                 f"{op} lse")

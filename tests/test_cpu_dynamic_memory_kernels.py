"""Direct tests of the C++ CPU kernels torch.ops.t2i_fast_C.dynamic_memory_{forward,backward}.

Every output and gradient is compared with the reference implementations in
t2i_fast/ops/dynamic_memory.py (autograd for the gradients), computed in float64 from the same
values. The three variants are selected by which optional inputs are passed, as the Python layer
does: memory_read (key/value), response_gate (o + gate), dynamic_memory (key/value + gate).
"""
import pytest
import torch

from t2i_fast import _ext
from t2i_fast.ops.dynamic_memory import (memory_read_reference, pixel_mask,
                                         response_gate_reference)

pytestmark = pytest.mark.skipif(
    not _ext.has_kernel("dynamic_memory_forward", "CPU"),
    reason=f"t2i_fast._C has no CPU dynamic_memory kernel ({_ext.load()[1]})")

# The tolerance rule: |kernel - exact| <= 2 * |PyTorch's own error in the same dtype| + FLOOR *
# max(1, |exact|) * sqrt(n), where "exact" is the reference in float64, PyTorch's error that of
# the reference run in the test dtype, and n the number of pixels a gradient sums over (1 for
# per-pixel values): FLOOR covers sums in another order than PyTorch's, and PyTorch being exact
# by luck. For float64 the FLOOR term alone applies, at rounding level (the backward
# renormalises the attention, which cancels the float32 lse).
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

# name: (B, C, Cv, H, W, T). "odd" has N = 35, not a whole number of 32-pixel blocks; "units"
# has several work units per image, "chunks" several staged chunks per work unit.
SHAPES = {
    "small": (2, 8, 6, 4, 6, 5),
    "odd": (3, 5, 7, 7, 5, 4),
    "t1": (2, 4, 4, 3, 3, 1),
    "units": (2, 64, 64, 20, 20, 18),
    "chunks": (8, 4, 3, 96, 96, 3),
}
VARIANTS = ("memory_read", "response_gate", "dynamic_memory")


def make_inputs(variant, shape, dtype, mask_kind="random", noncontiguous=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C, Cv, H, W, T = shape
    if variant == "dynamic_memory":
        Cv = C

    def rand(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    x = {"h": rand(B, C, H, W) * 0.5}
    if variant == "response_gate":
        x["o"] = rand(B, C, H, W)
    else:
        x["key"] = rand(B, C, T) * 0.5
        x["value"] = rand(B, Cv, T)
    if variant != "memory_read":
        x["gate_weight"] = rand(2 * C) * 0.3
        x["gate_bias"] = rand(1)
    x = {k: v.to(dtype) for k, v in x.items()}
    if noncontiguous:  # same values, strided layouts
        x["h"] = x["h"].transpose(2, 3).contiguous().transpose(2, 3)
        for name in ("key", "value", "o"):
            if name in x:
                wide = torch.zeros(*x[name].shape[:-1], 2 * x[name].shape[-1], dtype=dtype)
                wide[..., ::2] = x[name]
                x[name] = wide[..., ::2]
        assert not x["h"].is_contiguous()
    mask = None
    if "key" in x and mask_kind != "none":
        mask = torch.rand(B, T, generator=gen) < 0.4
        mask[:, 0] = False
        if mask_kind == "fully_masked":
            mask[0] = True  # every pixel of image 0 (and some rows under mask_compat)
    return x, mask


def run_reference(x, mask, scale, mask_compat):
    """(out, attn, gate) of the reference; attn/gate None where the variant has none."""
    attn = gate = None
    if "key" in x:
        o, attn = memory_read_reference(x["h"], x["key"], x["value"], mask, scale=scale,
                                        mask_compat=mask_compat, return_attn=True)
    else:
        o = x["o"]
    if "gate_weight" in x:
        out, gate = response_gate_reference(x["h"], o, x["gate_weight"], x["gate_bias"],
                                            return_gate=True)
    else:
        out = o
    return out, attn, gate


def run_forward(x, mask, scale, mask_compat, return_attn=True, return_gate=True):
    return torch.ops.t2i_fast_C.dynamic_memory_forward(
        x["h"], x.get("o"), x.get("key"), x.get("value"), mask, x.get("gate_weight"),
        x.get("gate_bias"), scale, mask_compat, return_attn, return_gate)


def run_backward(grads, x, mask, lse, scale, mask_compat):
    gout, gattn, ggate = grads
    return torch.ops.t2i_fast_C.dynamic_memory_backward(
        gout, gattn, ggate, x["h"], x.get("o"), x.get("key"), x.get("value"), mask,
        x.get("gate_weight"), x.get("gate_bias"), lse, scale, mask_compat)


def assert_close(actual, exact, lowp, dtype, what, summed=1):
    """`exact`: the float64 reference; `lowp`: the reference computed in `dtype` (or None);
    `summed`: how many pixels each value sums over."""
    assert actual.dtype == dtype, what
    assert actual.shape == exact.shape, what
    if exact.numel() == 0:
        return
    err = (actual.double() - exact).abs().max().item()
    bound = FLOOR[dtype] * max(1.0, exact.abs().max().item()) * summed ** 0.5
    if lowp is not None:
        bound += 2 * (lowp.double() - exact).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def reference_results(x, mask, scale, mask_compat, extras, seed, dtype):
    """The reference's outputs and input gradients, computed in `dtype`, as a dict of
    out/attn/gate/d<input>; and the upstream gradients the loss used (values of x's dtype, so
    that every run back-propagates the same numbers)."""
    xs = {k: v.to(dtype).requires_grad_() for k, v in x.items()}
    out, attn, gate = run_reference(xs, mask, scale, mask_compat)
    outs = {"out": out, "attn": attn if extras else None, "gate": gate if extras else None}
    outs = {k: o for k, o in outs.items() if o is not None}
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = {k: torch.randn(o.shape, generator=gen, dtype=torch.float64)
                .to(x["h"].dtype).double() for k, o in outs.items()}
    grads = torch.autograd.grad(list(outs.values()), list(xs.values()),
                                [upstream[k].to(dtype) for k in outs])
    results = {k: o.detach() for k, o in outs.items()}
    results.update({"d" + k: g for k, g in zip(xs, grads)})
    return results, upstream


def check(variant, shape, dtype, mask_kind="random", mask_compat=False, scale=0.7,
          noncontiguous=False, extras=True, seed=0):
    """Forward and backward against the reference; `extras`: also return attn and gate and
    back-propagate into them (grad_attn, grad_gate)."""
    x, mask = make_inputs(variant, shape, dtype, mask_kind, noncontiguous, seed)
    exact, upstream = reference_results(x, mask, scale, mask_compat, extras, seed,
                                        torch.float64)
    lowp = None
    if dtype != torch.float64:
        lowp, _ = reference_results(x, mask, scale, mask_compat, extras, seed, dtype)

    out, lse, attn, gate = run_forward(x, mask, scale, mask_compat, extras, extras)
    if "key" in x:
        check_lse(lse, x, mask, scale, mask_compat)
    else:
        assert lse.numel() == 0
    grads = [upstream[k].to(dtype) if k in upstream else None for k in ("out", "attn", "gate")]
    got = dict(zip(("dh", "do", "dkey", "dvalue", "dgate_weight", "dgate_bias"),
                   run_backward(grads, x, mask, lse, scale, mask_compat)))
    got.update(out=out, attn=attn, gate=gate)
    B, _, H, W = x["h"].shape
    summed = {"dkey": H * W, "dvalue": H * W, "dgate_weight": B * H * W, "dgate_bias": B * H * W}
    for name, value in got.items():
        if name in exact:
            assert_close(value, exact[name], lowp and lowp[name], dtype, name,
                         summed.get(name, 1))
        else:
            assert value.numel() == 0, f"{name} should be empty"


def check_lse(lse, x, mask, scale, mask_compat):
    B, C, H, W = x["h"].shape
    scores = scale * torch.einsum("bcn,bct->bnt", x["h"].double().reshape(B, C, H * W),
                                  x["key"].double())
    if mask is not None:
        scores = scores.masked_fill(pixel_mask(mask, H * W, mask_compat), float("-inf"))
    expected = torch.logsumexp(scores, dim=2)
    # A fully masked row stores +inf, so that exp(s - lse) = 0 there.
    assert lse.dtype == torch.float32 and lse.shape == (B, H * W)
    assert torch.equal(torch.isposinf(lse), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(lse[finite].double(), expected[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extras", [True, False], ids=["with_attn_gate", "out_only"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference(variant, shape, dtype, extras):
    check(variant, SHAPES[shape], dtype, extras=extras)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mask_kind,mask_compat", [
    ("none", False), ("fully_masked", False), ("random", True), ("fully_masked", True)])
@pytest.mark.parametrize("variant", ["memory_read", "dynamic_memory"])
def test_masks(variant, mask_kind, mask_compat, dtype):
    check(variant, SHAPES["odd"], dtype, mask_kind=mask_kind, mask_compat=mask_compat)


@pytest.mark.parametrize("variant", VARIANTS)
def test_noncontiguous(variant):
    check(variant, SHAPES["odd"], torch.float64, noncontiguous=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    check("dynamic_memory", SHAPES["small"], dtype)


def test_fully_masked_rows_read_zero():
    x, mask = make_inputs("memory_read", SHAPES["small"], torch.float32, "fully_masked")
    out, lse, attn, _ = run_forward(x, mask, 1.0, False)
    assert torch.all(out[0] == 0) and torch.all(attn[0] == 0)
    assert torch.all(torch.isposinf(lse[0])) and torch.all(torch.isfinite(lse[1]))


def test_backward_deterministic_across_threads():
    x, mask = make_inputs("dynamic_memory", SHAPES["units"], torch.float32)
    _, lse, _, _ = run_forward(x, mask, 1.0, False)
    grads = (torch.randn(2, 64, 20, 20), None, None)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_backward(grads, x, mask, lse, 1.0, False))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_argument_checks():
    x, mask = make_inputs("dynamic_memory", SHAPES["small"], torch.float32)
    op = torch.ops.t2i_fast_C.dynamic_memory_forward
    h, k, v, w, b = x["h"], x["key"], x["value"], x["gate_weight"], x["gate_bias"]
    with pytest.raises(RuntimeError, match="either o"):
        op(h, h, k, v, mask, w, b, 1.0, False, False, False)
    with pytest.raises(RuntimeError, match="mask must be bool"):
        op(h, None, k, v, mask.float(), w, b, 1.0, False, False, False)
    with pytest.raises(RuntimeError, match="gate_weight must have shape"):
        op(h, None, k, v, mask, w[:-1], b, 1.0, False, False, False)
    with pytest.raises(RuntimeError, match="dtype"):
        op(h, None, k.double(), v, mask, w, b, 1.0, False, False, False)

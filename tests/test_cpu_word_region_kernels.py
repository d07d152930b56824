"""The C++ kernels of t2i_fast._C called directly (torch.ops.t2i_fast_C.*), against the references.

CPU: word_region_similarity_* and word_region_attention_*, forward and every gradient, float64
(to rounding), float32 and float16/bfloat16 (the tolerance rule of conftest.py), odd region counts,
every T of SPEC §7, padded words and fully padded captions, non-contiguous inputs.
GPU (skipped without CUDA): the CUDA kernels of both families, dynamic_memory_* included, at
small sizes and at the sizes of DM-GAN, DAMSM and ITM.
"""
import pytest
import torch

from conftest import assert_close, padding_mask
from t2i_fast import _ext
from t2i_fast.ops._math import safe_softmax
from t2i_fast.ops.dynamic_memory import (memory_read_reference, pixel_mask,
                                         response_gate_reference)
from t2i_fast.ops.word_region import (word_region_attention_reference,
                                      word_region_similarity_reference)

_module, _why = _ext.load()
pytestmark = pytest.mark.skipif(_module is None, reason=f"t2i_fast._C unavailable: {_why}")
GAMMA1, GAMMA2 = 4.0, 5.0
LOWP = (torch.float16, torch.bfloat16)


def kernels():
    return torch.ops.t2i_fast_C


def has_kernel(name, key):
    return _module is not None and _ext.has_kernel(name, key)


# ---------------------------------------------------------------------------------------------
# Inputs and references
# ---------------------------------------------------------------------------------------------

def features(n, dim, count, dtype, device, contiguous, gen, scale=1.0):
    """(n, dim, count) random features; non-contiguous ones are a transposed view."""
    if contiguous:
        x = scale * torch.randn(n, dim, count, generator=gen)
        return x.to(device, dtype)
    return (scale * torch.randn(n, count, dim, generator=gen)).to(device, dtype).transpose(1, 2)


def random_lengths(n, slots, gen):
    lens = torch.randint(1, slots + 1, (n,), generator=gen)
    lens[0] = slots
    if n > 1:
        lens[-1] = 1
    return lens


def reference_lse(words, flat, pad, gamma1):
    """log-sum-exp over regions of gamma1 * a, (..., T); +inf on padded words (schema rule)."""
    scores = torch.einsum("...dr,...dt->...rt", flat, words)
    a = safe_softmax(scores, pad[..., None, :], dim=-1)
    lse = torch.logsumexp(gamma1 * a, dim=-2)
    return lse.masked_fill(pad, float("inf"))


def similarity_reference(flat, words, lens, height, width):
    regions = flat.reshape(flat.shape[0], flat.shape[1], height, width)
    return word_region_similarity_reference(regions, words, lens, GAMMA1, GAMMA2)


def attention_reference(words, flat, mask):
    batch, dim, count = flat.shape
    context, attn = word_region_attention_reference(words, flat.reshape(batch, dim, count, 1),
                                                    GAMMA1, mask)
    return context, attn.reshape(batch, -1, count)


def with_grads(fn, inputs, grads):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
    d = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs])
    return outs, d


def check_similarity(device, dtype, n_img, n_cap, dim, slots, height, width, contiguous, seed):
    gen = torch.Generator().manual_seed(seed)
    count = height * width
    flat = features(n_img, dim, count, dtype, device, contiguous, gen)
    words = features(n_cap, dim, slots, dtype, device, contiguous, gen, scale=0.3)
    lens = random_lengths(n_cap, slots, gen).to(device)
    grad_s = torch.randn(n_cap, n_img, generator=gen).to(device, dtype).t()  # non-contiguous

    sim, lse = kernels().word_region_similarity_forward(flat, words, lens, GAMMA1, GAMMA2)
    d_flat, d_words = kernels().word_region_similarity_backward(grad_s, flat, words, lens, lse,
                                                                GAMMA1, GAMMA2)
    assert sim.dtype == dtype and lse.dtype == torch.float32
    assert d_flat.dtype == dtype and d_words.dtype == dtype

    def ref(f, w):
        return similarity_reference(f, w, lens, height, width)

    f64 = (flat.double(), words.double())
    (ref_sim,), ref_grads = with_grads(ref, f64, [grad_s.double()])
    if dtype == torch.float64:
        low = ((None,), (None, None))
    else:
        low = with_grads(ref, (flat, words), [grad_s])
    assert_close(sim, ref_sim, dtype, low[0][0], "S")
    assert_close(d_flat, ref_grads[0], dtype, low[1][0], "d_regions")
    assert_close(d_words, ref_grads[1], dtype, low[1][1], "d_words")

    pad = padding_mask(lens, slots, device)
    want = reference_lse(words.double()[None], flat.double()[:, None], pad[None], GAMMA1)
    assert torch.isinf(lse[pad.expand_as(lse)]).all(), "padded words must store lse = +inf"
    valid = ~pad.expand_as(lse)
    lse_tol = 1e-6 if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(lse[valid].double(), want[valid], rtol=lse_tol, atol=lse_tol)


def check_attention(device, dtype, batch, dim, slots, height, width, mask_kind, grad_attn_kind,
                    contiguous, seed):
    gen = torch.Generator().manual_seed(seed)
    count = height * width
    flat = features(batch, dim, count, dtype, device, contiguous, gen)
    words = features(batch, dim, slots, dtype, device, contiguous, gen, scale=0.3)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "prefix":
        mask = padding_mask(random_lengths(batch, slots, gen), slots, device)
    else:  # random holes and one fully padded caption
        mask = (torch.rand(batch, slots, generator=gen) < 0.4).to(device)
        mask[0] = True
    grad_context = torch.randn(batch, slots, dim, generator=gen).to(device, dtype).transpose(1, 2)
    grad_attn = torch.randn(batch, slots, count, generator=gen).to(device, dtype)
    given = {"given": grad_attn, "none": None, "empty": grad_attn.new_empty(0)}[grad_attn_kind]

    context, attn, lse = kernels().word_region_attention_forward(words, flat, mask, GAMMA1)
    d_words, d_flat = kernels().word_region_attention_backward(grad_context, given, words, flat,
                                                               mask, lse, GAMMA1)
    assert context.dtype == attn.dtype == d_words.dtype == d_flat.dtype == dtype
    assert lse.shape == (batch, slots) and lse.dtype == torch.float32

    def ref(w, f):
        return attention_reference(w, f, mask)

    grads = [grad_context, grad_attn if grad_attn_kind == "given" else None]
    ref_outs, ref_grads = with_grads(ref, (words.double(), flat.double()),
                                     [g if g is None else g.double() for g in grads])
    if dtype == torch.float64:
        low = ((None, None), (None, None))
    else:
        low = with_grads(ref, (words, flat), grads)
    assert_close(context, ref_outs[0], dtype, low[0][0], "context")
    assert_close(attn, ref_outs[1], dtype, low[0][1], "attn")
    assert_close(d_words, ref_grads[0], dtype, low[1][0], "d_words")
    assert_close(d_flat, ref_grads[1], dtype, low[1][1], "d_regions")
    if mask is not None:
        # Padded words: context 0, attention 0, lse +inf; a fully padded caption reads nothing.
        assert (context.permute(0, 2, 1)[mask] == 0).all()
        assert (attn[mask] == 0).all()
        assert torch.isinf(lse[mask]).all()
        pad = mask
    else:
        pad = torch.zeros(batch, slots, dtype=torch.bool, device=device)
    want = reference_lse(words.double(), flat.double(), pad, GAMMA1)
    lse_tol = 1e-6 if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(lse[~pad].double(), want[~pad], rtol=lse_tol, atol=lse_tol)


# ---------------------------------------------------------------------------------------------
# CPU kernels
# ---------------------------------------------------------------------------------------------

# (B_img, B_cap, D, T, H, W): odd region counts (5x5, 17x17), every T of SPEC §7, B_img != B_cap.
SIM_CASES = {
    "T1-5x5": (3, 2, 16, 1, 5, 5),
    "T7-5x5": (2, 5, 24, 7, 5, 5),
    "T18-17x17": (3, 4, 32, 18, 17, 17),
    "T30-3x7": (2, 3, 40, 30, 3, 7),
    "T18-damsm-width": (2, 3, 256, 18, 17, 17),
}
CPU_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("case", SIM_CASES)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_cpu_similarity_matches_reference(case, dtype):
    n_img, n_cap, dim, slots, height, width = SIM_CASES[case]
    for contiguous in (True, False):
        check_similarity("cpu", dtype, n_img, n_cap, dim, slots, height, width, contiguous,
                         seed=hash((case, contiguous)) % 1000)


def test_cpu_similarity_many_captions_spans_column_chunks():
    """More word columns than one block holds: the captions are cut into several chunks."""
    check_similarity("cpu", torch.float64, 3, 37, 16, 18, 5, 5, True, seed=3)
    check_similarity("cpu", torch.float32, 2, 41, 16, 7, 3, 3, False, seed=4)


# (B, D, T, H, W)
ATT_CASES = {
    "T1-5x5": (3, 16, 1, 5, 5),
    "T7-5x5": (4, 24, 7, 5, 5),
    "T18-17x17": (3, 32, 18, 17, 17),
    "T30-3x7": (2, 40, 30, 3, 7),
}


@pytest.mark.parametrize("case", ATT_CASES)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "holes"])
def test_cpu_attention_matches_reference(case, dtype, mask_kind):
    batch, dim, slots, height, width = ATT_CASES[case]
    for i, grad_attn_kind in enumerate(("given", "none", "empty")):
        check_attention("cpu", dtype, batch, dim, slots, height, width, mask_kind,
                        grad_attn_kind, contiguous=i != 1, seed=i)


def test_cpu_backward_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(5, 32, 25, generator=gen)
    words = torch.randn(6, 32, 7, generator=gen)
    lens = random_lengths(6, 7, gen)
    grad_s = torch.randn(5, 6, generator=gen)
    _, lse = kernels().word_region_similarity_forward(flat, words, lens, GAMMA1, GAMMA2)
    first = kernels().word_region_similarity_backward(grad_s, flat, words, lens, lse, GAMMA1,
                                                      GAMMA2)
    for _ in range(3):
        again = kernels().word_region_similarity_backward(grad_s, flat, words, lens, lse, GAMMA1,
                                                          GAMMA2)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_cpu_kernels_reject_bad_arguments():
    flat = torch.randn(2, 8, 9)
    words = torch.randn(3, 8, 5)
    lens = torch.tensor([5, 2, 1])
    sim, lse = kernels().word_region_similarity_forward(flat, words, lens, GAMMA1, GAMMA2)
    bad = [
        (lambda: kernels().word_region_similarity_forward(flat, words, torch.tensor([5, 0, 1]),
                                                          1.0, 1.0), "cap_lens must lie in 1..T"),
        (lambda: kernels().word_region_similarity_forward(flat, words, lens.int(), 1.0, 1.0),
         "cap_lens must be an int64"),
        (lambda: kernels().word_region_similarity_forward(flat, words[:, :4], lens, 1.0, 1.0),
         r"words.shape\[1\]"),
        (lambda: kernels().word_region_similarity_forward(flat, words.double(), lens, 1.0, 1.0),
         "words has dtype"),
        (lambda: kernels().word_region_similarity_backward(sim, flat, words, lens, lse[:, :, :4],
                                                           1.0, 1.0), "lse must have shape"),
        (lambda: kernels().word_region_similarity_backward(sim.t(), flat, words, lens, lse, 1.0,
                                                           1.0), "grad_s must have shape"),
        (lambda: kernels().word_region_attention_forward(words[:2], flat, lens[:2] > 0, 1.0),
         "word_mask must have shape"),
        (lambda: kernels().word_region_attention_forward(words, flat, None, 1.0),
         "regions must have shape"),
    ]
    for call, message in bad:
        with pytest.raises(RuntimeError, match=message):
            call()


# ---------------------------------------------------------------------------------------------
# GPU kernels (CUDA)
# ---------------------------------------------------------------------------------------------

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or not has_kernel("word_region_similarity_forward", "CUDA"),
    reason="needs a CUDA device and t2i_fast._C built with CUDA")


def dm_inputs(batch, channels, height, width, slots, variant, dtype, gen, contiguous, device):
    """Inputs of dynamic_memory_forward for a variant: 'read', 'gate' or 'both'."""
    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device, dtype)
    if contiguous:
        h = rand(batch, channels, height, width)
    else:
        h = rand(batch, height, width, channels).permute(0, 3, 1, 2)
    lens = random_lengths(batch, slots, gen)
    mask = padding_mask(lens, slots, device)
    if batch > 2:
        mask[1] = True  # a fully masked caption: its pixels read 0
    has_read = variant in ("read", "both")
    has_gate = variant in ("gate", "both")
    key = rand(batch, channels, slots, scale=channels ** -0.5) if has_read else None
    # The read alone may have other value channels (Cv != C); the gate needs Cv = C.
    value_channels = channels if has_gate else channels // 2 + 8
    value = rand(batch, value_channels, slots) if has_read else None
    o = None if has_read else rand(batch, channels, height, width)
    weight = rand(2 * channels, scale=channels ** -0.5) if has_gate else None
    bias = rand(1) if has_gate else None
    return dict(h=h, o=o, key=key, value=value, mask=mask if has_read else None,
                gate_weight=weight, gate_bias=bias)


def dm_reference(args, scale, mask_compat):
    """The schema's (out, attn, gate) from the references."""
    h, o = args["h"], args["o"]
    attn = gate = None
    if args["key"] is not None:
        o, attn = memory_read_reference(h, args["key"], args["value"], args["mask"], scale=scale,
                                        mask_compat=mask_compat, return_attn=True)
    out = o
    if args["gate_weight"] is not None:
        out, gate = response_gate_reference(h, o, args["gate_weight"], args["gate_bias"],
                                            return_gate=True)
    return out, attn, gate


NAMES = ("h", "o", "key", "value", "mask", "gate_weight", "gate_bias")
GRAD_NAMES = ("h", "o", "key", "value", "gate_weight", "gate_bias")


def check_dynamic_memory(batch, channels, height, width, slots, variant, dtype, mask_compat,
                         seed, contiguous=True, scale=1.0, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    args = dm_inputs(batch, channels, height, width, slots, variant, dtype, gen, contiguous,
                     device)
    has_read, has_gate = args["key"] is not None, args["gate_weight"] is not None
    out, lse, attn, gate = kernels().dynamic_memory_forward(
        *[args[n] for n in NAMES], scale, mask_compat, has_read, has_gate)
    grad_out = torch.randn(out.shape, generator=gen).to(device, dtype)
    grad_attn = torch.randn(attn.shape, generator=gen).to(device, dtype) if has_read else None
    grad_gate = torch.randn(gate.shape, generator=gen).to(device, dtype) if has_gate else None
    grads = kernels().dynamic_memory_backward(grad_out, grad_attn, grad_gate, *[
        args[n] for n in NAMES], lse, scale, mask_compat)

    def run(cast):
        floats = {n: args[n] for n in GRAD_NAMES if args[n] is not None}
        leaves = {n: cast(t).detach().requires_grad_() for n, t in floats.items()}
        full = dict(args, **leaves)
        outs = dm_reference(full, scale, mask_compat)
        pairs = [(o, cast(g)) for o, g in zip(outs, (grad_out, grad_attn, grad_gate))
                 if o is not None]
        d = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()),
                                [g for _, g in pairs])
        return outs, dict(zip(leaves, d))

    ref_outs, ref_grads = run(lambda t: t.double())
    low_outs, low_grads = run(lambda t: t)
    for name, got, ref, lp in zip(("out", "attn", "gate"), (out, attn, gate), ref_outs,
                                  low_outs):
        if ref is not None:
            assert_close(got, ref, dtype, lp, name)
    for name, got in zip(GRAD_NAMES, grads):
        # One slot: the attention is constantly 1 (or 0), so no gradient flows through the
        # scores: dkey (and dh without the gate) is exactly 0 and the reference holds only
        # rounding noise, where a relative error means nothing.
        if slots == 1 and (name == "key" or (name == "h" and not has_gate)) and has_read:
            assert got.abs().max() <= 1e-6, f"d{name} must vanish with a single slot"
        elif name in ref_grads:
            assert_close(got, ref_grads[name], dtype, low_grads[name], "d" + name)
        else:
            assert got.numel() == 0, f"d{name} must be empty for an absent input"
    if has_read:
        rows = pixel_mask(args["mask"], height * width, mask_compat)
        dead = rows.all(-1)
        assert torch.isinf(lse[dead]).all() and torch.isfinite(lse[~dead]).all()


@needs_cuda
class TestCUDAKernels:
    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("variant", ["both", "read", "gate"])
    @pytest.mark.parametrize("mask_compat", [False, True])
    def test_dynamic_memory_small(self, dtype, variant, mask_compat):
        for seed, (batch, channels, height, width, slots) in enumerate(
                [(3, 32, 5, 7, 1), (4, 48, 9, 9, 7), (5, 64, 3, 11, 30), (2, 24, 4, 4, 18)]):
            check_dynamic_memory(batch, channels, height, width, slots, variant, dtype,
                                 mask_compat, seed, contiguous=seed % 2 == 0,
                                 scale=1.0 if seed % 2 else 0.5)

    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(10, 64, 64, 18), (16, 64, 128, 12), (16, 64, 64, 18)],
                             ids=lambda s: "B{}-C{}-{}px-T{}".format(*s))
    def test_dynamic_memory_dmgan_sizes(self, dtype, shape):
        batch, channels, side, slots = shape
        check_dynamic_memory(batch, channels, side, side, slots, "both", dtype, False, seed=7)

    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("case", SIM_CASES)
    def test_similarity_small(self, dtype, case):
        n_img, n_cap, dim, slots, height, width = SIM_CASES[case]
        check_similarity("cuda", dtype, n_img, n_cap, dim, slots, height, width,
                         contiguous=len(case) % 2 == 0, seed=11)

    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(48, 48, 256, 18, 17, 17), (32, 32, 512, 12, 14, 14)],
                             ids=["damsm-B48", "itm-R196"])
    def test_similarity_full_sizes(self, dtype, shape):
        check_similarity("cuda", dtype, *shape, contiguous=True, seed=12)

    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("case", ATT_CASES)
    @pytest.mark.parametrize("mask_kind", ["none", "prefix", "holes"])
    def test_attention_small(self, dtype, case, mask_kind):
        batch, dim, slots, height, width = ATT_CASES[case]
        for i, kind in enumerate(("given", "none", "empty")):
            check_attention("cuda", dtype, batch, dim, slots, height, width, mask_kind, kind,
                            contiguous=i != 1, seed=i)

    @pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(48, 256, 18, 17, 17), (32, 512, 12, 14, 14)],
                             ids=["damsm-B48", "itm-R196"])
    def test_attention_full_sizes(self, dtype, shape):
        check_attention("cuda", dtype, *shape, mask_kind="prefix", grad_attn_kind="given",
                        contiguous=True, seed=13)

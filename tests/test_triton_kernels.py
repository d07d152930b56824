"""Direct tests of the Triton kernels (kernels/dynamic_memory.py, kernels/word_region.py).

Every output and every gradient of the kernel functions (the csrc/ops.cpp schemas) is compared
with torch.autograd through the float64 reference. On a machine without CUDA the kernels run in
the Triton interpreter on CPU tensors, so the shapes are tiny (a handful of program instances
per launch). Outputs and scratch buffers come out of a NaN-filled allocator: an element a
kernel forgot to write fails the test.
"""
import importlib
import math

import pytest
import torch

from conftest import TOL, padding_mask, rel_err, tolerance

pytest.importorskip("triton")

# conftest.py has set TRITON_INTERPRET=1 on machines without CUDA, before this import.
from t2i_fast.kernels import dynamic_memory as kdm, word_region as kwr  # noqa: E402

# The ops package exports functions named like these modules: import the modules themselves.
ref_dm = importlib.import_module("t2i_fast.ops.dynamic_memory")
ref_wr = importlib.import_module("t2i_fast.ops.word_region")
_math = importlib.import_module("t2i_fast.ops._math")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes bf16 dots wrongly; a GPU has no fp64 path.
DTYPES = (torch.float32, torch.float16, torch.bfloat16) if DEVICE == "cuda" else \
    (torch.float32, torch.float16, torch.float64)


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch):
    """Every float tensor the kernels allocate starts as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(math.nan) if t.is_floating_point() else t

    def nan_empty_like(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


def check(actual, expected, dtype, what, native=None, scale=None):
    """`actual` (the kernel's) against `expected` (float64); `native`: PyTorch in dtype.

    An output that is exactly zero in exact arithmetic (d_words when T = 1: a softmax over one
    word has no gradient) is measured against `scale`, the call's largest output norm.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    bound = tolerance(dtype, expected, native) if native is not None else TOL[dtype]
    if scale is not None and float(expected.norm()) == 0.0:
        err = float(actual.detach().double().norm()) / scale
    else:
        err = rel_err(actual, expected)
    assert err <= bound, f"{what}: rel err {err:.3g} > {bound:.3g} ({dtype})"


def check_all(actual, expected, native, dtype):
    scale = max(float(v.norm()) for v in expected.values())
    for name, value in expected.items():
        check(actual[name], value, dtype, name, native.get(name), scale)


def rand(gen, *shape, scale=1.0, dtype=torch.float32):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(DEVICE, dtype)


# --------------------------------------------------------------------------------------------
# Dynamic memory
# --------------------------------------------------------------------------------------------

# (C, Cv, T, H, W, lengths): N never a multiple of the 64-pixel interpreter block, every T of
# SPEC §7, lengths 0 (fully masked pixels) and T among them.
DM_CASES = {
    "C32-T1": (32, 32, 1, 3, 5, (0, 1)),
    "C48-T7": (48, 24, 7, 9, 9, (7, 3)),
    "C64-T18": (64, 64, 18, 4, 9, (18, 0)),
    "C32-T30": (32, 32, 30, 7, 3, (1, 30)),
}
DM_OPS = ("memory_read", "response_gate", "dynamic_memory")


def dm_inputs(op, case, dtype, seed=0, layout="contiguous"):
    """Inputs (rounded to dtype) as a dict of kernel arguments; layout picks h's strides."""
    channels, v_channels, slots, height, width, lengths = case
    if op != "memory_read":
        v_channels = channels
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)

    def features(ch):
        if layout == "channels_last":
            return rand(gen, batch, height, width, ch, dtype=dtype).permute(0, 3, 1, 2)
        if layout == "sliced":  # H and W cannot merge into one pixel stride
            return rand(gen, batch, ch, height + 1, width + 2, dtype=dtype)[:, :, 1:, 2:]
        return rand(gen, batch, ch, height, width, dtype=dtype)

    args = dict(h=features(channels), o=None, key=None, value=None, mask=None,
                gate_weight=None, gate_bias=None)
    if op == "response_gate":
        args["o"] = features(channels)
    else:
        key = rand(gen, batch, slots, channels, scale=0.3, dtype=dtype)
        args["key"] = key.transpose(1, 2) if layout != "contiguous" else \
            key.transpose(1, 2).contiguous()
        args["value"] = rand(gen, batch, v_channels, slots, dtype=dtype)
        args["mask"] = padding_mask(lengths, slots, DEVICE)
    if op != "memory_read":
        args["gate_weight"] = rand(gen, 2 * channels, scale=0.2, dtype=dtype)
        args["gate_bias"] = rand(gen, 1, dtype=dtype)
    return args


def dm_reference(op, args, mask_compat, dtype, grad_out, grad_attn, grad_gate):
    """The reference's outputs and input gradients, computed in `dtype`, by name."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in args.items()
              if v is not None and k != "mask"}
    h, mask = leaves["h"], args["mask"]
    res = {}
    if op == "response_gate":
        o = leaves["o"]
    else:
        o, res["attn"] = ref_dm.memory_read_reference(
            h, leaves["key"], leaves["value"], mask, mask_compat=mask_compat, return_attn=True)
    if op == "memory_read":
        res["out"] = o
    else:
        res["out"], res["gate"] = ref_dm.response_gate_reference(
            h, o, leaves["gate_weight"], leaves["gate_bias"], return_gate=True)
    loss = (res["out"] * grad_out.to(dtype)).sum()
    if "attn" in res:
        loss = loss + (res["attn"] * grad_attn.to(dtype)).sum()
    if "gate" in res:
        loss = loss + (res["gate"] * grad_gate.to(dtype)).sum()
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    res.update({"d" + n: g for n, g in zip(names, grads)})
    return {k: v.detach() for k, v in res.items()}


def dm_lse_reference(args, mask_compat):
    h, key = args["h"].double(), args["key"].double()
    batch, channels = h.shape[:2]
    scores = torch.einsum("bcn,bct->bnt", h.reshape(batch, channels, -1), key)
    pad = ref_dm.pixel_mask(args["mask"], scores.shape[1], mask_compat)
    lse = torch.logsumexp(scores.masked_fill(pad, -math.inf), dim=2)
    return torch.where(torch.isfinite(lse), lse, torch.full_like(lse, math.inf))


def run_dm(op, args, mask_compat, return_extra=True):
    return kdm.dynamic_memory_forward(
        args["h"], args["o"], args["key"], args["value"], args["mask"], args["gate_weight"],
        args["gate_bias"], 1.0, mask_compat, return_extra and op != "response_gate",
        return_extra and op != "memory_read")


def check_lse(lse, expected, dtype):
    assert lse.dtype == torch.float32 and lse.shape == expected.shape
    assert torch.equal(torch.isinf(lse), torch.isinf(expected)), "lse: +inf entries differ"
    keep = torch.isfinite(expected)
    if keep.any():
        assert rel_err(lse[keep], expected[keep]) <= max(TOL[dtype], 1e-6), "lse"


def check_dm(op, case, dtype, mask_compat=False, layout="contiguous", grad_layout=None):
    args = dm_inputs(op, case, dtype, layout=layout)
    batch, channels, height, width = args["h"].shape
    slots = args["key"].shape[2] if args["key"] is not None else 0
    out_ch = args["value"].shape[1] if op == "memory_read" else channels
    gen = torch.Generator().manual_seed(1)
    grad_out = rand(gen, batch, out_ch, height, width, dtype=dtype)
    if grad_layout == "expanded":  # what out.sum().backward() hands over
        grad_out = torch.ones((), device=DEVICE, dtype=dtype).expand(grad_out.shape)
    elif grad_layout == "channels_last":
        grad_out = grad_out.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    grad_attn = rand(gen, batch, slots, height, width, dtype=dtype) if slots else None
    grad_gate = rand(gen, batch, 1, height, width, dtype=dtype) \
        if op != "memory_read" else None
    expected = dm_reference(op, args, mask_compat, torch.float64, grad_out, grad_attn, grad_gate)
    native = dm_reference(op, args, mask_compat, dtype, grad_out, grad_attn, grad_gate)

    out, lse, attn, gate = run_dm(op, args, mask_compat)
    grads = kdm.dynamic_memory_backward(
        grad_out, grad_attn, grad_gate, args["h"], args["o"], args["key"], args["value"],
        args["mask"], args["gate_weight"], args["gate_bias"], lse, 1.0, mask_compat)
    actual = dict(out=out, attn=attn, gate=gate)
    actual.update(zip(("dh", "do", "dkey", "dvalue", "dgate_weight", "dgate_bias"), grads))
    check_all(actual, expected, native, dtype)
    for name, value in actual.items():
        if name not in expected:
            assert value.shape == (0,), f"{name} should be empty"
    if slots:
        check_lse(lse, dm_lse_reference(args, mask_compat), dtype)
    else:
        assert lse.shape == (0,)
    return grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(DM_CASES.values()), ids=list(DM_CASES))
@pytest.mark.parametrize("op", DM_OPS)
def test_dynamic_memory(op, case, dtype):
    check_dm(op, case, dtype)


@pytest.mark.parametrize("op", ("memory_read", "dynamic_memory"))
def test_dynamic_memory_mask_compat(op):
    # Three rows with different lengths: the upstream tiling really differs from the broadcast.
    check_dm(op, (48, 48, 7, 5, 3, (7, 0, 2)), torch.float32, mask_compat=True)


@pytest.mark.parametrize("layout,grad_layout", [("channels_last", "channels_last"),
                                                ("sliced", "expanded")])
@pytest.mark.parametrize("op", DM_OPS)
def test_dynamic_memory_strided(op, layout, grad_layout):
    check_dm(op, DM_CASES["C48-T7"], torch.float32, layout=layout, grad_layout=grad_layout)


def test_dynamic_memory_fully_masked_rows():
    case = (32, 32, 7, 3, 5, (0, 0))
    args = dm_inputs("memory_read", case, torch.float32)
    out, lse, attn, _ = run_dm("memory_read", args, False)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(attn, torch.zeros_like(attn))
    assert torch.isinf(lse).all() and (lse > 0).all()
    check_dm("dynamic_memory", case, torch.float32)


def test_dynamic_memory_unrequested_outputs_are_empty():
    args = dm_inputs("dynamic_memory", DM_CASES["C32-T1"], torch.float32)
    out, lse, attn, gate = run_dm("dynamic_memory", args, False, return_extra=False)
    assert out.shape == args["h"].shape and lse.shape == (2, 15)
    assert attn.shape == (0,) and gate.shape == (0,)


def test_dynamic_memory_backward_is_deterministic(monkeypatch):
    first = check_dm("dynamic_memory", DM_CASES["C64-T18"], torch.float32)
    second = check_dm("dynamic_memory", DM_CASES["C64-T18"], torch.float32)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    monkeypatch.setenv("T2I_FAST_DETERMINISTIC", "0")  # the atomics variant
    check_dm("dynamic_memory", DM_CASES["C64-T18"], torch.float32)


# --------------------------------------------------------------------------------------------
# Word-region similarity and attention
# --------------------------------------------------------------------------------------------

# (Bi, Bc, D, H, W, T, cap_lens): R = H*W never a multiple of the 16-region interpreter tile.
WR_CASES = {
    "T1": (2, 1, 32, 3, 4, 1, (1,)),
    "T7": (1, 2, 48, 5, 5, 7, (7, 3)),
    "T18": (2, 2, 32, 4, 5, 18, (18, 1)),
    "T30": (1, 2, 32, 3, 3, 30, (30, 12)),
}
GAMMA1, GAMMA2 = 4.0, 5.0


def wr_inputs(case, dtype, seed=0, strided=False):
    n_img, n_cap, dim, height, width, slots, lengths = case
    gen = torch.Generator().manual_seed(seed)
    if strided:  # (B, R, D) and (B, T, D) storage seen through transposes
        regions = rand(gen, n_img, height * width, dim, dtype=dtype).transpose(1, 2)
        words = rand(gen, n_cap, slots, dim, dtype=dtype).transpose(1, 2)
    else:
        regions = rand(gen, n_img, dim, height * width, dtype=dtype)
        words = rand(gen, n_cap, dim, slots, dtype=dtype)
    return regions, words, torch.tensor(lengths, dtype=torch.int64, device=DEVICE)


def word_lse_reference(regions, words, pad, gamma1):
    """log sum_r exp(gamma1 * a[r, t]) per (image, caption, word); +inf for padded words."""
    scores = torch.einsum("jdr,idt->jirt", regions, words)
    a = _math.safe_softmax(scores, pad[None, :, None, :], dim=-1)
    lse = torch.logsumexp(gamma1 * a, dim=2)
    return lse.masked_fill(pad[None], math.inf)


def similarity_reference(regions, words, lens, grad_s, dtype):
    r = regions.detach().to(dtype).requires_grad_()
    w = words.detach().to(dtype).requires_grad_()
    sim = ref_wr.word_region_similarity_reference(r.unsqueeze(3), w, lens, GAMMA1, GAMMA2)
    d_reg, d_words = torch.autograd.grad((sim * grad_s.to(dtype)).sum(), (r, w))
    return dict(sim=sim.detach(), d_regions=d_reg, d_words=d_words)


def check_similarity(case, dtype, strided=False):
    regions, words, lens = wr_inputs(case, dtype, strided=strided)
    grad_s = rand(torch.Generator().manual_seed(1), regions.shape[0], words.shape[0],
                  dtype=dtype)
    expected = similarity_reference(regions, words, lens, grad_s, torch.float64)
    native = similarity_reference(regions, words, lens, grad_s, dtype)
    sim, lse = kwr.word_region_similarity_forward(regions, words, lens, GAMMA1, GAMMA2)
    d_reg, d_words = kwr.word_region_similarity_backward(grad_s, regions, words, lens, lse,
                                                         GAMMA1, GAMMA2)
    check_all(dict(sim=sim, d_regions=d_reg, d_words=d_words), expected, native, dtype)
    pad = torch.arange(words.shape[2], device=DEVICE)[None, :] >= lens[:, None]
    check_lse(lse, word_lse_reference(regions.double(), words.double(), pad, GAMMA1), dtype)
    return d_reg, d_words


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(WR_CASES.values()), ids=list(WR_CASES))
def test_word_region_similarity(case, dtype):
    check_similarity(case, dtype)


def test_word_region_similarity_strided_and_deterministic(monkeypatch):
    case = (2, 3, 48, 5, 5, 7, (7, 1, 4))
    first = check_similarity(case, torch.float32, strided=True)
    second = check_similarity(case, torch.float32, strided=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    monkeypatch.setenv("T2I_FAST_DETERMINISTIC", "0")  # one launch over pairs, atomics
    check_similarity(case, torch.float32)


def attention_reference(words, regions, word_mask, grad_ctx, grad_attn, dtype):
    w = words.detach().to(dtype).requires_grad_()
    r = regions.detach().to(dtype).requires_grad_()
    ctx, attn = ref_wr.word_region_attention_reference(w, r.unsqueeze(3), GAMMA1, word_mask)
    attn = attn.reshape(attn.shape[:3])
    loss = (ctx * grad_ctx.to(dtype)).sum()
    if grad_attn is not None:
        loss = loss + (attn * grad_attn.to(dtype)).sum()
    d_words, d_reg = torch.autograd.grad(loss, (w, r))
    return dict(context=ctx.detach(), attn=attn.detach(), d_words=d_words, d_regions=d_reg)


def check_attention(case, dtype, word_mask, with_grad_attn=True, strided=False):
    batch, _, dim, height, width, slots, _ = case
    regions, words, _ = wr_inputs((batch, batch, dim, height, width, slots, (slots,) * batch),
                                  dtype, strided=strided)
    gen = torch.Generator().manual_seed(1)
    grad_ctx = rand(gen, batch, dim, slots, dtype=dtype)
    grad_attn = rand(gen, batch, slots, height * width, dtype=dtype) if with_grad_attn else None
    expected = attention_reference(words, regions, word_mask, grad_ctx, grad_attn,
                                   torch.float64)
    native = attention_reference(words, regions, word_mask, grad_ctx, grad_attn, dtype)
    ctx, attn, lse = kwr.word_region_attention_forward(words, regions, word_mask, GAMMA1)
    d_words, d_reg = kwr.word_region_attention_backward(grad_ctx, grad_attn, words, regions,
                                                        word_mask, lse, GAMMA1)
    check_all(dict(context=ctx, attn=attn, d_words=d_words, d_regions=d_reg), expected, native,
              dtype)
    pad = word_mask if word_mask is not None else \
        torch.zeros(batch, slots, dtype=torch.bool, device=DEVICE)
    lse64 = torch.stack([word_lse_reference(regions[b:b + 1].double(), words[b:b + 1].double(),
                                            pad[b:b + 1], GAMMA1)[0, 0] for b in range(batch)])
    check_lse(lse, lse64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(WR_CASES.values()), ids=list(WR_CASES))
def test_word_region_attention(case, dtype):
    slots = case[5]
    mask = padding_mask((slots, max(1, slots // 2)), slots, DEVICE)[:case[0]]
    check_attention(case, dtype, mask)


@pytest.mark.parametrize("with_grad_attn", (True, False))
def test_word_region_attention_no_mask_strided(with_grad_attn):
    check_attention(WR_CASES["T7"], torch.float32, None, with_grad_attn, strided=True)


def test_word_region_attention_fully_padded_caption():
    mask = padding_mask((0, 4), 7, DEVICE)
    check_attention((2, 2, 32, 3, 5, 7, (7, 7)), torch.float32, mask)


def test_word_region_gamma1_limit():
    regions, words, lens = wr_inputs(WR_CASES["T1"], torch.float32)
    with pytest.raises(ValueError, match="gamma1"):
        kwr.word_region_similarity_forward(regions, words, lens, 100.0, GAMMA2)

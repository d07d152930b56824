"""memory_read, response_gate, dynamic_memory: reference math, every backend, every gradient."""
import pytest
import torch

import naive
from conftest import FAST_BACKENDS, assert_close, nchw, padding_mask, require
from t2i_fast import ops
from t2i_fast.profiling import saved_bytes

# (C, T, H, W, lengths): odd pixel counts, every T of SPEC §7, lengths 0 and T among them.
CASES = [
    (32, 1, 3, 5, (0, 1)),
    (48, 7, 5, 7, (7, 3)),
    (64, 18, 4, 9, (18, 0)),
    (32, 30, 7, 3, (1, 30)),
    (64, 30, 5, 5, (30, 17)),
    (48, 18, 9, 9, (5, 18)),
]
OPS = ("memory_read", "response_gate", "dynamic_memory")


def make_inputs(op, channels, slots, height, width, lengths, dtype, device, contiguous=True,
                seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device, dtype)

    h = nchw(batch, channels, height, width, dtype, device, contiguous, gen)
    args = {"h": h}
    if op == "response_gate":
        args["o"] = nchw(batch, channels, height, width, dtype, device, contiguous, gen)
    else:
        key = rand(batch, slots, channels, scale=0.3)
        args["key"] = key.transpose(1, 2) if not contiguous else key.transpose(1, 2).contiguous()
        args["value"] = rand(batch, channels, slots)
        args["mask"] = padding_mask(lengths, slots, device)
    if op != "memory_read":
        args["weight"] = rand(2 * channels, scale=0.2)
        args["bias"] = rand(1)
    return args


def run(op, args, impl, mask_compat=False, return_extra=True):
    """Calls the op; returns a tuple of outputs (out [, attn or gate])."""
    if op == "memory_read":
        res = ops.memory_read(args["h"], args["key"], args["value"], args["mask"],
                              mask_compat=mask_compat, return_attn=return_extra, impl=impl)
    elif op == "response_gate":
        res = ops.response_gate(args["h"], args["o"], args["weight"], args["bias"],
                                return_gate=return_extra, impl=impl)
    else:
        res = ops.dynamic_memory(args["h"], args["key"], args["value"], args["mask"],
                                 args["weight"], args["bias"], mask_compat=mask_compat,
                                 return_attn=return_extra, impl=impl)
    return res if isinstance(res, tuple) else (res,)


def outputs_and_grads(op, args, impl, mask_compat, seed=1):
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point())
              for k, v in args.items()}
    outs = run(op, leaves, impl, mask_compat)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum()
               for o in outs)
    floats = [k for k, v in leaves.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[k] for k in floats])
    return outs, dict(zip(floats, grads))


def as_double(args):
    return {k: v.detach().double() if v.is_floating_point() else v for k, v in args.items()}


# --------------------------------------------------------------------------------------------
# The reference against independent loops, and gradcheck
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_compat", [False, True])
def test_memory_read_reference_matches_naive_loop(mask_compat):
    args = make_inputs("memory_read", 5, 4, 3, 2, (4, 0, 2), torch.float64, "cpu")
    out, attn = ops.memory_read_reference(args["h"], args["key"], args["value"], args["mask"],
                                          scale=0.7, mask_compat=mask_compat, return_attn=True)
    out_n, attn_n = naive.memory_read(args["h"], args["key"], args["value"], args["mask"],
                                      scale=0.7, mask_compat=mask_compat)
    torch.testing.assert_close(out, out_n)
    torch.testing.assert_close(attn, attn_n)
    if not mask_compat:  # the zero-length caption reads exactly 0
        assert out[1].abs().max() == 0 and attn[1].abs().max() == 0


def test_gate_and_dynamic_memory_reference_match_naive_loop():
    args = make_inputs("dynamic_memory", 4, 3, 3, 2, (3, 1), torch.float64, "cpu")
    o, _ = naive.memory_read(args["h"], args["key"], args["value"], args["mask"])
    expected = naive.response_gate(args["h"], o, args["weight"], args["bias"])
    torch.testing.assert_close(
        ops.response_gate_reference(args["h"], o, args["weight"], args["bias"]), expected)
    torch.testing.assert_close(
        ops.dynamic_memory_reference(args["h"], args["key"], args["value"], args["mask"],
                                     args["weight"], args["bias"]), expected)


@pytest.mark.parametrize("op", OPS)
def test_reference_gradcheck(op):
    args = make_inputs(op, 3, 4, 2, 3, (4, 0), torch.float64, "cpu")
    names = [k for k, v in args.items() if v.is_floating_point()]

    def fn(*floats):
        return run(op, {**args, **dict(zip(names, floats))}, "reference")

    assert torch.autograd.gradcheck(
        fn, [args[k].clone().requires_grad_() for k in names])


def test_mask_compat_reproduces_upstream_tiling():
    """Upstream: scores viewed as (B*N, T), mask.repeat(N, 1), softmax over T."""
    args = make_inputs("memory_read", 4, 5, 3, 3, (5, 2, 4), torch.float64, "cpu")
    h, key, value, mask = args["h"], args["key"], args["value"], args["mask"]
    batch, n_pixels = h.shape[0], 9
    scores = torch.bmm(h.reshape(batch, 4, n_pixels).transpose(1, 2), key).reshape(-1, 5)
    scores = scores.masked_fill(mask.repeat(n_pixels, 1), float("-inf"))
    attn = torch.softmax(scores, dim=1).reshape(batch, n_pixels, 5).transpose(1, 2)
    expected = torch.bmm(value, attn).reshape(batch, 4, 3, 3)
    got = ops.memory_read(h, key, value, mask, mask_compat=True, impl="reference")
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(ops.memory_read(h, key, value, mask, impl="reference"), expected)


# --------------------------------------------------------------------------------------------
# Every fast backend against the reference
# --------------------------------------------------------------------------------------------

def _dtypes():
    return [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
def test_backend_matches_reference(backend, op, case, dtype):
    device = require(backend, op, dtype)
    if dtype in (torch.float16, torch.bfloat16) and case % 2:
        pytest.skip("low precision runs on every other case")
    channels, slots, height, width, lengths = CASES[case]
    mask_compat = case % 3 == 1 and op != "response_gate"
    contiguous = case % 2 == 0
    args = make_inputs(op, channels, slots, height, width, lengths, dtype, device, contiguous,
                       seed=case)
    outs, grads = outputs_and_grads(op, args, backend, mask_compat)
    ref_outs, ref_grads = outputs_and_grads(op, as_double(args), "reference", mask_compat)
    same_outs, same_grads = outputs_and_grads(op, args, "reference", mask_compat)
    for i, (got, ref) in enumerate(zip(outs, ref_outs)):
        assert got.dtype == dtype
        assert_close(got, ref, dtype, same_outs[i], f"output {i}")
    for name, ref in ref_grads.items():
        assert_close(grads[name], ref, dtype, same_grads[name], f"grad {name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fully_masked_rows_give_zero_and_finite_grads(backend):
    device = require(backend, "dynamic_memory", torch.float32)
    args = make_inputs("memory_read", 32, 7, 3, 5, (0, 0), torch.float32, device)
    outs, grads = outputs_and_grads("memory_read", args, backend, False)
    assert outs[0].abs().max() == 0 and outs[1].abs().max() == 0
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["h"].abs().max() == 0 and grads["key"].abs().max() == 0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_outputs_without_extras(backend):
    """Without return_attn / return_gate only the main output comes back, and it matches."""
    device = require(backend, "dynamic_memory", torch.float32)
    for op in OPS:
        args = make_inputs(op, 48, 7, 5, 3, (7, 2), torch.float32, device)
        (got,) = run(op, args, backend, return_extra=False)
        (ref,) = run(op, as_double(args), "reference", return_extra=False)
        (same,) = run(op, args, "reference", return_extra=False)
        assert_close(got, ref, torch.float32, same, what=op)


# --------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, double backward, saved bytes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_opcheck(backend):
    device = require(backend, "dynamic_memory", torch.float32)
    a = make_inputs("dynamic_memory", 32, 7, 3, 5, (7, 0), torch.float32, device)
    h = a["h"].requires_grad_()
    fwd_args = (h, None, a["key"], a["value"], a["mask"], a["weight"], a["bias"], 1.0, True,
                True, True, backend)
    torch.library.opcheck(torch.ops.t2i_fast.dynamic_memory_fwd.default, fwd_args)
    out, lse, attn, gate = torch.ops.t2i_fast.dynamic_memory_fwd(*[x.detach() if torch.is_tensor(x) else x
                                         for x in fwd_args])
    bwd_args = (torch.randn_like(out), torch.randn_like(attn), torch.randn_like(gate), h.detach(),
                None, a["key"], a["value"], a["mask"], a["weight"], a["bias"], lse, 1.0, True,
                backend)
    torch.library.opcheck(torch.ops.t2i_fast.dynamic_memory_bwd.default, bwd_args)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_compiles_fullgraph(backend):
    device = require(backend, "dynamic_memory", torch.float32)
    a = make_inputs("dynamic_memory", 32, 7, 3, 5, (7, 3), torch.float32, device)

    def step(h, key, value):
        out, attn = ops.dynamic_memory(h, key, value, a["mask"], a["weight"], a["bias"],
                                       return_attn=True, impl=backend)
        return out.square().sum() + attn.sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [a[k].clone().requires_grad_() for k in ("h", "key", "value")]
    compiled(*leaves).backward()
    eager = [a[k].clone().requires_grad_() for k in ("h", "key", "value")]
    step(*eager).backward()
    for got, ref in zip(leaves, eager):
        torch.testing.assert_close(got.grad, ref.grad)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_double_backward_raises(backend):
    device = require(backend, "dynamic_memory", torch.float32)
    a = make_inputs("dynamic_memory", 32, 7, 3, 5, (7, 3), torch.float32, device)
    h = a["h"].clone().requires_grad_()
    out = ops.dynamic_memory(h, a["key"], a["value"], a["mask"], a["weight"], a["bias"],
                             impl=backend)
    (g,) = torch.autograd.grad(out.square().sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_cpu_saves_inputs_plus_per_pixel_statistics():
    require("cpu", "dynamic_memory", torch.float32)
    batch, channels, size, slots = 2, 64, 64, 18
    a = make_inputs("dynamic_memory", channels, slots, size, size, (18, 9), torch.float32, "cpu")
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v)
              for k, v in a.items()}
    inputs = sum(v.numel() * v.element_size() for v in a.values())

    def call(impl):
        return ops.dynamic_memory(leaves["h"], leaves["key"], leaves["value"], leaves["mask"],
                                  leaves["weight"], leaves["bias"], impl=impl)

    fused, reference = saved_bytes(call, "cpu"), saved_bytes(call, "reference")
    assert fused <= inputs + 2 * batch * size * size * 4, (fused, inputs)
    assert reference > 2 * fused  # the reference keeps the attention and the read-out


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    a = make_inputs("dynamic_memory", 8, 5, 3, 3, (5, 2), torch.float32, "cpu")
    h, key, value, mask, w, b = (a[k] for k in ("h", "key", "value", "mask", "weight", "bias"))
    cases = [
        (lambda: ops.memory_read(h[0], key, value), ValueError, "query must have 4 dimensions"),
        (lambda: ops.memory_read(h, key[:1], value[:1]), ValueError, r"key.shape\[0\]"),
        (lambda: ops.memory_read(h, key[:, :4], value), ValueError, r"key.shape\[1\]"),
        (lambda: ops.memory_read(h, key, value[:, :, :4]), ValueError, r"value.shape\[2\]"),
        (lambda: ops.memory_read(h, key.double(), value), TypeError, "key has dtype"),
        (lambda: ops.memory_read(h, key, value, mask[:, :4]), ValueError, "mask must have shape"),
        (lambda: ops.memory_read(h, key, value, mask[:1]), ValueError, "mask must have shape"),
        (lambda: ops.memory_read(h, key, value, mask.int()), TypeError, "torch.bool"),
        (lambda: ops.memory_read(h, key, value, mask[0]), ValueError, "mask must have shape"),
        (lambda: ops.memory_read(h.long(), key, value), TypeError, "floating-point"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w[:5], b), ValueError, "gate weight"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w, b.expand(2)), ValueError, "gate bias"),
        (lambda: ops.dynamic_memory(h, key, value[:, :4], mask, w, b), ValueError,
         r"value.shape\[1\]"),
        (lambda: ops.response_gate(h, h[:, :4], w, b), ValueError, "o must have the shape"),
        (lambda: ops.memory_read(h, key, value, impl="nope"), ValueError, "impl"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

"""dynamic_memory: the reference against naive loops, every backend and dtype against the
reference (output, attention, every gradient, the kernels' log-sum-exp), deterministic backward,
the kernels' own argument checks, opcheck, torch.compile, double backward, what is saved for
backward, autocast, bad input."""
import pytest
import torch

import naive
from conftest import (FAST_BACKENDS, assert_close, assert_same_every_run, backend_dtypes,
                      cast_floats, op_matrix, require)
from dynamic_memory_family import (BLOCKING_DTYPES, Case, check, make_inputs, outputs_and_grads,
                                   run)
from t2i_fast import backends, ops
from t2i_fast.profiling import saved_bytes

OP = "dynamic_memory"
pytestmark = pytest.mark.usefixtures("poisoned")

# N never a multiple of a pixel block, every T and C of SPEC §7, lengths 0 and T, every layout
# and mask kind, mask_compat, with and without the attention.
CASES = [
    Case(32, 1, 3, 5, (0, 1)),
    Case(48, 7, 9, 9, (7, 3), layout="channels_last", grad_layout="channels_last",
         mask_compat=True, seed=1),
    Case(64, 18, 4, 9, (18, 0), layout="sliced", extras=False, seed=2),
    Case(32, 30, 7, 3, (1, 30), layout="sliced", grad_layout="expanded", seed=3),
    Case(48, 18, 5, 7, (18, 5, 9), mask="holes", mask_compat=True, seed=4),
    Case(64, 7, 5, 5, (7, 7), mask="none", seed=5),
]
BLOCKING = [
    Case(64, 18, 20, 20, (18, 9), seed=7, shape_id="units-C64-T18-20x20"),
    Case(4, 3, 96, 96, (3, 1, 2, 3, 0, 3, 2, 1), mask_compat=True, extras=False, seed=8,
         shape_id="chunks-C4-T3-96x96-B8"),
]
# GPU sizes: DM-GAN's memory step at its 64^2 and 128^2 stages.
FULL_SIZES = [
    Case(64, 18, 64, 64, (18, 9, 1, 12, 18) * 2, seed=9, shape_id="dmgan-B10-C64-64px-T18"),
    Case(64, 12, 128, 128, (12, 3, 7, 1) * 4, seed=10, shape_id="dmgan-B16-C64-128px-T12"),
    Case(64, 18, 64, 64, (18, 2, 11, 5) * 4, mask_compat=True, seed=11,
         shape_id="dmgan-B16-C64-64px-T18-compat"),
]
SMALL = Case(32, 7, 3, 5, (7, 3))
test_matches_reference, test_blocking_matches_reference, test_full_size = op_matrix(
    OP, check, CASES, BLOCKING, FULL_SIZES, BLOCKING_DTYPES)


def test_reference_matches_naive_loop():
    a = make_inputs(OP, Case(4, 3, 3, 2, (3, 1)), torch.float64, "cpu")
    o, _ = naive.memory_read(a["h"], a["key"], a["value"], a["mask"])
    expected = naive.response_gate(a["h"], o, a["weight"], a["bias"])
    torch.testing.assert_close(
        ops.dynamic_memory_reference(a["h"], a["key"], a["value"], a["mask"], a["weight"],
                                     a["bias"]), expected)


def test_reference_gradcheck():
    case = Case(3, 4, 2, 3, (4, 0))
    a = make_inputs(OP, case, torch.float64, "cpu")
    names = ("h", "key", "value", "weight", "bias")

    def fn(*floats):
        return run(OP, {**a, **dict(zip(names, floats))}, "reference", case)

    assert torch.autograd.gradcheck(fn, [a[k].clone().requires_grad_() for k in names])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backward_is_deterministic(backend):
    """Bitwise the same gradients on every call and for any CPU thread count."""
    device = require(backend, OP, torch.float32)
    a = make_inputs(OP, CASES[4], torch.float32, device)
    assert_same_every_run(lambda: outputs_and_grads(OP, a, backend, CASES[4])[1], (1, 2, 2))


@pytest.mark.parametrize("backend", ["triton"])
def test_atomic_backward_matches_reference(backend, monkeypatch):
    """T2I_FAST_DETERMINISTIC=0: the Triton backward sums over pixels with atomics."""
    device = require(backend, OP, torch.float32)
    monkeypatch.setenv("T2I_FAST_DETERMINISTIC", "0")
    check(OP, CASES[4], backend, torch.float32, device)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_extension_kernels_check_what_memory_safety_needs(backend):
    """The C++ kernels, called directly, refuse arguments that would make them read out of
    bounds (the user-facing checks are the Python layer's, above)."""
    device = require(backend, OP, torch.float32)
    a = make_inputs(OP, SMALL, torch.float32, device)
    forward = backends.kernel(backend, "dynamic_memory_forward")
    h, key, value, mask, w, b = (a[k] for k in ("h", "key", "value", "mask", "weight", "bias"))
    bad = [
        ((h, h, key, value, mask, w, b), "either o"),
        ((h, None, key, value, mask.float(), w, b), "mask"),
        ((h, None, key, value, mask[:, :3], w, b), "mask"),
        ((h, None, key, value, mask, w[:-1], b), "gate_weight"),
        ((h, None, key.double(), value, mask, w, b), "key"),
        ((h, None, key, value[:, :, :3], mask, w, b), "value"),
        ((h, None, key[:1], value[:1], mask, w, b), "key"),
    ]
    for args, name in bad:
        with pytest.raises(RuntimeError, match=name):
            forward(*args, 1.0, False, False, False)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_opcheck(backend):
    device = require(backend, OP, torch.float32)
    a = make_inputs(OP, Case(32, 7, 3, 5, (7, 0)), torch.float32, device)
    h = a["h"].requires_grad_()
    fwd_args = (h, None, a["key"], a["value"], a["mask"], a["weight"], a["bias"], 1.0, True,
                True, True, backend)
    torch.library.opcheck(torch.ops.t2i_fast.dynamic_memory_fwd.default, fwd_args)
    out, lse, attn, gate = torch.ops.t2i_fast.dynamic_memory_fwd(
        *[x.detach() if torch.is_tensor(x) else x for x in fwd_args])
    bwd_args = (torch.randn_like(out), torch.randn_like(attn), torch.randn_like(gate), h.detach(),
                None, a["key"], a["value"], a["mask"], a["weight"], a["bias"], lse, 1.0, True,
                backend)
    torch.library.opcheck(torch.ops.t2i_fast.dynamic_memory_bwd.default, bwd_args)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_compiles_fullgraph(backend):
    device = require(backend, OP, torch.float32)
    a = make_inputs(OP, SMALL, torch.float32, device)

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
        torch.testing.assert_close(got.grad, ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_double_backward_raises(backend):
    device = require(backend, OP, torch.float32)
    a = make_inputs(OP, SMALL, torch.float32, device)
    h = a["h"].clone().requires_grad_()
    out = ops.dynamic_memory(h, a["key"], a["value"], a["mask"], a["weight"], a["bias"],
                             impl=backend)
    (g,) = torch.autograd.grad(out.square().sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_saves_inputs_plus_per_pixel_statistics(backend):
    device = require(backend, OP, torch.float32)
    case = Case(64, 18, 32, 32, (18, 9))
    a = make_inputs(OP, case, torch.float32, device)
    leaves = {k: v.clone().requires_grad_() if v.is_floating_point() else v
              for k, v in a.items()}
    inputs = sum(v.numel() * v.element_size() for v in a.values())

    def call(impl):
        return ops.dynamic_memory(leaves["h"], leaves["key"], leaves["value"], leaves["mask"],
                                  leaves["weight"], leaves["bias"], impl=impl)

    fused, reference = saved_bytes(call, backend), saved_bytes(call, "reference")
    lse_bytes = case.batch * case.height * case.width * 4
    assert fused <= inputs + lse_bytes, (fused, inputs)
    assert reference > 2 * fused  # the reference keeps the attention and the read-out


@pytest.mark.parametrize("backend,dtype", backend_dtypes(dtypes=(torch.bfloat16,)))
def test_autocast_runs_in_the_region_dtype(backend, dtype):
    """Under torch.autocast the op runs in the region's dtype whatever its inputs' dtypes;
    outside it, mixed dtypes are an error."""
    device = require(backend, OP, dtype)
    a = make_inputs(OP, SMALL, torch.float32, device)
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in a.items()}
    with torch.autocast(device, dtype=dtype):
        (out,) = run(OP, {**a, "h": low["h"]}, backend, SMALL, extras=False)
    assert out.dtype == dtype
    (exact,) = run(OP, cast_floats(low, torch.float64), "reference", SMALL, extras=False)
    (native,) = run(OP, low, "reference", SMALL, extras=False)
    assert_close(out, exact, dtype, native, "autocast output")
    with pytest.raises(TypeError, match="gate_weight has dtype"):
        ops.dynamic_memory(low["h"], low["key"], low["value"], a["mask"], a["weight"],
                           a["bias"], impl=backend)


def test_bad_inputs_raise_clear_errors():
    a = make_inputs(OP, Case(8, 5, 3, 3, (5, 2)), torch.float32, "cpu")
    h, key, value, mask, w, b = (a[k] for k in ("h", "key", "value", "mask", "weight", "bias"))
    cases = [
        (lambda: ops.dynamic_memory(h[0], key, value, mask, w, b), ValueError,
         "h must have 4 dimensions"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w[:5], b), ValueError, "gate weight"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w, b.expand(2)), ValueError,
         "gate bias"),
        (lambda: ops.dynamic_memory(h, key, value[:, :4], mask, w, b), ValueError,
         r"value.shape\[1\]"),
        (lambda: ops.dynamic_memory(h, key, value, mask[:, :4], w, b), ValueError,
         "mask must have shape"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w.double(), b), TypeError,
         "gate_weight has dtype"),
        (lambda: ops.dynamic_memory(h, key, value, mask, w, b, impl="nope"), ValueError, "impl"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

"""memory_read: the reference against a naive loop and the upstream tiling, every backend and
dtype against the reference (outputs, attention, every gradient, the kernels' log-sum-exp),
fully masked rows, the drop-in Memory and GlobalAttentionGeneral modules, bad input."""
import pytest
import torch

import naive
import upstream
from conftest import FAST_BACKENDS, op_matrix, padding_mask, require
from dynamic_memory_family import (BLOCKING_DTYPES, Case, check, kernel_forward, make_inputs,
                                   outputs_and_grads, run)
from t2i_fast import ops

OP = "memory_read"
pytestmark = pytest.mark.usefixtures("poisoned")

# N never a multiple of a pixel block, every T and C of SPEC §7, lengths 0 and T, Cv != C,
# every layout and mask kind, mask_compat, with and without the attention.
CASES = [
    Case(32, 1, 3, 5, (0, 1), scale=0.7),
    Case(48, 7, 9, 9, (7, 3), value_channels=24, layout="channels_last",
         grad_layout="channels_last"),
    Case(64, 18, 4, 9, (18, 0), layout="sliced", extras=False, seed=2),
    Case(32, 30, 7, 3, (1, 30), mask_compat=True, layout="sliced", grad_layout="expanded",
         seed=3),
    Case(48, 7, 5, 3, (7, 0, 2), mask_compat=True, value_channels=40, seed=4),
    Case(64, 18, 5, 7, (18, 5, 9), mask="holes", layout="sliced", mask_compat=True, seed=5),
    Case(32, 7, 5, 5, (7, 7), mask="none", extras=False, seed=6),
]
# Sized for the compiled kernels' blocking: several work units per image (units), several
# staged chunks per work unit (chunks); float32 and float64.
BLOCKING = [
    Case(64, 18, 20, 20, (18, 9), seed=7, shape_id="units-C64-T18-20x20"),
    Case(4, 3, 96, 96, (3, 1, 2, 3, 0, 3, 2, 1), value_channels=3, mask_compat=True, seed=8,
         shape_id="chunks-C4-T3-96x96-B8"),
]
# GPU sizes: AttnGAN's word attention at 128^2 (idf 32) and DM-GAN's memory read at 64^2.
FULL_SIZES = [Case(32, 18, 128, 128, (18, 9, 1, 12) * 4, seed=9, shape_id="attngan-B16-C32-128px"),
              Case(64, 18, 64, 64, (18, 5) * 5, value_channels=64, seed=10,
                   shape_id="dmgan-B10-C64-64px")]
test_matches_reference, test_blocking_matches_reference, test_full_size = op_matrix(
    OP, check, CASES, BLOCKING, FULL_SIZES, BLOCKING_DTYPES)


def test_reference_matches_naive_loop():
    for mask_compat in (False, True):
        case = Case(5, 4, 3, 2, (4, 0, 2), scale=0.7, mask_compat=mask_compat)
        a = make_inputs(OP, case, torch.float64, "cpu")
        out, attn = ops.memory_read_reference(a["h"], a["key"], a["value"], a["mask"], scale=0.7,
                                              mask_compat=mask_compat, return_attn=True)
        out_n, attn_n = naive.memory_read(a["h"], a["key"], a["value"], a["mask"], scale=0.7,
                                          mask_compat=mask_compat)
        torch.testing.assert_close(out, out_n)
        torch.testing.assert_close(attn, attn_n)
        if not mask_compat:  # the zero-length element reads exactly 0
            assert out[1].abs().max() == 0 and attn[1].abs().max() == 0


def test_reference_gradcheck():
    case = Case(3, 4, 2, 3, (4, 0), mask_compat=True, scale=0.5)
    a = make_inputs(OP, case, torch.float64, "cpu")
    names = ("h", "key", "value")

    def fn(*floats):
        return run(OP, {**a, **dict(zip(names, floats))}, "reference", case)

    assert torch.autograd.gradcheck(fn, [a[k].clone().requires_grad_() for k in names])


def test_mask_compat_reproduces_upstream_tiling():
    """Upstream: scores viewed as (B*N, T), mask.repeat(N, 1), softmax over T."""
    case = Case(4, 5, 3, 3, (5, 2, 4), mask_compat=True)
    a = make_inputs(OP, case, torch.float64, "cpu")
    expected = upstream.memory_tiled(a["h"], a["key"], a["value"], a["mask"])
    got = run(OP, a, "reference", case)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(ops.memory_read(a["h"], a["key"], a["value"], a["mask"],
                                              impl="reference"), expected[0])




@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fully_masked_rows_read_zero(backend):
    device = require(backend, OP, torch.float32)
    case = Case(32, 7, 3, 5, (0, 0))
    a = make_inputs(OP, case, torch.float32, device)
    outs, grads, _ = outputs_and_grads(OP, a, backend, case)
    assert all(o.abs().max() == 0 for o in outs)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["h"].abs().max() == 0 and grads["key"].abs().max() == 0
    _, lse, _, _ = kernel_forward(OP, a, backend, case)
    assert torch.isposinf(lse).all()


# --------------------------------------------------------------------------------------------
# The drop-in modules
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_compat", [False, True])
def test_memory_module_equals_upstream(mask_compat):
    gen = torch.Generator().manual_seed(4)
    query = torch.randn(3, 8, 4, 5, generator=gen, dtype=torch.float64)
    key = 0.3 * torch.randn(3, 8, 6, generator=gen, dtype=torch.float64)
    value = torch.randn(3, 10, 6, generator=gen, dtype=torch.float64)
    mask = padding_mask([6, 2, 4], 6)
    memory = ops.Memory(mask_compat=mask_compat)
    memory.applyMask(mask.to(torch.uint8))  # upstream passes byte masks
    out, attn = memory(query, key, value)
    if mask_compat:
        expected = upstream.memory_tiled(query, key, value, mask)
    else:  # per-sample masks: the upstream code is right when each sample is alone (B = 1)
        parts = [upstream.memory_tiled(query[b:b + 1], key[b:b + 1], value[b:b + 1],
                                       mask[b:b + 1]) for b in range(3)]
        expected = tuple(torch.cat(p) for p in zip(*parts))
    torch.testing.assert_close((out, attn), expected)
    assert list(memory.state_dict()) == []


def test_global_attention_general_state_dict_and_math():
    module = ops.GlobalAttentionGeneral(idf=8, cdf=12).double()
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == \
        {"conv_context.weight": (8, 12, 1, 1)}
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(2, 8, 3, 3, generator=gen, dtype=torch.float64)
    words = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64)
    mask = padding_mask([5, 3], 5)
    module.applyMask(mask)
    out, attn = module(h, words)
    projected = torch.einsum("oc,bct->bot", module.conv_context.weight[:, :, 0, 0], words)
    expected = [upstream.memory_tiled(h[b:b + 1], projected[b:b + 1], projected[b:b + 1],
                                      mask[b:b + 1]) for b in range(2)]
    torch.testing.assert_close(out, torch.cat([e[0] for e in expected]))
    torch.testing.assert_close(attn, torch.cat([e[1] for e in expected]))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    a = make_inputs(OP, Case(8, 5, 3, 3, (5, 2)), torch.float32, "cpu")
    h, key, value, mask = a["h"], a["key"], a["value"], a["mask"]
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
        (lambda: ops.memory_read(h, key, value, impl="nope"), ValueError, "impl"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


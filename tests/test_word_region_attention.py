"""word_region_attention: the reference against a naive loop and the upstream func_attention,
every backend and dtype against the reference (context, attention, both gradients, the kernels'
per-word log-sum-exp), an absent or empty attention gradient, opcheck, the drop-in
func_attention, bad input."""
import pytest
import torch

import naive
import upstream
from conftest import FAST_BACKENDS, op_matrix, padding_mask, require
from t2i_fast import backends, ops
from word_region_family import Case, check, make_inputs, outputs_and_grads, run

OP = "word_region_attention"
pytestmark = pytest.mark.usefixtures("poisoned")

# R = H*W never a multiple of a region tile, every T and width of SPEC §7, lengths 0 (a fully
# padded caption), 1 and T, random holes, no mask, both layouts, with and without an attention
# gradient.
CASES = [
    Case(32, 1, 3, 4, (1, 1)),
    Case(48, 7, 5, 5, (7, 7), mask="none", layout="transposed", grad_attn="none", seed=1),
    Case(32, 18, 4, 5, (18, 18, 18), mask="holes", seed=2),
    Case(64, 30, 3, 3, (30, 12), layout="transposed", seed=3),
    Case(32, 7, 3, 5, (0, 4), grad_attn="none", seed=4),
    Case(16, 7, 3, 3, (7, 7), mask="none", layout="transposed", seed=5),
]
BLOCKING = [
    Case(32, 18, 17, 17, (18, 18, 18), mask="holes", seed=5, shape_id="B3-T18-17x17-holes"),
    Case(40, 30, 3, 7, (30, 9), layout="transposed", grad_attn="none", seed=6,
         shape_id="B2-D40-T30-3x7"),
]
# GPU sizes: DAMSM (batch 48, 17x17 regions, D 256) and the ITM (14x14 regions, D 512).
FULL_SIZES = [
    Case(256, 18, 17, 17, tuple(range(1, 19)) * 2 + (18,) * 12, seed=7, shape_id="damsm-B48"),
    Case(512, 12, 14, 14, tuple(range(1, 13)) * 2 + (12,) * 8, seed=8, shape_id="itm-B32-R196"),
]
test_matches_reference, test_blocking_matches_reference, test_full_size = op_matrix(
    OP, check, CASES, BLOCKING, FULL_SIZES)


def test_reference_matches_naive_loop():
    a = make_inputs(Case(5, 4, 2, 3, (4, 2)), torch.float64, "cpu")
    context, attn = ops.word_region_attention_reference(a["words"], a["regions"], 4.0, a["mask"])
    for b in range(2):
        c, at = naive.word_region_pair(a["words"][b], a["regions"][b].reshape(5, -1),
                                       int(a["cap_lens"][b]), 4.0)
        torch.testing.assert_close(context[b], c)
        torch.testing.assert_close(attn[b].reshape(4, -1), at)


def test_reference_without_mask_is_upstream_func_attention():
    """Word softmax per region, x gamma1, region softmax per word (AttnGAN func_attention)."""
    a = make_inputs(Case(6, 5, 3, 3, (5, 5), mask="none"), torch.float64, "cpu")
    got = ops.word_region_attention(a["words"], a["regions"], 4.0, impl="reference")
    torch.testing.assert_close(got, upstream.func_attention(a["words"], a["regions"], 4.0))


def test_reference_gradcheck():
    case = Case(4, 3, 2, 2, (3, 0))
    a = make_inputs(case, torch.float64, "cpu")
    assert torch.autograd.gradcheck(
        lambda r, w: run(OP, {**a, "regions": r, "words": w}, "reference", case),
        (a["regions"].requires_grad_(), a["words"].requires_grad_()))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_padded_words_read_nothing(backend):
    """Padded words get context 0, attention 0 and lse +inf; a fully padded caption reads
    nothing and passes no gradient."""
    device = require(backend, OP, torch.float32)
    case = Case(16, 7, 3, 3, (0, 4))
    a = make_inputs(case, torch.float32, device)
    (context, attn), grads, _ = outputs_and_grads(OP, a, backend, case)
    pad = a["mask"]
    assert (context.transpose(1, 2)[pad] == 0).all() and (attn[pad] == 0).all()
    assert (grads["words"][0] == 0).all() and (grads["regions"][0] == 0).all()
    flat = a["regions"].reshape(2, 16, 9)
    lse = backends.kernel(backend, "word_region_attention_forward")(a["words"], flat, pad,
                                                                    4.0)[2]
    assert torch.isposinf(lse[pad]).all() and torch.isfinite(lse[~pad]).all()


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_extension_reads_an_empty_attention_gradient_as_none(backend):
    """The C++ backward kernels take an empty grad_attn for an absent one (the ops pass None)."""
    device = require(backend, OP, torch.float32)
    case = CASES[4]
    a = make_inputs(case, torch.float32, device)
    flat = a["regions"].reshape(2, case.dim, -1)
    forward = backends.kernel(backend, "word_region_attention_forward")
    backward = backends.kernel(backend, "word_region_attention_backward")
    context, _, lse = forward(a["words"], flat, a["mask"], case.gamma1)
    grad_context = torch.randn_like(context)
    absent = backward(grad_context, None, a["words"], flat, a["mask"], lse, case.gamma1)
    empty = backward(grad_context, context.new_empty(0), a["words"], flat, a["mask"], lse,
                     case.gamma1)
    for x, y in zip(absent, empty):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_extension_kernels_check_what_memory_safety_needs(backend):
    """The C++ kernels, called directly, refuse arguments that would make them read out of
    bounds (the user-facing checks are the Python layer's, below)."""
    device = require(backend, OP, torch.float32)
    a = make_inputs(Case(8, 5, 3, 3, (5, 2, 1)), torch.float32, device)
    words, flat, mask = a["words"], a["regions"].reshape(3, 8, 9), a["mask"]
    forward = backends.kernel(backend, "word_region_attention_forward")
    for args, name in [((words[:2], flat, mask[:2], 4.0), "regions"),
                       ((words, flat, mask[:2], 4.0), "word_mask"),
                       ((words, flat[:, :4], mask, 4.0), "regions"),
                       ((words, flat.double(), mask, 4.0), "regions")]:
        with pytest.raises(RuntimeError, match=name):
            forward(*args)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_opcheck(backend):
    device = require(backend, OP, torch.float32)
    a = make_inputs(Case(16, 7, 3, 3, (7, 2)), torch.float32, device)
    flat = a["regions"].reshape(2, 16, 9)
    torch.library.opcheck(torch.ops.t2i_fast.word_region_attention_fwd.default,
                          (a["words"].clone().requires_grad_(), flat, a["mask"], 4.0, backend))


def test_func_attention_equals_upstream():
    a = make_inputs(Case(16, 6, 3, 3, (6, 6, 6, 6), mask="none", seed=3), torch.float64, "cpu")
    for got, expected in zip(ops.func_attention(a["words"], a["regions"], 4.0),
                             upstream.func_attention(a["words"], a["regions"], 4.0)):
        torch.testing.assert_close(got, expected)


def test_bad_inputs_raise_clear_errors():
    a = make_inputs(Case(8, 5, 3, 3, (5, 2, 1)), torch.float32, "cpu")
    words, regions = a["words"], a["regions"]
    cases = [
        (lambda: ops.word_region_attention(words[:2], regions, 4.0, padding_mask([1], 5)),
         ValueError, r"regions.shape\[0\]"),
        (lambda: ops.word_region_attention(words, regions, 4.0, padding_mask([1], 5)),
         ValueError, "word_mask must have shape"),
        (lambda: ops.word_region_attention(words, regions[:2], 4.0), ValueError,
         r"regions.shape\[0\]"),
        (lambda: ops.word_region_attention(words, regions[:, :4], 4.0), ValueError,
         r"regions.shape\[1\]"),
        (lambda: ops.word_region_attention(words, regions.double(), 4.0), TypeError,
         "regions has dtype"),
        (lambda: ops.word_region_attention(words, regions, 4.0, a["mask"].int()), TypeError,
         "torch.bool"),
        (lambda: ops.word_region_attention(words[0], regions, 4.0), ValueError,
         "words must have 3 dimensions"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

"""word_region_similarity: the reference against a naive loop, every backend and dtype against
the reference (S, both gradients, the kernels' per-word log-sum-exp), deterministic backward,
the kernels' own argument checks, opcheck, torch.compile, bad input."""
import pytest
import torch

import naive
from conftest import FAST_BACKENDS, assert_same_every_run, op_matrix, require
from t2i_fast import backends, ops
from word_region_family import Case, check, make_inputs, outputs_and_grads, run

OP = "word_region_similarity"
pytestmark = pytest.mark.usefixtures("poisoned")

# R = H*W never a multiple of a region tile, every T and width of SPEC §7, lengths 1 and T,
# B_img != B_cap, both layouts.
CASES = [
    Case(32, 1, 3, 4, (1, 1, 1), images=2),
    Case(48, 7, 5, 5, (7, 3), images=3, layout="transposed", seed=1),
    Case(64, 18, 4, 5, (18, 1), images=2, seed=2),
    Case(32, 30, 3, 7, (30, 12, 1), images=1, layout="transposed", seed=3),
]
# Sized for the compiled kernels: 17x17 regions, DAMSM's width, more word columns than one
# block holds (several column chunks).
BLOCKING = [
    Case(32, 18, 17, 17, (18, 5, 1, 11), images=3, seed=4, shape_id="3x4-T18-17x17"),
    Case(256, 18, 17, 17, (18, 3, 9), images=2, layout="transposed", seed=5,
         shape_id="2x3-D256-T18-17x17"),
    Case(16, 18, 5, 5, tuple(range(1, 19)) * 2 + (18,), images=3, seed=6,
         shape_id="3x37-T18-5x5"),
    Case(16, 7, 3, 3, (7, 1, 4, 2, 5, 6, 3) * 5 + (7,) * 6, images=2, layout="transposed",
         seed=7, shape_id="2x41-T7-3x3"),
]
# GPU sizes: DAMSM (batch 48, 17x17 regions, D 256) and the ITM (14x14 regions, D 512).
FULL_SIZES = [
    Case(256, 18, 17, 17, tuple(range(1, 19)) * 2 + (18,) * 12, seed=8, shape_id="damsm-B48"),
    Case(512, 12, 14, 14, tuple(range(1, 13)) * 2 + (12,) * 8, seed=9, shape_id="itm-B32-R196"),
]
SMALL = Case(16, 7, 3, 3, (7, 1, 4), images=2)
test_matches_reference, test_blocking_matches_reference, test_full_size = op_matrix(
    OP, check, CASES, BLOCKING, FULL_SIZES)


def test_reference_matches_naive_loop():
    a = make_inputs(Case(5, 4, 2, 3, (4, 2), images=3), torch.float64, "cpu")
    torch.testing.assert_close(
        ops.word_region_similarity_reference(a["regions"], a["words"], a["cap_lens"], 4.0, 5.0),
        naive.word_region_similarity(a["regions"], a["words"], a["cap_lens"], 4.0, 5.0))


def test_reference_gradcheck():
    case = Case(4, 3, 2, 2, (3, 1, 2), images=2)
    a = make_inputs(case, torch.float64, "cpu")
    assert torch.autograd.gradcheck(
        lambda r, w: run(OP, {**a, "regions": r, "words": w}, "reference", case),
        (a["regions"].requires_grad_(), a["words"].requires_grad_()))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backward_is_deterministic(backend):
    """Bitwise the same gradients on every call (for a given CPU thread count)."""
    device = require(backend, OP, torch.float32)
    a = make_inputs(SMALL, torch.float32, device)
    assert_same_every_run(lambda: outputs_and_grads(OP, a, backend, SMALL)[1])


@pytest.mark.parametrize("backend", ["triton"])
def test_atomic_backward_matches_reference(backend, monkeypatch):
    """T2I_FAST_DETERMINISTIC=0: one backward launch over all pairs, with atomics."""
    device = require(backend, OP, torch.float32)
    monkeypatch.setenv("T2I_FAST_DETERMINISTIC", "0")
    check(OP, CASES[1], backend, torch.float32, device)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_extension_kernels_check_what_memory_safety_needs(backend):
    """The C++ kernels, called directly, refuse arguments that would make them read out of
    bounds (the user-facing checks are the Python layer's, below)."""
    device = require(backend, OP, torch.float32)
    a = make_inputs(SMALL, torch.float32, device)
    flat, words, lens = a["regions"].reshape(2, 16, 9), a["words"], a["cap_lens"]
    forward = backends.kernel(backend, "word_region_similarity_forward")
    backward = backends.kernel(backend, "word_region_similarity_backward")
    sim, lse = forward(flat, words, lens, 4.0, 5.0)
    bad = [
        (lambda: forward(flat, words, lens.int(), 4.0, 5.0), "cap_lens"),
        (lambda: forward(flat, words, lens[:2], 4.0, 5.0), "cap_lens"),
        (lambda: forward(flat, words[:, :8], lens, 4.0, 5.0), r"words"),
        (lambda: forward(flat, words.double(), lens, 4.0, 5.0), "words"),
        (lambda: backward(sim, flat, words, lens, lse[:, :, :4], 4.0, 5.0), "lse"),
        (lambda: backward(sim.t(), flat, words, lens, lse, 4.0, 5.0), "grad_s"),
    ]
    for call, name in bad:
        with pytest.raises(RuntimeError, match=name):
            call()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_opcheck_and_compile(backend):
    device = require(backend, OP, torch.float32)
    a = make_inputs(SMALL, torch.float32, device)
    regions, words, lens = a["regions"], a["words"], a["cap_lens"]
    flat = regions.reshape(2, 16, 9)
    torch.library.opcheck(torch.ops.t2i_fast.word_region_similarity_fwd.default,
                          (flat.clone().requires_grad_(), words, lens, 4.0, 5.0, backend))
    sim, lse = torch.ops.t2i_fast.word_region_similarity_fwd(flat, words, lens, 4.0, 5.0,
                                                             backend)
    torch.library.opcheck(torch.ops.t2i_fast.word_region_similarity_bwd.default,
                          (torch.randn_like(sim), flat, words, lens, lse, 4.0, 5.0, backend))

    def loss(r, w):
        return ops.word_region_similarity(r, w, lens, impl=backend).logsumexp(1).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    r = regions.clone().requires_grad_()
    compiled(r, words).backward()
    r_ref = regions.clone().requires_grad_()
    loss(r_ref, words).backward()
    torch.testing.assert_close(r.grad, r_ref.grad, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    a = make_inputs(Case(8, 5, 3, 3, (5, 2, 1), images=2), torch.float32, "cpu")
    regions, words, lens = a["regions"], a["words"], a["cap_lens"]
    cases = [
        (lambda: ops.word_region_similarity(regions, words, torch.tensor([5, 0, 1])), ValueError,
         "cannot be matched"),
        (lambda: ops.word_region_similarity(regions, words, torch.tensor([6, 1, 1])), ValueError,
         "1..T"),
        (lambda: ops.word_region_similarity(regions, words, lens[:2]), ValueError, "cap_lens"),
        (lambda: ops.word_region_similarity(regions, words, lens.float()), TypeError, "cap_lens"),
        (lambda: ops.word_region_similarity(regions, words[:, :4], lens), ValueError,
         r"words.shape\[1\]"),
        (lambda: ops.word_region_similarity(regions.reshape(2, 8, 9), words, lens), ValueError,
         "regions must have 4 dimensions"),
        (lambda: ops.word_region_similarity(regions, words.double(), lens), TypeError,
         "words has dtype"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

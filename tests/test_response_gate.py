"""response_gate: the reference against a naive loop, every backend and dtype against the
reference (output, gate, every gradient), both weight shapes, bad input."""
import pytest
import torch

import naive
from conftest import backend_dtypes, op_matrix, require
from dynamic_memory_family import BLOCKING_DTYPES, Case, check, make_inputs, run
from t2i_fast import ops

OP = "response_gate"
pytestmark = pytest.mark.usefixtures("poisoned")

# The gate has no slots (T and the lengths only size the unused memory inputs): odd pixel
# counts, every C of SPEC §7, every layout of h, o and the output gradient, with and without g.
CASES = [
    Case(32, 1, 3, 5, (1, 1), shape_id="C32-3x5"),
    Case(48, 1, 9, 9, (1, 1), layout="channels_last", grad_layout="channels_last", seed=1,
         shape_id="C48-9x9-channels_last"),
    Case(64, 1, 4, 9, (1, 1, 1), extras=False, seed=2, shape_id="C64-4x9-no-gate"),
    Case(32, 1, 7, 3, (1,), layout="sliced", grad_layout="expanded", seed=3,
         shape_id="C32-7x3-sliced"),
]
BLOCKING = [Case(4, 1, 96, 96, (1,) * 8, seed=8, shape_id="chunks-C4-96x96-B8")]
# GPU size: DM-GAN's gate at the 128^2 stage.
FULL_SIZES = [Case(64, 1, 128, 128, (1,) * 16, seed=9, shape_id="dmgan-B16-C64-128px")]
test_matches_reference, test_blocking_matches_reference, test_full_size = op_matrix(
    OP, check, CASES, BLOCKING, FULL_SIZES, BLOCKING_DTYPES)


def test_reference_matches_naive_loop():
    a = make_inputs(OP, Case(4, 1, 3, 2, (1, 1)), torch.float64, "cpu")
    expected = naive.response_gate(a["h"], a["o"], a["weight"], a["bias"])
    got, gate = ops.response_gate_reference(a["h"], a["o"], a["weight"], a["bias"],
                                            return_gate=True)
    torch.testing.assert_close(got, expected)
    assert gate.shape == (2, 1, 3, 2) and ((gate > 0) & (gate < 1)).all()


def test_reference_gradcheck():
    case = Case(3, 1, 2, 3, (1, 1))
    a = make_inputs(OP, case, torch.float64, "cpu")
    names = ("h", "o", "weight", "bias")

    def fn(*floats):
        return run(OP, {**a, **dict(zip(names, floats))}, "reference", case)

    assert torch.autograd.gradcheck(fn, [a[k].clone().requires_grad_() for k in names])


@pytest.mark.parametrize("backend,dtype", backend_dtypes(dtypes=(torch.float32,)))
def test_conv_weight_shape_is_accepted(backend, dtype):
    """The 2C weights may come as the (1, 2C, 1, 1) weight of the upstream 1x1 conv."""
    device = require(backend, OP, dtype)
    a = make_inputs(OP, CASES[0], dtype, device)
    flat = ops.response_gate(a["h"], a["o"], a["weight"], a["bias"], impl=backend)
    conv = ops.response_gate(a["h"], a["o"], a["weight"].reshape(1, -1, 1, 1),
                             a["bias"].reshape(()), impl=backend)
    assert torch.equal(flat, conv)


def test_bad_inputs_raise_clear_errors():
    a = make_inputs(OP, Case(8, 1, 3, 3, (1, 1)), torch.float32, "cpu")
    h, o, w, b = a["h"], a["o"], a["weight"], a["bias"]
    cases = [
        (lambda: ops.response_gate(h, o[:, :4], w, b), ValueError, "o must have the shape"),
        (lambda: ops.response_gate(h[0], o, w, b), ValueError, "h must have 4 dimensions"),
        (lambda: ops.response_gate(h, o.double(), w, b), TypeError, "o has dtype"),
        (lambda: ops.response_gate(h, o, w[:5], b), ValueError, "gate weight"),
        (lambda: ops.response_gate(h, o, w.reshape(2, -1), b), ValueError, "gate weight"),
        (lambda: ops.response_gate(h, o, w, b.expand(2)), ValueError, "gate bias"),
        (lambda: ops.response_gate(h, o, w.double(), b), TypeError, "gate_weight has dtype"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

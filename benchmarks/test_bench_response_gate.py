"""response_gate: fast backends vs the eager reference and its torch.compile.

Run: pytest benchmarks/test_bench_response_gate.py --benchmark-only
There is no public fused alternative: DM-GAN's own code is the eager reference's math.
Shape (B, C, H, W), N = H*W pixels, s bytes per element.
FLOPs per element of h: forward 7 (the gate's two dot products over [h; o], then o - h, * g,
    + h); backward 14 (dh, do, the gate gradient's dot product, and dweight's two sums).
Fewest bytes (bench_utils.io_bytes): inputs h, o, weight, bias = s (2 B C N + 2 C + 1);
    output out = s B C N; gradients of all four inputs = s (2 B C N + 2 C + 1).
"""
import pytest

from bench_inputs import DTYPES, MEMORY_SHAPES, memory_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops

OP = "response_gate"
SHAPES = [shape[:4] for shape in MEMORY_SHAPES]
NAMES = ("h", "o", "weight", "bias")


def work(shape, size, mode):
    batch, channels, height, width = shape
    elements = batch * channels * height * width
    flops = by_mode(mode, 7 * elements, 14 * elements)
    inputs = size * (2 * elements + 2 * channels + 1)
    return flops, io_bytes(mode, inputs, size * elements, inputs)


def providers(shape, dtype):
    return providers_for(OP, dtype, {"batch": shape[0]})


@pytest.mark.parametrize("shape,dtype,provider,mode", cases(OP, SHAPES, DTYPES, providers))
def test_response_gate(benchmark, shape, dtype, provider, mode):
    args = memory_inputs(OP, shape, dtype)
    inputs = [args[name] for name in NAMES]
    forward = forward_for(provider, ops.response_gate_reference, ops.response_gate)
    run_case(benchmark, OP, shape, dtype, provider, mode, forward, inputs,
             work(shape, inputs[0].element_size(), mode), reference=shape == SHAPES[0])

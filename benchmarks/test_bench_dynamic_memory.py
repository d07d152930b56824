"""dynamic_memory (memory_read then response_gate in one pass): fast backends vs the eager
reference, its torch.compile, and SDPA followed by the eager gate.

Run: pytest benchmarks/test_bench_dynamic_memory.py --benchmark-only
Shape (B, C, H, W, T), N = H*W pixels, s bytes per element; the mask is one byte per slot.
FLOPs: memory_read's (forward 4 B N T C, backward 8 B N T C) plus response_gate's (forward
    7 B C N, backward 14 B C N); see their modules.
Fewest bytes (bench_utils.io_bytes): the read-out o never leaves the kernel, so inputs h, key,
    value, mask, gate weight and bias = s (B C N + 2 B C T + 2 C + 1) + B T; output out =
    s B C N; gradients of the five float inputs = s (B C N + 2 B C T + 2 C + 1).
"""
import pytest

from bench_inputs import DTYPES, MEMORY_SHAPES, memory_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops
from test_bench_memory_read import sdpa_read

OP = "dynamic_memory"
SHAPES = MEMORY_SHAPES
NAMES = ("h", "key", "value", "mask", "weight", "bias")


def work(shape, size, mode):
    batch, channels, height, width, slots = shape
    elements = batch * channels * height * width
    flops = by_mode(mode, (4 * slots + 7) * elements, (8 * slots + 14) * elements)
    floats = size * (elements + 2 * batch * channels * slots + 2 * channels + 1)
    return flops, io_bytes(mode, floats + batch * slots, size * elements, floats)


def sdpa_then_gate(h, key, value, mask, weight, bias):
    return ops.response_gate_reference(h, sdpa_read(h, key, value, mask), weight, bias)


def providers(shape, dtype):
    return providers_for(OP, dtype, {"batch": shape[0], "slots": shape[4]}, ["sdpa"])


@pytest.mark.parametrize("shape,dtype,provider,mode", cases(OP, SHAPES, DTYPES, providers))
def test_dynamic_memory(benchmark, shape, dtype, provider, mode):
    args = memory_inputs(OP, shape, dtype)
    inputs = [args[name] for name in NAMES]
    forward = forward_for(provider, ops.dynamic_memory_reference, ops.dynamic_memory,
                          {"sdpa": sdpa_then_gate})
    run_case(benchmark, OP, shape, dtype, provider, mode, forward, inputs,
             work(shape, inputs[0].element_size(), mode), reference=shape == SHAPES[0])

"""memory_read: fast backends vs the eager reference, its torch.compile and SDPA.

Run: pytest benchmarks/test_bench_memory_read.py --benchmark-only
Shape (B, C, H, W, T), N = H*W pixels, s bytes per element; the mask is one byte per slot.
FLOPs (matrix products, 2 per multiply-add; the softmax is O(1/C) of them):
    forward 4 B N T C (scores Q K, read-out P V); backward 8 B N T C (dP, dV, dQ, dK).
Fewest bytes (bench_utils.io_bytes): inputs h, key, value, mask = s (B C N + 2 B C T) + B T;
    output out = s B C N; gradients dh, dkey, dvalue = s (B C N + 2 B C T).
"""
import pytest
import torch.nn.functional as F

from bench_inputs import DTYPES, MEMORY_SHAPES, memory_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops

OP = "memory_read"
SHAPES = MEMORY_SHAPES
NAMES = ("h", "key", "value", "mask")


def work(shape, size, mode):
    batch, channels, height, width, slots = shape
    pixels = height * width
    flops = by_mode(mode, 4 * batch * pixels * slots * channels,
                    8 * batch * pixels * slots * channels)
    features = size * batch * channels * pixels
    memory = size * 2 * batch * channels * slots
    return flops, io_bytes(mode, features + memory + batch * slots, features, features + memory)


def sdpa_read(h, key, value, mask):
    """What a user writes with SDPA: NCHW -> (B,1,N,C), attend, and back to NCHW."""
    batch, _, height, width = h.shape
    query = h.flatten(2).transpose(1, 2).contiguous()[:, None]
    out = F.scaled_dot_product_attention(
        query, key.transpose(1, 2)[:, None], value.transpose(1, 2)[:, None],
        attn_mask=~mask[:, None, None, :], scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(batch, -1, height, width).contiguous()


def providers(shape, dtype):
    return providers_for(OP, dtype, {"batch": shape[0], "slots": shape[4]}, ["sdpa"])


@pytest.mark.parametrize("shape,dtype,provider,mode", cases(OP, SHAPES, DTYPES, providers))
def test_memory_read(benchmark, shape, dtype, provider, mode):
    args = memory_inputs(OP, shape, dtype)
    inputs = [args[name] for name in NAMES]
    forward = forward_for(provider, ops.memory_read_reference, ops.memory_read,
                          {"sdpa": sdpa_read})
    run_case(benchmark, OP, shape, dtype, provider, mode, forward, inputs,
             work(shape, inputs[0].element_size(), mode), reference=shape == SHAPES[0])

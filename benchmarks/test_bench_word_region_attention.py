"""word_region_attention (AttnGAN's func_attention with a word mask): fast backends vs the eager
reference, its torch.compile and the upstream batched func_attention.

Run: pytest benchmarks/test_bench_word_region_attention.py --benchmark-only
The upstream function takes no mask: it does the same work over every slot.
Shape (B, D, H, W, T), R = H*W regions, s bytes per element; the mask is one byte per slot.
FLOPs (matrix products, 2 per multiply-add; the two softmaxes are O(1/D) of them):
    forward 4 B R T D (scores, context); backward 8 B R T D.
Fewest bytes (bench_utils.io_bytes): inputs words, regions, mask = s (B D T + B D R) + B T;
    outputs context, attn = s (B D T + B T R); gradients dwords, dregions = s (B D T + B D R).
"""
import pytest

from bench_inputs import DTYPES, WORD_SHAPES, word_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops
import upstream  # noqa: I001 (tests/ is on the path once bench_utils is imported)

OP = "word_region_attention"
SHAPES = WORD_SHAPES
GAMMA1 = 4.0  # DAMSM's


def work(shape, size, mode):
    batch, dim, height, width, slots = shape
    regions = height * width
    flops = by_mode(mode, 4 * batch * regions * slots * dim, 8 * batch * regions * slots * dim)
    floats = size * batch * dim * (slots + regions)
    outputs = size * batch * slots * (dim + regions)
    return flops, io_bytes(mode, floats + batch * slots, outputs, floats)


def reference(words, regions, mask):
    return ops.word_region_attention_reference(words, regions, GAMMA1, mask)


def public(words, regions, mask, impl=None):
    return ops.word_region_attention(words, regions, GAMMA1, mask, impl=impl)


def upstream_attention(words, regions, mask):
    return upstream.func_attention(words, regions, GAMMA1)


def providers(shape, dtype):
    call = {"batch": shape[0], "slots": shape[4], "gamma1": GAMMA1}
    return providers_for(OP, dtype, call, ["upstream"])


@pytest.mark.parametrize("shape,dtype,provider,mode", cases(OP, SHAPES, DTYPES, providers))
def test_word_region_attention(benchmark, shape, dtype, provider, mode):
    args = word_inputs(shape, dtype)
    inputs = [args["words"], args["regions"], args["mask"]]
    forward = forward_for(provider, reference, public, {"upstream": upstream_attention})
    run_case(benchmark, OP, shape, dtype, provider, mode, forward, inputs,
             work(shape, inputs[0].element_size(), mode), reference=shape == SHAPES[0])

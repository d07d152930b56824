"""word_region_similarity (every image against every caption): fast backends vs the batched
eager reference, its torch.compile and the upstream per-caption loop (tests/upstream.py).

Run: pytest benchmarks/test_bench_word_region_similarity.py --benchmark-only
The loop gets the caption lengths as a host list, as upstream code holds them, so that it pays
no device synchronisation per caption.
Shape (B, D, H, W, T) with B images and B captions, R = H*W regions, s bytes per element.
FLOPs (matrix products of the B^2 pairs, 2 per multiply-add; softmaxes and cosines are O(1/R)
    of them): forward 4 B^2 R T D; backward 8 B^2 R T D.
Fewest bytes (bench_utils.io_bytes): inputs regions, words, cap_lens = s (B D R + B D T) + 8 B;
    output S = s B^2; gradients dregions, dwords = s (B D R + B D T).
"""
import pytest

from bench_inputs import DTYPES, WORD_SHAPES, word_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops
import upstream  # noqa: I001 (tests/ is on the path once bench_utils is imported)

OP = "word_region_similarity"
SHAPES = WORD_SHAPES
GAMMA1, GAMMA2 = 4.0, 5.0  # DAMSM's


def work(shape, size, mode):
    batch, dim, height, width, slots = shape
    pair_flops = 4 * height * width * slots * dim
    flops = by_mode(mode, batch * batch * pair_flops, 2 * batch * batch * pair_flops)
    floats = size * batch * dim * (height * width + slots)
    return flops, io_bytes(mode, floats + 8 * batch, size * batch * batch, floats)


def reference(regions, words, cap_lens):
    return ops.word_region_similarity_reference(regions, words, cap_lens, GAMMA1, GAMMA2)


def public(regions, words, cap_lens, impl=None):
    return ops.word_region_similarity(regions, words, cap_lens, GAMMA1, GAMMA2, impl=impl)


def loop_over(host_lens):
    return lambda regions, words, cap_lens: upstream.word_similarity_loop(
        regions, words, host_lens, GAMMA1, GAMMA2)


def providers(shape, dtype):
    call = {"images": shape[0], "captions": shape[0], "slots": shape[4], "gamma1": GAMMA1}
    return providers_for(OP, dtype, call, ["loop"])


@pytest.mark.parametrize("shape,dtype,provider,mode", cases(OP, SHAPES, DTYPES, providers))
def test_word_region_similarity(benchmark, shape, dtype, provider, mode):
    args = word_inputs(shape, dtype)
    inputs = [args["regions"], args["words"], args["cap_lens"]]
    forward = forward_for(provider, reference, public,
                          {"loop": loop_over(args["cap_lens"].tolist())})
    run_case(benchmark, OP, shape, dtype, provider, mode, forward, inputs,
             work(shape, inputs[0].element_size(), mode), reference=shape == SHAPES[0])

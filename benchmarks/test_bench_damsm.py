"""The DAMSM losses: damsm_word_loss (fast backends of word_region_similarity vs the eager
reference, its torch.compile and the upstream per-caption words_loss) and damsm_sentence_loss
(torch ops only: the op vs its torch.compile and the upstream sent_loss).

Run: pytest benchmarks/test_bench_damsm.py --benchmark-only
Both return two scalar losses. The upstream words_loss gets the caption lengths as a host list.
damsm_word_loss, shape (B, D, H, W, T), R = H*W, s bytes per element: FLOPs and bytes of
    word_region_similarity (its module) with the B x B logits replaced by the two losses
    (the cross-entropies are O(1/(R T D)) of the work): forward 4 B^2 R T D, backward
    8 B^2 R T D; inputs s (B D R + B D T) + 8 B, outputs 2 s, gradients s (B D R + B D T).
damsm_sentence_loss, shape (B, D): FLOPs forward 2 B^2 D (the Gram matrix of the codes),
    backward 4 B^2 D; inputs 2 s B D, outputs 2 s, gradients 2 s B D.
"""
import pytest

from bench_inputs import DTYPES, SENTENCE_SHAPES, WORD_SHAPES, sentence_inputs, word_inputs
from bench_utils import by_mode, cases, forward_for, io_bytes, providers_for, run_case
from t2i_fast import ops
import upstream  # noqa: I001 (tests/ is on the path once bench_utils is imported)
from test_bench_word_region_similarity import work as similarity_work

GAMMA1, GAMMA2, GAMMA3 = 4.0, 5.0, 10.0  # DAMSM's


def word_work(shape, size, mode):
    batch, dim, height, width, slots = shape
    flops, _ = similarity_work(shape, size, mode)
    floats = size * batch * dim * (height * width + slots)
    return flops, io_bytes(mode, floats + 8 * batch, 2 * size, floats)


def sentence_work(shape, size, mode):
    batch, dim = shape
    flops = by_mode(mode, 2 * batch * batch * dim, 4 * batch * batch * dim)
    return flops, io_bytes(mode, 2 * size * batch * dim, 2 * size, 2 * size * batch * dim)


def word_loss(regions, words, cap_lens, impl="reference"):
    return ops.damsm_word_loss(regions, words, cap_lens, gamma1=GAMMA1, gamma2=GAMMA2,
                               gamma3=GAMMA3, impl=impl)


def upstream_words_loss(host_lens):
    return lambda regions, words, cap_lens: upstream.words_loss(
        regions, words, host_lens, gamma1=GAMMA1, gamma2=GAMMA2, gamma3=GAMMA3)


def word_providers(shape, dtype):
    call = {"images": shape[0], "captions": shape[0], "slots": shape[4], "gamma1": GAMMA1}
    return providers_for("word_region_similarity", dtype, call, ["loop"])


@pytest.mark.parametrize("shape,dtype,provider,mode",
                         cases("damsm_word_loss", WORD_SHAPES, DTYPES, word_providers))
def test_damsm_word_loss(benchmark, shape, dtype, provider, mode):
    args = word_inputs(shape, dtype)
    inputs = [args["regions"], args["words"], args["cap_lens"]]
    forward = forward_for(provider, word_loss, word_loss,
                          {"loop": upstream_words_loss(args["cap_lens"].tolist())})
    run_case(benchmark, "damsm_word_loss", shape, dtype, provider, mode, forward, inputs,
             word_work(shape, inputs[0].element_size(), mode), reference=shape == WORD_SHAPES[0])


def sentence_loss(image_code, sent_code):
    return ops.damsm_sentence_loss(image_code, sent_code, gamma3=GAMMA3)


def upstream_sent_loss(image_code, sent_code):
    return upstream.sent_loss(image_code, sent_code, gamma3=GAMMA3)


@pytest.mark.parametrize("shape,dtype,provider,mode",
                         cases("damsm_sentence_loss", SENTENCE_SHAPES, DTYPES,
                               lambda shape, dtype: ["reference", "compile", "upstream"]))
def test_damsm_sentence_loss(benchmark, shape, dtype, provider, mode):
    args = sentence_inputs(shape, dtype)
    inputs = [args["image_code"], args["sent_code"]]
    forward = forward_for(provider, sentence_loss, None, {"upstream": upstream_sent_loss})
    run_case(benchmark, "damsm_sentence_loss", shape, dtype, provider, mode, forward, inputs,
             sentence_work(shape, inputs[0].element_size(), mode),
             reference=shape == SENTENCE_SHAPES[0])

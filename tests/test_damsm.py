"""The DAMSM losses damsm_word_loss and damsm_sentence_loss and the drop-in words_loss /
sent_loss: against naive loops and gradcheck, every backend and dtype of the word loss against
the upstream per-caption loop, autocast."""
import pytest
import torch

import naive
import upstream
from conftest import assert_close, backend_dtypes, require
from t2i_fast import ops

OP = "damsm_word_loss"
GAMMA1, GAMMA2, GAMMA3 = 4.0, 5.0, 10.0
CLASS_IDS = [None, [3, 1, 3, 2]]
pytestmark = pytest.mark.usefixtures("poisoned")


def _inputs(batch=4, dim=16, slots=6, size=3, seed=0, dtype=torch.float64, device="cpu"):
    """regions (B,D,H,W), words (B,D,T), cap_lens (B,) with lengths 1 and T among them."""
    gen = torch.Generator().manual_seed(seed)
    regions = torch.randn(batch, dim, size, size, generator=gen, dtype=torch.float64)
    words = 0.5 * torch.randn(batch, dim, slots, generator=gen, dtype=torch.float64)
    lens = torch.randint(1, slots + 1, (batch,), generator=gen)
    lens[0], lens[-1] = slots, 1
    return regions.to(device, dtype), words.to(device, dtype), lens.to(device)


def _codes(batch=4, dim=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, batch, dim, generator=gen, dtype=torch.float64).unbind()


@pytest.mark.parametrize("class_ids", CLASS_IDS)
def test_word_loss_reference_matches_naive_loop(class_ids):
    regions, words, lens = _inputs(batch=4, dim=5, slots=4, size=2)
    got = ops.damsm_word_loss(regions, words, lens, class_ids, impl="reference")
    sim = naive.word_region_similarity(regions, words, lens, GAMMA1, GAMMA2)
    expected = naive.matching_losses(GAMMA3 * sim, class_ids)
    torch.testing.assert_close(torch.stack(got), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("class_ids", CLASS_IDS)
def test_sentence_loss_matches_naive_loop(class_ids):
    img, sent = _codes()
    got = ops.damsm_sentence_loss(img, sent, class_ids)
    expected = naive.matching_losses(GAMMA3 * naive.sentence_similarity(img, sent), class_ids)
    torch.testing.assert_close(torch.stack(got), torch.tensor(expected, dtype=torch.float64))


def test_losses_gradcheck():
    regions, words, lens = _inputs(batch=3, dim=4, slots=3, size=2)
    assert torch.autograd.gradcheck(
        lambda r, w: ops.damsm_word_loss(r, w, lens, [1, 2, 1], impl="reference"),
        (regions.requires_grad_(), words.requires_grad_()))
    img, sent = _codes(batch=3, dim=4)
    assert torch.autograd.gradcheck(lambda i, s: ops.damsm_sentence_loss(i, s, [0, 0, 1]),
                                    (img.requires_grad_(), sent.requires_grad_()))


def _word_loss_and_grads(loss, regions, words, lens, class_ids):
    r, w = regions.detach().clone().requires_grad_(), words.detach().clone().requires_grad_()
    losses = loss(r, w, lens, class_ids)
    return (torch.stack(losses).detach(), *torch.autograd.grad(sum(losses), (r, w)))


@pytest.mark.parametrize("backend,dtype", backend_dtypes())
def test_word_loss_matches_upstream_loop(backend, dtype):
    """Both losses and both gradients against AttnGAN's per-caption loop (float64; the loop in
    `dtype` sets the low-precision bound), with same-class pairs left out."""
    device = require(backend, "word_region_similarity", dtype)
    regions, words, lens = _inputs(batch=3, dim=32, slots=7, size=3, dtype=dtype, device=device)
    class_ids = [3, 1, 3]

    def fused(r, w, n, c):
        return ops.damsm_word_loss(r, w, n, c, impl=backend)

    got = _word_loss_and_grads(fused, regions, words, lens, class_ids)
    exact = _word_loss_and_grads(upstream.words_loss, regions.double(), words.double(), lens,
                                 class_ids)
    native = _word_loss_and_grads(upstream.words_loss, regions, words, lens, class_ids)
    scale = max(float(t.norm()) for t in exact)
    for name, g, e, n in zip(("losses", "d_regions", "d_words"), got, exact, native):
        assert g.dtype == dtype
        assert_close(g, e, dtype, n, name, scale)


@pytest.mark.parametrize("class_ids", CLASS_IDS)
def test_sentence_loss_equals_upstream(class_ids):
    img, sent = _codes()
    for got, expected in zip(ops.damsm_sentence_loss(img, sent, class_ids),
                             upstream.sent_loss(img, sent, class_ids)):
        torch.testing.assert_close(got, expected)


def test_drop_in_words_and_sent_loss():
    regions, words, lens = _inputs(seed=2)
    labels = torch.arange(4)
    loss0, loss1, att_maps = ops.words_loss(regions, words, labels, lens.tolist(), None, 4)
    torch.testing.assert_close((loss0, loss1), upstream.words_loss(regions, words, lens))
    for i, att in enumerate(att_maps):
        n = int(lens[i])
        _, own = upstream.func_attention(words[i:i + 1, :, :n], regions[i:i + 1], 4.0)
        torch.testing.assert_close(att, own)
    img, sent = regions.mean((2, 3)), words.mean(2)
    torch.testing.assert_close(ops.sent_loss(img, sent, labels, None, 4),
                               upstream.sent_loss(img, sent))
    with pytest.raises(ValueError, match="batch_size"):
        ops.sent_loss(img, sent, labels, None, 5)
    with pytest.raises(ValueError, match="batch_size"):
        ops.words_loss(regions, words, labels, lens.tolist(), None, 3)


def test_losses_run_in_float32_under_autocast():
    """Under a bfloat16 autocast region the losses take their inputs to float32, as autocast
    does for softmax-based losses: the bfloat16 values, computed in float32."""
    regions, words, lens = _inputs(dtype=torch.float32, seed=3)
    img, sent = (c.float() for c in _codes(dim=16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        word = ops.damsm_word_loss(regions.bfloat16(), words, lens)
        sentence = ops.damsm_sentence_loss(img.bfloat16(), sent)
    assert {t.dtype for t in word + sentence} == {torch.float32}
    low_regions, low_img = regions.bfloat16().float(), img.bfloat16().float()
    for got, exact, native in (
            (word, upstream.words_loss(low_regions.double(), words.double(), lens),
             upstream.words_loss(low_regions, words, lens)),
            (sentence, upstream.sent_loss(low_img.double(), sent.double()),
             upstream.sent_loss(low_img, sent))):
        assert_close(torch.stack(got), torch.stack(exact), torch.float32, torch.stack(native))


def test_bad_inputs_raise_clear_errors():
    regions, words, lens = _inputs(dtype=torch.float32)
    img, sent = (c.float() for c in _codes())
    cases = [
        (lambda: ops.damsm_word_loss(regions[:3], words, lens), ValueError, "same batch"),
        (lambda: ops.damsm_word_loss(regions, words, lens, [1, 2]), ValueError, "class_ids"),
        (lambda: ops.damsm_sentence_loss(img, sent[:3]), ValueError, "sent_code must have"),
        (lambda: ops.damsm_sentence_loss(img, sent.double()), TypeError, "sent_code has dtype"),
        (lambda: ops.damsm_sentence_loss(img[0], sent), ValueError, "2 dimensions"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

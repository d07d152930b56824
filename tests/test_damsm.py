"""DAMSM losses and the drop-in modules against upstream-style eager code."""
import pytest
import torch

import upstream
from conftest import padding_mask
from t2i_fast import ops


def _inputs(batch=4, dim=16, slots=6, size=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    regions = torch.randn(batch, dim, size, size, generator=gen, dtype=torch.float64)
    words = 0.5 * torch.randn(batch, dim, slots, generator=gen, dtype=torch.float64)
    lens = torch.randint(1, slots + 1, (batch,), generator=gen)
    return regions, words, lens


@pytest.mark.parametrize("class_ids", [None, [3, 1, 3, 2]])
def test_word_loss_equals_per_caption_loop(class_ids):
    regions, words, lens = _inputs()
    r1, w1 = regions.clone().requires_grad_(), words.clone().requires_grad_()
    r2, w2 = regions.clone().requires_grad_(), words.clone().requires_grad_()
    got = ops.damsm_word_loss(r1, w1, lens, class_ids)
    expected = upstream.words_loss(r2, w2, lens, class_ids)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    sum(got).backward()
    sum(expected).backward()
    torch.testing.assert_close(r1.grad, r2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize("class_ids", [None, [0, 0, 1, 2]])
def test_sentence_loss_equals_upstream(class_ids):
    gen = torch.Generator().manual_seed(1)
    img, sent = torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    for g, e in zip(ops.damsm_sentence_loss(img, sent, class_ids),
                    upstream.sent_loss(img, sent, class_ids)):
        torch.testing.assert_close(g, e)


def test_drop_in_words_and_sent_loss():
    regions, words, lens = _inputs(seed=2)
    labels = torch.arange(4)
    loss0, loss1, att_maps = ops.words_loss(regions, words, labels, lens.tolist(), None, 4)
    expected = upstream.words_loss(regions, words, lens)
    torch.testing.assert_close((loss0, loss1), expected)
    for i, att in enumerate(att_maps):
        n = int(lens[i])
        _, own = upstream.func_attention(words[i:i + 1, :, :n], regions[i:i + 1], 4.0)
        torch.testing.assert_close(att, own)
    img, sent = regions.mean((2, 3)), words.mean(2)
    torch.testing.assert_close(ops.sent_loss(img, sent, labels, None, 4),
                               upstream.sent_loss(img, sent))
    with pytest.raises(ValueError, match="batch_size"):
        ops.sent_loss(img, sent, labels, None, 5)


def test_func_attention_equals_upstream():
    regions, words, _ = _inputs(seed=3)
    for g, e in zip(ops.func_attention(words, regions, 4.0),
                    upstream.func_attention(words, regions, 4.0)):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("mask_compat", [False, True])
def test_memory_module_equals_upstream(mask_compat):
    gen = torch.Generator().manual_seed(4)
    query = torch.randn(3, 8, 4, 5, generator=gen, dtype=torch.float64)
    key = 0.3 * torch.randn(3, 8, 6, generator=gen, dtype=torch.float64)
    value = torch.randn(3, 10, 6, generator=gen, dtype=torch.float64)
    mask = padding_mask([6, 2, 4], 6)
    memory = ops.Memory(mask_compat=mask_compat)
    memory.applyMask(mask.to(torch.uint8))  # upstream passes byte masks
    out, attn = memory(query, key, value)
    if mask_compat:
        expected = upstream.memory_tiled(query, key, value, mask)
    else:  # per-sample masks: the upstream code is right when each sample is alone (B = 1)
        parts = [upstream.memory_tiled(query[b:b + 1], key[b:b + 1], value[b:b + 1],
                                       mask[b:b + 1]) for b in range(3)]
        expected = tuple(torch.cat(p) for p in zip(*parts))
    torch.testing.assert_close((out, attn), expected)
    assert list(memory.state_dict()) == []


def test_global_attention_general_state_dict_and_math():
    module = ops.GlobalAttentionGeneral(idf=8, cdf=12).double()
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == \
        {"conv_context.weight": (8, 12, 1, 1)}
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(2, 8, 3, 3, generator=gen, dtype=torch.float64)
    words = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64)
    mask = padding_mask([5, 3], 5)
    module.applyMask(mask)
    out, attn = module(h, words)
    projected = torch.einsum("oc,bct->bot", module.conv_context.weight[:, :, 0, 0], words)
    expected = [upstream.memory_tiled(h[b:b + 1], projected[b:b + 1], projected[b:b + 1],
                                      mask[b:b + 1]) for b in range(2)]
    torch.testing.assert_close(out, torch.cat([e[0] for e in expected]))
    torch.testing.assert_close(attn, torch.cat([e[1] for e in expected]))

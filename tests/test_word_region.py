"""word_region_attention and word_region_similarity: reference math, every backend and gradient."""
import pytest
import torch

import naive
from conftest import FAST_BACKENDS, assert_close, padding_mask, require
from t2i_fast import backends, ops

# (B_img, B_cap, D, T, H, W, cap_lens): odd region counts, every T of SPEC §7, lengths 1 and T.
CASES = [
    (2, 3, 16, 1, 3, 3, (1, 1, 1)),
    (3, 2, 32, 7, 5, 5, (7, 3)),
    (2, 2, 48, 18, 4, 5, (18, 1)),
    (1, 3, 32, 30, 3, 7, (30, 12, 1)),
]


def make_inputs(n_img, n_cap, dim, slots, height, width, dtype, device, contiguous=True,
                seed=0):
    gen = torch.Generator().manual_seed(seed)
    regions = torch.randn(n_img, height, width, dim, generator=gen)
    regions = regions.permute(0, 3, 1, 2)
    words = 0.3 * torch.randn(n_cap, slots, dim, generator=gen).transpose(1, 2)
    if contiguous:
        regions, words = regions.contiguous(), words.contiguous()
    return regions.to(device, dtype), words.to(device, dtype)


def grads_of(fn, tensors, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum()
               for o in outs)
    return outs, torch.autograd.grad(loss, leaves)


def test_reference_matches_naive_loops():
    regions, words = make_inputs(3, 2, 5, 4, 2, 3, torch.float64, "cpu")
    lens = torch.tensor([4, 2])
    torch.testing.assert_close(
        ops.word_region_similarity_reference(regions, words, lens, 4.0, 5.0),
        naive.word_region_similarity(regions, words, lens, 4.0, 5.0))
    context, attn = ops.word_region_attention_reference(
        words, regions[:2], 4.0, padding_mask(lens, 4))
    for b in range(2):
        c, a = naive.word_region_pair(words[b], regions[b].reshape(5, -1), int(lens[b]), 4.0)
        torch.testing.assert_close(context[b], c)
        torch.testing.assert_close(attn[b].reshape(4, -1), a)


def test_attention_reference_equals_upstream_slicing():
    """Without padding it is AttnGAN's func_attention: word softmax, x gamma1, region softmax."""
    regions, words = make_inputs(2, 2, 6, 5, 3, 3, torch.float64, "cpu")
    flat = regions.reshape(2, 6, 9)
    scores = torch.bmm(flat.transpose(1, 2), words)                       # (B, R, T)
    attn = torch.softmax(torch.softmax(scores, dim=2).transpose(1, 2) * 4.0, dim=2)
    context, got = ops.word_region_attention(words, regions, 4.0, impl="reference")
    torch.testing.assert_close(got.reshape(2, 5, 9), attn)
    torch.testing.assert_close(context, torch.bmm(flat, attn.transpose(1, 2)))


def test_reference_gradcheck():
    regions, words = make_inputs(2, 3, 4, 3, 2, 2, torch.float64, "cpu")
    lens = torch.tensor([3, 1, 2])
    assert torch.autograd.gradcheck(
        lambda r, w: ops.word_region_similarity(r, w, lens, 4.0, 5.0, impl="reference"),
        (regions.requires_grad_(), words.requires_grad_()))
    mask = padding_mask([3, 0], 3)
    assert torch.autograd.gradcheck(
        lambda w, r: ops.word_region_attention(w, r, 4.0, mask, impl="reference"),
        (words[:2].detach().requires_grad_(), regions.detach().requires_grad_()))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_similarity_backend_matches_reference(backend, case, dtype):
    device = require(backend, "word_region_similarity", dtype)
    n_img, n_cap, dim, slots, height, width, lens = CASES[case]
    regions, words = make_inputs(n_img, n_cap, dim, slots, height, width, dtype, device,
                                 contiguous=case % 2 == 0, seed=case)
    lens = torch.tensor(lens, device=device)

    def fn(impl):
        return lambda r, w: ops.word_region_similarity(r, w, lens, 4.0, 5.0, impl=impl)

    outs, grads = grads_of(fn(backend), (regions, words))
    ref_outs, ref_grads = grads_of(fn("reference"), (regions.double(), words.double()))
    low = grads_of(fn("reference"), (regions, words))
    assert outs[0].dtype == dtype
    assert_close(outs[0], ref_outs[0], dtype, low[0][0], "S")
    for name, got, ref, lp in zip(("d_regions", "d_words"), grads, ref_grads, low[1]):
        assert_close(got, ref, dtype, lp, name)



@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_attention_backend_matches_reference(backend, case, dtype):
    device = require(backend, "word_region_attention", dtype)
    n_img, n_cap, dim, slots, height, width, lens = CASES[case]
    batch = min(n_img, n_cap)
    regions, words = make_inputs(batch, batch, dim, slots, height, width, dtype, device,
                                 contiguous=case % 2 == 1, seed=case)
    mask = padding_mask([0] + list(lens[1:batch]), slots, device) if case % 2 else \
        padding_mask(lens[:batch], slots, device)

    def fn(impl):
        return lambda w, r: ops.word_region_attention(w, r, 4.0, mask, impl=impl)

    outs, grads = grads_of(fn(backend), (words, regions))
    ref_outs, ref_grads = grads_of(fn("reference"), (words.double(), regions.double()))
    low = grads_of(fn("reference"), (words, regions))
    for name, got, ref, lp in zip(("context", "attn"), outs, ref_outs, low[0]):
        assert_close(got, ref, dtype, lp, name)
    for name, got, ref, lp in zip(("d_words", "d_regions"), grads, ref_grads, low[1]):
        assert_close(got, ref, dtype, lp, name)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_opcheck_and_compile(backend):
    device = require(backend, "word_region_similarity", torch.float32)
    regions, words = make_inputs(2, 3, 16, 7, 3, 3, torch.float32, device)
    lens = torch.tensor([7, 1, 4], device=device)
    flat = regions.reshape(2, 16, 9)
    torch.library.opcheck(torch.ops.t2i_fast.word_region_similarity_fwd.default,
                          (flat.requires_grad_(), words, lens, 4.0, 5.0, backend))
    sim, lse = torch.ops.t2i_fast.word_region_similarity_fwd(flat.detach(), words, lens, 4.0, 5.0, backend)
    torch.library.opcheck(torch.ops.t2i_fast.word_region_similarity_bwd.default,
                          (torch.randn_like(sim), flat.detach(), words, lens, lse, 4.0, 5.0,
                           backend))
    mask = padding_mask([7, 2], 7, device)
    if not backends.unavailable(backend, "word_region_attention", device, torch.float32):
        torch.library.opcheck(torch.ops.t2i_fast.word_region_attention_fwd.default,
                              (words[:2].requires_grad_(), flat.detach(), mask, 4.0, backend))

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda r, w: ops.word_region_similarity(r, w, lens, impl=backend).logsumexp(1).sum(),
        fullgraph=True, backend="aot_eager")
    r = regions.detach().clone().requires_grad_()
    compiled(r, words).backward()
    r_ref = regions.detach().clone().requires_grad_()
    ops.word_region_similarity(r_ref, words, lens, impl=backend).logsumexp(1).sum().backward()
    torch.testing.assert_close(r.grad, r_ref.grad)


def test_bad_inputs_raise_clear_errors():
    regions, words = make_inputs(2, 3, 8, 5, 3, 3, torch.float32, "cpu")
    lens = torch.tensor([5, 2, 1])
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
        (lambda: ops.word_region_attention(words[:2], regions, 4.0, padding_mask([1], 5)),
         ValueError, "word_mask must have shape"),
        (lambda: ops.word_region_attention(words, regions, 4.0), ValueError,
         r"regions.shape\[0\]"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()

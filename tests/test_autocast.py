"""The ops under torch.autocast: matmul-like ops run in the region's dtype, the DAMSM losses in
float32 (as autocast treats softmax-based losses); outside autocast mixed dtypes are an error."""
import pytest
import torch

from conftest import assert_close
from t2i_fast import ops


def test_dynamic_memory_casts_to_the_autocast_dtype():
    torch.manual_seed(0)
    h = torch.randn(2, 8, 5, 5)
    key, value = torch.randn(2, 8, 7), torch.randn(2, 8, 7)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    weight, bias = torch.randn(16), torch.randn(())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.dynamic_memory(h.bfloat16(), key, value, mask, weight, bias)
    assert out.dtype == torch.bfloat16
    expected = ops.dynamic_memory_reference(*(t.bfloat16() for t in (h, key, value)), mask,
                                            weight.bfloat16(), bias.bfloat16())
    ref64 = ops.dynamic_memory_reference(h.bfloat16().double(), key.bfloat16().double(),
                                         value.bfloat16().double(), mask,
                                         weight.bfloat16().double(), bias.bfloat16().double())
    assert_close(out.double(), ref64, torch.bfloat16, same_dtype_ref=expected, what="bf16")
    with pytest.raises(TypeError, match="gate_weight has dtype"):
        ops.dynamic_memory(h.bfloat16(), key.bfloat16(), value.bfloat16(), mask, weight, bias)


def test_damsm_losses_run_in_float32_under_autocast():
    torch.manual_seed(1)
    regions, words = torch.randn(4, 16, 3, 3), torch.randn(4, 16, 6)
    cap_lens = torch.tensor([6, 3, 1, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w0, w1 = ops.damsm_word_loss(regions.bfloat16(), words, cap_lens)
        s0, s1 = ops.damsm_sentence_loss(torch.randn(4, 16).bfloat16(), torch.randn(4, 16))
    assert {w0.dtype, w1.dtype, s0.dtype, s1.dtype} == {torch.float32}
    ref = ops.damsm_word_loss(regions.bfloat16().float(), words, cap_lens)
    assert torch.equal(w0, ref[0]) and torch.equal(w1, ref[1])

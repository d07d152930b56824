"""What the Triton kernels of both families share: precision and determinism settings, launch
helpers and the @triton.jit pieces (products, index ranges, the masked softmax, the mask_compat
row). Design notes are in dynamic_memory.py and word_region.py.
"""
import os

import torch
import triton
import triton.language as tl

# Input precision of float32 dots on a GPU ("ieee", "tf32x3" or "tf32"); the interpreter
# always computes IEEE float32.
FP32_PRECISION = "tf32x3"

_ACC = {torch.float16: tl.float32, torch.bfloat16: tl.float32, torch.float32: tl.float32,
        torch.float64: tl.float64}


def fp32_precision():
    return "tf32" if os.environ.get("T2I_FAST_TF32", "0") == "1" else FP32_PRECISION


def deterministic():
    return os.environ.get("T2I_FAST_DETERMINISTIC", "1") != "0"


def pad(x):
    """The register-tile width for x entries: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(max(int(x), 1)))


def _precision(dtype):
    if dtype == torch.float32:
        return fp32_precision()
    return "tf32"  # fp16/bf16 values are exact in TF32; the fp32 intermediates round like fp16


def dot_meta(dtype):
    """The meta-parameters every kernel takes for inputs of dtype: the accumulation type, whether
    products run as tl.dot (not for float64: the interpreter's support for it varies between
    Triton versions) and the dots' input precision."""
    return dict(ACC=_ACC[dtype], USE_DOT=dtype != torch.float64, PREC=_precision(dtype))


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _arange(N_PAD: tl.constexpr, n):
    """The indices 0..N_PAD-1 of a padded axis and which of them lie below n."""
    i = tl.arange(0, N_PAD)
    return i, i < n


@triton.jit
def _mm(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a [M, K] @ b [K, N] with a float32 (or float64) result."""
    if USE_DOT:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _masked_softmax(s, valid):
    """Row softmax over the valid slots; a row with none gives zeros and lse = +inf."""
    s = tl.where(valid, s, float("-inf"))
    m = tl.max(s, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(s - m[:, None])
    total = tl.sum(p, axis=1)
    safe = tl.where(total > 0, total, 1.0)
    lse = tl.where(total > 0, m + tl.log(safe), float("inf"))
    return p / safe[:, None], lse


@triton.jit
def _mask_compat_row(b, n, N, B):
    """The mask row pixel n of image b reads under mask_compat: upstream tiles the (B, T) mask
    over the B*N pixel rows with mask.repeat(N, 1) (AttnGAN issue #93)."""
    return (b * N + n) % B

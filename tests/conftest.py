"""Shared test set-up: the Triton interpreter on GPU-less machines, tolerances, input makers."""
import os

import torch

if not torch.cuda.is_available():  # must precede the first @triton.jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from t2i_fast import backends  # noqa: E402

FAST_BACKENDS = ("cpu", "triton", "cuda")

# Relative-norm error allowed against a float64 reference, the one table of the suite. float64
# must agree to rounding; other dtypes follow the flash-attention rule: at most 2x the error of
# PyTorch's own computation in that dtype (the reference run on the same inputs), and never less
# than the table's value (float32: the SPEC's 1e-5; reductions with cancellation, like the
# gate-bias gradient, have a larger eager error and get the 2x rule).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOWP_FACTOR = 2.0


def device_for(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) \
        else "cpu"


def require(backend, op, dtype):
    """Skip unless `backend` runs `op` on its device with `dtype`; returns the device."""
    device = device_for(backend)
    reasons = backends.unavailable(backend, op, device, dtype)
    if reasons:
        pytest.skip(f"{backend} {op} {dtype}: " + "; ".join(reasons))
    return device


def rel_err(actual, expected):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def tolerance(dtype, expected, same_dtype_ref=None):
    """The relative-norm error allowed for a result in `dtype` against the float64 `expected`;
    `same_dtype_ref` is PyTorch's result in `dtype` (required unless dtype is float64)."""
    if dtype == torch.float64:
        return TOL[dtype]
    return max(TOL[dtype], LOWP_FACTOR * rel_err(same_dtype_ref, expected))


def assert_close(actual, expected, dtype, same_dtype_ref=None, what=""):
    """`actual` against the float64 `expected` under the rule of `tolerance`."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err, bound = rel_err(actual, expected), tolerance(dtype, expected, same_dtype_ref)
    assert err <= bound, f"{what}: rel err {err:.3g} > {bound:.3g} ({dtype})"


def padding_mask(lengths, slots, device="cpu"):
    lens = torch.as_tensor(lengths, device=device)
    return torch.arange(slots, device=device)[None, :] >= lens[:, None]


def nchw(batch, channels, height, width, dtype, device, contiguous=True, gen=None):
    """Random NCHW features; non-contiguous ones are a channels-last view."""
    if contiguous:
        return torch.randn(batch, channels, height, width, generator=gen).to(device, dtype)
    return torch.randn(batch, height, width, channels, generator=gen).to(device, dtype) \
        .permute(0, 3, 1, 2)

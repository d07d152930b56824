"""Input checks of the ops, their one owner: every error names the argument and what was
expected. The kernels trust these checks and keep only what memory safety needs.

Checks that read tensor data would cost a host-device synchronisation on CUDA tensors, so the
value check of caption lengths runs on CPU tensors (and Python lists) always, on CUDA tensors only
with T2I_FAST_CHECKS=full; the kernels clamp lengths into 0..T, so an unchecked bad length gives
a wrong number, never an out-of-bounds access.
"""
import numbers
import os

import torch

CHECKS_ENV = "T2I_FAST_CHECKS"


def tensor(op, name, t, ndim, floating=True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    return t


def size(op, name, t, dim, expected, what):
    if t.shape[dim] != expected:
        raise ValueError(f"{op}: {name}.shape[{dim}] must equal {what} = {expected}, "
                         f"got shape {tuple(t.shape)}")


def same(op, ref_name, ref, **others):
    """Every tensor in `others` has the dtype and device of `ref`."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def autocast(device, *tensors, lower=True):
    """Inside an autocast region, the floating tensors cast as autocast casts its ops: to the
    region's dtype for matmul-like ops (lower=True), to float32 for softmax-based losses
    (lower=False). Outside autocast, the tensors unchanged (mixed dtypes stay an error)."""
    if not torch.is_autocast_enabled(device.type):
        return tensors
    dtype = torch.get_autocast_dtype(device.type) if lower else torch.float32
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                 for t in tensors)


def mask(op, name, m, batch, slots, device):
    """A bool (batch, slots) padding mask on `device`, or None."""
    if m is None:
        return None
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a bool tensor or None, got {type(m).__name__}")
    if m.dtype != torch.bool:
        raise TypeError(f"{op}: {name} must have dtype torch.bool (True = padded), got {m.dtype}")
    if tuple(m.shape) != (batch, slots):
        raise ValueError(f"{op}: {name} must have shape (B, T) = ({batch}, {slots}), "
                         f"got {tuple(m.shape)}")
    if m.device != device:
        raise ValueError(f"{op}: {name} is on {m.device} but the features are on {device}")
    return m


def full_checks():
    """Whether T2I_FAST_CHECKS=full asks for the value checks that synchronise a GPU."""
    mode = os.environ.get(CHECKS_ENV, "")
    if mode not in ("", "full"):
        raise ValueError(f"{CHECKS_ENV} must be 'full' or unset, got {mode!r}")
    return mode == "full"


def lengths(op, name, lens, batch, slots, device):
    """Caption lengths as an int64 tensor of shape (batch,) on `device`, values in 1..slots."""
    checked = False
    if isinstance(lens, (list, tuple)):
        bad = [n for n in lens if isinstance(n, bool) or not isinstance(n, numbers.Integral)]
        if bad:
            raise TypeError(f"{op}: {name} must hold integers, got {bad[0]!r}")
        lens = torch.tensor([int(n) for n in lens], dtype=torch.long)
        if not torch.compiler.is_compiling():
            _length_values(op, name, lens, slots)  # on the host, before any copy
            checked = True
        lens = lens.to(device)
    if not isinstance(lens, torch.Tensor) or lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: {name} must be an int32/int64 tensor or a list of ints, got "
                        f"{lens.dtype if isinstance(lens, torch.Tensor) else type(lens).__name__}")
    if tuple(lens.shape) != (batch,):
        raise ValueError(f"{op}: {name} must have shape ({batch},), got {tuple(lens.shape)}")
    if lens.device != device:
        raise ValueError(f"{op}: {name} is on {lens.device} but the features are on {device}")
    if (not checked and (lens.device.type == "cpu" or full_checks())
            and not torch.compiler.is_compiling()):
        _length_values(op, name, lens, slots)
    return lens.long()


def _length_values(op, name, lens, slots):
    if lens.numel() == 0:
        return
    lo, hi = torch.stack(lens.aminmax()).tolist()
    if lo < 1 or hi > slots:
        raise ValueError(f"{op}: {name} must lie in 1..T = 1..{slots} (a caption with no "
                         f"words cannot be matched), got values in {lo}..{hi}")


def at_least_one(op, name, t, dims, what):
    """The product of t.shape[dims] (a T or H*W) is at least 1."""
    count = 1
    for d in dims:
        count *= t.shape[d]
    if count < 1:
        raise ValueError(f"{op}: {name} needs at least one {what}, got shape {tuple(t.shape)}")


def empty(*tensors):
    """Whether some tensor has no elements (such calls run the reference, see backends)."""
    return any(t is not None and t.numel() == 0 for t in tensors)

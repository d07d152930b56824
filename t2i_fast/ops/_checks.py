"""Input checks shared by the ops: every error names the argument and what was expected."""
import torch


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


def lengths(op, name, lens, batch, slots, device):
    """Caption lengths as an int64 tensor of shape (batch,) with values in 1..slots."""
    if isinstance(lens, (list, tuple)):
        lens = torch.tensor(lens, dtype=torch.long, device=device)
    if not isinstance(lens, torch.Tensor) or lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: {name} must be an int32/int64 tensor or a list of ints")
    if tuple(lens.shape) != (batch,):
        raise ValueError(f"{op}: {name} must have shape ({batch},), got {tuple(lens.shape)}")
    if lens.device != device:
        raise ValueError(f"{op}: {name} is on {lens.device} but the features are on {device}")
    if not torch.compiler.is_compiling():  # a value check needs the data; skip it when tracing
        lo, hi = torch.stack(lens.aminmax()).tolist()  # one device sync, not two
        if lo < 1 or hi > slots:
            raise ValueError(f"{op}: {name} must lie in 1..T = 1..{slots} (a caption with no "
                             f"words cannot be matched), got values in {lo}..{hi}")
    return lens.long()

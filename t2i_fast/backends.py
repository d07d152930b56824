"""The backend registry: one dispatch rule, in one place.

Backends: `reference` (pure PyTorch, any device and dtype), `cpu` (C++ kernels in t2i_fast._C),
`cuda` (CUDA kernels in t2i_fast._C), `triton` (kernels in t2i_fast.kernels; on CPU tensors only
under TRITON_INTERPRET=1). Every fast backend implements the kernels named by the schemas in
csrc/ops.cpp with the same signatures.

Choice, first match wins: `impl=` on the call, then `use_backend(...)`, then the environment
variable T2I_FAST_BACKEND, then `auto`. An explicitly named backend that cannot run raises
`BackendUnavailable` with the reasons; `auto` takes the first available backend of the device's
order and warns once when it had to pass over the preferred one.
"""
import contextlib
import functools
import importlib
import os
import threading
import warnings

import torch

from t2i_fast import _ext

BACKENDS = ("reference", "cpu", "triton", "cuda")

# Public op -> the kernel family (schema name stem in csrc/ops.cpp) and its Triton module.
KERNELS = {
    "memory_read": "dynamic_memory",
    "response_gate": "dynamic_memory",
    "dynamic_memory": "dynamic_memory",
    "word_region_attention": "word_region_attention",
    "word_region_similarity": "word_region_similarity",
}
TRITON_MODULES = {
    "dynamic_memory": "t2i_fast.kernels.dynamic_memory",
    "word_region_attention": "t2i_fast.kernels.word_region",
    "word_region_similarity": "t2i_fast.kernels.word_region",
}

# Auto order per device type. For CUDA tensors the fastest measured backend goes first
# (benchmarks/results/); ops missing here use the default order.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}
AUTO_ORDER_CUDA_BY_OP = {}

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPES = {
    ("reference", "cpu"): _FLOATS, ("reference", "cuda"): _FLOATS,
    ("cpu", "cpu"): _FLOATS,
    ("cuda", "cuda"): (torch.float16, torch.bfloat16, torch.float32),
    # The Triton interpreter computes bf16 dots wrongly; on a GPU fp64 is not offered.
    ("triton", "cpu"): (torch.float16, torch.float32, torch.float64),
    ("triton", "cuda"): (torch.float16, torch.bfloat16, torch.float32),
}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the op on these inputs."""


_local = threading.local()


@contextlib.contextmanager
def use_backend(name):
    """Run the ops inside the block on backend `name` ('auto' restores automatic choice)."""
    _check_name(name, "use_backend")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _check_name(name, where):
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{where}: backend must be one of {BACKENDS + ('auto',)}, got {name!r}")


def requested(impl=None):
    """The backend name in force for a call: impl=, context manager, env var, or 'auto'."""
    if impl is not None:
        _check_name(impl, "impl")
        return impl
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("T2I_FAST_BACKEND", "auto") or "auto"
    _check_name(env, "T2I_FAST_BACKEND")
    return env


@functools.lru_cache(maxsize=None)
def _triton_module(family):
    try:
        return importlib.import_module(TRITON_MODULES[family]), None
    except ImportError as err:  # triton missing, or the kernel module not written yet
        return None, f"cannot import {TRITON_MODULES[family]} ({err})"


@functools.lru_cache(maxsize=None)
def unavailable(backend, op, device_type, dtype):
    """Reasons why `backend` cannot run `op` on `device_type` tensors of `dtype` (empty: it can)."""
    if op not in KERNELS:
        raise ValueError(f"unknown op {op!r}; ops with backends: {sorted(KERNELS)}")
    family = KERNELS[op]
    reasons = []
    if device_type not in ("cpu", "cuda"):
        return (f"tensors on {device_type!r}: t2i_fast supports cpu and cuda",)
    if device_type == "cuda" and not torch.cuda.is_available():
        reasons.append("no CUDA device visible")
    if (backend, device_type) not in DTYPES:
        reasons.append(f"{backend} does not run on {device_type} tensors")
    elif dtype not in DTYPES[backend, device_type]:
        reasons.append(f"{backend} on {device_type} does not support {dtype}")
    if backend in ("cpu", "cuda") and (backend, device_type) in DTYPES:
        module, why = _ext.load()
        if module is None:
            reasons.append(why)
        elif backend == "cuda" and not _ext.build_info().get("cuda"):
            reasons.append("t2i_fast._C was built without CUDA (T2I_FAST_CUDA=0 or no nvcc)")
        elif not _ext.has_kernel(f"{family}_forward", backend.upper()):
            reasons.append(f"no {backend} kernel for {family} in t2i_fast._C")
    if backend == "triton":
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("triton runs on CPU tensors only with TRITON_INTERPRET=1")
        else:
            module, why = _triton_module(family)
            if module is None:
                reasons.append(why)
            elif not hasattr(module, f"{family}_forward"):
                reasons.append(f"{TRITON_MODULES[family]} has no {family}_forward")
    return tuple(reasons)


_warned = set()


def select(op, device, dtype, impl=None):
    """The backend that runs `op` for tensors on `device` of `dtype`."""
    name = requested(impl)
    device_type = torch.device(device).type
    if name != "auto":
        reasons = unavailable(name, op, device_type, dtype)
        if reasons:
            raise BackendUnavailable(
                f"{op}: backend {name!r} cannot run on {device_type} {dtype} tensors: "
                + "; ".join(reasons))
        return name
    order = AUTO_ORDER_CUDA_BY_OP.get(op, AUTO_ORDER["cuda"]) if device_type == "cuda" \
        else AUTO_ORDER.get(device_type, ("reference",))
    for candidate in order:
        if not unavailable(candidate, op, device_type, dtype):
            if candidate != order[0] and (op, device_type, candidate) not in _warned:
                _warned.add((op, device_type, candidate))
                skipped = "; ".join(unavailable(order[0], op, device_type, dtype))
                warnings.warn(f"t2i_fast: {op} on {device_type} uses the {candidate} backend "
                              f"({order[0]} unavailable: {skipped})", stacklevel=3)
            return candidate
    raise BackendUnavailable(f"{op}: no backend runs on {device_type} {dtype} tensors")


# torch.compile evaluates the choice once, at trace time, and keeps the result as a constant.
# This is what torch.compiler.assume_constant_result does; that function imports torch._dynamo
# (and with it Triton), which `import t2i_fast` must not, so the mark is set directly.
select._dynamo_marked_constant = True


def kernel(backend, name):
    """The kernel `name` (a schema of csrc/ops.cpp) of a fast backend."""
    if backend in ("cpu", "cuda"):
        return _ext.op(name)
    if backend == "triton":
        family = name.rsplit("_", 1)[0]
        module, why = _triton_module(family)
        if module is None:
            raise BackendUnavailable(why)
        return getattr(module, name)
    raise ValueError(f"backend {backend!r} has no kernels")

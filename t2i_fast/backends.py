"""The backend registry: one table of backends and one dispatch rule, in one place.

Each record of `TABLE` says where a backend's kernels run (device types and dtypes), what it
needs to be available (`needs`), which calls are out of its range (`limits`, read from the
kernels' own constants), and how its kernels are reached. Dispatch, `python -m t2i_fast.info`,
the tests and the benchmarks read only this table; adding a backend touches this file and its
kernels.

Choice, first match wins: `impl=` on the call, then `use_backend(...)`, then the environment
variable T2I_FAST_BACKEND, then `auto`. A backend named explicitly that cannot run a call raises
`BackendUnavailable` with the reasons. `auto` walks the order of the tensors' device and takes
the first backend that can run the call, warning once per (op, device, reason) when it passes one
over. Calls on empty tensors (some input with no elements) always run the reference: the result
is the same defined empty output whichever backend was asked for.

The auto order for CUDA tensors is earned: a backend is chosen automatically only for the ops
whose GPU tests passed in a committed record under benchmarks/results/, ordered by the measured
times where the records have them, and the reference comes last. `t2i_fast/validation.json`
holds that order; benchmarks/validation.py derives it from the records, and a test checks that
the two agree.
"""
import contextlib
import functools
import importlib
import json
import os
import threading
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, Mapping, Tuple

import torch

from t2i_fast import _ext

# Public op -> its kernel family (the schema stem in csrc/ops.cpp).
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
# What the ops pass to `limits`: batch sizes, word slots T and gamma1 of the call.
CALL_SIZES = {
    "memory_read": ("batch", "slots"),
    "response_gate": ("batch",),
    "dynamic_memory": ("batch", "slots"),
    "word_region_attention": ("batch", "slots", "gamma1"),
    "word_region_similarity": ("images", "captions", "slots", "gamma1"),
}

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class UnknownBackend(ValueError):
    """A backend name that is not in the table."""


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the op on these inputs."""


# --------------------------------------------------------------------------------------------
# What each backend needs and where its limits come from
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _triton_module(family):
    try:
        return importlib.import_module(TRITON_MODULES[family]), None
    except ImportError as err:  # triton missing
        return None, f"cannot import {TRITON_MODULES[family]} ({err})"


def _extension_needs(dispatch_key):
    def needs(family, device_type):
        module, why = _ext.load()
        if module is None:
            return (why,)
        if dispatch_key == "CUDA" and not _ext.build_info().get("cuda"):
            return ("t2i_fast._C was built without CUDA (T2I_FAST_CUDA=0 or no nvcc)",)
        if not _ext.has_kernel(f"{family}_forward", dispatch_key):
            return (f"no {dispatch_key} kernel for {family} in t2i_fast._C",)
        return ()
    return needs


def _triton_needs(family, device_type):
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("triton runs on CPU tensors only with TRITON_INTERPRET=1",)
    module, why = _triton_module(family)
    return (why,) if module is None else ()


def _no_limits(op, call):
    return ()


@functools.lru_cache(maxsize=None)
def _cuda_limit_values():
    """(cuda_max_slots, cuda_max_batch) as t2i_fast._C reports them (None where it does not),
    read once: the ops consult them on every call."""
    info = _ext.build_info()
    return info.get("cuda_max_slots"), info.get("cuda_max_batch")


def _cuda_limits(op, call):
    """The CUDA kernels keep T scores in registers (at most `cuda_max_slots`) and put batches on
    a grid dimension (at most `cuda_max_batch`); both numbers come from t2i_fast._C."""
    max_slots, max_batch = _cuda_limit_values()
    if max_slots is None or max_batch is None:
        return ("t2i_fast._C does not report its CUDA limits: rebuild it with "
                "pip install -e . --no-build-isolation",)
    reasons = []
    if call.get("slots", 0) > max_slots:
        reasons.append(f"T = {call['slots']} word slots > {max_slots}, the CUDA kernels' limit")
    for name in ("batch", "images", "captions"):
        if call.get(name, 0) > max_batch:
            reasons.append(f"{name} = {call[name]} > {max_batch}, the CUDA grid limit")
    return tuple(reasons)


def _triton_limits(op, call):
    """The word-region kernels skip the region softmax's running maximum, which keeps
    exp(gamma1 * a) in float32 only for |gamma1| <= GAMMA1_LIMIT."""
    if "gamma1" not in call:
        return ()
    module, _ = _triton_module(KERNELS[op])
    limit = module.GAMMA1_LIMIT
    if not abs(call["gamma1"]) <= limit:
        return (f"|gamma1| = {abs(call['gamma1']):g} > {limit:g}, the Triton kernels' range",)
    return ()


def _cuda_limit_text():
    max_slots, max_batch = _cuda_limit_values()
    if max_slots is None:
        return "unknown: t2i_fast._C does not report them"
    return f"T <= {max_slots} word slots; batch, images and captions <= {max_batch}"


def _triton_limit_text():
    module, why = _triton_module("word_region_similarity")
    if module is None:
        return f"unknown: {why}"
    return f"word-region ops: |gamma1| <= {module.GAMMA1_LIMIT:g}"


def _triton_kernel(name):
    family = name.rsplit("_", 1)[0]
    module, why = _triton_module(family)
    if module is None:
        raise BackendUnavailable(why)
    return getattr(module, name)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    name: str
    dtypes: Mapping[str, Tuple[torch.dtype, ...]]    # device type -> dtypes its kernels take
    needs: Callable[[str, str], Tuple[str, ...]]     # (family, device type) -> why not loadable
    limits: Callable[[str, Dict], Tuple[str, ...]]   # (op, call sizes) -> why out of range
    kernel: Callable[[str], Callable]                # schema name of csrc/ops.cpp -> callable
    reached: str                                     # where the kernels live, for `info`
    limit_text: Callable[[], str] = lambda: "none"   # `limits` in words, for `info`


TABLE = {
    "reference": Backend(
        "reference", {"cpu": _FLOATS, "cuda": _FLOATS}, lambda family, device: (), _no_limits,
        None, "pure PyTorch in t2i_fast/ops (the executable specification)"),
    "cpu": Backend(
        "cpu", {"cpu": _FLOATS}, _extension_needs("CPU"), _no_limits, _ext.op,
        "C++ kernels with OpenMP, torch.ops.t2i_fast_C (csrc/cpu/)"),
    # The Triton interpreter computes bf16 dots wrongly; float64 is not offered on a GPU.
    "triton": Backend(
        "triton", {"cpu": (torch.float16, torch.float32, torch.float64),
                   "cuda": (torch.float16, torch.bfloat16, torch.float32)},
        _triton_needs, _triton_limits, _triton_kernel, "Triton kernels, t2i_fast.kernels",
        _triton_limit_text),
    "cuda": Backend(
        "cuda", {"cuda": (torch.float16, torch.bfloat16, torch.float32)},
        _extension_needs("CUDA"), _cuda_limits, _ext.op,
        "CUDA kernels, torch.ops.t2i_fast_C (csrc/cuda/)", _cuda_limit_text),
}
BACKENDS = tuple(TABLE)
DEVICES = ("cpu", "cuda")

# The order `auto` walks on CPU tensors; CUDA tensors follow the validation record.
CPU_ORDER = ("cpu", "reference")
VALIDATION_FILE = "validation.json"


@functools.lru_cache(maxsize=None)
def validation():
    """The GPU validation record of the package (see benchmarks/validation.py)."""
    text = resources.files("t2i_fast").joinpath(VALIDATION_FILE).read_text()
    return json.loads(text)


def auto_order(op, device_type):
    """The backends `auto` tries for `op` on `device_type` tensors, first to last."""
    if device_type == "cuda":
        return tuple(validation()["auto_order_cuda"].get(op, ())) + ("reference",)
    if device_type == "cpu":
        return CPU_ORDER
    return ("reference",)


# --------------------------------------------------------------------------------------------
# Requests and the dispatch rule
# --------------------------------------------------------------------------------------------

_local = threading.local()


def check_name(name, where):
    if name not in BACKENDS + ("auto",):
        raise UnknownBackend(f"{where}: backend must be one of {BACKENDS + ('auto',)}, "
                             f"got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Run the ops inside the block on backend `name` ('auto' restores automatic choice)."""
    check_name(name, "use_backend")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested(impl=None):
    """The backend name in force for a call: impl=, context manager, env var, or 'auto'."""
    if impl is not None:
        return check_name(impl, "impl")
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return check_name(os.environ.get("T2I_FAST_BACKEND", "auto") or "auto", "T2I_FAST_BACKEND")


@functools.lru_cache(maxsize=None)
def unavailable(backend, op, device_type, dtype):
    """Why `backend` cannot run `op` on `device_type` tensors of `dtype` whatever their sizes
    (empty: it can)."""
    if op not in KERNELS:
        raise ValueError(f"unknown op {op!r}; ops with backends: {sorted(KERNELS)}")
    if backend == "auto":
        raise ValueError("unavailable() takes a backend of the table, not 'auto'")
    record = TABLE[check_name(backend, "backend")]
    if device_type not in DEVICES:
        return (f"tensors on {device_type!r}: t2i_fast supports {' and '.join(DEVICES)}",)
    reasons = []
    if device_type == "cuda" and not torch.cuda.is_available():
        reasons.append("no CUDA device visible")
    if device_type not in record.dtypes:
        reasons.append(f"{backend} does not run on {device_type} tensors")
    elif dtype not in record.dtypes[device_type]:
        reasons.append(f"{backend} on {device_type} does not support {dtype}")
    else:
        reasons.extend(record.needs(KERNELS[op], device_type))
    return tuple(reasons)


def out_of_range(backend, op, call):
    """Why this call (its sizes, see CALL_SIZES) is outside `backend`'s limits."""
    return TABLE[backend].limits(op, call)


def check_backend(name, device_type, dtype=torch.float32):
    """Raise unless `name` ('auto' or a backend) can run every op on `device_type` tensors of
    `dtype`: what a command checks before it starts work."""
    check_name(name, "backend")
    if name == "auto":
        return
    reasons = sorted({r for op in KERNELS for r in unavailable(name, op, device_type, dtype)})
    if reasons:
        raise BackendUnavailable(f"backend {name!r} cannot run on {device_type} {dtype} "
                                 f"tensors: " + "; ".join(reasons))


_warned = set()


def select(op, device, dtype, impl=None, empty=False, **call):
    """The backend that runs `op` on tensors of `device` and `dtype` with the call sizes `call`.

    `empty`: some input has no elements; the reference computes the (empty) result.
    """
    name = requested(impl)
    device_type = torch.device(device).type
    if name != "auto":
        reasons = unavailable(name, op, device_type, dtype)
        if not reasons and not empty:
            reasons = out_of_range(name, op, call)
        if reasons:
            raise BackendUnavailable(f"{op}: backend {name!r} cannot run on {device_type} "
                                     f"{dtype} tensors: " + "; ".join(reasons))
        return "reference" if empty else name
    if empty:
        return "reference"
    passed = []
    for candidate in auto_order(op, device_type):
        reasons = unavailable(candidate, op, device_type, dtype) or \
            out_of_range(candidate, op, call)
        if not reasons:
            _warn_fallback(op, device_type, candidate, passed)
            return candidate
        passed.append((candidate, reasons))
    raise BackendUnavailable(f"{op}: no backend runs on {device_type} {dtype} tensors: " +
                             "; ".join(f"{b}: {', '.join(r)}" for b, r in passed))


def _warn_fallback(op, device_type, chosen, passed):
    # Once per (op, device, passed-over backend, reasons): a training loop warns at its first
    # step, not at every step.
    for skipped, reasons in passed:
        key = (op, device_type, skipped, reasons)
        if key in _warned:
            continue
        _warned.add(key)
        warnings.warn(f"t2i_fast: {op} on {device_type} runs on the {chosen} backend "
                      f"({skipped} cannot: {'; '.join(reasons)})", stacklevel=4)


# torch.compile evaluates the choice once, at trace time, and keeps the result as a constant.
# This is what torch.compiler.assume_constant_result does; that function imports torch._dynamo
# (and with it Triton), which `import t2i_fast` must not, so the mark is set directly.
select._dynamo_marked_constant = True


def kernel(backend, name):
    """The kernel `name` (a schema of csrc/ops.cpp) of a fast backend."""
    if TABLE[backend].kernel is None:
        raise ValueError(f"backend {backend!r} has no kernels")
    return TABLE[backend].kernel(name)


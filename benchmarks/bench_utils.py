"""Shared pieces of the benchmarks: providers, the timed step, work rates and the result record.

Providers of an op: every backend of `t2i_fast.backends.TABLE` with kernels that runs the op on
this device and dtype and whose limits accept the call, then 'reference' (the eager PyTorch
specification), 'compile' (torch.compile of the reference) and the op's strongest public
alternative, which each benchmark module names. Modes: fwd (no autograd), bwd (backward of a
recorded forward), fwdbwd (both).

Timing: on a GPU the time is the median of `triton.testing.do_bench` (CUDA events, L2 flushed
between runs) and peak memory is `torch.cuda.max_memory_allocated` above the inputs, after a
warm-up. On CPU it is pytest-benchmark's host median, and the device-independent memory figure is
the bytes saved for backward. `extra_info` carries `time_ms`, `flops`, `bytes_moved`,
`gflops_per_s` and `gbytes_per_s`, computed from the formulas each module writes next to its
benchmark.
"""
import functools
import os
import sys
import time

import pytest
import torch

# Benchmarks never time the Triton interpreter (a correctness tool); tests/conftest, imported
# below for the tests' helpers, would turn it on for GPU-less runs.
os.environ.setdefault("TRITON_INTERPRET", "0")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # shared helpers

from conftest import FAST_BACKENDS as FAST  # noqa: E402  (the table's backends with kernels)
from conftest import dtype_name  # noqa: E402
from t2i_fast import backends  # noqa: E402
from t2i_fast.profiling import saved_bytes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
MODES = ("fwd", "bwd", "fwdbwd")


def rounds_for(seconds):
    """Host-timed rounds for a step that took `seconds` once: on a GPU a few (do_bench's median
    is the figure); on CPU about a quarter of a second of them, 3 to 50, so that the median of
    a short step is not one scheduler hiccup on a shared machine."""
    if ON_GPU:
        return 5
    return max(3, min(50, int(0.25 / max(seconds, 1e-6))))


def shape_name(shape):
    return "x".join(map(str, shape))


def fast_backends(op, dtype, **call):
    """The table's backends with kernels that run `op` here on `dtype` and accept `call` (the
    call sizes of backends.CALL_SIZES)."""
    return [name for name in FAST if not backends.unavailable(name, op, DEVICE, dtype)
            and not backends.out_of_range(name, op, call)]


def providers_for(op, dtype, call, alternatives=()):
    """Every provider of `op` here: the fast backends (`call`: the call's sizes), the eager
    reference, its torch.compile, and the op's public alternatives by name."""
    return fast_backends(op, dtype, **call) + ["reference", "compile", *alternatives]


def forward_for(provider, reference, public, alternatives=None):
    """What `provider` runs: `reference` (eager), its torch.compile, an alternative of the dict
    `alternatives`, or `public(*inputs, impl=provider)`, the public op on a fast backend."""
    if provider == "reference":
        return reference
    if provider == "compile":
        return compiled(reference)
    if alternatives and provider in alternatives:
        return alternatives[provider]
    return functools.partial(public, impl=provider)


def role(provider):
    """'fast', 'reference', 'compile' or 'alternative': how report.py compares providers."""
    if provider in FAST:
        return "fast"
    return provider if provider in ("reference", "compile") else "alternative"


@functools.lru_cache(maxsize=None)
def compiled(fn):
    """torch.compile of `fn`, static shapes: one graph per shape, dtype and grad mode."""
    return torch.compile(fn, dynamic=False)


def by_mode(mode, forward, backward):
    return {"fwd": forward, "bwd": backward, "fwdbwd": forward + backward}[mode]


def io_bytes(mode, inputs, outputs, grads):
    """The fewest bytes a call moves through memory: the forward reads each input once and
    writes each output once; the backward reads the inputs and the outputs' gradients and
    writes the inputs' gradients (arguments in bytes)."""
    return by_mode(mode, inputs + outputs, inputs + outputs + grads)


def in_record(provider, dtype, mode, reference):
    """Whether a case's time goes into the GPU record (benchmarks/record.py): a fast backend's
    fwd+bwd at the op's reference shape in float32."""
    return role(provider) == "fast" and dtype == torch.float32 and mode == "fwdbwd" and reference


def cases(op, shapes, dtypes, providers):
    """pytest parameters (shape, dtype, provider, mode); providers(shape, dtype) lists them.
    shapes[0] is the op's reference shape; the record's cases carry the mark `record`, so that
    benchmarks/gpu_check.sh can run them first."""
    return [pytest.param(shape, dtype, provider, mode,
                         id=f"{op}-{shape_name(shape)}-{dtype_name(dtype)}-{provider}-{mode}",
                         marks=[pytest.mark.record] if in_record(
                             provider, dtype, mode, shape == shapes[0]) else [])
            for shape in shapes for dtype in dtypes for provider in providers(shape, dtype)
            for mode in MODES]


def make_step(forward, inputs, mode, grad_seed=0):
    """A zero-argument callable doing the timed work of `mode` for forward(*inputs)."""
    leaves = [t.detach().requires_grad_(mode != "fwd") if t.is_floating_point() else t
              for t in inputs]
    floats = [t for t in leaves if t.requires_grad]

    def run_forward():
        out = forward(*leaves)
        return out if isinstance(out, tuple) else (out,)

    def seeded_grads(outs):
        gen = torch.Generator(device=outs[0].device).manual_seed(grad_seed)
        return [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs]

    if mode == "fwd":
        def step():
            with torch.no_grad():
                return run_forward()
        return step
    if mode == "bwd":
        outs = run_forward()
        grads = seeded_grads(outs)

        def step():
            return torch.autograd.grad(outs, floats, grads, retain_graph=True, allow_unused=True)
        return step
    grads = seeded_grads(run_forward())

    def step():
        return torch.autograd.grad(run_forward(), floats, grads, allow_unused=True)
    return step


def saved_by(forward, inputs):
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    return saved_bytes(forward, *leaves)


def measure(benchmark, step, bytes_moved=None, saved=None, flops=None, **info):
    """Runs `step` under pytest-benchmark and records time, memory and work rates."""
    def synced():
        out = step()
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    synced()  # warm-up: compilation, autotuning, workspaces
    record = dict(info, device=DEVICE, torch=torch.__version__)
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    synced()
    rounds = rounds_for(time.perf_counter() - start)
    if ON_GPU:
        import triton.testing
        record["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        record["device_ms"] = triton.testing.do_bench(step, warmup=10, rep=100,
                                                      return_mode="median")
        record["gpu"] = torch.cuda.get_device_name(0)
    benchmark.pedantic(synced, rounds=rounds, iterations=1)
    ms = record.get("device_ms")
    if ms is None and benchmark.stats is not None:
        ms = benchmark.stats.stats.median * 1e3
    record["time_ms"] = ms
    record["timer"] = "CUDA events, do_bench median" if ON_GPU else "host clock, median"
    if flops is not None:
        record["flops"] = flops
        if ms:
            record["gflops_per_s"] = flops / ms / 1e6
    if bytes_moved is not None:
        record["bytes_moved"] = bytes_moved
        if ms:
            record["gbytes_per_s"] = bytes_moved / ms / 1e6
    if saved is not None:
        record["saved_for_backward_bytes"] = saved
    benchmark.extra_info.update(record)


def run_case(benchmark, op, shape, dtype, provider, mode, forward, inputs, work, reference):
    """One op benchmark. work = (flops, bytes_moved) of this shape, dtype and mode; reference:
    whether `shape` is the op's reference shape (the one the GPU record's timings use)."""
    benchmark.group = f"{op} {shape_name(shape)} {dtype_name(dtype)} {mode}"
    # Bytes saved for backward are the same in every mode; count them once. Compiled graphs
    # save through AOTAutograd, which the saved-tensor hooks do not see.
    saved = saved_by(forward, inputs) if mode == "fwdbwd" and provider != "compile" else None
    flops, moved = work
    measure(benchmark, make_step(forward, inputs, mode), bytes_moved=moved, saved=saved,
            flops=flops, op=op, shape=list(shape), dtype=dtype_name(dtype), provider=provider,
            role=role(provider), mode=mode, reference_shape=reference,
            record_timing=in_record(provider, dtype, mode, reference))

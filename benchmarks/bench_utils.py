"""Shared pieces of the op benchmarks: device, timing, memory, and the result record.

On a GPU each measured call synchronises, the device time is the median of
`triton.testing.do_bench` (CUDA events, L2 flushed between runs) and peak memory is
`torch.cuda.max_memory_allocated` above the inputs, after warm-up. On CPU pytest-benchmark's
host clock is the time, and the device-independent memory figure is the bytes saved for
backward.
"""
import os
import sys

import torch

from t2i_fast import backends
from t2i_fast.profiling import saved_bytes

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # shared baselines

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
MODES = ("fwd", "bwd", "fwdbwd")


def fused_providers(op, dtype):
    """The fast backends that run `op` here."""
    return [b for b in ("cpu", "cuda", "triton")
            if not backends.unavailable(b, op, DEVICE, dtype)]


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


def measure(benchmark, step, bytes_moved=None, saved=None, **info):
    """Runs `step` under pytest-benchmark and records device time, memory and bandwidth."""
    def synced():
        out = step()
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    synced()  # warm-up: compilation, autotuning, workspaces
    record = dict(info, device=DEVICE)
    if ON_GPU:
        import triton.testing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        synced()
        record["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        ms = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
        record["device_ms"] = ms
        if bytes_moved:
            record["gbytes_per_s"] = bytes_moved / ms / 1e6
        record["gpu"] = torch.cuda.get_device_name(0)
    if bytes_moved:
        record["bytes_moved"] = bytes_moved
    if saved is not None:
        record["saved_for_backward_bytes"] = saved
    record["torch"] = torch.__version__
    benchmark.extra_info.update(record)
    rounds = 20 if ON_GPU else 3
    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)


def saved_by(forward, inputs):
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    return saved_bytes(forward, *leaves)

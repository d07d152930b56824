"""dynamic_memory and memory_read: fused backends vs eager, torch.compile and SDPA.

Run: pytest benchmarks/test_bench_dynamic_memory.py --benchmark-only
Bytes that must move (B*C*N elements of size s): forward reads h and writes out (2 B C N s);
backward reads h and grad_out and writes dh (3 B C N s). GB/s in extra_info uses these counts.
"""
import pytest
import torch
import torch.nn.functional as F

from bench_utils import DEVICE, MODES, ON_GPU, fused_providers, make_step, measure, saved_by
from t2i_fast import ops

# (B, C, H, W, T): the DM-GAN 128^2 stage (the target size) and its 64^2 stage on a GPU;
# a CPU-sized case otherwise.
SHAPES = [(16, 64, 128, 128, 18), (10, 64, 64, 64, 18)] if ON_GPU else [(4, 64, 64, 64, 18)]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]
OPS = ("dynamic_memory", "memory_read")


def inputs(shape, dtype, seed=0):
    batch, channels, height, width, slots = shape
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, channels, height, width, generator=gen)
    key = 0.3 * torch.randn(batch, channels, slots, generator=gen)
    value = torch.randn(batch, channels, slots, generator=gen)
    lengths = torch.randint(1, slots + 1, (batch,), generator=gen)
    mask = torch.arange(slots)[None, :] >= lengths[:, None]
    weight = 0.2 * torch.randn(2 * channels, generator=gen)
    bias = torch.randn(1, generator=gen)
    return [t.to(DEVICE, dtype) if t.is_floating_point() else t.to(DEVICE)
            for t in (h, key, value, mask, weight, bias)]


def sdpa_read(h, key, value, mask):
    """What a user writes with SDPA: NCHW -> (B,1,N,C), attend, and back to NCHW."""
    batch, channels, height, width = h.shape
    q = h.flatten(2).transpose(1, 2).contiguous()[:, None]
    out = F.scaled_dot_product_attention(
        q, key.transpose(1, 2)[:, None], value.transpose(1, 2)[:, None],
        attn_mask=~mask[:, None, None, :], scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(batch, -1, height, width).contiguous()


def reference_forward(op):
    if op == "dynamic_memory":
        return ops.dynamic_memory_reference
    return lambda h, k, v, m, w, b: ops.memory_read_reference(h, k, v, m)


def forward_of(op, provider):
    if provider == "reference":
        return reference_forward(op)
    if provider == "compile":
        return torch.compile(reference_forward(op))
    if provider == "sdpa":
        def sdpa(h, k, v, m, w, b):
            o = sdpa_read(h, k, v, m)
            return o if op == "memory_read" else ops.response_gate_reference(h, o, w, b)
        return sdpa
    if op == "dynamic_memory":
        return lambda h, k, v, m, w, b: ops.dynamic_memory(h, k, v, m, w, b, impl=provider)
    return lambda h, k, v, m, w, b: ops.memory_read(h, k, v, m, impl=provider)


def providers(op, dtype):
    return fused_providers(op, dtype) + ["reference", "compile", "sdpa"]


CASES = [(op, shape, dtype, provider, mode)
         for op in OPS for shape in SHAPES for dtype in DTYPES
         for provider in providers(op, dtype) for mode in MODES]


@pytest.mark.parametrize(
    "op,shape,dtype,provider,mode", CASES,
    ids=[f"{o}-{'x'.join(map(str, s))}-{str(d)[6:]}-{p}-{m}" for o, s, d, p, m in CASES])
def test_dynamic_memory(benchmark, op, shape, dtype, provider, mode):
    benchmark.group = f"{op} {'x'.join(map(str, shape))} {str(dtype)[6:]} {mode}"
    args = inputs(shape, dtype)
    forward = forward_of(op, provider)
    batch, channels, height, width, _ = shape
    elems = batch * channels * height * width * args[0].element_size()
    moved = {"fwd": 2 * elems, "bwd": 3 * elems, "fwdbwd": 5 * elems}[mode]
    saved = saved_by(forward, args) if provider != "compile" else None
    measure(benchmark, make_step(forward, args, mode), bytes_moved=moved, saved=saved, op=op,
            shape=list(shape), dtype=str(dtype), provider=provider, mode=mode)

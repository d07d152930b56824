"""word_region_similarity forward/backward: fused backends vs the batched eager reference, its
torch.compile, and the upstream per-caption loop (tests/upstream.py).

Run: pytest benchmarks/test_bench_word_region.py --benchmark-only
Bytes that must move: regions (B_img D R) and words (B_cap D T) read once (and their gradients
written once in backward); the work is about 4 B_img B_cap R T D flops per direction.
"""
import pytest
import torch

from bench_utils import DEVICE, MODES, ON_GPU, fused_providers, make_step, measure, saved_by
import upstream  # noqa: E402,I001 (tests/ is on the path once bench_utils is imported)
from t2i_fast import ops

# (B, D, H, W, T): DAMSM (B=48, 17x17 regions, D=256, T=18) and GR-GAN's ITM (14x14, D=512,
# T=12) on a GPU; the CPU target size (B=16) otherwise.
SHAPES = [(48, 256, 17, 17, 18), (48, 512, 14, 14, 12)] if ON_GPU else [(16, 256, 17, 17, 18)]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


def inputs(shape, dtype, seed=0):
    batch, dim, height, width, slots = shape
    gen = torch.Generator().manual_seed(seed)
    regions = torch.randn(batch, dim, height, width, generator=gen)
    words = 0.3 * torch.randn(batch, dim, slots, generator=gen)
    lens = torch.randint(1, slots + 1, (batch,), generator=gen)
    return [regions.to(DEVICE, dtype), words.to(DEVICE, dtype), lens.to(DEVICE)]


def forward_of(provider):
    if provider == "loop":
        return upstream.word_similarity_loop
    if provider == "reference":
        return ops.word_region_similarity_reference
    if provider == "compile":
        return torch.compile(ops.word_region_similarity_reference)
    return lambda r, w, lens: ops.word_region_similarity(r, w, lens, impl=provider)


def providers(dtype):
    return fused_providers("word_region_similarity", dtype) + ["reference", "compile", "loop"]


CASES = [(shape, dtype, provider, mode) for shape in SHAPES for dtype in DTYPES
         for provider in providers(dtype) for mode in MODES]


@pytest.mark.parametrize(
    "shape,dtype,provider,mode", CASES,
    ids=[f"{'x'.join(map(str, s))}-{str(d)[6:]}-{p}-{m}" for s, d, p, m in CASES])
def test_word_region_similarity(benchmark, shape, dtype, provider, mode):
    benchmark.group = f"word_region_similarity {'x'.join(map(str, shape))} {str(dtype)[6:]} {mode}"
    args = inputs(shape, dtype)
    forward = forward_of(provider)
    batch, dim, height, width, slots = shape
    size = args[0].element_size()
    reads = batch * dim * (height * width + slots) * size
    moved = {"fwd": reads, "bwd": 2 * reads, "fwdbwd": 3 * reads}[mode]
    saved = saved_by(forward, args) if provider != "compile" else None
    measure(benchmark, make_step(forward, args, mode), bytes_moved=moved, saved=saved,
            op="word_region_similarity", shape=list(shape), dtype=str(dtype), provider=provider,
            mode=mode, flops=4 * batch * batch * height * width * slots * dim)

"""Benchmark shapes and inputs, made by the tests' own input makers (tests/*_family.py), so that
benchmarks and tests draw the same kind of data.

Full sizes on a GPU, scaled down on CPU so that `pytest benchmarks/ --benchmark-only` runs in a
few minutes. The first shape of each list is the op's reference shape, the one whose float32
fwd+bwd median goes into the GPU record (benchmarks/record.py). Inputs are drawn once per
(op, shape, dtype) and shared by every provider and mode; each step detaches its own leaves.
"""
import functools

import torch

from bench_utils import DEVICE, ON_GPU
import dynamic_memory_family  # noqa: I001 (tests/ is on the path once bench_utils is imported)
import word_region_family

# (B, C, H, W, T): DM-GAN's 128^2 stage (batch 16, 64 channels, 18 words).
MEMORY_SHAPES = [(16, 64, 128, 128, 18)] if ON_GPU else [(2, 64, 32, 32, 18)]
# (B, D, H, W, T): DAMSM (batch 48, 17x17 regions, D = 256, 18 words).
WORD_SHAPES = [(48, 256, 17, 17, 18)] if ON_GPU else [(8, 256, 17, 17, 18)]
# (B, D): DAMSM's sentence and image codes, the batch and width of WORD_SHAPES.
SENTENCE_SHAPES = [shape[:2] for shape in WORD_SHAPES]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


def _lengths(batch, slots, seed=0):
    """Random caption lengths in 1..T, as a batch of captions has."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1, slots + 1, (batch,), generator=gen).tolist())


@functools.lru_cache(maxsize=None)
def memory_inputs(op, shape, dtype):
    """The arguments of memory_read, response_gate or dynamic_memory by name (h, o, key, value,
    mask, weight, bias as the op takes them); shape (B, C, H, W, T), or (B, C, H, W) for the
    gate."""
    batch, channels, height, width = shape[:4]
    slots = shape[4] if len(shape) == 5 else 1
    case = dynamic_memory_family.Case(channels, slots, height, width, _lengths(batch, slots))
    return dynamic_memory_family.make_inputs(op, case, dtype, DEVICE)


@functools.lru_cache(maxsize=None)
def word_inputs(shape, dtype):
    """regions (B,D,H,W), words (B,D,T), cap_lens (B,) in 1..T and the padding mask (B,T)."""
    batch, dim, height, width, slots = shape
    case = word_region_family.Case(dim, slots, height, width, _lengths(batch, slots))
    return word_region_family.make_inputs(case, dtype, DEVICE)


@functools.lru_cache(maxsize=None)
def sentence_inputs(shape, dtype, seed=0):
    """image_code, sent_code (B,D): standard normal codes."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(2, *shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    return {"image_code": codes[0], "sent_code": codes[1]}

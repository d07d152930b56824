"""Memory policies: what a convolution block keeps for backward, and a byte budget over blocks.

The generator's blocks (the image-level stage; the residual and up/project blocks of each
refinement) and the discriminators' trunks are chains of units (`t2i_fast.models.chain`). Every
policy computes the same function:

* eager: the upstream modules under plain autograd; every op keeps what it saves (baseline);
* lean: the chain keeps its input and each convolution output, nothing else; backward replays
  the cheap parts (BatchNorm normalisation, GLU and sigmoid gates, LeakyReLU, residual sums,
  nearest upsampling, DM-GAN's [r'; r']) from them;
* max: the chain keeps its input only; backward recomputes the convolutions too (one extra
  forward of the chain): the fewest bytes, the most time.

`estimate` gives the bytes each policy keeps for a chain from the shapes alone (activations:
parameters and per-channel statistics are left out; the tests hold them against
saved_tensors_hooks); `plan` picks per block the fastest policy whose total fits a budget.
"""
import math

import torch

from t2i_fast.errors import ConfigError
from t2i_fast.models.chain import run_chain, unit_steps

POLICIES = ("eager", "lean", "max")


class MemoryBudgetError(ConfigError):
    """Even the policy that keeps the fewest bytes does not fit memory_budget."""


def check_options(memory, memory_budget=None):
    """Raise ValueError unless memory is a policy and memory_budget is None or bytes > 0."""
    if memory not in POLICIES:
        raise ValueError(f"memory must be one of {POLICIES}, got {memory!r}")
    if memory_budget is not None and (isinstance(memory_budget, bool)
                                      or not isinstance(memory_budget, int) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes (int) or None, "
                         f"got {memory_budget!r}")


def run_block(policy, units, x, eager):
    """A block's forward: eager(x) under 'eager' or without autograd, else the chain units()
    on x under `policy` ('lean' or 'max'). units is called only then (it may compute weights,
    e.g. spectral norm)."""
    check_options(policy)
    if policy == "eager" or not torch.is_grad_enabled():
        return eager(x)
    return run_chain(units(), x, keep=policy == "lean")


# --------------------------------------------------------------------------------------------
# estimates and the budget
# --------------------------------------------------------------------------------------------

def estimate(units, shape, element_size):
    """Bytes each policy keeps for backward for a chain input of `shape`, and the multiply-adds
    `max` spends again: {'eager': b, 'lean': b, 'max': b, 'macs': n}.

    Activations only (parameters and per-channel statistics are left out). eager counts what
    plain autograd saves: each conv's input (after upsampling, with [x; x] built), BatchNorm's
    input and the activation's input; lean the chain input and every conv output; max the
    chain input. The tests hold these against saved_tensors_hooks.
    """
    out = {"eager": 0, "lean": math.prod(shape), "max": math.prod(shape), "macs": 0}
    for step in (s for unit in units for s in unit_steps(unit)):
        out["macs"] += step.macs(shape)
        xin, t, shape = step.shapes(shape)
        kept = (step.bn is not None) + (step.act is not None)
        out["eager"] += math.prod(xin) * (2 if step.fold else 1) + math.prod(t) * kept
        out["lean"] += math.prod(t)
    for key in ("eager", "lean", "max"):
        out[key] *= element_size
    return out


def plan(blocks, budget):
    """The fastest policy per block with the sum of bytes <= budget.

    blocks: one estimate() per block. lean costs elementwise passes only and max recomputes
    the convolutions, so blocks move eager -> lean first (largest saving first), then
    lean -> max in order of bytes saved per multiply-add recomputed. Raises MemoryBudgetError
    when max everywhere does not fit.
    """
    floor = sum(b["max"] for b in blocks)
    if floor > budget:
        raise MemoryBudgetError(f"memory_budget={budget} bytes: the blocks keep at least "
                                f"{floor} bytes (policy 'max' everywhere)")
    choice = ["eager"] * len(blocks)
    total = sum(b["eager"] for b in blocks)
    moves = sorted(range(len(blocks)), key=lambda i: blocks[i]["lean"] - blocks[i]["eager"])
    moves = [(i, "lean") for i in moves] + [
        (i, "max") for i in sorted(range(len(blocks)), key=lambda i: -(
            blocks[i]["lean"] - blocks[i]["max"]) / max(blocks[i]["macs"], 1))]
    for i, policy in moves:
        if total <= budget:
            break
        total += blocks[i][policy] - blocks[i][choice[i]]
        choice[i] = policy
    return choice

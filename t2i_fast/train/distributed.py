"""Process-group setup for torchrun (DistributedDataParallel); a no-op for one process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; the backend is NCCL on CUDA and gloo on CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from t2i_fast.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world > 1

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def gather(self, obj):
        """A list of every rank's `obj` (the object itself in a one-process run)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value):
        """The mean over ranks of a float."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    @property
    def comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def parse_device(name):
    """torch.device of a --device value ('auto' gives None); ConfigError for other text."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def resolve_device(name, local_rank=0):
    """The device of a --device value on this machine; ConfigError when it is not here."""
    device = parse_device(name)
    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine "
                              f"(use --device cpu)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def setup(device_name="auto"):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def teardown(d):
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()

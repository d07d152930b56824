"""Checkpoints written atomically and read with weights_only=True.

    save_checkpoint(state, run_dir / "checkpoints" / "step_0000200.pt")
    state = load_checkpoint(path)            # WeightsError if missing, truncated or foreign
    path = latest_checkpoint(run_dir)        # newest by step, or None

Writes go through fileio.atomic_write: a crash leaves the old file or the new one.
"""
import pickle
import re
from pathlib import Path

import torch

from t2i_fast.errors import WeightsError
from t2i_fast.fileio import atomic_write

_NAME = re.compile(r"^step_(\d+)\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def save_checkpoint(state, path):
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    """The object saved at `path`, loaded with weights_only=True (tensors and plain containers
    only); WeightsError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:          # zip errors, unpickling errors, EOF: all mean unusable
        raise WeightsError(_unreadable(path, e)) from e


def _unreadable(path, err):
    """Why `path` could not be loaded, in our words: torch's own message advises loading with
    weights_only=False, which would run whatever code the file holds."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return f"checkpoint {path} is empty"
    refused = isinstance(err, pickle.UnpicklingError)
    found = _GLOBAL.search(str(err)) if refused else None
    if found:
        return (f"{path} is not a t2i_fast checkpoint: it holds the Python object "
                f"{found.group(1)}, which checkpoints never contain (refused, not run)")
    if head == _ZIP_MAGIC and refused:
        return (f"{path} is not a t2i_fast checkpoint: a PyTorch archive holding more than "
                f"tensors and plain containers (refused, not run)")
    if head == _ZIP_MAGIC:
        return (f"checkpoint {path} is truncated or corrupt (a damaged PyTorch archive: "
                f"{str(err).splitlines()[0][:160]})")
    return (f"{path} is not a t2i_fast checkpoint: neither a PyTorch archive nor a readable "
            f"pickle of tensors")


def checkpoint_path(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def checkpoint_step(path):
    """The step of a checkpoint path (RUN/checkpoints/step_N.pt), or None for other paths."""
    path = Path(path)
    m = _NAME.match(path.name)
    return int(m.group(1)) if m and path.parent.name == "checkpoints" else None


def list_checkpoints(run_dir):
    """[(step, path)] of the run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir):
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir, keep, current):
    """Delete all but the newest `keep` checkpoints up to step `current` (the one just
    written); newer ones cannot be left by this run, and are deleted too."""
    found = list_checkpoints(run_dir)
    stale = [p for s, p in found if s > current]
    older = [p for s, p in found if s <= current]
    for path in stale + older[:-keep]:
        path.unlink(missing_ok=True)

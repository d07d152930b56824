"""Checkpoints written atomically and read with weights_only=True.

    save_checkpoint(state, run_dir / "checkpoints" / "step_0000200.pt")
    state = load_checkpoint(path)            # CheckpointError if truncated or corrupt
    path = latest_checkpoint(run_dir)        # newest by step, or None

A write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed
over the target (and the directory fsync'ed), so a crash leaves either the old file or the new
one, never a partial file under the final name.
"""
import re
from pathlib import Path

import torch

from t2i_fast.fileio import atomic_write

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state, path):
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:          # zip errors, unpickling errors, EOF: all mean unusable
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(e).__name__}: {e})") from e


def checkpoint_path(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


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


def prune_checkpoints(run_dir, keep):
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)

"""Atomic file writes: a crash leaves the old file or the new one, never a partial file.

    atomic_write("out/ckpt.pt", lambda f: torch.save(state, f))
"""
import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Call write(binary file) on a temporary file in the target's folder, flush and fsync it,
    rename it over `path`, then fsync the folder. On any error the temporary file is removed
    and the old `path` (if any) is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:                     # platforms without directory descriptors
        return path
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path

"""Writing files: atomic replacement, appends and folders, with file-system failures (permissions,
read-only or full disks) raised as FileSystemError naming the path.

    atomic_write("out/ckpt.pt", lambda f: torch.save(state, f))
    remove_temp_files("out")            # temporary files of writes killed mid-way
    check_writable("runs/x/eval")       # before computing what will be written there

A write goes to a temporary file `.<name>.<8 random characters>.tmp` in the target's folder,
is flushed and fsync'ed, then renamed over the target (and the folder fsync'ed): a crash leaves
the old file or the new one, never a partial file under the final name. A process killed
mid-write leaves its temporary file; the next run in that folder removes it.
"""
import os
import re
import tempfile
from pathlib import Path

from t2i_fast.errors import FileSystemError

_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
# mkstemp's random part is 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def fs_error(path, err, doing="write"):
    """FileSystemError for an OSError met while doing `doing` on `path`."""
    out = FileSystemError(f"cannot {doing} {path}: {err.strerror or err}")
    out.errno = err.errno
    return out


def make_dir(path):
    """mkdir -p `path`; FileSystemError when it cannot be made (a file in the way, no rights,
    a read-only or special file system)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileSystemError(f"cannot use {path} as a folder: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fs_error(path, e, "create the folder") from e
    return path


class _Recorded:
    """A file whose write errors are remembered: torch's zip writer reports a failed write as
    a RuntimeError about file positions, which would hide the disk-full or permission error."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            return self.f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def atomic_write(path, write):
    """Call write(binary file) on a temporary file in the target's folder, flush and fsync it,
    rename it over `path`, then fsync the folder. On any error the temporary file is removed
    and the old `path` (if any) is untouched; file-system errors raise FileSystemError."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX,
                                   dir=path.parent)
    except OSError as e:
        raise fs_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Recorded(raw)
            try:
                write(f)
                f.flush()
                os.fsync(raw.fileno())
            except Exception as e:
                failed = f.error or (e if isinstance(e, OSError) else None)
                if failed is None or isinstance(e, FileSystemError):
                    raise
                raise fs_error(path, failed) from e
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileSystemError):
            raise fs_error(path, e) from e      # closing (a final flush) or the rename
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


def save_png(image, path):
    """A PIL image written to `path` as PNG through atomic_write."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def append_line(path, text):
    """Append `text` and a newline to `path` (created if absent)."""
    try:
        with open(path, "a") as f:
            f.write(text + "\n")
    except OSError as e:
        raise fs_error(path, e) from e


def check_writable(folder):
    """Create `folder` if needed and check a file can be written in it (with the temporary-file
    naming, removed at once); FileSystemError otherwise."""
    folder = make_dir(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}probe.", suffix=_TEMP_SUFFIX,
                                   dir=folder)
    except OSError as e:
        raise fs_error(folder, e, "write in") from e
    os.close(fd)
    os.unlink(tmp)
    return folder


def remove_temp_files(folder):
    """Delete the temporary files that killed atomic writes left in `folder` (not below it);
    returns their paths. Only the owner of the folder (the process holding the run's lock)
    may call this, or it would delete a live write's file."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if _TEMP_NAME.match(p.name) and p.is_file():
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise fs_error(p, e, "remove") from e
            removed.append(p)
    return removed

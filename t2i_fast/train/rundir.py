"""A run directory: what it holds, its config.json, and the one process that may write it.

    RUN/config.json        {"train": TrainConfig, "model": model Config, "vocab": [words]}
    RUN/encoders.pt        RUN/checkpoints/step_N.pt   RUN/samples/   RUN/metrics.jsonl
    RUN/.lock              the pid of the process training in RUN (empty after a clean end)

A run directory belongs to one run. A new run refuses a directory that holds one
(check_new_run_dir: nothing is written before that check), and the process that trains holds an
exclusive flock on RUN/.lock for its whole life (claim), so a second process refuses while the
first lives. The kernel drops the flock of a process that dies, even by SIGKILL; the next
process then finds the dead one's pid in the file and takes the lock over with a message.
"""
import fcntl
import json
import os
from pathlib import Path

from t2i_fast.data.vocab import Vocabulary
from t2i_fast.errors import ConfigError, RunDirError
from t2i_fast.fileio import atomic_write, fs_error, make_dir, remove_temp_files
from t2i_fast.models import Config
from t2i_fast.train.checkpoint import checkpoint_step
from t2i_fast.train.config import TrainConfig

RUN_FILES = ("config.json", "encoders.pt", "checkpoints", "samples", "metrics.jsonl")
LOCK_NAME = ".lock"
# Folders where a run writes through fileio.atomic_write, so killed writes leave temp files.
WRITTEN_FOLDERS = (".", "checkpoints", "samples")
# Training fields that runs before this layout stored in the model config.
_MOVED_TO_TRAIN = ("batch_size", "optimizer", "lr_g", "lr_d", "betas", "ema_decay")


def config_text(train_cfg, model_cfg, vocab):
    """The text of config.json (also what --dry-run prints)."""
    state = {"train": train_cfg.to_dict(), "model": model_cfg.to_dict(),
             "vocab": vocab.to_list()}
    return json.dumps(state, indent=2) + "\n"


def write_config(run_dir, train_cfg, model_cfg, vocab):
    text = config_text(train_cfg, model_cfg, vocab)
    atomic_write(Path(run_dir) / "config.json", lambda f: f.write(text.encode()))


def read_config(run_dir):
    """(TrainConfig, model Config, Vocabulary) stored in RUN/config.json; ConfigError naming
    the file when it is missing or not a valid run config."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: no config.json")
    try:
        stored = json.loads(path.read_text())
        train, model = dict(stored["train"]), dict(stored["model"])
        for key in _MOVED_TO_TRAIN:
            if key in model:
                value = model.pop(key)
                if train.get(key) is None:
                    train[key] = value
        model.pop("epochs", None)
        return (TrainConfig.from_dict(train), Config.from_dict(model),
                Vocabulary.from_words(stored["vocab"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError) as e:
        raise ConfigError(f"{path} is not a valid run config: {e}") from e


def run_files(run_dir):
    """The entries of RUN_FILES present in `run_dir`."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def check_new_run_dir(run_dir):
    """RunDirError unless a new run may start in `run_dir` (absent, or holding no run)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a run directory")
    found = run_files(run_dir)
    if not found:
        return
    if "config.json" in found:
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(found)}): continue it "
                          f"with --resume {run_dir}, or start a new one with another --out")
    raise RunDirError(f"{run_dir} holds files of a run without its config.json "
                      f"({', '.join(found)}): give another --out")


# Lock descriptors this process holds. A forked child (a DataLoader worker) closes its copies:
# the flock belongs to the open file, so a child outliving a killed parent would hold it.
_HELD = set()


def _close_held_in_child():
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """The exclusive lock of one process on a run directory (see the module doc)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd = None

    def acquire(self):
        """Take the lock; RunDirError if a live process holds it. Returns a message when the
        lock of a process that ended without releasing it was taken over, else None."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise fs_error(self.path, e, "create the lock file") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunDirError(f"{self.path.parent} is in use by {who} (lock {self.path}): "
                              f"wait for it to end, or give another --out") from None
        stale = _read_pid(fd)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise fs_error(self.path, e) from e
        self.fd = fd
        _HELD.add(fd)
        if stale and stale != os.getpid():
            return (f"took over the lock {self.path} of process {stale}, which ended "
                    f"without releasing it")
        return None

    def release(self):
        """Empty the lock file (a clean end) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass            # the flock still goes with the descriptor
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def _read_pid(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def claim(run_dir, new_run):
    """Make `run_dir`, take its lock and remove the temporary files of killed writes.

    new_run: refuse a directory that holds a run (checked before anything is written, and
    again under the lock, in case another process started one in between). Returns
    (RunLock, messages for the user)."""
    if new_run:
        check_new_run_dir(run_dir)
    make_dir(run_dir)
    lock = RunLock(run_dir)
    messages = [m for m in (lock.acquire(),) if m]
    try:
        if new_run:
            check_new_run_dir(run_dir)
        removed = [p for folder in WRITTEN_FOLDERS
                   for p in remove_temp_files(Path(run_dir) / folder)]
    except BaseException:
        lock.release()
        raise
    if removed:
        messages.append(f"removed {len(removed)} temporary file(s) of interrupted writes: "
                        f"{', '.join(str(p) for p in removed)}")
    return lock, messages


def resume_target(path):
    """(run directory, checkpoint or None) of a --resume value: a run directory (None: the
    run takes its newest checkpoint once it holds the lock) or one of its checkpoints
    RUN/checkpoints/step_N.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--resume {path}: not a run directory (no config.json)")
        return path, None
    if path.is_file():
        run_dir = path.parent.parent
        if checkpoint_step(path) is not None and (run_dir / "config.json").is_file():
            return run_dir, path
        hint = (f"; to continue the run in {path.parent}, give --resume {path.parent}"
                if (path.parent / "config.json").is_file() else "")
        raise ConfigError(f"--resume {path}: a file that is not a checkpoint of a run "
                          f"(RUN/checkpoints/step_N.pt){hint}")
    raise ConfigError(f"--resume {path}: no such run directory or checkpoint")

"""Helpers of the run-safety tests: tiny runs, byte snapshots of a folder, folders this process
cannot write, and the commands' one-line errors."""
import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# A tiny run that trains in seconds on one thread.
TINY = ["--preset", "tiny", "--dataset-size", "32", "--batch-size", "4", "--num-samples", "4",
        "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snapshot(folder):
    """{relative path: sha256} of every file below `folder` (the lock file included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(code, err, *parts):
    """Assert a refused command: exit code 2, stderr one line `error: ...` containing
    every string of `parts`. Returns the line."""
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, (part, err)
    return err


def call(main, argv, capsys):
    """(exit code, stderr) of main(argv) called in this process."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def run_module(module, *args, env=None, **kw):
    """python -m `module` `args` in a subprocess: CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=env or ENV, timeout=600, **kw)


def _writable(folder):
    try:
        probe = Path(folder) / ".probe"
        probe.write_text("x")
        probe.unlink()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder):
    """`folder` unwritable for this process and its children: its mode for a normal user;
    root ignores modes, so the immutable attribute (chattr +i) for root. Skips the test where
    neither works."""
    folder = Path(folder)
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        undo = [lambda: folder.chmod(mode)]
    else:
        try:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("root ignores file modes and chattr is not installed")
        if done.returncode != 0:
            pytest.skip(f"root ignores file modes and chattr +i failed: {done.stderr.strip()}")
        undo = [lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)]
    try:
        if _writable(folder):
            pytest.skip(f"could not make {folder} read-only")
        yield folder
    finally:
        for step in undo:
            step()


def tensors(obj):
    """Every tensor in a nested checkpoint structure, in a fixed order."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def assert_states_equal(a, b, keys=("generator", "ema", "discriminators", "opt_g", "opt_d",
                                    "rng")):
    """Two training checkpoints hold bitwise equal tensors under every key of `keys`."""
    for key in keys:
        flat_a, flat_b = tensors(a[key]), tensors(b[key])
        assert len(flat_a) == len(flat_b) > 0, key
        for x, y in zip(flat_a, flat_b):
            assert torch.equal(x, y), key

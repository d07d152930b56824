"""A run directory belongs to one run: refused commands change no byte, a live run holds a lock,
a SIGKILLed run resumes exactly, killed writes and repeated metrics are cleaned up, and the
file system's refusals are one line."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from run_helpers import (ENV, TINY, assert_states_equal, call, one_line_error, read_only,
                         run_module, snapshot)

from t2i_fast.errors import RunDirError
from t2i_fast.train import Run
from t2i_fast.train.__main__ import main as train_main
from t2i_fast.train.__main__ import resolve_config
from t2i_fast.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from t2i_fast.train.progress import MetricsLog
from t2i_fast.train.rundir import LOCK_NAME, RunLock, read_config

SHORT = TINY + ["--itm-steps", "1", "--steps", "2", "--ckpt-every", "2", "--log-every", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-step tiny run."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(SHORT + ["--out", str(run)]) == 0
    return run


def _refused(run):
    return [
        (SHORT + ["--out", run], ["already holds a run", f"--resume {run}", "another --out"]),
        (["--resume", run, "--preset", "small"], ["--preset small (the run's: tiny)"]),
        (["--resume", run, "--set", "r_num=2"], ["--set r_num=2 (the run's: 1)"]),
        (["--resume", run, "--set", "ema_decay=0.5"], ["--ema-decay 0.5"]),
        (["--resume", run, "--batch-size", "8"], ["--batch-size 8 (the run's: 4)"]),
        (["--resume", run, "--out", f"{run}-elsewhere"], ["--out"]),
        (["--resume", f"{run}/config.json"], [f"give --resume {run}"]),
        (["--resume", run, "--device", "tpu"], ["--device 'tpu'"]),
        (["--resume", run, "--device", "cpu", "--backend", "cuda"],
         ["backend 'cuda' cannot run on cpu"]),
        (["--resume", run, "--steps", "2.5"], ["--steps: expected an integer, got '2.5'"]),
        (SHORT + ["--out", f"{run}/config.json"], ["is a file"]),
    ]


def test_refused_commands_change_no_byte_of_the_run(finished, capsys):
    before = snapshot(finished)
    assert "config.json" in before and LOCK_NAME in before
    for argv, parts in _refused(str(finished)):
        one_line_error(*call(train_main, argv, capsys), *parts)
        assert snapshot(finished) == before, argv
    cfg, _, _ = read_config(finished)
    with pytest.raises(RunDirError, match="already holds a run"):
        Run(cfg, finished, quiet=True)                # the library refuses as the CLI does
    assert snapshot(finished) == before


def _wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (code {proc.returncode}) before {path}: "
                                 + proc.stderr.read()[-2000:])
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_is_one_message_with_the_way_to_continue(tmp_path):
    """SIGINT (Ctrl-C) mid-run: no traceback, exit 130, the message names the newest
    checkpoint and the command that continues the run; the lock is released."""
    run = tmp_path / "run"
    argv = TINY + ["--itm-steps", "2", "--steps", "400", "--ckpt-every", "2", "--log-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "t2i_fast.train", *argv, "--out", str(run)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(checkpoint_path(run, 2), proc)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    newest = max(step for step, _ in list_checkpoints(run))
    assert f"the newest checkpoint is step {newest}: continue with python -m t2i_fast.train " \
        f"--resume {run}" in out
    assert (run / LOCK_NAME).read_text() == ""


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_ends_bitwise_equal(tmp_path, capsys):
    """A real SIGKILL of `python -m t2i_fast.train` after its first checkpoint; while it is
    stopped, other commands are refused and change nothing; --resume takes the dead process's
    lock over and ends with the weights of an uninterrupted run."""
    argv = TINY + ["--itm-steps", "2", "--steps", "8", "--ckpt-every", "2", "--log-every", "1",
                   "--keep-checkpoints", "10"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "t2i_fast.train", *argv, "--out", str(killed)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(checkpoint_path(killed, 2), proc)
        os.kill(proc.pid, signal.SIGSTOP)                 # frozen mid-run, lock held
        before = snapshot(killed)
        one_line_error(*call(train_main, ["--resume", str(killed)], capsys),
                       f"in use by process {proc.pid}")
        one_line_error(*call(train_main, argv + ["--out", str(killed)], capsys),
                       "already holds a run")
        assert snapshot(killed) == before
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    done = [s for s, _ in list_checkpoints(killed)]
    assert 2 in done and 8 not in done, done              # killed mid-run
    assert (killed / LOCK_NAME).read_text().strip() == str(proc.pid)

    resumed = run_module("t2i_fast.train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the lock {killed / LOCK_NAME} of process {proc.pid}" in resumed.stdout

    straight = tmp_path / "straight"
    assert train_main(argv + ["--out", str(straight)]) == 0
    assert_states_equal(load_checkpoint(checkpoint_path(killed, 8)),
                        load_checkpoint(checkpoint_path(straight, 8)))
    gan = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
           if r["phase"] == "gan"]
    assert gan == list(range(1, 9))                       # each step logged once
    assert not [p for p in killed.rglob("*.tmp")]
    assert (killed / LOCK_NAME).read_text() == ""


@pytest.mark.slow
def test_two_trainings_into_one_out_one_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "t2i_fast.train", *SHORT, "--steps", "4", "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2).strip().splitlines()[-1]
    assert "already holds a run" in err or "in use by process" in err, err
    gan = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if r["phase"] == "gan"]
    assert gan == [1, 2, 3, 4]


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")    # left by a process that died
    lock = RunLock(tmp_path)
    message = lock.acquire()
    assert f"of process {dead.pid}, which ended without releasing it" in message
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked: their copy of the lock descriptor is closed, so the lock
    dies with the training process even while a worker lingers."""
    lock = RunLock(tmp_path)
    lock.acquire()
    child = os.fork()
    if child == 0:                                        # the child: is the descriptor gone?
        try:
            os.fstat(lock.fd)
            os._exit(1)
        except OSError:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    lock.release()
    assert os.waitstatus_to_exitcode(status) == 0


def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(finished, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    writer = ("import sys, time\nfrom t2i_fast.fileio import atomic_write\n"
              "def write(f):\n    f.write(b'x' * 4096)\n    f.flush()\n"
              "    print('writing', flush=True)\n    time.sleep(600)\n"
              "atomic_write(sys.argv[1], write)\n")
    target = checkpoint_path(run, 4)
    proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    left = [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].name.startswith(".step_0000004.pt.")
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--steps", "3"]) == 0
    assert "removed 1 temporary file(s) of interrupted writes" in capsys.readouterr().out
    assert not left[0].exists() and not target.exists()


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"phase": "encoders", "step": 1}] + [{"phase": "gan", "step": s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"phase": "gan", "st')
    MetricsLog(path).cut(2, keep_encoders=True)
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:3]
    MetricsLog(path).cut(0, keep_encoders=False)
    assert path.read_text() == ""


def test_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    one_line_error(*call(train_main, SHORT + ["--out", "/proc/t2i_fast_run"], capsys),
                   "cannot create the folder /proc/t2i_fast_run")
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        one_line_error(*call(train_main, SHORT + ["--out", str(parent / "run")], capsys),
                       f"cannot create the folder {parent / 'run'}")
    assert not (parent / "run").exists()


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_is_one_line(tmp_path):
    """Writes past RLIMIT_FSIZE fail with EFBIG as a full disk fails with ENOSPC: inside
    torch.save (the encoders) as well as in plain writes."""
    out = tmp_path / "run"
    done = run_module("t2i_fast.train", *SHORT, "--out", out, preexec_fn=_limit_file_size(16384))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    err = done.stderr.strip().splitlines()[-1]                # after the progress lines
    assert err.startswith(f"error: cannot write {out}/") and "File too large" in err
    assert not [p for p in out.rglob("*.tmp")]


def test_a_full_tmpfs_is_one_line(tmp_path):
    """The real ENOSPC on a 256 KiB tmpfs (needs a private mount namespace: root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    mount_cmd = f"mount -t tmpfs -o size=256k tmpfs {mount}"
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", mount_cmd], capture_output=True,
                               text=True)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()[:200]}")
    script = (f"{mount_cmd} && exec {sys.executable} -m t2i_fast.train {' '.join(SHORT)} "
              f"--out {mount}/run")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, env=ENV, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot write") and "No space left on device" in err
    assert f"{mount}/run/" in err


def test_runs_written_before_the_trainer_fields_moved_still_load(finished, tmp_path):
    """Older config.json files kept batch size to EMA (and an unused `epochs`) in the model
    config; reading one moves them to the training config."""
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    stored = json.loads((old / "config.json").read_text())
    for key in ("optimizer", "lr_g", "lr_d", "betas", "ema_decay", "batch_size"):
        stored["model"][key] = stored["train"].pop(key)
    stored["train"]["batch_size"] = None
    stored["model"]["epochs"] = 1
    (old / "config.json").write_text(json.dumps(stored))
    (train, model, vocab), (train0, model0, vocab0) = read_config(old), read_config(finished)
    assert (train, model, vocab.to_list()) == (train0, model0, vocab0.to_list())


def test_resume_takes_the_newest_checkpoint_once_it_holds_the_lock(tmp_path):
    """`--resume RUN` looks up the newest checkpoint under the lock: a process that ends after
    the command started may have written a newer one and pruned the one seen first."""
    run = str(tmp_path / "run")
    assert train_main(SHORT + ["--keep-checkpoints", "1", "--out", run]) == 0
    waiting = Run(*_resumed(run, 6))                 # sees step 2, then waits for the lock
    assert train_main(["--resume", run, "--steps", "4"]) == 0     # writes 4, prunes 2
    assert [step for step, _ in list_checkpoints(run)] == [4]
    waiting.train()
    assert waiting.step == 6
    steps = [r["step"] for r in map(json.loads, open(f"{run}/metrics.jsonl"))
             if r["phase"] == "gan"]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def _resumed(run, steps):
    cfg, _, checkpoint = resolve_config(["--resume", run, "--steps", str(steps)])
    return cfg, cfg.out, True, checkpoint

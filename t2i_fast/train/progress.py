"""A one-line progress display, the JSONL metrics log and its TensorBoard mirror."""
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from t2i_fast.fileio import append_line, atomic_write


def memory_mb(device):
    """Peak allocated CUDA memory on a GPU, else the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


class Progress:
    """`update(step, values)` redraws `desc step/total [bar] values it/s mem` on a terminal;
    elsewhere it prints a line every `every` steps."""

    def __init__(self, desc, total, device, start=0, every=25, stream=None, enabled=True):
        self.desc, self.total, self.device, self.every = desc, total, device, every
        self.stream = stream or sys.stderr
        self.enabled, self.tty = enabled, self.stream.isatty()
        self.t0, self.start, self.rate = time.perf_counter(), start, 0.0
        self.pinned = ""

    def pin(self, label, values):
        """Show `label` and `values` on every later line (the latest evaluation's scores)."""
        shown = " ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)
        self.pinned = f" | {label} {shown}"

    def update(self, step, values):
        elapsed = time.perf_counter() - self.t0
        self.rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        width = 20
        filled = int(width * step / max(self.total, 1))
        text = " ".join(f"{k} {v:.3f}" for k, v in values.items())
        line = (f"{self.desc} {step}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
                f"{text}{self.pinned} | {self.rate:.2f} it/s | "
                f"mem {memory_mb(self.device):.0f} MiB")
        if self.tty:
            self.stream.write("\r" + line[:240].ljust(120))
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# Records by phase: "encoders" (phase 1, its own step count), "gan" (losses per log interval)
# and "eval" (evaluate scores), the last two on the GAN step axis. Each TensorBoard run (a
# folder under RUN/tensorboard) holds one step axis.
TENSORBOARD_RUNS = {"encoders": "encoders", "gan": "gan", "eval": "gan"}


class MetricsLog:
    """Appends one JSON object per line to run_dir/metrics.jsonl; after open_tensorboard, also
    writes each record's numbers as TensorBoard scalars `phase/key` at the record's step."""

    def __init__(self, path):
        self.path = path
        self.tensorboard, self.writers, self.purge = None, {}, {}

    def write(self, record):
        append_line(self.path, json.dumps(record))
        if self.tensorboard is not None:
            self._mirror(record)

    def cut(self, step, keep_encoders):
        """Keep the lines a run resumed at GAN step `step` has already written: phase-1
        lines when `keep_encoders` (phase 1 is not run again), GAN and eval lines up to `step`.
        A line a killed process left half-written is dropped. The file is replaced atomically.
        TensorBoard events past the same point are hidden (purge_step) once written again."""
        self.purge = {"gan": step + 1, "encoders": None if keep_encoders else 1}
        if not os.path.isfile(self.path):
            return
        kept = [line for line, record in _records(self.path)
                if record.get("phase") in ("gan", "eval") and record.get("step", 0) <= step or
                record.get("phase") == "encoders" and keep_encoders]
        atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def open_tensorboard(self, folder):
        """Mirror the records to event files under `folder` from now on. Returns False, and
        writes nothing, when the tensorboard package is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return False
        self.tensorboard = (Path(folder), SummaryWriter)
        return True

    def _mirror(self, record):
        folder, summary_writer = self.tensorboard
        run = TENSORBOARD_RUNS[record["phase"]]
        if run not in self.writers:
            self.writers[run] = summary_writer(str(folder / run), purge_step=self.purge.get(run))
        writer = self.writers[run]
        for key, value in record.items():
            if key not in ("phase", "step") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                writer.add_scalar(f"{record['phase']}/{key}", value, record["step"])
        writer.flush()          # the event files keep pace with metrics.jsonl

    def close(self):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def _records(path):
    """(line, record) of each line of a metrics.jsonl; a line that a killed process left
    half-written is skipped."""
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield line.rstrip("\n") + "\n", record


def read_metrics(path):
    """The records of a metrics.jsonl (none when it does not exist yet)."""
    if not os.path.isfile(path):
        return []
    return [record for _, record in _records(path)]

"""A one-line progress display and the JSONL metrics log."""
import json
import resource
import sys
import time

import torch


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

    def update(self, step, values):
        elapsed = time.perf_counter() - self.t0
        self.rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        width = 20
        filled = int(width * step / max(self.total, 1))
        text = " ".join(f"{k} {v:.3f}" for k, v in values.items())
        line = (f"{self.desc} {step}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
                f"{text} | {self.rate:.2f} it/s | mem {memory_mb(self.device):.0f} MiB")
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class MetricsLog:
    """Appends one JSON object per line to run_dir/metrics.jsonl."""

    def __init__(self, path):
        self.path = path

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

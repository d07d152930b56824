"""Assemble the outputs of one benchmarks/gpu_check.sh run: bench.json and record.json.

    python benchmarks/record.py --out-dir OUT --bench ops.json model.json --tests tests.json \
        --steps steps.tsv [--commit SHA]

bench.json: the pytest-benchmark JSONs of the run in one file (a missing one, from a step that
failed before writing it, is left out). record.json: the GPU validation record that
benchmarks/validation.py reads once it is committed under benchmarks/results/<dir>/ (the
directory is printed): `device`, `versions`, `date`, `commit`, `tests` ({backend: {op: {passed,
failed, skipped}}}, from the tests' --validation-json, kept only when the test step ran to its
end), `timings_ms` ({op: {backend: ms}}: the fwd+bwd median of each fast backend at the op's
reference shape in float32, from the benchmarks) and `steps` (each step's exit code and
seconds). The copy of the tree on a GPU machine has no .git, so the commit comes from the
caller (--commit, or the COMMIT environment variable) and the record says where it came from.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_STEP = "tests"
# pytest's exit codes for a run that reached its end: all passed, or some failed.
PYTEST_FINISHED = (0, 1)


def merge_benchmarks(paths):
    """One pytest-benchmark document holding the benchmarks of every file of `paths` that
    exists; None when none does."""
    merged = None
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            doc = json.load(f)
        if merged is None:
            merged = doc
        else:
            merged["benchmarks"].extend(doc["benchmarks"])
    return merged


def timings(bench):
    """{op: {backend: ms}}: the CUDA-event medians of the cases bench_utils.in_record marks (each
    fast backend's fwd+bwd at the op's reference shape in float32)."""
    result = {}
    for entry in (bench or {}).get("benchmarks", []):
        info = entry["extra_info"]
        if info.get("record_timing") and "device_ms" in info:
            result.setdefault(info["op"], {})[info["provider"]] = info["device_ms"]
    return result


def read_steps(path):
    """{step: {"rc": int, "seconds": int, "note": str}} from gpu_check.sh's steps.tsv."""
    steps = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                name, rc, seconds, note = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
                steps[name] = {"rc": int(rc), "seconds": int(seconds), "note": note}
    return steps


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(*cmd):
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment():
    """The device and software of this machine, read live."""
    import torch

    sys.path.insert(0, ROOT)  # t2i_fast from this tree, installed or not
    from t2i_fast import _ext

    nvcc = _command_output("nvcc", "--version")
    driver = _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "nvcc": re.search(r"release [^\n]*", nvcc).group(0) if nvcc else None,
        "driver": driver.splitlines()[0] if driver else None,
    }
    env = {"versions": versions, "extension": _ext.build_info()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0),
                   device_capability=f"{props.major}.{props.minor}",
                   device_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["device"] = "none (no CUDA device visible)"
    return env


def build_record(env, tests, bench, steps, commit, commit_source, date):
    """The record.json content; `tests` is the --validation-json content or None."""
    test_step = steps.get(TESTS_STEP, {})
    finished = tests is not None and test_step.get("rc") in PYTEST_FINISHED
    record = dict(env, date=date, commit=commit, commit_source=commit_source,
                  tests=tests if finished else {}, timings_ms=timings(bench), steps=steps)
    if tests is not None and not finished:
        # Counts of a run cut short validate nothing: kept for reading, not for the auto order.
        record["tests_incomplete"] = tests
    return record


def results_dir(record):
    """benchmarks/results/<date>-<device>, e.g. 2026-11-29-h200."""
    device = re.sub(r"^nvidia ", "", record["device"].lower())
    return f"benchmarks/results/{record['date']}-{re.sub(r'[^a-z0-9]+', '-', device).strip('-')}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="where bench.json and record.json go")
    parser.add_argument("--bench", nargs="*", default=[], help="pytest-benchmark JSON files")
    parser.add_argument("--tests", help="the tests' --validation-json output")
    parser.add_argument("--steps", default="", help="gpu_check.sh's steps.tsv")
    parser.add_argument("--commit", default=os.environ.get("COMMIT", ""),
                        help="the git commit of the tree (default: $COMMIT)")
    args = parser.parse_args(argv)
    bench = merge_benchmarks(args.bench)
    if bench is not None:
        with open(os.path.join(args.out_dir, "bench.json"), "w") as f:
            json.dump(bench, f, indent=1)
    tests = None
    if args.tests and os.path.exists(args.tests):
        with open(args.tests) as f:
            tests = json.load(f)
    commit, source = (args.commit, "given by the caller (--commit or $COMMIT)") if args.commit \
        else ("unknown", "not given: pass COMMIT=$(git rev-parse HEAD) to gpu_check.sh")
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    record = build_record(environment(), tests, bench, read_steps(args.steps), commit, source,
                          date)
    with open(os.path.join(args.out_dir, "record.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"record: {len(record['tests'])} backends with GPU test counts, timings for "
          f"{len(record['timings_ms'])} ops; " + (
              f"commit it as {results_dir(record)}/record.json" if "device_capability" in record
              else "no CUDA device: not a GPU record, nothing to commit"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

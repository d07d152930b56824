"""Derive t2i_fast/validation.json (the auto order for CUDA tensors) from the GPU records.

    python benchmarks/validation.py            # rewrite t2i_fast/validation.json
    python benchmarks/validation.py --check    # exit 1 if the committed file is out of date

The rule (t2i_fast/backends.py reads its result): `auto` chooses a fast backend for an op on
CUDA tensors only when a committed record shows that backend's GPU tests of that op passed:
in the newest record that ran them, at least one passed and none failed. Records are the
`record.json` files that benchmarks/gpu_check.sh writes under benchmarks/results/<dir>/; each
has `device`, `versions`, `date`, `commit`, `tests` ({backend: {op: {passed, failed,
skipped}}}) and `timings_ms` ({op: {backend: median fwd+bwd ms at the op's benchmark shape}}).
Among the validated backends of an op, the one faster in the newest record that timed them
all leads; without timings they keep the table's order. The reference always comes last.

DEVELOPMENT holds validations that predate the records, with where they are written down.
"""
import argparse
import json
import sys
from pathlib import Path

from t2i_fast import backends

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET = ROOT / "t2i_fast" / "validation.json"
OPS = tuple(backends.KERNELS)
# the fast GPU backends of the table, in table order
FAST = tuple(name for name, record in backends.TABLE.items()
             if "cuda" in record.dtypes and record.kernel is not None)

DEVELOPMENT = {
    "triton": {op: {"passed": True,
                    "source": "full-size GPU tests passed on an H100 80GB HBM3 (torch "
                              "2.11.0+cu130, triton 3.6.0) in the development runs of "
                              "2026-11-22; benchmarks/NOTES.md"}
               for op in OPS},
}


def load_records(results=RESULTS):
    """Every record.json under `results`, oldest first (by date, then directory name)."""
    records = []
    for path in sorted(results.glob("*/record.json")):
        record = json.loads(path.read_text())
        for key in ("device", "versions", "date", "commit", "tests"):
            if key not in record:
                raise ValueError(f"{path}: a GPU record needs {key!r}")
        record["path"] = str(path.relative_to(ROOT))
        records.append(record)
    return sorted(records, key=lambda r: (r["date"], r["path"]))


def derive(records):
    """The content of t2i_fast/validation.json for these records."""
    evidence = {b: {} for b in FAST}
    for backend, ops in DEVELOPMENT.items():
        evidence[backend].update(ops)
    for record in records:  # oldest first: a newer record overrides an older verdict
        for backend in FAST:
            for op, counts in record["tests"].get(backend, {}).items():
                if counts.get("passed", 0) + counts.get("failed", 0) == 0:
                    continue
                evidence[backend][op] = {
                    "passed": counts.get("failed", 0) == 0,
                    "source": f"GPU tests on {record['device']}, {record['date']}, commit "
                              f"{record['commit']}: {counts.get('passed', 0)} passed, "
                              f"{counts.get('failed', 0)} failed; {record['path']}"}
    order = {}
    for op in OPS:
        valid = [b for b in FAST if evidence[b].get(op, {}).get("passed")]
        order[op] = _by_speed(op, valid, records)
    return {
        "about": "Backends that `auto` may choose for CUDA tensors, per op, fastest first; the "
                 "reference follows them. Written by `python benchmarks/validation.py` from the "
                 "GPU records under benchmarks/results/; do not edit by hand.",
        "auto_order_cuda": order,
        "evidence": {b: ops for b, ops in evidence.items() if ops},
    }


def _by_speed(op, valid, records):
    for record in reversed(records):
        times = record.get("timings_ms", {}).get(op, {})
        if valid and all(isinstance(times.get(b), (int, float)) for b in valid):
            return sorted(valid, key=lambda b: times[b])
    return valid


def render(content):
    return json.dumps(content, indent=2, sort_keys=True) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when t2i_fast/validation.json is out of date")
    args = parser.parse_args(argv)
    text = render(derive(load_records()))
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python benchmarks/validation.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render the benchmarks' pytest-benchmark JSON as markdown tables, one per op.

python benchmarks/report.py bench.json [--floors floors.json] [--out report.md]
Each row is one provider at one shape, dtype and mode. `ms` is the CUDA-event median on a GPU,
else the host median (bench_utils.measure). `x eager`, `x compile` and `x <alternative>` are that
provider's time over this row's (above 1: this row is faster). GFLOP/s and GB/s come from the
work formulas of each benchmark; `% copy` is GB/s over the measured device copy bandwidth
(floors.py). `peak MiB`: GPU memory above the inputs; `saved MiB`: bytes saved for backward
(fwd+bwd rows).
"""
import argparse
import json
from collections import defaultdict

MODE_ORDER = {"fwd": 0, "bwd": 1, "fwdbwd": 2}
MODEL_FIGURES = ("provider", "max_word_iterations", "saved_bytes_ratio",
                 "eager_bytes_per_iteration", "lean_fused_bytes_per_iteration", "device_ms",
                 "peak_extra_mib", "saved_for_backward_bytes")


def op_rows(bench):
    """(extra_info, ms) of the op benchmarks (those that name an op)."""
    for entry in bench["benchmarks"]:
        info = entry["extra_info"]
        if "op" in info:
            yield info, info.get("time_ms") or entry["stats"]["median"] * 1e3


def model_lines(bench):
    """One line per benchmark without an op (the model benchmarks): its key figures."""
    lines = []
    for entry in bench["benchmarks"]:
        info = entry["extra_info"]
        if "op" in info:
            continue
        figures = {k: info[k] for k in MODEL_FIGURES if k in info}
        figures.setdefault("median_ms", round(entry["stats"]["median"] * 1e3, 3))
        lines.append(f"- `{entry['name']}`: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return lines


def _number(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def _significant(value):
    return "" if value is None else f"{value:.3g}"


def _ratio(base, ms):
    return f"{base / ms:.2f}" if base and ms else ""


def op_table(op, entries, copy):
    """The markdown table of one op: entries are (extra_info, ms)."""
    alternatives = sorted({info["provider"] for info, _ in entries
                           if info.get("role") == "alternative"})
    header = ["shape", "dtype", "mode", "provider", "ms", "x eager", "x compile"] + \
        [f"x {name}" for name in alternatives] + \
        ["GFLOP/s", "GB/s", "% copy", "peak MiB", "saved MiB"]
    lines = [f"### {op}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = defaultdict(list)
    for info, ms in entries:
        groups[("x".join(map(str, info["shape"])), info["dtype"], info["mode"])].append((info, ms))
    for key in sorted(groups, key=lambda k: (k[0], k[1], MODE_ORDER.get(k[2], 3))):
        times = {info["provider"]: ms for info, ms in groups[key]}
        for info, ms in sorted(groups[key], key=lambda e: e[1]):
            gbs = info.get("gbytes_per_s")
            saved = info.get("saved_for_backward_bytes")
            cells = [*key, info["provider"], f"{ms:.3f}", _ratio(times.get("reference"), ms),
                     _ratio(times.get("compile"), ms)]
            cells += [_ratio(times.get(name), ms) for name in alternatives]
            cells += [_significant(info.get("gflops_per_s")), _significant(gbs),
                      f"{100 * gbs / copy:.0f}" if gbs and copy else "",
                      _number(info.get("peak_extra_mib"), 1),
                      _number(None if saved is None else saved / 2**20, 2)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render(bench, floors=None):
    by_op = defaultdict(list)
    for info, ms in op_rows(bench):
        by_op[info["op"]].append((info, ms))
    copy = (floors or {}).get("copy_gbytes_per_s")
    lines = []
    if floors:
        lines.append(f"Device: {floors['gpu']}; copy {copy:.0f} GB/s; matmul bf16 "
                     f"{floors['matmul_bf16_tflops']:.0f}, fp32 "
                     f"{floors['matmul_fp32_tflops']:.1f}, tf32 "
                     f"{floors['matmul_tf32_tflops']:.0f} TFLOP/s (benchmarks/floors.py)\n")
    devices = sorted({info.get("device", "?") for rows in by_op.values() for info, _ in rows})
    if devices:
        lines.append(f"Op benchmarks on {', '.join(devices)}.\n")
    for op in sorted(by_op):
        lines += op_table(op, by_op[op], copy)
    models = model_lines(bench)
    if models:
        lines += ["Model benchmarks:", ""] + models
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench")
    parser.add_argument("--floors")
    parser.add_argument("--out")
    args = parser.parse_args()
    with open(args.bench) as f:
        bench = json.load(f)
    floors = None
    if args.floors:
        with open(args.floors) as f:
            floors = json.load(f)
    text = render(bench, floors)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()

"""Render a pytest-benchmark JSON (from the op benchmarks) as a markdown table.

python benchmarks/report.py bench.json [--floors floors.json] [--out report.md]
Time is the device median (CUDA events) on a GPU, else pytest-benchmark's median; `x ref` is
the eager reference's time over this row's; `% copy` is achieved GB/s over the measured
device copy bandwidth.
"""
import argparse
import json
from collections import defaultdict


def rows(bench):
    """(extra_info, ms) of the op benchmarks (those that name an op)."""
    for b in bench["benchmarks"]:
        info = b["extra_info"]
        if "op" in info:
            yield info, info.get("device_ms", b["stats"]["median"] * 1e3)


MODEL_FIGURES = ("provider", "max_word_iterations", "saved_bytes_ratio",
                 "eager_bytes_per_iteration", "lean_fused_bytes_per_iteration", "device_ms",
                 "peak_extra_mib", "saved_for_backward_bytes")


def model_lines(bench):
    """One line per benchmark without an op (the model benchmarks): its key figures."""
    lines = []
    for b in bench["benchmarks"]:
        info = b["extra_info"]
        if "op" in info:
            continue
        figures = {k: info[k] for k in MODEL_FIGURES if k in info}
        figures.setdefault("median_ms", round(b["stats"]["median"] * 1e3, 3))
        lines.append(f"- `{b['name']}`: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return lines


def render(bench, floors=None):
    groups = defaultdict(list)
    for info, ms in rows(bench):
        key = (info["op"], "x".join(map(str, info["shape"])), info["dtype"][6:], info["mode"])
        groups[key].append((info, ms))
    copy = (floors or {}).get("copy_gbytes_per_s")
    lines = []
    if floors:
        lines.append(f"Device: {floors['gpu']}; copy {copy:.0f} GB/s; bf16 matmul "
                     f"{floors['matmul_bf16_tflops']:.0f} TFLOP/s; fp32 "
                     f"{floors['matmul_fp32_tflops']:.1f} TFLOP/s\n")
    lines += ["| op | shape | dtype | mode | provider | ms | x ref | GB/s | % copy | peak MiB "
              "| saved MiB |", "|" + "---|" * 11]
    for key in sorted(groups):
        entries = sorted(groups[key], key=lambda e: e[1])
        ref = next((ms for info, ms in entries if info["provider"] == "reference"), None)
        for info, ms in entries:
            gbs = info.get("gbytes_per_s")
            saved = info.get("saved_for_backward_bytes")
            cells = [*key, info["provider"], f"{ms:.3f}", f"{ref / ms:.1f}" if ref else "",
                     f"{gbs:.0f}" if gbs else "", f"{100 * gbs / copy:.0f}" if gbs and copy else "",
                     f"{info['peak_extra_mib']:.1f}" if "peak_extra_mib" in info else "",
                     f"{saved / 2**20:.1f}" if saved is not None else ""]
            lines.append("| " + " | ".join(cells) + " |")
    models = model_lines(bench)
    if models:
        lines += ["", "Model benchmarks:", ""] + models
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
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

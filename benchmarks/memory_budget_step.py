"""The GAN step under each memory policy and under memory_budget = a fraction of eager's bytes.

    OMP_NUM_THREADS=1 python benchmarks/memory_budget_step.py [--preset small] [--batch 4]
                                                              [--fractions 0.25] [--rounds 15]

One process, the configurations interleaved round by round (the step of
benchmarks/test_bench_model.py: every D, then G): the bytes G's forward keeps for backward
(parameters left out) and the median CPU and host-clock time of a step, each x eager.
"""
import argparse
import statistics
import time

import torch

from test_bench_model import GanStep
from t2i_fast.models import get_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--fractions", default="0.25", help="comma-separated fractions of eager")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    eager = GanStep(get_config(args.preset, memory="eager"), args.batch, "cpu")
    eager_bytes = eager.saved()[0]
    steps = {"eager": eager}
    for memory in ("lean", "max"):
        steps[memory] = GanStep(get_config(args.preset, memory=memory), args.batch, "cpu")
    for fraction in map(float, args.fractions.split(",")):
        cfg = get_config(args.preset, memory="lean", memory_budget=int(fraction * eager_bytes))
        steps[f"memory_budget = {fraction} x eager"] = GanStep(cfg, args.batch, "cpu")
    saved = {name: step.saved()[0] for name, step in steps.items()}
    times = {name: [] for name in steps}
    for step in steps.values():            # warm-up
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            cpu, wall = time.process_time(), time.perf_counter()
            step()
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    median = {name: [statistics.median(t[i] for t in ts) * 1e3 for i in (0, 1)]
              for name, ts in times.items()}
    print(f"| GAN step, {args.preset} batch {args.batch}, {torch.get_num_threads()} thread(s) | "
          f"G saved bytes (x eager) | CPU ms (x eager) | host ms (x eager) |\n|---|---|---|---|")
    for name in steps:
        (cpu, wall), (cpu0, wall0) = median[name], median["eager"]
        print(f"| {name} | {saved[name]:,} ({saved[name] / eager_bytes:.3f}) | "
              f"{cpu:.1f} ({cpu / cpu0:.2f}) | {wall:.1f} ({wall / wall0:.2f}) |")


if __name__ == "__main__":
    main()

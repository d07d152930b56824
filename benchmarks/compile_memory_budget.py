"""The memory policies against torch.compile's activation memory budget, on G's step.

    python benchmarks/compile_memory_budget.py [--preset small] [--batch 4] [--rounds 25]
                                               [--only eager,lean,max,budget,compile]

Each configuration runs in its own process (torch.compile reads
`torch._functorch.config.activation_memory_budget` when it compiles): the uncompiled generator
under memory='eager', 'lean' and 'max', under memory_budget = 1/4 of the bytes eager keeps
(the per-block plan of t2i_fast.models.memory), and the compiled eager generator (min-cut
recomputation) at budgets 1.0, 0.5, 0.2 and 0.05. Per configuration: the bytes G's forward
saves for backward without the parameters (saved_tensors_hooks see AOTAutograd's saved
tensors too), the median CPU time of the process for a forward + backward (robust where other
jobs share the cores; run with OMP_NUM_THREADS=1 to compare single-thread work) and the first
call's wall time (compilation). One table on stdout, one JSON line per configuration on
stderr.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

# (memory, budget): a policy alone (budget None), memory_budget = budget x eager's saved bytes
# ("budget"), or torch.compile of the eager generator at that activation_memory_budget.
CONFIGS = [("eager", None), ("lean", None), ("max", None), ("budget", 0.25), ("eager", 1.0),
           ("eager", 0.5), ("eager", 0.2), ("eager", 0.05)]


def kind(memory, budget):
    return memory if budget is None or memory == "budget" else "compile"


def measure(preset, batch, memory, budget, rounds):
    import torch
    import torch._functorch.config as functorch_config

    from t2i_fast.models import G_NET, get_config
    from t2i_fast.profiling import saved_bytes

    def inputs():
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(batch, cfg.z_dim, generator=gen)
        sent = torch.randn(batch, cfg.text_dim, generator=gen)
        words = torch.randn(batch, cfg.text_dim, cfg.words_num, generator=gen)
        lens = torch.randint(1, cfg.words_num + 1, (batch,), generator=gen)
        mask = torch.arange(cfg.words_num)[None] >= lens[:, None]
        return z, sent, words, mask, torch.randn(batch, cfg.condition_dim, generator=gen)

    def generator(cfg):
        torch.manual_seed(0)
        return G_NET.from_config(cfg)

    cfg = get_config(preset, memory="eager" if memory == "budget" else memory)
    z, sent, words, mask, noise = inputs()
    G = generator(cfg)
    if memory == "budget":
        eager = saved_bytes(lambda: G(z, sent, words, mask, ca_noise=noise)[0],
                            exclude=G.parameters())
        cfg = get_config(preset, memory="lean", memory_budget=int(budget * eager))
        G = generator(cfg)

    def forward(z, sent, words, mask, noise):
        return G(z, sent, words, mask, ca_noise=noise)[0]

    if kind(memory, budget) == "compile":
        functorch_config.activation_memory_budget = budget
        forward = torch.compile(forward, dynamic=False)

    def step():
        sum(image.sum() for image in forward(z, sent, words, mask, noise)).backward()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    saved = saved_bytes(lambda: forward(z, sent, words, mask, noise), exclude=G.parameters())
    times = []
    for _ in range(rounds):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return dict(memory=memory, compile_budget=budget, saved_bytes=saved,
                cpu_ms=statistics.median(times) * 1e3, first_call_s=first,
                threads=torch.get_num_threads(), torch=torch.__version__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--only", default="eager,lean,max,budget,compile",
                        help="the kinds of configuration to run (comma-separated)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        memory, budget = json.loads(args.one)
        print(json.dumps(measure(args.preset, args.batch, memory, budget, args.rounds)))
        return
    print(f"| G forward + backward, {args.preset} batch {args.batch} | saved bytes | CPU ms | "
          f"first call s |\n|---|---|---|---|")
    for memory, budget in CONFIGS:
        if kind(memory, budget) not in args.only.split(","):
            continue
        done = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--batch",
                               str(args.batch), "--rounds", str(args.rounds), "--one",
                               json.dumps([memory, budget])], capture_output=True, text=True,
                              check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), file=sys.stderr)
        name = {"compile": f"torch.compile, activation_memory_budget={budget}",
                "budget": f"memory_budget = {budget} x eager's bytes"}.get(
                    kind(memory, budget), memory)
        print(f"| {name} | {row['saved_bytes']:,} | {row['cpu_ms']:.1f} | "
              f"{row['first_call_s']:.1f} |")


if __name__ == "__main__":
    main()

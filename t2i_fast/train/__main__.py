"""python -m t2i_fast.train [--preset small] [--steps N] [--set key=value ...] [--resume RUN]

With no arguments: the 'small' preset on the built-in shapes dataset, into runs/small-<time>.
Under torchrun (--nproc_per_node=N) every process trains on its share of each batch order,
with DistributedDataParallel; rank 0 logs, samples and checkpoints.
"""
import json
import sys
import time
from pathlib import Path

from t2i_fast.train import distributed
from t2i_fast.train.checkpoint import CheckpointError
from t2i_fast.train.config import TrainConfig, parse_args
from t2i_fast.train.loop import Run, find_resume

# Flags that may change when resuming; everything else comes from the run's config.json.
RESUMABLE = {"steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "device",
             "num_workers", "threads", "backend"}


def resolve(argv):
    cfg, args, given = parse_args(argv)
    resume = None
    if args.resume:
        run_dir, resume = find_resume(args.resume)
        stored = json.loads((run_dir / "config.json").read_text())["train"]
        changed = sorted(set(given) - RESUMABLE)
        if changed:
            raise SystemExit(f"error: --resume keeps the run's config; these flags cannot "
                             f"change: {changed} (allowed: {sorted(RESUMABLE)})")
        cfg = TrainConfig.from_dict({**stored, **given, "out": str(run_dir)})
    elif cfg.out is None:
        cfg.out = str(Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg, args, resume


def main(argv=None):
    cfg, args, resume = resolve(sys.argv[1:] if argv is None else argv)
    if args.dry_run:
        out = {"train": cfg.to_dict(), "model": cfg.model_config().to_dict()}
        print(json.dumps(out, indent=2))
        return 0
    run = Run(cfg, cfg.out, resume=resume)
    try:
        run.say(f"run directory: {run.dir}")
        run.train()
        run.say(f"done: {run.step} steps; samples in {run.dir / 'samples'}")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}; an older checkpoint of the run can be given to "
                         f"--resume directly")
    finally:
        distributed.teardown(run.d)
    return 0


if __name__ == "__main__":
    sys.exit(main())

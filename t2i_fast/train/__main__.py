"""python -m t2i_fast.train [--preset small] [--steps N] [--set key=value ...] [--resume RUN]

With no arguments: the 'small' preset on the built-in shapes dataset, into runs/small-<time>.
Under torchrun (--nproc_per_node=N) every process trains on its share of each batch order,
with DistributedDataParallel; rank 0 logs, samples and checkpoints.
"""
import sys
import time
from pathlib import Path

from t2i_fast.errors import ConfigError, cli_main
from t2i_fast.train import distributed
from t2i_fast.train.checkpoint import checkpoint_step, latest_checkpoint
from t2i_fast.train.config import TrainConfig, flag, parse_args, train_config
from t2i_fast.train.loop import Run, check_execution, resolve
from t2i_fast.train.rundir import config_text, read_config, resume_target

# Flags that may change when resuming; everything else comes from the run's config.json.
RESUMABLE = ("steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "device",
             "num_workers", "threads", "backend", "eval_every")


def _conflicts(preset, given, stored_train, stored_model, run_dir):
    """The flags of a --resume command line that would change the stored config."""
    out = []
    if preset is not None and preset != stored_train.preset:
        out.append(f"--preset {preset} (the run's: {stored_train.preset})")
    for name, value in given.items():
        if name == "model":
            out += [f"--set {k}={v} (the run's: {getattr(stored_model, k)})"
                    for k, v in value.items() if getattr(stored_model, k) != v]
        elif name == "out":
            if Path(value).resolve() != Path(run_dir).resolve():
                out.append(f"--out {value} (the run's directory: {run_dir})")
        elif name not in RESUMABLE and getattr(stored_train, name) != value:
            out.append(f"{flag(name)} {value} (the run's: {getattr(stored_train, name)})")
    return out


def resolve_config(argv):
    """(TrainConfig, namespace, checkpoint or None) of a command line."""
    preset, given, args = parse_args(argv)
    if not args.resume:
        cfg = train_config(preset or "small", **given)
        if cfg.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg.out = str(Path("runs") / f"{cfg.preset}-{stamp}")
        return cfg, args, None
    run_dir, checkpoint = resume_target(args.resume)
    stored_train, stored_model, _ = read_config(run_dir)
    conflicts = _conflicts(preset, given, stored_train, stored_model, run_dir)
    if conflicts:
        raise ConfigError(f"--resume {args.resume} keeps the run's config; these flags would "
                          f"change it: {'; '.join(conflicts)} (flags that may change: "
                          f"{', '.join(flag(n) for n in RESUMABLE)})")
    changed = {k: v for k, v in given.items() if k in RESUMABLE}
    cfg = TrainConfig.from_dict({**stored_train.to_dict(), **changed, "out": str(run_dir)})
    return cfg, args, checkpoint


def train(argv):
    cfg, args, checkpoint = resolve_config(argv)
    resume = bool(args.resume)
    if args.dry_run:
        model_cfg, vocab, _, _ = resolve(cfg, cfg.out, resume, write_caches=False)
        check_execution(cfg, model_cfg, distributed.resolve_device(cfg.device))
        sys.stdout.write(config_text(cfg, model_cfg, vocab))
        return 0
    run = Run(cfg, cfg.out, resume=resume, checkpoint=checkpoint)
    try:
        run.say(f"run directory: {run.dir}")
        run.train()
        run.say(f"done: {run.step} steps; samples in {run.dir / 'samples'}")
    except KeyboardInterrupt:
        newest = latest_checkpoint(run.dir)
        where = (f"the newest checkpoint is step {checkpoint_step(newest)}" if newest else
                 "no checkpoint was written yet")
        run.say(f"interrupted at step {run.step}; {where}: continue with "
                f"python -m t2i_fast.train --resume {run.dir}")
        return 130
    finally:
        distributed.teardown(run.d)
    return 0


def main(argv=None):
    return cli_main(train, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

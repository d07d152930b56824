"""Evaluation during training: every `eval_every` GAN steps, and at the last step, the EMA
generator is scored on held-out (test split) captions by the evaluate package's own metrics.

    evaluation = Evaluation(train_cfg, model_cfg, vocab, run_dir, device, len(test_set))
    record = evaluation(models, step)     # models: the run's, with the EMA generator
    record  # {"phase": "eval", "step": 600, "r_precision": 0.41, "attributes": 0.78, ...}

What is scored is what `python -m t2i_fast.evaluate --run RUN --checkpoint
RUN/checkpoints/step_N.pt --num-images EVAL_IMAGES EVAL_FLAGS` reports for that step: the same
captions, noise, mismatched captions and folds, through the same code (evaluate.cli.score).
`--eval-flags` takes that command's scoring options (SCORING_OPTIONS: --metrics,
--inception-weights, --clip-weights, --clip-bpe, --embedder, --matcher, --cache, --seed, ...);
the run decides the others itself.

Cost: the metrics load their weight files once per process, the caption pool's sentence
embeddings are computed once (the encoders are frozen in phase 2), and the attribute classifier
is trained once and cached in the evaluate cache folder (RUN/eval_cache unless --cache), where
the evaluate command finds it again. Each evaluation then generates and scores EVAL_IMAGES
images; its seconds are in the record (`eval_s`, and `timings_s` per part).
"""
import shlex
import time
from pathlib import Path

import torch

from t2i_fast.errors import ConfigError
from t2i_fast.evaluate.captions import select_captions
from t2i_fast.evaluate.cli import (CACHED, Timer, build_metrics, build_parser, check_args,
                                   check_sizes, load_metrics, resolve_metrics, score)
from t2i_fast.evaluate.common import EvalError
from t2i_fast.evaluate.scores import Context
from t2i_fast.evaluate.sources import load_matcher
from t2i_fast.fileio import check_writable
from t2i_fast.runs import LoadedRun

# The evaluate command's options about how to score. Its other flags say what is scored, on
# which device, threads and backend, and where the report goes: the run decides those itself
# (its own EMA generator; the image count is --eval-images).
SCORING_OPTIONS = ("metrics", "num_real", "batch_size", "seed", "matcher", "clip_weights",
                   "clip_bpe", "embedder", "inception_weights", "fid_resize", "cache")
_UNSET = object()


def eval_args(train_cfg, run_dir="RUN"):
    """The evaluate command's parsed arguments for the evaluations of a run: its eval_flags
    with --run run_dir and --num-images eval_images. ConfigError naming the flag when they do
    not parse or are not scoring options."""
    text = train_cfg.eval_flags
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"eval_flags {text!r}: {e}") from None
    if any(t == "-h" or (len(t) > 2 and "--help".startswith(t)) for t in tokens):
        raise ConfigError(f"eval_flags {text!r}: see python -m t2i_fast.evaluate --help for "
                          f"the options")
    args = build_parser().parse_args(["--run", str(run_dir)])
    parser = build_parser()         # with defaults that tell which other flags were given
    decided = [dest for dest in vars(args) if dest not in SCORING_OPTIONS]
    parser.set_defaults(**{dest: _UNSET for dest in decided})
    try:
        given = parser.parse_args(tokens)
    except ConfigError as e:
        raise ConfigError(f"eval_flags {text!r}: {e}") from None
    refused = ["--" + dest.replace("_", "-") for dest in decided
               if getattr(given, dest) is not _UNSET]
    if refused:
        raise ConfigError(f"eval_flags {text!r}: {', '.join(refused)} cannot be given there: "
                          f"the run scores its own EMA generator with its own device, threads "
                          f"and backend, on --eval-images images; the options are "
                          f"{', '.join('--' + d.replace('_', '-') for d in SCORING_OPTIONS)}")
    for dest in SCORING_OPTIONS:
        setattr(args, dest, getattr(given, dest))
    args.num_images = train_cfg.eval_images
    return args


def eval_metrics(train_cfg, args=None):
    """The metric names a run's evaluations compute (the evaluate command's rule for its
    flags and dataset); ConfigError for impossible requests."""
    args = args or eval_args(train_cfg)
    try:
        return resolve_metrics(args, train_cfg.dataset)
    except EvalError as e:
        raise ConfigError(f"eval_flags {train_cfg.eval_flags!r}: {e}") from None


def summary(results):
    """The evaluate results of one evaluation as flat numbers (metrics.jsonl, the progress
    line, curves.png, TensorBoard): each metric's headline under its own name."""
    out = {}
    if "r_precision" in results:
        r = results["r_precision"]
        out.update(r_precision=r["mean"], r_precision_std=r["std"])
    if "attributes" in results:
        r = results["attributes"]
        out["attributes"] = r["generated"]["mean"]
        out.update({f"attributes_{k}": v for k, v in r["generated"]["accuracy"].items()})
        out["attributes_real"] = r["real"]["mean"]
    if "cmd" in results:
        out.update(cmd=results["cmd"]["cmd"], itdis=results["cmd"]["itdis"])
    if "fid" in results:
        out["fid"] = results["fid"]["value"]
    if "is" in results:
        out.update({"is": results["is"]["mean"], "is_std": results["is"]["std"]})
    return {k: None if v is None else float(v) for k, v in out.items()}


class Evaluation:
    """The evaluations of one run. Construction checks everything that can be checked before
    the run writes anything (flags, files, sizes, the cache folder); the first call loads the
    metrics' weights, later calls reuse them."""

    def __init__(self, train_cfg, model_cfg, vocab, run_dir, device, test_size):
        self.every, run_dir = train_cfg.eval_every, Path(run_dir)
        self.run_info = (run_dir, train_cfg, model_cfg, vocab)
        self.device = device
        self.args = args = eval_args(train_cfg, run_dir)
        self.names = eval_metrics(train_cfg, args)
        self.cache = Path(args.cache) if args.cache else run_dir / "eval_cache"
        try:
            check_args(args)
            if args.num_real is not None and args.num_real > test_size:
                raise EvalError(f"--num-real {args.num_real} exceeds the {test_size} test "
                                f"images")
        except EvalError as e:
            raise ConfigError(f"eval_flags {train_cfg.eval_flags!r}: {e}") from None
        try:
            check_sizes(self.names, args.num_images, args.num_real or test_size,
                        images_flag="--eval-images")
        except EvalError as e:
            raise ConfigError(str(e)) from None
        if args.cache and set(self.names) & set(CACHED):
            check_writable(self.cache)      # RUN/eval_cache is made with the run directory
        self.ctx = self.metrics = None

    def due(self, step, last_step):
        return step % self.every == 0 or step == last_step

    @staticmethod
    def headlines(record):
        """What the progress line shows of a record: each metric's headline number."""
        return {k: record[k] for k in ("r_precision", "attributes", "cmd", "fid", "is")
                if k in record}

    def __call__(self, models, step):
        """Score `models` (the run's, with the EMA generator in eval mode) at GAN step `step`:
        the record for metrics.jsonl. The training's random streams are left as they were
        (building a metric's network draws its initial weights from them), so a run trains
        the same with evaluations or without."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._evaluate(models, step)

    def _evaluate(self, models, step):
        t0 = time.perf_counter()
        run = LoadedRun(*self.run_info, models, step, self.device)
        timer = Timer(run.device)
        if self.ctx is None:
            ds = run.dataset("test")
            captions = select_captions(ds, self.args.num_images)
            self.ctx = Context(run, ds, captions, load_matcher(run, self.args.matcher),
                               self.args, self.cache)
            self.metrics = build_metrics(self.names)
            load_metrics(self.metrics, self.ctx, timer)
        self.ctx.run = run
        results = score(self.metrics, self.ctx, timer, show_progress=False)
        return {"phase": "eval", "step": run.step, "images": len(self.ctx.captions),
                **summary(results), "eval_s": round(time.perf_counter() - t0, 3),
                "timings_s": {k: round(v, 3) for k, v in timer.seconds.items()}}

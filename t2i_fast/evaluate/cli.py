"""python -m t2i_fast.evaluate --run RUN_DIR [--metrics r_precision,cmd,fid,is,attributes]

    python -m t2i_fast.evaluate --run runs/small-x                    # r_precision, attributes
    python -m t2i_fast.evaluate --run runs/small-x --metrics cmd --embedder run
    python -m t2i_fast.evaluate --run runs/coco --clip-weights ViT-B-32.pt \\
        --clip-bpe bpe_simple_vocab_16e6.txt.gz --inception-weights pt_inception-2015-12-05.pth

Generates one image per evaluated caption with the run's EMA generator and scores them; writes
a JSON report (default RUN_DIR/eval/report_<step>.json, atomically) and prints a table.
Without --metrics, every metric the given files allow: r_precision; cmd with --clip-weights
(or --embedder run); fid and is with --inception-weights; attributes on the shapes dataset.

Captions. Image i of the evaluation is test image i % T (T = test split size) with the
caption the dataset draws for it at epoch i // T, so N > T loops the split with fresh captions,
as DM-GAN's sampling does. Noise is drawn as LoadedRun.generate draws it (all z, then all CA
noise, from a generator seeded with --seed): the images equal
run.generate(caption ids, lengths, seed). Real-side statistics (CMD, FID) use the first
--num-real test images (default all) and all their captions; they are cached as .npz under
--cache, named by dataset, split, image size and embedder, with a hash of everything they
depend on (the embedder's weights included).

How each metric relates to the published protocol:
  * R-precision is DM-GAN's procedure (reference §1.11): each generated image's global code
    against its own caption and 99 captions of test images of other classes, cosine, R = 1,
    hits shuffled into 10 folds with DM-GAN's slice (last hit of each fold dropped), mean and
    std over folds. The encoders are the run's matching encoders (ITM or DAMSM) or --matcher.
    The mismatched captions, then the fold shuffle, come from np.random.default_rng(--seed).
    Numbers match the published ones only with the published DAMSM / ITM, 30,000 images and
    the published image size; otherwise they compare runs with each other.
  * CMD is GR-GAN's eval/CMD (reference §3.6): CLIP ViT-B/32 embeddings (images resized to
    224 in [0, 1] without CLIP's normalisation), L2-normalised, images x10, sentences x1,
    CMD = FD(real img, fake img) + FD(fake img, real sent) - FD(real img, real sent), with
    ITDis = FD(fake img, real sent) reported too. Differences: real statistics come from the
    evaluated dataset's test split (GR-GAN ships COCO's), images are not rounded through PNG,
    and the last partial batch of 64 is not dropped. `--embedder run` uses the run's matching
    encoders instead: useful to compare runs, not comparable with published numbers.
  * FID is pytorch-fid's (InceptionV3 pool3, bilinear resize of the tensor to 299, float64
    Fréchet distance) against the test split's real images at the model's resolution;
    `--fid-resize clean` resizes as clean-fid does instead (PIL bicubic on the uint8 image),
    for FID and IS alike; DM-GAN resizes with PIL and uses 256x256 images and precomputed val
    statistics.
  * IS uses the same 2015-12-05 Inception graph (1008 logits without the bias, 10 splits), as
    the improved-GAN code DM-GAN used for COCO; its CUB numbers use a fine-tuned Inception,
    so IS here is comparable in protocol with COCO results only.
  * attributes (shapes dataset only) is the accuracy of a small classifier trained on real
    renders (t2i_fast.metrics.attributes) on the attributes each caption names; the same
    classifier's accuracy on the real test images with the same captions is reported with it.
"""
import json
import sys
import time
from pathlib import Path

import torch

from t2i_fast.backends import BACKENDS, check_backend
from t2i_fast.errors import ArgumentParser, FileSystemError, UserError, cli_main
from t2i_fast.evaluate.captions import select_captions
from t2i_fast.evaluate.common import FOLDS, IS_SPLITS, METRICS, EvalError
from t2i_fast.evaluate.scores import CMD, Attributes, Context, Inception, RPrecision
from t2i_fast.evaluate.sources import generate_batches, load_matcher
from t2i_fast.fileio import atomic_write, check_writable
from t2i_fast.metrics.inception import DEFAULT_FID_RESIZE, FID_RESIZES
from t2i_fast.models import configure
from t2i_fast.train.distributed import resolve_device
from t2i_fast.train.progress import Progress

# Metrics that keep real-side statistics or a classifier in the --cache folder.
CACHED = ("cmd", "fid", "is", "attributes")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser():
    from t2i_fast.runs import add_source_arguments
    p = ArgumentParser(prog="python -m t2i_fast.evaluate",
                       description="Score a trained run or published DM-GAN / AttnGAN / GR-GAN "
                       "weights: R-precision, CMD, FID, IS and attribute accuracy (shapes "
                       "dataset).")
    add_source_arguments(p, "DAMSM image_encoderN.pth (R-precision of DM-GAN / AttnGAN)")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} "
                   "(default: every metric the given files allow)")
    p.add_argument("--num-images", type=int, help="images to generate (default: the test "
                   "split size; more loop the split with new captions)")
    p.add_argument("--num-real", type=int, help="real test images for the CMD / FID "
                   "statistics (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="noise, mismatched captions, folds")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--backend", choices=BACKENDS + ("auto",),
                   help="t2i_fast.ops backend for the generator (default: the run's)")
    p.add_argument("--matcher", help="DAMSM / ITM encoder weights for R-precision (and CMD "
                   "with --embedder run), in RUN_DIR/encoders.pt format (default: the run's)")
    p.add_argument("--clip-weights", help="CLIP ViT-B/32 weights (OpenAI ViT-B-32.pt or "
                   "open_clip) for CMD")
    p.add_argument("--clip-bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz for CMD (and for "
                   "GR-GAN's published ITM)")
    p.add_argument("--embedder", choices=("clip", "run"), default="clip",
                   help="CMD embedding space: CLIP ViT-B/32 (GR-GAN's) or the run's matching "
                   "encoders (not comparable with published numbers)")
    p.add_argument("--inception-weights", help="pytorch-fid pt_inception-2015-12-05-6726825d"
                   ".pth (or torch-fidelity's) for FID and IS")
    p.add_argument("--fid-resize", choices=tuple(FID_RESIZES), default=DEFAULT_FID_RESIZE,
                   help="how FID / IS inputs reach 299x299: " + "; ".join(
                       f"{k}: {v}" for k, v in FID_RESIZES.items()))
    p.add_argument("--cache", help="folder for real-side statistics and the attribute "
                   "classifier (default RUN_DIR/eval_cache)")
    p.add_argument("--out", help="report path (default RUN_DIR/eval/report_<step>.json; "
                   "needed when the run directory is not writable)")
    return p


def resolve_metrics(args, dataset):
    """The metric names to compute, in METRICS order; EvalError for impossible requests."""
    if args.metrics is None:
        wanted = {"r_precision"}
        if args.embedder == "run" or args.clip_weights:
            wanted.add("cmd")
        if args.inception_weights:
            wanted |= {"fid", "is"}
        if dataset == "shapes":
            wanted.add("attributes")
    else:
        wanted = {m.strip() for m in args.metrics.split(",") if m.strip()}
        unknown = sorted(wanted - set(METRICS))
        if unknown or not wanted:
            raise EvalError(f"--metrics: unknown metric(s) {unknown or [args.metrics]}; "
                            f"choose from {','.join(METRICS)}")
    if "cmd" in wanted and args.embedder == "clip":
        if not args.clip_weights:
            raise EvalError("metric cmd needs --clip-weights PATH and --clip-bpe PATH (CLIP "
                            "ViT-B/32 and its BPE merges, as GR-GAN), or --embedder run (the "
                            "run's matching encoders; not comparable with published numbers)")
        if not args.clip_bpe:
            raise EvalError("metric cmd needs --clip-bpe PATH (CLIP's "
                            "bpe_simple_vocab_16e6.txt.gz) with --clip-weights")
    if wanted & {"fid", "is"} and not args.inception_weights:
        raise EvalError(f"metric(s) {','.join(sorted(wanted & {'fid', 'is'}))} need "
                        f"--inception-weights PATH (pytorch-fid's "
                        f"pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    if "attributes" in wanted and dataset != "shapes":
        raise EvalError(f"metric attributes needs the built-in shapes dataset; this run uses "
                        f"{dataset!r}")
    return [m for m in METRICS if m in wanted]


def check_args(args):
    """Flag values that can be checked before loading anything."""
    for flag in ("matcher", "clip_weights", "clip_bpe", "inception_weights", "checkpoint"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise EvalError(f"--{flag.replace('_', '-')} {path}: file not found")
    for flag in ("num_images", "num_real", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def check_published(run, metrics, args):
    """Published DM-GAN / AttnGAN weights score R-precision (and CMD in the run's space) with
    the published DAMSM image encoder: it must be given, a random one would score noise."""
    uses_matcher = "r_precision" in metrics or ("cmd" in metrics and args.embedder == "run")
    if run.weights is None or args.matcher or not uses_matcher or \
            "image_encoder" in run.weights or run.model_cfg.image_encoder != "damsm":
        return
    raise EvalError(f"metric {'r_precision' if 'r_precision' in metrics else 'cmd'} scores "
                    f"images with the DAMSM image encoder: give --image-encoder (the "
                    f"image_encoderN.pth published with {run.weights['text_encoder']}), or "
                    f"--metrics without it")


def check_sizes(metrics, n, num_real, images_flag="--num-images"):
    need = {"r_precision": (2 * FOLDS, f"{FOLDS} folds of at least 2"),
            "is": (IS_SPLITS, f"{IS_SPLITS} splits"), "fid": (2, "a covariance"),
            "cmd": (2, "a covariance")}
    for m in metrics:
        if m in need and n < need[m][0]:
            raise EvalError(f"metric {m} needs {images_flag} >= {need[m][0]} ({need[m][1]}), "
                            f"got {n}")
        if m in ("fid", "cmd") and num_real < 2:
            raise EvalError(f"metric {m} needs --num-real >= 2, got {num_real}")


def build_metrics(names):
    out = [RPrecision()] if "r_precision" in names else []
    if "cmd" in names:
        out.append(CMD())
    inception = [m for m in ("fid", "is") if m in names]
    if inception:
        out.append(Inception(inception))
    if "attributes" in names:
        out.append(Attributes())
    return out


class Timer:
    """Accumulated seconds per key; synchronises CUDA so that device work is counted."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    def __call__(self, key):
        timer = self

        class _Span:
            def __enter__(self):
                timer.sync()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.seconds[key] = timer.seconds.get(key, 0.0) + time.perf_counter() - self.t0
        return _Span()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def load_metrics(metrics, ctx, timer):
    """Read every metric's weight files, before any real-side statistics are computed."""
    with torch.no_grad():
        for m in metrics:
            with timer("+".join(m.names)):
                m.load(ctx)


def score(metrics, ctx, timer, show_progress=True):
    """{name: result} of the loaded `metrics` on one image per caption of ctx.captions,
    generated by ctx.run with the noise of --seed. Training calls this on its EMA generator
    with the same Context each time, so its numbers are the command's."""
    args, n = ctx.args, len(ctx.captions)
    with torch.no_grad():
        for m in metrics:
            with timer("+".join(m.names)):
                m.prepare(ctx)
        batches = -(-n // args.batch_size)
        progress = Progress("generate", batches, ctx.device, every=max(1, batches // 10),
                            enabled=show_progress)
        gen = generate_batches(ctx.run, ctx.captions, args.seed, args.batch_size)
        for b in range(batches):
            with timer("generation"):
                rows, fakes = next(gen)
            shared = {}
            for m in metrics:
                with timer("+".join(m.names)):
                    m.update(ctx, rows, fakes, shared)
            progress.update(b + 1, {})
        results = {}
        for m in metrics:
            with timer("+".join(m.names)):
                results.update(m.finish(ctx))
    return results


def evaluate(args):
    """Run the evaluation described by parsed `args`; returns (report dict, report path)."""
    from t2i_fast.runs import load_source
    check_args(args)
    device = resolve_device(args.device)
    if args.backend is not None:
        check_backend(args.backend, device.type)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        run = load_source(args, device)
    except UserError as e:
        raise EvalError(f"--run {args.run}: {e}" if args.run else str(e)) from e
    timer = Timer(run.device)
    names = resolve_metrics(args, run.train_cfg.dataset)
    check_published(run, names, args)
    out = Path(args.out) if args.out else run.dir / "eval" / f"report_{run.step:07d}.json"
    cache = Path(args.cache) if args.cache else run.dir / "eval_cache"
    check_outputs(out, cache if set(names) & set(CACHED) else None, args)
    if args.backend is not None:
        configure(run.generator, impl=None if args.backend == "auto" else args.backend)
    ds = run.dataset("test")
    if len(ds) == 0:
        raise EvalError(f"--run {args.run}: the test split of dataset "
                        f"{run.train_cfg.dataset!r} is empty")
    n = args.num_images or len(ds)
    if args.num_real is not None and args.num_real > len(ds):
        raise EvalError(f"--num-real {args.num_real} exceeds the {len(ds)} test images")
    check_sizes(names, n, args.num_real or len(ds))
    captions = select_captions(ds, n)
    matcher = load_matcher(run, args.matcher)
    ctx = Context(run, ds, captions, matcher, args, cache)
    metrics = build_metrics(names)
    timings = {"load": time.perf_counter() - t_start}
    load_metrics(metrics, ctx, timer)
    results = score(metrics, ctx, timer)
    timings.update(timer.seconds)
    timings["metrics_total"] = sum(v for k, v in timer.seconds.items() if k != "generation")
    timings["total"] = time.perf_counter() - t_start
    report = {
        "run": str(run.dir), "checkpoint_step": run.step,
        "checkpoint": str(args.checkpoint) if args.checkpoint else
        "newest" if run.weights is None else run.weights["generator"],
        **({"weights": run.weights} if run.weights else {}),
        "dataset": run.train_cfg.dataset, "split": "test", "split_size": len(ds),
        "image_size": ds.image_size, "num_images": n, "num_real": ctx.num_real,
        "metrics": {k: results[k] for k in names},
        "settings": {k: v for k, v in vars(args).items()} | {"metrics": names,
                                                              "cache": str(cache)},
        "timings_s": timings, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(report, indent=2)
    atomic_write(out, lambda f: f.write(text.encode()))
    return report, out


def format_table(report):
    """The report's metrics and timings as a text table."""
    rows = []
    for name, r in report["metrics"].items():
        if name == "r_precision":
            rows.append((name, f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} %",
                         f"{r['trials']} trials, {r['folds']} folds, matcher {r['matcher']}"))
        elif name == "cmd":
            note = "" if r["comparable"] else " (not comparable with published CMD)"
            rows.append((name, f"{r['cmd']:.4f}", f"ITDis {r['itdis']:.4f}, FD(real, fake) "
                         f"{r['fd_real_fake']:.4f}, embedder {r['embedder']}{note}"))
        elif name == "fid":
            rows.append((name, f"{r['value']:.3f}",
                         f"{r['real_images']} real images, resize {r['resize']}"))
        elif name == "is":
            rows.append((name, f"{r['mean']:.3f} ± {r['std']:.3f}",
                         f"{r['splits']} splits, resize {r['resize']}"))
        elif name == "attributes":
            acc = r["generated"]["accuracy"]
            per = ", ".join(f"{k} {v:.3f}" for k, v in acc.items() if v is not None)
            real = r["real"]["mean"]
            rows.append((name, f"{r['generated']['mean']:.3f}",
                         f"{per}; real images {real:.3f}"))
    width = max(len(r[1]) for r in rows) if rows else 5
    lines = [f"{'metric':<12} {'value':<{width}}  details"]
    lines += [f"{a:<12} {b:<{width}}  {c}" for a, b, c in rows]
    t = report["timings_s"]
    per = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k not in ("total",))
    lines.append(f"step {report['checkpoint_step']}, {report['num_images']} images; {per}; "
                 f"total {t['total']:.1f}s")
    return "\n".join(lines)


def check_outputs(out, cache, args):
    """Before anything is computed: the report's folder (and the cache folder, when a metric
    keeps files there) must be writable; the error says which flags move them."""
    problems, flags = [], []
    for folder, flag, given in ((out.parent, "--out PATH", args.out),
                                (cache, "--cache DIR", args.cache)):
        if folder is None:
            continue
        try:
            check_writable(folder)
        except FileSystemError as e:
            problems.append(str(e))
            if not given:
                flags.append(flag)
    if problems:
        hint = f"; give {' and '.join(flags)} in a writable place" if flags else ""
        raise EvalError("; ".join(problems) + hint)


def run_evaluation(argv):
    report, out = evaluate(build_parser().parse_args(argv))
    print(format_table(report))
    print(f"report: {out}")
    return 0


def main(argv=None):
    return cli_main(run_evaluation, sys.argv[1:] if argv is None else argv)



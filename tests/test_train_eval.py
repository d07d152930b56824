"""Evaluation during training: eval records in metrics.jsonl at the right steps, equal to what
python -m t2i_fast.evaluate reports for the same checkpoint; the progress line; curves.png
drawn from metrics.jsonl; resume cutting and redrawing both; TensorBoard event files only with
the package."""
import io
import json
import sys

import pytest
from PIL import Image
from run_helpers import assert_states_equal, call, one_line_error
from test_evaluate import small_clip_files

from t2i_fast import evaluate as ev
from t2i_fast.errors import ConfigError
from t2i_fast.metrics import attributes as attr
from t2i_fast.train import Run, train_config
from t2i_fast.train.__main__ import main as train_main
from t2i_fast.train.checkpoint import checkpoint_path, load_checkpoint
from t2i_fast.train.curves import curves_image, panels
from t2i_fast.train.evaluation import eval_args, eval_metrics
from t2i_fast.train.progress import read_metrics

IMAGES = 20                     # R-precision's least: 10 folds of 2
ATTRIBUTES = ("colour", "shape", "size", "position")
EVAL_KEYS = {"phase", "step", "images", "eval_s", "timings_s", "r_precision", "r_precision_std",
             "attributes", "attributes_real", *(f"attributes_{a}" for a in ATTRIBUTES)}
TIMES = ("eval_s", "timings_s")  # what differs between two evaluations of the same weights


# With the training runs of `straight`, about 90 s on 2 CPU cores: the tests that use it are
# marked slow.
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An evaluate cache holding a quickly trained attribute classifier (the default one
    trains for seconds; what is tested here is that training scores with it)."""
    folder = tmp_path_factory.mktemp("eval_cache")
    net, info = attr.train_classifier(64, num_train=1000, steps=120, num_test=200, width=8)
    attr.save_classifier(folder / ev.classifier_name(64), net, info)
    return folder


def tiny(folder, name="run", flags="", **overrides):
    values = dict(itm_steps=2, steps=6, ckpt_every=2, sample_every=6, log_every=2,
                  dataset_size=32, batch_size=4, num_samples=4, keep_checkpoints=5, threads=1,
                  eval_every=5, eval_images=IMAGES, eval_flags=f"--cache {folder} {flags}")
    values.update(overrides)
    out = folder.parent / name
    return train_config("tiny", **values, out=str(out)), out


def records(run_dir, phase):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["phase"] == phase]


def png(path):
    data = path.read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def same_pixels(a, b):
    return a.size == b.size and a.tobytes() == b.tobytes()


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight(cache):
    """A run evaluated at steps 5 (eval_every) and 6 (the last), its progress output."""
    cfg, out = tiny(cache, "straight")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", err)
        Run(cfg, out).train()
    return out, err.getvalue()


@pytest.mark.slow
def test_eval_records_at_the_right_steps_with_the_right_keys(straight):
    out, progress = straight
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [5, 6]
    for r in evals:
        assert set(r) == EVAL_KEYS and r["images"] == IMAGES
        assert all(0 <= r[k] <= 1 for k in EVAL_KEYS - {"phase", "step", "images", *TIMES})
        assert r["attributes_real"] >= 0.9           # the classifier reads real images
        assert r["eval_s"] > 0 and r["timings_s"]["generation"] > 0
    assert [r["step"] for r in records(out, "gan")] == [2, 4, 6]
    last = [line for line in progress.splitlines() if line.startswith("gan 6/6")]
    assert len(last) == 1 and f"eval@6 r_precision {evals[1]['r_precision']:.3f} " \
        f"attributes {evals[1]['attributes']:.3f}" in last[0]


@pytest.mark.slow
def test_curves_png_is_drawn_from_metrics_jsonl(straight):
    out, _ = straight
    image = png(out / "curves.png")
    assert same_pixels(image.convert("RGB"), curves_image(read_metrics(out / "metrics.jsonl")))
    titles = [p[0] for p in panels(read_metrics(out / "metrics.jsonl"))]
    assert titles == ["phase 1: matching losses (phase-1 step)", "adversarial losses",
                      "generator: matching terms and KL", "evaluation on held-out captions"]


def test_curves_follow_the_values_and_skip_missing_ones():
    base = [{"phase": "gan", "step": s, "g_loss": 1.0 + s, "d_loss0": 0.5, "time_s": s}
            for s in (10, 20, 30)]
    evals = [{"phase": "eval", "step": s, "r_precision": v, "attributes_shape": None}
             for s, v in ((15, 0.2), (30, 0.6))]
    drawn = panels(base + evals)
    assert [(t, list(series)) for t, series, _ in drawn] == \
        [("adversarial losses", ["g_loss", "d_loss0"]),
         ("evaluation on held-out captions", ["r_precision"])]
    assert drawn[1][1]["r_precision"] == [(15, 0.2), (30, 0.6)] and drawn[1][2] == (0.0, 1.0)
    image = curves_image(base + evals)
    assert image.size == (960, 480)
    moved = [dict(r, r_precision=0.9) if r["step"] == 30 else r for r in evals]
    assert not same_pixels(image, curves_image(base + moved))
    broken = base + [{"phase": "gan", "step": 40, "g_loss": float("nan"), "d_loss0": 0.5}]
    assert panels(broken)[0][1]["g_loss"] == [(10, 11.0), (20, 21.0), (30, 31.0)]
    assert curves_image([]).size == (960, 60)


@pytest.mark.slow
def test_evaluation_leaves_training_unchanged(straight, cache):
    cfg, out = tiny(cache, "no_eval", eval_every=0)
    Run(cfg, out, quiet=True).train()
    assert_states_equal(load_checkpoint(checkpoint_path(straight[0], 6)),
                        load_checkpoint(checkpoint_path(out, 6)))
    assert records(out, "eval") == []


@pytest.fixture
def small_clip(tmp_path):
    return small_clip_files(tmp_path)


@pytest.mark.slow
def test_eval_values_equal_the_evaluate_command(cache, small_clip):
    flags = (f"--seed 3 --batch-size 8 --num-real 6 --clip-weights {small_clip[0]} "
             f"--clip-bpe {small_clip[1]}")          # default metrics: r_precision, cmd, attributes
    cfg, out = tiny(cache, "same", flags=flags, steps=4, eval_every=2)
    Run(cfg, out, quiet=True).train()
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        report_path = out / f"report_{r['step']}.json"
        ev.main(["--run", str(out), "--checkpoint", str(checkpoint_path(out, r["step"])),
                 "--num-images", str(IMAGES), "--out", str(report_path), "--cache", str(cache),
                 *flags.split()])
        m = json.loads(report_path.read_text())["metrics"]
        attrs = m["attributes"]
        expected = {"r_precision": m["r_precision"]["mean"],
                    "r_precision_std": m["r_precision"]["std"],
                    "attributes": attrs["generated"]["mean"],
                    "attributes_real": attrs["real"]["mean"],
                    **{f"attributes_{a}": attrs["generated"]["accuracy"][a] for a in ATTRIBUTES},
                    "cmd": m["cmd"]["cmd"], "itdis": m["cmd"]["itdis"]}
        got = {k: v for k, v in r.items() if k not in ("phase", "step", "images", *TIMES)}
        assert got == expected                                   # exactly: the same code
    assert evals[0]["cmd"] != evals[1]["cmd"]                    # the weights moved between


@pytest.mark.slow
def test_resume_cuts_eval_records_and_redraws_the_curves(straight, cache, capsys):
    cfg, out = tiny(cache, "broken")

    def crash(run, step):           # after step 5's evaluation; the last checkpoint is step 4
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg, out, quiet=True).train(hooks=[crash])
    assert [r["step"] for r in records(out, "eval")] == [5]
    before = png(out / "curves.png")
    assert call(train_main, ["--resume", str(out), "--steps", "4"], capsys)[0] == 0
    assert records(out, "eval") == [] and [r["step"] for r in records(out, "gan")] == [2, 4]
    redrawn = png(out / "curves.png").convert("RGB")
    assert same_pixels(redrawn, curves_image(read_metrics(out / "metrics.jsonl")))
    assert not same_pixels(redrawn, before.convert("RGB"))
    assert call(train_main, ["--resume", str(out), "--steps", "6"], capsys)[0] == 0
    strip = [{k: v for k, v in r.items() if k not in TIMES} for r in records(out, "eval")]
    assert strip == [{k: v for k, v in r.items() if k not in TIMES}
                     for r in records(straight[0], "eval")]
    assert_states_equal(load_checkpoint(checkpoint_path(straight[0], 6)),
                        load_checkpoint(checkpoint_path(out, 6)))


@pytest.mark.slow
def test_no_tensorboard_files_without_the_package(cache, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import fails
    cfg, out = tiny(cache, "no_tb", steps=2, eval_every=2, itm_steps=0)
    Run(cfg, out).train()
    said = capsys.readouterr().out
    assert said.count("tensorboard is not installed") == 1
    assert not (out / "tensorboard").exists() and len(records(out, "eval")) == 1


@pytest.mark.slow
def test_tensorboard_event_files_mirror_metrics_jsonl(cache):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg, out = tiny(cache, "tb")

    def crash(run, step):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg, out, quiet=True).train(hooks=[crash])
    Run(cfg, out, resume=True, quiet=True).train()       # events past step 4 are purged
    gan = EventAccumulator(str(out / "tensorboard" / "gan")).Reload()
    for phase, key in (("eval", "r_precision"), ("eval", "attributes"), ("gan", "g_loss")):
        got = [(e.step, e.value) for e in gan.Scalars(f"{phase}/{key}")]
        want = [(r["step"], r[key]) for r in records(out, phase)]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)   # float32
    phase1 = EventAccumulator(str(out / "tensorboard" / "encoders")).Reload()
    assert [e.step for e in phase1.Scalars("encoders/w_loss0")] == [2]


@pytest.mark.slow
def test_eval_flags_are_the_evaluate_commands_checked_once(cache, tmp_path, capsys):
    cfg, _ = tiny(cache, flags="--metrics r_precision --seed 4")
    args = eval_args(cfg)
    assert (args.seed, args.num_images, args.metrics) == (4, IMAGES, "r_precision")
    assert eval_metrics(cfg) == ["r_precision"]
    assert eval_metrics(tiny(cache)[0]) == ["r_precision", "attributes"]
    for flags, message in (("--device cpu", "--device cannot be given there"),
                           ("--num-images 50", "--num-images cannot be given there"),
                           ("--checkpoint x.pt", "--checkpoint cannot be given there"),
                           ("--generator g.pth", "--generator cannot be given there"),
                           ("--bogus 1", "unrecognized arguments: --bogus"),
                           ("--metrics cmd", "metric cmd needs --clip-weights"),
                           ("'--seed", "No closing quotation")):
        with pytest.raises(ConfigError, match=message):
            tiny(cache, flags=flags)
    with pytest.raises(ConfigError, match="metric attributes needs the built-in shapes"):
        train_config("dmgan-cub", data_dir=str(tmp_path), eval_flags="--metrics attributes")
    out = tmp_path / "refused"
    base = ["--preset", "tiny", "--threads", "1", "--out", str(out)]
    one_line_error(*call(train_main, base + ["--eval-images", "5", "--eval-every", "2"], capsys),
                   "metric r_precision needs --eval-images >= 20")
    one_line_error(*call(train_main, base + ["--eval-every", "2",
                                             "--eval-flags=--inception-weights missing.pth"],
                         capsys), "--inception-weights missing.pth: file not found")
    one_line_error(*call(train_main, base + ["--eval-flags", "--device cuda"], capsys),
                   "eval_flags '--device cuda': --device cannot be given there")
    assert not out.exists()                          # refused before anything is written

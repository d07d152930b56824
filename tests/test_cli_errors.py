"""Typed overrides and one-line user errors across train, sample, evaluate and info; bugs keep
their traceback."""
import json
import os
import pickle

import pytest
import torch
from run_helpers import TINY, call, one_line_error, run_module

from t2i_fast.config_fields import parse
from t2i_fast.errors import ConfigError, cli_main, one_line
from t2i_fast.models import get_config
from t2i_fast.models.config import Config, StageSpec
from t2i_fast.train import train_config
from t2i_fast.train.__main__ import main as train_main
from t2i_fast.train.config import TrainConfig, build_parser


def dry_run(capsys, *argv):
    code, err = call(train_main, ["--dry-run", "--preset", "tiny", *argv], capsys)
    return code, err


def stored(capsys, *argv):
    capsys.readouterr()
    assert train_main(["--dry-run", "--preset", "tiny", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------------------------
# Typed overrides
# --------------------------------------------------------------------------------------------

def test_bools_parse_only_from_true_false_1_0(capsys):
    assert stored(capsys, "--set", "mask_compat=False")["model"]["mask_compat"] is False
    for text, value in [("false", False), ("0", False), ("TRUE", True), ("1", True)]:
        assert parse(Config, "mask_compat", text) is value
    for text in ("yes", "no", "on", "2", ""):
        with pytest.raises(ConfigError, match="expected true/false/1/0"):
            parse(Config, "mask_compat", text)


@pytest.mark.parametrize("argv, parts", [
    (["--set", "mask_compat=yes"], ["mask_compat='yes': expected true/false/1/0"]),
    (["--set", "gf_dim=abc"], ["gf_dim='abc': expected an integer"]),
    (["--set", "gf_dim=2.5"], ["gf_dim='2.5': expected an integer"]),
    (["--set", "gf_dim=0"], ["gf_dim must be >= 1, got 0"]),
    (["--set", "gamma1=nan"], ["gamma1 must be a finite number > 0"]),
    (["--set", "ema_decay=2"], ["ema_decay must be in [0, 1), got 2.0"]),
    (["--set", "batch_size=1"], ["batch_size must be >= 2, got 1"]),
    (["--batch-size", "1"], ["batch_size must be >= 2, got 1"]),
    (["--steps", "2.5"], ["argument --steps: expected an integer, got '2.5'"]),
    (["--lr-g", "-1"], ["lr_g must be a finite number > 0"]),
    (["--betas", "0.5"], ["--betas: expected 2 comma-separated items"]),
    (["--betas", "0.5,1.5"], ["betas must be in [0, 1)"]),
    (["--optimizer", "sgd"], ["argument --optimizer: invalid choice: 'sgd'"]),
    (["--precision", "fp8"], ["argument --precision: invalid choice: 'fp8'"]),
    (["--dataset", "cub"], ["dataset 'cub' needs data_dir (--data-dir)"]),
    (["--device", "tpu"], ["--device 'tpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"]),
    (["--set", "schedule=word"], ["schedule='word': expected a JSON list of StageSpec"]),
    (["--set", 'schedule=[["word", "yes", 1]]'], ["expected a JSON list of StageSpec"]),
    (["--set", "memory=huge"], ["memory"]),
    (["--set", "impl=bogus"], ["backend must be one of"]),
    (["--set", "lr=1"], ["--set lr: no such model or training field; did you mean lr_g or lr_d?"]),
    (["--set", "r_num"], ["--set expects KEY=VALUE, got 'r_num'"]),
    (["--set", "r_num=1", "--set", "r_num=2"], ["r_num is given twice"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_bad_values_are_one_line_naming_the_key_and_the_type(capsys, argv, parts):
    one_line_error(*dry_run(capsys, *argv), *parts)


def test_tuples_schedules_and_optionals_parse_by_type(capsys):
    out = stored(capsys, "--set", 'schedule=[["sentence", true, 1], ["word", false, 2]]',
                 "--set", "clip_layers=1,2,1,1", "--betas", "0.1,0.2", "--set", "impl=none",
                 "--set", "itm_clip=0.5", "--set", "steps=7", "--set", "d_heads=uncond,both,cond")
    assert out["model"]["schedule"] == [["sentence", True, 1], ["word", False, 2]]
    assert out["model"]["clip_layers"] == [1, 2, 1, 1] and out["model"]["impl"] is None
    assert out["model"]["d_heads"] == ["uncond", "both", "cond"]
    assert out["train"]["betas"] == [0.1, 0.2] and out["train"]["itm_clip"] == 0.5
    assert out["train"]["steps"] == 7
    assert parse(Config, "schedule", '[{"level": "word", "iterations": 3}]') == \
        (StageSpec("word", True, 3),)


def test_the_python_api_checks_types_too():
    with pytest.raises(ConfigError, match=r"mask_compat must be of type bool, got 'False'"):
        get_config("tiny", mask_compat="False")
    with pytest.raises(ConfigError, match=r"steps must be of type int, got 2.5"):
        train_config("tiny", steps=2.5)
    with pytest.raises(ConfigError, match=r"unknown config fields \['lean_mode'\]"):
        train_config("tiny", model={"lean_mode": True})
    assert isinstance(ConfigError("x"), ValueError)       # callers catching ValueError still do


def test_help_gives_every_flag_its_type_or_choices_and_default():
    text = build_parser().format_help()
    assert "--steps INT" in text and "--lr-g X" in text and "--betas X,X" in text
    assert "--optimizer {adam,adamax}" in text and "--precision {fp32,bf16,fp16}" in text
    assert "--data-dir PATH" in text and "--device DEVICE" in text
    for name in TrainConfig.__dataclass_fields__:
        if name not in ("preset", "model"):
            assert "--" + name.replace("_", "-") in text, name
    assert "(default 2100; presets: tiny 20" in " ".join(text.split())


# --------------------------------------------------------------------------------------------
# Data errors
# --------------------------------------------------------------------------------------------

def _coco(root, images=True):
    """A tiny AttnGAN COCO layout: 8 train and 2 test images, one caption word list each x5."""
    words = ["<end>", "a", "red", "circle"]
    keys = {"train": [f"tr{i}" for i in range(8)], "test": ["te0", "te1"]}
    for split, ks in keys.items():
        (root / split).mkdir(parents=True)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(ks, f, protocol=2)
    caps = [[1, 2, 3]] * 5
    with open(root / "captions.pickle", "wb") as f:
        pickle.dump([caps * 8, caps * 2, dict(enumerate(words)),
                     {w: i for i, w in enumerate(words)}], f, protocol=2)
    (root / "images").mkdir()
    if images:
        from PIL import Image
        for k in keys["train"] + keys["test"]:
            Image.new("RGB", (20, 20), (200, 30, 30)).save(root / "images" / f"{k}.jpg")
    return root


def coco_argv(root, out, *extra):
    return [*TINY, "--dataset", "coco", "--data-dir", str(root), "--itm-steps", "1",
            "--steps", "1", "--out", str(out), *extra]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo payload",))


def test_data_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(*call(train_main, coco_argv(tmp_path / "nowhere", out), capsys),
                   f"AttnGAN data folder {tmp_path / 'nowhere'} not found")
    root = _coco(tmp_path / "corrupt")
    data = (root / "train" / "filenames.pickle").read_bytes()
    (root / "train" / "filenames.pickle").write_bytes(data[:len(data) // 2])
    one_line_error(*call(train_main, coco_argv(root, out), capsys),
                   "train/filenames.pickle: truncated or corrupt pickle")
    root = _coco(tmp_path / "refused")
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(Payload(), f, protocol=2)
    one_line_error(*call(train_main, coco_argv(root, out), capsys),
                   "refusing to load the global posix.system")
    assert not out.exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_missing_images_are_one_line_even_from_a_worker(tmp_path, capsys, workers):
    root = _coco(tmp_path / "coco", images=False)
    code, err = call(train_main, coco_argv(root, tmp_path / "run", "--num-workers", workers),
                     capsys)
    one_line_error(code, err, f"image {root / 'images'}/", ".jpg not found")
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_a_dataloader_workers_traceback_becomes_its_last_line():
    wrapped = ("Caught DataNotFound in DataLoader worker process 0.\nOriginal Traceback (most "
               "recent call last):\n  File \"x.py\", line 1, in f\nt2i_fast.errors.DataNotFound:"
               " image a.jpg not found")
    assert one_line(RuntimeError(wrapped)) == "image a.jpg not found"
    assert one_line(ConfigError("two\nlines")) == "two lines"


# --------------------------------------------------------------------------------------------
# Backends and devices, checked before anything is written
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_backend_that_cannot_run_is_refused_before_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(*call(train_main, [*TINY, "--device", "cpu", "--backend", "cuda",
                                      "--out", str(out)], capsys),
                   "backend 'cuda' cannot run on cpu")
    assert not out.exists()


def test_an_unknown_backend_in_the_environment_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_FAST_BACKEND", "bogus")
    one_line_error(*call(train_main, [*TINY, "--out", str(tmp_path / "run")], capsys),
                   "T2I_FAST_BACKEND: backend must be one of")
    assert not (tmp_path / "run").exists()
    done = run_module("t2i_fast.info", env={**os.environ, "T2I_FAST_BACKEND": "bogus"})
    one_line_error(done.returncode, done.stderr, "T2I_FAST_BACKEND", "got 'bogus'")


def test_unreadable_itm_weights_are_refused_before_the_run_directory(tmp_path, capsys):
    """A missing or foreign --itm-weights file leaves no run behind that would block the
    corrected command."""
    out = tmp_path / "run"
    missing = tmp_path / "missing.pt"
    one_line_error(*call(train_main, [*TINY, "--itm-weights", str(missing), "--out", str(out)],
                         capsys), str(missing), "does not exist")
    assert not out.exists()
    foreign = tmp_path / "foreign.pt"
    torch.save({"text_encoder": {"bogus": torch.zeros(1)}}, foreign)
    one_line_error(*call(train_main, [*TINY, "--itm-weights", str(foreign), "--out", str(out)],
                         capsys), str(foreign), "does not hold encoders")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_refused_before_the_run_directory(tmp_path, capsys):
    one_line_error(*call(train_main, [*TINY, "--device", "cuda", "--out",
                                      str(tmp_path / "run")], capsys),
                   "--device cuda: CUDA is not available")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# Bugs keep their traceback
# --------------------------------------------------------------------------------------------

def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from t2i_fast.train import loop

    def broken(self, hooks=None):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(loop.Run, "train", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        train_main([*TINY, "--steps", "1", "--out", str(tmp_path / "run")])
    with pytest.raises(KeyError):
        cli_main(lambda argv: {}["missing"])

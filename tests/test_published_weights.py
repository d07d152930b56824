"""The commands on published upstream weights: python -m t2i_fast.sample and evaluate with
--preset/--generator/--text-encoder/--data-dir (and --attention overlays), python -m
t2i_fast.train --init-from, and the one-line refusals. Weight files are random, in the
upstream layout of test_upstream_parity, at its test sizes; the data is a small COCO-layout
folder with its captions.pickle."""
import dataclasses
import functools
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from run_helpers import call, one_line_error
from test_upstream_parity import sizes, upstream_files
from t2i_fast import runs
from t2i_fast.data import pickles
from t2i_fast.data.base import tensor_to_image
from t2i_fast.data.vocab import Vocabulary
from t2i_fast.evaluate import main as evaluate_main
from t2i_fast.models import SpectralNorm, build_image_encoder
from t2i_fast.runs import load_published, load_run
from t2i_fast.sample import main as sample_main
from t2i_fast.train import Run, train_config
from t2i_fast.train.__main__ import main as train_main

PRESET = "dmgan-coco"
# five captions per image, as COCO
CAPTIONS = {split: [[f"a {colour} bird {place}", f"a small {colour} bird", f"{colour} bird",
                     f"the bird is {colour}", f"a bird {place}"] for colour, place in pairs]
            for split, pairs in (("train", [("red", "on a branch"), ("blue", "in the sky")]),
                                 ("test", [("green", "on grass"), ("yellow", "on a rock"),
                                           ("red", "in water")]))}


def make_coco_folder(root):
    """COCO layout: images/, train|test/filenames.pickle, captions.pickle."""
    texts = [c for split in ("train", "test") for caps in CAPTIONS[split] for c in caps]
    vocab = Vocabulary.build(texts)
    ids = {s: [vocab.encode(c) for caps in CAPTIONS[s] for c in caps] for s in CAPTIONS}
    pickles.write_captions(root / "captions.pickle", ids["train"], ids["test"],
                           vocab.ixtoword, vocab.wordtoix)
    rng = np.random.default_rng(0)
    for split, caps in CAPTIONS.items():
        keys = [f"COCO_{split}2014_{i:04d}" for i in range(len(caps))]
        (root / split).mkdir(parents=True)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(keys, f, protocol=2)
        for key in keys:
            (root / "images").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                root / "images" / f"{key}.jpg")
    return vocab


def model_sizes():
    """The test sizes, with the vocabulary left to the text encoder file / the dataset."""
    return {k: v for k, v in sizes(PRESET).items() if k != "vocab_size"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    vocab = make_coco_folder(root / "coco")
    weights = root / "weights"
    weights.mkdir()
    files, _, _, cfg = upstream_files(PRESET, weights, overrides={"vocab_size": len(vocab)})
    torch.manual_seed(0)
    torch.save(build_image_encoder(cfg).state_dict(), weights / "image_encoder100.pth")
    files["image_encoder"] = weights / "image_encoder100.pth"
    return dict(root=root, data=root / "coco", files=files, cfg=cfg)


@pytest.fixture
def small_models(monkeypatch):
    """The commands load published weights at the test sizes."""
    monkeypatch.setattr(runs, "load_published",
                        functools.partial(runs.load_published, **model_sizes()))


def source_flags(p, image_encoder=False):
    flags = ["--preset", PRESET, "--generator", str(p["files"]["generator"]),
             "--text-encoder", str(p["files"]["text_encoder"]), "--data-dir", str(p["data"])]
    if image_encoder:
        flags += ["--image-encoder", str(p["files"]["image_encoder"])]
    return flags


# --------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------

def test_sample_with_attention_overlays(published, small_models, tmp_path, capsys):
    out = tmp_path / "out"
    argv = source_flags(published) + ["--caption", "a red bird", "--caption", "green bird",
                                      "--attention", "--out", str(out), "--seed", "4"]
    assert sample_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000_seed4.png", "000_seed4_attention.png", "001_seed4.png", "001_seed4_attention.png",
        "grid.png"]
    assert "with attention overlays" in capsys.readouterr().out
    run = load_published(PRESET, published["files"]["generator"],
                         published["files"]["text_encoder"], published["data"], **model_sizes())
    expected = run.generate_text(["a red bird"], seed=4)[0]
    assert np.array_equal(np.asarray(tensor_to_image(expected)),
                          np.asarray(Image.open(out / "000_seed4.png")))
    # one row per refinement stage, the stage image then one tile per word, 128-pixel tiles
    sheet = Image.open(out / "000_seed4_attention.png")
    assert sheet.size == (4 * (128 + 2), 2 * (128 + 16))
    images, maps, tokens = run.generate_attention("a red bird", seed=4)
    assert [tuple(m.shape) for m in maps] == [(1, 3, 16, 16), (1, 3, 32, 32)]
    assert torch.equal(images[-1][0], expected)
    # the last word's tile: the image blended with its map, which differs from the first's
    tiles = np.asarray(sheet)[16:144]
    assert not np.array_equal(tiles[:, 130:258], tiles[:, 3 * 130:4 * 130 - 2])


def test_sample_writes_beside_the_generator_by_default(published, small_models, tmp_path,
                                                       capsys):
    weights = tmp_path / "w"
    shutil.copytree(published["files"]["generator"].parent, weights)
    flags = source_flags(published)
    flags[flags.index("--generator") + 1] = str(weights / "netG.pth")
    assert sample_main(flags + ["--caption", "a bird"]) == 0
    assert (weights / "netG" / "generated" / "000_seed0.png").is_file()


@pytest.mark.parametrize("drop, extra, message", [
    ("--data-dir", [], "published weights need --data-dir as well"),
    (None, ["--run", "somewhere"], "--run loads a training run; --preset, --generator"),
    (None, ["--checkpoint", "x.pt"], "--checkpoint picks a checkpoint of --run"),
    ("--preset", ["--preset", "small"], "--preset: invalid choice: 'small'"),
])
def test_sample_refuses_what_does_not_say_what_to_load(published, drop, extra, message,
                                                       capsys):
    flags = source_flags(published)
    if drop:
        i = flags.index(drop)
        del flags[i:i + 2]
    one_line_error(*call(sample_main, flags + extra + ["--caption", "a bird"], capsys),
                   message)
    one_line_error(*call(sample_main, ["--caption", "a bird"], capsys), "give --run RUN_DIR")


def test_a_captions_pickle_of_another_vocabulary_is_refused(published, small_models,
                                                            tmp_path, capsys):
    other = tmp_path / "other"
    make_coco_folder(other)
    train, test, ixtoword, wordtoix = pickles.load_captions(other / "captions.pickle")
    wordtoix["extra"] = len(ixtoword)
    ixtoword[len(ixtoword)] = "extra"
    pickles.write_captions(other / "captions.pickle", train, test, ixtoword, wordtoix)
    flags = source_flags(published)
    flags[flags.index("--data-dir") + 1] = str(other)
    one_line_error(*call(sample_main, flags + ["--caption", "a bird"], capsys),
                   f"has {len(ixtoword)} words but the text encoder",
                   f"has {len(ixtoword) - 1}")


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

def test_evaluate_published_weights(published, small_models, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = source_flags(published, image_encoder=True) + [
        "--metrics", "r_precision", "--num-images", "20", "--batch-size", "10",
        "--out", str(report_path)]
    assert evaluate_main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["weights"]["image_encoder"] == str(published["files"]["image_encoder"])
    assert report["checkpoint"] == str(published["files"]["generator"])
    assert report["metrics"]["r_precision"]["trials"] == 20
    one_line_error(*call(evaluate_main, source_flags(published) + [
        "--metrics", "r_precision", "--num-images", "20", "--out", str(report_path)], capsys),
        "give --image-encoder")


# --------------------------------------------------------------------------------------------
# train --init-from
# --------------------------------------------------------------------------------------------

def init_files(p, folder=None):
    """The published files in an order of their own (--init-from recognises each)."""
    f = p["files"]
    paths = (f["text_encoder"], *f["discriminators"], f["generator"], f["image_encoder"])
    return tuple(str(folder / x.name if folder else x) for x in paths)


def test_train_starts_from_published_weights(published, tmp_path):
    copies = tmp_path / "weights"
    shutil.copytree(published["files"]["generator"].parent, copies)
    files = init_files(published, copies)
    cfg = train_config(PRESET, data_dir=str(published["data"]), init_from=files,
                       model=model_sizes(), steps=2, batch_size=2, ckpt_every=1,
                       sample_every=2, log_every=1, num_samples=2, threads=1)
    run = Run(cfg, tmp_path / "run", quiet=True)
    assert run.cfg.mask_compat and not run.cfg.sentence_shortcut
    reference = load_published(PRESET, published["files"]["generator"],
                               published["files"]["text_encoder"], published["data"],
                               **model_sizes())
    for a, b in zip(run.G.state_dict().values(), reference.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.equal(e, p) for e, p in zip(run.ema, run.G.parameters()))
    assert run.G.return_attn
    assert all(m.power_iteration_in_eval for m in run.Ds.modules()
               if isinstance(m, SpectralNorm))
    run.train()
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["train"]["init_from"] == list(files)
    assert stored["model"]["mask_compat"] is True
    loaded = load_run(tmp_path / "run")
    assert loaded.generator.return_attn and loaded.model_cfg.mask_compat
    # a resumed run reads its checkpoint and encoders.pt, not the published files
    shutil.rmtree(copies)
    resumed = Run(dataclasses.replace(cfg, steps=3), tmp_path / "run", resume=True, quiet=True)
    assert resumed.G.return_attn
    resumed.train()
    assert resumed.step == 3


@pytest.mark.parametrize("extra, message", [
    (["--preset", "small"], "the preset must be one of"),
    (["--preset", PRESET, "--itm-weights", "enc.pt"], "itm_weights would replace"),
    (["--preset", PRESET, "--clip-bpe", "bpe.txt.gz"], "clip_bpe is for GR-GAN's ITM"),
    (["--preset", "grgan-coco"], "give clip_bpe (--clip-bpe"),
])
def test_train_refuses_init_from_combinations(published, extra, message, tmp_path, capsys):
    argv = ["--init-from", ",".join(init_files(published)), "--data-dir",
            str(published["data"]), "--out", str(tmp_path / "r"), *extra]
    one_line_error(*call(train_main, argv, capsys), message)
    assert not (tmp_path / "r").exists()


def test_train_init_from_a_file_that_does_not_fit(published, tmp_path, capsys):
    argv = ["--preset", PRESET, "--data-dir", str(published["data"]), "--init-from",
            str(published["files"]["generator"]), "--out", str(tmp_path / "r"),
            "--batch-size", "2"]
    # the full-size preset: the test-size generator file lists its keys and shapes
    one_line_error(*call(train_main, argv, capsys), "the generator weights do not fit preset "
                   f"'{PRESET}'", "shape: ca_net.fc.weight")

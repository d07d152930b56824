"""python -m t2i_fast.evaluate on a tiny run with tiny random-weight embedders saved to files:
every metric against a direct computation, the attribute classifier, and the error messages."""
import contextlib
import gzip
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from run_helpers import read_only

from t2i_fast import evaluate as ev
from t2i_fast.evaluate import cli as evaluate_cli
from t2i_fast.data.base import CaptionDataset
from t2i_fast.data.shapes import ShapesDataset, caption_attributes
from t2i_fast.metrics import (InceptionFID, cmd_score, fid_from_features, fold_scores,
                              gaussian_stats, image_stats, inception_score, r_precision,
                              sample_mismatched, sentence_stats)
from t2i_fast.metrics import attributes as attr
from t2i_fast.metrics import inception as inception_module
from t2i_fast.metrics.clip_tokenizer import ClipTokenizer
from t2i_fast.metrics.clip_vit import ClipViT
from t2i_fast.models import configure, text_features
from t2i_fast.runs import LoadedRun, load_run
from t2i_fast.train import Run, train_config

N, NUM_REAL, SEED, BATCH = 20, 4, 3, 8
MERGES = ["a </w>", "r e", "re d</w>", "c i", "ci r", "cir c", "l e</w>", "t h", "th e</w>",
          "o n</w>", "s q", "l e", "le f", "lef t</w>"]


def randomize_inception(net, seed=0):
    """He-initialised convs and BatchNorm statistics that keep activations O(1); a classifier
    large enough that the Inception Score of near-alike images moves off 1, and a bias large
    enough that IS changes if the bias were wrongly added."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               * math.sqrt(2.0 / m.weight[0].numel()))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=gen))
        net.fc.bias.copy_(5 * torch.randn(net.fc.bias.shape, generator=gen))
    return net.eval()


def small_clip_files(folder):
    """A random ViT CLIP small enough for seconds and BPE merges for its tokenizer, saved in
    `folder`: (clip.pt, bpe.txt.gz)."""
    bpe = folder / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *MERGES]) + "\n")
    torch.manual_seed(0)
    clip = ClipViT(embed_dim=24, image_resolution=32, vision_layers=1, vision_width=64,
                   vision_patch_size=8, context_length=32, vocab_size=512 + len(MERGES) + 2,
                   transformer_width=64, transformer_layers=1)
    torch.save(clip.state_dict(), folder / "clip.pt")
    return folder / "clip.pt", bpe


# Making it takes about a minute on 2 CPU cores: the tests that use it are marked slow.
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny run, embedder files, a quickly trained attribute classifier in the cache.

    The FID Inception reads 75x75 inputs here (its smallest) instead of 299x299: 16x less
    work for the pipeline and the direct computation alike; test_metrics covers 299."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception_module, "INPUT_SIZE", 75)
        yield from _env(tmp_path_factory)
    torch.set_num_threads(threads)


def _env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    run_dir = root / "run"
    cfg = train_config("tiny", steps=2, itm_steps=2, dataset_size=32, batch_size=4,
                       num_samples=4, threads=1, out=str(run_dir))
    Run(cfg, run_dir, quiet=True).train()
    _, bpe = small_clip_files(root)
    inception = randomize_inception(InceptionFID())
    torch.save(inception.state_dict(), root / "pt_inception-2015-12-05-6726825d.pth")
    cache = root / "cache"
    net, info = attr.train_classifier(64, num_train=1000, steps=120, num_test=200, width=8)
    attr.save_classifier(cache / ev.classifier_name(64), net, info)
    yield dict(root=root, run=run_dir, bpe=bpe, clip=root / "clip.pt", cache=cache,
               inception=root / "pt_inception-2015-12-05-6726825d.pth")


def cli(env, *extra, metrics=None, out="report.json"):
    args = ["--run", str(env["run"]), "--num-images", str(N), "--num-real", str(NUM_REAL),
            "--seed", str(SEED), "--batch-size", str(BATCH), "--cache", str(env["cache"]),
            "--out", str(env["root"] / out), *extra]
    if metrics:
        args += ["--metrics", metrics]
    ev.main(args)
    return json.loads((env["root"] / out).read_text())


@pytest.fixture(scope="module")
def report(env):
    return cli(env, "--clip-weights", str(env["clip"]), "--clip-bpe", str(env["bpe"]),
               "--inception-weights", str(env["inception"]))


@pytest.fixture(scope="module")
def loaded(env):
    """The run, its test split, the evaluated captions and the generated images."""
    run = load_run(env["run"])
    ds = run.dataset("test")
    caps = ev.select_captions(ds, N)
    images = run.generate(caps.ids, caps.lens, seed=SEED)
    return run, ds, caps, images


# --------------------------------------------------------------------------------------------
# The report and the generated images
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_report_has_every_metric(report):
    assert list(report["metrics"]) == list(ev.METRICS)          # the default: all five
    m = report["metrics"]
    assert 0 <= m["r_precision"]["mean"] <= 1 and m["r_precision"]["trials"] == N
    assert m["cmd"]["embedder"] == "clip" and m["cmd"]["comparable"] is True
    assert m["fid"]["value"] > 0 and m["is"]["mean"] > 1.0001
    assert report["checkpoint_step"] == 2 and report["num_images"] == N
    assert report["num_real"] == NUM_REAL and report["split_size"] == 1000
    for key in ("generation", "r_precision", "cmd", "fid+is", "attributes", "total"):
        assert report["timings_s"][key] >= 0, key


@pytest.mark.slow
def test_default_report_path_and_table(env, capsys):
    ev.main(["--run", str(env["run"]), "--num-images", str(N), "--metrics", "r_precision",
             "--cache", str(env["cache"])])
    out = capsys.readouterr().out
    assert "r_precision" in out and " %" in out
    stored = json.loads((env["run"] / "eval" / "report_0000002.json").read_text())
    assert stored["settings"]["metrics"] == ["r_precision"]


@pytest.mark.slow
def test_captions_follow_the_dataset_and_loop_the_split(loaded):
    run, ds, _, _ = loaded
    small = ShapesDataset("test", image_size=64, max_words=ds.max_words, size=3)
    caps = ev.select_captions(small, 7)             # 3 images, passes at epochs 0, 1, 2
    assert caps.image.tolist() == [0, 1, 2, 0, 1, 2, 0] and small.epoch == 0
    for row, (index, epoch) in enumerate([(i % 3, i // 3) for i in range(7)]):
        small.set_epoch(epoch)
        item = small.item(index)
        assert torch.equal(caps.ids[row], item["caption"]) and caps.lens[row] == item["cap_len"]
        assert caps.texts[row] == small.vocab.decode(item["caption"])


@pytest.mark.slow
def test_generated_images_equal_run_generate(loaded):
    run, _, caps, images = loaded
    parts = [x for _, x in ev.generate_batches(run, caps, SEED, batch_size=7)]
    torch.testing.assert_close(torch.cat(parts), images, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Each metric against a direct computation on the same images
# --------------------------------------------------------------------------------------------

def encode_sentences(run, ids, lens):
    return text_features(run.models, run.codec.encode(ids, lens), lens)[1]


@pytest.mark.slow
def test_r_precision_equals_independent_computation(report, loaded):
    run, ds, caps, images = loaded
    cpi = ds.captions_per_image
    pool = [ds.fit_caption(c) for j in range(len(ds)) for c in ds.captions(j)]
    table = encode_sentences(run, torch.stack([p[0] for p in pool]),
                             torch.tensor([p[1] for p in pool]))
    rng = np.random.default_rng(SEED)
    classes = np.array([ds.class_id(j) for j in range(len(ds))])
    mismatched = sample_mismatched(classes, 99, rng, query_class_ids=classes[caps.image],
                                   captions_per_image=cpi)
    assert (classes[mismatched // cpi] != classes[caps.image][:, None]).all()
    args = ev.build_parser().parse_args(["--run", "unused", "--seed", str(SEED)])
    metric = ev.RPrecision()         # the pipeline's draw: the same captions
    metric.prepare(ev.Context(run, ds, caps, ev.load_matcher(run, None), args, "unused"))
    assert torch.equal(metric.mismatched, torch.from_numpy(mismatched))
    codes = run.models.image_encoder.encode_image(images)[1]
    own = encode_sentences(run, caps.ids, caps.lens)
    mean, std = r_precision(codes, own, table[torch.from_numpy(mismatched)], folds=10,
                            generator=rng)
    got = report["metrics"]["r_precision"]
    assert got["mean"] == pytest.approx(mean, abs=1e-12)
    assert got["std"] == pytest.approx(std, abs=1e-12)


@pytest.mark.slow
def test_r_precision_folds_with_known_hits(env, loaded, monkeypatch):
    """Image codes replaced by +-(own sentence embedding): rows with + are hits (cosine 1),
    rows with - misses (cosine -1), so the score is DM-GAN's folds over a known hit pattern."""
    run, ds, _, _ = loaded
    n = 100
    caps = ev.select_captions(ds, n)
    own = encode_sentences(run, caps.ids, caps.lens)
    hits = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.6
    done = []

    def images(self, x):
        rows = slice(sum(done), sum(done) + len(x))
        done.append(len(x))
        return torch.where(hits[rows, None], own[rows], -own[rows])
    monkeypatch.setattr(ev.Matcher, "images", images)
    got = cli(env, "--num-images", str(n), metrics="r_precision",
              out="known.json")["metrics"]["r_precision"]
    rng = np.random.default_rng(SEED)
    classes = np.array([ds.class_id(j) for j in range(len(ds))])
    sample_mismatched(classes, 99, rng, query_class_ids=classes[caps.image],
                      captions_per_image=ds.captions_per_image)
    mean, std = fold_scores(hits.numpy(), folds=10, generator=rng)
    assert got["hit_rate"] == pytest.approx(float(hits.float().mean()))
    assert (got["mean"], got["std"]) == pytest.approx((mean, std), abs=1e-12)


@pytest.mark.slow
def test_matcher_and_backend_flags(env, report, monkeypatch):
    calls = []

    def spy(module, **options):
        calls.append((type(module).__name__, options))
        return configure(module, **options)
    monkeypatch.setattr(evaluate_cli, "configure", spy)
    again = cli(env, "--matcher", str(env["run"] / "encoders.pt"), "--backend", "reference",
                metrics="r_precision", out="matcher.json")
    assert calls == [("G_NET", {"impl": "reference"})]
    assert again["metrics"]["r_precision"]["matcher"] == str(env["run"] / "encoders.pt")
    assert again["metrics"]["r_precision"]["hit_rate"] == \
        report["metrics"]["r_precision"]["hit_rate"]


def real_test_images(ds, count):
    return torch.stack([ds.item(i)["image"] for i in range(count)])


@pytest.mark.slow
def test_cmd_equals_direct_computation(env, report, loaded):
    run, ds, caps, images = loaded
    clip = ClipViT.from_file(env["clip"])
    tok = ClipTokenizer(env["bpe"])
    texts = [t for i in range(NUM_REAL) for t in ds.describe(i)]         # every caption, whole
    sent = clip.encode_text(tok.tokenize(texts, context_length=32))
    real = clip.encode_image(real_test_images(ds, NUM_REAL), input_range=(-1, 1))
    fake = clip.encode_image(images, input_range=(-1, 1))
    want = cmd_score(image_stats(real), fake, sentence_stats(sent))
    got = report["metrics"]["cmd"]
    for key in ("cmd", "itdis", "fd_real_fake", "fd_real_sent"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key


def fid_of_few(real, fake):
    """The FID of two feature sets with far fewer rows than columns, without D x D matrices:
    with A the centred features and S = A^T A / (n - 1), the nonzero eigenvalues of S1 S2 are
    the squared singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1)), so Tr (S1 S2)^(1/2) is
    that matrix's nuclear norm."""
    real, fake = real.double(), fake.double()
    a1, a2 = real - real.mean(0), fake - fake.mean(0)
    c1, c2 = len(real) - 1, len(fake) - 1
    cross = torch.linalg.svdvals(a1 @ a2.T).sum() / math.sqrt(c1 * c2)
    means = ((real.mean(0) - fake.mean(0)) ** 2).sum()
    return float(means + (a1 ** 2).sum() / c1 + (a2 ** 2).sum() / c2 - 2 * cross)


def test_fid_of_few_is_the_frechet_distance():
    real, fake = torch.randn(5, 40), torch.randn(9, 40) + 0.3
    assert fid_of_few(real, fake) == pytest.approx(
        fid_from_features(gaussian_stats(real), fake), rel=1e-9)


@pytest.mark.slow
def test_fid_and_is_equal_direct_computation(env, report, loaded):
    run, ds, caps, images = loaded
    net = InceptionFID.from_file(env["inception"])
    with torch.no_grad():
        real_pool3, _ = net(real_test_images(ds, NUM_REAL))
        pool3, logits = (torch.cat(parts) for parts in zip(*[net(x) for x in images.split(8)]))
    fid = fid_of_few(real_pool3, pool3)
    is_mean, is_std = inception_score(logits, splits=10)
    assert report["metrics"]["fid"]["value"] == pytest.approx(fid, rel=1e-5)
    assert report["metrics"]["is"]["mean"] == pytest.approx(is_mean, rel=1e-4)
    assert report["metrics"]["is"]["std"] == pytest.approx(is_std, rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_fid_resize_clean_equals_direct_computation(env, report, loaded):
    """--fid-resize clean sends the same images through clean-fid's resize for FID and IS, has
    its own real-statistics cache entry, and is named in the report and the table."""
    run, ds, caps, images = loaded
    got = cli(env, "--inception-weights", str(env["inception"]), "--fid-resize", "clean",
              metrics="fid,is", out="clean.json")["metrics"]
    net = InceptionFID.from_file(env["inception"])
    with torch.no_grad():
        real_pool3, _ = net(real_test_images(ds, NUM_REAL), resize="clean")
        pool3, logits = (torch.cat(parts) for parts in
                         zip(*[net(x, resize="clean") for x in images.split(8)]))
    assert report["metrics"]["fid"]["resize"] == report["metrics"]["is"]["resize"] == "pytorch-fid"
    assert got["fid"]["resize"] == got["is"]["resize"] == "clean"
    assert got["fid"]["real_stats_cached"] is False
    assert got["fid"]["value"] == pytest.approx(fid_of_few(real_pool3, pool3), rel=1e-5)
    assert got["fid"]["value"] != pytest.approx(report["metrics"]["fid"]["value"], rel=1e-3)
    assert got["is"]["mean"] == pytest.approx(inception_score(logits, splits=10)[0], rel=1e-4)
    table = evaluate_cli.format_table({**report, "metrics": got})
    assert "resize clean" in table


@pytest.mark.slow
def test_cmd_real_statistics_are_cached(env, report):
    again = cli(env, "--clip-weights", str(env["clip"]), "--clip-bpe", str(env["bpe"]),
                metrics="cmd", out="cached.json")
    assert report["metrics"]["cmd"]["real_stats_cached"] is False
    assert again["metrics"]["cmd"]["real_stats_cached"] is True
    assert again["metrics"]["cmd"]["cmd"] == pytest.approx(report["metrics"]["cmd"]["cmd"],
                                                           rel=1e-9)
    assert len(list(env["cache"].glob("shapes-test-s64-clip-*.npz"))) == 2


@pytest.mark.slow
def test_cmd_in_the_run_embedding_space(env):
    got = cli(env, "--embedder", "run", metrics="cmd", out="cmd_run.json")["metrics"]["cmd"]
    assert got["embedder"] == "run" and got["comparable"] is False and "note" in got
    assert math.isfinite(got["cmd"])


# --------------------------------------------------------------------------------------------
# Attribute accuracy
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_attributes_real_images_high_generated_lower(report, loaded, env):
    _, ds, caps, images = loaded
    got = report["metrics"]["attributes"]
    assert got["real"]["mean"] >= 0.9                       # the classifier sees real images
    assert got["generated"]["mean"] < got["real"]["mean"] - 0.25    # a 2-step run does not
    net, _ = attr.load_classifier(env["cache"] / ev.classifier_name(64))
    direct = attr.attribute_accuracy(net, images, caps.texts)
    assert direct == got["generated"]
    real = attr.attribute_accuracy(net, real_test_images(ds, N), caps.texts)
    assert real == got["real"]
    assert got["classifier"]["trained_now"] is False


def test_attribute_scores_count_only_named_attributes():
    labels = torch.tensor([[0, 1, -1, 2], [3, -1, 1, -1], [5, 2, 0, 4]])
    preds = torch.tensor([[0, 0, 1, 2], [3, 1, 0, 0], [1, 2, 0, 4]])
    got = attr.score_predictions(preds, labels)
    assert got["count"] == {"colour": 3, "shape": 2, "size": 2, "position": 2}
    assert got["accuracy"] == {"colour": 2 / 3, "shape": 0.5, "size": 0.5, "position": 1.0}
    assert got["mean"] == pytest.approx((2 / 3 + 0.5 + 0.5 + 1.0) / 4)
    assert got["all_named"] == pytest.approx(0.0)      # every row has one mistake
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        attr.score_predictions(preds[:, :3], labels[:, :3])


def test_caption_labels_follow_the_captions():
    ds = ShapesDataset("test", size=5)
    for i in range(5):
        truth = ds.attributes(i)
        for text, row in zip(ds.describe(i), attr.caption_labels(ds.describe(i))):
            named = caption_attributes(text)
            for k, name in enumerate(attr.NAMES):
                assert row[k] == (-1 if named[name] is None else truth[name])


@pytest.mark.slow
def test_classifier_checkpoint_roundtrip_and_errors(env, tmp_path):
    path = env["cache"] / ev.classifier_name(64)
    net, info, trained = attr.load_or_train(path, 64)
    assert trained is False and info["train"]["steps"] == 120
    copy_path = tmp_path / "copy.pt"
    attr.save_classifier(copy_path, net, info)
    again, _ = attr.load_classifier(copy_path)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    assert torch.equal(again.predict(x), net.predict(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*corrupt"):
        attr.load_classifier(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt.*save_classifier"):
        attr.load_classifier(tmp_path / "foreign.pt")


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------

def refused(argv, match):
    """python -m t2i_fast.evaluate `argv` (in this process) exits with 2 and one line on stderr
    matching `match`."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = ev.main(argv)
    err = err.getvalue()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    assert re.search(match, err), err


def fails(env, *args, match):
    refused(["--run", str(env["run"]), "--num-images", str(N), "--num-real", str(NUM_REAL),
             "--cache", str(env["cache"]), "--out", str(env["root"] / "x.json"), *args], match)


@pytest.mark.slow
def test_errors_for_weight_files(env, tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00garbage")
    fails(env, "--metrics", "fid", "--inception-weights", str(tmp_path / "nope.pth"),
          match=r"--inception-weights \S*nope.pth: file not found")
    fails(env, "--metrics", "is", "--inception-weights", str(bad),
          match=r"--inception-weights \S*corrupt.pth: FID Inception weights .* not a readable")
    fails(env, "--metrics", "cmd", "--clip-weights", str(bad), "--clip-bpe", str(env["bpe"]),
          match=r"--clip-weights \S*corrupt.pth: cannot read CLIP checkpoint")
    fails(env, "--metrics", "cmd", "--clip-weights", str(env["clip"]), "--clip-bpe", str(bad),
          match=r"--clip-bpe \S*corrupt.pth: cannot read CLIP BPE merges file")
    fails(env, "--metrics", "r_precision", "--matcher", str(bad),
          match=r"--matcher \S*corrupt.pth: \S*corrupt.pth is not a t2i_fast checkpoint")
    torch.save({"encoder": {}}, tmp_path / "foreign.pt")
    fails(env, "--metrics", "r_precision", "--matcher", str(tmp_path / "foreign.pt"),
          match=r"--matcher \S*foreign.pt: expected \{'text_encoder'")


@pytest.mark.slow
def test_errors_for_missing_flags_and_bad_requests(env):
    fails(env, "--metrics", "cmd", match=r"cmd needs --clip-weights .* or --embedder run")
    fails(env, "--metrics", "cmd", "--clip-weights", str(env["clip"]),
          match=r"cmd needs --clip-bpe")
    fails(env, "--metrics", "fid,is", match=r"fid,is need --inception-weights")
    fails(env, "--metrics", "r_precision,bleu", match=r"unknown metric\(s\) \['bleu'\]")
    fails(env, "--metrics", "r_precision", "--num-images", "5",
          match=r"r_precision needs --num-images >= 20")
    fails(env, "--metrics", "cmd", "--embedder", "run", "--num-real", "2000",
          match=r"--num-real 2000 exceeds the 1000 test images")
    refused(["--run", str(env["root"])], r"--run \S*: .*not a run directory")
    fails(env, "--metrics", "r_precision", "--device", "cuda:99", match=r"--device cuda:99")
    fails(env, "--metrics", "r_precision", "--num-images", "2.5",
          match=r"--num-images: invalid int value")
    fails(env, "--metrics", "r_precision", "--device", "cpu", "--backend", "cuda",
          match=r"backend 'cuda' cannot run on cpu")


@pytest.mark.slow
def test_error_for_attributes_on_another_dataset(env, tmp_path):
    other = tmp_path / "folder_run"
    shutil.copytree(env["run"], other, ignore=shutil.ignore_patterns("eval*", "samples"))
    stored = json.loads((other / "config.json").read_text())
    stored["train"].update(dataset="folder", data_dir=str(tmp_path / "images"))
    (other / "config.json").write_text(json.dumps(stored))
    refused(["--run", str(other), "--metrics", "attributes"],
            "attributes needs the built-in shapes dataset; this run uses 'folder'")


class EmptySplit(CaptionDataset):
    image_size = 64

    def __len__(self):
        return 0


@pytest.mark.slow
def test_error_for_an_empty_test_split(env, monkeypatch):
    monkeypatch.setattr(LoadedRun, "dataset", lambda self, split="test": EmptySplit())
    fails(env, "--metrics", "r_precision", match=r"test split of dataset 'shapes' is empty")


@pytest.mark.slow
def test_a_run_without_readable_encoders_is_refused(env, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(env["run"], copy, ignore=shutil.ignore_patterns("eval*", "samples"))
    (copy / "encoders.pt").unlink()
    refused(["--run", str(copy), "--metrics", "r_precision", "--out", str(tmp_path / "r.json")],
            rf"--run \S*: {re.escape(str(copy / 'encoders.pt'))} is missing")
    (copy / "encoders.pt").write_bytes(b"\x00" * 64)
    refused(["--run", str(copy), "--metrics", "r_precision", "--out", str(tmp_path / "r.json")],
            r"encoders.pt is not a t2i_fast checkpoint")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_a_read_only_run_directory_is_refused_before_computing(env, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(env["run"], copy, ignore=shutil.ignore_patterns("eval*", "samples"))
    with read_only(copy):
        with monkeypatch.context() as patch:
            def computed(*args):
                raise AssertionError("images were generated before the output check")
            patch.setattr(evaluate_cli, "generate_batches", computed)
            refused(["--run", str(copy), "--metrics", "r_precision,attributes",
                     "--num-images", str(N)],
                    rf"cannot create the folder {re.escape(str(copy))}/eval: .*; give --out PATH "
                    r"and --cache DIR in a writable place")
        out = tmp_path / "report.json"
        assert ev.main(["--run", str(copy), "--metrics", "r_precision", "--num-images", str(N),
                        "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["r_precision"]["trials"] == N
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

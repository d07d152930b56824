"""python -m t2i_fast.train: run directory, exact resume, atomic checkpoints, the CLI.
(Run-directory ownership, kill -9 and the error messages are in test_run_dir.py and
test_cli_errors.py.)"""
import json
import os
import subprocess
import sys

import pytest
import torch
from run_helpers import assert_states_equal

from t2i_fast.errors import WeightsError
from t2i_fast.fileio import atomic_write
from t2i_fast.train import Run, train_config
from t2i_fast.train.__main__ import main as train_main
from t2i_fast.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from t2i_fast.train.data import CaptionCodec, EpochBatches
from t2i_fast.models import get_config
from t2i_fast.data.vocab import Vocabulary


def tiny(tmp_path, name="run", **overrides):
    values = dict(itm_steps=3, steps=6, ckpt_every=2, sample_every=3, log_every=2,
                  dataset_size=32, batch_size=4, num_samples=4, keep_checkpoints=5, threads=1)
    values.update(overrides)
    cfg = train_config("tiny", **values, out=str(tmp_path / name))
    return cfg, tmp_path / name


def test_run_directory_contents(tmp_path):
    cfg, out = tiny(tmp_path)
    Run(cfg, out, quiet=True).train()
    stored = json.loads((out / "config.json").read_text())
    assert stored["train"]["steps"] == 6 and stored["model"]["name"] == "tiny"
    assert stored["vocab"][:3] == ["a", "there", "is"]
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]
    assert sorted(p.name for p in (out / "samples").iterdir()) == \
        ["step_0000003.png", "step_0000006.png"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    gan = [r for r in lines if r["phase"] == "gan"]
    assert [r["step"] for r in gan] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["g_loss"])) for r in gan)
    assert {"d_loss0", "d_loss1", "d_loss2", "kl", "it_s"} <= set(gan[0])
    state = load_checkpoint(checkpoint_path(out, 6))
    assert state["step"] == 6 and len(state["rng"]) == 1
    assert set(load_checkpoint(out / "encoders.pt")) == {"text_encoder"}     # one ITM
    assert (out / ".lock").read_text() == ""                # released at a clean end


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg, straight = tiny(tmp_path, "straight")
    Run(cfg, straight, quiet=True).train()

    cfg_b, broken = tiny(tmp_path, "broken")

    def crash(run, step):            # dies after step 5, one step past the last checkpoint
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg_b, broken, quiet=True).train(hooks=[crash])
    assert [s for s, _ in list_checkpoints(broken)] == [2, 4]
    assert train_main(["--resume", str(broken)]) == 0
    assert_states_equal(load_checkpoint(checkpoint_path(straight, 6)),
                        load_checkpoint(checkpoint_path(broken, 6)))
    assert _gan_steps(broken) == _gan_steps(straight) == [2, 4, 6]      # no step logged twice


def test_projection_heads_resume_to_the_same_weights(tmp_path):
    projection = {"d_cond_head": "projection"}
    cfg, straight = tiny(tmp_path, "straight", model=projection)
    Run(cfg, straight, quiet=True).train()
    cfg_b, broken = tiny(tmp_path, "broken", model=projection)

    def crash(run, step):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        Run(cfg_b, broken, quiet=True).train(hooks=[crash])
    assert train_main(["--resume", str(broken)]) == 0
    final = load_checkpoint(checkpoint_path(straight, 6))
    assert_states_equal(final, load_checkpoint(checkpoint_path(broken, 6)))
    assert [("COND_DNET.embed.weight" in d, "COND_DNET.jointConv.0.module.weight_bar" in d)
            for d in final["discriminators"]] == [(True, False)] * 3    # COND_DNET always built


def _gan_steps(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if '"gan"' in x]


def test_corrupt_checkpoint_is_reported_and_the_previous_one_resumes(tmp_path, capsys):
    cfg, out = tiny(tmp_path, steps=4)
    Run(cfg, out, quiet=True).train()
    newest = checkpoint_path(out, 4)
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])               # truncated by a crash or a copy
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_checkpoint(newest)
    assert train_main(["--resume", str(out), "--steps", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and err.count("\n") == 1
    assert "truncated or corrupt" in err and "older checkpoint" in err
    assert train_main(["--resume", str(checkpoint_path(out, 2)), "--steps", "6"]) == 0
    assert load_checkpoint(checkpoint_path(out, 6))["step"] == 6
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]       # the corrupt 4 rewritten
    assert _gan_steps(out) == [2, 4, 6]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]          # no temporary file left behind


def test_dry_run_prints_exactly_the_config_json_of_the_run(tmp_path, capsys):
    argv = ["--preset", "tiny", "--steps", "2", "--itm-steps", "0", "--set", "r_num=2",
            "--set", "ema_decay=0.9", "--dataset-size", "8", "--threads", "1",
            "--out", str(tmp_path / "run")]
    assert train_main(["--dry-run"] + argv) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "run").exists()                  # a dry run writes nothing
    assert train_main(argv) == 0
    assert printed == (tmp_path / "run" / "config.json").read_text()
    stored = json.loads(printed)
    assert stored["model"]["vocab_size"] == len(stored["vocab"]) + 3     # <end>, start, end
    assert stored["model"]["r_num"] == 2 and stored["train"]["ema_decay"] == 0.9
    trainer = ("batch_size", "optimizer", "lr_g", "lr_d", "betas", "ema_decay", "itm_betas")
    assert all(k in stored["train"] and k not in stored["model"] for k in trainer)
    capsys.readouterr()
    assert train_main(["--dry-run", "--resume", str(tmp_path / "run"), "--steps", "5"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["train"]["steps"] == 5 and resumed["model"] == stored["model"]


def test_training_values_come_from_train_config_alone(tmp_path):
    """betas, learning rates, the phase-1 Adam and the EMA decay are read from TrainConfig."""
    cfg, out = tiny(tmp_path, steps=1, itm_steps=1, ckpt_every=1, betas=(0.2, 0.9), lr_g=3e-4,
                    lr_d=1e-4, itm_betas=(0.3, 0.8), ema_decay=0.5, optimizer="adamax")
    run = Run(cfg, out, quiet=True)
    assert isinstance(run.opt_g, torch.optim.Adamax)
    assert run.opt_g.param_groups[0]["betas"] == (0.2, 0.9)
    assert run.opt_g.param_groups[0]["lr"] == 3e-4
    assert all(o.param_groups[0]["lr"] == 1e-4 for o in run.opt_d)
    seen = {}
    original = torch.optim.Adam.__init__

    def spy(self, params, lr, betas, **kw):
        seen.update(lr=lr, betas=betas)
        original(self, params, lr=lr, betas=betas, **kw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "__init__", spy)
        g0 = [p.detach().clone() for p in run.G.parameters()]
        run.train()
    assert seen == {"lr": cfg.itm_lr, "betas": (0.3, 0.8)}
    # one EMA step with decay 0.5 lands half-way between the old and the new weights
    for e, before, after in zip(run.ema, g0, run.G.parameters()):
        assert torch.allclose(e, 0.5 * before + 0.5 * after.detach(), rtol=0, atol=1e-6)


def test_epoch_batches_partition_and_resume():
    full = [b for r in range(2) for b in EpochBatches(23, 3, seed=5, epoch=1, rank=r, world=2)]
    flat = sorted(i for b in full for i in b)
    assert len(flat) == 18 and len(set(flat)) == 18          # 23 // 6 batches of 3 per rank
    ranked = list(EpochBatches(23, 3, seed=5, epoch=1, rank=1, world=2))
    assert list(EpochBatches(23, 3, seed=5, epoch=1, rank=1, world=2, start=2)) == ranked[2:]
    assert list(EpochBatches(23, 3, seed=5, epoch=2)) != list(EpochBatches(23, 3, seed=5,
                                                                           epoch=1))
    with pytest.raises(ValueError, match="smaller than one batch"):
        EpochBatches(5, 3, seed=0, epoch=0, world=2)


def test_caption_codec_clip_tokens():
    cfg = get_config("tiny", vocab_size=12)
    vocab = Vocabulary.from_words(["a", "red", "circle"])
    tokens, caption, lens = CaptionCodec(cfg, vocab).encode_text(["a red circle", "circle"])
    assert tokens[0, :5].tolist() == [10, 1, 2, 3, 11] and tokens[1, :3].tolist() == [10, 3, 11]
    assert (tokens[:, 5:] == 0).all() and lens.tolist() == [3, 1]
    with pytest.raises(ValueError, match="vocab_size"):
        CaptionCodec(get_config("tiny", vocab_size=5), vocab)


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_in_sync(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", worker, str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "replicas in sync" in proc.stdout
    state = load_checkpoint(checkpoint_path(tmp_path / "ddp", 4))
    assert len(state["rng"]) == 2
    gan = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
           if '"gan"' in x]
    assert [r["step"] for r in gan] == [2, 4]               # rank 0 alone writes the log


def test_published_clip_weights_load_and_stay_frozen(tmp_path):
    import gzip
    from t2i_fast.models import ITM
    from t2i_fast.metrics.clip_tokenizer import ClipTokenizer
    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:       # CLIP's format: header + merges
        f.write("#version: 0.2\nc i\nci r\nr e\nd</w> e\n")
    vocab_size = ClipTokenizer(bpe).vocab_size
    model = {"vocab_size": vocab_size, "freeze_clip": True}
    torch.manual_seed(11)
    clip = ITM.from_config(get_config("tiny", **model)).model.state_dict()
    torch.save(clip, tmp_path / "clip.pt")
    cfg, out = tiny(tmp_path, steps=2, itm_steps=2, model=model,
                    clip_weights=str(tmp_path / "clip.pt"), clip_bpe=str(bpe))
    run = Run(cfg, out, quiet=True)
    tokens = run.codec.encode(*_one_caption(run))
    assert tokens[0, 0] == vocab_size - 2 and vocab_size - 1 in tokens[0].tolist()
    run.train()
    trained = load_checkpoint(out / "encoders.pt")["text_encoder"]
    for key, value in clip.items():
        assert torch.equal(trained["model." + key], value), key      # frozen CLIP
    with pytest.raises(ValueError, match="clip_bpe"):
        tiny(tmp_path, clip_weights=str(tmp_path / "clip.pt"))


def _one_caption(run):
    item = run.train_set.item(0, caption_index=0)
    return item["caption"][None], torch.tensor([item["cap_len"]])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    cfg, out = tiny(tmp_path, steps=2, itm_steps=1, precision=precision, ckpt_every=2)
    Run(cfg, out, quiet=True).train()
    state = load_checkpoint(checkpoint_path(out, 2))
    assert all(torch.isfinite(t).all() for t in state["ema"])

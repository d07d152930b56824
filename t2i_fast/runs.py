"""A finished (or running) training run, loaded for sampling and evaluation.

    run = load_run("runs/small-20261123-101500")       # newest checkpoint, EMA generator
    images = run.generate_text(["a red circle on the left"], seed=0)     # (1, 3, S, S)
    images = run.generate(caption_ids, cap_lens)                          # dataset word ids

The generator carries the EMA weights and the checkpoint's BN buffers (upstream's sampling
model) and runs in eval mode; the encoders are the run's (encoders.pt).
"""
import json
from pathlib import Path

import torch

from t2i_fast.data.vocab import Vocabulary
from t2i_fast.models import Config, build_models, text_features
from t2i_fast.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from t2i_fast.train.config import TrainConfig
from t2i_fast.train.data import build_dataset, make_codec


class LoadedRun:
    def __init__(self, run_dir, train_cfg, model_cfg, vocab, models, step, device):
        self.dir, self.train_cfg, self.model_cfg = Path(run_dir), train_cfg, model_cfg
        self.vocab, self.models, self.step, self.device = vocab, models, step, device
        self.codec = make_codec(train_cfg, model_cfg, vocab)

    @property
    def generator(self):
        return self.models.generator

    def dataset(self, split="test"):
        ds = build_dataset(self.train_cfg, self.model_cfg, split)
        ds.vocab = self.vocab
        return ds

    @torch.no_grad()
    def encode(self, caption, cap_len):
        """Dataset word ids (B, L) and lengths (B,) -> words, sentence, mask, cap_lens."""
        tokens = self.codec.encode(caption, cap_len).to(self.device)
        return text_features(self.models, tokens, torch.as_tensor(cap_len).to(self.device))

    def draw_noise(self, n, seed):
        """z (n, z_dim) and CA noise (n, condition_dim) from a generator seeded with `seed`
        (all z, then all CA noise: image i's noise does not depend on batching)."""
        g = torch.Generator().manual_seed(int(seed))
        cfg = self.model_cfg
        return (torch.randn(n, cfg.z_dim, generator=g),
                torch.randn(n, cfg.condition_dim, generator=g))

    @torch.no_grad()
    def generate_batches(self, caption, cap_len, seed=0, batch_size=64):
        """Yields (rows slice, every stage's images on the run's device) for dataset word ids
        caption (B, L) and cap_len (B,), with the noise of draw_noise(B, seed)."""
        caption, cap_len = torch.as_tensor(caption), torch.as_tensor(cap_len)
        if caption.ndim != 2 or cap_len.shape != caption.shape[:1]:
            raise ValueError(f"caption must be (B, L) and cap_len (B,), got "
                             f"{tuple(caption.shape)} and {tuple(cap_len.shape)}")
        z, noise = self.draw_noise(caption.shape[0], seed)
        for i in range(0, caption.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            words, sent, mask, _ = self.encode(caption[sl], cap_len[sl])
            images, _, _, _ = self.generator(z[sl].to(self.device), sent, words, mask,
                                             ca_noise=noise[sl].to(self.device))
            yield sl, images

    def generate(self, caption, cap_len, seed=0, batch_size=64, all_stages=False):
        """Images (B, 3, S, S) in [-1, 1] on the CPU for dataset word ids (see
        generate_batches); all_stages: every stage's images."""
        out = [[im.float().cpu() for im in images]
               for _, images in self.generate_batches(caption, cap_len, seed, batch_size)]
        stages = [torch.cat(parts) for parts in zip(*out)]
        return stages if all_stages else stages[-1]

    def generate_text(self, texts, seed=0, batch_size=64):
        """Images for captions given as text (unknown words raise KeyError naming them)."""
        _, caption, cap_len = self.codec.encode_text(texts)
        return self.generate(caption, cap_len, seed=seed, batch_size=batch_size)


def load_run(run_dir, device="cpu", checkpoint=None):
    """The run in `run_dir` at its newest checkpoint (or `checkpoint`, a path)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json")
    try:
        stored = json.loads(config_path.read_text())
        train_cfg = TrainConfig.from_dict(stored["train"])
        model_cfg = Config.from_dict(stored["model"])
        vocab = Vocabulary.from_words(stored["vocab"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path} is not a valid run config: {e}") from e
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/step_*.pt)")
    device = torch.device(device)
    models = build_models(model_cfg, device)
    encoders = run_dir / "encoders.pt"
    source = Path(train_cfg.itm_weights) if train_cfg.itm_weights else encoders
    if source.is_file():
        try:
            models.load_encoder_state(load_checkpoint(source, device))
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{source} does not hold encoders for {config_path}: "
                                  f"{e}") from e
    state = load_checkpoint(ckpt, device)
    try:
        models.generator.load_state_dict(state["generator"])
        with torch.no_grad():
            for p, e in zip(models.generator.parameters(), state["ema"], strict=True):
                p.copy_(e)
        for d, s in zip(models.discriminators, state["discriminators"], strict=True):
            d.load_state_dict(s)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt} does not match {config_path}: {e}") from e
    for net in (models.generator, models.discriminators, models.text_encoder,
                models.image_encoder):
        net.eval()
    return LoadedRun(run_dir, train_cfg, model_cfg, vocab, models, int(state["step"]), device)

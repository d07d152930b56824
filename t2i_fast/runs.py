"""A finished (or running) training run, or published upstream weights, loaded for sampling
and evaluation.

    run = load_run("runs/small-20261123-101500")       # newest checkpoint, EMA generator
    run = load_published("dmgan-cub", "netG_epoch_800.pth", "text_encoder200.pth",
                         "data/birds")                  # vocabulary: data/birds/captions.pickle
    images = run.generate_text(["a red circle on the left"], seed=0)     # (1, 3, S, S)
    images = run.generate(caption_ids, cap_lens)                          # dataset word ids

The generator carries the EMA weights and the checkpoint's BN buffers (upstream's sampling
model) and runs in eval mode; the encoders are the run's (encoders.pt): a run without readable
encoders is refused, since random ones would read the captions as noise. Published weights
come with every upstream convention (t2i_fast.models.upstream), as do runs started from them.
"""
from pathlib import Path

import torch

from t2i_fast.data import pickles
from t2i_fast.data.vocab import Vocabulary
from t2i_fast.errors import ConfigError, DataError, DataNotFound, WeightsError
from t2i_fast.models import UPSTREAM_PRESETS, build_models, text_features, upstream_conventions
from t2i_fast.models.upstream import load_upstream
from t2i_fast.train.checkpoint import latest_checkpoint, load_checkpoint
from t2i_fast.train.config import train_config
from t2i_fast.train.data import build_dataset, make_codec
from t2i_fast.train.distributed import resolve_device
from t2i_fast.train.rundir import read_config


class LoadedRun:
    """weights: {part: path} of published weights (load_published), else None."""

    def __init__(self, run_dir, train_cfg, model_cfg, vocab, models, step, device,
                 weights=None):
        self.dir, self.train_cfg, self.model_cfg = Path(run_dir), train_cfg, model_cfg
        self.vocab, self.models, self.step, self.device = vocab, models, step, device
        self.weights = weights
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
            yield sl, self._forward(caption[sl], cap_len[sl], z[sl], noise[sl])[0]

    def _forward(self, caption, cap_len, z, noise, return_attn=False):
        """G's (images, maps, mu, logvar) for dataset word ids and the given noise."""
        words, sent, mask, _ = self.encode(caption, cap_len)
        return self.generator(z.to(self.device), sent, words, mask, return_attn=return_attn,
                              ca_noise=noise.to(self.device))

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

    @torch.no_grad()
    def generate_attention(self, text, seed=0):
        """One caption given as text -> (every stage's images (1, 3, S, S), the attention maps
        (1, T, H, W) of every refinement block, the caption's tokens (context,)), on the CPU;
        the last image equals generate_text([text], seed)'s."""
        tokens, caption, cap_len = self.codec.encode_text([text])
        z, noise = self.draw_noise(1, seed)
        images, maps, _, _ = self._forward(caption, cap_len, z, noise, return_attn=True)
        return [im.float().cpu() for im in images], [m.float().cpu() for m in maps], tokens[0]


def load_run(run_dir, device="cpu", checkpoint=None):
    """The run in `run_dir` at its newest checkpoint (or `checkpoint`, a path). User errors
    (ConfigError, WeightsError) name the file that is missing, unreadable or does not fit."""
    run_dir = Path(run_dir)
    train_cfg, model_cfg, vocab = read_config(run_dir)
    config_path = run_dir / "config.json"
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None:
        raise WeightsError(f"{run_dir} has no checkpoint yet (checkpoints/step_*.pt)")
    encoders = run_dir / "encoders.pt"
    # Runs older than encoders.pt-always kept only the path of their --itm-weights.
    source = encoders if encoders.is_file() or not train_cfg.itm_weights else \
        Path(train_cfg.itm_weights)
    if not source.is_file():
        raise WeightsError(f"{source} is missing: the run's text and image encoders are needed "
                           f"to read captions (training writes it when phase 1 ends)")
    device = resolve_device(str(device))
    encoder_state, state = load_checkpoint(source, device), load_checkpoint(ckpt, device)
    models = build_models(model_cfg, device)
    try:
        models.load_encoder_state(encoder_state)
    except (KeyError, RuntimeError) as e:
        raise WeightsError(f"{source} does not hold encoders for {config_path}: {e}") from e
    try:
        models.generator.load_state_dict(state["generator"])
        with torch.no_grad():
            for p, e in zip(models.generator.parameters(), state["ema"], strict=True):
                p.copy_(e)
        for d, s in zip(models.discriminators, state["discriminators"], strict=True):
            d.load_state_dict(s)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise WeightsError(f"checkpoint {ckpt} does not match {config_path}: {e}") from e
    if train_cfg.init_from:
        upstream_conventions(models)
    _eval(models)
    return LoadedRun(run_dir, train_cfg, model_cfg, vocab, models, int(state["step"]), device)


def _eval(models):
    for net in (models.generator, models.discriminators, models.text_encoder,
                models.image_encoder):
        net.eval()


def load_published(preset, generator, text_encoder, data_dir, image_encoder=None,
                   clip_bpe=None, device="cpu", **model):
    """Published upstream weights (t2i_fast.models.load_upstream) as a LoadedRun of `preset`
    (one of UPSTREAM_PRESETS): the dataset and the vocabulary are the AttnGAN-layout folder
    `data_dir`, whose captions.pickle must be the one the text encoder was trained with (the
    one distributed with the data: rebuilding it from text/ numbers the words differently).
    GR-GAN's ITM reads CLIP's byte-pair tokens (clip_bpe, bpe_simple_vocab_16e6.txt.gz).
    The run's folder (default output place) is the generator's path without '.pth', as
    upstream's sampling writes. model: model Config overrides (e.g. words_num=25)."""
    weights = {"generator": str(generator), "text_encoder": str(text_encoder)}
    if image_encoder is not None:
        weights["image_encoder"] = str(image_encoder)
    train_cfg = train_config(preset, data_dir=str(data_dir), clip_bpe=clip_bpe,
                             init_from=tuple(weights.values()), model=dict(model))
    captions = Path(data_dir) / "captions.pickle"
    if not captions.is_file():
        raise DataNotFound(f"{captions} not found: published text encoders need the "
                           f"vocabulary of the captions.pickle distributed with the data")
    ixtoword = pickles.load_captions(captions)[2]
    try:
        vocab = Vocabulary(ixtoword)
    except ValueError as e:
        raise DataError(f"{captions}: {e}") from e
    device = resolve_device(str(device))
    models = load_upstream(preset, **weights, device=device, **train_cfg.model)
    cfg = models.config
    if cfg.text_encoder == "rnn" and len(vocab) != cfg.vocab_size:
        raise WeightsError(f"{captions} has {len(vocab)} words but the text encoder "
                           f"{text_encoder} has {cfg.vocab_size}: use the captions.pickle the "
                           f"encoder was trained with")
    _eval(models)
    folder = Path(str(generator)[:-4] if str(generator).endswith(".pth") else
                  f"{generator}_samples")
    return LoadedRun(folder, train_cfg, cfg, vocab, models, 0, device, weights)


# --------------------------------------------------------------------------------------------
# What a command loads: --run, or published weights
# --------------------------------------------------------------------------------------------

def add_source_arguments(p, image_encoder_help=None):
    """The flags of sample and evaluate that choose a training run or published weights
    (--clip-bpe, GR-GAN's, is each command's own; --image-encoder only with its help text);
    returns the published-weights group."""
    p.add_argument("--run", help="run directory written by t2i_fast.train")
    p.add_argument("--checkpoint", help="a checkpoint file of the run (default: the newest)")
    g = p.add_argument_group("published DM-GAN / AttnGAN / GR-GAN weights (instead of --run)")
    g.add_argument("--preset", choices=UPSTREAM_PRESETS, help="the upstream model")
    g.add_argument("--generator", metavar="PATH", help="G: bird_DMGAN.pth, netG_epoch_N.pth, "
                   "bird_AttnGAN2.pth or GR-GAN's checkpoint_N.pth")
    g.add_argument("--text-encoder", metavar="PATH", help="DAMSM text_encoderN.pth or GR-GAN's "
                   "ITM_modelN.pth")
    if image_encoder_help:
        g.add_argument("--image-encoder", metavar="PATH", help=image_encoder_help)
    g.add_argument("--data-dir", metavar="PATH", help="AttnGAN-layout data folder (its "
                   "captions.pickle holds the vocabulary)")
    return g


def load_source(args, device):
    """load_run or load_published, as the flags of add_source_arguments ask; ConfigError
    naming the flags for a combination that does not say what to load."""
    published = [f"--{k.replace('_', '-')}" for k in ("preset", "generator", "text_encoder",
                                                        "image_encoder", "data_dir")
                 if getattr(args, k, None) is not None]
    if args.run is not None:
        if published:
            raise ConfigError(f"--run loads a training run; {', '.join(published)} are for "
                              f"published weights: give one or the other")
        return load_run(args.run, device=device, checkpoint=args.checkpoint)
    if not published:
        raise ConfigError("give --run RUN_DIR, or published weights with --preset, "
                          "--generator, --text-encoder and --data-dir")
    missing = [f"--{k.replace('_', '-')}" for k in ("preset", "generator", "text_encoder",
                                                      "data_dir") if getattr(args, k) is None]
    if missing:
        raise ConfigError(f"published weights need {', '.join(missing)} as well")
    if args.checkpoint is not None:
        raise ConfigError("--checkpoint picks a checkpoint of --run; published weights are "
                          "given with --generator")
    return load_published(args.preset, args.generator, args.text_encoder, args.data_dir,
                          image_encoder=getattr(args, "image_encoder", None),
                          clip_bpe=args.clip_bpe,
                          device=device)

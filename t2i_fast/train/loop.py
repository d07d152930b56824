"""The training run: phase 1 pretrains the matching encoders (ITM or DAMSM), phase 2 trains the
GAN (one update of every D, one G update, then the EMA of G) as upstream (reference §1.7).

    run = Run(train_config("tiny"), "runs/demo")
    run.train()                       # checkpoints, samples and metrics.jsonl in runs/demo

Run directory:
    config.json           {"train": TrainConfig, "model": model Config, "vocab": [words]}
    encoders.pt           the trained text / image encoders (end of phase 1)
    checkpoints/step_N.pt G, EMA, Ds, optimisers, scaler, step, RNG of every rank
    samples/step_N.png    the EMA generator on fixed test captions and noise
    metrics.jsonl         one line per log interval

Every step's data depends only on (seed, step), and the RNG states are checkpointed, so a
resumed run continues exactly as an uninterrupted one.
"""
import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from t2i_fast.grid import caption_grid
from t2i_fast.models import (build_models, d_condition, discriminator_loss, generator_loss,
                             matching_loss, text_features)
from t2i_fast.train import distributed
from t2i_fast.fileio import atomic_write
from t2i_fast.train.checkpoint import (checkpoint_path, latest_checkpoint,
                                       load_checkpoint, prune_checkpoints, save_checkpoint)
from t2i_fast.train.config import TrainConfig
from t2i_fast.train.data import EpochBatches, build_dataset, make_codec, multiscale
from t2i_fast.train.progress import MetricsLog, Progress, memory_mb


class MatchingStep(nn.Module):
    """Phase 1 loss as one module (so DDP syncs both encoders): w0 + w1 + s0 + s1."""

    def __init__(self, models):
        super().__init__()
        self.models = models
        self.text_encoder, self.image_encoder = models.text_encoder, models.image_encoder

    def forward(self, tokens, cap_len, images, class_ids):
        cfg = self.models.config
        words, sent, _, lens = text_features(self.models, tokens, cap_len)
        return matching_loss(self.image_encoder, images, words, sent, lens, class_ids,
                             gamma1=cfg.gamma1, gamma2=cfg.gamma2, gamma3=cfg.gamma3,
                             impl=cfg.impl)


class DiscriminatorStep(nn.Module):
    """One D's loss as a module (DDP syncs its gradients)."""

    def __init__(self, netD, heads):
        super().__init__()
        self.netD, self.heads = netD, heads

    def forward(self, real, fake, cond):
        return discriminator_loss(self.netD, real, fake, cond, self.heads)


def _optimizer(name, params, lr, betas):
    kinds = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
    if name not in kinds:
        raise ValueError(f"optimizer must be one of {sorted(kinds)}, got {name!r}")
    return kinds[name](params, lr=lr, betas=betas)


def _floats(parts):
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}


def _wrap(module, d, find_unused=True):
    if not d.enabled:
        return module
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused)


def model_config_for(train_cfg, vocab):
    """The model Config with vocab_size fitted to the dataset vocabulary (unless set)."""
    cfg = train_cfg.model_config()
    if "vocab_size" not in train_cfg.model:
        reserved = 2 if cfg.text_encoder == "clip" else 0
        cfg.vocab_size = len(vocab) + reserved
    if train_cfg.clip_bpe and "vocab_size" not in train_cfg.model:
        cfg.vocab_size = 49408                         # CLIP's byte-pair vocabulary
    return cfg


class Run:
    """One training run in `run_dir`; `resume` = a checkpoint path to continue from."""

    def __init__(self, train_cfg, run_dir, resume=None, quiet=False):
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        self.tcfg, self.dir, self.quiet = train_cfg, Path(run_dir), quiet
        self.d = distributed.setup(train_cfg.device)
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        preset_cfg = train_cfg.model_config()
        self.train_set = build_dataset(train_cfg, preset_cfg, "train")
        self.test_set = build_dataset(train_cfg, preset_cfg, "test")
        self.vocab = self.train_set.vocab
        if train_cfg.dataset != "shapes" and self.test_set.vocab is not self.vocab:
            self.test_set.vocab = self.vocab
        self.cfg = model_config_for(train_cfg, self.vocab)
        self.codec = make_codec(train_cfg, self.cfg, self.vocab)
        torch.manual_seed(train_cfg.seed)             # the same initial weights on every rank
        self.models = build_models(self.cfg, self.d.device)
        if train_cfg.clip_weights:
            if self.cfg.text_encoder != "clip":
                raise SystemExit(f"error: --clip-weights needs a clip text encoder; preset "
                                 f"{train_cfg.preset!r} uses {self.cfg.text_encoder!r}")
            self.models.text_encoder.load_clip(train_cfg.clip_weights)
        self.G, self.Ds = self.models.generator, self.models.discriminators
        self.ema = [p.detach().clone() for p in self.G.parameters()]
        self.opt_g = _optimizer(self.cfg.optimizer, self.G.parameters(), self.cfg.lr_g,
                                self.cfg.betas)
        self.opt_d = [_optimizer(self.cfg.optimizer, d.parameters(), self.cfg.lr_d,
                                 self.cfg.betas) for d in self.Ds]
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16,
                               "fp16": torch.float16}[train_cfg.precision]
        self.scaler = torch.amp.GradScaler(self.d.device.type,
                                           enabled=train_cfg.precision == "fp16")
        torch.manual_seed(train_cfg.seed * 7919 + self.d.rank)     # per-rank noise from here
        self.step, self.resume = 0, resume
        self.batch = self.cfg.batch_size
        if self.d.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "samples").mkdir(exist_ok=True)
        self.log = MetricsLog(self.dir / "metrics.jsonl")

    # ---- helpers ----------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.autocast_dtype)

    def say(self, text):
        if self.d.main and not self.quiet:
            print(text, flush=True)

    def batches(self, step, phase_seed):
        """Batches from global step `step` on, epoch after epoch."""
        per_epoch = len(self.train_set) // (self.batch * self.d.world)
        if per_epoch == 0:
            raise SystemExit(f"error: the training set has {len(self.train_set)} images, fewer "
                             f"than one batch of {self.batch} x {self.d.world} processes")
        epoch, start = divmod(step, per_epoch)
        while True:
            self.train_set.set_epoch(epoch)
            sampler = EpochBatches(len(self.train_set), self.batch, phase_seed, epoch,
                                   self.d.rank, self.d.world, start)
            # Own generator: creating a loader must not draw from the global RNG, or a resumed
            # run's noise would shift by one draw.
            seeds = torch.Generator().manual_seed(phase_seed * 1_000_003 + epoch)
            loader = DataLoader(self.train_set, batch_sampler=sampler, generator=seeds,
                                num_workers=self.tcfg.num_workers)
            yield from loader
            epoch, start = epoch + 1, 0

    def prepare(self, batch):
        dev = self.d.device
        tokens = self.codec.encode(batch["caption"], batch["cap_len"]).to(dev)
        reals = multiscale(batch["image"].to(dev), self.cfg.image_sizes)
        return tokens, batch["cap_len"].to(dev), reals, batch["class_id"].to(dev)

    def write_config(self):
        state = {"train": self.tcfg.to_dict(), "model": self.cfg.to_dict(),
                 "vocab": self.vocab.to_list()}
        atomic_write(self.dir / "config.json",
                     lambda f: f.write(json.dumps(state, indent=2).encode()))

    # ---- phase 1 ------------------------------------------------------------------------------
    def load_encoders(self, state, source):
        try:
            self.models.load_encoder_state(state)
        except (KeyError, RuntimeError) as e:
            raise SystemExit(f"error: {source} does not hold encoders for this model "
                             f"config: {e}")

    def pretrain_encoders(self):
        t = self.tcfg
        path = self.dir / "encoders.pt"
        if t.itm_weights:
            self.load_encoders(load_checkpoint(t.itm_weights), t.itm_weights)
            self.say(f"encoders loaded from {t.itm_weights}")
        elif path.is_file():
            self.load_encoders(load_checkpoint(path), path)
            self.say(f"encoders loaded from {path}")
        elif t.itm_steps > 0:
            self._train_encoders(t.itm_steps)
            if self.d.main:
                save_checkpoint(self.models.encoder_state(), path)
        self.d.barrier()
        for enc in (self.models.text_encoder, self.models.image_encoder):
            enc.requires_grad_(False)
            enc.eval()

    def _train_encoders(self, steps):
        step_module = MatchingStep(self.models)
        params = [p for p in step_module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.tcfg.itm_lr, betas=(0.5, 0.999))
        net = _wrap(step_module, self.d)
        net.train()
        progress = Progress("encoders", steps, self.d.device, every=self.tcfg.log_every,
                            enabled=self.d.main and not self.quiet)
        clip = 0.25 if self.cfg.text_encoder == "rnn" else None     # pretrain_DAMSM's clip
        data = self.batches(0, self.tcfg.seed + 1)
        for step in range(1, steps + 1):
            tokens, cap_len, reals, class_ids = self.prepare(next(data))
            with self.autocast():
                loss, parts = net(tokens, cap_len, reals[-1], class_ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            values = _floats(parts)
            progress.update(step, values)
            if self.d.main and (step % self.tcfg.log_every == 0 or step == steps):
                self.log.write({"phase": "encoders", "step": step, **values})

    # ---- phase 2 ------------------------------------------------------------------------------
    def gan_step(self, G, dsteps, batch):
        cfg = self.cfg
        tokens, cap_len, reals, class_ids = self.prepare(batch)
        with torch.no_grad():
            words, sent, mask, lens = text_features(self.models, tokens, cap_len)
        z = torch.randn(tokens.shape[0], cfg.z_dim, device=self.d.device)
        with self.autocast():
            fakes, _, mu, logvar = G(z, sent, words, mask)
        parts = {}
        for i, (dstep, opt) in enumerate(zip(dsteps, self.opt_d)):
            cond = d_condition(cfg.d_conditions[i], sent, words, mask, cfg.mask_compat)
            with self.autocast():
                loss_d, _ = dstep(reals[i], fakes[i].detach(), cond)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(opt)
            parts[f"d_loss{i}"] = loss_d
        self.Ds.requires_grad_(False)      # the G step needs no D weight gradients
        with self.autocast():
            loss_g, g_parts = generator_loss(cfg, self.Ds, self.models.image_encoder, fakes,
                                             sent, words, mask, lens, mu, logvar, class_ids)
        self.Ds.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        with torch.no_grad():
            params = [p.detach() for p in self.G.parameters()]
            torch._foreach_lerp_(self.ema, params, 1.0 - cfg.ema_decay)
        return {"g_loss": loss_g, **parts, **g_parts}

    def ema_generator(self):
        """A copy of G with the EMA weights and the live BN buffers (as upstream saves it)."""
        g = copy.deepcopy(self.G)
        with torch.no_grad():
            for p, e in zip(g.parameters(), self.ema):
                p.copy_(e)
        return g.eval()

    def sample_batch(self):
        n = min(self.tcfg.num_samples, len(self.test_set))
        items = [self.test_set.item(i, caption_index=0) for i in range(n)]
        caption = torch.stack([it["caption"] for it in items])
        cap_len = torch.tensor([it["cap_len"] for it in items])
        texts = [self.vocab.decode(c[:n_]) for c, n_ in zip(caption, cap_len)]
        g = torch.Generator().manual_seed(self.tcfg.seed + 12345)
        z = torch.randn(n, self.cfg.z_dim, generator=g)
        noise = torch.randn(n, self.cfg.condition_dim, generator=g)
        return caption, cap_len, texts, z, noise

    @torch.no_grad()
    def write_samples(self):
        caption, cap_len, texts, z, noise = self.sample_batch()
        dev = self.d.device
        tokens = self.codec.encode(caption, cap_len).to(dev)
        words, sent, mask, _ = text_features(self.models, tokens, cap_len.to(dev))
        images, _, _, _ = self.ema_generator()(z.to(dev), sent, words, mask,
                                                ca_noise=noise.to(dev))
        path = self.dir / "samples" / f"step_{self.step:07d}.png"
        caption_grid(images[-1].float().cpu(), texts, path)
        return path

    def state(self):
        return {"step": self.step, "generator": self.G.state_dict(), "ema": list(self.ema),
                "discriminators": [d.state_dict() for d in self.Ds],
                "opt_g": self.opt_g.state_dict(), "opt_d": [o.state_dict() for o in self.opt_d],
                "scaler": self.scaler.state_dict(), "rng": self.d.gather(_rng_state())}

    def load_state(self, state, source):
        try:
            self.G.load_state_dict(state["generator"])
            for d, s in zip(self.Ds, state["discriminators"], strict=True):
                d.load_state_dict(s)
            with torch.no_grad():
                for e, s in zip(self.ema, state["ema"], strict=True):
                    e.copy_(s)
            self.opt_g.load_state_dict(state["opt_g"])
            for o, s in zip(self.opt_d, state["opt_d"], strict=True):
                o.load_state_dict(s)
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise SystemExit(f"error: checkpoint {source} does not match this run's "
                             f"config: {e}")
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.d.world:
            _set_rng_state(rng[self.d.rank])
        else:
            self.say(f"warning: {source} was written by {len(rng)} processes, this run has "
                     f"{self.d.world}: random streams restart from the seed")

    def save(self):
        state = self.state()               # every rank joins the RNG gather
        if self.d.main:
            save_checkpoint(state, checkpoint_path(self.dir, self.step))
            prune_checkpoints(self.dir, self.tcfg.keep_checkpoints)

    def train(self, hooks=None):
        """Phase 1 then phase 2 up to `steps`. hooks: callables hook(run, step) after each GAN
        step (tests use one to interrupt a run)."""
        t = self.tcfg
        start_time = time.perf_counter()
        if self.d.main:
            self.write_config()
        self.pretrain_encoders()
        if self.resume is not None:
            self.load_state(load_checkpoint(self.resume), self.resume)
            self.say(f"resumed from {self.resume} at step {self.step}")
        G = _wrap(self.G, self.d)
        dsteps = [_wrap(DiscriminatorStep(d, h), self.d) for d, h in zip(self.Ds, self.cfg.d_heads)]
        G.train()
        progress = Progress("gan", t.steps, self.d.device, start=self.step, every=t.log_every,
                            enabled=self.d.main and not self.quiet)
        data = self.batches(self.step, t.seed)
        sums, count = {}, 0
        while self.step < t.steps:
            parts = self.gan_step(G, dsteps, next(data))
            self.step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            shown = {k: parts[k] for k in ("g_loss", "d_loss0") if k in parts}
            progress.update(self.step, _floats(shown))
            if self.step % t.log_every == 0 or self.step == t.steps:
                means = {k: self.d.mean(v / count) for k, v in sums.items()}
                if self.d.main:
                    self.log.write({"phase": "gan", "step": self.step,
                                    "time_s": round(time.perf_counter() - start_time, 2),
                                    "it_s": round(progress.rate, 3),
                                    "mem_mib": round(memory_mb(self.d.device), 1), **means})
                sums, count = {}, 0
            if self.d.main and (self.step % t.sample_every == 0 or self.step == t.steps):
                self.write_samples()
            if self.step % t.ckpt_every == 0 or self.step == t.steps:
                self.save()
            for hook in hooks or ():
                hook(self, self.step)
        self.d.barrier()
        return self.dir


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume(path):
    """A checkpoint file, or the newest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent, path
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: --resume {path}: not a run directory (no config.json) and "
                         f"not a checkpoint file")
    ckpt = latest_checkpoint(path)
    return path, ckpt

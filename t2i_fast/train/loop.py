"""The training run: phase 1 pretrains the matching encoders (ITM or DAMSM), phase 2 trains the
GAN (one update of every D, one G update, then the EMA of G) as upstream (reference §1.7).

    run = Run(train_config("tiny"), "runs/demo")
    run.train()                       # checkpoints, samples and metrics.jsonl in runs/demo
    Run(cfg, "runs/demo", resume=True).train()          # continue it exactly

Run directory (see rundir.py for who may write it):
    config.json           {"train": TrainConfig, "model": model Config, "vocab": [words]}
    encoders.pt           the text / image encoders the run uses (trained in phase 1, loaded
                          from --itm-weights, or the initial ones when phase 1 is skipped)
    checkpoints/step_N.pt G, EMA, Ds, optimisers, scaler, step, RNG of every rank
    samples/step_N.png    the EMA generator on fixed test captions and noise
    metrics.jsonl         one line per log interval and per evaluation (evaluation.py)
    curves.png            losses and evaluation scores against the step (curves.py)
    tensorboard/          the same numbers as event files, when tensorboard is installed
    eval_cache/           the attribute classifier and real-image statistics of the evaluations

Every step's data depends only on (seed, step), and the RNG states are checkpointed, so a
resumed run continues exactly as an uninterrupted one. Nothing is written before the device,
the backend, the data and the run directory have been checked.
"""
import copy
import dataclasses
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from t2i_fast import backends
from t2i_fast.errors import ConfigError, WeightsError
from t2i_fast.fileio import make_dir, save_png
from t2i_fast.grid import caption_grid
from t2i_fast.models import (build_models, d_condition, discriminator_loss, generator_loss,
                             matching_loss, matching_ramp, text_features)
from t2i_fast.train import distributed, rundir
from t2i_fast.train.checkpoint import (checkpoint_path, latest_checkpoint,
                                       load_checkpoint, prune_checkpoints, save_checkpoint)
from t2i_fast.train.config import TrainConfig, load_init_from
from t2i_fast.train.curves import write_curves
from t2i_fast.train.data import EpochBatches, build_dataset, make_codec, multiscale
from t2i_fast.train.progress import MetricsLog, Progress, memory_mb

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}


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
    """One D's loss as a module (DDP syncs its gradients); cfg: the model Config (loss kind,
    gradient penalty)."""

    def __init__(self, netD, heads, cfg):
        super().__init__()
        self.netD, self.heads, self.cfg = netD, heads, cfg

    def forward(self, real, fake, cond):
        cfg = self.cfg
        return discriminator_loss(self.netD, real, fake, cond, self.heads, cfg.adv_loss,
                                  cfg.ma_gp, cfg.ma_gp_power)


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


def resolve(train_cfg, run_dir, resume, write_caches=True):
    """What a run in `run_dir` trains: (model Config, Vocabulary, train set, test set).

    A new run fits the model's vocab_size to the dataset vocabulary; a resumed one keeps the
    model config and vocabulary of its config.json (the backend may change). write_caches:
    whether a dataset may cache derived files (AttnGAN captions.pickle) in its folder."""
    preset_cfg = train_cfg.model_config()
    train_set = build_dataset(train_cfg, preset_cfg, "train", write_caches)
    test_set = build_dataset(train_cfg, preset_cfg, "test", write_caches)
    vocab = train_set.vocab
    if train_cfg.dataset != "shapes" and test_set.vocab is not vocab:
        test_set.vocab = vocab
    if not resume:
        return model_config_for(train_cfg, vocab), vocab, train_set, test_set
    _, model_cfg, stored_vocab = rundir.read_config(run_dir)
    if stored_vocab.to_list() != vocab.to_list():
        raise ConfigError(f"the dataset's vocabulary ({len(vocab)} words) differs from the one "
                          f"in {Path(run_dir) / 'config.json'} ({len(stored_vocab)} words): "
                          f"the data changed since the run started")
    if train_cfg.backend is not None:
        model_cfg = dataclasses.replace(model_cfg, impl=train_cfg.backend)
    return model_cfg, stored_vocab, train_set, test_set


def check_execution(train_cfg, model_cfg, device):
    """BackendUnavailable unless the run's backend runs the ops on `device` in every dtype the
    run uses (float32, and the autocast dtype)."""
    name = backends.requested(model_cfg.impl)
    for dtype in {torch.float32, AUTOCAST_DTYPES[train_cfg.precision] or torch.float32}:
        backends.check_backend(name, device.type, dtype)


class Run:
    """One training run in `run_dir` (default: train_cfg.out).

    resume: continue the run in `run_dir` from `checkpoint` (default: its newest); otherwise a
    new run, refused if `run_dir` holds one."""

    def __init__(self, train_cfg, run_dir=None, resume=False, checkpoint=None, quiet=False):
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        run_dir = run_dir if run_dir is not None else train_cfg.out
        if run_dir is None:
            raise ConfigError("a run needs a directory: give run_dir or train_cfg.out (--out)")
        self.dir, self.quiet, self.resume = Path(run_dir), quiet, bool(resume)
        self.tcfg = train_cfg = dataclasses.replace(train_cfg, out=str(self.dir))
        self.d = distributed.setup(train_cfg.device)
        if self.d.main and not self.resume:
            rundir.check_new_run_dir(self.dir)
        # The newest checkpoint is looked up again under the run's lock (train()): a process
        # that ends meanwhile may still write one and prune older ones.
        self.newest = self.resume and checkpoint is None
        self.checkpoint = latest_checkpoint(self.dir) if self.newest else checkpoint
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        self.cfg, self.vocab, self.train_set, self.test_set = resolve(train_cfg, self.dir,
                                                                      self.resume)
        check_execution(train_cfg, self.cfg, self.d.device)
        self.evaluation = None
        if train_cfg.eval_every:
            # here, not at the top: the evaluate package imports this one
            from t2i_fast.train.evaluation import Evaluation
            self.evaluation = Evaluation(train_cfg, self.cfg, self.vocab, self.dir,
                                         self.d.device, len(self.test_set))
        self.batch = train_cfg.batch_size
        self.itm_batch = train_cfg.itm_batch_size or self.batch
        for name, batch in (("batch_size", self.batch), ("itm_batch_size", self.itm_batch)):
            if len(self.train_set) < batch * self.d.world:
                raise ConfigError(f"the training set has {len(self.train_set)} images, fewer "
                                  f"than one batch ({name} {batch}) x {self.d.world} processes")
        self.codec = make_codec(train_cfg, self.cfg, self.vocab)
        torch.manual_seed(train_cfg.seed)             # the same initial weights on every rank
        self.models = build_models(self.cfg, self.d.device)
        if train_cfg.init_from:       # published weights (a resumed run's checkpoint has them)
            load_init_from(train_cfg, self.models, read=self.checkpoint is None)
        if train_cfg.clip_weights:
            self.models.text_encoder.load_clip(train_cfg.clip_weights)
        # Given encoders are read here, like every weight file, before the run directory is
        # written: a file that cannot be used leaves no run behind.
        self.given_encoders = (train_cfg.itm_weights if train_cfg.itm_weights and
                               not (self.dir / "encoders.pt").is_file() else None)
        if self.given_encoders:
            self.load_encoders(self.given_encoders)
        self.G, self.Ds = self.models.generator, self.models.discriminators
        self.ema = [p.detach().clone() for p in self.G.parameters()]
        optimizer = OPTIMIZERS[train_cfg.optimizer]
        self.opt_g = optimizer(self.G.parameters(), lr=train_cfg.lr_g, betas=train_cfg.betas)
        self.opt_d = [optimizer(d.parameters(), lr=train_cfg.lr_d, betas=train_cfg.betas)
                      for d in self.Ds]
        self.autocast_dtype = AUTOCAST_DTYPES[train_cfg.precision]
        self.scaler = torch.amp.GradScaler(self.d.device.type,
                                           enabled=train_cfg.precision == "fp16")
        torch.manual_seed(train_cfg.seed * 7919 + self.d.rank)     # per-rank noise from here
        self.step = 0
        self.log = MetricsLog(self.dir / "metrics.jsonl")

    # ---- helpers ----------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.autocast_dtype)

    def say(self, text):
        if self.d.main and not self.quiet:
            print(text, flush=True)

    def batches(self, step, phase_seed, batch):
        """Batches of `batch` images from global step `step` on, epoch after epoch."""
        per_epoch = len(self.train_set) // (batch * self.d.world)
        epoch, start = divmod(step, per_epoch)
        while True:
            self.train_set.set_epoch(epoch)
            sampler = EpochBatches(len(self.train_set), batch, phase_seed, epoch,
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

    # ---- phase 1 ------------------------------------------------------------------------------
    def load_encoders(self, source):
        state = load_checkpoint(source)
        try:
            self.models.load_encoder_state(state)
        except (KeyError, RuntimeError) as e:
            raise WeightsError(f"{source} does not hold encoders for this model config: "
                               f"{e}") from e

    def pretrain_encoders(self):
        """The run's encoders: its own encoders.pt when resuming, else --itm-weights, phase 1
        training, or the initial weights (itm_steps 0); saved as encoders.pt, which sampling
        and evaluation read."""
        t = self.tcfg
        path = self.dir / "encoders.pt"
        if path.is_file():
            self.load_encoders(path)
            self.say(f"encoders loaded from {path}")
        else:
            if self.given_encoders:
                self.say(f"encoders loaded from {self.given_encoders}")
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
        opt = torch.optim.Adam(params, lr=self.tcfg.itm_lr, betas=self.tcfg.itm_betas)
        net = _wrap(step_module, self.d)
        net.train()
        progress = Progress("encoders", steps, self.d.device, every=self.tcfg.log_every,
                            enabled=self.d.main and not self.quiet)
        clip = self.tcfg.itm_clip
        data = self.batches(0, self.tcfg.seed + 1, self.itm_batch)
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
            ramp = matching_ramp(self.step + 1, self.tcfg.matching_delay,
                                 self.tcfg.matching_warmup)
            loss_g, g_parts = generator_loss(cfg, self.Ds, self.models.image_encoder, fakes,
                                             sent, words, mask, lens, mu, logvar, class_ids,
                                             matching_scale=ramp)
        self.Ds.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        with torch.no_grad():
            params = [p.detach() for p in self.G.parameters()]
            torch._foreach_lerp_(self.ema, params, 1.0 - self.tcfg.ema_decay)
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
        sheet = caption_grid(images[-1].float().cpu(), texts)
        save_png(sheet, path)
        return path

    def evaluate(self, progress):
        """Score the EMA generator on held-out captions (rank 0): a metrics.jsonl record and
        the progress line (the loop redraws curves.png)."""
        if not self.d.main:
            return
        models = dataclasses.replace(self.models, generator=self.ema_generator())
        record = self.evaluation(models, self.step)
        self.log.write(record)
        progress.pin(f"eval@{self.step}", self.evaluation.headlines(record))

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
            raise WeightsError(f"checkpoint {source} does not match this run's config: "
                               f"{e}") from e
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
            prune_checkpoints(self.dir, self.tcfg.keep_checkpoints, self.step)

    def train(self, hooks=None):
        """Phase 1 then phase 2 up to `steps`. hooks: callables hook(run, step) after each GAN
        step (tests use one to interrupt a run)."""
        lock = None
        if self.d.main:
            lock, messages = rundir.claim(self.dir, new_run=not self.resume)
            for message in messages:
                self.say(message)
        try:
            if self.newest:
                self.d.barrier()
                self.checkpoint = latest_checkpoint(self.dir)
            return self._train(hooks)
        finally:
            self.log.close()
            if lock is not None:
                lock.release()

    @contextmanager
    def _resume_hint(self):
        """A checkpoint that cannot be resumed from: say that an older one can be."""
        try:
            yield
        except WeightsError as e:
            raise WeightsError(f"{e}; an older checkpoint of the run can be given to --resume "
                               f"directly (RUN/checkpoints/step_N.pt)") from e

    def _train(self, hooks):
        t = self.tcfg
        start_time = time.perf_counter()
        with self._resume_hint():
            state = load_checkpoint(self.checkpoint) if self.checkpoint is not None else None
            if state is not None and not (isinstance(state, dict) and
                                          isinstance(state.get("step"), int)):
                raise WeightsError(f"{self.checkpoint} is not a training checkpoint of "
                                   f"t2i_fast (no step)")
        if self.d.main:
            if self.resume:     # lines past the checkpoint are written again from here
                self.log.cut(state["step"] if state else 0,
                             keep_encoders=(self.dir / "encoders.pt").is_file())
            rundir.write_config(self.dir, self.tcfg, self.cfg, self.vocab)
            make_dir(self.dir / "samples")
            if self.resume:
                write_curves(self.dir)
            if not self.log.open_tensorboard(self.dir / "tensorboard"):
                self.say("tensorboard is not installed: no event files (metrics.jsonl and "
                         "curves.png have the same numbers)")
        self.pretrain_encoders()
        if state is not None:
            with self._resume_hint():
                self.load_state(state, self.checkpoint)
            self.say(f"resumed from {self.checkpoint} at step {self.step}")
        G = _wrap(self.G, self.d)
        dsteps = [_wrap(DiscriminatorStep(d, h, self.cfg), self.d)
                  for d, h in zip(self.Ds, self.cfg.d_heads)]
        G.train()
        progress = Progress("gan", t.steps, self.d.device, start=self.step, every=t.log_every,
                            enabled=self.d.main and not self.quiet)
        data = self.batches(self.step, t.seed, self.batch)
        sums, count = {}, 0
        while self.step < t.steps:
            parts = self.gan_step(G, dsteps, next(data))
            self.step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            evaluated = self.evaluation is not None and self.evaluation.due(self.step, t.steps)
            if evaluated:
                self.evaluate(progress)      # before the checkpoint of the same step
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
            saved = self.step % t.ckpt_every == 0 or self.step == t.steps
            if saved:
                self.save()
            if self.d.main and (evaluated or saved):
                write_curves(self.dir)      # once per step, after the evaluation and checkpoint
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

"""The training configuration: one dataclass, presets, and the command line.

    cfg = train_config("small", steps=200)          # a preset with overrides
    preset, given, args = parse_args(["--preset", "tiny", "--steps", "20", "--set", "gf_dim=16"])

TrainConfig holds what the trainer reads (data, schedule, optimisation, execution); `model`
holds overrides of the model Config (t2i_fast.models.config), applied on top of the model preset
of the same name. No field is in both. Every flag and `--set key=value` is parsed by its field's
type (t2i_fast.config_fields); ranges and choices are checked once, by validate() here for the
training fields and by the model Config for its own.
"""
import argparse
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

from t2i_fast import backends
from t2i_fast.config_fields import check_types, describe, field_types, parse
from t2i_fast.errors import ArgumentParser, ConfigError
from t2i_fast.models.config import PRESETS as MODEL_PRESETS
from t2i_fast.models.config import Config, get_config
from t2i_fast.models.upstream import (UPSTREAM_CONFIG, UPSTREAM_PRESETS, load_parts, sort_files,
                                      upstream_conventions)
from t2i_fast.train.distributed import parse_device


def _f(default, text, factory=None):
    """A field with its --help text."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    preset: str = _f("small", "model and training preset")
    model: dict = _f(None, "overrides of the model Config fields", factory=dict)
    # ---- data
    dataset: str = _f("shapes", "'shapes' (built in), 'cub' or 'coco' (AttnGAN layout), 'folder'")
    data_dir: Optional[str] = _f(None, "root of the AttnGAN layout or the image folder")
    dataset_size: Optional[int] = _f(None, "use the first N training images (shapes, folder)")
    captions_per_image: Optional[int] = _f(None, "AttnGAN layout: default 10 (CUB), 5 (COCO)")
    num_workers: int = _f(0, "DataLoader worker processes")
    # ---- schedule
    itm_steps: int = _f(300, "phase 1: matching-encoder pretraining steps (0: skip)")
    steps: int = _f(2100, "phase 2: GAN steps (one D and one G update each)")
    matching_delay: int = _f(0, "phase 2: first steps without G's matching terms")
    matching_warmup: int = _f(0, "phase 2: steps after the delay over which G's matching terms "
                              "rise linearly to full weight")
    log_every: int = _f(25, "steps between metrics.jsonl lines")
    sample_every: int = _f(200, "steps between sample sheets")
    ckpt_every: int = _f(200, "steps between checkpoints")
    keep_checkpoints: int = _f(2, "newest checkpoints kept")
    num_samples: int = _f(16, "images in a sample sheet")
    eval_every: int = _f(300, "steps between evaluations of the EMA generator on held-out "
                         "captions, and at the last step (0: none)")
    eval_images: int = _f(300, "generated test images per evaluation")
    eval_flags: str = _f("", "options of python -m t2i_fast.evaluate for these evaluations, "
                         "e.g. --eval-flags='--inception-weights PATH' (adds FID and IS)")
    # ---- optimisation (the presets carry the upstream values)
    batch_size: int = _f(16, "images per step and process")
    itm_batch_size: Optional[int] = _f(None, "phase 1: images per step and process (none: "
                                       "batch_size)")
    optimizer: str = _f("adam", "phase 2 optimiser of G and every D")
    lr_g: float = _f(2e-4, "phase 2 learning rate of G")
    lr_d: float = _f(2e-4, "phase 2 learning rate of every D")
    betas: Tuple[float, float] = _f((0.5, 0.999), "phase 2 optimiser betas")
    ema_decay: float = _f(0.99, "decay of the EMA of G's weights (the sampled generator)")
    itm_lr: float = _f(1e-3, "phase 1 (Adam) learning rate")
    itm_betas: Tuple[float, float] = _f((0.5, 0.999), "phase 1 (Adam) betas")
    itm_clip: Optional[float] = _f(None, "phase 1 gradient-norm clip (DAMSM pretraining: 0.25)")
    # ---- execution
    out: Optional[str] = _f(None, "run directory (default runs/<preset>-<time>)")
    seed: int = _f(0, "weights, data order and noise")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    backend: Optional[str] = _f(None, "t2i_fast.ops backend (default: automatic)")
    precision: str = _f("fp32", "autocast precision")
    itm_weights: Optional[str] = _f(None, "trained ITM / DAMSM encoders (encoders.pt format): "
                                    "skips phase 1")
    clip_weights: Optional[str] = _f(None, "a CLIP RN checkpoint (OpenAI names) for the ITM")
    clip_bpe: Optional[str] = _f(None, "CLIP's bpe_simple_vocab_16e6.txt.gz (with clip_weights "
                                 "or a published ITM)")
    init_from: Tuple[str, ...] = _f((), "published DM-GAN / AttnGAN / GR-GAN files (generator, "
                                    "DAMSM or ITM encoders, discriminators; each recognised by "
                                    "its keys) the new run starts from, with the upstream "
                                    "conventions")
    threads: Optional[int] = _f(None, "torch CPU threads (default: torch's choice)")

    # The allowed values of the fields with a fixed set (read by validate and by --help).
    CHOICES = {"dataset": ("shapes", "cub", "coco", "folder"), "optimizer": ("adam", "adamax"),
               "precision": ("fp32", "bf16", "fp16"), "backend": backends.BACKENDS,
               "preset": tuple(sorted(MODEL_PRESETS))}

    def __post_init__(self):
        for name, tp in field_types(TrainConfig).items():     # JSON turns tuples into lists
            if getattr(tp, "__origin__", None) is tuple and isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self):
        def bad(msg):
            raise ConfigError(f"TrainConfig: {msg}")
        check_types(self, "TrainConfig")
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "backend" and value is None):
                bad(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.dataset != "shapes" and not self.data_dir:
            bad(f"dataset {self.dataset!r} needs data_dir (--data-dir)")
        at_least = {"steps": 0, "itm_steps": 0, "num_workers": 0, "seed": 0, "log_every": 1,
                    "sample_every": 1, "ckpt_every": 1, "keep_checkpoints": 1, "num_samples": 1,
                    "dataset_size": 1, "captions_per_image": 1, "threads": 1,
                    "eval_every": 0, "eval_images": 1, "matching_delay": 0,
                    "matching_warmup": 0,
                    # the matching losses need other captions of the batch as negatives
                    "batch_size": 2, "itm_batch_size": 2}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                bad(f"{name} must be >= {low}, got {value}")
        for name in ("lr_g", "lr_d", "itm_lr", "itm_clip"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                bad(f"{name} must be a finite number > 0, got {value}")
        for name in ("ema_decay", "betas", "itm_betas"):
            value = getattr(self, name)
            if not all(0 <= v < 1 for v in (value if isinstance(value, tuple) else (value,))):
                bad(f"{name} must be in [0, 1), got {value}")
        parse_device(self.device)
        if self.init_from:
            self._check_init_from(bad)
        if bool(self.clip_weights) != bool(self.clip_bpe) and not self.init_from:
            bad("clip_weights and clip_bpe go together: published CLIP weights read CLIP's BPE "
                "tokens (--clip-weights PATH --clip-bpe bpe_simple_vocab_16e6.txt.gz)")
        model = self.model_config()     # unknown or invalid model overrides raise here
        if self.clip_weights and model.text_encoder != "clip":
            bad(f"clip_weights needs the clip text encoder; preset {self.preset!r} uses "
                f"{model.text_encoder!r}")
        if self.eval_every or self.eval_flags:
            from t2i_fast.train.evaluation import eval_metrics    # the evaluate command's rules
            eval_metrics(self)

    def _check_init_from(self, bad):
        """The flags that make no sense with published weights to start from."""
        if self.preset not in UPSTREAM_PRESETS:
            bad(f"init_from reads published DM-GAN / AttnGAN / GR-GAN weights: the preset must "
                f"be one of {list(UPSTREAM_PRESETS)}, got {self.preset!r}")
        for flag, value in (("itm_weights", self.itm_weights),
                            ("clip_weights", self.clip_weights)):
            if value:
                bad(f"init_from starts the run from published weights; {flag} would replace "
                    f"their encoders: give one of the two")
        clip = get_config(self.preset).text_encoder == "clip"
        if clip != bool(self.clip_bpe):
            bad("init_from with a GR-GAN preset: its ITM reads CLIP's byte-pair tokens, give "
                "clip_bpe (--clip-bpe bpe_simple_vocab_16e6.txt.gz)" if clip else
                f"clip_bpe is for GR-GAN's ITM; preset {self.preset!r} reads the dataset's word "
                f"ids")

    def model_config(self):
        """The model Config of the preset with the `model` overrides (and the backend); with
        init_from, the upstream conventions under the overrides."""
        overrides = {**UPSTREAM_CONFIG, **self.model} if self.init_from else dict(self.model)
        if self.backend is not None:
            overrides.setdefault("impl", self.backend)
        return get_config(self.preset, **overrides)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"TrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# The fields a command line sets: every training field is a flag (and a --set key); --set also
# takes every model field.
FLAG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                    if f.name not in ("preset", "model"))
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "name")

# Training presets: the model preset of the same name plus these training values (the upstream
# configs' batch size, optimiser and learning rates; DAMSM pretraining clips its gradients).
_UPSTREAM = dict(itm_steps=0, log_every=100, sample_every=2000, ckpt_every=2000,
                 eval_every=2000, optimizer="adam", ema_decay=0.999, itm_clip=0.25)
TRAIN_PRESETS = {
    # Phase 1 at batch 64: at 16 the ITM tells shapes apart no better than chance.
    # Phase 2 starts without G's matching terms, then ramps them in; G learns at twice
    # upstream's 2e-4 and the Ds at twice G's rate (benchmarks/NOTES.md, "Learning on the
    # shapes dataset").
    "small": dict(itm_batch_size=64, matching_delay=300, matching_warmup=300, lr_g=4e-4,
                  lr_d=8e-4),
    "tiny": dict(itm_steps=20, steps=20, log_every=5, sample_every=10, ckpt_every=10,
                 num_samples=4, batch_size=4, ema_decay=0.999, eval_every=0),
    "grgan-coco": dict(_UPSTREAM, dataset="coco", steps=500_000, batch_size=8,
                       optimizer="adamax", lr_g=2e-5, lr_d=2e-5, itm_clip=None),
    "dmgan-cub": dict(_UPSTREAM, dataset="cub", steps=600_000, batch_size=10),
    "dmgan-coco": dict(_UPSTREAM, dataset="coco", steps=1_000_000, batch_size=16),
    "attngan-cub": dict(_UPSTREAM, dataset="cub", steps=270_000, batch_size=20),
}


def load_init_from(train_cfg, models, read=True):
    """Start `models` (built for train_cfg) from the files of train_cfg.init_from, each part
    recognised by its keys, and switch on the upstream conventions; read=False switches on the
    conventions only (a resumed run's checkpoint and encoders.pt hold the weights)."""
    if read:
        load_parts(models, sort_files(train_cfg.init_from, models.config.image_sizes))
    upstream_conventions(models)


def train_config(preset="small", **overrides):
    """The training preset `preset` with `overrides` (TrainConfig fields)."""
    if preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {sorted(TRAIN_PRESETS)}")
    return TrainConfig(preset=preset, **{**TRAIN_PRESETS[preset], **overrides})


# ---- command line ------------------------------------------------------------------------------

def flag(name):
    return "--" + name.replace("_", "-")


def _flag_type(name):
    def convert(text):
        try:
            return parse(TrainConfig, name, text)
        except ConfigError:
            tp = field_types(TrainConfig)[name]
            raise argparse.ArgumentTypeError(f"expected {describe(tp)}, got {text!r}") \
                from None
    convert.__name__ = name
    return convert


_METAVARS = {int: "INT", float: "X", str: "TEXT"}
_NAMED = {"data_dir": "PATH", "out": "PATH", "itm_weights": "PATH", "clip_weights": "PATH",
          "clip_bpe": "PATH", "device": "DEVICE", "init_from": "PATH[,PATH...]"}


def _metavar(name, tp):
    if name in _NAMED:
        return _NAMED[name]
    if typing.get_origin(tp) is typing.Union:            # Optional[X]
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is tuple:
        return ",".join(_METAVARS[a] for a in typing.get_args(tp))
    return _METAVARS.get(tp, "TEXT")


def build_parser(prog="python -m t2i_fast.train"):
    p = ArgumentParser(prog=prog, description="Train a GR-GAN / DM-GAN / AttnGAN. Without "
                       "arguments: the 'small' preset on the built-in shapes dataset (a few "
                       "minutes on a CPU).")
    p.add_argument("--preset", default=None, choices=TrainConfig.CHOICES["preset"],
                   help="model and training preset (default 'small')")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue the run in RUN_DIR exactly, from its newest checkpoint or "
                   "RUN_DIR/checkpoints/step_N.pt")
    p.add_argument("--dry-run", action="store_true",
                   help="print the config.json the run would write, and exit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any model Config or training field by its type (bool: "
                   "true/false/1/0; tuples: comma-separated or JSON; schedule: JSON, e.g. "
                   "schedule=[[\"sentence\",true,1],[\"word\",true,4]]); repeatable")
    types = field_types(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in FLAG_FIELDS:
            continue
        values = {k: v[f.name] for k, v in TRAIN_PRESETS.items() if f.name in v}
        note = ("; presets: " + ", ".join(f"{k} {v}" for k, v in values.items())
                if values else "")
        choices = TrainConfig.CHOICES.get(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        p.add_argument(flag(f.name), dest=f.name, default=None, type=_flag_type(f.name),
                       choices=choices, metavar=None if choices else _metavar(f.name,
                                                                               types[f.name]),
                       help=f"{f.metadata['help']} (default {default}{note})")
    return p


def parse_args(argv=None):
    """(preset or None, {field: value} of the flags and --set keys given, namespace).

    `given` holds TrainConfig fields, with the model Config overrides under 'model'."""
    args = build_parser().parse_args(argv)
    given = {name: getattr(args, name) for name in FLAG_FIELDS
             if getattr(args, name) is not None}
    model = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key in MODEL_FIELDS:
            target, cls = model, Config
        elif key in FLAG_FIELDS:
            target, cls = given, TrainConfig
        else:
            close = difflib.get_close_matches(key, MODEL_FIELDS + FLAG_FIELDS, n=3)
            hint = (f"did you mean {' or '.join(close)}?" if close else
                    f"fields: {', '.join(MODEL_FIELDS + FLAG_FIELDS)}")
            raise ConfigError(f"--set {key}: no such model or training field; {hint}")
        value = parse(cls, key, text)
        if key in target and target[key] != value:
            raise ConfigError(f"{key} is given twice, as {target[key]!r} and {value!r}")
        target[key] = value
    if model:
        given["model"] = model
    return args.preset, given, args

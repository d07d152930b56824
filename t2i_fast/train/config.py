"""The training configuration: one dataclass, presets, and the command line.

    cfg = train_config("small", steps=200)          # a preset with overrides
    cfg = parse_args(["--preset", "tiny", "--steps", "20", "--set", "gf_dim=16"])

`model` holds overrides of the model Config (t2i_fast.models.config) applied on top of the
model preset of the same name; `--set key=value` adds to it from the command line (values are
parsed as JSON where they can be: `--set lean=true --set r_num=2`).
"""
import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

from t2i_fast.models.config import PRESETS as MODEL_PRESETS
from t2i_fast.models.config import get_config


@dataclass
class TrainConfig:
    preset: str = "small"               # model preset (t2i_fast.models.config.PRESETS)
    model: dict = field(default_factory=dict)   # overrides of the model Config
    # ---- data
    dataset: str = "shapes"             # 'shapes' (built in), 'cub', 'coco' or 'folder'
    data_dir: Optional[str] = None      # root of the AttnGAN layout or the folder
    dataset_size: Optional[int] = None  # use the first N training images (shapes, folder)
    captions_per_image: Optional[int] = None    # AttnGAN layout: default 10 (CUB), 5 (COCO)
    num_workers: int = 0
    # ---- schedule
    itm_steps: int = 300                # phase 1: matching-encoder pretraining (0: skip)
    steps: int = 1200                   # phase 2: GAN steps (one D and one G update each)
    batch_size: Optional[int] = None    # per process; default: the model preset's
    itm_lr: float = 1e-3
    log_every: int = 25
    sample_every: int = 200
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    num_samples: int = 16               # images in a sample grid
    # ---- execution
    out: Optional[str] = None           # run directory (default runs/<preset>-<time>)
    seed: int = 0
    device: str = "auto"                # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    backend: Optional[str] = None       # t2i_fast.ops backend (None: automatic)
    precision: str = "fp32"             # 'fp32', 'bf16' or 'fp16' (autocast)
    itm_weights: Optional[str] = None   # a trained ITM / DAMSM checkpoint: skips phase 1
    clip_weights: Optional[str] = None  # a CLIP RN checkpoint (OpenAI names) for the ITM
    clip_bpe: Optional[str] = None      # CLIP's bpe_simple_vocab_16e6.txt.gz (with clip_weights)
    threads: Optional[int] = None       # torch CPU threads (default: torch's choice)

    def __post_init__(self):
        self.validate()

    def validate(self):
        def bad(msg):
            raise ValueError(f"TrainConfig: {msg}")
        if self.preset not in MODEL_PRESETS:
            bad(f"preset must be one of {sorted(MODEL_PRESETS)}, got {self.preset!r}")
        if self.dataset not in ("shapes", "cub", "coco", "folder"):
            bad(f"dataset must be 'shapes', 'cub', 'coco' or 'folder', got {self.dataset!r}")
        if self.dataset != "shapes" and not self.data_dir:
            bad(f"dataset {self.dataset!r} needs data_dir (--data-dir)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            bad(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        for name in ("steps", "itm_steps"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "sample_every", "ckpt_every", "keep_checkpoints",
                     "num_samples"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if bool(self.clip_weights) != bool(self.clip_bpe):
            bad("clip_weights and clip_bpe go together: published CLIP weights read CLIP's BPE "
                "tokens (--clip-weights PATH --clip-bpe bpe_simple_vocab_16e6.txt.gz)")
        if self.batch_size is not None and self.batch_size < 2:
            bad(f"batch_size must be >= 2 (the matching losses need negatives), "
                f"got {self.batch_size}")
        self.model_config()             # unknown or invalid model overrides raise here

    def model_config(self):
        """The model Config: the preset with `model` overrides (and the batch size)."""
        overrides = dict(self.model)
        if self.backend is not None:
            overrides.setdefault("impl", self.backend)
        cfg = get_config(self.preset, **overrides)
        if self.batch_size is not None:
            cfg = dataclasses.replace(cfg, batch_size=self.batch_size)
        return cfg

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# Training presets: the model preset of the same name plus these training values.
TRAIN_PRESETS = {
    "small": dict(),
    "tiny": dict(itm_steps=20, steps=20, log_every=5, sample_every=10, ckpt_every=10,
                 num_samples=4),
    "grgan-coco": dict(dataset="coco", itm_steps=0, steps=500_000, log_every=100,
                       sample_every=2000, ckpt_every=2000),
    "dmgan-cub": dict(dataset="cub", itm_steps=0, steps=600_000, log_every=100,
                      sample_every=2000, ckpt_every=2000),
    "dmgan-coco": dict(dataset="coco", itm_steps=0, steps=1_000_000, log_every=100,
                       sample_every=2000, ckpt_every=2000),
    "attngan-cub": dict(dataset="cub", itm_steps=0, steps=270_000, log_every=100,
                        sample_every=2000, ckpt_every=2000),
}


def train_config(preset="small", **overrides):
    base = TRAIN_PRESETS.get(preset, {})
    return TrainConfig(preset=preset, **{**base, **overrides})


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser(prog="python -m t2i_fast.train"):
    p = argparse.ArgumentParser(prog=prog, description="Train a GR-GAN / DM-GAN / AttnGAN. "
                                "Without arguments: the 'small' preset on the built-in shapes "
                                "dataset (a few minutes on a CPU).")
    p.add_argument("--preset", default="small", choices=sorted(MODEL_PRESETS))
    p.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run exactly from its newest (or the given) checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model Config field (repeatable)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("preset", "model"):
            continue
        flag = "--" + f.name.replace("_", "-")
        preset_values = sorted({str(v[f.name]) for v in TRAIN_PRESETS.values() if f.name in v})
        note = f"; presets set {', '.join(preset_values)}" if preset_values else ""
        p.add_argument(flag, dest=f.name, default=None, type=_value,
                       help=f"(default {f.default!r}{note})")
    return p


def parse_args(argv=None):
    """(TrainConfig, namespace) from a command line; --resume keeps the stored config except
    --steps and the execution flags given explicitly."""
    args = build_parser().parse_args(argv)
    model = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        model[key.strip()] = _value(value)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in ("preset", "model") and getattr(args, f.name) is not None}
    for name, value in given.items():           # numeric flags typed by the field default
        default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
        if isinstance(default, str) and not isinstance(value, str):
            given[name] = str(value)
    if model:
        given["model"] = model
    try:
        cfg = train_config(args.preset, **given)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")
    return cfg, args, given

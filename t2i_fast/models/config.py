"""One dataclass for a GR-GAN / DM-GAN / AttnGAN model, and the named presets (the training
values of a run, batch size to EMA, are in t2i_fast.train.config.TrainConfig).

    cfg = get_config("grgan-coco", memory="lean")  # a preset with overrides
    cfg = scaled_down(get_config("dmgan-cub"))     # the same topology at test sizes

Values of the upstream presets come from the published configs (reference §1.1, §2.1, §3.5).
The refinement schedule is a tuple of StageSpec: each spec is one stage that ends in an image;
its first iteration upsamples x2 when `upsample`, further iterations refine at the new size.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

from t2i_fast import backends
from t2i_fast.config_fields import check_types
from t2i_fast.errors import ConfigError
from t2i_fast.models.discriminators import COND_HEADS
from t2i_fast.models.losses import ADVERSARIAL_LOSSES
from t2i_fast.models.memory import check_options as check_memory_options


class StageSpec(NamedTuple):
    level: str              # 'sentence' (memory = the sentence vector) or 'word'
    upsample: bool = True   # the stage's first iteration doubles the resolution
    iterations: int = 1     # refinement blocks in the stage, each with its own weights


class MatchTerm(NamedTuple):
    image: int              # index into the generator's images (-1: the last)
    kind: str               # 'sentence' or 'word'
    weight: float


@dataclass
class Config:
    name: str = "custom"
    # ---- text side
    text_encoder: str = "clip"          # 'clip' (GR-GAN ITM) or 'rnn' (DAMSM BiLSTM)
    text_dim: int = 512                 # nef: sentence / word / region embedding width D
    words_num: int = 12                 # word slots T fed to G (caption truncation)
    vocab_size: int = 49408             # tokens of the text encoder
    rnn_input: int = 300                # RNN_ENCODER word-vector width
    rnn_type: str = "LSTM"
    # ---- generator
    attention: str = "memory"           # 'memory' (DM-GAN / GR-GAN) or 'attention' (AttnGAN)
    schedule: Tuple[StageSpec, ...] = (StageSpec("sentence"), StageSpec("word"))
    sentence_shortcut: bool = True      # sentence stages read one slot instead of T copies
    gf_dim: int = 64                    # ngf
    z_dim: int = 100
    condition_dim: int = 100            # CA output
    r_num: int = 3                      # ResBlocks per refinement block
    base_size: int = 64                 # resolution of the image-level stage (4 * 2^k)
    # ---- discriminators (one per generator image)
    df_dim: int = 32                    # ndf
    d_norm: str = "spectral"            # 'spectral' (DM-GAN, GR-GAN) or 'batch' (AttnGAN)
    d_heads: Tuple[str, ...] = ("uncond", "cond", "cond")         # 'uncond'|'cond'|'both'
    d_conditions: Tuple[str, ...] = ("sentence", "sentence", "word_mean")
    d_cond_head: str = "concat"         # conditional heads: 'concat' (upstream) or 'projection'
    d_weights_init: bool = False        # upstream weights_init on the Ds (DM-GAN yes, GR-GAN no)
    # ---- losses
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    matching: Tuple[MatchTerm, ...] = (MatchTerm(1, "sentence", 1.0), MatchTerm(-1, "word", 1.0),
                                       MatchTerm(-1, "sentence", 4.0))
    kl_weight: float = 1.0
    matching_jitter: float = 0.0        # G's matching terms read its images shifted by up to
                                        # this fraction of the side (losses.jittered)
    adv_loss: str = "bce"               # adversarial terms: 'bce' (upstream) or 'hinge' (DF-GAN)
    ma_gp: float = 0.0                  # weight of DF-GAN's matching-aware gradient penalty
    ma_gp_power: float = 6.0            # its exponent p in E ||grad||^p
    image_encoder: str = "itm"          # matching-loss image encoder: 'itm' or 'damsm'
    # ---- ITM (CLIP RN101 architecture + MLP heads)
    clip_layers: Tuple[int, ...] = (3, 4, 23, 3)
    clip_width: int = 64                # ModifiedResNet stem width (layer3 has 16x channels)
    clip_resolution: int = 224
    clip_embed_dim: int = 512
    clip_context: int = 77
    clip_text_width: int = 512
    clip_text_heads: int = 8
    clip_text_layers: int = 12
    freeze_clip: bool = True
    # ---- DAMSM image encoder (Inception-v3 trunk)
    damsm_width: float = 1.0            # channel multiplier (1.0 = upstream)
    damsm_size: int = 299
    damsm_align_corners: bool = True    # DM-GAN True, AttnGAN False
    # ---- execution
    mask_compat: bool = False           # reproduce the upstream tiled mask and quirks
    memory: str = "eager"               # G's and the Ds' blocks: 'eager' | 'lean' | 'max'
    memory_budget: Optional[int] = None  # bytes for G's blocks (None: `memory` everywhere)
    impl: Optional[str] = None          # backend of t2i_fast.ops (None: auto)

    def __post_init__(self):
        # JSON round trips turn the tuples of tuples into lists of lists.
        self.schedule = tuple(StageSpec(*s) for s in self.schedule)
        self.matching = tuple(MatchTerm(*m) for m in self.matching)
        for name in ("d_heads", "d_conditions", "clip_layers"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    # derived sizes
    @property
    def image_sizes(self):
        """Resolution of each generator image: the base stage, then one per StageSpec."""
        sizes = [self.base_size]
        for spec in self.schedule:
            sizes.append(sizes[-1] * (2 if spec.upsample else 1))
        return tuple(sizes)

    @property
    def image_size(self):
        return self.image_sizes[-1]

    def validate(self):
        def bad(msg):
            raise ConfigError(f"Config {self.name!r}: {msg}")
        check_types(self, f"Config {self.name!r}")
        positive = ("text_dim", "words_num", "vocab_size", "rnn_input", "gf_dim", "z_dim",
                    "condition_dim", "df_dim", "clip_width", "clip_resolution", "clip_embed_dim",
                    "clip_context", "clip_text_width", "clip_text_heads", "clip_text_layers",
                    "damsm_size")
        for key in positive:
            if getattr(self, key) < 1:
                bad(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.r_num < 0 or min(self.clip_layers, default=0) < 1 or len(self.clip_layers) != 4:
            bad(f"r_num must be >= 0 and clip_layers four counts >= 1, got {self.r_num} and "
                f"{self.clip_layers}")
        for key in ("damsm_width", "gamma1", "gamma2", "gamma3"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                bad(f"{key} must be a finite number > 0, got {getattr(self, key)}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            bad(f"kl_weight must be a finite number >= 0, got {self.kl_weight}")
        if self.impl is not None:
            backends.check_name(self.impl, "impl")
        try:
            check_memory_options(self.memory, self.memory_budget)
        except ValueError as err:
            bad(str(err))
        if self.base_size < 4 or self.base_size & (self.base_size - 1):
            bad(f"base_size must be a power of two >= 4, got {self.base_size}")
        for spec in self.schedule:
            if spec.level not in ("sentence", "word") or spec.iterations < 1:
                bad(f"bad stage {spec}: level 'sentence'|'word', iterations >= 1")
        n_images = len(self.schedule) + 1
        if len(self.d_heads) != n_images or len(self.d_conditions) != n_images:
            bad(f"d_heads and d_conditions need one entry per image ({n_images})")
        if not set(self.d_heads) <= {"uncond", "cond", "both"}:
            bad(f"d_heads entries are 'uncond', 'cond' or 'both', got {self.d_heads}")
        if not set(self.d_conditions) <= {"sentence", "word_mean"}:
            bad(f"d_conditions entries are 'sentence' or 'word_mean', got {self.d_conditions}")
        for term in self.matching:
            if term.kind not in ("sentence", "word") or not -n_images <= term.image < n_images:
                bad(f"bad matching term {term}")
        choices = {"text_encoder": ("clip", "rnn"), "attention": ("memory", "attention"),
                   "d_norm": ("spectral", "batch"), "d_cond_head": COND_HEADS,
                   "image_encoder": ("itm", "damsm"),
                   "rnn_type": ("LSTM", "GRU"), "adv_loss": ADVERSARIAL_LOSSES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not 0 <= self.matching_jitter < 0.5:
            bad(f"matching_jitter must be in [0, 0.5), got {self.matching_jitter}")
        if not (math.isfinite(self.ma_gp) and self.ma_gp >= 0 and self.ma_gp_power > 0):
            bad(f"ma_gp must be a finite number >= 0 and ma_gp_power > 0, got {self.ma_gp} "
                f"and {self.ma_gp_power}")
        if self.image_encoder == "itm" and self.text_encoder != "clip":
            bad("the ITM image encoder pairs with the clip text encoder")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        return cls(**d)


def _word_stages(n):
    return tuple(StageSpec("word") for _ in range(n))


_DMGAN = dict(text_encoder="rnn", text_dim=256, rnn_input=300, attention="memory",
              schedule=_word_stages(2), gf_dim=64, df_dim=32, d_norm="spectral",
              d_heads=("both",) * 3, d_conditions=("sentence",) * 3, d_weights_init=True,
              image_encoder="damsm", damsm_align_corners=True)

PRESETS = {
    # GR-GAN on COCO (BoO-18/GR-GAN cfg/coco_GRAGN.yml; reference §3).
    "grgan-coco": dict(),
    # DM-GAN (MinfengZhu/DM-GAN cfg/bird_DMGAN.yml, coco_DMGAN.yml; reference §1.1).
    "dmgan-cub": dict(_DMGAN, words_num=18, vocab_size=5450, r_num=2,
                      matching=(MatchTerm(-1, "word", 5.0), MatchTerm(-1, "sentence", 5.0))),
    "dmgan-coco": dict(_DMGAN, words_num=12, vocab_size=27297, r_num=3,
                       matching=(MatchTerm(-1, "word", 50.0), MatchTerm(-1, "sentence", 50.0))),
    # AttnGAN on CUB (taoxugit/AttnGAN cfg/bird_attn2.yml; reference §2.1).
    "attngan-cub": dict(_DMGAN, attention="attention", words_num=18, vocab_size=5450, gf_dim=32,
                        df_dim=64, r_num=2, d_norm="batch", damsm_align_corners=False,
                        matching=(MatchTerm(-1, "word", 5.0), MatchTerm(-1, "sentence", 5.0))),
    # GR-GAN topology at test sizes (16 -> 32 -> 64 pixels); builds and steps in milliseconds.
    "tiny": dict(text_dim=32, words_num=6, vocab_size=64, gf_dim=8, z_dim=16, condition_dim=8,
                 r_num=1, base_size=16, df_dim=4, clip_layers=(1, 1, 1, 1), clip_width=8,
                 clip_resolution=64, clip_embed_dim=32, clip_context=12, clip_text_width=32,
                 clip_text_heads=2, clip_text_layers=1, freeze_clip=False),
    # A CPU demo on the 64x64 shapes dataset (16 -> 32 -> 64): `python -m t2i_fast.train`.
    # Narrow G and Ds so ~2,100 steps fit in minutes on 2 cores (its training values are in
    # t2i_fast.train.config.TRAIN_PRESETS).
    # Projection heads on D2 and D3: with upstream's concatenation D3 tells shapes apart on
    # real images hardly better than chance. GR-GAN's matching terms at a quarter of its
    # weights, read through a random shift of up to 4 pixels: the frozen ITM reads the
    # caption in cues that are not the shape (pixel-aligned: textures), and at full weight
    # its pull outweighs D's (benchmarks/NOTES.md, "Learning on the shapes dataset").
    "small": dict(text_dim=64, words_num=12, vocab_size=256, gf_dim=16, z_dim=32,
                  condition_dim=32, r_num=1, base_size=16, df_dim=16, clip_layers=(1, 1, 1, 1),
                  clip_width=16, clip_resolution=64, clip_embed_dim=64, clip_context=16,
                  clip_text_width=64, clip_text_heads=4, clip_text_layers=2, freeze_clip=False,
                  matching_jitter=0.0625, d_cond_head="projection",
                  matching=(MatchTerm(1, "sentence", 0.25), MatchTerm(-1, "word", 0.25),
                            MatchTerm(-1, "sentence", 1.0))),
}


def get_config(name, **overrides):
    """The preset `name` with `overrides` applied (unknown keys raise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return Config.from_dict({"name": name, **PRESETS[name], **overrides})


def scaled_down(cfg, **overrides):
    """The same topology (stages, heads, norms, encoders) at test sizes: narrow layers and a
    16-pixel base stage. Key names stay; shapes shrink."""
    small = dict(text_dim=32, words_num=min(cfg.words_num, 6), vocab_size=64, rnn_input=16,
                 gf_dim=8, z_dim=16, condition_dim=8, r_num=min(cfg.r_num, 2), base_size=16,
                 df_dim=4, clip_layers=(1, 1, 1, 1), clip_width=8, clip_resolution=64,
                 clip_embed_dim=32, clip_context=12, clip_text_width=32, clip_text_heads=2,
                 clip_text_layers=1, damsm_width=0.125, damsm_size=75)
    return dataclasses.replace(cfg, name=cfg.name + "-scaled", **{**small, **overrides})


__all__ = ["Config", "StageSpec", "MatchTerm", "PRESETS", "get_config", "scaled_down"]

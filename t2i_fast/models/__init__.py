"""GR-GAN, DM-GAN and AttnGAN on the public ops of `t2i_fast.ops`.

    from t2i_fast.models import build_models, get_config, text_features
    models = build_models(get_config("tiny", memory="lean"))

Files, each one topic:
    config.py          Config dataclass, StageSpec (refinement schedule), presets, scaled_down
    layers.py          GLU, upBlock, ResBlock, and each block as memory units
    memory.py          memory policies eager / lean / max, byte estimates, the budget plan
    chain.py           a block as a chain of units, run under lean / max by one autograd Function
    refine.py          NEXT_STAGE_G (dynamic memory) and ATT_STAGE_G (AttnGAN attention)
    generator.py       CA_NET, INIT_STAGE_G, GET_IMAGE_G, G_NET (GRG with a schedule), configure
    discriminators.py  SpectralNorm, D_NET64/128/256 with UNCOND_DNET / COND_DNET heads
    itm.py             the ITM: CLIP RN101-architecture encoders + heads, OpenAI-name loading
    damsm.py           RNN_ENCODER (BiLSTM) and CNN_ENCODER (Inception-v3 trunk)
    losses.py          D / G adversarial losses, KL, DAMSM / ITM matching terms
    build.py           build_models, text_features, weights_init
    upstream.py        load_upstream: published DM-GAN / AttnGAN / GR-GAN weights, upstream
                       conventions

Importing this package builds nothing and touches no device.
"""
from t2i_fast.models.build import (GANModels, build_discriminators, build_generator,
                                   build_image_encoder, build_models, build_text_encoder,
                                   text_features, weights_init)
from t2i_fast.models.config import PRESETS, Config, MatchTerm, StageSpec, get_config, scaled_down
from t2i_fast.models.damsm import CNN_ENCODER, RNN_ENCODER
from t2i_fast.models.discriminators import (D_GET_LOGITS, D_NET, D_NET64, D_NET128, D_NET256,
                                            SpectralNorm)
from t2i_fast.models.generator import CA_NET, GET_IMAGE_G, G_NET, INIT_STAGE_G, configure
from t2i_fast.models.itm import CLIP, ITM, ModifiedResNet
from t2i_fast.models.layers import GLU, ResBlock, same_block, up_block
from t2i_fast.models.memory import POLICIES, MemoryBudgetError
from t2i_fast.models.losses import (KL_loss, adversarial_term, d_condition, discriminator_loss,
                                    generator_adversarial, generator_loss,
                                    matching_aware_penalty, matching_loss, matching_ramp,
                                    matching_terms)
from t2i_fast.models.refine import ATT_STAGE_G, NEXT_STAGE_G
from t2i_fast.models.upstream import (UPSTREAM_PRESETS, load_upstream, upstream_config,
                                      upstream_conventions)

__all__ = [
    "Config", "StageSpec", "MatchTerm", "PRESETS", "get_config", "scaled_down",
    "GANModels", "build_models", "build_generator", "build_discriminators",
    "build_text_encoder", "build_image_encoder", "text_features", "weights_init",
    "G_NET", "CA_NET", "INIT_STAGE_G", "GET_IMAGE_G", "NEXT_STAGE_G", "ATT_STAGE_G",
    "configure", "GLU", "ResBlock", "up_block", "same_block", "POLICIES", "MemoryBudgetError",
    "D_NET", "D_NET64", "D_NET128", "D_NET256", "D_GET_LOGITS", "SpectralNorm",
    "ITM", "CLIP", "ModifiedResNet", "RNN_ENCODER", "CNN_ENCODER",
    "KL_loss", "discriminator_loss", "generator_adversarial", "generator_loss",
    "matching_terms", "matching_loss", "matching_ramp", "d_condition", "adversarial_term",
    "matching_aware_penalty",
    "UPSTREAM_PRESETS", "load_upstream", "upstream_config", "upstream_conventions",
]

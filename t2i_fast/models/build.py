"""Build every network of a run from a Config, and the text features G reads.

    models = build_models(get_config("tiny"))
    words, sent, mask, cap_lens = text_features(models, captions, cap_lens)
    images, _, mu, logvar = models.generator(z, sent, words, mask)
"""
from dataclasses import dataclass

import torch
from torch import nn

from t2i_fast.models.config import Config
from t2i_fast.models.damsm import CNN_ENCODER, RNN_ENCODER
from t2i_fast.models.discriminators import D_NET
from t2i_fast.models.generator import G_NET
from t2i_fast.models.itm import ITM


@dataclass
class GANModels:
    config: Config
    generator: G_NET
    discriminators: nn.ModuleList   # one per generator image, in order
    text_encoder: nn.Module         # ITM (clip) or RNN_ENCODER
    image_encoder: nn.Module        # ITM (the same object) or CNN_ENCODER

    def to(self, *args, **kwargs):
        for net in (self.generator, self.discriminators, self.text_encoder, self.image_encoder):
            net.to(*args, **kwargs)
        return self

    def encoder_state(self):
        """{'text_encoder': state dict[, 'image_encoder': state dict]} (one ITM: text only)."""
        out = {"text_encoder": self.text_encoder.state_dict()}
        if self.image_encoder is not self.text_encoder:
            out["image_encoder"] = self.image_encoder.state_dict()
        return out

    def load_encoder_state(self, state):
        """Inverse of encoder_state; KeyError / RuntimeError when `state` does not fit."""
        if not isinstance(state, dict):
            raise KeyError("text_encoder")
        self.text_encoder.load_state_dict(state["text_encoder"])
        if self.image_encoder is not self.text_encoder:
            self.image_encoder.load_state_dict(state["image_encoder"])


def weights_init(module):
    """Upstream weights_init: orthogonal Conv*/Linear weights (weight_bar under spectral norm),
    zero Linear biases, BN weight ~ N(1, 0.02) and bias 0; conv biases keep their defaults."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            weight = getattr(m, "weight_bar", None)
            if weight is None:
                weight = m.weight
            nn.init.orthogonal_(weight.data, 1.0)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.data.fill_(0.0)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0.0)
    return module


def build_generator(cfg):
    return weights_init(G_NET.from_config(cfg))


def build_discriminator(cfg, index):
    """The discriminator of image `index` (sizes cfg.image_sizes, heads cfg.d_heads)."""
    net = D_NET(cfg.image_sizes[index], cfg.df_dim, cfg.text_dim,
                b_jcu=cfg.d_heads[index] in ("uncond", "both"), norm=cfg.d_norm,
                memory=cfg.memory, cond_head=cfg.d_cond_head)
    return weights_init(net) if cfg.d_weights_init else net


def build_discriminators(cfg):
    return nn.ModuleList(build_discriminator(cfg, i) for i in range(len(cfg.image_sizes)))


def build_text_encoder(cfg):
    if cfg.text_encoder == "clip":
        return ITM.from_config(cfg)
    return RNN_ENCODER(cfg.vocab_size, cfg.rnn_input, nhidden=cfg.text_dim,
                       rnn_type=cfg.rnn_type)


def build_image_encoder(cfg, text_encoder=None):
    if cfg.image_encoder == "itm":
        return text_encoder if isinstance(text_encoder, ITM) else ITM.from_config(cfg)
    return CNN_ENCODER(cfg.text_dim, cfg.damsm_width, cfg.damsm_size, cfg.damsm_align_corners)


def build_models(cfg, device=None):
    """G, the Ds, and the text/image encoders of `cfg` (GR-GAN: one ITM serves both)."""
    text = build_text_encoder(cfg)
    models = GANModels(cfg, build_generator(cfg), build_discriminators(cfg), text,
                       build_image_encoder(cfg, text))
    return models.to(device) if device is not None else models


def text_features(models, captions, cap_lens=None):
    """Encode captions for G: words (B, D, T), sentence (B, D), mask (B, T), cap_lens (B,).

    clip: captions are CLIP tokens (B, context); the word slots are tokens 1..words_num
    (`ITM.word_slots`). rnn: captions are word ids (B, L) with 0 = padding and cap_lens their
    lengths; words cover the longest caption and the mask is captions == 0 (as upstream).
    """
    cfg = models.config
    if cfg.text_encoder == "clip":
        words, sent = models.text_encoder.encode_text(captions)
        words, mask, lens = ITM.word_slots(words, captions, cfg.words_num, cfg.mask_compat)
        return words, sent, mask, lens
    if cap_lens is None:
        cap_lens = (captions != 0).sum(dim=1)
    words, sent = models.text_encoder(captions, cap_lens)
    mask = captions[:, :words.shape[2]] == 0
    return words, sent, mask, torch.as_tensor(cap_lens, device=words.device)

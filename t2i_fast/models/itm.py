"""GR-GAN's image-text matcher (ITM): CLIP-RN101-architecture encoders plus trainable heads.

    regions, code = itm.encode_image(images)     # (B, D, R/16, R/16), (B, D); images in [-1, 1]
    words, sent = itm.encode_text(tokens)        # (B, D, context), (B, D)

The CLIP part (`itm.model`) uses OpenAI's module layout, so a CLIP RN101 state dict in OpenAI
naming (visual.*, transformer.resblocks.*, token_embedding, positional_embedding, ln_final,
text_projection, logit_scale) loads with `load_clip`; nothing is downloaded. The heads
(`itm.MLP`) are GR-GAN's (reference §3.1): emb_features (1x1 conv on layer3), emb_cnn_code
(on the attention-pool vector), dense_word + LayerNorm(eps 1e-12) per token, dense_sent.
Sizes are arguments, so tests build tiny ones.
"""
import os
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from t2i_fast.models.layers import expect


# --------------------------------------------------------------------------------------------
# Image side: ModifiedResNet
# --------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """1x1, 3x3, [avgpool stride], 1x1 (x4 channels); the shortcut also pools before its conv
    (anti-aliased strided blocks: no strided convolution anywhere)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))   # OpenAI key layout
            self.downsample.add_module("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean token (plus positions) over all spatial tokens.

    spacial_dim: side of the input map; embed_dim: its channels; output_dim: result width.
    """

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)                                   # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        batch, length, dim = tokens.shape
        heads = self.num_heads

        def split(t):
            return t.view(batch, -1, heads, dim // heads).transpose(1, 2)
        q = split(self.q_proj(tokens[:, :1]))
        out = F.scaled_dot_product_attention(q, split(self.k_proj(tokens)),
                                             split(self.v_proj(tokens)))
        return self.c_proj(out.transpose(1, 2).reshape(batch, dim))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avgpool, four stages, attention pool.

    layers: bottlenecks per stage ((3, 4, 23, 3) for RN101); width: stem width (64);
    output_dim: pooled vector width; heads: attention-pool heads; input_resolution: image side.
    forward returns (pooled (B, output_dim), layer3 map (B, 16*width, S/16, S/16)).
    """

    def __init__(self, layers, output_dim, heads, input_resolution=224, width=64):
        super().__init__()
        self.input_resolution, self.width = input_resolution, width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        regions = self.layer3(self.layer2(self.layer1(x)))
        return self.attnpool(self.layer4(regions)), regions


# --------------------------------------------------------------------------------------------
# Text side: causal Transformer
# --------------------------------------------------------------------------------------------

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, causal):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=causal)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.width = width
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads)
                                         for _ in range(layers)])

    def forward(self, x, causal):
        for block in self.resblocks:
            x = block(x, causal)
        return x


class CLIPText:
    """Mixin: CLIP's text encoder as top-level attributes (OpenAI key names: transformer.*,
    token_embedding, positional_embedding, ln_final, text_projection, logit_scale). Shared by
    the ResNet CLIP below and the ViT CLIP of t2i_fast.metrics.clip_vit."""

    def _build_text(self, embed_dim, context_length, vocab_size, width, heads, layers):
        self.context_length = context_length
        self.transformer = Transformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))     # log(1/0.07), as CLIP
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def encode_text_tokens(self, tokens):
        """tokens (B, context) -> per-token features (B, context, width), sentence (B, embed).

        The sentence is the feature at the end-of-text token, the largest id in each row.
        """
        expect(tokens, (None, self.context_length), "CLIP tokens")
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device,
                            dtype=x.dtype).triu_(1)
        x = self.ln_final(self.transformer(x, causal))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x, eot @ self.text_projection


class CLIP(CLIPText, nn.Module):
    """The two CLIP encoders in OpenAI's layout (state-dict compatible with a CLIP RN model).

    embed_dim: joint width; image_resolution, vision_layers, vision_width: ModifiedResNet;
    context_length, vocab_size, transformer_width/heads/layers: the text Transformer.
    """

    def __init__(self, embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3),
                 vision_width=64, context_length=77, vocab_size=49408, transformer_width=512,
                 transformer_heads=8, transformer_layers=12):
        super().__init__()
        self.visual = ModifiedResNet(vision_layers, embed_dim, vision_width * 32 // 64,
                                     image_resolution, vision_width)
        self._build_text(embed_dim, context_length, vocab_size, transformer_width,
                         transformer_heads, transformer_layers)


# --------------------------------------------------------------------------------------------
# The ITM
# --------------------------------------------------------------------------------------------

class ITM_HEADS(nn.Module):  # noqa: N801
    """GR-GAN's trainable MLP heads. nef: output width D; region_dim: layer3 channels;
    embed_dim: CLIP joint width; text_width: Transformer width."""

    def __init__(self, nef, region_dim, embed_dim, text_width):
        super().__init__()
        self.emb_features = nn.Conv2d(region_dim, nef, 1, bias=False)
        self.emb_cnn_code = nn.Linear(embed_dim, nef)
        self.dense_word = nn.Linear(text_width, nef)
        self.LayerNorm = nn.LayerNorm(nef, eps=1e-12)
        self.dense_sent = nn.Linear(embed_dim, nef)


class ITM(nn.Module):
    """CLIP (frozen by default, kept in eval mode) + trainable heads.

    nef: matching width D; freeze_clip: no gradients to CLIP's parameters (gradients still flow
    through it to the images); other arguments: CLIP sizes (RN101 defaults).
    """

    def __init__(self, nef=512, embed_dim=512, image_resolution=224,
                 vision_layers=(3, 4, 23, 3), vision_width=64, context_length=77,
                 vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12, freeze_clip=True):
        super().__init__()
        self.ef_dim, self.freeze_clip = nef, freeze_clip
        self.model = CLIP(embed_dim, image_resolution, vision_layers, vision_width,
                          context_length, vocab_size, transformer_width, transformer_heads,
                          transformer_layers)
        self.MLP = ITM_HEADS(nef, vision_width * 16, embed_dim, transformer_width)
        self._freeze()

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.text_dim, cfg.clip_embed_dim, cfg.clip_resolution, cfg.clip_layers,
                   cfg.clip_width, cfg.clip_context, cfg.vocab_size, cfg.clip_text_width,
                   cfg.clip_text_heads, cfg.clip_text_layers, cfg.freeze_clip)

    def _freeze(self):
        self.model.requires_grad_(not self.freeze_clip)
        if self.freeze_clip:
            self.model.eval()

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_clip:          # frozen BN statistics stay those of the checkpoint
            self.model.eval()
        return self

    def encode_image(self, images):
        """images (B, 3, H, W) in [-1, 1] -> regions (B, D, S/16, S/16), code (B, D).

        Resized bilinearly to the CLIP resolution without CLIP's mean/std (as GR-GAN).
        """
        expect(images, (None, 3, None, None), "ITM images")
        size = self.model.visual.input_resolution
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   align_corners=False)
        pooled, regions = self.model.visual(images)
        return self.MLP.emb_features(regions), self.MLP.emb_cnn_code(pooled)

    def encode_text(self, tokens):
        """tokens (B, context) -> words (B, D, context), sentence (B, D)."""
        tokens_out, sent = self.model.encode_text_tokens(tokens)
        words = self.MLP.LayerNorm(self.MLP.dense_word(tokens_out))
        return words.transpose(1, 2), self.MLP.dense_sent(sent)

    @staticmethod
    def word_slots(words, tokens, words_num, mask_compat=False):
        """The T = words_num word slots G reads, their mask (B, T) and caption lengths (B,).

        Slots are tokens 1..T (after start-of-text). Correct: a slot is masked when its token
        is padding (0). mask_compat: GR-GAN's mask (tokens == 0)[:, :T], indexed from token 0,
        one position off the slots (reference §3.2).
        """
        expect(words, (tokens.shape[0], None, tokens.shape[1]), "ITM.word_slots words")
        slots = words[:, :, 1:words_num + 1]
        if mask_compat:
            mask = tokens[:, :words_num] == 0
        else:
            mask = tokens[:, 1:words_num + 1] == 0
        cap_lens = (tokens[:, 1:words_num + 1] != 0).sum(dim=1).clamp(min=1)
        return slots, mask, cap_lens

    # ---- loading ----------------------------------------------------------------------------
    def load_clip(self, source, strict=True):
        """Load CLIP weights in OpenAI naming from a path (state dict, TorchScript archive or a
        full ITM checkpoint with model.* and MLP.* keys) or from a dict. Returns the keys
        loaded. Shape or name mismatches raise with the offending keys listed."""
        state = _read_state(source) if isinstance(source, (str, os.PathLike)) else dict(source)
        if any(k.startswith("model.") for k in state):      # an ITM checkpoint
            self.load_state_dict(state, strict=strict)
            self._freeze()
            return list(state)
        state = {k: v for k, v in state.items()
                 if k not in ("input_resolution", "context_length", "vocab_size")}
        own = self.model.state_dict()
        wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        if wrong or (strict and (missing or unexpected)):
            raise ValueError("ITM.load_clip: the checkpoint does not fit this CLIP architecture"
                             + "".join(f"\n  shape {w}" for w in wrong[:10])
                             + "".join(f"\n  missing {k}" for k in missing[:10])
                             + "".join(f"\n  unexpected {k}" for k in unexpected[:10]))
        self.model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        self._freeze()
        return [k for k in state if k in own]


def _read_state(path):
    """A state dict from a file; TorchScript archives (OpenAI's RN101.pt) via torch.jit.load."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(name.endswith("constants.pkl") for name in archive.namelist())
        if scripted:
            try:
                module = torch.jit.load(path, map_location="cpu")
            except Exception as err:
                raise ValueError(f"cannot read CLIP checkpoint {path} (TorchScript archive): "
                                 f"{err}") from err
            return {k: v.float() for k, v in module.state_dict().items()}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated or foreign files: say which file and why
        raise ValueError(f"cannot read CLIP checkpoint {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

"""CLIP ViT (B/32 by default): the embedding space of GR-GAN's CMD metric (reference §3.6).

    clip = ClipViT.from_file("ViT-B-32.pt")                  # local file only, nothing downloaded
    img = clip.encode_image(fake, input_range=(-1, 1))       # (B, 512), from (B, 3, H, W)
    txt = clip.encode_text(tokens)                           # (B, 512), from (B, 77) token ids

Parameters use OpenAI's key names (visual.conv1, visual.class_embedding,
visual.positional_embedding, visual.ln_pre, visual.transformer.resblocks.N.*, visual.ln_post,
visual.proj, then the text tower of `t2i_fast.models.itm.CLIPText`), so OpenAI's TorchScript
archive, a plain state dict of it, and open_clip checkpoints of the same model load directly.

Naming differences handled by `openai_names` (from open_clip's model.py and factory.py):
  * open_clip `CLIP`: the same keys as OpenAI;
  * open_clip `CustomTextCLIP`: the text tower under `text.` (`text.token_embedding.weight`,
    `text.positional_embedding`, `text.transformer.*`, `text.ln_final.*`,
    `text.text_projection`); `logit_scale` stays top-level;
  * training checkpoints: {"state_dict": ...} with keys under `module.` (DistributedDataParallel)
    and possibly `_orig_mod.` (torch.compile); `model.` is stripped likewise;
  * OpenAI's TorchScript archive adds `input_resolution`, `context_length`, `vocab_size`.
Not handled (they raise with the keys listed): Hugging Face `transformers` naming
(vision_model.*, text_model.*), LayerScale (`ls_1.gamma`), a text projection stored as an
nn.Linear (`text_projection.weight`), SigLIP's `logit_bias`.

The MLP activation is not recorded in a state dict: OpenAI's weights use QuickGELU (the
default here); open_clip models trained without "-quickgelu" in their name use nn.GELU, so
pass activation="gelu" for those. Head counts are not recorded either: width // 64, as in
OpenAI's and open_clip's ViT configurations, unless given.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from t2i_fast.models.itm import CLIPText, Transformer, _read_state
from t2i_fast.models.layers import expect

# keys OpenAI's TorchScript archive carries besides the parameters
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# prefixes some checkpoints put in front of every key (DDP, torch.compile, wrappers)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# open_clip CustomTextCLIP keeps these text-tower names under "text."
_TEXT_NAMES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
               "text_projection")
_ACTIVATIONS = {"quick_gelu": "QuickGELU (OpenAI's weights)", "gelu": "nn.GELU (open_clip)"}


class VisionTransformer(nn.Module):
    """OpenAI's ViT image tower.

    input_resolution: image side S; patch_size: P (S % P == 0); width: token width W;
    layers, heads: the Transformer; output_dim: joint embedding width E.
    forward: images (B, 3, S, S) -> (B, E), the projected class token after ln_post.
    """

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        if input_resolution % patch_size:
            raise ValueError(f"VisionTransformer: input_resolution {input_resolution} is not a "
                             f"multiple of patch_size {patch_size}")
        self.input_resolution, self.patch_size = input_resolution, patch_size
        grid = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))             # (W,)
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))            # (W, E)

    def forward(self, images):
        size = self.input_resolution
        expect(images, (None, 3, size, size), "VisionTransformer images")
        x = self.conv1(images).flatten(2).transpose(1, 2)                          # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x), None)                                 # (B, 1+g*g, W)
        return self.ln_post(x[:, 0]) @ self.proj


class ClipViT(CLIPText, nn.Module):
    """CLIP with a ViT image tower, in OpenAI's layout (ViT-B/32 sizes by default).

    embed_dim: joint width E; image_resolution, vision_patch_size, vision_width, vision_layers,
    vision_heads: the ViT; context_length, vocab_size, transformer_width/heads/layers: the
    text Transformer; heads default to width // 64; activation: "quick_gelu" (OpenAI) or
    "gelu" (open_clip models trained without QuickGELU).
    """

    def __init__(self, embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                 vision_patch_size=32, vision_heads=None, context_length=77, vocab_size=49408,
                 transformer_width=512, transformer_heads=None, transformer_layers=12,
                 activation="quick_gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"ClipViT: activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.activation = activation
        self.visual = VisionTransformer(
            image_resolution, vision_patch_size, vision_width, vision_layers,
            _heads(vision_heads, vision_width, "vision_heads"), embed_dim)
        self._build_text(embed_dim, context_length, vocab_size, transformer_width,
                         _heads(transformer_heads, transformer_width, "transformer_heads"),
                         transformer_layers)
        if activation == "gelu":
            for block in (*self.visual.transformer.resblocks, *self.transformer.resblocks):
                block.mlp.gelu = nn.GELU()       # parameter-free: key names are unchanged

    # ---- encoders ---------------------------------------------------------------------------
    def preprocess(self, images, input_range=(0.0, 1.0), antialias=True):
        """images (B, 3, H, W) with values in `input_range` -> (B, 3, S, S) in [0, 1].

        GR-GAN's CMD preprocessing: map to [0, 1], resize to the model resolution S (bilinear,
        antialiased when shrinking, like torchvision's Resize of a PIL image) and do *not*
        normalise with CLIP's mean/std. Generator outputs in [-1, 1] need input_range=(-1, 1).
        Values are not clamped, and the uint8 rounding of upstream's PNG round trip is not
        reproduced.
        """
        expect(images, (None, 3, None, None), "ClipViT images")
        low, high = (float(v) for v in input_range)
        if not high > low:
            raise ValueError(f"ClipViT: input_range must be (low, high) with high > low, "
                             f"got {input_range}")
        x = (images.to(self.visual.proj.dtype) - low) / (high - low)
        size = self.visual.input_resolution
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=antialias)
        return x

    def encode_image(self, images, input_range=(0.0, 1.0), antialias=True):
        """images (B, 3, H, W) with values in `input_range` -> embeddings (B, E), not
        L2-normalised; `preprocess` documents the (GR-GAN CMD) preprocessing."""
        return self.visual(self.preprocess(images, input_range, antialias))

    def encode_text(self, tokens):
        """tokens (B, context) CLIP ids (SOT ... EOT, 0-padded) -> embeddings (B, E): the
        ln_final feature at the EOT token (the largest id of each row) times text_projection."""
        return self.encode_text_tokens(tokens)[1]

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state, activation="quick_gelu", vision_heads=None,
                        transformer_heads=None, source="state dict"):
        """A frozen eval-mode ClipViT with the sizes of `state` (OpenAI or open_clip naming).

        Missing, unexpected or wrongly shaped keys raise ValueError with the keys listed.
        """
        state = openai_names(state, source)
        sizes = infer_sizes(state, source)
        model = cls(**sizes, vision_heads=vision_heads, transformer_heads=transformer_heads,
                    activation=activation)
        own = model.state_dict()
        wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if wrong or missing or unexpected:
            raise ValueError(f"ClipViT: {source} does not fit a CLIP ViT in OpenAI naming"
                             + _listing("shape", wrong) + _listing("missing", missing)
                             + _listing("unexpected", unexpected))
        model.load_state_dict(state)
        return model.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path, activation="quick_gelu", vision_heads=None,
                  transformer_heads=None):
        """Load a local checkpoint: OpenAI's TorchScript archive (ViT-B-32.pt), a plain state
        dict, or an open_clip checkpoint ({"state_dict": ...} or bare). Half-precision weights
        become float32. FileNotFoundError when `path` is absent; ValueError when it cannot be
        read or its keys do not fit (listed)."""
        return cls.from_state_dict(_read_state(path), activation, vision_heads,
                                   transformer_heads, source=f"checkpoint {path}")


# --------------------------------------------------------------------------------------------
# State-dict naming and sizes
# --------------------------------------------------------------------------------------------

def openai_names(state, source="state dict"):
    """Keys of an OpenAI or open_clip CLIP ViT state dict in OpenAI naming (see module doc)."""
    state = {k: v for k, v in state.items() if k not in _ARCHIVE_EXTRAS and k != "attn_mask"}
    if not state:
        raise ValueError(f"ClipViT: {source} holds no parameters")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    if any(k.startswith(("vision_model.", "text_model.")) for k in state):
        raise ValueError(f"ClipViT: {source} uses Hugging Face transformers naming "
                         "(vision_model.*, text_model.*), which is not supported; use OpenAI's "
                         "ViT-B-32.pt or an open_clip checkpoint")
    out = {}
    for k, v in state.items():
        if k.startswith("text.") and k[5:].startswith(_TEXT_NAMES):    # open_clip CustomTextCLIP
            k = k[5:]
        out[k] = v
    return out


def infer_sizes(state, source="state dict"):
    """ClipViT constructor sizes (all but heads) from the shapes of an OpenAI-named state."""
    need = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "ln_final.weight")
    absent = [k for k in need if k not in state]
    if absent:
        kind = (" (a ResNet CLIP: use t2i_fast.models.ITM.load_clip)"
                if any(k.startswith("visual.attnpool.") for k in state) else "")
        raise ValueError(f"ClipViT: {source} is not a CLIP ViT state dict{kind}; missing "
                         + ", ".join(absent))
    conv = state["visual.conv1.weight"]                           # (W, 3, P, P)
    tokens = state["visual.positional_embedding"].shape[0] - 1    # g * g
    grid = math.isqrt(tokens)
    if grid * grid != tokens or conv.dim() != 4:
        raise ValueError(f"ClipViT: {source}: visual.positional_embedding has {tokens} patch "
                         f"positions, not a square grid, or visual.conv1.weight is not 4-D")
    return dict(
        embed_dim=state["visual.proj"].shape[1],
        image_resolution=grid * conv.shape[-1],
        vision_layers=_count_blocks(state, "visual.transformer.resblocks."),
        vision_width=conv.shape[0],
        vision_patch_size=conv.shape[-1],
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=state["ln_final.weight"].shape[0],
        transformer_layers=_count_blocks(state, "transformer.resblocks."),
    )


def _count_blocks(state, prefix):
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _heads(heads, width, name):
    heads = width // 64 if heads is None else heads
    if heads < 1 or width % heads:
        raise ValueError(f"ClipViT: {name}={heads} does not divide width {width} (the default "
                         "is width // 64; pass it for narrower models)")
    return heads


def _listing(what, items, limit=10):
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "".join(f"\n  {what} {k}" for k in items[:limit]) + more

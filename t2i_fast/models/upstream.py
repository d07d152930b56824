"""Published DM-GAN, AttnGAN and GR-GAN weights, read as the upstream repositories distribute
them, in models that follow every upstream convention.

    models = load_upstream("dmgan-cub", generator="bird_DMGAN.pth",
                           text_encoder="text_encoder200.pth",
                           image_encoder="image_encoder200.pth")
    models.generator.eval()
    images, maps, mu, logvar = models.generator(z, sent, words, mask)   # maps as upstream

Files are what the upstream code writes with torch.save: state dicts (legacy or zip format,
read with weights_only=True), with the `module.` prefix of DataParallel or without, with or
without BatchNorm's num_batches_tracked; GR-GAN's training checkpoints ({'netG': ...,
'netD': [...], ...}) give G and the Ds. A file that is missing, is not a state dict or does
not fit raises WeightsError naming the file, the offending keys and the preset it looks like.

The upstream conventions (UPSTREAM_CONFIG on the model Config, `upstream_conventions` on the
built modules):
  * mask_compat: the tiled word mask (AttnGAN #93), GR-GAN's off-by-one word mask and the
    unmasked word mean of its D3 condition;
  * sentence stages read the sentence repeated over the T word slots (no shortcut), so their
    attention maps are (B, T, H, W) like every other stage's;
  * G returns the maps of every refinement stage without being asked (upstream G_NET does);
  * spectral norm runs its power iteration in eval mode too (upstream's runs on every call);
  * the DAMSM image encoder's frozen Inception trunk follows train() / eval(): under train()
    its BatchNorm uses batch statistics and updates its running ones, as in upstream DAMSM
    pretraining (upstream GAN training and sampling keep the encoder in eval()).
"""
import os
import pickle
import re
from collections.abc import Mapping

import torch

from t2i_fast.errors import ConfigError, WeightsError
from t2i_fast.models.build import (build_discriminator, build_image_encoder, build_models,
                                   build_text_encoder)
from t2i_fast.models.config import get_config
from t2i_fast.models.damsm import CNN_ENCODER
from t2i_fast.models.discriminators import SpectralNorm
from t2i_fast.models.generator import G_NET

UPSTREAM_PRESETS = ("dmgan-cub", "dmgan-coco", "attngan-cub", "grgan-coco")
UPSTREAM_CONFIG = {"mask_compat": True, "sentence_shortcut": False}
PARTS = ("generator", "text_encoder", "image_encoder", "discriminators")
_SHOWN = 6      # offending keys listed per kind in an error
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def upstream_config(preset, **overrides):
    """The Config of an upstream preset with the upstream conventions (overrides win)."""
    if preset not in UPSTREAM_PRESETS:
        raise ConfigError(f"published weights exist for the presets {list(UPSTREAM_PRESETS)}, "
                          f"got {preset!r}")
    return get_config(preset, **{**UPSTREAM_CONFIG, **overrides})


def upstream_conventions(models):
    """Switch the built modules of `models` (a GANModels) to the upstream behaviour that is not
    part of the Config (see the module docstring); returns `models`."""
    models.generator.return_attn = True
    for net in (models.discriminators, models.image_encoder):
        for module in net.modules():
            if isinstance(module, SpectralNorm):
                module.power_iteration_in_eval = True
            elif isinstance(module, CNN_ENCODER):
                module.trunk_in_eval = False
                module.train(module.training)
    return models


def load_upstream(preset, generator=None, text_encoder=None, image_encoder=None,
                  discriminators=None, *, device=None, **overrides):
    """The models of `preset` (one of UPSTREAM_PRESETS) with the given published weights and
    every upstream convention; the same GANModels as build_models, parts not given keep
    build_models' initial weights. Modules are in training mode, as built.

    Each weight argument is a path or an already loaded state dict. discriminators: one per
    generator image (D64, D128, D256 order), or one GR-GAN checkpoint holding 'netD'.
    GR-GAN's ITM is one file for both encoders: give it as text_encoder. overrides: model
    Config fields; vocab_size defaults to the DAMSM text encoder's vocabulary.
    """
    states = read_parts(generator=generator, text_encoder=text_encoder,
                        image_encoder=image_encoder, discriminators=discriminators)
    embedding = states.get("text_encoder", {}).get("encoder.weight")
    if embedding is not None and "vocab_size" not in overrides:
        overrides["vocab_size"] = embedding.shape[0]
    cfg = upstream_config(preset, **overrides)
    check_parts(cfg, states)                # before anything is built and initialised
    models = build_models(cfg)
    load_parts(models, states)
    upstream_conventions(models)
    return models.to(device) if device is not None else models


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------

def _name(source):
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state dict"


def read_weights(source, what):
    """The object in the weight file `source` (a path; a Mapping is returned as is), loaded
    with weights_only=True; WeightsError naming `what` and the file when it cannot be."""
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise WeightsError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # torch's own messages advise weights_only=False, which would run the file's code
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        held = f" ({found.group(1)})" if found else ""
        raise WeightsError(f"{what} file {path} holds Python objects{held} besides tensors "
                           f"and plain containers: refused, not run") from e
    except Exception as e:          # archive and EOF errors: a damaged or foreign file
        raise WeightsError(f"{what} file {path} is not a PyTorch weight file (truncated, "
                           f"damaged or another format: {type(e).__name__})") from e


def as_state_dict(obj, what, source):
    """obj as {key: tensor} without a DataParallel `module.` prefix; WeightsError otherwise."""
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty mapping" if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"{what} file {_name(source)} holds {kind}, not a state dict")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise WeightsError(f"{what} file {_name(source)} is not a state dict: entries "
                           f"{[str(k) for k in bad[:_SHOWN]]} are not named tensors")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _checkpoint_part(obj, key):
    """GR-GAN's training checkpoint stores G under 'netG' and the Ds as a list under 'netD'."""
    return obj.get(key) if isinstance(obj, Mapping) and "netG" in obj else None


def read_parts(generator=None, text_encoder=None, image_encoder=None, discriminators=None):
    """{part: state dict} ('discriminators': a list) of the given sources (paths or dicts)."""
    out = {}
    for part, source in (("generator", generator), ("text_encoder", text_encoder),
                         ("image_encoder", image_encoder)):
        if source is None:
            continue
        what = part.replace("_", " ")
        obj = read_weights(source, what)
        if part == "generator" and _checkpoint_part(obj, "netG") is not None:
            obj = obj["netG"]
        out[part] = as_state_dict(obj, what, source)
    if discriminators is not None:
        out["discriminators"] = _read_discriminators(discriminators)
    return out


def _read_discriminators(sources):
    if isinstance(sources, (str, os.PathLike, Mapping)):
        obj = read_weights(sources, "discriminator")
        listed = _checkpoint_part(obj, "netD")
        if not isinstance(listed, (list, tuple)):
            raise WeightsError(f"discriminator file {_name(sources)} is no GR-GAN checkpoint "
                               f"with a 'netD' list: give one file per discriminator")
        return [as_state_dict(s, f"discriminator {i}", sources) for i, s in enumerate(listed)]
    return [as_state_dict(read_weights(s, f"discriminator {i}"), f"discriminator {i}", s)
            for i, s in enumerate(sources)]


# --------------------------------------------------------------------------------------------
# Loading into modules
# --------------------------------------------------------------------------------------------

def _targets(cfg, states):
    """(part, index or None, state dict) of every state to load; ConfigError / WeightsError
    for parts the preset does not take in that form."""
    if "image_encoder" in states and cfg.image_encoder == "itm":
        raise ConfigError(f"preset {cfg.name!r} has one ITM for text and images: give its "
                          f"file as the text encoder only")
    out = [(part, None, states[part]) for part in PARTS[:3] if part in states]
    if "discriminators" in states:
        given, n = states["discriminators"], len(cfg.image_sizes)
        if len(given) != n:
            raise WeightsError(f"{len(given)} discriminator files for the {n} images of preset "
                               f"{cfg.name!r} (one per image, smallest first)")
        out += [("discriminators", i, state) for i, state in enumerate(given)]
    return out


def check_parts(cfg, states):
    """WeightsError unless every state of {part: state dict} fits the models of `cfg`
    (checked on shape-only modules: nothing is built or initialised)."""
    for part, index, state in _targets(cfg, states):
        with torch.device("meta"):
            module = _part_module(cfg, part, index)
        _check_fit(module.state_dict(), state, cfg, part, index)


def load_parts(models, states):
    """Load {part: state dict} (as read_parts returns) into `models`; WeightsError when one
    does not fit, naming the offending keys and the preset the file looks like."""
    for part, index, state in _targets(models.config, states):
        module = getattr(models, part) if index is None else models.discriminators[index]
        _check_fit(module.state_dict(), state, models.config, part, index)
        # BatchNorm fills in a missing num_batches_tracked by adding it to the dict it gets.
        module.load_state_dict(dict(state), strict=False)


def _check_fit(own, state, cfg, part, index):
    problems = mismatches(own, state)
    if problems:
        what = part.replace("_", " ") if index is None else f"discriminator {index}"
        hint = ""
        if part == "text_encoder" and "encoder.weight" in state and "encoder.weight" in own:
            hint = (f"; the file's vocabulary has {state['encoder.weight'].shape[0]} words, "
                    f"the model's {own['encoder.weight'].shape[0]} (the dataset's "
                    f"captions.pickle must be the one the encoder was trained on)")
        raise WeightsError(f"the {what} weights do not fit preset {cfg.name!r}: {problems}"
                           f"{hint}; {looks_like(state, part, index)}")


def mismatches(own, state):
    """What keeps `state` from loading into a module with state dict `own`, in words ('' if
    nothing): missing keys (num_batches_tracked may be absent), unexpected keys, shapes."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
    return "; ".join(parts)


def _part_module(cfg, part, index):
    if part == "generator":
        return G_NET.from_config(cfg)
    if part == "text_encoder":
        return build_text_encoder(cfg)
    if part == "image_encoder":
        return build_image_encoder(cfg)
    if index is None or index >= len(cfg.image_sizes):
        return None
    return build_discriminator(cfg, index)


def looks_like(state, part, index=None):
    """Which upstream preset's `part` the state dict matches, in words: every key and shape
    (it is that preset's), else the preset with the most fitting entries."""
    if part == "text_encoder" and "encoder.weight" not in state and \
            "MLP.dense_word.weight" not in state:
        return "it holds no text encoder (no encoder.weight or MLP.* keys)"
    scores = []
    for preset in UPSTREAM_PRESETS:
        cfg = get_config(preset)
        if part == "image_encoder" and cfg.image_encoder != "damsm":
            continue
        with torch.device("meta"):
            module = _part_module(cfg, part, index)
        if module is None:
            continue
        own = module.state_dict()
        if not mismatches(own, state):
            return f"it looks like the {part.replace('_', ' ')} of preset {preset!r}"
        fit = sum(1 for k, v in state.items() if k in own and own[k].shape == v.shape)
        scores.append((fit, preset))
    fit, preset = max(scores) if scores else (0, None)
    if not fit:
        return "it matches none of the upstream presets"
    return f"it matches no upstream preset; closest: {preset!r} ({fit} of {len(state)} entries)"


# --------------------------------------------------------------------------------------------
# Files by their contents (train --init-from)
# --------------------------------------------------------------------------------------------

def identify(obj):
    """The parts a loaded weight file holds, from its keys: [(part, None)], for a
    discriminator [('discriminators', image size)]."""
    if isinstance(obj, Mapping) and "netG" in obj:
        return [("generator", None)] + ([("discriminators", None)] if "netD" in obj else [])
    if not isinstance(obj, Mapping):
        return []
    # Key by key, unlike as_state_dict: any mapping is looked at here, state dict or not.
    obj = {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v
           for k, v in obj.items()}
    keys = set(obj)
    if "ca_net.fc.weight" in keys:
        return [("generator", None)]
    if ("encoder.weight" in keys and any(str(k).startswith("rnn.") for k in keys)) or \
            "MLP.dense_word.weight" in keys:
        return [("text_encoder", None)]
    if "emb_cnn_code.weight" in keys:
        return [("image_encoder", None)]
    logits = obj.get("COND_DNET.outlogits.0.weight")
    if any(str(k).startswith("img_code_s16.") for k in keys) and torch.is_tensor(logits):
        downs = {str(k).split(".")[0] for k in keys if str(k).startswith("img_code_s")}
        extra = len([d for d in downs if "_" not in d[len("img_code_s"):]]) - 1   # s32, s64..
        # the trunk ends at 4x4 after its down blocks (smaller test sizes at S/16)
        return [("discriminators", (64 << extra) if extra else 16 * logits.shape[-1])]
    return []


def sort_files(paths, image_sizes):
    """{part: state dict} (discriminators: a list in the order of `image_sizes`, the model's)
    for the files `paths`, each recognised by its keys; WeightsError for an unknown or
    repeated part."""
    found, ds = {}, {}
    for path in paths:
        obj = read_weights(path, "weight")
        parts = identify(obj)
        if not parts:
            raise WeightsError(f"{path} holds none of a generator, DAMSM / ITM encoder or "
                               f"discriminator of DM-GAN, AttnGAN or GR-GAN (unknown keys)")
        for part, index in parts:
            if part == "discriminators" and index is not None:
                if index in ds:
                    raise WeightsError(f"{path} and {ds[index][0]} are both the discriminator "
                                       f"of the {index}-pixel images")
                ds[index] = (path, obj)
                continue
            if part in found:
                raise WeightsError(f"{path} and {found[part][0]} both hold the "
                                   f"{part.replace('_', ' ')}")
            found[part] = (path, obj)
    sources = {part: obj for part, (_, obj) in found.items()}
    if ds:
        if "discriminators" in found:
            raise WeightsError(f"discriminators are given twice: in {found['discriminators'][0]}"
                               f" and as {ds[min(ds)][0]}")
        if sorted(ds) != sorted(image_sizes):
            raise WeightsError(f"the discriminator files are for images of {sorted(ds)} "
                               f"pixels; the model's are {list(image_sizes)}: give one each")
        sources["discriminators"] = [ds[size][1] for size in image_sizes]
    return read_parts(**sources)


__all__ = ["UPSTREAM_PRESETS", "UPSTREAM_CONFIG", "upstream_config", "upstream_conventions",
           "load_upstream", "read_parts", "load_parts", "sort_files", "identify", "looks_like"]

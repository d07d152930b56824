"""Matching encoders, noise, generated and real image batches, weight hashes."""
import hashlib
from dataclasses import replace

import torch

from t2i_fast.evaluate.common import EvalError
from t2i_fast.models import build_image_encoder, build_text_encoder, text_features
from t2i_fast.errors import WeightsError
from t2i_fast.train.checkpoint import load_checkpoint


# --------------------------------------------------------------------------------------------
# Encoders, generation, real images
# --------------------------------------------------------------------------------------------

class Matcher:
    """The matching encoders (ITM or DAMSM): global image codes and sentence embeddings."""

    def __init__(self, models, codec, device, source):
        self.models, self.codec, self.device, self.source = models, codec, device, source

    @torch.no_grad()
    def images(self, images):
        """(B, 3, S, S) in [-1, 1] -> codes (B, D) float32 on the CPU."""
        return self.models.image_encoder.encode_image(images.to(self.device))[1].float().cpu()

    @torch.no_grad()
    def sentences(self, ids, lens, batch_size=256):
        """Word ids (K, L), lengths (K,) -> sentence embeddings (K, D) float32 on the CPU."""
        out = []
        for lo in range(0, ids.shape[0], batch_size):
            tokens = self.codec.encode(ids[lo:lo + batch_size], lens[lo:lo + batch_size])
            sent = text_features(self.models, tokens.to(self.device),
                                 lens[lo:lo + batch_size].to(self.device))[1]
            out.append(sent.float().cpu())
        return torch.cat(out)

    def weights_hash(self):
        encoders = [self.models.text_encoder]
        if self.models.image_encoder is not self.models.text_encoder:
            encoders.append(self.models.image_encoder)
        return state_hash(*encoders)


def load_matcher(run, path):
    """The run's encoders, or ones of the same architecture from `path` (encoders.pt format)."""
    if path is None:
        return Matcher(run.models, run.codec, run.device, "run")
    cfg = run.model_cfg
    text = build_text_encoder(cfg)
    models = replace(run.models, text_encoder=text, image_encoder=build_image_encoder(cfg, text))
    try:
        models.load_encoder_state(load_checkpoint(path))
    except WeightsError as e:
        raise EvalError(f"--matcher {path}: {e}") from e
    except (KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise EvalError(f"--matcher {path}: expected {{'text_encoder': state dict, "
                        f"'image_encoder': state dict}} (RUN_DIR/encoders.pt format) for the "
                        f"run's model config {cfg.name!r}: {e}") from e
    for net in (models.text_encoder, models.image_encoder):
        net.to(run.device).eval()
    return Matcher(models, run.codec, run.device, str(path))


def generate_batches(run, captions, seed, batch_size):
    """Yields (rows slice, final images (b, 3, S, S) in [-1, 1] on the run's device)."""
    for sl, images in run.generate_batches(captions.ids, captions.lens, seed, batch_size):
        yield sl, images[-1].float()


def real_batches(ds, indices, batch_size, device):
    """Real images (b, 3, S, S) of the split's `indices`, as the dataset loads them at epoch 0."""
    for lo in range(0, len(indices), batch_size):
        chunk = [int(i) for i in indices[lo:lo + batch_size]]
        yield torch.stack([ds.load_image(i, ds.item_rng(i)) for i in chunk]).to(device)


def state_hash(*modules):
    """A short hash of the parameters and buffers of `modules` (names, shapes, values)."""
    h = hashlib.sha1()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def file_hash(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]

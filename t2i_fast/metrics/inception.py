"""The FID Inception-v3: the TensorFlow graph of 2015-12-05 as ported to PyTorch by pytorch-fid,
plus FID and Inception Score on top of it.

    net = InceptionFID.from_file("pt_inception-2015-12-05-6726825d.pth")   # local file only
    pool3, logits = net(images)            # images (B, 3, H, W) in [-1, 1] -> (B, 2048), (B, 1008)
    fid = fid_from_features("coco_val.npz", pool3_of_all_fakes)    # or (mu, sigma)
    is_mean, is_std = inception_score(logits_of_all_fakes, splits=10)

Graph. torchvision's Inception-v3 layout (same module names, so pytorch-fid's state-dict keys)
with the TF graph's differences that pytorch-fid patches in: the 3x3 average pools inside the A,
C and first E blocks exclude the zero padding (count_include_pad=False), the second E block
(Mixed_7c) max-pools its pool branch, there is no auxiliary head, and the classifier is 1008-way.
BatchNorm eps is 1e-3. The blocks are written here; torchvision is not needed.

Weights. Only a local file is read, never downloaded. Keys: `<block>.conv.weight` and
`<block>.bn.{weight,bias,running_mean,running_var}` for the 94 conv blocks (Conv2d_1a_3x3, ...,
Mixed_7c.branch_pool), then `fc.weight` (1008, 2048) and `fc.bias`; `*.bn.num_batches_tracked`
may be present or not. That is the naming of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
and also of torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`, whose conversion
script writes exactly these names (without num_batches_tracked). torch-fidelity's own
preprocessing (uint8 input, a TF1-style resize, (x - 128) / 128) is not reproduced; at 299x299,
where it does not resize, the same uint8 images scaled as it scales give the same features.

Preprocessing, `resize=` (FID_RESIZES), for images in [-1, 1] of any size:
  * "pytorch-fid" (default): bilinear resize of the float tensor to 299x299 with
    align_corners=False; the input is already in [-1, 1] (pytorch-fid maps [0, 1] to [-1, 1]
    after resizing; the resize is linear, so the order does not matter beyond rounding).
  * "clean": clean-fid's: each image rounded to uint8 as it is saved
    (t2i_fast.data.tensor_to_image), each channel resized by PIL's bicubic filter in 32-bit
    float ('F') mode and clipped to [0, 255] without rounding again, then scaled by
    (x - 128) / 128 as clean-fid (and the TF graph, and torch-fidelity) feed the network.
DM-GAN's FID script resizes images to 299 with PIL, which gives slightly different numbers again.
"""
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i_fast.data import tensor_to_image
from t2i_fast.metrics.frechet import frechet_distance, gaussian_stats, resolve_stats, to_float64

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_CLASSES = 1008
WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
                "weights-inception-2015-12-05-6726825d.pth (torch-fidelity)")
FID_RESIZES = {"pytorch-fid": "bilinear on the float tensor (pytorch-fid)",
               "clean": "PIL bicubic on the uint8 image (clean-fid)"}
DEFAULT_FID_RESIZE = "pytorch-fid"


def clean_resize(images, size):
    """images (B, 3, H, W) in [-1, 1] -> (B, 3, size, size) float32 on the same device, in
    clean-fid's network scale (x - 128) / 128 of the resized [0, 255] values (see the module
    docstring). Runs on the CPU through PIL, one channel at a time as clean-fid does."""
    from PIL import Image
    out = np.empty((images.shape[0], 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        pixels = np.asarray(tensor_to_image(image))                            # (H, W, 3) uint8
        for c in range(3):
            channel = Image.fromarray(pixels[:, :, c].astype(np.float32))      # mode 'F'
            out[i, c] = np.asarray(channel.resize((size, size), Image.Resampling.BICUBIC))
    x = torch.from_numpy(out.clip(0, 255)).to(images.device)
    return (x - 128) / 128


def preprocess(images, resize=DEFAULT_FID_RESIZE):
    """images (B, 3, H, W) in [-1, 1] -> the network input (B, 3, 299, 299) under the
    FID_RESIZES rule `resize`."""
    if resize == "pytorch-fid":
        return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                             align_corners=False)
    if resize == "clean":
        return clean_resize(images, INPUT_SIZE).to(images.dtype)
    raise ValueError(f"FID resize: expected one of {sorted(FID_RESIZES)}, got {resize!r}")


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps 1e-3) + ReLU; kwargs go to nn.Conv2d."""

    def __init__(self, in_channels, out_channels, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # TF's SAME average pool divides by the number of real (unpadded) inputs
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: in_channels -> 224 + pool_features channels."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: in_channels -> 480 + in_channels."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions: in_channels -> 768."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        row = dict(kernel_size=(1, 7), padding=(0, 3))
        col = dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: in_channels -> 512 + in_channels."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs: in_channels -> 2048.

    pool: "avg" (padding excluded; Mixed_7b) or "max" (Mixed_7c, as in the TF graph).
    """

    def __init__(self, in_channels, pool):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE pool: expected 'avg' or 'max', got {pool!r}")
        self.pool = pool
        row = dict(kernel_size=(1, 3), padding=(0, 1))
        col = dict(kernel_size=(3, 1), padding=(1, 0))
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = (_avg_pool_3x3(x) if self.pool == "avg"
                  else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class InceptionFID(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> pool3 (B, 2048), logits (B, 1008).

    Built with random weights; `from_file` loads the real ones. The network is meant for
    inference: keep it in eval mode (from_file returns it so, frozen).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL3_DIM, NUM_CLASSES)

    def forward(self, images, logits_bias=False, resize=DEFAULT_FID_RESIZE):
        """images (B, 3, H, W) in [-1, 1], any H, W -> pool3 (B, 2048), logits (B, 1008).

        resize: how images become the 299x299 network input, a key of FID_RESIZES (see the
        module docstring).

        logits_bias: add fc.bias. Off by default because the improved-GAN Inception Score code
        (used by DM-GAN for COCO) multiplies pool3 by the softmax weight matrix alone
        ("softmax/logits/MatMul"); torch-fidelity's IS does the same.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFID images: expected shape (B, 3, H, W), "
                             f"got {tuple(images.shape)}")
        x = preprocess(images.to(self.fc.weight.dtype), resize)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))       # 64 x 147^2
        x = F.max_pool2d(x, kernel_size=3, stride=2)                              # 64 x 73^2
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                             # 192 x 71^2
        x = F.max_pool2d(x, kernel_size=3, stride=2)                              # 192 x 35^2
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)                                            # 2048 x 8^2
        pool3 = x.mean(dim=(2, 3))
        logits = pool3 @ self.fc.weight.t()
        if logits_bias:
            logits = logits + self.fc.bias
        return pool3, logits

    def load_weights(self, state_dict, source="state dict"):
        """Load a pytorch-fid / torch-fidelity state dict; `source` names it in errors.
        num_batches_tracked entries are optional; anything else missing, extra or mis-shaped
        raises a ValueError listing the keys."""
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{source}: expected a state dict (mapping of names to tensors), "
                             f"got {type(state_dict).__name__}")
        own = self.state_dict()
        optional = {k for k in own if k.endswith("num_batches_tracked")}
        missing = sorted(k for k in own if k not in state_dict and k not in optional)
        extra = sorted(k for k in state_dict if k not in own)
        shapes = sorted(f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
                        for k, v in state_dict.items()
                        if k in own and (not torch.is_tensor(v) or v.shape != own[k].shape))
        if missing or extra or shapes:
            def head(keys):
                more = f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
                return ", ".join(keys[:5]) + more
            problems = [f"{what}: {head(keys)}" for what, keys in
                        (("missing keys", missing), ("unexpected keys", extra),
                         ("wrong shapes", shapes)) if keys]
            raise ValueError(f"{source}: not the FID Inception weights expected ({WEIGHT_FILES} "
                             f"naming: Conv2d_1a_3x3.conv.weight, ..., fc.bias); "
                             + "; ".join(problems))
        full = {k: (state_dict[k] if k in state_dict else own[k]) for k in own}
        self.load_state_dict(full, strict=True)
        return self

    @classmethod
    def from_file(cls, path, map_location="cpu"):
        """The network with weights from the local file `path` (never downloaded), in eval
        mode with gradients off."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FID Inception weights {path!r} do not exist; expected a "
                                    f"local copy of {WEIGHT_FILES} (nothing is downloaded)")
        try:
            state_dict = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several types for unreadable files
            raise ValueError(f"FID Inception weights {path!r}: not a readable torch state dict "
                             f"({type(err).__name__}: {err})") from err
        net = cls().load_weights(state_dict, source=f"FID Inception weights {path!r}")
        return net.eval().requires_grad_(False)


def fid_from_features(real_stats, fake_features):
    """FID between `real_stats` ((mu, sigma) or an .npz path, e.g. DM-GAN's coco_val.npz) and
    the pool3 features of the generated images, fake_features (N, 2048), N >= 2."""
    mu1, sigma1 = resolve_stats(real_stats, "fid_from_features real_stats")
    mu2, sigma2 = gaussian_stats(fake_features)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def inception_score(values, splits=10, are_probs=False):
    """Inception Score as the improved-GAN code computes it: values (N, C) are logits (softmax
    over C taken here) or, with are_probs, class probabilities. The rows are cut into `splits`
    consecutive parts [i*N//splits, (i+1)*N//splits); each part scores
    exp(mean over its rows of KL(p(y|x) || p(y))), p(y) the part's mean prediction.
    Returns (mean, std) over the parts (np.std, ddof 0). Terms with p(y|x) = 0 count as 0."""
    x = to_float64(values, "inception_score values", ndim=2)
    n = x.shape[0]
    if n == 0 or x.shape[1] == 0:
        raise ValueError(f"inception_score values: empty, shape {x.shape}")
    if splits < 1 or n < splits:
        raise ValueError(f"inception_score: need 1 <= splits <= N, got splits={splits}, N={n}")
    if are_probs:
        if (x < 0).any() or not np.allclose(x.sum(axis=1), 1.0, rtol=0, atol=1e-4):
            raise ValueError("inception_score values: with are_probs, rows must be "
                             "non-negative and sum to 1")
        probs = x
        with np.errstate(divide="ignore"):
            logp = np.log(x)
    else:
        logp = x - x.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        probs = np.exp(logp)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p, lp = probs[lo:hi], logp[lo:hi]
        with np.errstate(divide="ignore", invalid="ignore"):     # 0 * log 0 terms
            log_py = np.log(p.mean(axis=0, keepdims=True))
            kl = np.where(p > 0, p * (lp - log_py), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))

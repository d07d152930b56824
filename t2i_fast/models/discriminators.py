"""Discriminators D_NET64/128/256 (DM-GAN / GR-GAN spectral norm, AttnGAN batch norm).

A D maps an image (B, 3, S, S) to trunk features (B, 8*ndf, 4, 4); its heads UNCOND_DNET and
COND_DNET turn those (and a condition (B, nef) for COND) into one logit per image. Keys are the
upstream ones (reference §1.6, §1.9), e.g. img_code_s16.{0,2,4,6}.module.weight_bar for the
spectral-norm variant and COND_DNET.jointConv.0.module.weight_bar, *.outlogits.0.{weight,bias}.

`D_NET(img_size, ...)` generalises the three: S = 64 * 2^k adds k down blocks
(img_code_s32, img_code_s64, ...) and k reduction blocks named after the last one; S < 64 (the
test presets) keeps the trunk and ends with S/16 x S/16 features, the logit conv covering them.

The trunk runs under a memory policy (`t2i_fast.models.memory`): 'eager' (upstream), 'lean'
(keeps the image and each conv output; LeakyReLU and BatchNorm recomputed in backward) or
'max' (keeps the image; the trunk is recomputed in backward).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from t2i_fast.models.layers import expect
from t2i_fast.models.chain import Step
from t2i_fast.models.memory import check_options, run_block


class SpectralNorm(nn.Module):
    """Upstream code/spectral.py: the wrapped layer's weight divided by its spectral norm.

    Keys module.weight_bar (trainable), module.weight_u (out,), module.weight_v (in*kh*kw,)
    and module.bias. One power iteration per training-mode call updates u and v (upstream
    updates them on every call, in eval mode too: `power_iteration_in_eval`).
    """
    power_iteration_in_eval = False

    def __init__(self, module, eps=1e-12):
        super().__init__()
        self.module, self.eps = module, eps
        weight = module.weight
        del module._parameters["weight"]
        module.register_parameter("weight_bar", nn.Parameter(weight.detach()))
        height, width = weight.shape[0], weight[0].numel()
        module.register_buffer("weight_u", F.normalize(weight.new_empty(height).normal_(),
                                                       dim=0, eps=eps))
        module.register_buffer("weight_v", F.normalize(weight.new_empty(width).normal_(),
                                                       dim=0, eps=eps))
        # Upstream starts from random u, v; a few iterations make sigma meaningful from the
        # first call on (an eval before any training step), as torch's spectral_norm does.
        with torch.no_grad():
            for _ in range(15):
                self._power_iteration(weight.reshape(height, -1))

    def _power_iteration(self, mat):
        v = self._l2(mat.t() @ self.module.weight_u)
        u = self._l2(mat @ v)
        self.module.weight_u.copy_(u)
        self.module.weight_v.copy_(v)
        return u, v

    def _l2(self, v):
        return v / (v.norm() + self.eps)   # upstream l2normalize (eps added, not clamped)

    def normalized_weight(self):
        w_bar = self.module.weight_bar
        mat = w_bar.reshape(w_bar.shape[0], -1)
        u, v = self.module.weight_u, self.module.weight_v
        if self.training or self.power_iteration_in_eval:
            with torch.no_grad():
                u, v = self._power_iteration(mat)
        # u and v are constants of the graph; clones keep later in-place updates out of it.
        sigma = u.clone() @ (mat @ v.clone())
        return w_bar / sigma

    def forward(self, x):
        m = self.module
        return m._conv_forward(x, self.normalized_weight(), m.bias)


def _conv(norm, cin, cout, kernel, stride, padding):
    """A conv for the trunk: SN-wrapped with bias (DM-GAN) or plain without bias (AttnGAN)."""
    if norm == "spectral":
        return SpectralNorm(nn.Conv2d(cin, cout, kernel, stride, padding, bias=True))
    return nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)


def _conv_norm_lrelu(norm, cin, cout, kernel, stride, padding):
    """SN: (conv, LReLU) keys .0; batch norm: (conv, BN, LReLU) keys .0, .1."""
    layers = [_conv(norm, cin, cout, kernel, stride, padding)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def encode_image_by_16times(ndf, norm="spectral"):
    """(B, 3, S, S) -> (B, 8*ndf, S/16, S/16): four 4x4 stride-2 convs with LeakyReLU(0.2).

    AttnGAN has batch norm after all but the first; DM-GAN has none (spectral norm instead).
    """
    layers = [_conv(norm, 3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    for i in range(3):
        layers += _conv_norm_lrelu(norm, ndf << i, ndf << (i + 1), 4, 2, 1)
    return nn.Sequential(*layers)


COND_HEADS = ("concat", "projection")


class D_GET_LOGITS(nn.Module):  # noqa: N801 (upstream name)
    """Head: features (B, 8*ndf, s, s) [+ condition (B, nef) tiled, if bcondition] -> (B,).

    ndf: DF_DIM; nef: condition width; bcondition: conditional head; spatial: s (4 upstream);
    cond_head: how a conditional head joins the condition: 'concat' (upstream: tiled, a 3x3
    jointConv, then the logit conv) or 'projection' (Miyato & Koyama 2018: the logit conv
    plus the inner product of the summed features and a linear embedding of the condition).
    `forward` returns probabilities (upstream: sigmoid); `logits` the pre-sigmoid scores that
    the losses use (BCE with logits equals upstream's sigmoid + BCELoss up to saturation).
    """

    def __init__(self, ndf, nef, bcondition=False, norm="spectral", spatial=4,
                 cond_head="concat"):
        super().__init__()
        if cond_head not in COND_HEADS:
            raise ValueError(f"D_GET_LOGITS: cond_head must be one of {COND_HEADS}, got "
                             f"{cond_head!r}")
        self.df_dim, self.ef_dim, self.bcondition, self.spatial = ndf, nef, bcondition, spatial
        self.projection = bcondition and cond_head == "projection"
        if self.projection:
            self.embed = nn.Linear(nef, 8 * ndf, bias=False)
        elif bcondition:
            self.jointConv = nn.Sequential(*_conv_norm_lrelu(norm, 8 * ndf + nef, 8 * ndf,
                                                             3, 1, 1))
        self.outlogits = nn.Sequential(nn.Conv2d(8 * ndf, 1, spatial, stride=spatial),
                                       nn.Sigmoid())

    def logits(self, h_code, c_code=None):
        batch = h_code.shape[0]
        expect(h_code, (batch, 8 * self.df_dim, self.spatial, self.spatial), "D_GET_LOGITS h")
        if self.bcondition:
            if c_code is None:
                raise ValueError("D_GET_LOGITS: the conditional head needs c_code (B, nef)")
            expect(c_code, (batch, self.ef_dim), "D_GET_LOGITS c_code")
            if self.projection:
                inner = (h_code.sum(dim=(2, 3)) * self.embed(c_code)).sum(dim=1)
                return self.outlogits[0](h_code).view(-1) + inner
            c_code = c_code[:, :, None, None].expand(-1, -1, self.spatial, self.spatial)
            h_code = self.jointConv(torch.cat([h_code, c_code], dim=1))   # h first, as upstream
        return self.outlogits[0](h_code).view(-1)

    def forward(self, h_code, c_code=None):
        return torch.sigmoid(self.logits(h_code, c_code))


class D_NET(nn.Module):  # noqa: N801
    """Discriminator for S x S images: trunk -> (B, 8*ndf, 4, 4) (S >= 64) plus the heads.

    img_size: S (a power of two >= 16); ndf: DF_DIM; nef: condition width; b_jcu: build
    UNCOND_DNET (COND_DNET is always built, as upstream); norm: 'spectral' or 'batch';
    memory: 'eager' | 'lean' | 'max', what the trunk keeps for backward; cond_head: 'concat'
    (upstream) or 'projection', the kind of COND_DNET (D_GET_LOGITS).
    """

    def __init__(self, img_size, ndf=32, nef=256, b_jcu=True, norm="spectral", memory="eager",
                 cond_head="concat"):
        super().__init__()
        check_options(memory)
        self.memory = memory
        extra = int(math.log2(img_size)) - 6
        if img_size < 16 or 1 << int(math.log2(img_size)) != img_size:
            raise ValueError(f"D_NET: img_size must be a power of two >= 16, got {img_size}")
        self.img_size, self.df_dim, self.ef_dim = img_size, ndf, nef
        self.img_code_s16 = encode_image_by_16times(ndf, norm)
        last = 16
        for k in range(max(extra, 0)):        # down blocks: 8ndf -> 16ndf -> 32ndf ...
            last = 32 << k
            self.add_module(f"img_code_s{last}", nn.Sequential(
                *_conv_norm_lrelu(norm, (8 * ndf) << k, (8 * ndf) << (k + 1), 4, 2, 1)))
        for k in range(max(extra, 0)):        # 3x3 reductions back to 8ndf
            self.add_module(f"img_code_s{last}_{k + 1}", nn.Sequential(
                *_conv_norm_lrelu(norm, (8 * ndf) << (extra - k), (8 * ndf) << (extra - k - 1),
                                  3, 1, 1)))
        self.extra = max(extra, 0)
        spatial = 4 if extra >= 0 else img_size // 16
        if b_jcu:
            self.UNCOND_DNET = D_GET_LOGITS(ndf, nef, False, norm, spatial)
        else:
            self.UNCOND_DNET = None
        self.COND_DNET = D_GET_LOGITS(ndf, nef, True, norm, spatial, cond_head)

    def trunk(self):
        """The trunk's Sequentials in order: img_code_s16, the down blocks, the reductions."""
        names = [f"img_code_s{32 << k}" for k in range(self.extra)]
        last = names[-1] if names else "img_code_s16"
        names += [f"{last}_{k + 1}" for k in range(self.extra)]
        return [self.img_code_s16] + [getattr(self, name) for name in names]

    def chain_units(self):
        """The trunk as memory Steps: conv [+ BN] + LeakyReLU each (spectral norm applied)."""
        steps, layers = [], [layer for seq in self.trunk() for layer in seq]
        for i, layer in enumerate(layers):
            if not isinstance(layer, (SpectralNorm, nn.Conv2d)):
                continue
            conv, weight = ((layer.module, layer.normalized_weight())
                            if isinstance(layer, SpectralNorm) else (layer, layer.weight))
            bn = layers[i + 1] if isinstance(layers[i + 1], nn.BatchNorm2d) else None
            steps.append(Step(weight, conv.bias, bn, "lrelu", stride=conv.stride[0],
                              padding=conv.padding[0]))
        return steps

    def eager_chain(self, x):
        """The trunk's upstream code path."""
        for seq in self.trunk():
            x = seq(x)
        return x

    def forward(self, x_var, memory=None):
        """x_var (B, 3, S, S) -> trunk features; memory overrides the policy for this call."""
        expect(x_var, (None, 3, self.img_size, self.img_size), f"D_NET{self.img_size} image")
        return run_block(memory or self.memory, self.chain_units, x_var, self.eager_chain)


def D_NET64(ndf=32, nef=256, b_jcu=True, norm="spectral", memory="eager",  # noqa: N802
            cond_head="concat"):
    return D_NET(64, ndf, nef, b_jcu, norm, memory, cond_head)


def D_NET128(ndf=32, nef=256, b_jcu=True, norm="spectral", memory="eager",  # noqa: N802
            cond_head="concat"):
    return D_NET(128, ndf, nef, b_jcu, norm, memory, cond_head)


def D_NET256(ndf=32, nef=256, b_jcu=True, norm="spectral", memory="eager",  # noqa: N802
            cond_head="concat"):
    return D_NET(256, ndf, nef, b_jcu, norm, memory, cond_head)

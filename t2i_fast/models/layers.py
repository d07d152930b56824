"""Building blocks shared by the generators (upstream code/model.py names and layouts).

Each block runs eagerly with its nn modules (the upstream code path), or as a chain of
`t2i_fast.models.chain` units under the 'lean' and 'max' memory policies
(`t2i_fast.models.memory`); `ResBlock.unit` and `glu_step` describe the blocks as such units,
with the same parameters.
"""
import torch.nn.functional as F
from torch import nn

from t2i_fast.models.chain import Res, Step


def expect(t, shape, what):
    """Raise a clear error unless `t` has `shape` (None entries are free)."""
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{what}: expected shape {want}, got {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------------------------
# Upstream blocks
# --------------------------------------------------------------------------------------------

class GLU(nn.Module):
    """First half of the channels times the sigmoid of the second half: 2c -> c channels."""

    def forward(self, x):
        if x.shape[1] % 2:
            raise ValueError(f"GLU: the channel count must be even, got {x.shape[1]}")
        return F.glu(x, dim=1)


def conv3x3(in_planes, out_planes, bias=False):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=bias)


def conv1x1(in_planes, out_planes, bias=False):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=bias)


def up_block(in_planes, out_planes):
    """Nearest x2, conv3x3 (in -> 2*out), BN, GLU -> out channels (keys .1.weight, .2.*)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         conv3x3(in_planes, 2 * out_planes), nn.BatchNorm2d(2 * out_planes), GLU())


def same_block(in_planes, out_planes):
    """conv3x3 (in -> 2*out), BN, GLU -> out channels at the same size (keys .0.weight, .1.*).

    Ends a refinement iteration that does not upsample, in place of up_block.
    """
    return nn.Sequential(conv3x3(in_planes, 2 * out_planes), nn.BatchNorm2d(2 * out_planes), GLU())


def glu_step(block, fold=False):
    """An up_block / same_block as a memory Step (fold: its input stands for [x; x])."""
    upsample = isinstance(block[0], nn.Upsample)
    conv, bn = block[1:3] if upsample else block[0:2]
    return Step(conv.weight, bn=bn, act="glu", upsample=upsample, fold=fold)


class ResBlock(nn.Module):
    """y = x + BN(conv3x3(GLU(BN(conv3x3_{c->2c}(x))))) with c = channel_num; no final activation.

    channel_num: c, the channels of x (B, c, H, W). Keys block.{0,1,3,4}.*.
    """

    def __init__(self, channel_num):
        super().__init__()
        self.channel_num = channel_num
        self.block = nn.Sequential(conv3x3(channel_num, 2 * channel_num),
                                   nn.BatchNorm2d(2 * channel_num), GLU(),
                                   conv3x3(channel_num, channel_num), nn.BatchNorm2d(channel_num))

    def forward(self, x):
        expect(x, (None, self.channel_num, None, None), "ResBlock input")
        return x + self.block(x)

    def unit(self, fold=False):
        """This block as a memory unit; fold: the input r (B, c/2, H, W) stands for [r; r]."""
        b = self.block
        return Res(Step(b[0].weight, bn=b[1], act="glu", fold=fold), Step(b[3].weight, bn=b[4]))

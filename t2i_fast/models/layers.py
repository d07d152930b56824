"""Building blocks shared by the generators (upstream code/model.py names and layouts).

Two execution modes share one set of parameters:

* plain: each block runs eagerly and autograd keeps what every op saves (the upstream
  behaviour, and the baseline of the benchmarks);
* lean: blocks are recomputed in backward (`recompute`, non-reentrant torch.utils.checkpoint)
  so that only block inputs stay alive between forward and backward.

Recomputation runs training-mode BatchNorm a second time. `BatchNorm1d`/`BatchNorm2d` below
update their running statistics only on the first run, so lean and plain mode leave the same
buffers behind.
"""
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def expect(t, shape, what):
    """Raise a clear error unless `t` has `shape` (None entries are free)."""
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{what}: expected shape {want}, got {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------------------------
# Recomputation that keeps BatchNorm statistics right
# --------------------------------------------------------------------------------------------

_state = threading.local()


def recomputing():
    """True while a `recompute` region is being re-run for backward."""
    return getattr(_state, "depth", 0) > 0


class _Recomputing:
    def __enter__(self):
        _state.depth = getattr(_state, "depth", 0) + 1

    def __exit__(self, *exc):
        _state.depth -= 1


def recompute(fn, *args):
    """fn(*args) with its activations recomputed in backward instead of stored.

    Only the tensor arguments are kept alive. The first call is the real forward; every later
    call (the recomputation, possibly nested inside an outer one) runs under `recomputing()`,
    which BatchNorm reads to leave its running statistics alone.
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    calls = [0]

    def run(*inner):
        calls[0] += 1
        if calls[0] == 1:
            return fn(*inner)
        with _Recomputing():
            return fn(*inner)

    return checkpoint(run, *args, use_reentrant=False)


class _StatsOnce:
    """Mixin: in a recomputation, normalise with batch statistics and leave the buffers alone.

    The recomputation must save the same tensors as the first run (checkpoint checks it), so it
    calls the same kernel with throw-away copies of the running buffers.
    """

    def forward(self, x):
        if not (self.training and self.track_running_stats and recomputing()):
            return super().forward(x)
        return F.batch_norm(x, self.running_mean.clone(), self.running_var.clone(), self.weight,
                            self.bias, True, self.momentum if self.momentum is not None else 0.0,
                            self.eps)


class BatchNorm1d(_StatsOnce, nn.BatchNorm1d):
    pass


class BatchNorm2d(_StatsOnce, nn.BatchNorm2d):
    pass


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


def bn_glu(bn, x, lean):
    """GLU(bn(x)). Lean: only x is kept for backward (BN output recomputed), not x and bn(x)."""
    if lean:
        return recompute(lambda t: F.glu(bn(t), dim=1), x)
    return F.glu(bn(x), dim=1)


def up_block(in_planes, out_planes):
    """Nearest x2, conv3x3 (in -> 2*out), BN, GLU -> out channels (keys .1.weight, .2.*)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         conv3x3(in_planes, 2 * out_planes), BatchNorm2d(2 * out_planes), GLU())


def same_block(in_planes, out_planes):
    """conv3x3 (in -> 2*out), BN, GLU -> out channels at the same size (keys .0.weight, .1.*).

    Ends a refinement iteration that does not upsample, in place of up_block.
    """
    return nn.Sequential(conv3x3(in_planes, 2 * out_planes), BatchNorm2d(2 * out_planes), GLU())


def run_glu_block(block, x, lean):
    """Run an up_block/same_block; lean keeps only its input for backward."""
    if not lean:
        return block(x)

    def body(t):
        for layer in block[:-2]:                      # [upsample,] conv
            t = layer(t)
        return bn_glu(block[-2], t, lean=True)        # nested: the conv output alone is kept
    return recompute(body, x)


class ResBlock(nn.Module):
    """y = x + BN(conv3x3(GLU(BN(conv3x3_{c->2c}(x))))) with c = channel_num; no final activation.

    channel_num: c, the channels of x (B, c, H, W). Keys block.{0,1,3,4}.*.
    """

    def __init__(self, channel_num):
        super().__init__()
        self.channel_num = channel_num
        self.block = nn.Sequential(conv3x3(channel_num, 2 * channel_num),
                                   BatchNorm2d(2 * channel_num), GLU(),
                                   conv3x3(channel_num, channel_num), BatchNorm2d(channel_num))

    def forward(self, x, lean=False):
        expect(x, (None, self.channel_num, None, None), "ResBlock input")
        if not lean:
            return x + self.block(x)
        t = bn_glu(self.block[1], self.block[0](x), lean=True)
        return x + self.block[4](self.block[3](t))

    def forward_doubled(self, r, lean=False):
        """forward([r; r]) without building [r; r]: r is (B, c/2, H, W).

        The first conv sees the same tensor in both input halves, so it equals a conv of r with
        the two weight halves summed (half the FLOPs); the skip adds r to both output halves.
        Gradients reach both weight halves equally, as in forward([r; r]).
        """
        half = self.channel_num // 2
        expect(r, (None, half, None, None), "ResBlock.forward_doubled input")
        weight = self.block[0].weight
        t = F.conv2d(r, weight[:, :half] + weight[:, half:], padding=1)
        t = bn_glu(self.block[1], t, lean)
        y = self.block[4](self.block[3](t))
        batch, _, height, width = y.shape
        return (y.view(batch, 2, half, height, width) + r[:, None]).view(batch, 2 * half,
                                                                         height, width)

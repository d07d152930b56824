"""Chains of convolution units run under the 'lean' and 'max' memory policies.

A chain is a list of units, each a `Step` ([nearest x2] -> conv or linear -> [BatchNorm] ->
GLU | LeakyReLU | nothing) or a `Res` (x + second(first(x)), the upstream ResBlock), built for
one call from a block's parameters. `run_chain` runs it as one autograd Function that saves the
chain input and, with keep=True (lean), each convolution output t; backward replays the rest
from them (BatchNorm normalisation with the forward's batch statistics, GLU, LeakyReLU, residual
sums) or, with keep=False (max), recomputes the convolutions too, and runs the native backward
kernels (`convolution_backward`, `native_batch_norm_backward`, `glu_backward`).

Two exact rewrites pay for the replay: DM-GAN's [r'; r'] is never built (the first convolution
runs on r with its two weight halves summed, half the FLOPs), and nearest x2 upsampling
followed by a 3x3 convolution runs as four 2x2 convolutions of the small image, one per output
pixel parity (16 instead of 36 multiply-adds per output, and no upsampled tensor).

BatchNorm running statistics are updated once, by the forward. Under autocast the replay
computes in the dtypes the forward used. Double backward is not supported (it raises).
"""
import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_aten = torch.ops.aten


# --------------------------------------------------------------------------------------------
# nearest x2 + conv3x3 as four 2x2 convolutions
# --------------------------------------------------------------------------------------------

# _PHASE[a, p, k] = 1 where tap k of a 3x3 kernel's axis lands on tap p of parity a: output
# row 2i + a of conv3x3(up2(x)) reads up2 rows 2i + a - 1 .. 2i + a + 1, i.e. small rows
# (i - 1, i, i) for a = 0 and (i, i + 1, i + 1) for a = 1, so parity 0 has taps (w0, w1 + w2)
# on rows (i - 1, i) and parity 1 has (w0 + w1, w2) on rows (i, i + 1).
_PHASE = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))


@functools.lru_cache(maxsize=None)
def _phase_matrix_on(dtype, device):
    return torch.tensor(_PHASE, dtype=dtype, device=device)


def _phase_matrix(like):
    return _phase_matrix_on(like.dtype, like.device)


def _phase_kernel(w):
    """(o, i, 3, 3) -> (4 o, i, 2, 2): the kernels of parities (0,0), (0,1), (1,0), (1,1)."""
    m = _phase_matrix(w)
    return torch.einsum("apy,bqx,oiyx->aboipq", m, m, w).reshape(4 * w.shape[0], w.shape[1], 2, 2)


def _phase_kernel_backward(d):
    """The adjoint of _phase_kernel: (4 o, i, 2, 2) -> (o, i, 3, 3)."""
    m = _phase_matrix(d)
    return torch.einsum("apy,bqx,aboipq->oiyx", m, m, d.view(2, 2, -1, *d.shape[1:]))


def _interleave(y):
    """(B, 4o, H+1, W+1) from a 2x2 conv with padding 1 -> (B, o, 2H, 2W): parity (a, b) reads
    its rows from a and its columns from b."""
    batch, _, hp, wp = y.shape
    y = y.view(batch, 2, 2, -1, hp, wp)
    out = y.new_empty(batch, y.shape[3], hp - 1, 2, wp - 1, 2)
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, :, a, :, b] = y[:, a, b, :, a:a + hp - 1, b:b + wp - 1]
    return out.view(batch, -1, 2 * (hp - 1), 2 * (wp - 1))


def _interleave_backward(d):
    """The adjoint of _interleave: (B, o, 2H, 2W) -> (B, 4o, H+1, W+1), zero where unused."""
    batch, channels, h2, w2 = d.shape
    d = d.view(batch, channels, h2 // 2, 2, w2 // 2, 2)
    out = d.new_zeros(batch, 2, 2, channels, h2 // 2 + 1, w2 // 2 + 1)
    for a in (0, 1):
        for b in (0, 1):
            out[:, a, b, :, a:a + h2 // 2, b:b + w2 // 2] = d[:, :, :, a, :, b]
    return out.view(batch, 4 * channels, h2 // 2 + 1, w2 // 2 + 1)


# --------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------

class Step:
    """[nearest x2] -> conv (or linear) -> [BatchNorm] -> activation, built for one call.

    weight: the (out, in, k, k) conv or (out, in) linear weight of this call (a spectral-norm
    weight arrives normalised); bias: (out,) or None; bn: a BatchNorm module or None; act:
    'glu' (halves the channels), 'lrelu' (slope 0.2) or None; upsample: nearest x2 before a
    3x3 conv with padding 1; fold: the input x stands for [x; x] (DM-GAN's [r'; r']); view:
    the output reshaped to (B, *view).

    Backward state (set by `_Chain.backward`): t, stats, the saved parameters, which of them
    need gradients, and the gradients computed.
    """

    def __init__(self, weight, bias=None, bn=None, act=None, *, stride=1, padding=1,
                 upsample=False, fold=False, view=None):
        if act not in ("glu", "lrelu", None):
            raise ValueError(f"Step: act must be 'glu', 'lrelu' or None, got {act!r}")
        if upsample and (weight.shape[2:] != (3, 3) or stride != 1 or padding != 1):
            raise ValueError("Step: upsample needs a 3x3 conv with stride 1 and padding 1")
        self.weight, self.bias, self.bn, self.act = weight, bias, bn, act
        self.gamma = None if bn is None else bn.weight
        self.beta = None if bn is None else bn.bias
        self.stride, self.padding, self.upsample, self.fold, self.view = (stride, padding,
                                                                          upsample, fold, view)
        self.linear = weight.dim() == 2
        self.batch_stats = None     # set by forward: normalised with batch statistics

    def tensors(self):
        return (self.weight, self.bias, self.gamma, self.beta)

    # ---- shapes, for the estimates
    def shapes(self, shape):
        """(eager's conv input, t, output) shapes for an input of `shape`."""
        cout = self.weight.shape[0]
        if self.linear:
            xin, t = tuple(shape), (shape[0], cout)
        else:
            up = 2 if self.upsample else 1
            kh, kw = self.weight.shape[2:]
            xin = (shape[0], shape[1], up * shape[2], up * shape[3])
            t = (shape[0], cout, (xin[2] + 2 * self.padding - kh) // self.stride + 1,
                 (xin[3] + 2 * self.padding - kw) // self.stride + 1)
        out = (t[0], t[1] // 2, *t[2:]) if self.act == "glu" else t
        return xin, t, out if self.view is None else (t[0], *self.view)

    def macs(self, shape):
        """Multiply-adds of this step's convolution as run here, for an input of `shape`."""
        _, t, _ = self.shapes(shape)
        cin = self.weight.shape[1] // (2 if self.fold else 1)
        if self.linear:
            return math.prod(t) * cin
        if self.upsample:           # four 2x2 kernels over (H+1) x (W+1)
            return shape[0] * 4 * t[1] * (shape[2] + 1) * (shape[3] + 1) * cin * 4
        return math.prod(t) * cin * self.weight.shape[2] * self.weight.shape[3]

    # ---- compute (autograd off: this runs inside the chain's Function)
    def kernel(self, weight, bias, dtype=None):
        """The conv weight and bias as run: halves summed (fold), parity kernels (upsample),
        cast to `dtype` (the forward's autocast dtype, replayed in backward)."""
        if self.fold:
            half = weight.shape[1] // 2
            weight = weight[:, :half] + weight[:, half:]
        if self.upsample:
            with _autocast_off(weight):       # the tap sums stay in the weight's dtype
                weight = _phase_kernel(weight)
            bias = None if bias is None else bias.repeat(4)
        if dtype is not None:
            weight = weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return weight, bias

    def conv(self, x, weight, bias, dtype=None):
        weight, bias = self.kernel(weight, bias, dtype)
        if dtype is not None:
            x = x.to(dtype)
        if self.linear:
            return F.linear(x, weight, bias)
        if self.upsample:
            return _interleave(F.conv2d(x, weight, bias, 1, 1))
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def forward(self, x):
        """The real forward: (y, t, stats); updates the BatchNorm running statistics."""
        t = self.conv(x, self.weight, self.bias)
        bn = self.bn
        if bn is None:
            return self.activate(t), t, (None, None)
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                        else bn.momentum)
        else:
            momentum = 0.0 if bn.momentum is None else bn.momentum
        self.batch_stats = bn.training or bn.running_mean is None
        if self.batch_stats and t.numel() == t.shape[1]:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"input size {tuple(t.shape)}")
        track = not bn.training or bn.track_running_stats
        u, mean, invstd = _aten.native_batch_norm(
            t, self.gamma, self.beta, bn.running_mean if track else None,
            bn.running_var if track else None, self.batch_stats, momentum, bn.eps)
        stats = (mean, invstd) if self.batch_stats else (bn.running_mean.clone(),
                                                         bn.running_var.clone())
        return self.activate(u), t, stats

    def activate(self, u):
        if self.act == "glu":
            y = F.glu(u, dim=1)
        elif self.act == "lrelu":
            y = F.leaky_relu(u, 0.2)
        else:
            y = u
        return y if self.view is None else y.reshape(y.shape[0], *self.view)

    # ---- backward
    def load(self, saved, needs, t_dtype):
        """Take this step's tensors from the chain's saved tensors."""
        self.t, self.stats = saved[0], saved[1:3]
        self.weight, self.bias, self.gamma, self.beta = saved[3:]
        self.needs, self.t_dtype, self.grads = needs, t_dtype, (None,) * 4

    def release(self):
        """Drop the backward state: the graph node that holds this step lives on until the
        whole backward ends, and t or a recomputed t must not live that long."""
        self.t = self.stats = self.weight = self.bias = self.gamma = self.beta = None
        self.grads = None

    def ensure_t(self, x):
        """t, recomputed from the step input x under max."""
        if self.t is None:
            self.t = self.conv(x, self.weight, self.bias, self.t_dtype)
        return self.t

    def normalize(self):
        """BatchNorm output of t from the saved statistics: one pass, no new statistics."""
        t = self.t
        if self.bn is None:
            return t
        mean, second = self.stats
        invstd = second if self.batch_stats else torch.rsqrt(second + self.bn.eps)
        scale = invstd if self.gamma is None else self.gamma * invstd
        shift = -mean * scale if self.beta is None else self.beta - mean * scale
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return torch.addcmul(shift.view(shape), t, scale.view(shape)).to(t.dtype)

    def replay(self, x):
        self.ensure_t(x)
        return self.activate(self.normalize())

    def backward(self, dy, x, need_dx=True, u=None):
        """dx (in x's dtype, None unless need_dx) from dy; parameter gradients in self.grads.
        u: the BatchNorm output when the caller has it already."""
        t = self.ensure_t(x)
        dy = dy.to(t.dtype)
        if self.view is not None:
            dy = dy.reshape(t.shape[0], -1)
        if self.act is not None and u is None:
            u = self.normalize()
        if self.act == "glu":
            dt = _aten.glu_backward(dy, u, 1)
        elif self.act == "lrelu":
            dt = _aten.leaky_relu_backward(dy, u, 0.2, False)
        else:
            dt = dy
        d_gamma = d_beta = None
        if self.bn is not None:
            mean, second = self.stats
            stats = (None, None, mean, second) if self.batch_stats else (mean, second, None, None)
            dt, d_gamma, d_beta = _aten.native_batch_norm_backward(
                dt, t, self.gamma, *stats, self.batch_stats, self.bn.eps,
                [True, self.needs[2], self.needs[3]])
        dx, d_weight, d_bias = self._conv_backward(dt, x, need_dx)
        self.grads = (d_weight, d_bias, d_gamma, d_beta)
        return None if dx is None else dx.to(x.dtype)

    def _conv_backward(self, dt, x, need_dx):
        """(dx, weight gradient, bias gradient), None where not needed."""
        need_w, need_b = self.needs[0], self.bias is not None and self.needs[1]
        weight, bias = self.kernel(self.weight, self.bias, dt.dtype)
        x = x.to(dt.dtype)
        if self.linear:
            dx = dt.mm(weight) if need_dx else None
            d_w = dt.t().mm(x) if need_w else None
            d_b = dt.sum(0) if need_b else None
        else:
            stride, padding = (1, 1) if self.upsample else (self.stride, self.padding)
            if self.upsample:
                dt = _interleave_backward(dt)
            dx, d_w, d_b = _aten.convolution_backward(
                dt, x, weight, None if bias is None else [bias.shape[0]], [stride] * 2,
                [padding] * 2, [1, 1], False, [0, 0], 1, [need_dx, need_w, need_b])
        # the adjoint of `kernel`
        if d_w is not None:
            d_w = d_w.to(self.weight.dtype)
            if self.upsample:
                d_w = _phase_kernel_backward(d_w)
            if self.fold:
                d_w = torch.cat([d_w, d_w], dim=1)
        if d_b is not None:
            d_b = d_b.to(self.bias.dtype)
            if self.upsample:
                d_b = d_b.view(4, -1).sum(dim=0)
        return dx, d_w, d_b


class Res:
    """y = x + second(first(x)) (upstream ResBlock: first = conv BN GLU, second = conv BN).

    With first.fold the input x (B, c/2, H, W) stands for [x; x]: the skip adds x to both
    output halves, as ResBlock.forward(torch.cat([x, x], 1)) does.
    """

    def __init__(self, first, second):
        self.steps = (first, second)

    def _skip(self, x, b):
        if not self.steps[0].fold:
            return x + b
        batch, channels, height, width = b.shape
        return (b.view(batch, 2, channels // 2, height, width) + x[:, None]).view(b.shape)

    def forward(self, x, records):
        first, second = self.steps
        a, t1, stats1 = first.forward(x)
        b, t2, stats2 = second.forward(a)
        records += [(t1, stats1), (t2, stats2)]
        return self._skip(x, b)

    def _inner(self, x):
        """(u1, g): the first step's BatchNorm output and its GLU, the second step's input."""
        first, second = self.steps
        first.ensure_t(x)
        u = first.normalize()
        g = first.activate(u)
        second.ensure_t(g)
        return u, g

    def replay(self, x):
        second = self.steps[1]
        if second.t is None:
            self._inner(x)
        return self._skip(x, second.normalize())

    def backward(self, dy, x, need_dx=True):
        first, second = self.steps
        u1, g = self._inner(x)
        dg = second.backward(dy, g)
        dx = first.backward(dg, x, need_dx, u=u1)
        if not need_dx:
            return None
        if first.fold:
            batch, channels, height, width = dy.shape
            dy = dy.view(batch, 2, channels // 2, height, width).sum(dim=1)
        return dx + dy.to(x.dtype)


def _autocast_off(like):
    """Autocast disabled on like's device type (where autocast exists)."""
    device = like.device.type
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def unit_steps(unit):
    return unit.steps if isinstance(unit, Res) else (unit,)


_PER_STEP = 7   # t, two statistics, weight, bias, gamma, beta


class _Chain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, units, keep, x0, *params):
        records, x = [], x0
        for unit in units:
            if isinstance(unit, Res):
                x = unit.forward(x, records)
            else:
                x, t, stats = unit.forward(x)
                records.append((t, stats))
        steps = [s for unit in units for s in unit_steps(unit)]
        saved = [x0]
        for step, (t, stats) in zip(steps, records):
            saved += [t if keep else None, *stats, *step.tensors()]
        ctx.save_for_backward(*saved)
        ctx.units, ctx.t_dtypes = units, [t.dtype for t, _ in records]
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        saved, units = ctx.saved_tensors, ctx.units
        needs = ctx.needs_input_grad[3:]
        steps = [s for unit in units for s in unit_steps(unit)]
        for i, (step, t_dtype) in enumerate(zip(steps, ctx.t_dtypes)):
            step.load(saved[1 + _PER_STEP * i:1 + _PER_STEP * (i + 1)],
                      needs[4 * i:4 * i + 4], t_dtype)
        with _autocast_off(saved[0]):
            xs = [saved[0]]                          # the input of every unit
            for unit in units[:-1]:
                xs.append(unit.replay(xs[-1]))
            for j in range(len(units) - 1, -1, -1):
                dy = units[j].backward(dy, xs.pop(), need_dx=j > 0 or ctx.needs_input_grad[2])
        grads = [g for s in steps for g in s.grads]
        for step in steps:
            step.release()
        return (None, None, dy, *grads)


def run_chain(units, x, keep):
    """The chain `units` on x: keep=True keeps every conv output (lean), False none (max)."""
    params = [p for unit in units for s in unit_steps(unit) for p in s.tensors()]
    return _Chain.apply(units, keep, x, *params)


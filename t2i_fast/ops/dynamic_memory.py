"""The dynamic-memory family: memory_read, response_gate and dynamic_memory.

Math (B batch, C channels, N = H*W pixels, T word slots, mask True = padded slot):

    memory_read:    s[b,n,t] = scale * sum_c q[b,c,n] k[b,c,t]
                    a[b,n,:] = softmax over the unmasked t of s[b,n,:]   (all masked: a = 0)
                    out[b,:,n] = sum_t a[b,n,t] v[b,:,t]
    response_gate:  g[b,n] = sigmoid(sum_c w[c] h[b,c,n] + sum_c w[C+c] o[b,c,n] + bias)
                    out = h * (1 - g) + g * o
    dynamic_memory: response_gate(h, memory_read(h, key, value, mask), w, bias)

DM-GAN's `Memory` is memory_read with key != value; AttnGAN's `GlobalAttentionGeneral` is
memory_read with key = value = the projected words. `mask_compat=True` reproduces the upstream
tiled mask (AttnGAN issue #93): pixel row b*N+n uses mask row (b*N+n) mod B.

The reference implementations come first; they are the executable specification every backend
is tested against. The fast backends share one kernel interface (csrc/ops.cpp) and save only
their inputs plus one float32 log-sum-exp per pixel for backward, recomputing the rest.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from t2i_fast import backends
from t2i_fast.ops import _checks
from t2i_fast.ops._autograd import forbid_double_backward
from t2i_fast.ops._math import safe_softmax


# --------------------------------------------------------------------------------------------
# Reference implementations
# --------------------------------------------------------------------------------------------

def pixel_mask(mask, n_pixels, mask_compat=False):
    """The (B, N, T) padding mask each pixel uses (a broadcast view unless mask_compat)."""
    batch, slots = mask.shape
    if not mask_compat:
        return mask[:, None, :].expand(batch, n_pixels, slots)
    rows = torch.arange(batch * n_pixels, device=mask.device) % batch
    return mask[rows].view(batch, n_pixels, slots)


def memory_read_reference(query, key, value, mask=None, *, scale=1.0, mask_compat=False,
                          return_attn=False):
    batch, channels, height, width = query.shape
    n_pixels = height * width
    scores = scale * torch.einsum("bcn,bct->bnt", query.reshape(batch, channels, n_pixels), key)
    pad = None if mask is None else pixel_mask(mask, n_pixels, mask_compat)
    attn = safe_softmax(scores, pad, dim=2)
    out = torch.einsum("bvt,bnt->bvn", value, attn).reshape(batch, value.shape[1], height, width)
    if return_attn:
        return out, attn.transpose(1, 2).reshape(batch, key.shape[2], height, width)
    return out


def response_gate_reference(h, o, weight, bias, *, return_gate=False):
    channels = h.shape[1]
    weight = weight.reshape(2 * channels)
    logit = (torch.einsum("bchw,c->bhw", h, weight[:channels])
             + torch.einsum("bchw,c->bhw", o, weight[channels:]) + bias.reshape(()))
    gate = torch.sigmoid(logit)[:, None]
    out = h * (1 - gate) + gate * o
    return (out, gate) if return_gate else out


def dynamic_memory_reference(h, key, value, mask, gate_weight, gate_bias, *, mask_compat=False,
                             return_attn=False):
    o, attn = memory_read_reference(h, key, value, mask, mask_compat=mask_compat,
                                    return_attn=True)
    out = response_gate_reference(h, o, gate_weight, gate_bias)
    return (out, attn) if return_attn else out


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------

def memory_read(query, key, value, mask=None, *, scale=1.0, mask_compat=False, return_attn=False,
                impl=None):
    """Masked softmax attention of every pixel over T memory slots.

    query (B,C,H,W), key (B,C,T), value (B,Cv,T), mask bool (B,T) True = padded or None
    -> out (B,Cv,H,W) [, attn (B,T,H,W) if return_attn]. Fully masked pixels read 0.
    """
    op = "memory_read"
    _checks.tensor(op, "query", query, 4)
    query, key, value = _checks.autocast(query.device, query, key, value)
    _check_attention(op, "query", query, key, value, mask)
    backend = backends.select(op, query.device, query.dtype, impl,
                              empty=_checks.empty(query, key, value), batch=query.shape[0],
                              slots=key.shape[2])
    if backend == "reference":
        return memory_read_reference(query, key, value, mask, scale=float(scale),
                                     mask_compat=mask_compat, return_attn=return_attn)
    out, _, attn, _ = _forward(query, None, key, value, mask, None, None, float(scale),
                               bool(mask_compat), bool(return_attn), False, backend)
    return (out, attn) if return_attn else out


def response_gate(h, o, weight, bias, *, return_gate=False, impl=None):
    """Single-channel gated blend out = h*(1-g) + g*o, g = sigmoid(w.[h; o] + bias).

    h, o (B,C,H,W); weight (2C,) or (1,2C,1,1) (a 1x1 conv over [h; o]); bias () or (1,)
    -> out (B,C,H,W) [, g (B,1,H,W) if return_gate].
    """
    op = "response_gate"
    _checks.tensor(op, "h", h, 4)
    _checks.tensor(op, "o", o, 4)
    h, o, weight, bias = _checks.autocast(h.device, h, o, weight, bias)
    if o.shape != h.shape:
        raise ValueError(f"{op}: o must have the shape of h {tuple(h.shape)}, got {tuple(o.shape)}")
    _checks.same(op, "h", h, o=o)
    weight, bias = _gate_params(op, h, weight, bias)
    backend = backends.select(op, h.device, h.dtype, impl, empty=_checks.empty(h),
                              batch=h.shape[0])
    if backend == "reference":
        return response_gate_reference(h, o, weight, bias, return_gate=return_gate)
    out, _, _, gate = _forward(h, o, None, None, None, weight, bias, 1.0, False, False,
                               bool(return_gate), backend)
    return (out, gate) if return_gate else out


def dynamic_memory(h, key, value, mask, gate_weight, gate_bias, *, mask_compat=False,
                   return_attn=False, impl=None):
    """DM-GAN's memory step in one pass: memory_read(h, key, value, mask) then response_gate.

    h (B,C,H,W), key (B,C,T), value (B,C,T), mask bool (B,T) or None, gate_weight (2C,) or
    (1,2C,1,1), gate_bias () or (1,) -> out (B,C,H,W) [, attn (B,T,H,W) if return_attn].
    """
    op = "dynamic_memory"
    _checks.tensor(op, "h", h, 4)
    h, key, value, gate_weight, gate_bias = _checks.autocast(h.device, h, key, value,
                                                             gate_weight, gate_bias)
    _check_attention(op, "h", h, key, value, mask)
    _checks.size(op, "value", value, 1, h.shape[1], "the channels C of h")
    gate_weight, gate_bias = _gate_params(op, h, gate_weight, gate_bias)
    backend = backends.select(op, h.device, h.dtype, impl, empty=_checks.empty(h, key, value),
                              batch=h.shape[0], slots=key.shape[2])
    if backend == "reference":
        return dynamic_memory_reference(h, key, value, mask, gate_weight, gate_bias,
                                        mask_compat=mask_compat, return_attn=return_attn)
    out, _, attn, _ = _forward(h, None, key, value, mask, gate_weight, gate_bias, 1.0,
                               bool(mask_compat), bool(return_attn), False, backend)
    return (out, attn) if return_attn else out


def _check_attention(op, qname, query, key, value, mask):
    _checks.tensor(op, qname, query, 4)
    _checks.tensor(op, "key", key, 3)
    _checks.tensor(op, "value", value, 3)
    batch, channels = query.shape[:2]
    _checks.size(op, "key", key, 0, batch, f"the batch B of {qname}")
    _checks.size(op, "key", key, 1, channels, f"the channels C of {qname}")
    _checks.size(op, "value", value, 0, batch, f"the batch B of {qname}")
    _checks.size(op, "value", value, 2, key.shape[2], "the slots T of key")
    _checks.at_least_one(op, "key", key, (2,), "memory slot (T >= 1)")
    _checks.same(op, qname, query, key=key, value=value)
    _checks.mask(op, "mask", mask, batch, key.shape[2], query.device)


def _gate_params(op, h, weight, bias):
    channels = h.shape[1]
    if not isinstance(weight, Tensor) or weight.numel() != 2 * channels or \
            weight.shape not in ((2 * channels,), (1, 2 * channels, 1, 1)):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{op}: gate weight must have shape (2C,) or (1, 2C, 1, 1) with "
                         f"C = {channels}, got {shape}")
    if not isinstance(bias, Tensor):
        bias = torch.tensor([float(bias)], dtype=h.dtype, device=h.device)
    if bias.numel() != 1 or bias.dim() > 1:
        raise ValueError(f"{op}: gate bias must have shape () or (1,), got {tuple(bias.shape)}")
    _checks.same(op, "h", h, gate_weight=weight, gate_bias=bias)
    return weight.reshape(2 * channels), bias.reshape(1)


# --------------------------------------------------------------------------------------------
# The fast path: one custom-op pair for the whole family, registered for torch.compile
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("t2i_fast::dynamic_memory_fwd", mutates_args=())
def _forward(h: Tensor, o: Optional[Tensor], key: Optional[Tensor], value: Optional[Tensor],
             mask: Optional[Tensor], gate_weight: Optional[Tensor], gate_bias: Optional[Tensor],
             scale: float, mask_compat: bool, return_attn: bool, return_gate: bool,
             backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    outs = backends.kernel(backend, "dynamic_memory_forward")(
        h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat, return_attn,
        return_gate)
    return tuple(outs)


@_forward.register_fake
def _(h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat, return_attn,
      return_gate, backend):
    batch, channels, height, width = h.shape
    has_attn = key is not None
    out = h.new_empty(batch, value.shape[1] if has_attn else channels, height, width)
    lse = h.new_empty((batch, height * width) if has_attn else (0,), dtype=torch.float32)
    attn = h.new_empty((batch, key.shape[2], height, width) if has_attn and return_attn else (0,))
    gate = h.new_empty((batch, 1, height, width) if return_gate else (0,))
    return out, lse, attn, gate


@torch.library.custom_op("t2i_fast::dynamic_memory_bwd", mutates_args=())
def _backward(grad_out: Tensor, grad_attn: Optional[Tensor], grad_gate: Optional[Tensor],
              h: Tensor, o: Optional[Tensor], key: Optional[Tensor], value: Optional[Tensor],
              mask: Optional[Tensor], gate_weight: Optional[Tensor],
              gate_bias: Optional[Tensor], lse: Tensor, scale: float, mask_compat: bool,
              backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    outs = backends.kernel(backend, "dynamic_memory_backward")(
        grad_out, grad_attn, grad_gate, h, o, key, value, mask, gate_weight, gate_bias, lse,
        scale, mask_compat)
    return tuple(outs)


@_backward.register_fake
def _(grad_out, grad_attn, grad_gate, h, o, key, value, mask, gate_weight, gate_bias, lse,
      scale, mask_compat, backend):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None \
            else h.new_empty(0)
    return (like(h), like(o), like(key), like(value), like(gate_weight), like(gate_bias))


def _setup_context(ctx, inputs, output):
    h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat, _, _, backend = inputs
    ctx.save_for_backward(h, o, key, value, mask, gate_weight, gate_bias, output[1])
    ctx.scale, ctx.mask_compat, ctx.backend = scale, mask_compat, backend
    ctx.set_materialize_grads(False)


def _grads(ctx, grad_out, grad_lse, grad_attn, grad_gate):
    h, o, key, value, mask, gate_weight, gate_bias, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros(_forward_out_shape(h, value), dtype=h.dtype, device=h.device)
    dh, do, dkey, dvalue, dweight, dbias = _backward(
        grad_out, grad_attn, grad_gate, h, o, key, value, mask, gate_weight, gate_bias, lse,
        ctx.scale, ctx.mask_compat, ctx.backend)

    def given(grad, t):
        return grad if t is not None else None
    return (dh, given(do, o), given(dkey, key), given(dvalue, value), None,
            given(dweight, gate_weight), given(dbias, gate_bias), None, None, None, None, None)


def _forward_out_shape(h, value):
    return (h.shape[0], value.shape[1] if value is not None else h.shape[1], *h.shape[2:])


_forward.register_autograd(_grads, setup_context=_setup_context)
forbid_double_backward(_backward, "memory_read/response_gate/dynamic_memory")

"""What the tests of memory_read, response_gate and dynamic_memory share: named cases, random
inputs in every layout, the op call, and the comparison of a backend's outputs, every gradient
and the kernels' log-sum-exp with the float64 reference.

All three ops run on one kernel pair (csrc/ops.cpp `dynamic_memory_{forward,backward}`); which
optional inputs are given picks the variant: key/value (memory_read), o and the gate
(response_gate), key/value and the gate (dynamic_memory).
"""
import math
from dataclasses import dataclass

import torch

from conftest import (assert_all_close, assert_close, cast_floats, named, padding_mask,
                      statistic_dtype)
from t2i_fast import backends, ops
from t2i_fast.ops.dynamic_memory import pixel_mask

# The dtypes of the blocking-sized cases (low precision runs on the small ones).
BLOCKING_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Case:
    """channels C, slots T, height x width, and one length per batch element (0: every slot
    masked, so the element's pixels read nothing)."""
    channels: int
    slots: int
    height: int
    width: int
    lengths: tuple
    value_channels: int = 0   # memory_read's Cv when it differs from C
    mask: str = "lengths"     # "lengths", "holes" (random holes, one fully masked row), "none"
    mask_compat: bool = False
    layout: str = "contiguous"  # or "channels_last", "sliced" (features and key/value views)
    grad_layout: str = "random"  # or "channels_last", "expanded" (ones, as out.sum() gives)
    extras: bool = True       # return_attn / return_gate
    scale: float = 1.0        # memory_read's score scale
    seed: int = 0
    shape_id: str = ""         # the test id, when the sizes alone do not say enough

    def __str__(self):
        return self.shape_id or (f"C{self.channels}-T{self.slots}-{self.height}x{self.width}"
                                 f"-{self.mask}-{self.layout}")

    @property
    def batch(self):
        return len(self.lengths)


def _features(gen, batch, channels, case, dtype, device):
    if case.layout == "channels_last":
        x = torch.randn(batch, case.height, case.width, channels, generator=gen,
                        dtype=torch.float64)
        return x.to(device, dtype).permute(0, 3, 1, 2)
    if case.layout == "sliced":  # H and W cannot merge into one pixel stride
        x = torch.randn(batch, channels, case.height + 1, case.width + 2, generator=gen,
                        dtype=torch.float64)
        return x.to(device, dtype)[:, :, 1:, 2:]
    x = torch.randn(batch, channels, case.height, case.width, generator=gen, dtype=torch.float64)
    return x.to(device, dtype)


def _slots_tensor(gen, batch, channels, case, dtype, device, scale=1.0):
    """(B, channels, T): transposed storage for channels_last, every other element for sliced."""
    slots = case.slots
    if case.layout == "channels_last":
        x = scale * torch.randn(batch, slots, channels, generator=gen, dtype=torch.float64)
        return x.to(device, dtype).transpose(1, 2)
    if case.layout == "sliced":
        x = scale * torch.randn(batch, channels, 2 * slots, generator=gen, dtype=torch.float64)
        return x.to(device, dtype)[..., ::2]
    x = scale * torch.randn(batch, channels, slots, generator=gen, dtype=torch.float64)
    return x.to(device, dtype)


def _mask(gen, case, device):
    if case.mask == "none":
        return None
    if case.mask == "holes":
        mask = torch.rand(case.batch, case.slots, generator=gen) < 0.4
        mask[:, 0] = False
        mask[0] = True
        return mask.to(device)
    return padding_mask(case.lengths, case.slots, device)


def make_inputs(op, case, dtype, device):
    """The op's tensor arguments by name: h (and o for response_gate), key, value, mask,
    weight (2C,), bias (1,)."""
    gen = torch.Generator().manual_seed(case.seed)
    channels, batch = case.channels, case.batch
    args = {"h": _features(gen, batch, channels, case, dtype, device)}
    if op == "response_gate":
        args["o"] = _features(gen, batch, channels, case, dtype, device)
    else:
        v_channels = case.value_channels if op == "memory_read" and case.value_channels \
            else channels
        args["key"] = _slots_tensor(gen, batch, channels, case, dtype, device,
                                    scale=channels ** -0.5)
        args["value"] = _slots_tensor(gen, batch, v_channels, case, dtype, device)
        args["mask"] = _mask(gen, case, device)
    if op != "memory_read":
        args["weight"] = (channels ** -0.5 * torch.randn(2 * channels, generator=gen,
                                                         dtype=torch.float64)).to(device, dtype)
        args["bias"] = torch.randn(1, generator=gen, dtype=torch.float64).to(device, dtype)
    return args


def run(op, args, impl, case, extras=None):
    """The public op on `args`; always a tuple (out [, attn or gate])."""
    extras = case.extras if extras is None else extras
    if op == "memory_read":
        res = ops.memory_read(args["h"], args["key"], args["value"], args["mask"],
                              scale=case.scale, mask_compat=case.mask_compat,
                              return_attn=extras, impl=impl)
    elif op == "response_gate":
        res = ops.response_gate(args["h"], args["o"], args["weight"], args["bias"],
                                return_gate=extras, impl=impl)
    else:
        res = ops.dynamic_memory(args["h"], args["key"], args["value"], args["mask"],
                                 args["weight"], args["bias"], mask_compat=case.mask_compat,
                                 return_attn=extras, impl=impl)
    return res if isinstance(res, tuple) else (res,)


def upstream_grads(outs, case, seed=1):
    """float64 gradients for the outputs `outs`, rounded to their dtype (so that every run
    back-propagates the same numbers), laid out as the case says."""
    gen = torch.Generator().manual_seed(case.seed + seed)
    grads = []
    for i, o in enumerate(outs):
        g = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
        if i == 0 and case.grad_layout == "expanded":
            g = torch.ones((), device=o.device, dtype=o.dtype).expand(o.shape)
        elif i == 0 and case.grad_layout == "channels_last":
            g = g.contiguous(memory_format=torch.channels_last)
        grads.append(g)
    return grads


def outputs_and_grads(op, args, impl, case, grads=None):
    """Outputs of the op and the gradient of every floating input, by name; `grads`: the
    upstream gradients (made by upstream_grads when None), cast to the run's dtype."""
    leaves = {k: v.detach().clone().requires_grad_() if v is not None and v.is_floating_point()
              else v for k, v in args.items()}
    outs = run(op, leaves, impl, case)
    grads = upstream_grads(outs, case) if grads is None else grads
    names = [k for k, v in leaves.items() if v is not None and v.requires_grad]
    d = torch.autograd.grad(outs, [leaves[k] for k in names],
                            [g.to(o.dtype) for g, o in zip(grads, outs)])
    return [o.detach() for o in outs], dict(zip(names, d)), grads


def lse_reference(args, case):
    """The kernels' float32 statistic: log-sum-exp over the unmasked slots of each pixel's
    scores, +inf for a pixel with every slot masked; computed in the inputs' dtype."""
    h, key = args["h"], args["key"]
    batch, channels, height, width = h.shape
    scores = case.scale * torch.einsum("bcn,bct->bnt", h.reshape(batch, channels, -1), key)
    if args["mask"] is not None:
        pad = pixel_mask(args["mask"], height * width, case.mask_compat)
        scores = scores.masked_fill(pad, -math.inf)
    lse = torch.logsumexp(scores, dim=2)
    return lse.masked_fill(torch.isneginf(lse), math.inf)


def kernel_forward(op, args, backend, case):
    """The backend's forward kernel called directly: (out, lse, attn, gate)."""
    extras = case.extras
    return backends.kernel(backend, "dynamic_memory_forward")(
        args["h"], args.get("o"), args.get("key"), args.get("value"), args.get("mask"),
        args.get("weight"), args.get("bias"), case.scale, case.mask_compat,
        extras and op != "response_gate", extras and op != "memory_read")


def check(op, case, backend, dtype, device):
    """Outputs and every gradient of `backend` against the float64 reference (PyTorch in
    `dtype` setting the low-precision bound), then the kernels' log-sum-exp, and that outputs
    not asked for come back empty."""
    args = make_inputs(op, case, dtype, device)
    outs, grads, upstream = outputs_and_grads(op, args, backend, case)
    exact = outputs_and_grads(op, cast_floats(args, torch.float64), "reference", case, upstream)
    native = outputs_and_grads(op, args, "reference", case, upstream)
    assert_all_close(named(outs, grads), named(*exact[:2]), named(*native[:2]), dtype, op)

    _, lse, attn, gate = kernel_forward(op, args, backend, case)
    if op == "response_gate":
        assert lse.numel() == 0
    else:
        assert lse.dtype == torch.float32
        low = statistic_dtype(dtype)
        assert_close(lse, lse_reference(cast_floats(args, torch.float64), case), low,
                     lse_reference(cast_floats(args, low), case), f"{op} lse")
    if not case.extras:
        assert attn.numel() == 0 and gate.numel() == 0, "outputs not asked for must be empty"

"""Triton kernels of the dynamic-memory family: memory_read, response_gate, dynamic_memory.

Design. One forward and one backward kernel serve all three ops; constexpr flags pick the
variant (HAS_ATTN: key/value given, HAS_GATE: gate weights given, HAS_MASK, MASK_COMPAT,
RETURN_ATTN, RETURN_GATE, ...), and the pieces they share are @triton.jit helpers. A program
owns BLOCK_N pixels of one batch element. It reads its tiles of h (and o, grad_out) straight
from NCHW through the strides: the pixel axis is the contiguous one, so loads vectorise along
it, and a channels-last or sliced input costs no copy (a view whose H and W cannot be merged
into one pixel stride takes a div/mod path). key and value (C x T, T padded to a power of two
>= 16) and the 2C gate weights are loaded once per program and stay in registers. Scores,
the masked softmax, the read-out, the gate and the blend never leave the chip.

Backward recomputes the scores from h and key, the softmax over the T slots (the normaliser
too: see BACKWARD_USES_LSE), the read-out and the gate.
dkey, dvalue and the gate weight/bias gradients are sums over pixels: each backward program
walks a strided set of pixel blocks of one batch element, accumulates in registers and writes
one partial per program; a fixed-order torch.sum over the partials finishes the reduction, so
results are bitwise reproducible (set T2I_FAST_DETERMINISTIC=0 for fp32 atomics instead).

Precision. Everything is computed in float32 (float64 for float64 inputs). Dots take float32
operands: for fp16/bf16 inputs they run as TF32, which holds fp16/bf16 values exactly; for
fp32 inputs as 3xTF32 ("tf32x3", within ~1e-6 of IEEE fp32) unless _common.FP32_PRECISION is
changed or T2I_FAST_TF32=1 asks for plain TF32. float64 (the interpreter's gradcheck path) uses
broadcast-multiply-and-sum instead of tl.dot.

Limits. T <= 32 and C <= 128 are the designed range (register tiles of BLOCK_N x C and
BLOCK_N x T); larger values work with smaller blocks but slower. Per-batch tensors must hold
fewer than 2**31 elements.

Memory traffic per call (M = B*N pixels, E bytes per element, small O(B*C*T) terms left out):
  forward:  reads M*C*E of h (+ M*C*E of o for response_gate), writes M*Cout*E of out,
            4*M of lse (attention), + M*T*E attn and M*E gate when requested.
  backward: reads h and grad_out (+ o, grad_attn, grad_gate when given),
            writes dh (+ do for response_gate); partials are O(programs * C * T).

Performance: measured figures, the limits found and the next steps are in benchmarks/NOTES.md.
"""
import torch
import triton
import triton.language as tl

from ._common import (_arange, _mask_compat_row, _masked_softmax, _mm, deterministic,
                      dot_meta, pad)

# Backward recomputes the softmax normaliser from the scores (all T of a pixel are on chip)
# instead of reading alpha = exp(s - lse): a float32 lse carries up to an ulp of |lse| into every
# alpha, which doubled the error of the gate-bias gradient against eager fp32 in the tests, and
# the max/sum over T costs less than the 4 bytes per pixel of reading lse.
BACKWARD_USES_LSE = False


# --------------------------------------------------------------------------------------------
# Device helpers of this family
# --------------------------------------------------------------------------------------------

@triton.jit
def _pixel_offsets(n, W, s_y, s_x, FLAT: tl.constexpr):
    if FLAT:
        return n * s_x
    else:
        return (n // W) * s_y + (n % W) * s_x


@triton.jit
def _load_pixels(base, n, n_ok, ch, ch_ok, W, s_c, s_y, s_x, FLAT: tl.constexpr,
                 ACC: tl.constexpr):
    """A [BLOCK_N, CH] tile of an NCHW tensor (batch offset already in `base`)."""
    off = _pixel_offsets(n, W, s_y, s_x, FLAT)
    ptrs = base + ch[None, :] * s_c + off[:, None]
    return tl.load(ptrs, mask=n_ok[:, None] & ch_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _slot_valid(mask_ptr, b, n, n_ok, t, T, B, N, HAS_MASK: tl.constexpr,
                MASK_COMPAT: tl.constexpr):
    """[BLOCK_N, T_PAD] True where pixel n may attend to slot t."""
    valid = (t[None, :] < T) & (n[:, None] >= 0)
    if HAS_MASK:
        if MASK_COMPAT:
            row = _mask_compat_row(b, n, N, B)
            pad = tl.load(mask_ptr + row[:, None] * T + t[None, :],
                          mask=n_ok[:, None] & (t[None, :] < T), other=1)
        else:
            pad = tl.load(mask_ptr + b * T + t, mask=t < T, other=1)[None, :]
        valid = valid & (pad == 0)
    return valid


@triton.jit
def _attention(h, key_t, valid, scale, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    s = _mm(h, key_t, USE_DOT, PREC) * scale
    return _masked_softmax(s, valid)


@triton.jit
def _load_params(key_ptr, value_ptr, w_ptr, bias_ptr, b, C, CV, T,
                 HAS_ATTN: tl.constexpr, HAS_GATE: tl.constexpr, VALUE_T: tl.constexpr,
                 C_PAD: tl.constexpr, CV_PAD: tl.constexpr, T_PAD: tl.constexpr,
                 ACC: tl.constexpr):
    """The index ranges and the program's small operands: key [C, T], value [CV, T] (or [T, CV]
    with VALUE_T), the gate weights w_h [C], w_o [CV] and the bias; 0.0 where absent."""
    c, c_ok = _arange(C_PAD, C)
    cv, cv_ok = _arange(CV_PAD, CV)
    t, t_ok = _arange(T_PAD, T)
    key, value, w_h, w_o, bias = 0.0, 0.0, 0.0, 0.0, 0.0
    if HAS_ATTN:
        key = tl.load(key_ptr + b * C * T + c[:, None] * T + t[None, :],
                      mask=c_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
        if VALUE_T:
            value = tl.load(value_ptr + b * CV * T + cv[None, :] * T + t[:, None],
                            mask=cv_ok[None, :] & t_ok[:, None], other=0.0).to(ACC)
        else:
            value = tl.load(value_ptr + b * CV * T + cv[:, None] * T + t[None, :],
                            mask=cv_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
    if HAS_GATE:
        w_h = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(ACC)
        w_o = tl.load(w_ptr + C + cv, mask=cv_ok, other=0.0).to(ACC)
        bias = tl.load(bias_ptr).to(ACC)
    return c, c_ok, cv, cv_ok, t, t_ok, key, value, w_h, w_o, bias


@triton.jit
def _gate(h, o, w_h, w_o, bias):
    z = tl.sum(h * w_h[None, :], axis=1) + tl.sum(o * w_o[None, :], axis=1) + bias
    return 1.0 / (1.0 + tl.exp(-z))


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@triton.jit
def _forward_kernel(
        h_ptr, o_ptr, key_ptr, value_ptr, mask_ptr, w_ptr, bias_ptr,
        out_ptr, lse_ptr, attn_ptr, gate_ptr,
        B, C, CV, T, N, W, scale, P,
        s_hb, s_hc, s_hy, s_hx, s_ob, s_oc, s_oy, s_ox,
        HAS_ATTN: tl.constexpr, HAS_MASK: tl.constexpr, MASK_COMPAT: tl.constexpr,
        HAS_GATE: tl.constexpr, RETURN_ATTN: tl.constexpr, RETURN_GATE: tl.constexpr,
        H_FLAT: tl.constexpr, O_FLAT: tl.constexpr,
        BLOCK_N: tl.constexpr, C_PAD: tl.constexpr, CV_PAD: tl.constexpr, T_PAD: tl.constexpr,
        ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c, c_ok, cv, cv_ok, t, t_ok, key, value_t, w_h, w_o, bias = _load_params(
        key_ptr, value_ptr, w_ptr, bias_ptr, b, C, CV, T, HAS_ATTN, HAS_GATE, True,
        C_PAD, CV_PAD, T_PAD, ACC)                                    # key [C, T], value_t [T, CV]

    # A strided walk over the pixel blocks: the loop lets the compiler prefetch the next h
    # tile while this one is computed.
    n_blocks = tl.cdiv(N, BLOCK_N)
    for blk in range(pid, n_blocks, P):
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        h = _load_pixels(h_ptr + b * s_hb, n, n_ok, c, c_ok, W, s_hc, s_hy, s_hx, H_FLAT, ACC)
        if HAS_ATTN:
            valid = _slot_valid(mask_ptr, b, n, n_ok, t, T, B, N, HAS_MASK, MASK_COMPAT)
            alpha, lse = _attention(h, key, valid, scale, USE_DOT, PREC)
            o = _mm(alpha, value_t, USE_DOT, PREC)                                  # [N, CV]
            tl.store(lse_ptr + b * N + n, lse.to(tl.float32), mask=n_ok)
            if RETURN_ATTN:
                tl.store(attn_ptr + b * T * N + t[None, :] * N + n[:, None],
                         alpha.to(attn_ptr.dtype.element_ty),
                         mask=n_ok[:, None] & t_ok[None, :])
        else:
            o = _load_pixels(o_ptr + b * s_ob, n, n_ok, cv, cv_ok, W, s_oc, s_oy, s_ox, O_FLAT,
                             ACC)
        if HAS_GATE:
            g = _gate(h, o, w_h, w_o, bias)
            out = h + g[:, None] * (o - h)
            if RETURN_GATE:
                tl.store(gate_ptr + b * N + n, g.to(gate_ptr.dtype.element_ty), mask=n_ok)
        else:
            out = o
        tl.store(out_ptr + b * CV * N + cv[None, :] * N + n[:, None],
                 out.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & cv_ok[None, :])


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _backward_kernel(
        dy_ptr, gattn_ptr, ggate_ptr, h_ptr, o_ptr, key_ptr, value_ptr, mask_ptr, w_ptr,
        bias_ptr, lse_ptr,
        dh_ptr, do_ptr, pk_ptr, pv_ptr, pw_ptr, pb_ptr,
        B, C, CV, T, N, W, scale, P,
        s_hb, s_hc, s_hy, s_hx, s_ob, s_oc, s_oy, s_ox, s_gb, s_gc, s_gy, s_gx,
        HAS_ATTN: tl.constexpr, HAS_MASK: tl.constexpr, MASK_COMPAT: tl.constexpr,
        HAS_GATE: tl.constexpr, HAS_GATTN: tl.constexpr, HAS_GGATE: tl.constexpr,
        H_FLAT: tl.constexpr, O_FLAT: tl.constexpr, G_FLAT: tl.constexpr,
        USE_LSE: tl.constexpr, ATOMIC: tl.constexpr,
        BLOCK_N: tl.constexpr, C_PAD: tl.constexpr, CV_PAD: tl.constexpr, T_PAD: tl.constexpr,
        ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c, c_ok, cv, cv_ok, t, t_ok, key, value, w_h, w_o, bias = _load_params(
        key_ptr, value_ptr, w_ptr, bias_ptr, b, C, CV, T, HAS_ATTN, HAS_GATE, False,
        C_PAD, CV_PAD, T_PAD, ACC)                                    # key [C, T], value [CV, T]
    if HAS_ATTN:
        key_t = tl.trans(key)
        value_t = tl.trans(value)

    acc_k = tl.zeros((C_PAD, T_PAD), ACC)
    acc_v = tl.zeros((CV_PAD, T_PAD), ACC)
    acc_wh = tl.zeros((C_PAD,), ACC)
    acc_wo = tl.zeros((CV_PAD,), ACC)
    acc_b = tl.zeros((BLOCK_N,), ACC)

    n_blocks = tl.cdiv(N, BLOCK_N)
    for blk in range(pid, n_blocks, P):
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        h = _load_pixels(h_ptr + b * s_hb, n, n_ok, c, c_ok, W, s_hc, s_hy, s_hx, H_FLAT, ACC)
        dy = _load_pixels(dy_ptr + b * s_gb, n, n_ok, cv, cv_ok, W, s_gc, s_gy, s_gx, G_FLAT,
                          ACC)
        if HAS_ATTN:
            valid = _slot_valid(mask_ptr, b, n, n_ok, t, T, B, N, HAS_MASK, MASK_COMPAT)
            valid = valid & n_ok[:, None]
            if USE_LSE:
                s = _mm(h, key, USE_DOT, PREC) * scale
                lse = tl.load(lse_ptr + b * N + n, mask=n_ok, other=float("inf"))
                alpha = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
            else:
                alpha, _ = _attention(h, key, valid, scale, USE_DOT, PREC)
            o = _mm(alpha, value_t, USE_DOT, PREC)
        else:
            o = _load_pixels(o_ptr + b * s_ob, n, n_ok, cv, cv_ok, W, s_oc, s_oy, s_ox, O_FLAT,
                             ACC)

        if HAS_GATE:
            g = _gate(h, o, w_h, w_o, bias)
            dg = tl.sum(dy * (o - h), axis=1)
            if HAS_GGATE:
                dg += tl.load(ggate_ptr + b * N + n, mask=n_ok, other=0.0).to(ACC)
            dz = tl.where(n_ok, dg * g * (1.0 - g), 0.0)
            dh = dy * (1.0 - g[:, None]) + dz[:, None] * w_h[None, :]
            do = dy * g[:, None] + dz[:, None] * w_o[None, :]
            acc_wh += tl.sum(dz[:, None] * h, axis=0)
            acc_wo += tl.sum(dz[:, None] * o, axis=0)
            acc_b += dz
        else:
            do = dy
            dh = tl.zeros((BLOCK_N, C_PAD), ACC)

        if HAS_ATTN:
            dalpha = _mm(do, value, USE_DOT, PREC)                                  # [N, T]
            if HAS_GATTN:
                dalpha += tl.load(gattn_ptr + b * T * N + t[None, :] * N + n[:, None],
                                  mask=n_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
            ds = alpha * (dalpha - tl.sum(alpha * dalpha, axis=1)[:, None]) * scale
            dh += _mm(ds, key_t, USE_DOT, PREC)
            acc_k += _mm(tl.trans(h), ds, USE_DOT, PREC)
            acc_v += _mm(tl.trans(do), alpha, USE_DOT, PREC)

        tl.store(dh_ptr + b * C * N + c[None, :] * N + n[:, None],
                 dh.to(dh_ptr.dtype.element_ty), mask=n_ok[:, None] & c_ok[None, :])
        if not HAS_ATTN:
            tl.store(do_ptr + b * CV * N + cv[None, :] * N + n[:, None],
                     do.to(do_ptr.dtype.element_ty), mask=n_ok[:, None] & cv_ok[None, :])

    # One partial per program (summed in a fixed order on the host), or fp32 atomics.
    part = b if ATOMIC else b * P + pid
    if HAS_ATTN:
        kt_ok = c_ok[:, None] & t_ok[None, :]
        vt_ok = cv_ok[:, None] & t_ok[None, :]
        ptrs_k = pk_ptr + part * C * T + c[:, None] * T + t[None, :]
        ptrs_v = pv_ptr + part * CV * T + cv[:, None] * T + t[None, :]
        if ATOMIC:
            tl.atomic_add(ptrs_k, acc_k, mask=kt_ok)
            tl.atomic_add(ptrs_v, acc_v, mask=vt_ok)
        else:
            tl.store(ptrs_k, acc_k, mask=kt_ok)
            tl.store(ptrs_v, acc_v, mask=vt_ok)
    if HAS_GATE:
        if ATOMIC:
            tl.atomic_add(pw_ptr + c, acc_wh, mask=c_ok)
            tl.atomic_add(pw_ptr + C + cv, acc_wo, mask=cv_ok)
            tl.atomic_add(pb_ptr, tl.sum(acc_b, axis=0))
        else:
            tl.store(pw_ptr + part * 2 * C + c, acc_wh, mask=c_ok)
            tl.store(pw_ptr + part * 2 * C + C + cv, acc_wo, mask=cv_ok)
            tl.store(pb_ptr + part, tl.sum(acc_b, axis=0))


# --------------------------------------------------------------------------------------------
# Host side: the kernels of csrc/ops.cpp
# --------------------------------------------------------------------------------------------

def _pixel_strides(t):
    """(s_c, s_y, s_x, flat): flat when the pixel n = y*W + x sits at n * s_x."""
    _, _, height, width = t.shape
    s_c, s_y, s_x = t.stride(1), t.stride(2), t.stride(3)
    if width == 1:
        return s_c, s_y, s_y, True
    return s_c, s_y, s_x, height == 1 or s_y == width * s_x


def _config(channels_pad, on_gpu, backward, dtype):
    """BLOCK_N, the programs per SM of the pixel-block loop (None: one block per program)
    and launch options; the widest register tile is BLOCK_N x channels_pad."""
    if not on_gpu:  # few, large program instances: the interpreter pays per instance
        return dict(BLOCK_N=64, num_warps=4), 0
    # From one sweep on an H100 at C = 64, T = 18 (re-tune: a later run on another machine
    # was up to 1.7x slower with the same settings): 64-pixel blocks and 4 warps forward, fp32
    # gaining from the strided block loop (84 vs 98 us), bf16 from one block per program and a
    # 2-stage pipeline (53 vs 88 us); 32-pixel blocks backward (383 us vs 566 us at 64), whose
    # key/value/accumulator tiles fill the registers.
    block = max(16, min(128, (2048 if backward else 4096) // channels_pad))
    if backward:
        return dict(BLOCK_N=block, num_warps=4, num_stages=1), BACKWARD_PROGRAMS_PER_SM
    if dtype == torch.float32:
        return dict(BLOCK_N=block, num_warps=4, num_stages=1), FORWARD_PROGRAMS_PER_SM
    return dict(BLOCK_N=block, num_warps=4, num_stages=2), None


# Programs per SM of the persistent-style grids (the pixel-block loops).
FORWARD_PROGRAMS_PER_SM = 4
BACKWARD_PROGRAMS_PER_SM = 4


def _programs_per_batch(n_blocks, batch, device, per_sm):
    if device.type != "cuda":
        return min(n_blocks, 2)  # still exercises the strided loop and several partials
    if per_sm is None:
        return n_blocks
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, triton.cdiv(per_sm * sms, batch)))


def _absent(like):
    """The empty result for an absent input: a fresh tensor each time, as custom ops may not
    return one tensor twice."""
    return like.new_empty(0)


def _prepare(key, value, mask, gate_weight, gate_bias):
    """The tiny operands, contiguous; the mask as bytes (a free view of the bool tensor)."""
    if key is not None:
        key, value = key.contiguous(), value.contiguous()
        mask = mask.contiguous().view(torch.uint8) if mask is not None else None
    else:
        mask = None
    if gate_weight is not None:
        gate_weight = gate_weight.reshape(-1).contiguous()
        gate_bias = gate_bias.reshape(-1).contiguous()
    return key, value, mask, gate_weight, gate_bias


def dynamic_memory_forward(h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat,
                           return_attn, return_gate):
    batch, channels, height, width = h.shape
    n_pixels = height * width
    has_attn, has_gate = key is not None, gate_weight is not None
    if not has_attn and o is None:
        raise ValueError("dynamic_memory_forward: give key and value, or o")
    if return_gate and not has_gate:
        raise ValueError("dynamic_memory_forward: return_gate needs gate_weight")
    slots = key.shape[2] if has_attn else 0
    out_ch = value.shape[1] if has_attn else channels
    if has_gate and out_ch != channels:
        raise ValueError("dynamic_memory_forward: the gate needs value channels == C")
    dev, dtype = h.device, h.dtype
    out = torch.empty((batch, out_ch, height, width), device=dev, dtype=dtype)
    lse = torch.empty((batch, n_pixels) if has_attn else (0,), device=dev, dtype=torch.float32)
    attn = torch.empty((batch, slots, height, width) if has_attn and return_attn else (0,),
                       device=dev, dtype=dtype)
    gate = torch.empty((batch, 1, height, width) if return_gate else (0,), device=dev,
                       dtype=dtype)
    if batch * n_pixels == 0:
        return out, lse, attn, gate

    key, value, mask, gate_weight, gate_bias = _prepare(key, value, mask, gate_weight,
                                                        gate_bias)
    use_o = not has_attn
    hs = _pixel_strides(h)
    os_ = _pixel_strides(o) if use_o else (0, 0, 0, True)
    c_pad, cv_pad = pad(channels), pad(out_ch)
    cfg, per_sm = _config(max(c_pad, cv_pad), h.is_cuda, False, dtype)

    def given(t):  # absent operands: any pointer, never read (the constexpr flags say so)
        return h if t is None or t.numel() == 0 else t

    progs = _programs_per_batch(triton.cdiv(n_pixels, cfg["BLOCK_N"]), batch, dev, per_sm)
    _forward_kernel[(progs, batch)](
        h, given(o if use_o else None), given(key), given(value), given(mask),
        given(gate_weight), given(gate_bias), out, given(lse), given(attn), given(gate),
        batch, channels, out_ch, max(slots, 1), n_pixels, width, float(scale), progs,
        h.stride(0), *hs[:3], o.stride(0) if use_o else 0, *os_[:3],
        HAS_ATTN=has_attn, HAS_MASK=mask is not None, MASK_COMPAT=bool(mask_compat),
        HAS_GATE=has_gate, RETURN_ATTN=attn.numel() > 0, RETURN_GATE=gate.numel() > 0,
        H_FLAT=hs[3], O_FLAT=os_[3],
        C_PAD=c_pad, CV_PAD=cv_pad, T_PAD=pad(slots), **dot_meta(dtype), **cfg)
    return out, lse, attn, gate


def dynamic_memory_backward(grad_out, grad_attn, grad_gate, h, o, key, value, mask, gate_weight,
                            gate_bias, lse, scale, mask_compat):
    batch, channels, height, width = h.shape
    n_pixels = height * width
    has_attn, has_gate = key is not None, gate_weight is not None
    use_o = not has_attn
    if use_o and o is None:
        raise ValueError("dynamic_memory_backward: give key and value, or o")
    dev, dtype = h.device, h.dtype
    slots = key.shape[2] if has_attn else 0
    out_ch = value.shape[1] if has_attn else channels
    w_shape = gate_weight.shape if has_gate else None
    b_shape = gate_bias.shape if has_gate else None
    dh = torch.empty((batch, channels, height, width), device=dev, dtype=dtype)
    do = torch.empty((batch, channels, height, width), device=dev, dtype=dtype) \
        if use_o else _absent(h)

    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    atomic = not deterministic()
    c_pad, cv_pad = pad(channels), pad(out_ch)
    cfg, per_sm = _config(max(c_pad, cv_pad), h.is_cuda, True, dtype)
    progs = _programs_per_batch(triton.cdiv(n_pixels, cfg["BLOCK_N"]), batch, dev, per_sm) \
        if batch * n_pixels else 0
    parts = batch * progs
    if atomic:
        pk = torch.zeros((batch, channels, slots), device=dev, dtype=acc_dtype)
        pv = torch.zeros((batch, out_ch, slots), device=dev, dtype=acc_dtype)
        pw = torch.zeros((1, 2 * channels), device=dev, dtype=acc_dtype)
        pb = torch.zeros((1,), device=dev, dtype=acc_dtype)
    else:
        pk = torch.empty((parts, channels, slots), device=dev, dtype=acc_dtype)
        pv = torch.empty((parts, out_ch, slots), device=dev, dtype=acc_dtype)
        pw = torch.empty((parts, 2 * channels), device=dev, dtype=acc_dtype)
        pb = torch.empty((parts,), device=dev, dtype=acc_dtype)

    if progs:
        key, value, mask, gate_weight, gate_bias = _prepare(key, value, mask, gate_weight,
                                                            gate_bias)
        # Gradients of the optional outputs are small next to h; a copy only if strided.
        grad_attn = grad_attn.contiguous() if has_attn and grad_attn is not None else None
        grad_gate = grad_gate.contiguous() if has_gate and grad_gate is not None else None
        hs, gs = _pixel_strides(h), _pixel_strides(grad_out)
        os_ = _pixel_strides(o) if use_o else (0, 0, 0, True)

        def given(t):
            return h if t is None or t.numel() == 0 else t

        _backward_kernel[(progs, batch)](
            grad_out, given(grad_attn), given(grad_gate), h, given(o if use_o else None),
            given(key), given(value), given(mask), given(gate_weight), given(gate_bias),
            given(lse if has_attn else None), dh, given(do), given(pk), given(pv), given(pw),
            given(pb),
            batch, channels, out_ch, max(slots, 1), n_pixels, width, float(scale), progs,
            h.stride(0), *hs[:3], o.stride(0) if use_o else 0, *os_[:3],
            grad_out.stride(0), *gs[:3],
            HAS_ATTN=has_attn, HAS_MASK=mask is not None, MASK_COMPAT=bool(mask_compat),
            HAS_GATE=has_gate, HAS_GATTN=grad_attn is not None,
            HAS_GGATE=grad_gate is not None, H_FLAT=hs[3], O_FLAT=os_[3], G_FLAT=gs[3],
            USE_LSE=BACKWARD_USES_LSE and dtype != torch.float64, ATOMIC=atomic,
            C_PAD=c_pad, CV_PAD=cv_pad, T_PAD=pad(slots), **dot_meta(dtype), **cfg)

    if not has_attn:
        dkey, dvalue = _absent(h), _absent(h)
    elif atomic:
        dkey, dvalue = pk.to(dtype), pv.to(dtype)
    else:
        dkey = pk.view(batch, progs, channels, slots).sum(1).to(dtype)
        dvalue = pv.view(batch, progs, out_ch, slots).sum(1).to(dtype)
    if has_gate:
        dweight = pw.sum(0).to(dtype).reshape(w_shape)
        dbias = pb.sum(0, keepdim=True).to(dtype).reshape(b_shape)
    else:
        dweight, dbias = _absent(h), _absent(h)
    return dh, do, dkey, dvalue, dweight, dbias

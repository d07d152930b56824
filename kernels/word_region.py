"""Triton kernels of the word-region family: word_region_similarity and word_region_attention.

Design. A program works on one (image j, caption i) pair at a time with the caption's words
w (D x T, T padded to a power of two >= 16) in registers, and sweeps the image's regions in
tiles of BLOCK_R. Per tile it computes the scores s = r^T w (BLOCK_R x T), the word softmax of
each region over the valid words (all T on chip), e = exp(gamma1*a - max(gamma1, 0)) and
accumulates sum_r e and sum_r r e^T (D x T). Because 0 <= a <= 1, gamma1*a lies within
[min(0, gamma1), max(0, gamma1)]: the region softmax needs no running maximum, so one sweep
gives the context c = sum_r r e^T / sum_r e exactly (|gamma1| <= 80 keeps e inside float32).
The cosine and the log-sum-exp over the valid words follow in registers. Only S and the
per-(pair, word) lse are written: O(B^2 T), never the B^2 R T attention maps. Padded words
(t >= len, or word_mask True) are left out of the word softmax and the sum over words, and
get context 0, attention 0 and lse +inf.

Backward recomputes in two sweeps per pair: the first rebuilds c (and sum_r e, hence the
normaliser: the saved lse is accepted but not needed, and float64 inputs keep full
precision), then the cosine gradients g_c (D x T) and delta_t = sum_d g_c c; the second
recomputes a and b per tile and forms
    db = r^T g_c,   da = gamma1 b (db - delta),   ds = a (da - sum_t a da),
    d_regions += w ds^T + g_c b,   d_words += r ds (+ the direct cosine term).
d_regions sums over captions and d_words over images. Deterministic (default): two launches.
  * regions: grid (image j, caption group g) with G groups; the program owns the fp32 slice
    part[g, j] (D x R) and adds each caption's tile contributions to it in a fixed order
    (read-modify-write of its own slice, no atomics); d_regions = part.sum(0).
  * words: grid (caption i, image group g'); d_words of the caption stays in registers over
    its images; d_words = part.sum(0).
  Extra memory: G * Bi*D*R + G' * Bc*D*T floats, G and G' small (enough programs to fill the
  GPU), and both sweeps are recomputed once per launch. T2I_FAST_DETERMINISTIC=0 instead runs
  one launch over pairs with fp32 atomics (about 2/3 of the arithmetic).
word_region_attention pairs index b with b: one program per b, same sweeps, outputs written
directly (context, attn by a second sweep, d_regions per tile, d_words from registers); for
D > 64 its backward takes two launches (d_regions, d_words), as the five dots of one would
overflow shared memory. Any launch that still overflows it retries with half the region tile,
and at 16 with IEEE instead of 3xTF32 dots (same accuracy, fewer operand copies).

Precision as in dynamic_memory.py: fp32 (fp64) arithmetic, dots on float32 operands (TF32
for fp16/bf16 inputs, _common.FP32_PRECISION for fp32), broadcast-and-sum for float64.

Limits. |gamma1| <= GAMMA1_LIMIT (above). Caption lengths are clamped into [0, T], so no length
value reads out of bounds. D and T size the register tiles (D_PAD x BLOCK_R, D_PAD x T_PAD); a
launch that overflows shared memory retries with smaller tiles (_launch).

Memory traffic (E bytes per element, P = Bi*Bc pairs): similarity forward reads D*R*E per
pair (L2-resident: from DRAM about Bi*D*R*E + Bc*D*T*E) and writes P*(E + 4*T). Backward
reads the same twice per launch and writes Bi*D*R + Bc*D*T results, plus the partial slices
(G*Bi*D*R*4 bytes, rewritten once per caption of a group: L2 traffic of 8*D*R per pair).
Attention: reads B*(D*R + D*T)*E twice, writes B*(D*T + T*R)*E (+ 4*B*T lse).

Performance: measured figures, the limits found and the next steps are in benchmarks/NOTES.md.
"""
import torch
import triton
import triton.language as tl

from ._common import _arange, _masked_softmax, _mm, deterministic, dot_meta, pad

# The region softmax runs without a running maximum (see above), which keeps exp(gamma1 * a) in
# float32 range for |gamma1| <= GAMMA1_LIMIT only. The backend table (t2i_fast/backends.py) reads
# this limit and sends calls beyond it elsewhere before they reach these kernels.
GAMMA1_LIMIT = 80.0


# --------------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_regions(base, r0, R, d, d_ok, s_d, s_r, BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    r = r0 + tl.arange(0, BLOCK_R)
    r_ok = r < R
    reg = tl.load(base + d[:, None] * s_d + r[None, :] * s_r,
                  mask=d_ok[:, None] & r_ok[None, :], other=0.0).to(ACC)          # [D, BR]
    return reg, r, r_ok


@triton.jit
def _word_softmax(reg, w, valid, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a [BR, T]: each region's softmax over the valid words."""
    a, _ = _masked_softmax(_mm(tl.trans(reg), w, USE_DOT, PREC), valid)
    return a


@triton.jit
def _context(reg_base, s_d, s_r, R, w, d, d_ok, t, t_ok, word_ok, gamma1, off,
             ga_base, s_ga_t, s_ga_r, HAS_GATTN: tl.constexpr,
             BLOCK_R: tl.constexpr, D_PAD: tl.constexpr, T_PAD: tl.constexpr,
             ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """One sweep over the regions: the context c [D, T], lse [T] (+inf for padded words, whose
    sum is 0), the normaliser sum_r e [T] (1 where it is 0) and sum_r e * grad_attn [T]."""
    ctx = tl.zeros((D_PAD, T_PAD), ACC)
    total = tl.zeros((T_PAD,), ACC)
    ga = tl.zeros((T_PAD,), ACC)
    for r0 in range(0, R, BLOCK_R):
        reg, r, r_ok = _load_regions(reg_base, r0, R, d, d_ok, s_d, s_r, BLOCK_R, ACC)
        valid = word_ok[None, :] & r_ok[:, None]
        a = _word_softmax(reg, w, valid, USE_DOT, PREC)
        e = tl.where(valid, tl.exp(gamma1 * a - off), 0.0)
        total += tl.sum(e, axis=0)
        ctx += _mm(reg, e, USE_DOT, PREC)
        if HAS_GATTN:
            gat = tl.load(ga_base + t[None, :] * s_ga_t + r[:, None] * s_ga_r,
                          mask=r_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
            ga += tl.sum(e * gat, axis=0)
    safe = tl.where(total > 0, total, 1.0)
    lse = tl.where(total > 0, off + tl.log(safe), float("inf"))
    return ctx / safe[None, :], lse, safe, ga


@triton.jit
def _cosine(w, c, word_ok, gamma2):
    """cos per word (norm product clamped at 1e-8) and S = log sum_valid exp(gamma2 cos)."""
    num = tl.sum(w * c, axis=0)
    nw = tl.sqrt(tl.sum(w * w, axis=0))
    nc = tl.sqrt(tl.sum(c * c, axis=0))
    den = tl.maximum(nw * nc, 1e-8)
    x = tl.where(word_ok, gamma2 * (num / den), float("-inf"))
    m = tl.max(x, axis=0)
    sim = m + tl.log(tl.sum(tl.exp(x - m), axis=0))
    return sim, x, num, nw, nc, den


@triton.jit
def _cosine_backward(w, c, word_ok, gamma2, grad_s):
    """dS/dw through the cosine (direct term) and dS/dc, for one pair."""
    sim, x, num, nw, nc, den = _cosine(w, c, word_ok, gamma2)
    dcos = tl.where(word_ok, grad_s * gamma2 * tl.exp(x - sim), 0.0)
    # While |w||c| > 1e-8 the denominator depends on w and c; clamped, it is a constant.
    live = nw * nc > 1e-8
    coef_w = tl.where(live, num / (tl.where(live, nw * nw, 1.0)), 0.0)
    coef_c = tl.where(live, num / (tl.where(live, nc * nc, 1.0)), 0.0)
    gw = dcos[None, :] * (c - coef_w[None, :] * w) / den[None, :]
    gc = dcos[None, :] * (w - coef_c[None, :] * c) / den[None, :]
    return gw, gc


@triton.jit
def _tile_backward(reg, r_ok, w, word_ok, gc, delta, lse, gamma1, gat,
                   HAS_GATTN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """b^T [BR, T] and the score gradient ds [BR, T] of one region tile."""
    valid = word_ok[None, :] & r_ok[:, None]
    a = _word_softmax(reg, w, valid, USE_DOT, PREC)
    bt = tl.where(valid, tl.exp(gamma1 * a - lse[None, :]), 0.0)
    db = _mm(tl.trans(reg), gc, USE_DOT, PREC)
    if HAS_GATTN:
        db += gat
    da = gamma1 * bt * (db - delta[None, :])
    ds = a * (da - tl.sum(a * da, axis=1)[:, None])
    return bt, ds


@triton.jit
def _caption_words(lens_ptr, i, t, T):
    """The real words of caption i: the slots below its length clamped into [0, T]."""
    return t < tl.minimum(tl.maximum(tl.load(lens_ptr + i), 0), T)


@triton.jit
def _load_words(base, d, d_ok, t, word_ok, s_d, s_t, ACC: tl.constexpr):
    return tl.load(base + d[:, None] * s_d + t[None, :] * s_t,
                   mask=d_ok[:, None] & word_ok[None, :], other=0.0).to(ACC)        # [D, T]


# --------------------------------------------------------------------------------------------
# word_region_similarity
# --------------------------------------------------------------------------------------------

@triton.jit
def _similarity_forward_kernel(
        reg_ptr, words_ptr, lens_ptr, sim_ptr, lse_ptr,
        Bc, D, R, T, gamma1, gamma2, off,
        s_rb, s_rd, s_rr, s_wb, s_wd, s_wt,
        BLOCK_R: tl.constexpr, D_PAD: tl.constexpr, T_PAD: tl.constexpr,
        ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    j = pid // Bc  # consecutive programs share image j: its tiles stay in L2
    i = pid % Bc
    d, d_ok = _arange(D_PAD, D)
    t, t_ok = _arange(T_PAD, T)
    word_ok = _caption_words(lens_ptr, i, t, T)
    w = _load_words(words_ptr + i * s_wb, d, d_ok, t, word_ok, s_wd, s_wt, ACC)
    c, lse, _, _ = _context(reg_ptr + j * s_rb, s_rd, s_rr, R, w, d, d_ok, t, t_ok, word_ok,
                            gamma1, off, reg_ptr, 0, 0, False,
                            BLOCK_R, D_PAD, T_PAD, ACC, USE_DOT, PREC)
    sim, _, _, _, _, _ = _cosine(w, c, word_ok, gamma2)
    tl.store(sim_ptr + pid, sim.to(sim_ptr.dtype.element_ty))
    tl.store(lse_ptr + pid * T + t, lse.to(tl.float32), mask=t_ok)


@triton.jit
def _similarity_backward_kernel(
        gs_ptr, reg_ptr, words_ptr, lens_ptr, dreg_ptr, dw_ptr,
        Bi, Bc, D, R, T, G, gamma1, gamma2, off,
        s_gj, s_gi, s_rb, s_rd, s_rr, s_wb, s_wd, s_wt,
        MODE: tl.constexpr,  # 0: d_regions per (j, group); 1: d_words per (i, group); 2: atomics
        BLOCK_R: tl.constexpr, D_PAD: tl.constexpr, T_PAD: tl.constexpr,
        ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1).to(tl.int64)
    d, d_ok = _arange(D_PAD, D)
    t, t_ok = _arange(T_PAD, T)
    if MODE == 0:
        count = Bc
    elif MODE == 1:
        count = Bi
    else:
        count = 1
    dw_acc = tl.zeros((D_PAD, T_PAD), ACC)
    for k in range(grp, count, G):
        if MODE == 0:
            j = pid
            i = k
        elif MODE == 1:
            j = k
            i = pid
        else:
            j = pid // Bc
            i = pid % Bc
        word_ok = _caption_words(lens_ptr, i, t, T)
        w = _load_words(words_ptr + i * s_wb, d, d_ok, t, word_ok, s_wd, s_wt, ACC)
        reg_base = reg_ptr + j * s_rb
        c, lse, _, _ = _context(reg_base, s_rd, s_rr, R, w, d, d_ok, t, t_ok, word_ok,
                                gamma1, off, reg_ptr, 0, 0, False,
                                BLOCK_R, D_PAD, T_PAD, ACC, USE_DOT, PREC)
        grad_s = tl.load(gs_ptr + j * s_gj + i * s_gi).to(ACC)
        gw, gc = _cosine_backward(w, c, word_ok, gamma2, grad_s)
        delta = tl.sum(gc * c, axis=0)
        if MODE != 0:
            dw_acc += gw
        for r0 in range(0, R, BLOCK_R):
            reg, r, r_ok = _load_regions(reg_base, r0, R, d, d_ok, s_rd, s_rr, BLOCK_R, ACC)
            bt, ds = _tile_backward(reg, r_ok, w, word_ok, gc, delta, lse, gamma1, 0.0, False,
                                    USE_DOT, PREC)
            if MODE != 1:
                dreg = _mm(w, tl.trans(ds), USE_DOT, PREC) + _mm(gc, tl.trans(bt), USE_DOT,
                                                                 PREC)
                tile_ok = d_ok[:, None] & r_ok[None, :]
                if MODE == 0:
                    ptrs = dreg_ptr + (grp * Bi + j) * D * R + d[:, None] * R + r[None, :]
                    if k != grp:  # this program's slice: a plain read-modify-write
                        dreg += tl.load(ptrs, mask=tile_ok, other=0.0)
                    tl.store(ptrs, dreg, mask=tile_ok)
                else:
                    tl.atomic_add(dreg_ptr + j * D * R + d[:, None] * R + r[None, :], dreg,
                                  mask=tile_ok)
            if MODE != 0:
                dw_acc += _mm(reg, ds, USE_DOT, PREC)
    if MODE == 1:
        tl.store(dw_ptr + (grp * Bc + pid) * D * T + d[:, None] * T + t[None, :], dw_acc,
                 mask=d_ok[:, None] & t_ok[None, :])
    elif MODE == 2:
        tl.atomic_add(dw_ptr + (pid % Bc) * D * T + d[:, None] * T + t[None, :], dw_acc,
                      mask=d_ok[:, None] & t_ok[None, :])


# --------------------------------------------------------------------------------------------
# word_region_attention (index-paired)
# --------------------------------------------------------------------------------------------

@triton.jit
def _pair_words(words_ptr, mask_ptr, b, D, T, s_wb, s_wd, s_wt, HAS_MASK: tl.constexpr,
                D_PAD: tl.constexpr, T_PAD: tl.constexpr, ACC: tl.constexpr):
    """The index ranges, the real words of pair b (not padded by word_mask) and its words w."""
    d, d_ok = _arange(D_PAD, D)
    t, t_ok = _arange(T_PAD, T)
    word_ok = t_ok
    if HAS_MASK:
        word_ok = word_ok & (tl.load(mask_ptr + b * T + t, mask=t_ok, other=1) == 0)
    w = _load_words(words_ptr + b * s_wb, d, d_ok, t, word_ok, s_wd, s_wt, ACC)
    return d, d_ok, t, t_ok, word_ok, w


@triton.jit
def _attention_forward_kernel(
        words_ptr, reg_ptr, mask_ptr, ctx_ptr, attn_ptr, lse_ptr,
        D, R, T, gamma1, off,
        s_wb, s_wd, s_wt, s_rb, s_rd, s_rr,
        HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr, D_PAD: tl.constexpr,
        T_PAD: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d, d_ok, t, t_ok, word_ok, w = _pair_words(words_ptr, mask_ptr, b, D, T, s_wb, s_wd, s_wt,
                                               HAS_MASK, D_PAD, T_PAD, ACC)
    reg_base = reg_ptr + b * s_rb
    c, lse, _, _ = _context(reg_base, s_rd, s_rr, R, w, d, d_ok, t, t_ok, word_ok,
                            gamma1, off, reg_ptr, 0, 0, False,
                            BLOCK_R, D_PAD, T_PAD, ACC, USE_DOT, PREC)
    tl.store(ctx_ptr + b * D * T + d[:, None] * T + t[None, :],
             c.to(ctx_ptr.dtype.element_ty), mask=d_ok[:, None] & t_ok[None, :])
    tl.store(lse_ptr + b * T + t, lse.to(tl.float32), mask=t_ok)
    # The region softmax needs the full lse first: a second sweep writes the attention.
    for r0 in range(0, R, BLOCK_R):
        reg, r, r_ok = _load_regions(reg_base, r0, R, d, d_ok, s_rd, s_rr, BLOCK_R, ACC)
        valid = word_ok[None, :] & r_ok[:, None]
        a = _word_softmax(reg, w, valid, USE_DOT, PREC)
        bt = tl.where(valid, tl.exp(gamma1 * a - lse[None, :]), 0.0)
        tl.store(attn_ptr + b * T * R + t[None, :] * R + r[:, None],
                 bt.to(attn_ptr.dtype.element_ty), mask=r_ok[:, None] & t_ok[None, :])


@triton.jit
def _attention_backward_kernel(
        gctx_ptr, gattn_ptr, words_ptr, reg_ptr, mask_ptr, dw_ptr, dreg_ptr,
        D, R, T, gamma1, off,
        s_cb, s_cd, s_ct, s_ab, s_at, s_ar, s_wb, s_wd, s_wt, s_rb, s_rd, s_rr,
        HAS_MASK: tl.constexpr, HAS_GATTN: tl.constexpr, WANT_DREG: tl.constexpr,
        WANT_DW: tl.constexpr, BLOCK_R: tl.constexpr, D_PAD: tl.constexpr,
        T_PAD: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d, d_ok, t, t_ok, word_ok, w = _pair_words(words_ptr, mask_ptr, b, D, T, s_wb, s_wd, s_wt,
                                               HAS_MASK, D_PAD, T_PAD, ACC)
    # A padded word's context and attention are constant zeros: its gradients are dropped.
    gc = _load_words(gctx_ptr + b * s_cb, d, d_ok, t, word_ok, s_cd, s_ct, ACC)
    reg_base = reg_ptr + b * s_rb
    ga_base = gattn_ptr + b * s_ab
    c, lse, safe, ga = _context(reg_base, s_rd, s_rr, R, w, d, d_ok, t, t_ok, word_ok,
                                gamma1, off, ga_base, s_at, s_ar, HAS_GATTN,
                                BLOCK_R, D_PAD, T_PAD, ACC, USE_DOT, PREC)
    delta = tl.sum(gc * c, axis=0) + ga / safe
    dw_acc = tl.zeros((D_PAD, T_PAD), ACC)
    for r0 in range(0, R, BLOCK_R):
        reg, r, r_ok = _load_regions(reg_base, r0, R, d, d_ok, s_rd, s_rr, BLOCK_R, ACC)
        if HAS_GATTN:
            gat = tl.load(ga_base + t[None, :] * s_at + r[:, None] * s_ar,
                          mask=r_ok[:, None] & t_ok[None, :], other=0.0).to(ACC)
        else:
            gat = 0.0
        bt, ds = _tile_backward(reg, r_ok, w, word_ok, gc, delta, lse, gamma1, gat,
                                HAS_GATTN, USE_DOT, PREC)
        if WANT_DREG:
            dreg = _mm(w, tl.trans(ds), USE_DOT, PREC) + _mm(gc, tl.trans(bt), USE_DOT, PREC)
            tl.store(dreg_ptr + b * D * R + d[:, None] * R + r[None, :],
                     dreg.to(dreg_ptr.dtype.element_ty), mask=d_ok[:, None] & r_ok[None, :])
        if WANT_DW:
            dw_acc += _mm(reg, ds, USE_DOT, PREC)
    if WANT_DW:
        tl.store(dw_ptr + b * D * T + d[:, None] * T + t[None, :],
                 dw_acc.to(dw_ptr.dtype.element_ty), mask=d_ok[:, None] & t_ok[None, :])


# --------------------------------------------------------------------------------------------
# Host side: the kernels of csrc/ops.cpp
# --------------------------------------------------------------------------------------------

def _config(dim, on_gpu, backward=False):
    """Launch meta-parameters: register tiles of D_PAD x BLOCK_R and D_PAD x T_PAD.

    num_stages=1: the region tiles come from L2 and a software pipeline would only multiply
    the shared memory that the dots' fp32 operands already need.
    """
    d_pad = pad(dim)
    if not on_gpu:  # several region tiles even at R <= 25, so the sweep loops are tested
        return dict(BLOCK_R=16, D_PAD=d_pad, num_warps=4, num_stages=1)
    # Measured on an H100 at D = 256, T = 18: 16-region tiles; 8 warps halve the backward's
    # register spills, while the forward runs best with 4.
    block_r = max(16, min(64, 4096 // d_pad))
    warps = 8 if backward and d_pad >= 256 else 4
    return dict(BLOCK_R=block_r, D_PAD=d_pad, num_warps=warps, num_stages=1)


def _launch(kernel, grid, args, meta):
    """Launch; if the dots' operands overflow shared memory, retry with half the region tile."""
    while True:
        try:
            return kernel[grid](*args, **meta)
        except triton.runtime.errors.OutOfResources:
            if meta["BLOCK_R"] > 16:
                meta = dict(meta, BLOCK_R=meta["BLOCK_R"] // 2)
            elif meta["PREC"] == "tf32x3":  # 3xTF32 keeps hi/lo operand copies; IEEE does not
                meta = dict(meta, PREC="ieee")
            else:
                raise


def _offset(gamma1):
    """The shift of the region softmax's exponent: gamma1 * a <= max(gamma1, 0) as 0 <= a <= 1."""
    return max(float(gamma1), 0.0)


def _groups(fixed, count, device):
    """Programs per fixed index so that the grid fills the GPU (a few partial copies)."""
    if device.type != "cuda":
        return min(count, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(count, 4, triton.cdiv(sms, fixed)))


def word_region_similarity_forward(regions, words, cap_lens, gamma1, gamma2):
    n_img, dim, n_reg = regions.shape
    n_cap, _, slots = words.shape
    off = _offset(gamma1)
    sim = torch.empty((n_img, n_cap), device=regions.device, dtype=regions.dtype)
    lse = torch.empty((n_img, n_cap, slots), device=regions.device, dtype=torch.float32)
    if n_img * n_cap == 0 or slots == 0:
        return sim, lse
    lens = cap_lens.to(torch.int64).contiguous()
    cfg = _config(dim, regions.is_cuda)
    _launch(_similarity_forward_kernel, (n_img * n_cap,), (
        regions, words, lens, sim, lse, n_cap, dim, n_reg, slots, float(gamma1), float(gamma2),
        off, *regions.stride(), *words.stride()),
        dict(T_PAD=pad(slots), **cfg, **dot_meta(regions.dtype)))
    return sim, lse


def word_region_similarity_backward(grad_s, regions, words, cap_lens, lse, gamma1, gamma2):
    n_img, dim, n_reg = regions.shape
    n_cap, _, slots = words.shape
    dev, dtype = regions.device, regions.dtype
    off = _offset(gamma1)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if n_img * n_cap == 0 or slots == 0:
        return torch.zeros_like(regions), torch.zeros_like(words)
    lens = cap_lens.to(torch.int64).contiguous()
    cfg = _config(dim, regions.is_cuda, backward=True)
    args = (grad_s, regions, words, lens)
    scalars = (n_img, n_cap, dim, n_reg, slots)
    strides = (*grad_s.stride(), *regions.stride(), *words.stride())
    meta = dict(T_PAD=pad(slots), **cfg, **dot_meta(regions.dtype))
    gm = (float(gamma1), float(gamma2), off)
    if not deterministic():
        d_reg = torch.zeros((n_img, dim, n_reg), device=dev, dtype=acc_dtype)
        d_words = torch.zeros((n_cap, dim, slots), device=dev, dtype=acc_dtype)
        _launch(_similarity_backward_kernel, (n_img * n_cap, 1),
                (*args, d_reg, d_words, *scalars, 1, *gm, *strides), dict(MODE=2, **meta))
        return d_reg.to(dtype), d_words.to(dtype)
    g_reg = _groups(n_img, n_cap, dev)
    part_reg = torch.empty((g_reg, n_img, dim, n_reg), device=dev, dtype=acc_dtype)
    _launch(_similarity_backward_kernel, (n_img, g_reg),
            (*args, part_reg, part_reg, *scalars, g_reg, *gm, *strides), dict(MODE=0, **meta))
    g_words = _groups(n_cap, n_img, dev)
    part_words = torch.empty((g_words, n_cap, dim, slots), device=dev, dtype=acc_dtype)
    _launch(_similarity_backward_kernel, (n_cap, g_words),
            (*args, part_words, part_words, *scalars, g_words, *gm, *strides),
            dict(MODE=1, **meta))
    return part_reg.sum(0).to(dtype), part_words.sum(0).to(dtype)


def _attention_launch(words, word_mask, backward):
    """The word mask as bytes (any pointer when absent) and the meta-parameters of the
    attention kernels."""
    mask = word_mask.contiguous().view(torch.uint8) if word_mask is not None else words
    meta = dict(HAS_MASK=word_mask is not None, T_PAD=pad(words.shape[2]),
                **_config(words.shape[1], words.is_cuda, backward), **dot_meta(words.dtype))
    return mask, meta


def word_region_attention_forward(words, regions, word_mask, gamma1):
    batch, dim, slots = words.shape
    n_reg = regions.shape[2]
    off = _offset(gamma1)
    context = words.new_empty((batch, dim, slots))
    attn = words.new_empty((batch, slots, n_reg))
    lse = words.new_empty((batch, slots), dtype=torch.float32)
    if batch * slots == 0:
        return context, attn, lse
    mask, meta = _attention_launch(words, word_mask, backward=False)
    _launch(_attention_forward_kernel, (batch,), (
        words, regions, mask, context, attn, lse, dim, n_reg, slots, float(gamma1), off,
        *words.stride(), *regions.stride()), meta)
    return context, attn, lse


def word_region_attention_backward(grad_context, grad_attn, words, regions, word_mask, lse,
                                   gamma1):
    batch, dim, slots = words.shape
    n_reg = regions.shape[2]
    d_words, d_regions = words.new_empty((batch, dim, slots)), words.new_empty((batch, dim, n_reg))
    if batch * slots == 0:
        return d_words.zero_(), d_regions.zero_()
    mask, meta = _attention_launch(words, word_mask, backward=True)
    gattn = grad_attn if grad_attn is not None else words
    # Wide D: the five dots' operands overflow shared memory in one kernel, so the two
    # gradients take a launch each (both redo the first sweep; B programs only).
    parts = ((True, True),) if meta["D_PAD"] <= 64 else ((True, False), (False, True))
    for want_dreg, want_dw in parts:
        _launch(_attention_backward_kernel, (batch,), (
            grad_context, gattn, words, regions, mask, d_words, d_regions, dim, n_reg, slots,
            float(gamma1), _offset(gamma1), *grad_context.stride(),
            *(grad_attn.stride() if grad_attn is not None else (0, 0, 0)),
            *words.stride(), *regions.stride()),
            dict(meta, HAS_GATTN=grad_attn is not None, WANT_DREG=want_dreg, WANT_DW=want_dw))
    return d_words, d_regions

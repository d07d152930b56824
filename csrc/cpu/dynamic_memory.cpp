// CPU kernels of the dynamic-memory family: memory_read, response_gate and dynamic_memory
// (schemas and conventions in csrc/ops.cpp, reference math in t2i_fast/ops/dynamic_memory.py).
//
// Design. Each image's pixels are cut into blocks of kBlock; a block's rows of every operand sit
// channel-major in small buffers of the accumulation type (float for half/bfloat16/float, double
// for double), zero-padded to kBlock pixels, so every inner loop runs over whole vectors of
// contiguous pixels. The math of one block is in dynamic_memory_block.h: all products (scores,
// read-out and their gradients) are one register-tiled routine, mix_rows; the sums over pixels
// (dkey, dvalue) use pixel-major transposes of the block, so no loop needs a reassociated
// floating-point reduction. This file copies blocks in and out in chunks of kChunkBlocks (long
// runs along each row of the inputs); runs of chunks of one image form the work units that
// at::parallel_for spreads over threads. The block math is compiled for the baseline ISA and for
// AVX2+FMA and chosen at run time, as the extension is built without -march. The variants (read,
// gate, read then gate) are compile-time flags of one code path.
//
// Backward recomputes the scores from h and key and the attention from the forward's float32
// lse (renormalised over the slots, which cancels lse's rounding for float64 inputs). With
// attention it never forms the read-out o: the gate needs only a.(value^T w_o) and
// a.(value^T grad_out) (see backward_attention). Pixel sums (dkey, dvalue, dgate) go to one
// partial per work unit, added in unit order at the end; the unit layout depends on B and N
// only, so results are deterministic and independent of the thread count.
//
// Memory traffic: forward reads h (and o) once and writes out, lse (4 bytes per pixel) and, if
// asked, attn (T per pixel) and gate; backward reads grad_out, h (and o), lse and grad_attn /
// grad_gate when given, and writes dh (and do). key, value and the gate parameters are converted
// once per call. Scratch per thread is about (3C + T) * kChunkBlocks * kBlock values for the
// staged chunk plus (4C + 4T) * kBlock + 2T*C for one block; backward's partials add up to
// about max(B, kTargetUnits) * (2T*C + 2C) values.
// Limits: GCC or Clang (vector extensions); float uses a polynomial exp (about 1 ulp), double
// libm's; no double backward (the Python layer refuses it).
#include "../dynamic_memory.h"
#include "dynamic_memory_block.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

namespace t2i_fast {
namespace cpu {
namespace {

// Pixels are staged (copied in, math, copied out) in chunks of up to kChunkBlocks blocks.
constexpr int64_t kChunkBlocks = 8;
// Work units are runs of chunks of one image; backward keeps one partial sum per unit. About
// this many units per call, whatever the thread count (so the results do not depend on it):
// enough to balance many threads, few enough that the partials stay small.
constexpr int64_t kTargetUnits = 256;

// A staged chunk: `blocks` blocks of image b, `count` pixels from pixel n0.
struct Chunk {
  int64_t b = 0, n0 = 0, count = 0, blocks = 0;
};

// Copies the chunk's pixels of the (rows, ld) matrix at src into dst laid out block-major
// (blocks, rows, kBlock), padding the last block with `pad`. Each row is read in one run of up
// to kChunkBlocks * kBlock pixels: the rows lie N apart, often a power-of-two stride that maps
// a block's rows onto few cache sets, and block-sized reads defeat the hardware prefetchers.
template <typename acc_t, typename scalar_t>
void stage_in(acc_t* dst, const scalar_t* src, int64_t rows, int64_t ld, const Chunk& ch,
              acc_t pad = acc_t(0)) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* in = src + r * ld;
    for (int64_t i = 0; i < ch.blocks; ++i) {
      acc_t* __restrict d = dst + (i * rows + r) * kBlock;
      const scalar_t* __restrict x = in + i * kBlock;
      const int64_t valid = std::min(kBlock, ch.count - i * kBlock);
      for (int64_t p = 0; p < valid; ++p) d[p] = static_cast<acc_t>(x[p]);
      for (int64_t p = valid; p < kBlock; ++p) d[p] = pad;
    }
  }
}

// The inverse of stage_in, dropping the padding.
template <typename scalar_t, typename acc_t>
void stage_out(scalar_t* dst, const acc_t* src, int64_t rows, int64_t ld, const Chunk& ch) {
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* out = dst + r * ld;
    for (int64_t i = 0; i < ch.blocks; ++i) {
      const acc_t* __restrict x = src + (i * rows + r) * kBlock;
      scalar_t* __restrict d = out + i * kBlock;
      const int64_t valid = std::min(kBlock, ch.count - i * kBlock);
      for (int64_t p = 0; p < valid; ++p) d[p] = static_cast<scalar_t>(x[p]);
    }
  }
}

template <typename acc_t, typename scalar_t>
std::vector<acc_t> to_acc(const void* src, int64_t n) {
  std::vector<acc_t> out(n);
  const scalar_t* in = static_cast<const scalar_t*>(src);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<acc_t>(in[i]);
  return out;
}

// key, value and the gate parameters in acc_t, and how the pixels are cut into work units.
template <typename scalar_t>
struct Setup {
  using acc_t = at::opmath_type<scalar_t>;
  const DynamicMemoryParams& p;
  std::vector<acc_t> key, value, w;
  std::vector<acc_t> u;  // (B, T) = value^T w_o, with attention and gate
  acc_t bias = 0;
  int64_t blocks = 0;     // blocks per image
  int64_t per_image = 0;  // work units per image
  int64_t units = 0;

  explicit Setup(const DynamicMemoryParams& params) : p(params) {
    if (p.has_attn) {
      key = to_acc<acc_t, scalar_t>(p.key, p.B * p.C * p.T);
      value = to_acc<acc_t, scalar_t>(p.value, p.B * p.Cv * p.T);
    }
    if (p.has_gate) {
      w = to_acc<acc_t, scalar_t>(p.gate_weight, 2 * p.C);
      bias = static_cast<acc_t>(*static_cast<const scalar_t*>(p.gate_bias));
    }
    if (p.has_attn && p.has_gate) {
      u.assign(static_cast<size_t>(p.B * p.T), acc_t(0));
      for (int64_t b = 0; b < p.B; ++b)
        for (int64_t c = 0; c < p.C; ++c)
          for (int64_t t = 0; t < p.T; ++t)
            u[b * p.T + t] += value[(b * p.C + c) * p.T + t] * w[p.C + c];
    }
    blocks = (p.N + kBlock - 1) / kBlock;
    const int64_t chunks = (blocks + kChunkBlocks - 1) / kChunkBlocks;
    const int64_t target = p.B > 0 ? (kTargetUnits + p.B - 1) / p.B : 1;
    per_image = std::max<int64_t>(1, std::min(chunks, target));
    units = p.B * per_image;
  }

  int64_t image(int64_t u) const { return u / per_image; }

  // Calls f(chunk) for the chunks of unit u, in order.
  template <typename F>
  void for_chunks(int64_t u, const F& f) const {
    const int64_t b = u / per_image, i = u % per_image;
    const int64_t first = i * blocks / per_image, last = (i + 1) * blocks / per_image;
    for (int64_t c0 = first; c0 < last; c0 += kChunkBlocks) {
      Chunk ch;
      ch.b = b;
      ch.blocks = std::min(kChunkBlocks, last - c0);
      ch.n0 = c0 * kBlock;
      ch.count = std::min(p.N - ch.n0, ch.blocks * kBlock);
      f(ch);
    }
  }

  // Sets the sizes and image b's constants.
  void bind(Block<acc_t>& k, int64_t b) const {
    k.C = p.C;
    k.Cv = p.Cv;
    k.T = p.T;
    k.Cp = padded<acc_t>(p.C);
    k.Cvp = padded<acc_t>(p.Cv);
    k.scale = static_cast<acc_t>(p.scale);
    k.mask = p.mask;
    k.mask_row = p.mask != nullptr && !p.mask_compat ? p.mask + b * p.T : nullptr;
    if (p.has_attn) {
      k.key = key.data() + b * p.C * p.T;
      k.value = value.data() + b * p.Cv * p.T;
    }
    if (p.has_gate) {
      k.w = w.data();
      k.bias = bias;
    }
    if (p.has_attn && p.has_gate) k.u = u.data() + b * p.T;
  }

  // With mask_compat, the mask row of each pixel of block i of the chunk (mask_compat_row);
  // padding pixels take row b.
  void mask_rows(int64_t* mrow, const Chunk& ch, int64_t i) const {
    if (p.mask == nullptr || !p.mask_compat) return;
    const int64_t n0 = ch.n0 + i * kBlock, valid = std::min(kBlock, ch.count - i * kBlock);
    for (int64_t q = 0; q < kBlock; ++q)
      mrow[q] = q < valid ? mask_compat_row(ch.b, n0 + q, p.N, p.B) : ch.b;
  }
};

// Per-thread scratch: zero-initialised buffers of whole kBlock-long rows.
template <typename acc_t>
struct Scratch {
  std::vector<std::vector<acc_t>> bufs;
  std::vector<int64_t> mrow = std::vector<int64_t>(kBlock);
  acc_t* take(int64_t rows) {
    bufs.emplace_back(static_cast<size_t>(rows * kBlock));
    return bufs.back().data();
  }
};

template <typename scalar_t, bool kAttn, bool kGate>
void forward_cpu(const DynamicMemoryParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t P = kBlock, U = kChunkBlocks;
  const Setup<scalar_t> setup(p);
  const int64_t C = p.C, Cv = p.Cv, T = p.T, N = p.N;
  const auto h = typed<scalar_t>(p.h);
  const auto o = typed<scalar_t>(p.o);
  const auto out = typed<scalar_t>(p.out);
  const auto attn = typed<scalar_t>(p.attn);
  const auto gate = typed<scalar_t>(p.gate);
  at::parallel_for(0, setup.units, 1, [&](int64_t u0, int64_t u1) {
    Scratch<acc_t> scr;
    // Staged per chunk (block-major); the attention only when it is returned.
    acc_t* h_st = scr.take(C * U);
    acc_t* o_st = scr.take(Cv * U);  // the read-out, or the given o
    acc_t* out_st = kGate ? scr.take(C * U) : o_st;
    acc_t* s_st = p.return_attn ? scr.take(T * U) : scr.take(T);
    acc_t* lse_st = scr.take(U);
    acc_t* g_st = scr.take(U);
    Block<acc_t> k;
    k.mrow = scr.mrow.data();
    for (int64_t u = u0; u < u1; ++u) {
      setup.bind(k, setup.image(u));
      setup.for_chunks(u, [&](const Chunk& ch) {
        const int64_t b = ch.b;
        stage_in(h_st, h + b * C * N + ch.n0, C, N, ch);
        if (!kAttn) stage_in(o_st, o + b * C * N + ch.n0, C, N, ch);
        for (int64_t i = 0; i < ch.blocks; ++i) {
          k.h = h_st + i * C * P;
          k.o = o_st + i * Cv * P;
          k.out = out_st + i * C * P;
          k.s = p.return_attn ? s_st + i * T * P : s_st;
          k.lse = lse_st + i * P;
          k.g = g_st + i * P;
          setup.mask_rows(scr.mrow.data(), ch, i);
          run_block<false, kAttn, kGate>(k);
        }
        stage_out(out + b * p.Cout * N + ch.n0, out_st, p.Cout, N, ch);
        if (kAttn) {
          stage_out(p.lse_out + b * N + ch.n0, lse_st, 1, N, ch);
          if (p.return_attn) stage_out(attn + b * T * N + ch.n0, s_st, T, N, ch);
        }
        if (kGate && p.return_gate) stage_out(gate + b * N + ch.n0, g_st, 1, N, ch);
      });
    }
  });
}

template <typename scalar_t, bool kAttn, bool kGate>
void backward_cpu(const DynamicMemoryParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t P = kBlock, U = kChunkBlocks;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const Setup<scalar_t> setup(p);
  const int64_t C = p.C, Cv = p.Cv, T = p.T, N = p.N, Cout = p.Cout;
  const int64_t Cp = padded<acc_t>(C), Cvp = padded<acc_t>(Cv);
  // One partial per work unit: dkey^T (T, Cp), dvalue^T (T, Cvp), dgate_weight (2C), dgate_bias.
  const int64_t part_size = T * (Cp + Cvp) + 2 * C + 1;
  std::vector<acc_t> partials(static_cast<size_t>(setup.units * part_size));
  const auto h = typed<scalar_t>(p.h);
  const auto o = typed<scalar_t>(p.o);
  const auto gout = typed<scalar_t>(p.grad_out);
  const auto gattn = typed<scalar_t>(p.grad_attn);
  const auto ggate = typed<scalar_t>(p.grad_gate);
  const auto dh = typed<scalar_t>(p.dh);
  const auto d_o = typed<scalar_t>(p.d_o);

  at::parallel_for(0, setup.units, 1, [&](int64_t u0, int64_t u1) {
    Scratch<acc_t> scr;
    // Staged per chunk (block-major): inputs, then dh and the gradient of a given o.
    acc_t* h_st = scr.take(C * U);
    acc_t* o_st = kAttn ? scr.take(Cv) : scr.take(C * U);  // read-out scratch, or the given o
    acc_t* gout_st = scr.take(Cout * U);
    acc_t* gattn_st = p.has_grad_attn ? scr.take(T * U) : nullptr;
    acc_t* ggate_st = p.has_grad_gate ? scr.take(U) : scr.take(1);  // zeros when absent
    acc_t* lse_st = scr.take(U);
    acc_t* dh_st = scr.take(C * U);
    // The gradient of a given o (without attention); the gradient itself without gate.
    acc_t* do_st = kAttn ? nullptr : kGate ? scr.take(C * U) : gout_st;
    Block<acc_t> k;
    k.mrow = scr.mrow.data();
    k.s = scr.take(T);
    k.g = scr.take(1);
    k.da = scr.take(T);
    k.hT = scr.take(padded<acc_t>(C));
    k.ag = scr.take(T);
    k.goutT = scr.take(padded<acc_t>(Cv));
    k.dkT = scr.take((T * Cp + P - 1) / P);
    k.dvT = scr.take((T * Cvp + P - 1) / P);
    k.dw = scr.take(2 * C + 1);  // its row 2C is db, so one loop below sums both over the lanes
    k.db = k.dw + 2 * C * P;
    k.e = scr.take(T);

    for (int64_t u = u0; u < u1; ++u) {
      setup.bind(k, setup.image(u));
      std::fill(k.dkT, k.dkT + T * Cp, acc_t(0));
      std::fill(k.dvT, k.dvT + T * Cvp, acc_t(0));
      std::fill(k.dw, k.dw + (2 * C + 1) * P, acc_t(0));
      std::fill(k.e, k.e + T * P, acc_t(0));
      setup.for_chunks(u, [&](const Chunk& ch) {
        const int64_t b = ch.b;
        stage_in(h_st, h + b * C * N + ch.n0, C, N, ch);
        stage_in(gout_st, gout + b * Cout * N + ch.n0, Cout, N, ch);
        if (!kAttn) stage_in(o_st, o + b * C * N + ch.n0, C, N, ch);
        if (kAttn) {
          // +inf on the padding makes its attention 0, so it adds nothing to the pixel sums.
          stage_in(lse_st, p.lse + b * N + ch.n0, 1, N, ch, inf);
          if (p.has_grad_attn) stage_in(gattn_st, gattn + b * T * N + ch.n0, T, N, ch);
        }
        if (kGate && p.has_grad_gate) stage_in(ggate_st, ggate + b * N + ch.n0, 1, N, ch);
        for (int64_t i = 0; i < ch.blocks; ++i) {
          k.h = h_st + i * C * P;
          k.o = kAttn ? o_st : o_st + i * C * P;
          k.gout = gout_st + i * Cout * P;
          k.gattn = p.has_grad_attn ? gattn_st + i * T * P : nullptr;
          k.ggate = p.has_grad_gate ? ggate_st + i * P : ggate_st;
          k.lse = lse_st + i * P;
          k.dh = dh_st + i * C * P;
          k.d_o = kAttn ? nullptr : do_st + i * C * P;
          if (kAttn) setup.mask_rows(scr.mrow.data(), ch, i);
          run_block<true, kAttn, kGate>(k);
        }
        stage_out(dh + b * C * N + ch.n0, dh_st, C, N, ch);
        if (!kAttn) stage_out(d_o + b * C * N + ch.n0, do_st, C, N, ch);
      });
      acc_t* part = partials.data() + u * part_size;
      acc_t* pw = part + T * (Cp + Cvp);
      for (int64_t j = 0; j < 2 * C + 1; ++j) {
        const acc_t* lanes = k.dw + j * P;
        acc_t sum = 0;
        for (int64_t q = 0; q < P; ++q) sum += lanes[q];
        pw[j] = sum;
      }
      if (kAttn && kGate) {
        // The unit's e = sum over its pixels of attention * dz gives its share of
        // dw_o = value e and of dvalue += w_o e^T (see backward_attention).
        std::vector<acc_t> e(static_cast<size_t>(T), acc_t(0));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t q = 0; q < P; ++q) e[t] += k.e[t * P + q];
        for (int64_t c = 0; c < C; ++c) {
          acc_t sum = 0;
          for (int64_t t = 0; t < T; ++t) sum += k.value[c * T + t] * e[t];
          pw[C + c] = sum;
          for (int64_t t = 0; t < T; ++t) k.dvT[t * Cvp + c] += k.w[C + c] * e[t];
        }
      }
      std::copy(k.dkT, k.dkT + T * Cp, part);
      std::copy(k.dvT, k.dvT + T * Cvp, part + T * Cp);
    }
  });

  // Sum the partials in unit order.
  if (kAttn) {
    const auto dkey = typed<scalar_t>(p.dkey);
    const auto dvalue = typed<scalar_t>(p.dvalue);
    std::vector<acc_t> sum(static_cast<size_t>(T * (Cp + Cvp)));
    for (int64_t b = 0; b < p.B; ++b) {
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int64_t u = b * setup.per_image; u < (b + 1) * setup.per_image; ++u) {
        const acc_t* part = partials.data() + u * part_size;
        for (int64_t i = 0; i < T * (Cp + Cvp); ++i) sum[i] += part[i];
      }
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t c = 0; c < C; ++c)
          dkey[(b * C + c) * T + t] = static_cast<scalar_t>(sum[t * Cp + c]);
        for (int64_t c = 0; c < Cv; ++c)
          dvalue[(b * Cv + c) * T + t] = static_cast<scalar_t>(sum[T * Cp + t * Cvp + c]);
      }
    }
  }
  if (kGate) {
    const auto dw = typed<scalar_t>(p.dgate_weight);
    for (int64_t j = 0; j < 2 * C + 1; ++j) {
      acc_t sum = 0;
      for (int64_t u = 0; u < setup.units; ++u)
        sum += partials[u * part_size + T * (Cp + Cvp) + j];
      if (j < 2 * C)
        dw[j] = static_cast<scalar_t>(sum);
      else
        *typed<scalar_t>(p.dgate_bias) = static_cast<scalar_t>(sum);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dynamic_memory_forward_cpu(
    const at::Tensor& h_in, const std::optional<at::Tensor>& o_in,
    const std::optional<at::Tensor>& key_in, const std::optional<at::Tensor>& value_in,
    const std::optional<at::Tensor>& mask_in, const std::optional<at::Tensor>& gate_weight_in,
    const std::optional<at::Tensor>& gate_bias_in, double scale, bool mask_compat,
    bool return_attn, bool return_gate) {
  DynamicMemoryParams p = dynamic_memory_forward_params(
      h_in, o_in, key_in, value_in, mask_in, gate_weight_in, gate_bias_in, scale, mask_compat,
      return_attn, return_gate);
  const DynamicMemoryInputs in = bind_forward_inputs(p, h_in, o_in, key_in, value_in, mask_in,
                                                     gate_weight_in, gate_bias_in);
  const at::Tensor& h = in.h;
  const auto opts = h.options();
  at::Tensor out = at::empty({p.B, p.Cout, p.H, p.W}, opts);
  at::Tensor lse = p.has_attn ? at::empty({p.B, p.N}, opts.dtype(at::kFloat))
                              : at::empty({0}, opts.dtype(at::kFloat));
  at::Tensor attn = p.return_attn ? at::empty({p.B, p.T, p.H, p.W}, opts) : at::empty({0}, opts);
  at::Tensor gate = p.return_gate ? at::empty({p.B, 1, p.H, p.W}, opts) : at::empty({0}, opts);
  p.out = out.data_ptr();
  p.lse_out = p.has_attn ? lse.data_ptr<float>() : nullptr;
  p.attn = p.return_attn ? attn.data_ptr() : nullptr;
  p.gate = p.return_gate ? gate.data_ptr() : nullptr;
  T2I_DISPATCH_CPU_FLOATS(h.scalar_type(), "dynamic_memory_forward", [&] {
    with_variant(p, [&](auto attn_flag, auto gate_flag) {
      forward_cpu<scalar_t, decltype(attn_flag)::value, decltype(gate_flag)::value>(p);
    });
  });
  return {out, lse, attn, gate};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dynamic_memory_backward_cpu(const at::Tensor& grad_out_in,
                            const std::optional<at::Tensor>& grad_attn_in,
                            const std::optional<at::Tensor>& grad_gate_in, const at::Tensor& h_in,
                            const std::optional<at::Tensor>& o_in,
                            const std::optional<at::Tensor>& key_in,
                            const std::optional<at::Tensor>& value_in,
                            const std::optional<at::Tensor>& mask_in,
                            const std::optional<at::Tensor>& gate_weight_in,
                            const std::optional<at::Tensor>& gate_bias_in,
                            const at::Tensor& lse_in, double scale, bool mask_compat) {
  DynamicMemoryParams p = dynamic_memory_backward_params(
      grad_out_in, grad_attn_in, grad_gate_in, h_in, o_in, key_in, value_in, mask_in,
      gate_weight_in, gate_bias_in, lse_in, scale, mask_compat);
  const DynamicMemoryInputs in = bind_backward_inputs(
      p, grad_out_in, grad_attn_in, grad_gate_in, h_in, o_in, key_in, value_in, mask_in,
      gate_weight_in, gate_bias_in, lse_in);
  const at::Tensor &h = in.h, &o = in.o, &key = in.key, &value = in.value,
                   &gate_weight = in.gate_weight, &gate_bias = in.gate_bias;
  const auto opts = h.options();
  const auto like = [&](const at::Tensor& t) {
    return t.defined() ? at::empty(t.sizes(), opts) : at::empty({0}, opts);
  };
  at::Tensor dh = like(h), d_o = like(o), dkey = like(key), dvalue = like(value),
             dgate_weight = like(gate_weight), dgate_bias = like(gate_bias);
  p.dh = dh.data_ptr();
  p.d_o = o.defined() ? d_o.data_ptr() : nullptr;
  p.dkey = key.defined() ? dkey.data_ptr() : nullptr;
  p.dvalue = value.defined() ? dvalue.data_ptr() : nullptr;
  p.dgate_weight = gate_weight.defined() ? dgate_weight.data_ptr() : nullptr;
  p.dgate_bias = gate_bias.defined() ? dgate_bias.data_ptr() : nullptr;
  T2I_DISPATCH_CPU_FLOATS(h.scalar_type(), "dynamic_memory_backward", [&] {
    with_variant(p, [&](auto attn_flag, auto gate_flag) {
      backward_cpu<scalar_t, decltype(attn_flag)::value, decltype(gate_flag)::value>(p);
    });
  });
  return {dh, d_o, dkey, dvalue, dgate_weight, dgate_bias};
}

}  // namespace
}  // namespace cpu
}  // namespace t2i_fast

TORCH_LIBRARY_IMPL(t2i_fast_C, CPU, m) {
  m.impl("dynamic_memory_forward", &t2i_fast::cpu::dynamic_memory_forward_cpu);
  m.impl("dynamic_memory_backward", &t2i_fast::cpu::dynamic_memory_backward_cpu);
}

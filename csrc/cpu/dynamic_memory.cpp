// CPU kernels of the dynamic-memory family: memory_read, response_gate and dynamic_memory
// (schemas and conventions in csrc/ops.cpp, reference math in t2i_fast/ops/dynamic_memory.py).
//
// Design. Each image's pixels are cut into blocks of kBlock; a block's rows of every operand sit
// channel-major in small buffers of the accumulation type (float for half/bfloat16/float, double
// for double), zero-padded to kBlock pixels, so every inner loop runs over whole vectors of
// contiguous pixels. All products (scores, read-out and their gradients) are one register-tiled
// routine, mix_rows; the sums over pixels (dkey, dvalue) use pixel-major transposes of the block,
// so no loop needs a reassociated floating-point reduction. Blocks are copied in and out in
// chunks of kChunkBlocks (long runs along each row of the inputs); runs of chunks of one image
// form the work units that at::parallel_for spreads over threads. The block math is compiled for
// the baseline ISA and for AVX2+FMA and chosen at run time, as the extension is built without
// -march. The variants (read, gate, read then gate) are compile-time flags of one code path.
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

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace t2i_fast {
namespace {

// 32 pixels is 4 AVX2 float vectors per buffer row: long enough for full-speed inner loops,
// short enough that a block's buffers stay in L1 at C = 64.
constexpr int64_t kBlock = 32;
// Pixels are staged (copied in, math, copied out) in chunks of up to kChunkBlocks blocks.
constexpr int64_t kChunkBlocks = 8;
// Work units are runs of chunks of one image; backward keeps one partial sum per unit. About
// this many units per call, whatever the thread count (so the results do not depend on it):
// enough to balance many threads, few enough that the partials stay small.
constexpr int64_t kTargetUnits = 256;

#if !defined(__GNUC__)
#error "the dynamic-memory CPU kernels need GCC or Clang vector extensions"
#endif
#define T2I_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define T2I_X86_DISPATCH 1
bool have_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
#define T2I_X86_DISPATCH 0
#endif

#if !defined(__clang__)
// Internal always-inline helpers pass vectors by value; no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// The block math is written with GCC/Clang vector extensions, for vectors of W bytes: W = 32
// in the AVX2 entry points, 16 (SSE2) in the baseline ones, where 32-byte vectors would be
// emulated and spill.
template <typename acc_t, int W>
struct Vec {
  typedef acc_t type __attribute__((vector_size(W)));
  static constexpr int64_t lanes = W / sizeof(acc_t);
  static constexpr int64_t per_block = kBlock / lanes;  // vectors per row of kBlock pixels
};

template <typename V, typename acc_t>
T2I_INLINE V vload(const acc_t* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename acc_t>
T2I_INLINE void vstore(acc_t* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Rounds a channel count up to whole 32-byte vectors: the pixel-major buffers use it as row
// length so that their products need no scalar tail.
template <typename acc_t>
int64_t padded(int64_t n) {
  constexpr int64_t L = Vec<acc_t, 32>::lanes;
  return (n + L - 1) / L * L;
}

// A tile of RB rows x VB vectors of the product below, held in registers over the whole k loop.
template <int W, int RB, int VB, bool kAccumulate, typename acc_t>
T2I_INLINE void mix_tile(acc_t* __restrict out, int64_t ldo, const acc_t* __restrict coef,
                         int64_t sk, int64_t sr, const acc_t* __restrict x, int64_t ldx,
                         int64_t K) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t L = Vec<acc_t, W>::lanes;
  V acc[RB][VB];
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < VB; ++v)
      acc[i][v] = kAccumulate ? vload<V>(out + i * ldo + v * L) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V xv[VB];
    for (int v = 0; v < VB; ++v) xv[v] = vload<V>(x + k * ldx + v * L);
    for (int i = 0; i < RB; ++i) {
      const acc_t c = coef[k * sk + i * sr];
      for (int v = 0; v < VB; ++v) acc[i][v] += c * xv[v];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < VB; ++v) vstore(out + i * ldo + v * L, acc[i][v]);
}

// out[r*ldo + j] (+)= sum_k coef[k*sk + r*sr] * x[k*ldx + j] for r < R, j < len, len a whole
// number of vectors. Every product of the kernels has this shape: len is kBlock for the
// channel-major buffers and the padded C or Cv for the pixel-major ones. Tiles of 2 rows x 4
// vectors use 8 accumulators + 4 operands, within AVX2's 16 registers.
template <int W, bool kAccumulate, typename acc_t>
T2I_INLINE void mix_rows(acc_t* out, int64_t ldo, int64_t R, const acc_t* coef, int64_t sk,
                         int64_t sr, const acc_t* x, int64_t ldx, int64_t K, int64_t len) {
  constexpr int64_t L = Vec<acc_t, W>::lanes;
  int64_t j = 0;
  for (; j + 4 * L <= len; j += 4 * L) {
    int64_t r = 0;
    for (; r + 2 <= R; r += 2)
      mix_tile<W, 2, 4, kAccumulate>(out + r * ldo + j, ldo, coef + r * sr, sk, sr, x + j, ldx, K);
    if (r < R)
      mix_tile<W, 1, 4, kAccumulate>(out + r * ldo + j, ldo, coef + r * sr, sk, sr, x + j, ldx, K);
  }
  for (; j < len; j += L) {
    int64_t r = 0;
    for (; r + 2 <= R; r += 2)
      mix_tile<W, 2, 1, kAccumulate>(out + r * ldo + j, ldo, coef + r * sr, sk, sr, x + j, ldx, K);
    if (r < R)
      mix_tile<W, 1, 1, kAccumulate>(out + r * ldo + j, ldo, coef + r * sr, sk, sr, x + j, ldx, K);
  }
}

// dst (kBlock, ld) = src (rows, kBlock)^T; columns rows..ld of dst are left as they are (zero).
// Done in groups of 8 rows so that consecutive stores share a cache line: a plain row-by-row
// transpose writes every value to a different line and costs as much as a product.
template <typename acc_t>
T2I_INLINE void to_pixel_major(acc_t* __restrict dst, int64_t ld, const acc_t* __restrict src,
                               int64_t rows) {
  constexpr int64_t G = 8;
  int64_t r0 = 0;
  for (; r0 + G <= rows; r0 += G)
    for (int64_t p = 0; p < kBlock; ++p)
      for (int64_t i = 0; i < G; ++i) dst[p * ld + r0 + i] = src[(r0 + i) * kBlock + p];
  for (; r0 < rows; ++r0)
    for (int64_t p = 0; p < kBlock; ++p) dst[p * ld + r0] = src[r0 * kBlock + p];
}

// Everything the math of one block of kBlock pixels of image b works on. The buffers are
// channel-major (rows, kBlock), their comments giving the rows, unless noted.
template <typename acc_t>
struct Block {
  int64_t C = 0, Cv = 0, T = 0;
  int64_t Cp = 0, Cvp = 0;  // C, Cv rounded up to whole vectors
  acc_t scale = 1;
  // Per image, converted to acc_t.
  const acc_t* key = nullptr;    // (C, T)
  const acc_t* value = nullptr;  // (Cv, T)
  const acc_t* w = nullptr;      // (2C) = [w_h; w_o]
  acc_t bias = 0;
  const acc_t* u = nullptr;      // (T) = value^T w_o (backward with attention and gate)
  const bool* mask = nullptr;    // (B, T) or null
  const bool* mask_row = nullptr;  // (T): the row every pixel uses (without mask_compat)
  const int64_t* mrow = nullptr;   // (kBlock): each pixel's row (with mask_compat)

  acc_t* h = nullptr;    // (C)
  acc_t* o = nullptr;    // (Cv): the read-out, or the given o
  acc_t* s = nullptr;    // (T): scores, then attention
  acc_t* g = nullptr;    // (1): gate
  acc_t* lse = nullptr;  // (1): forward output, backward input (+inf on padding)
  acc_t* out = nullptr;  // (C): gated output (forward with gate)
  // Backward.
  acc_t* gout = nullptr;   // (Cout): grad_out
  acc_t* ggate = nullptr;  // (1): grad_gate, zeros if absent
  acc_t* gattn = nullptr;  // (T): grad_attn, or null
  acc_t* dh = nullptr;     // (C)
  acc_t* d_o = nullptr;    // (C): gradient of the given o (without attention)
  acc_t* da = nullptr;     // (T): d(attention), then d(scores) * scale
  acc_t* ag = nullptr;     // (T): attention * gate
  acc_t* hT = nullptr;     // (kBlock, Cp) pixel-major
  acc_t* goutT = nullptr;  // (kBlock, Cvp) pixel-major
  // Backward, summed over the blocks of a work unit.
  acc_t* dkT = nullptr;    // (T, Cp): dkey transposed
  acc_t* dvT = nullptr;    // (T, Cvp): dvalue transposed
  acc_t* dw = nullptr;     // (2C): dgate_weight, one lane per pixel of the block
  acc_t* db = nullptr;     // (1): dgate_bias, likewise
  acc_t* e = nullptr;      // (T): attention * dz, likewise (with attention and gate)
};

// x[i] = exp(x[i]) for i < n, n a whole number of vectors. libm's scalar exp would cost about
// as much as the products of the forward pass; float gets a vector version instead, double
// (the type that tests against the reference at tight tolerances) keeps libm.
template <int W>
T2I_INLINE void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// exp(x) = 2^m exp(r), m = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by the degree-7 Taylor-like
// polynomial of Cephes' expf (about 1 ulp). Inputs are clamped to [-87, 88] so that 2^m stays a
// normal float; below -87 (including -inf, masked slots) the result is 0, NaN stays NaN.
template <int W>
T2I_INLINE void exp_inplace(float* x, int64_t n) {
  using V = typename Vec<float, W>::type;
  using VI = typename Vec<int32_t, W>::type;
  const V lo = V{} - 87.0f, hi = V{} + 88.0f;
  const V round_magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  for (int64_t i = 0; i < n; i += Vec<float, W>::lanes) {
    const V v = vload<V>(x + i);
    const VI under = v < lo;
    V c = (V)(((VI)v & ~under) | ((VI)lo & under));
    const VI over = c > hi;
    c = (V)(((VI)c & ~over) | ((VI)hi & over));
    const V t = c * 1.44269504088896341f + round_magic;
    const V m = t - round_magic;
    const V r = c - m * 0.693359375f + m * 2.12194440e-4f;
    V q = 1.9875691500e-4f * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    const V e = q * r * r + r + 1.0f;
    const VI pow2 = ((VI)t - (VI)round_magic + 127) << 23;
    vstore(x + i, (V)((VI)(e * (V)pow2) & ~under));
  }
}

// The element-wise loops below are written on whole vectors (kBlock is a multiple of every
// vector width) so that they vectorise whatever the compiler concludes about aliasing between
// the block's buffers.

// s = scale * key^T h with masked slots at -inf.
template <int W, typename acc_t>
T2I_INLINE void scores(const Block<acc_t>& k) {
  constexpr int64_t P = kBlock;
  mix_rows<W, false>(k.s, P, k.T, k.key, k.T, 1, k.h, P, k.C, P);
  for (int64_t i = 0; i < k.T * P; ++i) k.s[i] *= k.scale;
  if (k.mask_row != nullptr) {
    for (int64_t t = 0; t < k.T; ++t)
      if (k.mask_row[t])
        std::fill(k.s + t * P, k.s + (t + 1) * P, -std::numeric_limits<acc_t>::infinity());
  } else if (k.mask != nullptr) {
    for (int64_t p = 0; p < P; ++p) {
      const bool* row = k.mask + k.mrow[p] * k.T;
      for (int64_t t = 0; t < k.T; ++t)
        if (row[t]) k.s[t * P + p] = -std::numeric_limits<acc_t>::infinity();
    }
  }
}

// Scales every column p of s (T, kBlock) by 1 / its sum, or zeroes it when the sum is 0.
template <typename acc_t>
T2I_INLINE void normalise_columns(const Block<acc_t>& k, acc_t* sum) {
  constexpr int64_t P = kBlock;
  for (int64_t p = 0; p < P; ++p) sum[p] = sum[p] > 0 ? acc_t(1) / sum[p] : acc_t(0);
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) k.s[t * P + p] *= sum[p];
}

template <int W, typename acc_t>
T2I_INLINE void softmax_forward(const Block<acc_t>& k) {
  constexpr int64_t P = kBlock;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t peak[P], sum[P];
  for (int64_t p = 0; p < P; ++p) peak[p] = -inf;
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) peak[p] = peak[p] < k.s[t * P + p] ? k.s[t * P + p] : peak[p];
  // A fully masked column has peak -inf; shifting by 0 keeps exp(-inf) = 0 instead of NaN.
  for (int64_t p = 0; p < P; ++p) {
    peak[p] = peak[p] == -inf ? acc_t(0) : peak[p];
    sum[p] = 0;
  }
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) k.s[t * P + p] -= peak[p];
  exp_inplace<W>(k.s, k.T * P);
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) sum[p] += k.s[t * P + p];
  for (int64_t p = 0; p < P; ++p) k.lse[p] = sum[p] > 0 ? peak[p] + std::log(sum[p]) : inf;
  normalise_columns(k, sum);
}

template <int W, typename acc_t>
T2I_INLINE void softmax_from_lse(const Block<acc_t>& k) {
  constexpr int64_t P = kBlock;
  acc_t sum[P];
  for (int64_t p = 0; p < P; ++p) sum[p] = 0;
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) k.s[t * P + p] -= k.lse[p];
  exp_inplace<W>(k.s, k.T * P);
  for (int64_t t = 0; t < k.T; ++t)
    for (int64_t p = 0; p < P; ++p) sum[p] += k.s[t * P + p];
  normalise_columns(k, sum);
}

// o = value a, o (Cv, kBlock) from the attention a (T, kBlock).
template <int W, typename acc_t>
T2I_INLINE void read_out(const Block<acc_t>& k) {
  mix_rows<W, false>(k.o, kBlock, k.Cv, k.value, 1, k.T, k.s, kBlock, k.T, kBlock);
}

// g = 1 / (1 + exp(-z)) for the kBlock logits z.
template <int W, typename acc_t>
T2I_INLINE void sigmoid(acc_t* g, const typename Vec<acc_t, W>::type* z) {
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = Vec<acc_t, W>::per_block;
  acc_t e[P];
  for (int64_t v = 0; v < NV; ++v) vstore(e + v * L, -z[v]);
  exp_inplace<W>(e, P);
  for (int64_t p = 0; p < P; ++p) g[p] = acc_t(1) / (acc_t(1) + e[p]);
}

template <int W, typename acc_t>
T2I_INLINE void gate(const Block<acc_t>& k) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = Vec<acc_t, W>::per_block;
  V z[NV];
  for (int64_t v = 0; v < NV; ++v) z[v] = V{} + k.bias;
  for (int64_t c = 0; c < k.C; ++c) {
    const acc_t wh = k.w[c], wo = k.w[k.C + c];
    for (int64_t v = 0; v < NV; ++v)
      z[v] += wh * vload<V>(k.h + c * P + v * L) + wo * vload<V>(k.o + c * P + v * L);
  }
  sigmoid<W>(k.g, z);
}

template <int W, typename acc_t, bool kAttn, bool kGate>
T2I_INLINE void forward_block(const Block<acc_t>& k) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = Vec<acc_t, W>::per_block;
  if (kAttn) {
    scores<W>(k);
    softmax_forward<W>(k);
    read_out<W>(k);
  }
  if (kGate) {
    gate<W>(k);
    for (int64_t c = 0; c < k.C; ++c)
      for (int64_t v = 0; v < NV; ++v) {
        const int64_t i = c * P + v * L;
        const V g = vload<V>(k.g + v * L);
        vstore(k.out + i, vload<V>(k.h + i) * (acc_t(1) - g) + g * vload<V>(k.o + i));
      }
  }
}

// Backward of the response gate alone (o given): dL/dg = sum_c gout (o - h) + grad_gate.
template <int W, typename acc_t>
T2I_INLINE void backward_gate_only(const Block<acc_t>& k) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = Vec<acc_t, W>::per_block;
  const int64_t C = k.C;
  gate<W>(k);
  V dz[NV];
  for (int64_t v = 0; v < NV; ++v) dz[v] = vload<V>(k.ggate + v * L);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < NV; ++v) {
      const int64_t i = c * P + v * L;
      dz[v] += vload<V>(k.gout + i) * (vload<V>(k.o + i) - vload<V>(k.h + i));
    }
  for (int64_t v = 0; v < NV; ++v) {
    const V g = vload<V>(k.g + v * L);
    dz[v] *= g * (acc_t(1) - g);
    vstore(k.db + v * L, vload<V>(k.db + v * L) + dz[v]);
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t wh = k.w[c], wo = k.w[C + c];
    acc_t* dwh = k.dw + c * P;
    acc_t* dwo = k.dw + (C + c) * P;
    for (int64_t v = 0; v < NV; ++v) {
      const int64_t i = c * P + v * L;
      const V g = vload<V>(k.g + v * L), gout = vload<V>(k.gout + i);
      vstore(k.dh + i, gout * (acc_t(1) - g) + dz[v] * wh);
      vstore(k.d_o + i, gout * g + dz[v] * wo);
      vstore(dwh + v * L, vload<V>(dwh + v * L) + dz[v] * vload<V>(k.h + i));
      vstore(dwo + v * L, vload<V>(dwo + v * L) + dz[v] * vload<V>(k.o + i));
    }
  }
}

// Backward with attention. The read-out o = value a is never formed: everything the gate needs
// from it is a sum over the T slots instead of the C channels,
//   w_o.o = a.u with u = value^T w_o,   gout.o = a.y with y = value^T gout,
// and with d_o = gout g + dz w_o the attention and value gradients become
//   da = g y + dz u,   dvalue = (a g) gout^T + w_o e^T,   dw_o = value e,   e = a dz^T,
// where the e terms are summed once per work unit (e lanes in k.e). This saves the C*T*N
// read-out and d_o's C*N passes; the products left are the scores, y, dvalue, dh and dkey.
template <int W, typename acc_t, bool kGate>
T2I_INLINE void backward_attention(const Block<acc_t>& k) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = Vec<acc_t, W>::per_block;
  const int64_t C = k.C, Cv = k.Cv, T = k.T;
  scores<W>(k);
  softmax_from_lse<W>(k);
  const acc_t* a = k.s;
  // k.da holds y, then da.
  mix_rows<W, false>(k.da, P, T, k.value, T, 1, k.gout, P, Cv, P);
  const acc_t* dvalue_coef = a;
  if (kGate) {
    V z[NV], dg[NV];
    for (int64_t v = 0; v < NV; ++v) {
      z[v] = V{} + k.bias;
      dg[v] = vload<V>(k.ggate + v * L);
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t wh = k.w[c];
      for (int64_t v = 0; v < NV; ++v) {
        const V h = vload<V>(k.h + c * P + v * L);
        z[v] += wh * h;
        dg[v] -= vload<V>(k.gout + c * P + v * L) * h;
      }
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < NV; ++v) {
        const V at = vload<V>(a + t * P + v * L);
        z[v] += k.u[t] * at;
        dg[v] += at * vload<V>(k.da + t * P + v * L);
      }
    sigmoid<W>(k.g, z);
    V dz[NV];
    for (int64_t v = 0; v < NV; ++v) {
      const V g = vload<V>(k.g + v * L);
      dz[v] = dg[v] * g * (acc_t(1) - g);
      vstore(k.db + v * L, vload<V>(k.db + v * L) + dz[v]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t wh = k.w[c];
      acc_t* dwh = k.dw + c * P;
      for (int64_t v = 0; v < NV; ++v) {
        const int64_t i = c * P + v * L;
        const V g = vload<V>(k.g + v * L), h = vload<V>(k.h + i);
        vstore(k.dh + i, vload<V>(k.gout + i) * (acc_t(1) - g) + dz[v] * wh);
        vstore(dwh + v * L, vload<V>(dwh + v * L) + dz[v] * h);
      }
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < NV; ++v) {
        const int64_t i = t * P + v * L;
        const V g = vload<V>(k.g + v * L), at = vload<V>(a + i);
        vstore(k.da + i, g * vload<V>(k.da + i) + dz[v] * k.u[t]);
        vstore(k.ag + i, at * g);
        vstore(k.e + i, vload<V>(k.e + i) + at * dz[v]);
      }
    dvalue_coef = k.ag;
  } else {
    std::fill(k.dh, k.dh + C * P, acc_t(0));
  }
  if (k.gattn != nullptr)
    for (int64_t i = 0; i < T * P; i += L)
      vstore(k.da + i, vload<V>(k.da + i) + vload<V>(k.gattn + i));
  to_pixel_major(k.goutT, k.Cvp, k.gout, Cv);
  mix_rows<W, true>(k.dvT, k.Cvp, T, dvalue_coef, 1, P, k.goutT, k.Cvp, P, k.Cvp);
  // Softmax backward, with the factor scale of the scores folded in.
  V dot[NV];
  for (int64_t v = 0; v < NV; ++v) dot[v] = V{};
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < NV; ++v)
      dot[v] += vload<V>(a + t * P + v * L) * vload<V>(k.da + t * P + v * L);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < NV; ++v) {
      const int64_t i = t * P + v * L;
      vstore(k.da + i, k.scale * vload<V>(a + i) * (vload<V>(k.da + i) - dot[v]));
    }
  // dh += key ds; dkey^T += ds h^T over the pixels.
  mix_rows<W, true>(k.dh, P, C, k.key, 1, T, k.da, P, T, P);
  to_pixel_major(k.hT, k.Cp, k.h, C);
  mix_rows<W, true>(k.dkT, k.Cp, T, k.da, 1, P, k.hT, k.Cp, P, k.Cp);
}

template <int W, typename acc_t, bool kAttn, bool kGate>
T2I_INLINE void backward_block(const Block<acc_t>& k) {
  if (kAttn) {
    backward_attention<W, acc_t, kGate>(k);
  } else if (kGate) {
    backward_gate_only<W>(k);
  } else {
    std::fill(k.dh, k.dh + k.C * kBlock, acc_t(0));
  }
}

// The block math for the best ISA of this CPU; the always-inline bodies above are compiled
// into each of these entry points separately.
#if T2I_X86_DISPATCH
template <typename acc_t, bool kAttn, bool kGate>
__attribute__((target("avx2,fma"))) void forward_block_avx2(const Block<acc_t>& k) {
  forward_block<32, acc_t, kAttn, kGate>(k);
}
template <typename acc_t, bool kAttn, bool kGate>
__attribute__((target("avx2,fma"))) void backward_block_avx2(const Block<acc_t>& k) {
  backward_block<32, acc_t, kAttn, kGate>(k);
}
#endif

template <typename acc_t, bool kAttn, bool kGate>
void run_forward_block(const Block<acc_t>& k) {
#if T2I_X86_DISPATCH
  if (have_avx2_fma()) return forward_block_avx2<acc_t, kAttn, kGate>(k);
#endif
  forward_block<16, acc_t, kAttn, kGate>(k);
}

template <typename acc_t, bool kAttn, bool kGate>
void run_backward_block(const Block<acc_t>& k) {
#if T2I_X86_DISPATCH
  if (have_avx2_fma()) return backward_block_avx2<acc_t, kAttn, kGate>(k);
#endif
  backward_block<16, acc_t, kAttn, kGate>(k);
}

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

  // With mask_compat, the mask row of each pixel of block i of the chunk (pixel b*N + n uses
  // row (b*N + n) mod B); padding pixels take row b.
  void mask_rows(int64_t* mrow, const Chunk& ch, int64_t i) const {
    if (p.mask == nullptr || !p.mask_compat) return;
    const int64_t n0 = ch.n0 + i * kBlock, valid = std::min(kBlock, ch.count - i * kBlock);
    for (int64_t q = 0; q < kBlock; ++q)
      mrow[q] = q < valid ? (ch.b * p.N + n0 + q) % p.B : ch.b;
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
  const auto h = p.as<scalar_t>(p.h);
  const auto o = p.as<scalar_t>(p.o);
  const auto out = p.as<scalar_t>(p.out);
  const auto attn = p.as<scalar_t>(p.attn);
  const auto gate = p.as<scalar_t>(p.gate);
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
          run_forward_block<acc_t, kAttn, kGate>(k);
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
  const auto h = p.as<scalar_t>(p.h);
  const auto o = p.as<scalar_t>(p.o);
  const auto gout = p.as<scalar_t>(p.grad_out);
  const auto gattn = p.as<scalar_t>(p.grad_attn);
  const auto ggate = p.as<scalar_t>(p.grad_gate);
  const auto dh = p.as<scalar_t>(p.dh);
  const auto d_o = p.as<scalar_t>(p.d_o);

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
          run_backward_block<acc_t, kAttn, kGate>(k);
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
    const auto dkey = p.as<scalar_t>(p.dkey);
    const auto dvalue = p.as<scalar_t>(p.dvalue);
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
    const auto dw = p.as<scalar_t>(p.dgate_weight);
    for (int64_t j = 0; j < 2 * C + 1; ++j) {
      acc_t sum = 0;
      for (int64_t u = 0; u < setup.units; ++u)
        sum += partials[u * part_size + T * (Cp + Cvp) + j];
      if (j < 2 * C)
        dw[j] = static_cast<scalar_t>(sum);
      else
        *p.as<scalar_t>(p.dgate_bias) = static_cast<scalar_t>(sum);
    }
  }
}

// Calls f(std::bool_constant<attn>, std::bool_constant<gate>) for the runtime flags.
template <typename F>
void with_variant(const DynamicMemoryParams& p, const F& f) {
  if (p.has_attn && p.has_gate) f(std::true_type{}, std::true_type{});
  else if (p.has_attn) f(std::true_type{}, std::false_type{});
  else if (p.has_gate) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(),
                                  "dynamic_memory_forward", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(),
                                  "dynamic_memory_backward", [&] {
    with_variant(p, [&](auto attn_flag, auto gate_flag) {
      backward_cpu<scalar_t, decltype(attn_flag)::value, decltype(gate_flag)::value>(p);
    });
  });
  return {dh, d_o, dkey, dvalue, dgate_weight, dgate_bias};
}

}  // namespace
}  // namespace t2i_fast

TORCH_LIBRARY_IMPL(t2i_fast_C, CPU, m) {
  m.impl("dynamic_memory_forward", &t2i_fast::dynamic_memory_forward_cpu);
  m.impl("dynamic_memory_backward", &t2i_fast::dynamic_memory_backward_cpu);
}

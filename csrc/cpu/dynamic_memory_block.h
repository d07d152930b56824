// The math of one block of kBlock pixels for the dynamic-memory CPU kernels
// (csrc/cpu/dynamic_memory.cpp stages the blocks, spreads them over threads and sums the
// partials). Every product is one register-tiled routine, mix_rows; the element-wise steps
// (softmax, gate, their gradients) run on whole vectors of a block's contiguous pixels. The
// bodies are always-inline and compiled twice, for the baseline ISA and for AVX2+FMA, the
// variant chosen at run time (run_block).
// Memory traffic: none beyond the block's buffers (about (4C + 4T) * kBlock values plus 2T*C
// for dkey and dvalue, L1-resident at C = 64) and the per-image key, value and gate weights.
#pragma once

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace t2i_fast {
namespace cpu {

// 32 pixels is 4 AVX2 float vectors per buffer row: long enough for full-speed inner loops,
// short enough that a block's buffers stay in L1 at C = 64.
constexpr int64_t kBlock = 32;

// Vectors per row of kBlock pixels.
template <typename acc_t, int W>
constexpr int64_t kBlockVecs = kBlock / Vec<acc_t, W>::lanes;

#if defined(__x86_64__) || defined(__i386__)
#define T2I_X86_DISPATCH 1
inline bool have_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
#define T2I_X86_DISPATCH 0
#endif

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
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = kBlockVecs<acc_t, W>;
  acc_t e[P];
  for (int64_t v = 0; v < NV; ++v) vstore(e + v * L, -z[v]);
  exp_inplace<W>(e, P);
  for (int64_t p = 0; p < P; ++p) g[p] = acc_t(1) / (acc_t(1) + e[p]);
}

template <int W, typename acc_t>
T2I_INLINE void gate(const Block<acc_t>& k) {
  using V = typename Vec<acc_t, W>::type;
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = kBlockVecs<acc_t, W>;
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
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = kBlockVecs<acc_t, W>;
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
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = kBlockVecs<acc_t, W>;
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
  constexpr int64_t P = kBlock, L = Vec<acc_t, W>::lanes, NV = kBlockVecs<acc_t, W>;
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
  transpose(k.goutT, k.Cvp, k.gout, kBlock, Cv, kBlock);
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
  transpose(k.hT, k.Cp, k.h, kBlock, C, kBlock);
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

template <int W, typename acc_t, bool kAttn, bool kGate, bool kBackward>
T2I_INLINE void block_math(const Block<acc_t>& k) {
  if (kBackward) {
    backward_block<W, acc_t, kAttn, kGate>(k);
  } else {
    forward_block<W, acc_t, kAttn, kGate>(k);
  }
}

// The block's forward (or backward) math for the best ISA of this CPU; the always-inline bodies
// above are compiled into each entry point separately.
#if T2I_X86_DISPATCH
template <typename acc_t, bool kAttn, bool kGate, bool kBackward>
__attribute__((target("avx2,fma"))) void block_math_avx2(const Block<acc_t>& k) {
  block_math<32, acc_t, kAttn, kGate, kBackward>(k);
}
#endif

template <bool kBackward, bool kAttn, bool kGate, typename acc_t>
void run_block(const Block<acc_t>& k) {
#if T2I_X86_DISPATCH
  if (have_avx2_fma()) return block_math_avx2<acc_t, kAttn, kGate, kBackward>(k);
#endif
  block_math<16, acc_t, kAttn, kGate, kBackward>(k);
}

}  // namespace cpu
}  // namespace t2i_fast

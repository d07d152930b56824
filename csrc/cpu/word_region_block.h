// The element-wise math of the word-region CPU kernels on (rows x K) blocks, K word columns
// (csrc/cpu/word_region.cpp runs the matrix products around it and spreads the work over
// threads): the two softmaxes and their gradient, the cosine's column sums, and the one exp form
// they use. Every loop runs over the column index innermost, so that it vectorises.
// Memory traffic: only the blocks passed in (L2-resident at R = 289, K = 288) and K-long scratch.
#pragma once

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace t2i_fast {
namespace cpu {

template <typename acc_t>
constexpr acc_t inf() { return std::numeric_limits<acc_t>::infinity(); }

// out[k] (+)= exp(scale * in[k] - shift[k]) for k < K: every exp of the kernels has this form.
// float32 runs on baseline-ISA vectors (vexp, within about 1 ulp of expf), the tail through one
// zero-padded vector; float64 keeps libm's exp.
template <bool kAccumulate>
void exp_affine(float* out, const float* in, float scale, const float* shift, int64_t K) {
  constexpr int W = 16;
  using V = Vec<float, W>::type;
  constexpr int64_t L = Vec<float, W>::lanes;
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    V e = vexp<W>(vload<V>(in + k) * scale - vload<V>(shift + k));
    if (kAccumulate) e += vload<V>(out + k);
    vstore(out + k, e);
  }
  if (k < K) {
    float x[L] = {}, sh[L] = {}, e[L];
    std::copy(in + k, in + K, x);
    std::copy(shift + k, shift + K, sh);
    vstore(e, vexp<W>(vload<V>(x) * scale - vload<V>(sh)));
    for (int64_t i = 0; k + i < K; ++i) out[k + i] = kAccumulate ? out[k + i] + e[i] : e[i];
  }
}

template <bool kAccumulate>
void exp_affine(double* out, const double* in, double scale, const double* shift, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    const double e = std::exp(in[k] * scale - shift[k]);
    out[k] = kAccumulate ? out[k] + e : e;
  }
}

// The K columns of a block: word sets side by side, set s owning columns [start[s], start[s+1]).
struct Columns {
  int64_t K = 0;
  std::vector<int64_t> start;
  const uint8_t* valid = nullptr;  // per column (1 = real word), or null: all real
  bool real(int64_t k) const { return valid == nullptr || valid[k] != 0; }
};

// A[r, .] <- softmax over the real words of each word set of A[r, .], in place (A is R x K). A
// set without real words gets zeros. `shift` and `scale` are K scratch values.
template <typename acc_t>
void word_softmax(acc_t* A, int64_t R, const Columns& cols, acc_t* shift, acc_t* scale) {
  const int64_t K = cols.K, n = static_cast<int64_t>(cols.start.size()) - 1;
  for (int64_t r = 0; r < R; ++r) {
    acc_t* x = A + r * K;
    for (int64_t s = 0; s < n; ++s) {
      acc_t peak = -inf<acc_t>();
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) {
        if (cols.real(k)) peak = std::max(peak, x[k]);
      }
      // Padded words, and every word of an empty set, get exp(-inf) = 0.
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) {
        shift[k] = cols.real(k) && peak != -inf<acc_t>() ? peak : inf<acc_t>();
      }
    }
    exp_affine<false>(x, x, acc_t(1), shift, K);
    for (int64_t s = 0; s < n; ++s) {
      acc_t total = 0;
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) total += x[k];
      const acc_t inv = total > 0 ? acc_t(1) / total : acc_t(0);
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) scale[k] = inv;
    }
    for (int64_t k = 0; k < K; ++k) x[k] *= scale[k];
  }
}

// The softmax over regions, b[r, k] = exp(g1 * a[r, k] - lse[k]), stored region-major like A.
// With have_lse, lse holds it on entry (backward); else it is computed and stored:
// lse[k] = log sum_r exp(g1 * a[r, k]) for the real columns and +inf for padded ones (so that
// exp(g1 * a - lse) = 0 there), with one exp per element. `peak` is K scratch values.
template <typename acc_t>
void region_softmax(const acc_t* A, int64_t R, const Columns& cols, acc_t g1, bool have_lse,
                    acc_t* lse, acc_t* Bm, acc_t* peak) {
  const int64_t K = cols.K;
  if (have_lse) {
    for (int64_t r = 0; r < R; ++r) exp_affine<false>(Bm + r * K, A + r * K, g1, lse, K);
    return;
  }
  for (int64_t k = 0; k < K; ++k) peak[k] = g1 * A[k];
  for (int64_t r = 1; r < R; ++r) {
    const acc_t* a = A + r * K;
    for (int64_t k = 0; k < K; ++k) peak[k] = std::max(peak[k], g1 * a[k]);
  }
  std::fill(lse, lse + K, acc_t(0));
  for (int64_t r = 0; r < R; ++r) {
    acc_t* b = Bm + r * K;
    exp_affine<false>(b, A + r * K, g1, peak, K);
    for (int64_t k = 0; k < K; ++k) lse[k] += b[k];
  }
  for (int64_t k = 0; k < K; ++k) {
    const acc_t total = lse[k];
    lse[k] = cols.real(k) ? peak[k] + std::log(total) : inf<acc_t>();
    peak[k] = cols.real(k) ? acc_t(1) / total : acc_t(0);  // now the column scale
  }
  for (int64_t r = 0; r < R; ++r) {
    acc_t* b = Bm + r * K;
    for (int64_t k = 0; k < K; ++k) b[k] *= peak[k];
  }
}

// Gradient through both softmaxes, in place: G holds dL/db (as R x K) on entry and dL/ds on exit.
//   ga = g1 * b * (gb - sum_r b gb)          (softmax over regions, per word)
//   gs = a * (ga - sum_{k in set} a ga)      (softmax over words, per region and word set)
// `dot` and `rowdot` are K scratch values.
template <typename acc_t>
void softmax_grads(const acc_t* A, const acc_t* Bm, acc_t* G, int64_t R, const Columns& cols,
                   acc_t g1, acc_t* dot, acc_t* rowdot) {
  const int64_t K = cols.K, n = static_cast<int64_t>(cols.start.size()) - 1;
  std::fill(dot, dot + K, acc_t(0));
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* b = Bm + r * K;
    const acc_t* g = G + r * K;
    for (int64_t k = 0; k < K; ++k) dot[k] += b[k] * g[k];
  }
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* a = A + r * K;
    const acc_t* b = Bm + r * K;
    acc_t* g = G + r * K;
    for (int64_t k = 0; k < K; ++k) g[k] = g1 * b[k] * (g[k] - dot[k]);
    for (int64_t s = 0; s < n; ++s) {
      acc_t sum = 0;
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) sum += a[k] * g[k];
      for (int64_t k = cols.start[s]; k < cols.start[s + 1]; ++k) rowdot[k] = sum;
    }
    for (int64_t k = 0; k < K; ++k) g[k] = a[k] * (g[k] - rowdot[k]);
  }
}

// u[k] = sum_d W[d, k] C[d, k] and c2[k] = sum_d C[d, k]^2 (W has leading dimension ldw).
template <typename acc_t>
void column_dots(const acc_t* W, int64_t ldw, const acc_t* C, int64_t D, int64_t K, acc_t* u,
                 acc_t* c2) {
  std::fill(u, u + K, acc_t(0));
  std::fill(c2, c2 + K, acc_t(0));
  for (int64_t d = 0; d < D; ++d) {
    const acc_t* w = W + d * ldw;
    const acc_t* c = C + d * K;
    for (int64_t k = 0; k < K; ++k) {
      u[k] += w[k] * c[k];
      c2[k] += c[k] * c[k];
    }
  }
}

// log sum_k exp(z[k]) over n values (all finite).
template <typename acc_t>
acc_t log_sum_exp(const acc_t* z, int64_t n) {
  acc_t peak = -inf<acc_t>();
  for (int64_t k = 0; k < n; ++k) peak = std::max(peak, z[k]);
  acc_t total = 0;
  for (int64_t k = 0; k < n; ++k) total += std::exp(z[k] - peak);
  return peak + std::log(total);
}

}  // namespace cpu
}  // namespace t2i_fast

// CPU kernels of the word-region family: word_region_similarity and word_region_attention
// (schemas and conventions in csrc/ops.cpp, reference math in t2i_fast/ops/word_region.py).
//
// Design. All the arithmetic that matters is D x R x K matrix products, K counting word columns.
// They run as ATen matrix products (MKL/OpenBLAS) on float32 or float64 blocks; the softmaxes,
// the cosine and their gradients are loops over those blocks in the same (rows x K) layout with
// the column index innermost, so that they vectorise (exp included: see exp_affine).
//   * similarity: the words are packed once to (D, sum of cap_lens) - padded words are never
//     computed, as in the upstream per-caption loop - and a unit of work is one image j against
//     a run of captions with ~kTargetColumns packed words: the scores are then one
//     (R x D) @ (D x K) product, the context one (D x R) @ (R x K). Images are spread over
//     threads and own their d_regions; d_words sums over images, so each thread adds into its
//     own partial and the partials are added in thread order (deterministic for a thread count).
//   * attention: the unit is one index-paired (words b, regions b), K = T with a word mask; it
//     owns all its outputs.
// Backward recomputes scores, word softmax, region softmax (from the forward's float32 lse; for
// float64 lse is recomputed, because the saved float32 value would cap the accuracy) and the
// context, then per unit does  gB = X^T gC,  dX += gC B^T + W gS^T,  dW += X gS.
// That is 2 products in forward and 6 in backward, against 2 + 4 for autograd of the reference:
// the recomputation costs two products and saves the B^2 R T intermediates.
// Memory traffic: each product reads X once per block from L2 (~0.3 MB per image at R = 289,
// D = 256), and the element-wise passes touch (R x K) blocks that stay in L2.
// Memory: the forward saves only lse (Bi, Bc, T) or (B, T). Scratch is two (forward) or three
// (backward) (R x K) blocks and one (D x K) block per thread (~1.3 MB at R = 289, D = 256,
// K = 288) plus one packed d_words partial per thread in backward; inputs of dtypes other than
// float32/float64 are converted once (float16/bfloat16 compute in float32).
// Limits: the similarity is parallel over images only (at most Bi threads); float32 exp is
// vectorised on x86-64 only (elsewhere libm); d_words may differ in the last bits between
// thread counts (the partials follow the threads), never between runs.
#include "../word_region.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace t2i_fast {
namespace {

using at::Tensor;

// Matrix products on column blocks narrower than this lose BLAS efficiency; wider ones only add
// scratch. DAMSM's B = 16 x T = 18 words fit one block.
constexpr int64_t kTargetColumns = 384;

// The kernels call ATen products on tensors that may require grad; they run below autograd.
// The guard is thread-local, so every at::parallel_for body sets it again.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

template <typename acc_t>
constexpr acc_t inf() { return std::numeric_limits<acc_t>::infinity(); }

template <typename acc_t>
constexpr at::ScalarType scalar_type() { return c10::CppTypeToScalarType<acc_t>::value; }

// out[k] (+)= exp(scale * in[k] - shift[k]) for k < K: every exp of the kernels has this form.
// libm's exp is a scalar call, so on x86-64 float32 uses its own on SSE2 vectors (the baseline
// ISA the extension is built for): x = n ln2 + r with n rounded to nearest and ln2 split in two
// (Cody-Waite), Cephes' degree-6 polynomial for exp(r), 2^n from the exponent bits. Within 2 ulp
// of expf on [-87, 88] and 0 below -87 (so exp(-inf) = 0); larger inputs do not occur here (a
// maximum or a log-sum-exp is subtracted first). Intrinsics rather than portable vector code:
// GCC splits vector selects into scalar compares unless built with -fno-trapping-math.
#if defined(__SSE2__)
inline __m128 exp4(__m128 x) {
  const __m128 lo = _mm_set1_ps(-87.0f);
  const __m128 xc = _mm_min_ps(_mm_max_ps(x, lo), _mm_set1_ps(88.0f));
  const __m128i ni = _mm_cvtps_epi32(_mm_mul_ps(xc, _mm_set1_ps(1.44269504088896341f)));
  const __m128 n = _mm_cvtepi32_ps(ni);
  __m128 r = _mm_sub_ps(xc, _mm_mul_ps(n, _mm_set1_ps(0.693359375f)));
  r = _mm_add_ps(r, _mm_mul_ps(n, _mm_set1_ps(2.12194440e-4f)));
  __m128 y = _mm_set1_ps(1.9875691500e-4f);
  y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(1.3981999507e-3f));
  y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(8.3334519073e-3f));
  y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(4.1665795894e-2f));
  y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(1.6666665459e-1f));
  y = _mm_add_ps(_mm_mul_ps(y, r), _mm_set1_ps(5.0000001201e-1f));
  y = _mm_add_ps(_mm_add_ps(_mm_mul_ps(y, _mm_mul_ps(r, r)), r), _mm_set1_ps(1.0f));
  const __m128 two_n =
      _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(ni, _mm_set1_epi32(127)), 23));
  return _mm_andnot_ps(_mm_cmplt_ps(x, lo), _mm_mul_ps(y, two_n));
}

template <bool kAccumulate>
void exp_affine(float* out, const float* in, float scale, const float* shift, int64_t K) {
  const __m128 s = _mm_set1_ps(scale);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    __m128 e = exp4(_mm_sub_ps(_mm_mul_ps(_mm_loadu_ps(in + k), s), _mm_loadu_ps(shift + k)));
    if (kAccumulate) e = _mm_add_ps(e, _mm_loadu_ps(out + k));
    _mm_storeu_ps(out + k, e);
  }
  for (; k < K; ++k) {  // the tail through the same code, in lane 0
    const float e = _mm_cvtss_f32(exp4(_mm_set_ss(in[k] * scale - shift[k])));
    out[k] = kAccumulate ? out[k] + e : e;
  }
}
#else
template <bool kAccumulate>
void exp_affine(float* out, const float* in, float scale, const float* shift, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    const float e = std::exp(in[k] * scale - shift[k]);
    out[k] = kAccumulate ? out[k] + e : e;
  }
}
#endif

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

// The upstream cosine: u / max(|w| |c|, 1e-8).
template <typename acc_t>
struct Cosine {
  acc_t cos, den;
  bool clamped;
};

template <typename acc_t>
Cosine<acc_t> cosine(acc_t u, acc_t w2, acc_t c2) {
  constexpr acc_t eps = acc_t(1e-8);
  const acc_t den = std::sqrt(w2) * std::sqrt(c2);
  const bool clamped = !(den > eps);
  const acc_t safe = clamped ? eps : den;
  return {u / safe, safe, clamped};
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

// A (rows x cols) row-major block with leading dimension ld, as a tensor for the products.
template <typename acc_t>
Tensor view(acc_t* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(p, {rows, cols}, {ld, 1}, at::TensorOptions().dtype(scalar_type<acc_t>()));
}

// Per-thread scratch for blocks of up to Kmax columns. It comes from the ATen allocator (one
// buffer), so that memory profilers see it like every other allocation of the op.
template <typename acc_t>
struct Scratch {
  Tensor buffer;
  acc_t *A, *Bm, *G, *C, *k1, *k2, *k3, *k4, *k5, *k6, *k7;
  Scratch(int64_t R, int64_t D, int64_t Kmax, bool backward) {
    const int64_t rk = R * Kmax;
    buffer = at::empty({(backward ? 3 : 2) * rk + D * Kmax + 7 * Kmax},
                       at::TensorOptions().dtype(scalar_type<acc_t>()));
    A = buffer.data_ptr<acc_t>();
    Bm = A + rk;
    G = backward ? Bm + rk : nullptr;
    C = Bm + (backward ? 2 : 1) * rk;
    k1 = C + D * Kmax;
    k2 = k1 + Kmax;
    k3 = k2 + Kmax;
    k4 = k3 + Kmax;
    k5 = k4 + Kmax;
    k6 = k5 + Kmax;
    k7 = k6 + Kmax;
  }
};

// ------------------------------------------------------------------------------------------
// word_region_similarity
// ------------------------------------------------------------------------------------------

// The inputs of a similarity call in the accumulation type, the real words packed.
template <typename acc_t>
struct SimilarityInputs {
  Tensor X;                     // (Bi, D, R) contiguous
  Tensor Wp;                    // (D, off[Bc]): the real words of caption i in columns off[i]..
  std::vector<int64_t> off;     // (Bc + 1,) cumulative cap_lens
  std::vector<acc_t> w2;        // (off[Bc],) squared norms of the word columns
  std::vector<int64_t> chunks;  // caption runs of one block: [chunks[c], chunks[c + 1])
  int64_t Kmax = 0;             // the widest block
  int64_t cols() const { return off.back(); }
  int64_t len(int64_t i) const { return off[i + 1] - off[i]; }
};

template <typename acc_t>
SimilarityInputs<acc_t> similarity_inputs(const WordRegionParams& p, const Tensor& regions,
                                          const Tensor& words, const Tensor& cap_lens) {
  SimilarityInputs<acc_t> in;
  const Tensor lens = cap_lens.contiguous();
  const int64_t* len = lens.data_ptr<int64_t>();
  in.off.assign(p.Bc + 1, 0);
  for (int64_t i = 0; i < p.Bc; ++i) {
    TORCH_CHECK(len[i] >= 1 && len[i] <= p.T, "word_region_similarity: cap_lens must lie in 1..T",
                " = 1..", p.T, ", got ", len[i], " for caption ", i);
    in.off[i + 1] = in.off[i] + len[i];
  }
  in.X = regions.to(scalar_type<acc_t>()).contiguous();
  const Tensor W = words.to(scalar_type<acc_t>());
  in.Wp = at::empty({p.D, in.cols()}, W.options());
  for (int64_t i = 0; i < p.Bc; ++i) {
    in.Wp.narrow(1, in.off[i], in.len(i)).copy_(W[i].narrow(1, 0, in.len(i)));
  }
  in.w2.assign(in.cols(), acc_t(0));
  const acc_t* w = in.Wp.template data_ptr<acc_t>();
  for (int64_t d = 0; d < p.D; ++d) {
    for (int64_t k = 0; k < in.cols(); ++k) in.w2[k] += w[d * in.cols() + k] * w[d * in.cols() + k];
  }
  // Runs of captions of about kTargetColumns words, all about the same size.
  const int64_t n_blocks = std::max<int64_t>(1, (in.cols() + kTargetColumns - 1) / kTargetColumns);
  const int64_t target = (in.cols() + n_blocks - 1) / n_blocks;
  in.chunks.push_back(0);
  for (int64_t i = 0; i < p.Bc; ++i) {
    if (in.off[i + 1] - in.off[in.chunks.back()] >= target || i + 1 == p.Bc) {
      in.chunks.push_back(i + 1);
      in.Kmax = std::max(in.Kmax, in.off[i + 1] - in.off[in.chunks[in.chunks.size() - 2]]);
    }
  }
  return in;
}

// The block of image j against captions [i0, i1): its columns and the lse layout.
template <typename acc_t>
Columns block_columns(const SimilarityInputs<acc_t>& in, int64_t i0, int64_t i1) {
  Columns cols;
  cols.K = in.off[i1] - in.off[i0];
  for (int64_t i = i0; i <= i1; ++i) cols.start.push_back(in.off[i] - in.off[i0]);
  return cols;
}

// Scores, word softmax, region softmax and context of image j against captions [i0, i1).
// On return: s.A = a, s.Bm = b (R x K), s.C = context (D x K), lse (K values) in s.k1.
// lse_in: the saved float32 lse of image j, (Bc, T) (or null: compute it).
template <typename acc_t>
void similarity_block(const SimilarityInputs<acc_t>& in, const WordRegionParams& p, int64_t j,
                      int64_t i0, const Columns& cols, const float* lse_in, Scratch<acc_t>& s) {
  const int64_t K = cols.K, R = p.R, D = p.D;
  const acc_t g1 = acc_t(p.gamma1);
  const Tensor Xj = in.X[j];  // (D, R)
  Tensor A = view(s.A, R, K, K);
  at::mm_out(A, Xj.t(), in.Wp.narrow(1, in.off[i0], K));
  word_softmax(s.A, R, cols, s.k2, s.k3);
  if (lse_in != nullptr) {
    for (int64_t c = 0; c + 1 < static_cast<int64_t>(cols.start.size()); ++c) {
      for (int64_t k = cols.start[c]; k < cols.start[c + 1]; ++k) {
        s.k1[k] = acc_t(lse_in[(i0 + c) * p.T + (k - cols.start[c])]);
      }
    }
  }
  region_softmax(s.A, R, cols, g1, lse_in != nullptr, s.k1, s.Bm, s.k2);
  Tensor C = view(s.C, D, K, K);
  at::mm_out(C, Xj, view(s.Bm, R, K, K));
}

template <typename acc_t>
void similarity_forward_impl(const WordRegionParams& p, const SimilarityInputs<acc_t>& in,
                             acc_t* sim, float* lse_out) {
  const acc_t g2 = acc_t(p.gamma2);
  const int64_t n_chunks = static_cast<int64_t>(in.chunks.size()) - 1;
  at::parallel_for(0, p.Bi, 1, [&](int64_t j0, int64_t j1) {
    BelowAutograd below_autograd;
    Scratch<acc_t> s(p.R, p.D, in.Kmax, false);
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t i0 = in.chunks[c], i1 = in.chunks[c + 1];
        const Columns cols = block_columns(in, i0, i1);
        similarity_block(in, p, j, i0, cols, nullptr, s);
        acc_t* u = s.k2;
        acc_t* c2 = s.k3;
        acc_t* z = s.k4;
        column_dots(in.Wp.template data_ptr<acc_t>() + in.off[i0], in.cols(), s.C, p.D, cols.K,
                    u, c2);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t k0 = in.off[i] - in.off[i0], len = in.len(i);
          float* lse = lse_out + (j * p.Bc + i) * p.T;
          for (int64_t t = 0; t < p.T; ++t) lse[t] = t < len ? float(s.k1[k0 + t]) : inf<float>();
          // S = log sum_t exp(g2 cos_t) over the caption's words.
          for (int64_t t = 0; t < len; ++t) {
            z[t] = g2 * cosine(u[k0 + t], in.w2[in.off[i] + t], c2[k0 + t]).cos;
          }
          sim[j * p.Bc + i] = log_sum_exp(z, len);
        }
      }
    }
  });
}

template <typename acc_t>
void similarity_backward_impl(const WordRegionParams& p, const SimilarityInputs<acc_t>& in,
                              const acc_t* grad_s, const float* lse_saved, acc_t* d_regions,
                              acc_t* d_words_parts, int64_t n_parts) {
  const int64_t ldw = in.cols(), R = p.R, D = p.D;
  const acc_t g1 = acc_t(p.gamma1), g2 = acc_t(p.gamma2);
  const int64_t n_chunks = static_cast<int64_t>(in.chunks.size()) - 1;
  // float64 recomputes lse in full precision (see the note at the top).
  const bool use_saved_lse = std::is_same<acc_t, float>::value;
  at::parallel_for(0, n_parts, 1, [&](int64_t part0, int64_t part1) {
    BelowAutograd below_autograd;
    Scratch<acc_t> s(R, D, in.Kmax, true);
    for (int64_t part = part0; part < part1; ++part) {
      acc_t* dW = d_words_parts + part * D * ldw;  // (D, packed words)
      Tensor dW_t = view(dW, D, ldw, ldw);
      const int64_t j_begin = part * p.Bi / n_parts, j_end = (part + 1) * p.Bi / n_parts;
      for (int64_t j = j_begin; j < j_end; ++j) {
        const Tensor Xj = in.X[j];
        Tensor dX = view(d_regions + j * D * R, D, R, R);
        for (int64_t c = 0; c < n_chunks; ++c) {
          const int64_t i0 = in.chunks[c], i1 = in.chunks[c + 1];
          const Columns cols = block_columns(in, i0, i1);
          const int64_t K = cols.K;
          similarity_block(in, p, j, i0, cols,
                           use_saved_lse ? lse_saved + j * p.Bc * p.T : nullptr, s);
          const acc_t* Wc = in.Wp.template data_ptr<acc_t>() + in.off[i0];
          acc_t *u = s.k2, *c2 = s.k3, *alpha = s.k4, *beta = s.k5, *gamma = s.k6, *z = s.k7;
          column_dots(Wc, ldw, s.C, D, K, u, c2);
          // dS/dcos_t = g2 softmax_t(g2 cos) grad_s; then the cosine's gradient coefficients:
          //   d cos/dc = alpha' w + beta' c,  d cos/dw = alpha' c + gamma' w.
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t k0 = in.off[i] - in.off[i0], len = in.len(i);
            const acc_t* w2 = in.w2.data() + in.off[i];
            for (int64_t t = 0; t < len; ++t) {
              z[k0 + t] = g2 * cosine(u[k0 + t], w2[t], c2[k0 + t]).cos;
            }
            const acc_t S = log_sum_exp(z + k0, len);
            const acc_t gs = grad_s[j * p.Bc + i];
            for (int64_t t = 0; t < len; ++t) {
              const int64_t k = k0 + t;
              const Cosine<acc_t> q = cosine(u[k], w2[t], c2[k]);
              const acc_t gcos = gs * g2 * std::exp(z[k] - S);
              alpha[k] = gcos / q.den;
              // Clamped: the norms get no gradient.
              beta[k] = q.clamped ? acc_t(0) : -gcos * q.cos / c2[k];
              gamma[k] = q.clamped ? acc_t(0) : -gcos * q.cos / w2[t];
            }
          }
          // dW += alpha c + gamma w (through the cosine), then C <- gC = alpha w + beta c.
          for (int64_t d = 0; d < D; ++d) {
            const acc_t* w = Wc + d * ldw;
            acc_t* cd = s.C + d * K;
            acc_t* dw = dW + d * ldw + in.off[i0];
            for (int64_t k = 0; k < K; ++k) {
              dw[k] += alpha[k] * cd[k] + gamma[k] * w[k];
              cd[k] = alpha[k] * w[k] + beta[k] * cd[k];
            }
          }
          const Tensor GC = view(s.C, D, K, K);
          Tensor G = view(s.G, R, K, K);
          at::mm_out(G, Xj.t(), GC);  // dL/db as (R x K)
          softmax_grads(s.A, s.Bm, s.G, R, cols, g1, s.k2, s.k3);
          // dX += gC b^T + W gS^T;  dW += X gS.
          dX.addmm_(GC, view(s.Bm, R, K, K).t());
          dX.addmm_(in.Wp.narrow(1, in.off[i0], K), G.t());
          Tensor dWc = dW_t.narrow(1, in.off[i0], K);
          dWc.addmm_(Xj, G);
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> similarity_forward(const Tensor& regions, const Tensor& words,
                                              const Tensor& cap_lens, double gamma1,
                                              double gamma2) {
  BelowAutograd below_autograd;
  WordRegionParams p =
      word_region_similarity_forward_params(regions, words, cap_lens, gamma1, gamma2);
  const auto dtype = regions.scalar_type();
  Tensor lse = at::empty({p.Bi, p.Bc, p.T}, regions.options().dtype(at::kFloat));
  if (dtype == at::kDouble) {
    const auto in = similarity_inputs<double>(p, regions, words, cap_lens);
    Tensor sim = at::empty({p.Bi, p.Bc}, regions.options());
    similarity_forward_impl<double>(p, in, sim.data_ptr<double>(), lse.data_ptr<float>());
    return {sim, lse};
  }
  const auto in = similarity_inputs<float>(p, regions, words, cap_lens);
  Tensor sim = at::empty({p.Bi, p.Bc}, regions.options().dtype(at::kFloat));
  similarity_forward_impl<float>(p, in, sim.data_ptr<float>(), lse.data_ptr<float>());
  return {sim.to(dtype), lse};
}

template <typename acc_t>
std::tuple<Tensor, Tensor> similarity_backward_typed(const WordRegionParams& p,
                                                     const Tensor& grad_s,
                                                     const Tensor& regions, const Tensor& words,
                                                     const Tensor& cap_lens, const Tensor& lse) {
  const auto in = similarity_inputs<acc_t>(p, regions, words, cap_lens);
  const auto opts = regions.options().dtype(scalar_type<acc_t>());
  const Tensor gs = grad_s.to(scalar_type<acc_t>()).contiguous();
  const Tensor lse_c = lse.contiguous();
  Tensor d_regions = at::zeros({p.Bi, p.D, p.R}, opts);
  // One packed d_words partial per thread that gets images, added in part order below.
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), p.Bi));
  Tensor parts = at::zeros({n_parts, p.D, in.cols()}, opts);
  similarity_backward_impl<acc_t>(p, in, gs.data_ptr<acc_t>(), lse_c.data_ptr<float>(),
                                  d_regions.data_ptr<acc_t>(), parts.data_ptr<acc_t>(), n_parts);
  Tensor dW = parts[0];
  for (int64_t part = 1; part < n_parts; ++part) dW.add_(parts[part]);
  Tensor d_words = at::zeros({p.Bc, p.D, p.T}, opts);  // padded words get no gradient
  for (int64_t i = 0; i < p.Bc; ++i) {
    d_words[i].narrow(1, 0, in.len(i)).copy_(dW.narrow(1, in.off[i], in.len(i)));
  }
  const auto dtype = regions.scalar_type();
  return {d_regions.to(dtype), d_words.to(dtype)};
}

std::tuple<Tensor, Tensor> similarity_backward(const Tensor& grad_s, const Tensor& regions,
                                               const Tensor& words, const Tensor& cap_lens,
                                               const Tensor& lse, double gamma1, double gamma2) {
  BelowAutograd below_autograd;
  WordRegionParams p = word_region_similarity_backward_params(grad_s, regions, words, cap_lens,
                                                              lse, gamma1, gamma2);
  if (regions.scalar_type() == at::kDouble) {
    return similarity_backward_typed<double>(p, grad_s, regions, words, cap_lens, lse);
  }
  return similarity_backward_typed<float>(p, grad_s, regions, words, cap_lens, lse);
}

// ------------------------------------------------------------------------------------------
// word_region_attention (index-paired; one unit per pair b, K = T)
// ------------------------------------------------------------------------------------------

template <typename acc_t>
struct AttentionInputs {
  Tensor X;                    // (B, D, R)
  Tensor W;                    // (B, D, T)
  std::vector<uint8_t> valid;  // (B*T,) !word_mask
};

template <typename acc_t>
AttentionInputs<acc_t> attention_inputs(const WordRegionParams& p, const Tensor& words,
                                        const Tensor& regions,
                                        const std::optional<Tensor>& word_mask) {
  AttentionInputs<acc_t> in;
  in.X = regions.to(scalar_type<acc_t>()).contiguous();
  in.W = words.to(scalar_type<acc_t>()).contiguous();
  in.valid.assign(p.Bi * p.T, 1);
  if (p.has_mask) {
    const Tensor m = word_mask->contiguous();
    const bool* pad = m.data_ptr<bool>();
    for (int64_t k = 0; k < p.Bi * p.T; ++k) in.valid[k] = !pad[k];
  }
  return in;
}

template <typename acc_t>
Columns pair_columns(const AttentionInputs<acc_t>& in, const WordRegionParams& p, int64_t b) {
  Columns cols;
  cols.K = p.T;
  cols.start = {0, p.T};
  cols.valid = in.valid.data() + b * p.T;
  return cols;
}

// Scores, word softmax and region softmax of pair b: s.A = a, s.Bm = b (R x T), lse in s.k1.
template <typename acc_t>
void attention_block(const AttentionInputs<acc_t>& in, const WordRegionParams& p, int64_t b,
                     const Columns& cols, const float* lse_in, Scratch<acc_t>& s) {
  Tensor A = view(s.A, p.R, p.T, p.T);
  at::mm_out(A, in.X[b].t(), in.W[b]);
  word_softmax(s.A, p.R, cols, s.k2, s.k3);
  if (lse_in != nullptr) {
    for (int64_t t = 0; t < p.T; ++t) s.k1[t] = cols.real(t) ? acc_t(lse_in[t]) : inf<acc_t>();
  }
  region_softmax(s.A, p.R, cols, acc_t(p.gamma1), lse_in != nullptr, s.k1, s.Bm, s.k2);
}

template <typename acc_t>
std::tuple<Tensor, Tensor, Tensor> attention_forward_typed(
    const WordRegionParams& p, const Tensor& words, const Tensor& regions,
    const std::optional<Tensor>& word_mask) {
  const auto in = attention_inputs<acc_t>(p, words, regions, word_mask);
  const auto opts = words.options().dtype(scalar_type<acc_t>());
  Tensor context = at::empty({p.Bi, p.D, p.T}, opts);
  Tensor attn = at::empty({p.Bi, p.T, p.R}, opts);
  Tensor lse = at::empty({p.Bi, p.T}, words.options().dtype(at::kFloat));
  acc_t* attn_p = attn.data_ptr<acc_t>();
  float* lse_p = lse.data_ptr<float>();
  at::parallel_for(0, p.Bi, 1, [&](int64_t b0, int64_t b1) {
    BelowAutograd below_autograd;
    Scratch<acc_t> s(p.R, 0, p.T, false);
    for (int64_t b = b0; b < b1; ++b) {
      const Columns cols = pair_columns(in, p, b);
      attention_block(in, p, b, cols, nullptr, s);
      for (int64_t t = 0; t < p.T; ++t) lse_p[b * p.T + t] = float(s.k1[t]);
      Tensor ctx = context[b];
      at::mm_out(ctx, in.X[b], view(s.Bm, p.R, p.T, p.T));
      acc_t* out = attn_p + b * p.T * p.R;  // (T, R): the transpose of Bm
      for (int64_t r = 0; r < p.R; ++r) {
        for (int64_t t = 0; t < p.T; ++t) out[t * p.R + r] = s.Bm[r * p.T + t];
      }
    }
  });
  const auto dtype = words.scalar_type();
  return {context.to(dtype), attn.to(dtype), lse};
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(const Tensor& words, const Tensor& regions,
                                                     const std::optional<Tensor>& word_mask,
                                                     double gamma1) {
  BelowAutograd below_autograd;
  WordRegionParams p = word_region_attention_forward_params(words, regions, word_mask, gamma1);
  if (words.scalar_type() == at::kDouble) {
    return attention_forward_typed<double>(p, words, regions, word_mask);
  }
  return attention_forward_typed<float>(p, words, regions, word_mask);
}

template <typename acc_t>
std::tuple<Tensor, Tensor> attention_backward_typed(const WordRegionParams& p,
                                                    const Tensor& grad_context,
                                                    const std::optional<Tensor>& grad_attn,
                                                    const Tensor& words, const Tensor& regions,
                                                    const std::optional<Tensor>& word_mask,
                                                    const Tensor& lse) {
  const auto in = attention_inputs<acc_t>(p, words, regions, word_mask);
  const auto opts = words.options().dtype(scalar_type<acc_t>());
  const Tensor gctx = grad_context.to(scalar_type<acc_t>()).contiguous();
  const Tensor gattn =
      p.has_grad_attn ? grad_attn->to(scalar_type<acc_t>()).contiguous() : Tensor();
  const Tensor lse_c = lse.contiguous();
  Tensor d_words = at::empty({p.Bi, p.D, p.T}, opts);
  Tensor d_regions = at::empty({p.Bi, p.D, p.R}, opts);
  const bool use_saved_lse = std::is_same<acc_t, float>::value;
  at::parallel_for(0, p.Bi, 1, [&](int64_t b0, int64_t b1) {
    BelowAutograd below_autograd;
    Scratch<acc_t> s(p.R, 0, p.T, true);
    for (int64_t b = b0; b < b1; ++b) {
      const Columns cols = pair_columns(in, p, b);
      attention_block(in, p, b, cols, use_saved_lse ? lse_c.data_ptr<float>() + b * p.T : nullptr,
                      s);
      Tensor G = view(s.G, p.R, p.T, p.T);
      at::mm_out(G, in.X[b].t(), gctx[b]);  // dL/db from the context, (R x T)
      if (p.has_grad_attn) {
        const acc_t* ga = gattn.data_ptr<acc_t>() + b * p.T * p.R;  // (T, R)
        for (int64_t r = 0; r < p.R; ++r) {
          for (int64_t t = 0; t < p.T; ++t) s.G[r * p.T + t] += ga[t * p.R + r];
        }
      }
      // Padded words have b = 0, so no gradient reaches their scores.
      softmax_grads(s.A, s.Bm, s.G, p.R, cols, acc_t(p.gamma1), s.k2, s.k3);
      Tensor dX = d_regions[b];
      at::mm_out(dX, gctx[b], view(s.Bm, p.R, p.T, p.T).t());
      dX.addmm_(in.W[b], G.t());
      Tensor dW = d_words[b];
      at::mm_out(dW, in.X[b], G);
    }
  });
  const auto dtype = words.scalar_type();
  return {d_words.to(dtype), d_regions.to(dtype)};
}

std::tuple<Tensor, Tensor> attention_backward(const Tensor& grad_context,
                                              const std::optional<Tensor>& grad_attn,
                                              const Tensor& words, const Tensor& regions,
                                              const std::optional<Tensor>& word_mask,
                                              const Tensor& lse, double gamma1) {
  BelowAutograd below_autograd;
  WordRegionParams p = word_region_attention_backward_params(grad_context, grad_attn, words,
                                                             regions, word_mask, lse, gamma1);
  if (words.scalar_type() == at::kDouble) {
    return attention_backward_typed<double>(p, grad_context, grad_attn, words, regions,
                                            word_mask, lse);
  }
  return attention_backward_typed<float>(p, grad_context, grad_attn, words, regions, word_mask,
                                         lse);
}

}  // namespace

TORCH_LIBRARY_IMPL(t2i_fast_C, CPU, m) {
  m.impl("word_region_similarity_forward", &similarity_forward);
  m.impl("word_region_similarity_backward", &similarity_backward);
  m.impl("word_region_attention_forward", &attention_forward);
  m.impl("word_region_attention_backward", &attention_backward);
}

}  // namespace t2i_fast

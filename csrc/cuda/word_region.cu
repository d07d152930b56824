// CUDA kernels of the word-region family (word_region_similarity, word_region_attention) and
// their launcher; the argument checks, device guard, dtype dispatch and scratch allocation live
// in word_region_dispatch.cpp.
//
// Design. The unit of work is one (word set, region set) pair: caption i against image j for
// the similarity, index b against index b for the attention. A block holds the pair's words
// (D x TM floats, TM = T rounded up to 8) and its T x R attention (R x TM floats, ~28 KB at
// R = 289, T = 18) in shared memory and does the two D x R x T products of a pair in two shapes:
//   * region-major (rows_product): one thread per region keeps that region's TM scores in
//     registers and walks the D channels; X[d, r] loads are coalesced across the warp and the
//     shared word rows are broadcast float4 loads. The softmax over words is then a register
//     loop of its thread; the softmax over regions is a block reduction of TM columns.
//   * channel-major (cols_product): one thread per channel keeps TM context sums in registers;
//     regions are staged kChunk at a time through shared memory (X transposed, coalesced reads)
//     together with the matching rows of the region softmax, computed once per stage.
// All arithmetic is float32 FMA (IEEE; no TF32), for float32, float16 and bfloat16 inputs.
//
// Forward: one block per pair; X of the image is read twice (L2-resident across the captions
// that share it), words once; it writes S (or context and attn) and lse per pair and word.
// Backward recomputes everything from X, the words and lse. The similarity sums d_regions over
// captions and d_words over images, so no block can own both: two kernels, both deterministic.
//   1. words pass, grid (caption, image group): per pair recompute a, b, context, the cosine
//      gradient and gB = X^T dL/dcontext, then gS; it adds its d_words share into a per-group
//      partial (summed on the host) and stores dL/dcontext (D x TM) and sum_r b gB (TM) of the
//      pair for pass 2 (scratch of Bi * Bc * (D + 1) * TM floats).
//   2. regions pass, grid (region tile, image), one thread per region: for every caption in
//      order it recomputes a, b, gB and gS of its region from those, and adds its d_regions
//      column; each column is owned by one thread.
// The attention backward has index-paired outputs: one block per pair does it all.
//
// Limits: T <= kCudaMaxSlots = 32 and Bi, Bc <= kCudaMaxBatch (grid dimension y), both checked
// in word_region_dispatch.cpp; caption lengths are clamped into [0, T]. The backward blocks
// hold (2 D + 2 R) * TM floats + ~20 KB of shared memory, which must fit the device's 227 KB:
// at D = 256 that is R <= ~560 for T = 32, R <= ~820 for T <= 24 (DAMSM's 289 and ITM's 196
// regions fit easily); the forward needs about half. Larger shapes raise a clear error at
// launch. No double backward.
#include "../word_region.h"
#include "common.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace t2i_fast {
namespace cuda {
namespace {

constexpr int kChunk = 16;          // regions per stage of cols_product
constexpr int kMaxThreads = 384;  // 320 for R = 289; caps registers at 168 per thread
constexpr int kRegionThreads = 64;  // threads (= regions) per block of the regions pass
constexpr int kVectors = 12;        // TM-sized vectors a block keeps in shared memory

using Prm = WordRegionParams;

// Shared memory of the per-pair kernels (offsets in floats). Cs/Gs exist only where needed.
struct PairSmem {
  size_t W, C, A, G, red, vec, ps, xs, total;
};

__host__ __device__ inline PairSmem pair_smem(int D, int R, int TM, int threads, bool has_c,
                                              bool has_g) {
  Carve c;
  PairSmem s;
  s.W = c.take(D * TM);                  // words of the pair (D, TM)
  s.C = c.take(has_c ? D * TM : 0);      // context, then dL/dcontext (D, TM)
  s.A = c.take(R * TM);                  // word softmax a (R, TM)
  s.G = c.take(has_g ? R * TM : 0);      // dL/db, then dL/dscores (R, TM)
  s.red = c.take(threads / 32 * TM);     // block reductions
  s.vec = c.take(kVectors * TM);         // lse, column statistics, cosine coefficients
  s.ps = c.take(kChunk * TM);            // stage of cols_product: P rows
  s.xs = c.take(kChunk * (threads + 1)); // stage of cols_product: X transposed
  s.total = c.floats;
  return s;
}

// The pieces of a per-pair kernel's shared memory, carved as pair_smem lays them out.
struct PairShared {
  float *W, *C, *A, *G, *red, *vec, *ps, *xs;
};

__device__ PairShared pair_shared(int D, int R, int TM, bool has_c, bool has_g) {
  float* smem = shared_floats();
  const PairSmem L = pair_smem(D, R, TM, blockDim.x, has_c, has_g);
  return {smem + L.W,   smem + L.C,   smem + L.A,  smem + L.G,
          smem + L.red, smem + L.vec, smem + L.ps, smem + L.xs};
}

int pair_threads(int64_t R) {
  const int64_t warps = (R + 31) / 32;
  return static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(64, warps * 32)));
}

// s <- softmax of s over the valid words; all zero if none is valid.
template <int TM>
__device__ __forceinline__ void word_softmax(float (&s)[TM], unsigned valid) {
  float peak = -INFINITY;
#pragma unroll
  for (int t = 0; t < TM; ++t) {
    if (slot_on(valid, t)) peak = fmaxf(peak, s[t]);
  }
  if (peak == -INFINITY) {
#pragma unroll
    for (int t = 0; t < TM; ++t) s[t] = 0.f;
    return;
  }
  float total = 0.f;
#pragma unroll
  for (int t = 0; t < TM; ++t) {
    s[t] = slot_on(valid, t) ? expf(s[t] - peak) : 0.f;
    total += s[t];
  }
  const float inv = 1.f / total;
#pragma unroll
  for (int t = 0; t < TM; ++t) s[t] *= inv;
}

// out[t] = max or sum of v[t] over the block (fixed order: deterministic). red: warps x TM.
// v is clobbered. Ends with a barrier, so out may be read right away.
template <int TM, bool kMax>
__device__ void block_reduce(float (&v)[TM], float* red, float* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int t = 0; t < TM; ++t) {
    float x = v[t];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float y = __shfl_xor_sync(0xffffffffu, x, o);
      x = kMax ? fmaxf(x, y) : x + y;
    }
    if (lane == 0) red[warp * TM + t] = x;
  }
  __syncthreads();
  if (threadIdx.x < TM) {
    float x = red[threadIdx.x];
    for (int w = 1; w < warps; ++w) {
      const float y = red[w * TM + threadIdx.x];
      x = kMax ? fmaxf(x, y) : x + y;
    }
    out[threadIdx.x] = x;
  }
  __syncthreads();
}

// out[t] = sum_d W[d, t]^2 for W (D, TM) in shared memory, by a block reduction.
template <int TM>
__device__ void squared_norms(const float* W, int D, float* red, float* out) {
  float part[TM];
#pragma unroll
  for (int t = 0; t < TM; ++t) part[t] = 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
#pragma unroll
    for (int t = 0; t < TM; ++t) part[t] += W[d * TM + t] * W[d * TM + t];
  }
  block_reduce<TM, false>(part, red, out);
}

// Region-major product: for every region r (one thread each), acc[t] = sum_d X[d, r] M[d, t]
// with M (D, TM) in shared memory, then f(r, acc).
template <int TM, typename scalar_t, typename F>
__device__ void rows_product(const scalar_t* __restrict__ X, int R, int D, const float* M,
                             F&& f) {
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    float acc[TM];
#pragma unroll
    for (int t = 0; t < TM; ++t) acc[t] = 0.f;
    const scalar_t* x = X + r;
#pragma unroll 4
    for (int d = 0; d < D; ++d) axpy_row<TM>(acc, ld(x + static_cast<int64_t>(d) * R), M + d * TM);
    f(r, acc);
  }
}

// Channel-major product: for every channel d (one thread each), acc[t] = sum_r X[d, r] P(r, t)
// with P given by produce(r, t), evaluated once per (r, t) into the stage; then f(d, acc).
// Begins and ends with a barrier.
template <int TM, typename scalar_t, typename Produce, typename F>
__device__ void cols_product(const scalar_t* __restrict__ X, int R, int D, float* xs, float* ps,
                             Produce&& produce, F&& f) {
  const int threads = blockDim.x, tid = threadIdx.x, stride = threads + 1;
  for (int d0 = 0; d0 < D; d0 += threads) {
    float acc[TM];
#pragma unroll
    for (int t = 0; t < TM; ++t) acc[t] = 0.f;
    for (int r0 = 0; r0 < R; r0 += kChunk) {
      __syncthreads();
      for (int i = tid; i < threads * kChunk; i += threads) {
        const int dl = i / kChunk, k = i % kChunk, d = d0 + dl, r = r0 + k;
        xs[k * stride + dl] = d < D && r < R ? ld(X + static_cast<int64_t>(d) * R + r) : 0.f;
      }
      for (int i = tid; i < kChunk * TM; i += threads) {
        const int k = i / TM, t = i % TM, r = r0 + k;
        ps[i] = r < R ? produce(r, t) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kChunk; ++k) axpy_row<TM>(acc, xs[k * stride + tid], ps + k * TM);
    }
    if (d0 + tid < D) f(d0 + tid, acc);
  }
  __syncthreads();
}

// The real words of caption i: its first caption_length(cap_lens[i], T) slots.
__device__ __forceinline__ unsigned caption_words(const Prm& p, int64_t i) {
  return first_slots(static_cast<int>(caption_length(p.cap_lens[i], p.T)));
}

// log sum_t exp(z_t), z_t = g2 cos_t, over the valid words, with a running maximum (one pass):
// S = peak + log(total). u = w.c, w2 = |w|^2, c2 = |c|^2 per word, in shared memory.
struct WordSum {
  float peak, total;
};

template <int TM>
__device__ WordSum cosine_log_sum_exp(const float* u, const float* w2, const float* c2,
                                      unsigned valid, float g2) {
  float peak = -INFINITY, total = 0.f;
  for (int t = 0; t < TM; ++t) {
    if (!slot_on(valid, t)) continue;
    const float z = g2 * cosine(u[t], w2[t], c2[t]).cos;
    if (z > peak) {
      total *= expf(peak - z);
      peak = z;
    }
    total += expf(z - peak);
  }
  return {peak, total};
}

// ------------------------------------------------------------------------------------------
// Forward: one block per pair. SIM: grid (Bc, Bi), writes S and lse. Attention: grid (B).
// ------------------------------------------------------------------------------------------
template <typename scalar_t, int TM, bool SIM>
__global__ void __launch_bounds__(kMaxThreads) pair_forward_kernel(const Prm p) {
  const int D = static_cast<int>(p.D), R = static_cast<int>(p.R), T = static_cast<int>(p.T);
  const int tid = threadIdx.x;
  const int64_t i = blockIdx.x, j = SIM ? blockIdx.y : blockIdx.x;
  const PairShared sh = pair_shared(D, R, TM, false, false);
  float *Ws = sh.W, *As = sh.A, *red = sh.red, *lse_s = sh.vec;
  float *v1 = lse_s + TM, *v2 = v1 + TM, *v3 = v2 + TM;

  const scalar_t* X = typed<scalar_t>(p.regions) + j * D * R;
  load_rows<TM>(Ws, typed<scalar_t>(p.words) + i * D * T, D, T);
  const unsigned valid = SIM ? caption_words(p, i)
                         : p.has_mask ? unmasked_slots(p.word_mask, i, T) : first_slots(T);
  const float g1 = static_cast<float>(p.gamma1);
  __syncthreads();

  // a = softmax over words per region; the column max of g1 * a on the way.
  float part[TM];
#pragma unroll
  for (int t = 0; t < TM; ++t) part[t] = -INFINITY;
  rows_product<TM>(X, R, D, Ws, [&](int r, float (&s)[TM]) {
    word_softmax<TM>(s, valid);
    store_row<TM>(As + r * TM, s);
#pragma unroll
    for (int t = 0; t < TM; ++t) part[t] = fmaxf(part[t], g1 * s[t]);
  });
  block_reduce<TM, true>(part, red, v1);
#pragma unroll
  for (int t = 0; t < TM; ++t) part[t] = 0.f;
  for (int r = tid; r < R; r += blockDim.x) {
#pragma unroll
    for (int t = 0; t < TM; ++t) part[t] += expf(g1 * As[r * TM + t] - v1[t]);
  }
  block_reduce<TM, false>(part, red, lse_s);
  if (tid < TM) lse_s[tid] = slot_on(valid, tid) ? v1[tid] + logf(lse_s[tid]) : INFINITY;
  __syncthreads();
  float* lse_out = p.lse_out + (SIM ? (j * p.Bc + i) : i) * T;
  if (tid < T) lse_out[tid] = lse_s[tid];
  const auto region_softmax = [&](int r, int t) { return expf(g1 * As[r * TM + t] - lse_s[t]); };

  if constexpr (SIM) {
    float pu[TM], pc[TM];
    squared_norms<TM>(Ws, D, red, v3);  // |w|^2
#pragma unroll
    for (int t = 0; t < TM; ++t) pu[t] = pc[t] = 0.f;
    cols_product<TM>(X, R, D, sh.xs, sh.ps, region_softmax,
                     [&](int d, float (&c)[TM]) {
#pragma unroll
      for (int t = 0; t < TM; ++t) {
        pu[t] += Ws[d * TM + t] * c[t];
        pc[t] += c[t] * c[t];
      }
    });
    block_reduce<TM, false>(pu, red, v1);  // w.c
    block_reduce<TM, false>(pc, red, v2);  // |c|^2
    if (tid == 0) {
      const WordSum S = cosine_log_sum_exp<TM>(v1, v3, v2, valid, static_cast<float>(p.gamma2));
      typed<scalar_t>(p.sim)[j * p.Bc + i] = static_cast<scalar_t>(S.peak + logf(S.total));
    }
  } else {
    scalar_t* attn = typed<scalar_t>(p.attn) + i * T * R;
    for (int k = tid; k < T * R; k += blockDim.x) {
      attn[k] = static_cast<scalar_t>(region_softmax(k % R, k / R));
    }
    scalar_t* context = typed<scalar_t>(p.context) + i * D * T;
    cols_product<TM>(X, R, D, sh.xs, sh.ps, region_softmax,
                     [&](int d, float (&c)[TM]) {
#pragma unroll
      for (int t = 0; t < TM; ++t) {
        if (t < T) context[d * T + t] = static_cast<scalar_t>(c[t]);
      }
    });
  }
}

// dL/dscores in place: G holds dL/db (as gb[r, t]) on entry, gs on exit, for the regions of this
// thread. ga = g1 b (gb - delta); gs = a (ga - sum_t a ga).
template <int TM>
__device__ __forceinline__ void softmax_grads(float (&a)[TM], float (&gb)[TM], const float* lse,
                                              const float* delta, float g1) {
  float rowdot = 0.f;
#pragma unroll
  for (int t = 0; t < TM; ++t) {
    const float b = expf(g1 * a[t] - lse[t]);
    gb[t] = g1 * b * (gb[t] - delta[t]);
    rowdot += a[t] * gb[t];
  }
#pragma unroll
  for (int t = 0; t < TM; ++t) gb[t] = a[t] * (gb[t] - rowdot);
}

// ------------------------------------------------------------------------------------------
// Attention backward: one block per pair, which owns d_words[b] and d_regions[b].
// ------------------------------------------------------------------------------------------
template <typename scalar_t, int TM>
__global__ void __launch_bounds__(kMaxThreads) attention_backward_kernel(const Prm p) {
  const int D = static_cast<int>(p.D), R = static_cast<int>(p.R), T = static_cast<int>(p.T);
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x;
  const PairShared sh = pair_shared(D, R, TM, true, true);
  float *Ws = sh.W, *GCs = sh.C, *As = sh.A, *Gs = sh.G, *red = sh.red, *lse_s = sh.vec;
  float* delta_s = lse_s + TM;

  const scalar_t* X = typed<scalar_t>(p.regions) + b * D * R;
  load_rows<TM>(Ws, typed<scalar_t>(p.words) + b * D * T, D, T);
  load_rows<TM>(GCs, typed<scalar_t>(p.grad_context) + b * D * T, D, T);
  const unsigned valid = p.has_mask ? unmasked_slots(p.word_mask, b, T) : first_slots(T);
  if (tid < TM) lse_s[tid] = slot_on(valid, tid) ? p.lse[b * T + tid] : INFINITY;
  const float g1 = static_cast<float>(p.gamma1);
  __syncthreads();

  rows_product<TM>(X, R, D, Ws, [&](int r, float (&s)[TM]) {
    word_softmax<TM>(s, valid);
    store_row<TM>(As + r * TM, s);
  });
  // gB = X^T dL/dcontext + grad_attn^T; delta[t] = sum_r b gB.
  float part[TM];
#pragma unroll
  for (int t = 0; t < TM; ++t) part[t] = 0.f;
  const scalar_t* gattn = p.has_grad_attn ? typed<scalar_t>(p.grad_attn) + b * T * R : nullptr;
  rows_product<TM>(X, R, D, GCs, [&](int r, float (&gb)[TM]) {
#pragma unroll
    for (int t = 0; t < TM; ++t) {
      if (gattn != nullptr && t < T) gb[t] += ld(gattn + t * R + r);
      part[t] += expf(g1 * As[r * TM + t] - lse_s[t]) * gb[t];
    }
    store_row<TM>(Gs + r * TM, gb);
  });
  block_reduce<TM, false>(part, red, delta_s);

  // Per region: gS, then its column of d_regions = dL/dcontext b^T + W gS^T.
  scalar_t* dX = typed<scalar_t>(p.d_regions) + b * D * R;
  for (int r = tid; r < R; r += blockDim.x) {
    float a[TM], g[TM], bv[TM];
    load_row<TM>(a, As + r * TM);
    load_row<TM>(g, Gs + r * TM);
#pragma unroll
    for (int t = 0; t < TM; ++t) bv[t] = expf(g1 * a[t] - lse_s[t]);
    softmax_grads<TM>(a, g, lse_s, delta_s, g1);
    store_row<TM>(Gs + r * TM, g);
    for (int d = 0; d < D; ++d) {
      const float v = dot_row<TM>(bv, GCs + d * TM) + dot_row<TM>(g, Ws + d * TM);
      dX[static_cast<int64_t>(d) * R + r] = static_cast<scalar_t>(v);
    }
  }
  // d_words = X gS.
  scalar_t* dW = typed<scalar_t>(p.d_words) + b * D * T;
  cols_product<TM>(X, R, D, sh.xs, sh.ps,
                   [&](int r, int t) { return Gs[r * TM + t]; },
                   [&](int d, float (&acc)[TM]) {
#pragma unroll
    for (int t = 0; t < TM; ++t) {
      if (t < T) dW[d * T + t] = static_cast<scalar_t>(acc[t]);
    }
  });
}

// ------------------------------------------------------------------------------------------
// Similarity backward, pass 1 (words): grid (Bc, groups); the block owns caption i's d_words
// partial of its image group, and stores each pair's dL/dcontext and delta for pass 2.
// ------------------------------------------------------------------------------------------
template <typename scalar_t, int TM>
__global__ void __launch_bounds__(kMaxThreads) similarity_backward_words_kernel(const Prm p) {
  const int D = static_cast<int>(p.D), R = static_cast<int>(p.R), T = static_cast<int>(p.T);
  const int tid = threadIdx.x;
  const int64_t i = blockIdx.x, group = blockIdx.y, Bi = p.Bi, Bc = p.Bc;
  const PairShared sh = pair_shared(D, R, TM, true, true);
  float *Ws = sh.W, *Cs = sh.C, *As = sh.A, *Gs = sh.G, *red = sh.red, *lse_s = sh.vec;
  float* delta_s = lse_s + TM;
  float* u_s = delta_s + TM;
  float* c2_s = u_s + TM;
  float* w2_s = c2_s + TM;
  float* alpha_s = w2_s + TM;
  float* beta_s = alpha_s + TM;
  float* gamma_s = beta_s + TM;

  load_rows<TM>(Ws, typed<scalar_t>(p.words) + i * D * T, D, T);
  const unsigned valid = caption_words(p, i);
  const float g1 = static_cast<float>(p.gamma1), g2 = static_cast<float>(p.gamma2);
  __syncthreads();
  float part[TM], part2[TM];
  squared_norms<TM>(Ws, D, red, w2_s);

  float* dW = p.d_words_parts + (group * Bc + i) * D * TM;
  const int64_t j_begin = group * Bi / p.groups, j_end = (group + 1) * Bi / p.groups;
  for (int64_t j = j_begin; j < j_end; ++j) {
    const int64_t pair = j * Bc + i;
    const scalar_t* X = typed<scalar_t>(p.regions) + j * D * R;
    if (tid < TM) lse_s[tid] = slot_on(valid, tid) ? p.lse[pair * T + tid] : INFINITY;
    const float gs = ld(typed<scalar_t>(p.grad_s) + pair);
    __syncthreads();
    rows_product<TM>(X, R, D, Ws, [&](int r, float (&s)[TM]) {
      word_softmax<TM>(s, valid);
      store_row<TM>(As + r * TM, s);
    });
    cols_product<TM>(X, R, D, sh.xs, sh.ps,
                     [&](int r, int t) { return expf(g1 * As[r * TM + t] - lse_s[t]); },
                     [&](int d, float (&c)[TM]) { store_row<TM>(Cs + d * TM, c); });
    // The cosine per word and dS/dcos = g2 softmax_t(g2 cos) * grad_s.
#pragma unroll
    for (int t = 0; t < TM; ++t) part[t] = part2[t] = 0.f;
    for (int d = tid; d < D; d += blockDim.x) {
#pragma unroll
      for (int t = 0; t < TM; ++t) {
        const float c = Cs[d * TM + t];
        part[t] += Ws[d * TM + t] * c;
        part2[t] += c * c;
      }
    }
    block_reduce<TM, false>(part, red, u_s);
    block_reduce<TM, false>(part2, red, c2_s);
    if (tid == 0) {
      const WordSum S = cosine_log_sum_exp<TM>(u_s, w2_s, c2_s, valid, g2);
      for (int t = 0; t < TM; ++t) {
        alpha_s[t] = beta_s[t] = gamma_s[t] = 0.f;
        if (!slot_on(valid, t)) continue;
        const Cosine<float> q = cosine(u_s[t], w2_s[t], c2_s[t]);
        const float gcos = gs * g2 * expf(g2 * q.cos - S.peak) / S.total;
        // d cos/dc = alpha w + beta c, d cos/dw = alpha c + gamma w; clamped: no norm terms.
        alpha_s[t] = gcos / q.den;
        if (!q.clamped) {
          beta_s[t] = -gcos * q.cos / c2_s[t];
          gamma_s[t] = -gcos * q.cos / w2_s[t];
        }
      }
    }
    __syncthreads();
    float* gc_out = p.grad_context_pairs + pair * D * TM;
    for (int k = tid; k < D * TM; k += blockDim.x) {
      const int t = k % TM;
      const float c = Cs[k], w = Ws[k];
      dW[k] += alpha_s[t] * c + gamma_s[t] * w;
      const float gc = alpha_s[t] * w + beta_s[t] * c;
      Cs[k] = gc;
      gc_out[k] = gc;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TM; ++t) part[t] = 0.f;
    rows_product<TM>(X, R, D, Cs, [&](int r, float (&gb)[TM]) {
#pragma unroll
      for (int t = 0; t < TM; ++t) part[t] += expf(g1 * As[r * TM + t] - lse_s[t]) * gb[t];
      store_row<TM>(Gs + r * TM, gb);
    });
    block_reduce<TM, false>(part, red, delta_s);
    if (tid < TM) p.delta_pairs[pair * TM + tid] = delta_s[tid];
    for (int r = tid; r < R; r += blockDim.x) {
      float a[TM], g[TM];
      load_row<TM>(a, As + r * TM);
      load_row<TM>(g, Gs + r * TM);
      softmax_grads<TM>(a, g, lse_s, delta_s, g1);
      store_row<TM>(Gs + r * TM, g);
    }
    cols_product<TM>(X, R, D, sh.xs, sh.ps,
                     [&](int r, int t) { return Gs[r * TM + t]; },
                     [&](int d, float (&acc)[TM]) {
#pragma unroll
      for (int t = 0; t < TM; ++t) dW[d * TM + t] += acc[t];
    });
  }
}

// ------------------------------------------------------------------------------------------
// Similarity backward, pass 2 (regions): grid (region tiles, Bi), one thread per region; the
// thread owns column r of d_regions[j] (float32 accumulator) and adds the captions in order.
// ------------------------------------------------------------------------------------------
template <typename scalar_t, int TM>
__global__ void __launch_bounds__(kRegionThreads) similarity_backward_regions_kernel(
    const Prm p) {
  const int D = static_cast<int>(p.D), R = static_cast<int>(p.R), T = static_cast<int>(p.T);
  const int64_t j = blockIdx.y;
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= R) return;
  const scalar_t* X = typed<scalar_t>(p.regions) + j * D * R + r;
  float* dX = p.d_regions_acc + j * D * R + r;
  const float g1 = static_cast<float>(p.gamma1);
  for (int64_t i = 0; i < p.Bc; ++i) {
    const int64_t pair = j * p.Bc + i;
    const unsigned valid = caption_words(p, i);
    const float* W = p.words_padded + i * D * TM;
    const float* GC = p.grad_context_pairs + pair * D * TM;
    float a[TM], g[TM], lse[TM], delta[TM], bv[TM];
#pragma unroll
    for (int t = 0; t < TM; ++t) a[t] = g[t] = 0.f;
    for (int d = 0; d < D; ++d) {
      const float x = ld(X + static_cast<int64_t>(d) * R);
      axpy_row<TM, true>(a, x, W + d * TM);
      axpy_row<TM, true>(g, x, GC + d * TM);
    }
    word_softmax<TM>(a, valid);
#pragma unroll
    for (int t = 0; t < TM; ++t) {
      lse[t] = slot_on(valid, t) ? __ldg(p.lse + pair * T + t) : INFINITY;
      delta[t] = __ldg(p.delta_pairs + pair * TM + t);
      bv[t] = expf(g1 * a[t] - lse[t]);
    }
    softmax_grads<TM>(a, g, lse, delta, g1);
    for (int d = 0; d < D; ++d) {
      dX[static_cast<int64_t>(d) * R] +=
          dot_row<TM, true>(g, W + d * TM) + dot_row<TM, true>(bv, GC + d * TM);
    }
  }
}

// The per-pair kernels, one block per pair with pair_threads(R) threads.
template <typename Kernel>
void launch_pair(Kernel kernel, const Prm& p, dim3 grid, bool has_c, bool has_g, int TM,
                 const char* op, cudaStream_t stream) {
  const int threads = pair_threads(p.R);
  launch(kernel, grid, threads, pair_smem(int(p.D), int(p.R), TM, threads, has_c, has_g).total,
         op, stream, p);
}

}  // namespace

// The launcher (declared in word_region_dispatch.cpp); p.TM is the slot bucket, set by the
// caller. The similarity backward needs p.words_padded, p.grad_context_pairs, p.delta_pairs,
// p.d_words_parts (zeroed), p.d_regions_acc (zeroed) and p.groups.
template <typename scalar_t>
void word_region_launch(WordRegionKernel which, const Prm& p, cudaStream_t stream) {
  const unsigned Bi = static_cast<unsigned>(p.Bi), Bc = static_cast<unsigned>(p.Bc);
  with_bucket(static_cast<int>(p.TM), [&](auto bucket) {
    constexpr int TM = decltype(bucket)::value;
    switch (which) {
      case WordRegionKernel::kSimilarityForward:
        launch_pair(pair_forward_kernel<scalar_t, TM, true>, p, dim3(Bc, Bi), false, false, TM,
                    "word_region_similarity_forward", stream);
        break;
      case WordRegionKernel::kSimilarityBackward:
        launch_pair(similarity_backward_words_kernel<scalar_t, TM>, p,
                    dim3(Bc, static_cast<unsigned>(p.groups)), true, true, TM,
                    "word_region_similarity_backward", stream);
        launch(similarity_backward_regions_kernel<scalar_t, TM>,
               dim3(static_cast<unsigned>((p.R + kRegionThreads - 1) / kRegionThreads), Bi),
               kRegionThreads, 0, "word_region_similarity_backward", stream, p);
        break;
      case WordRegionKernel::kAttentionForward:
        launch_pair(pair_forward_kernel<scalar_t, TM, false>, p, dim3(Bi), false, false, TM,
                    "word_region_attention_forward", stream);
        break;
      case WordRegionKernel::kAttentionBackward:
        launch_pair(attention_backward_kernel<scalar_t, TM>, p, dim3(Bi), true, true, TM,
                    "word_region_attention_backward", stream);
        break;
    }
  });
}

#define T2I_INSTANTIATE(scalar_t) \
  template void word_region_launch<scalar_t>(WordRegionKernel, const Prm&, cudaStream_t);
T2I_FOR_GPU_FLOATS(T2I_INSTANTIATE)
#undef T2I_INSTANTIATE

}  // namespace cuda
}  // namespace t2i_fast

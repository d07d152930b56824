// CPU kernels of the word-region family: word_region_similarity and word_region_attention
// (schemas and conventions in csrc/ops.cpp, reference math in t2i_fast/ops/word_region.py).
//
// Design. All the arithmetic that matters is D x R x K matrix products, K counting word columns.
// They run as ATen matrix products (MKL/OpenBLAS) on float32 or float64 blocks; the softmaxes,
// the cosine and their gradients are loops over those blocks in the same (rows x K) layout with
// the column index innermost, so that they vectorise (word_region_block.h; exp included).
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
// Limits: GCC or Clang (vector extensions, see vec.h); the similarity is parallel over images
// only (at most Bi threads); caption lengths are clamped into [0, T], so no length value reads
// out of bounds; d_words may differ in the last bits between thread counts (the partials follow
// the threads), never between runs.
#include "../word_region.h"
#include "word_region_block.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace t2i_fast {
namespace cpu {
namespace {

using at::Tensor;

// Matrix products on column blocks narrower than this lose BLAS efficiency; wider ones only add
// scratch. DAMSM's B = 16 x T = 18 words fit one block.
constexpr int64_t kTargetColumns = 384;

// The kernels call ATen products on tensors that may require grad; they run below autograd.
// The guard is thread-local, so every at::parallel_for body sets it again.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

template <typename acc_t>
constexpr at::ScalarType scalar_type() { return c10::CppTypeToScalarType<acc_t>::value; }

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
    in.off[i + 1] = in.off[i] + caption_length(len[i], p.T);
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

template <typename acc_t>
std::tuple<Tensor, Tensor> similarity_forward_typed(const WordRegionParams& p,
                                                    const Tensor& regions, const Tensor& words,
                                                    const Tensor& cap_lens) {
  const auto in = similarity_inputs<acc_t>(p, regions, words, cap_lens);
  Tensor sim = at::empty({p.Bi, p.Bc}, regions.options().dtype(scalar_type<acc_t>()));
  Tensor lse = at::empty({p.Bi, p.Bc, p.T}, regions.options().dtype(at::kFloat));
  similarity_forward_impl<acc_t>(p, in, sim.data_ptr<acc_t>(), lse.data_ptr<float>());
  return {sim.to(regions.scalar_type()), lse};
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
      transpose(attn_p + b * p.T * p.R, p.R, s.Bm, p.T, p.R, p.T);  // attn (T, R) = Bm^T
    }
  });
  const auto dtype = words.scalar_type();
  return {context.to(dtype), attn.to(dtype), lse};
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
        transpose<true>(s.G, p.T, ga, p.R, p.T, p.R);
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

// The entry points: bind and check the arguments, then run the kernels in the compute type,
// double for float64 inputs and float for every other dtype.
template <typename F>
auto with_acc_type(at::ScalarType dtype, const F& f) {
  return dtype == at::kDouble ? f(double{}) : f(float{});
}

std::tuple<Tensor, Tensor> similarity_forward(const Tensor& regions, const Tensor& words,
                                              const Tensor& cap_lens, double gamma1,
                                              double gamma2) {
  BelowAutograd below_autograd;
  const auto p = word_region_similarity_params(regions, words, cap_lens, gamma1, gamma2);
  return with_acc_type(regions.scalar_type(), [&](auto acc) {
    return similarity_forward_typed<decltype(acc)>(p, regions, words, cap_lens);
  });
}

std::tuple<Tensor, Tensor> similarity_backward(const Tensor& grad_s, const Tensor& regions,
                                               const Tensor& words, const Tensor& cap_lens,
                                               const Tensor& lse, double gamma1, double gamma2) {
  BelowAutograd below_autograd;
  const auto p = word_region_similarity_backward_params(grad_s, regions, words, cap_lens, lse,
                                                        gamma1, gamma2);
  return with_acc_type(regions.scalar_type(), [&](auto acc) {
    return similarity_backward_typed<decltype(acc)>(p, grad_s, regions, words, cap_lens, lse);
  });
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(const Tensor& words, const Tensor& regions,
                                                     const std::optional<Tensor>& word_mask,
                                                     double gamma1) {
  BelowAutograd below_autograd;
  const auto p = word_region_attention_params(words, regions, word_mask, gamma1);
  return with_acc_type(words.scalar_type(), [&](auto acc) {
    return attention_forward_typed<decltype(acc)>(p, words, regions, word_mask);
  });
}

std::tuple<Tensor, Tensor> attention_backward(const Tensor& grad_context,
                                              const std::optional<Tensor>& grad_attn,
                                              const Tensor& words, const Tensor& regions,
                                              const std::optional<Tensor>& word_mask,
                                              const Tensor& lse, double gamma1) {
  BelowAutograd below_autograd;
  const auto p = word_region_attention_backward_params(grad_context, grad_attn, words, regions,
                                                       word_mask, lse, gamma1);
  return with_acc_type(words.scalar_type(), [&](auto acc) {
    return attention_backward_typed<decltype(acc)>(p, grad_context, grad_attn, words, regions,
                                                   word_mask, lse);
  });
}

}  // namespace
}  // namespace cpu
}  // namespace t2i_fast

TORCH_LIBRARY_IMPL(t2i_fast_C, CPU, m) {
  m.impl("word_region_similarity_forward", &t2i_fast::cpu::similarity_forward);
  m.impl("word_region_similarity_backward", &t2i_fast::cpu::similarity_backward);
  m.impl("word_region_attention_forward", &t2i_fast::cpu::attention_forward);
  m.impl("word_region_attention_backward", &t2i_fast::cpu::attention_backward);
}

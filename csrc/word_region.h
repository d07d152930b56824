// Parameters, argument checks and the cosine of the word-region kernels (schemas in
// csrc/ops.cpp), shared by csrc/cpu/word_region.cpp, csrc/cuda/word_region_dispatch.cpp and
// csrc/cuda/word_region.cu, so it depends on ATen's core tensor only.
//
// Both ops work per (word set, region set) pair. word_region_similarity pairs every image j with
// every caption i (Bi x Bc pairs); word_region_attention pairs index b with index b (B pairs, and
// then Bi = Bc = B). The checks here cover shapes, dtypes and devices and read no tensor data:
// the kernels clamp each caption length into [0, T] instead (caption_length).
#pragma once

#include "common.h"

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace t2i_fast {

// One call of a word_region_* kernel. The backends make every tensor contiguous before binding
// it, so each pointer addresses the row-major layout noted beside it.
struct WordRegionParams {
  int64_t Bi = 0;  // images (regions batch); = B for attention
  int64_t Bc = 0;  // captions (words batch); = B for attention
  int64_t D = 0;   // embedding width
  int64_t R = 0;   // regions per image (H*W of the feature map)
  int64_t T = 0;   // word slots per caption
  double gamma1 = 1.0;  // sharpness of the softmax over regions
  double gamma2 = 1.0;  // sharpness of the log-sum-exp over words (similarity only)

  bool has_mask = false;       // attention: word_mask given (true = padded word)
  bool has_grad_attn = false;  // attention backward: grad_attn given (non-empty)

  // Inputs, element type = regions' dtype unless noted.
  const void* regions = nullptr;       // (Bi, D, R)
  const void* words = nullptr;         // (Bc, D, T)
  const int64_t* cap_lens = nullptr;   // (Bc,), similarity only; clamped into [0, T]
  const bool* word_mask = nullptr;     // (B, T) or null, attention only
  const float* lse = nullptr;          // backward: (Bi, Bc, T) similarity, (B, T) attention
  const void* grad_s = nullptr;        // (Bi, Bc), similarity backward
  const void* grad_context = nullptr;  // (B, D, T), attention backward
  const void* grad_attn = nullptr;     // (B, T, R) or null, attention backward

  // Outputs. Similarity forward: sim (Bi, Bc), lse_out (Bi, Bc, T) float32. Attention forward:
  // context (B, D, T), attn (B, T, R), lse_out (B, T) float32. Backward: d_regions (Bi, D, R),
  // d_words (Bc, D, T). lse_out holds +inf for padded words (exp(x - lse) = 0 there).
  void* sim = nullptr;
  float* lse_out = nullptr;
  void* context = nullptr;
  void* attn = nullptr;
  void* d_regions = nullptr;
  void* d_words = nullptr;

  // Backend scratch, filled by backends that need it (the CUDA similarity backward). TM is T
  // rounded up to the kernels' slot bucket; all float32.
  int64_t TM = 0;
  int64_t groups = 0;                   // image groups of the caption-owned pass
  const float* words_padded = nullptr;  // (Bc, D, TM), zero beyond T
  float* grad_context_pairs = nullptr;  // (Bi, Bc, D, TM): dL/dcontext of every pair
  float* delta_pairs = nullptr;         // (Bi, Bc, TM): sum_r b gb of every pair and word
  float* d_words_parts = nullptr;       // (groups, Bc, D, TM), zero-initialised
  float* d_regions_acc = nullptr;       // (Bi, D, R), zero-initialised
};

// The kernels a backend launches for one call (the CUDA launcher takes one of these).
enum class WordRegionKernel { kSimilarityForward, kSimilarityBackward, kAttentionForward,
                              kAttentionBackward };

// A caption's length clamped into [0, T]: the kernels read words t < length only, so any
// length value is memory-safe without a check that reads cap_lens (the Python layer owns the
// rule that lengths lie in 1..T).
T2I_HOST_DEVICE inline int64_t caption_length(int64_t len, int64_t T) {
  return len < 0 ? 0 : len > T ? T : len;
}

// The upstream cosine u / max(|w| |c|, 1e-8) from u = w.c, w2 = |w|^2, c2 = |c|^2; den is the
// clamped denominator, and while clamped the norms get no gradient.
template <typename acc_t>
struct Cosine {
  acc_t cos, den;
  bool clamped;
};

template <typename acc_t>
T2I_HOST_DEVICE inline Cosine<acc_t> cosine(acc_t u, acc_t w2, acc_t c2) {
  using std::sqrt;
  const acc_t eps = acc_t(1e-8);
  const acc_t den = sqrt(w2) * sqrt(c2);
  const bool clamped = !(den > eps);
  const acc_t safe = clamped ? eps : den;
  return {u / safe, safe, clamped};
}

// Shapes of one call, read from its tensors, with the checks the kernels' memory accesses need
// (the input contract is checked once per call in t2i_fast/ops/word_region.py). Forward and
// backward bind the same way; backward adds the sizes of the tensors only it reads.

// regions (Bi, D, R), words (Bc, D, T), cap_lens (Bc,) int64.
inline WordRegionParams word_region_similarity_params(const at::Tensor& regions,
                                                      const at::Tensor& words,
                                                      const at::Tensor& cap_lens, double gamma1,
                                                      double gamma2) {
  constexpr const char* op = "word_region_similarity";
  check_dims(regions, 3, op, "regions", "(B_img, D, R)");
  check_dims(words, 3, op, "words", "(B_cap, D, T)");
  WordRegionParams p;
  p.Bi = regions.size(0);
  p.D = regions.size(1);
  p.R = regions.size(2);
  p.Bc = words.size(0);
  p.T = words.size(2);
  p.gamma1 = gamma1;
  p.gamma2 = gamma2;
  TORCH_CHECK(words.size(1) == p.D, op, ": words.shape[1] must equal the width D of regions = ",
              p.D, ", got shape ", words.sizes());
  check_like(words, regions, words.sizes(), op, "words", "regions", "(B_cap, D, T)");
  TORCH_CHECK(p.R > 0 && p.T > 0, op, ": regions and words must have at least one region and ",
              "one word slot, got R = ", p.R, ", T = ", p.T);
  check_typed(cap_lens, at::kLong, "an int64 tensor", regions, {p.Bc}, op, "cap_lens",
              "(B_cap,)");
  return p;
}

// grad_s (Bi, Bc), then the forward's inputs, lse (Bi, Bc, T) float32.
inline WordRegionParams word_region_similarity_backward_params(
    const at::Tensor& grad_s, const at::Tensor& regions, const at::Tensor& words,
    const at::Tensor& cap_lens, const at::Tensor& lse, double gamma1, double gamma2) {
  constexpr const char* op = "word_region_similarity_backward";
  WordRegionParams p = word_region_similarity_params(regions, words, cap_lens, gamma1, gamma2);
  check_like(grad_s, regions, {p.Bi, p.Bc}, op, "grad_s", "regions", "(B_img, B_cap)");
  check_typed(lse, at::kFloat, "a float32 tensor", regions, {p.Bi, p.Bc, p.T}, op, "lse",
              "(B_img, B_cap, T)");
  return p;
}

// words (B, D, T), regions (B, D, R), word_mask (B, T) bool or None.
inline WordRegionParams word_region_attention_params(const at::Tensor& words,
                                                     const at::Tensor& regions,
                                                     const std::optional<at::Tensor>& word_mask,
                                                     double gamma1) {
  constexpr const char* op = "word_region_attention";
  check_dims(words, 3, op, "words", "(B, D, T)");
  check_dims(regions, 3, op, "regions", "(B, D, R)");
  WordRegionParams p;
  p.Bi = p.Bc = words.size(0);
  p.D = words.size(1);
  p.T = words.size(2);
  p.R = regions.size(2);
  p.gamma1 = gamma1;
  check_like(regions, words, {p.Bi, p.D, p.R}, op, "regions", "words", "(B, D, R)");
  TORCH_CHECK(p.R > 0 && p.T > 0, op, ": regions and words must have at least one region and ",
              "one word slot, got R = ", p.R, ", T = ", p.T);
  p.has_mask = given(word_mask);
  if (p.has_mask) {
    check_typed(*word_mask, at::kBool, "bool (true = padded)", words, {p.Bi, p.T}, op,
                "word_mask", "(B, T)");
  }
  return p;
}

// grad_context (B, D, T), grad_attn (B, T, R) or None/empty, then the forward's inputs, lse (B, T).
inline WordRegionParams word_region_attention_backward_params(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_attn,
    const at::Tensor& words, const at::Tensor& regions,
    const std::optional<at::Tensor>& word_mask, const at::Tensor& lse, double gamma1) {
  constexpr const char* op = "word_region_attention_backward";
  WordRegionParams p = word_region_attention_params(words, regions, word_mask, gamma1);
  check_like(grad_context, words, {p.Bi, p.D, p.T}, op, "grad_context", "words", "(B, D, T)");
  p.has_grad_attn = given_grad(grad_attn);
  if (p.has_grad_attn) {
    check_like(*grad_attn, words, {p.Bi, p.T, p.R}, op, "grad_attn", "words", "(B, T, R)");
  }
  check_typed(lse, at::kFloat, "a float32 tensor", words, {p.Bi, p.T}, op, "lse", "(B, T)");
  return p;
}

}  // namespace t2i_fast

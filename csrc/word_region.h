// Parameters and argument checks of the word-region kernels (schemas in csrc/ops.cpp), shared by
// every backend: csrc/cpu/word_region.cpp and csrc/cuda/word_region.cpp include this file as is,
// so it depends on ATen's core tensor only.
//
// Both ops work per (word set, region set) pair. word_region_similarity pairs every image j with
// every caption i (Bi x Bc pairs); word_region_attention pairs index b with index b (B pairs, and
// then Bi = Bc = B). The checks here cover shapes, dtypes and devices; value checks that need the
// data (cap_lens in 1..T) are left to the backend that can afford them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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
  const int64_t* cap_lens = nullptr;   // (Bc,) in 1..T, similarity only
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

  template <typename T>
  static const T* as(const void* p) { return static_cast<const T*>(p); }
  template <typename T>
  static T* as(void* p) { return static_cast<T*>(p); }
};

namespace word_region_detail {

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                        const char* name, const char* what) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", what, " = ",
              expected, ", got ", t.sizes());
}

inline void check_lse(const at::Tensor& lse, const at::Tensor& ref, at::IntArrayRef expected,
                      const char* op, const char* what) {
  TORCH_CHECK(lse.defined() && lse.scalar_type() == at::kFloat, op,
              ": lse must be a float32 tensor (the forward's second output)");
  TORCH_CHECK(lse.device() == ref.device(), op, ": lse is on ", lse.device(),
              " but the features are on ", ref.device());
  check_shape(lse, expected, op, "lse", what);
}

// An optional gradient counts as given only when it holds data: autograd may hand over an empty
// tensor for an output that was not used.
inline bool given_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0;
}

}  // namespace word_region_detail

// regions (Bi, D, R), words (Bc, D, T), cap_lens (Bc,) int64.
inline WordRegionParams word_region_similarity_forward_params(const at::Tensor& regions,
                                                              const at::Tensor& words,
                                                              const at::Tensor& cap_lens,
                                                              double gamma1, double gamma2) {
  namespace d = word_region_detail;
  constexpr const char* op = "word_region_similarity";
  d::check_float(regions, op, "regions");
  d::check_like(words, regions, op, "words", "regions");
  TORCH_CHECK(regions.dim() == 3, op, ": regions must have shape (B_img, D, R), got ",
              regions.sizes());
  TORCH_CHECK(words.dim() == 3, op, ": words must have shape (B_cap, D, T), got ",
              words.sizes());
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
  TORCH_CHECK(p.R > 0 && p.T > 0, op, ": regions and words must have at least one region and ",
              "one word slot, got R = ", p.R, ", T = ", p.T);
  TORCH_CHECK(cap_lens.defined() && cap_lens.scalar_type() == at::kLong, op,
              ": cap_lens must be an int64 tensor");
  TORCH_CHECK(cap_lens.device() == regions.device(), op, ": cap_lens is on ", cap_lens.device(),
              " but the features are on ", regions.device());
  d::check_shape(cap_lens, {p.Bc}, op, "cap_lens", "(B_cap,)");
  return p;
}

// grad_s (Bi, Bc), then the forward's inputs, lse (Bi, Bc, T) float32.
inline WordRegionParams word_region_similarity_backward_params(
    const at::Tensor& grad_s, const at::Tensor& regions, const at::Tensor& words,
    const at::Tensor& cap_lens, const at::Tensor& lse, double gamma1, double gamma2) {
  namespace d = word_region_detail;
  constexpr const char* op = "word_region_similarity_backward";
  WordRegionParams p =
      word_region_similarity_forward_params(regions, words, cap_lens, gamma1, gamma2);
  d::check_like(grad_s, regions, op, "grad_s", "regions");
  d::check_shape(grad_s, {p.Bi, p.Bc}, op, "grad_s", "(B_img, B_cap)");
  d::check_lse(lse, regions, {p.Bi, p.Bc, p.T}, op, "(B_img, B_cap, T)");
  return p;
}

// words (B, D, T), regions (B, D, R), word_mask (B, T) bool or None.
inline WordRegionParams word_region_attention_forward_params(
    const at::Tensor& words, const at::Tensor& regions,
    const std::optional<at::Tensor>& word_mask, double gamma1) {
  namespace d = word_region_detail;
  constexpr const char* op = "word_region_attention";
  d::check_float(words, op, "words");
  d::check_like(regions, words, op, "regions", "words");
  TORCH_CHECK(words.dim() == 3, op, ": words must have shape (B, D, T), got ", words.sizes());
  TORCH_CHECK(regions.dim() == 3, op, ": regions must have shape (B, D, R), got ",
              regions.sizes());
  WordRegionParams p;
  p.Bi = p.Bc = words.size(0);
  p.D = words.size(1);
  p.T = words.size(2);
  p.R = regions.size(2);
  p.gamma1 = gamma1;
  TORCH_CHECK(regions.size(0) == p.Bi && regions.size(1) == p.D, op,
              ": regions must have shape (B, D, R) with (B, D) = (", p.Bi, ", ", p.D,
              ") of words, got ", regions.sizes());
  TORCH_CHECK(p.R > 0 && p.T > 0, op, ": regions and words must have at least one region and ",
              "one word slot, got R = ", p.R, ", T = ", p.T);
  p.has_mask = word_mask.has_value() && word_mask->defined();
  if (p.has_mask) {
    TORCH_CHECK(word_mask->scalar_type() == at::kBool, op,
                ": word_mask must have dtype bool (true = padded), got ",
                word_mask->scalar_type());
    TORCH_CHECK(word_mask->device() == words.device(), op, ": word_mask is on ",
                word_mask->device(), " but words are on ", words.device());
    d::check_shape(*word_mask, {p.Bi, p.T}, op, "word_mask", "(B, T)");
  }
  return p;
}

// grad_context (B, D, T), grad_attn (B, T, R) or None/empty, then the forward's inputs, lse (B, T).
inline WordRegionParams word_region_attention_backward_params(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_attn,
    const at::Tensor& words, const at::Tensor& regions,
    const std::optional<at::Tensor>& word_mask, const at::Tensor& lse, double gamma1) {
  namespace d = word_region_detail;
  constexpr const char* op = "word_region_attention_backward";
  WordRegionParams p = word_region_attention_forward_params(words, regions, word_mask, gamma1);
  d::check_like(grad_context, words, op, "grad_context", "words");
  d::check_shape(grad_context, {p.Bi, p.D, p.T}, op, "grad_context", "(B, D, T)");
  p.has_grad_attn = d::given_grad(grad_attn);
  if (p.has_grad_attn) {
    d::check_like(*grad_attn, words, op, "grad_attn", "words");
    d::check_shape(*grad_attn, {p.Bi, p.T, p.R}, op, "grad_attn", "(B, T, R)");
  }
  d::check_lse(lse, words, {p.Bi, p.T}, op, "(B, T)");
  return p;
}

}  // namespace t2i_fast

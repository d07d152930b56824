// CUDA bindings of the word-region family: argument checks (shared with the CPU kernels in
// csrc/word_region.h) and the CUDA limits (csrc/common.h), device guard, current stream, dtype
// dispatch, output and scratch allocation, and the deterministic sums of the similarity
// backward's partials. The kernels and their launcher are in word_region.cu.
#include "../word_region.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace t2i_fast {
namespace cuda {

// word_region.cu
template <typename scalar_t>
void word_region_launch(WordRegionKernel which, const WordRegionParams& p, cudaStream_t stream);

namespace {

using at::Tensor;
using std::optional;

// p after the CUDA limits are checked, with its slot bucket.
WordRegionParams for_cuda(WordRegionParams p, const char* op) {
  check_cuda_limits(op, p.T, std::max(p.Bi, p.Bc));
  p.TM = cuda_slot_bucket(p.T);
  return p;
}

// Runs `which` on the current stream for features of dtype.
void run_kernel(WordRegionKernel which, const WordRegionParams& p, at::ScalarType dtype) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(dtype, "word_region (cuda)",
                          [&] { word_region_launch<scalar_t>(which, p, stream); });
}

std::tuple<Tensor, Tensor> similarity_forward(const Tensor& regions_in, const Tensor& words_in,
                                              const Tensor& cap_lens_in, double gamma1,
                                              double gamma2) {
  WordRegionParams p = for_cuda(
      word_region_similarity_params(regions_in, words_in, cap_lens_in, gamma1, gamma2),
      "word_region_similarity");
  const c10::cuda::CUDAGuard guard(regions_in.device());
  const Tensor regions = regions_in.contiguous(), words = words_in.contiguous(),
               cap_lens = cap_lens_in.contiguous();
  Tensor sim = at::empty({p.Bi, p.Bc}, regions.options());
  Tensor lse = at::empty({p.Bi, p.Bc, p.T}, regions.options().dtype(at::kFloat));
  if (p.Bi == 0 || p.Bc == 0) return {sim, lse};
  p.regions = regions.const_data_ptr();
  p.words = words.const_data_ptr();
  p.cap_lens = cap_lens.const_data_ptr<int64_t>();
  p.sim = sim.data_ptr();
  p.lse_out = lse.data_ptr<float>();
  run_kernel(WordRegionKernel::kSimilarityForward, p, regions.scalar_type());
  return {sim, lse};
}

std::tuple<Tensor, Tensor> similarity_backward(const Tensor& grad_s_in, const Tensor& regions_in,
                                               const Tensor& words_in, const Tensor& cap_lens_in,
                                               const Tensor& lse_in, double gamma1,
                                               double gamma2) {
  WordRegionParams p = for_cuda(word_region_similarity_backward_params(
      grad_s_in, regions_in, words_in, cap_lens_in, lse_in, gamma1, gamma2),
      "word_region_similarity_backward");
  const c10::cuda::CUDAGuard guard(regions_in.device());
  const Tensor regions = regions_in.contiguous(), words = words_in.contiguous(),
               cap_lens = cap_lens_in.contiguous(), grad_s = grad_s_in.contiguous(),
               lse = lse_in.contiguous();
  const auto f32 = regions.options().dtype(at::kFloat);
  if (p.Bi == 0 || p.Bc == 0) {
    return {at::zeros(regions.sizes(), regions.options()),
            at::zeros(words.sizes(), words.options())};
  }
  // Pass 1 runs one block per caption and image group: enough groups for about two blocks per
  // SM, at most one image each.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.groups = std::max<int64_t>(1, std::min<int64_t>(p.Bi, (2 * sms + p.Bc - 1) / p.Bc));
  Tensor words_padded = at::zeros({p.Bc, p.D, p.TM}, f32);
  words_padded.narrow(2, 0, p.T).copy_(words);
  Tensor grad_context_pairs = at::empty({p.Bi, p.Bc, p.D, p.TM}, f32);
  Tensor delta_pairs = at::empty({p.Bi, p.Bc, p.TM}, f32);
  Tensor d_words_parts = at::zeros({p.groups, p.Bc, p.D, p.TM}, f32);
  Tensor d_regions_acc = at::zeros({p.Bi, p.D, p.R}, f32);
  p.regions = regions.const_data_ptr();
  p.words = words.const_data_ptr();
  p.cap_lens = cap_lens.const_data_ptr<int64_t>();
  p.grad_s = grad_s.const_data_ptr();
  p.lse = lse.const_data_ptr<float>();
  p.words_padded = words_padded.const_data_ptr<float>();
  p.grad_context_pairs = grad_context_pairs.data_ptr<float>();
  p.delta_pairs = delta_pairs.data_ptr<float>();
  p.d_words_parts = d_words_parts.data_ptr<float>();
  p.d_regions_acc = d_regions_acc.data_ptr<float>();
  run_kernel(WordRegionKernel::kSimilarityBackward, p, regions.scalar_type());
  // d_words: the image groups' partials summed in group order (deterministic).
  Tensor d_words = d_words_parts.sum(0).narrow(2, 0, p.T).to(regions.scalar_type()).contiguous();
  Tensor d_regions = d_regions_acc.to(regions.scalar_type());
  return {d_regions, d_words};
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(const Tensor& words_in,
                                                     const Tensor& regions_in,
                                                     const optional<Tensor>& word_mask_in,
                                                     double gamma1) {
  WordRegionParams p =
      for_cuda(word_region_attention_params(words_in, regions_in, word_mask_in, gamma1),
               "word_region_attention");
  const c10::cuda::CUDAGuard guard(words_in.device());
  const Tensor words = words_in.contiguous(), regions = regions_in.contiguous();
  const Tensor mask = contiguous_if_given(word_mask_in);
  Tensor context = at::empty({p.Bi, p.D, p.T}, words.options());
  Tensor attn = at::empty({p.Bi, p.T, p.R}, words.options());
  Tensor lse = at::empty({p.Bi, p.T}, words.options().dtype(at::kFloat));
  if (p.Bi == 0) return {context, attn, lse};
  p.words = words.const_data_ptr();
  p.regions = regions.const_data_ptr();
  p.word_mask = static_cast<const bool*>(data_or_null(mask));
  p.context = context.data_ptr();
  p.attn = attn.data_ptr();
  p.lse_out = lse.data_ptr<float>();
  run_kernel(WordRegionKernel::kAttentionForward, p, words.scalar_type());
  return {context, attn, lse};
}

std::tuple<Tensor, Tensor> attention_backward(const Tensor& grad_context_in,
                                              const optional<Tensor>& grad_attn_in,
                                              const Tensor& words_in, const Tensor& regions_in,
                                              const optional<Tensor>& word_mask_in,
                                              const Tensor& lse_in, double gamma1) {
  WordRegionParams p = for_cuda(word_region_attention_backward_params(
      grad_context_in, grad_attn_in, words_in, regions_in, word_mask_in, lse_in, gamma1),
      "word_region_attention_backward");
  const c10::cuda::CUDAGuard guard(words_in.device());
  const Tensor words = words_in.contiguous(), regions = regions_in.contiguous(),
               grad_context = grad_context_in.contiguous(), lse = lse_in.contiguous();
  const Tensor mask = contiguous_if_given(word_mask_in);
  const Tensor grad_attn = p.has_grad_attn ? grad_attn_in->contiguous() : Tensor();
  Tensor d_words = at::empty({p.Bi, p.D, p.T}, words.options());
  Tensor d_regions = at::empty({p.Bi, p.D, p.R}, words.options());
  if (p.Bi == 0) return {d_words, d_regions};
  p.words = words.const_data_ptr();
  p.regions = regions.const_data_ptr();
  p.word_mask = static_cast<const bool*>(data_or_null(mask));
  p.grad_context = grad_context.const_data_ptr();
  p.grad_attn = p.has_grad_attn ? grad_attn.const_data_ptr() : nullptr;
  p.lse = lse.const_data_ptr<float>();
  p.d_words = d_words.data_ptr();
  p.d_regions = d_regions.data_ptr();
  run_kernel(WordRegionKernel::kAttentionBackward, p, words.scalar_type());
  return {d_words, d_regions};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2i_fast_C, CUDA, m) {
  m.impl("word_region_similarity_forward", &similarity_forward);
  m.impl("word_region_similarity_backward", &similarity_backward);
  m.impl("word_region_attention_forward", &attention_forward);
  m.impl("word_region_attention_backward", &attention_backward);
}

}  // namespace cuda
}  // namespace t2i_fast

// CUDA bindings of the word-region family: argument checks (shared with the CPU kernels in
// csrc/word_region.h), device guard, current stream, dtype dispatch, output and scratch
// allocation, and the deterministic sums of the similarity backward's partials. The kernels are
// in word_region.cu.
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
void word_region_similarity_forward_launch(const WordRegionParams& p, cudaStream_t stream);
template <typename scalar_t>
void word_region_similarity_backward_launch(const WordRegionParams& p, cudaStream_t stream);
template <typename scalar_t>
void word_region_attention_forward_launch(const WordRegionParams& p, cudaStream_t stream);
template <typename scalar_t>
void word_region_attention_backward_launch(const WordRegionParams& p, cudaStream_t stream);

namespace {

using at::Tensor;
using std::optional;

// The kernels keep a pair's T word scores per region in registers, in buckets of 8, at most 32.
constexpr int64_t kMaxWords = 32;

#define T2I_DISPATCH_GPU_FLOATS(dtype, name, ...)             \
  AT_DISPATCH_SWITCH(dtype, name,                            \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

void check_cuda(WordRegionParams& p, const Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, " (cuda): the inputs must be CUDA tensors");
  TORCH_CHECK(x.scalar_type() != at::kDouble, op,
              " (cuda): float64 is not supported on the GPU; use impl='reference'");
  TORCH_CHECK(p.T <= kMaxWords, op, " (cuda): at most ", kMaxWords, " word slots are supported, ",
              "got T = ", p.T);
  TORCH_CHECK(p.Bi <= 65535 && p.Bc <= 65535, op, " (cuda): batches above 65535 are not supported");
  p.TM = (p.T + 7) / 8 * 8;
}

std::tuple<Tensor, Tensor> similarity_forward(const Tensor& regions_in, const Tensor& words_in,
                                              const Tensor& cap_lens_in, double gamma1,
                                              double gamma2) {
  constexpr const char* op = "word_region_similarity";
  WordRegionParams p =
      word_region_similarity_forward_params(regions_in, words_in, cap_lens_in, gamma1, gamma2);
  check_cuda(p, regions_in, op);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(regions.scalar_type(), "word_region_similarity_forward", [&] {
    word_region_similarity_forward_launch<scalar_t>(p, stream);
  });
  return {sim, lse};
}

std::tuple<Tensor, Tensor> similarity_backward(const Tensor& grad_s_in, const Tensor& regions_in,
                                               const Tensor& words_in, const Tensor& cap_lens_in,
                                               const Tensor& lse_in, double gamma1,
                                               double gamma2) {
  constexpr const char* op = "word_region_similarity_backward";
  WordRegionParams p = word_region_similarity_backward_params(
      grad_s_in, regions_in, words_in, cap_lens_in, lse_in, gamma1, gamma2);
  check_cuda(p, regions_in, op);
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(regions.scalar_type(), "word_region_similarity_backward", [&] {
    word_region_similarity_backward_launch<scalar_t>(p, stream);
  });
  // d_words: the image groups' partials summed in group order (deterministic).
  Tensor d_words = d_words_parts.sum(0).narrow(2, 0, p.T).to(regions.scalar_type()).contiguous();
  Tensor d_regions = d_regions_acc.to(regions.scalar_type());
  return {d_regions, d_words};
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(const Tensor& words_in,
                                                     const Tensor& regions_in,
                                                     const optional<Tensor>& word_mask_in,
                                                     double gamma1) {
  constexpr const char* op = "word_region_attention";
  WordRegionParams p =
      word_region_attention_forward_params(words_in, regions_in, word_mask_in, gamma1);
  check_cuda(p, words_in, op);
  const c10::cuda::CUDAGuard guard(words_in.device());
  const Tensor words = words_in.contiguous(), regions = regions_in.contiguous();
  const Tensor mask = p.has_mask ? word_mask_in->contiguous() : Tensor();
  Tensor context = at::empty({p.Bi, p.D, p.T}, words.options());
  Tensor attn = at::empty({p.Bi, p.T, p.R}, words.options());
  Tensor lse = at::empty({p.Bi, p.T}, words.options().dtype(at::kFloat));
  if (p.Bi == 0) return {context, attn, lse};
  p.words = words.const_data_ptr();
  p.regions = regions.const_data_ptr();
  p.word_mask = p.has_mask ? mask.const_data_ptr<bool>() : nullptr;
  p.context = context.data_ptr();
  p.attn = attn.data_ptr();
  p.lse_out = lse.data_ptr<float>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(words.scalar_type(), "word_region_attention_forward", [&] {
    word_region_attention_forward_launch<scalar_t>(p, stream);
  });
  return {context, attn, lse};
}

std::tuple<Tensor, Tensor> attention_backward(const Tensor& grad_context_in,
                                              const optional<Tensor>& grad_attn_in,
                                              const Tensor& words_in, const Tensor& regions_in,
                                              const optional<Tensor>& word_mask_in,
                                              const Tensor& lse_in, double gamma1) {
  constexpr const char* op = "word_region_attention_backward";
  WordRegionParams p = word_region_attention_backward_params(
      grad_context_in, grad_attn_in, words_in, regions_in, word_mask_in, lse_in, gamma1);
  check_cuda(p, words_in, op);
  const c10::cuda::CUDAGuard guard(words_in.device());
  const Tensor words = words_in.contiguous(), regions = regions_in.contiguous(),
               grad_context = grad_context_in.contiguous(), lse = lse_in.contiguous();
  const Tensor mask = p.has_mask ? word_mask_in->contiguous() : Tensor();
  const Tensor grad_attn = p.has_grad_attn ? grad_attn_in->contiguous() : Tensor();
  Tensor d_words = at::empty({p.Bi, p.D, p.T}, words.options());
  Tensor d_regions = at::empty({p.Bi, p.D, p.R}, words.options());
  if (p.Bi == 0) return {d_words, d_regions};
  p.words = words.const_data_ptr();
  p.regions = regions.const_data_ptr();
  p.word_mask = p.has_mask ? mask.const_data_ptr<bool>() : nullptr;
  p.grad_context = grad_context.const_data_ptr();
  p.grad_attn = p.has_grad_attn ? grad_attn.const_data_ptr() : nullptr;
  p.lse = lse.const_data_ptr<float>();
  p.d_words = d_words.data_ptr();
  p.d_regions = d_regions.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(words.scalar_type(), "word_region_attention_backward", [&] {
    word_region_attention_backward_launch<scalar_t>(p, stream);
  });
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

// CUDA bindings of the dynamic-memory family: argument checks (shared with the CPU kernels in
// csrc/dynamic_memory.h) and the CUDA limits (csrc/common.h), device guard, current stream,
// dtype dispatch, output allocation and the deterministic sum of the backward's per-block
// partials. The kernels and their launcher are in dynamic_memory.cu.
#include "../dynamic_memory.h"

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

// dynamic_memory.cu
template <typename scalar_t>
void dynamic_memory_launch(const DynamicMemoryParams& p, bool backward, int tm,
                           int blocks_per_image, float* partials, cudaStream_t stream);
int64_t dynamic_memory_partial_floats(bool attn, bool gate, int64_t C, int64_t Cv, int64_t tm);

namespace {

using at::Tensor;
using std::optional;

// The kernels keep T scores per pixel in registers; without key/value no slots exist.
int slot_bucket(const DynamicMemoryParams& p) {
  return p.has_attn ? cuda_slot_bucket(p.T) : 4;
}

// Runs the forward kernel, or with `backward` the backward kernel, on the current stream.
void run_kernel(const DynamicMemoryParams& p, bool backward, at::ScalarType dtype, int blocks,
                float* partials) {
  check_cuda_limits("dynamic_memory", p.T, p.B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  T2I_DISPATCH_GPU_FLOATS(dtype, "dynamic_memory (cuda)", [&] {
    dynamic_memory_launch<scalar_t>(p, backward, slot_bucket(p), blocks, partials, stream);
  });
}

// Blocks per image: enough for `waves` blocks per SM over the whole batch, at most one per tile.
int blocks_per_image(const DynamicMemoryParams& p, int64_t pixels_per_block, int64_t waves) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = (p.N + pixels_per_block - 1) / pixels_per_block;
  const int64_t want = (waves * sms + p.B - 1) / p.B;
  return static_cast<int>(std::max<int64_t>(1, std::min(tiles, want)));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> forward(
    const Tensor& h_in, const optional<Tensor>& o_in, const optional<Tensor>& key_in,
    const optional<Tensor>& value_in, const optional<Tensor>& mask_in,
    const optional<Tensor>& gate_weight_in, const optional<Tensor>& gate_bias_in, double scale,
    bool mask_compat, bool return_attn, bool return_gate) {
  DynamicMemoryParams p =
      dynamic_memory_forward_params(h_in, o_in, key_in, value_in, mask_in, gate_weight_in,
                                    gate_bias_in, scale, mask_compat, return_attn, return_gate);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const DynamicMemoryInputs in = bind_forward_inputs(p, h_in, o_in, key_in, value_in, mask_in,
                                                     gate_weight_in, gate_bias_in);
  const Tensor &h = in.h, &o = in.o;
  const auto opts = h.options();
  Tensor lse = p.has_attn ? at::empty({p.B, p.N}, opts.dtype(at::kFloat))
                          : at::empty({0}, opts.dtype(at::kFloat));
  Tensor attn = p.return_attn ? at::empty({p.B, p.T, p.H, p.W}, opts) : at::empty({0}, opts);
  if (!p.has_attn && !p.has_gate) {  // o alone: out = o
    return {o.clone(), lse, attn, at::empty({0}, opts)};
  }
  Tensor out = at::empty({p.B, p.Cout, p.H, p.W}, opts);
  Tensor gate = p.return_gate ? at::empty({p.B, 1, p.H, p.W}, opts) : at::empty({0}, opts);
  if (p.N == 0 || p.B == 0) return {out, lse, attn, gate};
  p.out = out.data_ptr();
  p.lse_out = p.has_attn ? lse.data_ptr<float>() : nullptr;
  p.attn = p.return_attn ? attn.data_ptr() : nullptr;
  p.gate = p.return_gate ? gate.data_ptr() : nullptr;
  run_kernel(p, false, h.scalar_type(), blocks_per_image(p, 256, 8), nullptr);
  return {out, lse, attn, gate};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
    const Tensor& grad_out_in, const optional<Tensor>& grad_attn_in,
    const optional<Tensor>& grad_gate_in, const Tensor& h_in, const optional<Tensor>& o_in,
    const optional<Tensor>& key_in, const optional<Tensor>& value_in,
    const optional<Tensor>& mask_in, const optional<Tensor>& gate_weight_in,
    const optional<Tensor>& gate_bias_in, const Tensor& lse_in, double scale, bool mask_compat) {
  DynamicMemoryParams p = dynamic_memory_backward_params(
      grad_out_in, grad_attn_in, grad_gate_in, h_in, o_in, key_in, value_in, mask_in,
      gate_weight_in, gate_bias_in, lse_in, scale, mask_compat);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const DynamicMemoryInputs in = bind_backward_inputs(
      p, grad_out_in, grad_attn_in, grad_gate_in, h_in, o_in, key_in, value_in, mask_in,
      gate_weight_in, gate_bias_in, lse_in);
  const Tensor &grad_out = in.grad_out, &h = in.h, &o = in.o;
  const auto opts = h.options();
  const auto empty = at::empty({0}, opts);
  if (!p.has_attn && !p.has_gate) {  // out = o
    return {at::zeros_like(h), grad_out.clone(), empty, empty, empty, empty};
  }
  Tensor dh = at::empty(h.sizes(), opts);
  Tensor d_o = o.defined() ? at::empty(o.sizes(), opts) : empty;
  const int tm = slot_bucket(p);
  const int blocks = blocks_per_image(p, 128, 4);
  const int64_t per_block = dynamic_memory_partial_floats(p.has_attn, p.has_gate, p.C, p.Cv, tm);
  Tensor partials = at::empty({p.B, blocks, per_block}, opts.dtype(at::kFloat));
  if (p.N == 0 || p.B == 0) partials.zero_();
  p.dh = dh.data_ptr();
  p.d_o = o.defined() ? d_o.data_ptr() : nullptr;
  if (p.N > 0 && p.B > 0) {
    run_kernel(p, true, h.scalar_type(), blocks, partials.data_ptr<float>());
  }
  // Sum the partials over the blocks of each image (a fixed-order reduction: deterministic).
  const Tensor sums = partials.sum(1);  // (B, per_block)
  Tensor dkey = empty, dvalue = empty, dgate_weight = empty, dgate_bias = empty;
  int64_t at_col = 0;
  if (p.has_attn) {
    dkey = sums.narrow(1, 0, p.C * tm).view({p.B, p.C, tm}).narrow(2, 0, p.T).to(h.scalar_type())
               .contiguous();
    dvalue = sums.narrow(1, p.C * tm, p.Cv * tm).view({p.B, p.Cv, tm}).narrow(2, 0, p.T)
                 .to(h.scalar_type()).contiguous();
    at_col = (p.C + p.Cv) * tm;
  }
  if (p.has_gate) {
    const Tensor gate_sums = sums.narrow(1, at_col, 2 * p.C + 1).sum(0);
    dgate_weight = gate_sums.narrow(0, 0, 2 * p.C).to(h.scalar_type()).contiguous();
    dgate_bias = gate_sums.narrow(0, 2 * p.C, 1).to(h.scalar_type()).contiguous();
  }
  return {dh, d_o, dkey, dvalue, dgate_weight, dgate_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(t2i_fast_C, CUDA, m) {
  m.impl("dynamic_memory_forward", &forward);
  m.impl("dynamic_memory_backward", &backward);
}

}  // namespace cuda
}  // namespace t2i_fast

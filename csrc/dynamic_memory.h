// Parameters and argument checks of the dynamic-memory kernels (schemas in csrc/ops.cpp), shared
// by csrc/cpu/dynamic_memory.cpp, csrc/cuda/dynamic_memory_dispatch.cpp and
// csrc/cuda/dynamic_memory.cu, so it depends on ATen's core tensor only.
#pragma once

#include "common.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <type_traits>

namespace t2i_fast {

// One call of dynamic_memory_forward/backward. N = H*W pixels. The backends make every tensor
// contiguous before binding it, so each pointer addresses the row-major layout noted beside it
// and the strides follow from the shapes.
struct DynamicMemoryParams {
  int64_t B = 0;     // batch
  int64_t C = 0;     // channels of h (and of o)
  int64_t Cv = 0;    // channels of value; Cv == C when the gate follows the read
  int64_t Cout = 0;  // channels of out: Cv with key/value, else C
  int64_t H = 0, W = 0, N = 0;
  int64_t T = 0;     // memory slots; 0 without key/value

  bool has_attn = false;     // key/value given: o = softmax(scale * h^T key) value
  bool has_gate = false;     // gate_weight/gate_bias given: out = h*(1-g) + g*o; else out = o
  bool has_mask = false;
  bool mask_compat = false;  // pixel (b, n) uses mask row (b*N + n) % B instead of b
  bool return_attn = false;  // forward: fill attn (only with has_attn)
  bool return_gate = false;  // forward: fill gate (only with has_gate)
  bool has_grad_attn = false;  // backward: grad_attn given (non-empty)
  bool has_grad_gate = false;  // backward: grad_gate given (non-empty)
  double scale = 1.0;

  // Inputs, element type = h's dtype unless noted.
  const void* h = nullptr;            // (B, C, N)
  const void* o = nullptr;            // (B, C, N) or null
  const void* key = nullptr;          // (B, C, T) or null
  const void* value = nullptr;        // (B, Cv, T) or null
  const bool* mask = nullptr;         // (B, T), true = padded slot, or null
  const void* gate_weight = nullptr;  // (2C,) = [w_h; w_o] or null
  const void* gate_bias = nullptr;    // (1,) or null
  const float* lse = nullptr;         // (B, N), backward only; +inf on fully masked rows
  const void* grad_out = nullptr;     // (B, Cout, N), backward only
  const void* grad_attn = nullptr;    // (B, T, N) or null, backward only
  const void* grad_gate = nullptr;    // (B, N) or null, backward only

  // Forward outputs: out (B, Cout, N); lse (B, N) float32; attn (B, T, N); gate (B, N).
  void* out = nullptr;
  float* lse_out = nullptr;
  void* attn = nullptr;
  void* gate = nullptr;
  // Backward outputs: dh (B, C, N); d_o (B, C, N); dkey (B, C, T); dvalue (B, Cv, T);
  // dgate_weight (2C,); dgate_bias (1,).
  void* dh = nullptr;
  void* d_o = nullptr;
  void* dkey = nullptr;
  void* dvalue = nullptr;
  void* dgate_weight = nullptr;
  void* dgate_bias = nullptr;
};

// The mask row that pixel n of image b reads with mask_compat: upstream tiles the (B, T) mask
// over the B*N pixel rows with mask.repeat(N, 1) (AttnGAN issue #93), so row b*N + n gets row
// (b*N + n) mod B.
T2I_HOST_DEVICE inline int64_t mask_compat_row(int64_t b, int64_t n, int64_t N, int64_t B) {
  return (b * N + n) % B;
}

// Shapes and flags of one call, read from its tensors, with the checks the kernels' memory
// accesses need. Forward and backward bind the same way; the input contract (floating dtypes,
// what the ops accept) is checked once per call in t2i_fast/ops/dynamic_memory.py.
inline DynamicMemoryParams dynamic_memory_params(
    const at::Tensor& h, const std::optional<at::Tensor>& o, const std::optional<at::Tensor>& key,
    const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    double scale, bool mask_compat) {
  constexpr const char* op = "dynamic_memory";
  check_dims(h, 4, op, "h", "(B, C, H, W)");
  DynamicMemoryParams p;
  p.B = h.size(0);
  p.C = h.size(1);
  p.H = h.size(2);
  p.W = h.size(3);
  p.N = p.H * p.W;
  p.has_attn = given(key);
  p.has_gate = given(gate_weight);
  p.has_mask = given(mask);
  p.mask_compat = mask_compat;
  p.scale = scale;

  TORCH_CHECK(given(key) == given(value), op, ": key and value must be given together");
  TORCH_CHECK(given(o) != p.has_attn, op,
              ": give either o (response gate) or key/value (memory read), not ",
              p.has_attn ? "both" : "neither");
  TORCH_CHECK(given(gate_weight) == given(gate_bias), op,
              ": gate_weight and gate_bias must be given together");
  if (p.has_attn) {
    check_dims(*key, 3, op, "key", "(B, C, T)");
    check_dims(*value, 3, op, "value", "(B, Cv, T)");
    p.T = key->size(2);
    p.Cv = p.Cout = value->size(1);
    TORCH_CHECK(p.T > 0, op, ": key needs at least one slot");
    check_like(*key, h, {p.B, p.C, p.T}, op, "key", "h", "(B, C, T)");
    check_like(*value, h, {p.B, p.Cv, p.T}, op, "value", "h", "(B, Cv, T)");
    TORCH_CHECK(!p.has_gate || p.Cv == p.C, op, ": the gate needs value channels Cv ", p.Cv,
                " equal to the channels C ", p.C, " of h");
  } else {
    check_like(*o, h, h.sizes(), op, "o", "h", "(B, C, H, W)");
    p.Cv = p.Cout = p.C;
  }
  if (p.has_mask) {
    TORCH_CHECK(p.has_attn, op, ": mask needs key/value");
    check_typed(*mask, at::kBool, "bool", h, {p.B, p.T}, op, "mask", "(B, T)");
  }
  if (p.has_gate) {
    check_like(*gate_weight, h, {2 * p.C}, op, "gate_weight", "h", "(2C,)");
    check_like(*gate_bias, h, {1}, op, "gate_bias", "h", "(1,)");
  }
  return p;
}

inline DynamicMemoryParams dynamic_memory_forward_params(
    const at::Tensor& h, const std::optional<at::Tensor>& o, const std::optional<at::Tensor>& key,
    const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    double scale, bool mask_compat, bool return_attn, bool return_gate) {
  DynamicMemoryParams p =
      dynamic_memory_params(h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat);
  p.return_attn = return_attn && p.has_attn;
  p.return_gate = return_gate && p.has_gate;
  return p;
}

// Backward binds the saved forward inputs as forward does and adds the sizes of the incoming
// gradients and of lse, which its kernels read.
inline DynamicMemoryParams dynamic_memory_backward_params(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_attn,
    const std::optional<at::Tensor>& grad_gate, const at::Tensor& h,
    const std::optional<at::Tensor>& o, const std::optional<at::Tensor>& key,
    const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    const at::Tensor& lse, double scale, bool mask_compat) {
  constexpr const char* op = "dynamic_memory_backward";
  DynamicMemoryParams p =
      dynamic_memory_params(h, o, key, value, mask, gate_weight, gate_bias, scale, mask_compat);
  check_like(grad_out, h, {p.B, p.Cout, p.H, p.W}, op, "grad_out", "h", "(B, Cout, H, W)");
  p.has_grad_attn = p.has_attn && given_grad(grad_attn);
  p.has_grad_gate = p.has_gate && given_grad(grad_gate);
  if (p.has_grad_attn) {
    check_like(*grad_attn, h, {p.B, p.T, p.H, p.W}, op, "grad_attn", "h", "(B, T, H, W)");
  }
  if (p.has_grad_gate) {
    check_like(*grad_gate, h, {p.B, 1, p.H, p.W}, op, "grad_gate", "h", "(B, 1, H, W)");
  }
  if (p.has_attn) {
    check_typed(lse, at::kFloat, "a float32 tensor", h, {p.B, p.N}, op, "lse", "(B, N)");
  }
  return p;
}

// Calls f(std::bool_constant<has_attn>, std::bool_constant<has_gate>) for p's variant, so that
// each variant is its own instantiation of the kernels.
template <typename F>
void with_variant(const DynamicMemoryParams& p, const F& f) {
  if (p.has_attn && p.has_gate) f(std::true_type{}, std::true_type{});
  else if (p.has_attn) f(std::true_type{}, std::false_type{});
  else if (p.has_gate) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// The inputs of one call made contiguous (undefined when absent). They own the memory the
// bound DynamicMemoryParams point into, so they must outlive the kernel launch.
struct DynamicMemoryInputs {
  at::Tensor h, o, key, value, mask, gate_weight, gate_bias;
  at::Tensor grad_out, grad_attn, grad_gate, lse;  // backward only
};

// Makes the forward inputs contiguous and points p's input pointers at them.
inline DynamicMemoryInputs bind_forward_inputs(
    DynamicMemoryParams& p, const at::Tensor& h, const std::optional<at::Tensor>& o,
    const std::optional<at::Tensor>& key, const std::optional<at::Tensor>& value,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias) {
  DynamicMemoryInputs in;
  in.h = h.contiguous();
  in.o = contiguous_if_given(o);
  in.key = contiguous_if_given(key);
  in.value = contiguous_if_given(value);
  in.mask = contiguous_if_given(mask);
  in.gate_weight = contiguous_if_given(gate_weight);
  in.gate_bias = contiguous_if_given(gate_bias);
  p.h = data_or_null(in.h);
  p.o = data_or_null(in.o);
  p.key = data_or_null(in.key);
  p.value = data_or_null(in.value);
  p.mask = static_cast<const bool*>(data_or_null(in.mask));
  p.gate_weight = data_or_null(in.gate_weight);
  p.gate_bias = data_or_null(in.gate_bias);
  return in;
}

// The same for backward: the forward inputs plus the incoming gradients and lse.
inline DynamicMemoryInputs bind_backward_inputs(
    DynamicMemoryParams& p, const at::Tensor& grad_out,
    const std::optional<at::Tensor>& grad_attn, const std::optional<at::Tensor>& grad_gate,
    const at::Tensor& h, const std::optional<at::Tensor>& o,
    const std::optional<at::Tensor>& key, const std::optional<at::Tensor>& value,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias, const at::Tensor& lse) {
  DynamicMemoryInputs in =
      bind_forward_inputs(p, h, o, key, value, mask, gate_weight, gate_bias);
  in.grad_out = grad_out.contiguous();
  in.grad_attn = p.has_grad_attn ? grad_attn->contiguous() : at::Tensor();
  in.grad_gate = p.has_grad_gate ? grad_gate->contiguous() : at::Tensor();
  in.lse = p.has_attn ? lse.contiguous() : at::Tensor();
  p.grad_out = data_or_null(in.grad_out);
  p.grad_attn = data_or_null(in.grad_attn);
  p.grad_gate = data_or_null(in.grad_gate);
  p.lse = static_cast<const float*>(data_or_null(in.lse));
  return in;
}

}  // namespace t2i_fast

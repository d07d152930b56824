// Parameters and argument checks of the dynamic-memory kernels (schemas in csrc/ops.cpp), shared
// by every backend: csrc/cpu/dynamic_memory.cpp and a CUDA implementation include this file as is,
// so it depends on ATen's core tensor only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

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

  template <typename T>
  static const T* as(const void* p) { return static_cast<const T*>(p); }
  template <typename T>
  static T* as(void* p) { return static_cast<T*>(p); }
};

namespace detail {

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// An optional gradient counts as given only when it holds data: autograd may hand over an empty
// tensor for an output that was not requested.
inline bool given_grad(const std::optional<at::Tensor>& t) {
  return given(t) && t->numel() > 0;
}

inline void check_like(const at::Tensor& t, const at::Tensor& h, const char* name) {
  TORCH_CHECK(t.scalar_type() == h.scalar_type(), "dynamic_memory: ", name, " has dtype ",
              t.scalar_type(), " but h has ", h.scalar_type());
  TORCH_CHECK(t.device() == h.device(), "dynamic_memory: ", name, " is on ", t.device(),
              " but h is on ", h.device());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "dynamic_memory: ", name, " must have shape ", expected,
              ", got ", t.sizes());
}

}  // namespace detail

// Checks the forward schema's arguments and fills shapes and flags (not the pointers).
inline DynamicMemoryParams dynamic_memory_forward_params(
    const at::Tensor& h, const std::optional<at::Tensor>& o, const std::optional<at::Tensor>& key,
    const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    double scale, bool mask_compat, bool return_attn, bool return_gate) {
  using detail::given;
  TORCH_CHECK(h.defined() && h.dim() == 4, "dynamic_memory: h must have shape (B, C, H, W)");
  const auto dtype = h.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "dynamic_memory: h must be float16, bfloat16, float32 or float64, got ", dtype);
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

  TORCH_CHECK(given(key) == given(value), "dynamic_memory: key and value must be given together");
  TORCH_CHECK(given(o) != p.has_attn,
              "dynamic_memory: give either o (response gate) or key/value (memory read), not ",
              p.has_attn ? "both" : "neither");
  TORCH_CHECK(given(gate_weight) == given(gate_bias),
              "dynamic_memory: gate_weight and gate_bias must be given together");
  if (p.has_attn) {
    const at::Tensor& k = *key;
    const at::Tensor& v = *value;
    detail::check_like(k, h, "key");
    detail::check_like(v, h, "value");
    TORCH_CHECK(k.dim() == 3 && v.dim() == 3,
                "dynamic_memory: key and value must have shapes (B, C, T) and (B, Cv, T)");
    p.T = k.size(2);
    p.Cv = v.size(1);
    TORCH_CHECK(p.T > 0, "dynamic_memory: key needs at least one slot");
    detail::check_shape(k, {p.B, p.C, p.T}, "key");
    detail::check_shape(v, {p.B, p.Cv, p.T}, "value");
    p.Cout = p.Cv;
    TORCH_CHECK(!p.has_gate || p.Cv == p.C, "dynamic_memory: the gate needs value channels Cv ",
                p.Cv, " equal to the channels C ", p.C, " of h");
  } else {
    detail::check_like(*o, h, "o");
    detail::check_shape(*o, h.sizes(), "o");
    p.Cv = p.Cout = p.C;
  }
  if (p.has_mask) {
    TORCH_CHECK(p.has_attn, "dynamic_memory: mask needs key/value");
    TORCH_CHECK(mask->scalar_type() == at::kBool, "dynamic_memory: mask must be bool, got ",
                mask->scalar_type());
    TORCH_CHECK(mask->device() == h.device(), "dynamic_memory: mask is on ", mask->device(),
                " but h is on ", h.device());
    detail::check_shape(*mask, {p.B, p.T}, "mask");
  }
  if (p.has_gate) {
    detail::check_like(*gate_weight, h, "gate_weight");
    detail::check_like(*gate_bias, h, "gate_bias");
    detail::check_shape(*gate_weight, {2 * p.C}, "gate_weight");
    detail::check_shape(*gate_bias, {1}, "gate_bias");
  }
  p.return_attn = return_attn && p.has_attn;
  p.return_gate = return_gate && p.has_gate;
  return p;
}

// Checks the backward schema's arguments (the forward's plus the gradients and lse).
inline DynamicMemoryParams dynamic_memory_backward_params(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_attn,
    const std::optional<at::Tensor>& grad_gate, const at::Tensor& h,
    const std::optional<at::Tensor>& o, const std::optional<at::Tensor>& key,
    const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& gate_weight, const std::optional<at::Tensor>& gate_bias,
    const at::Tensor& lse, double scale, bool mask_compat) {
  DynamicMemoryParams p = dynamic_memory_forward_params(h, o, key, value, mask, gate_weight,
                                                        gate_bias, scale, mask_compat, false,
                                                        false);
  detail::check_like(grad_out, h, "grad_out");
  detail::check_shape(grad_out, {p.B, p.Cout, p.H, p.W}, "grad_out");
  p.has_grad_attn = detail::given_grad(grad_attn);
  p.has_grad_gate = detail::given_grad(grad_gate);
  if (p.has_grad_attn) {
    TORCH_CHECK(p.has_attn, "dynamic_memory: grad_attn needs key/value");
    detail::check_like(*grad_attn, h, "grad_attn");
    detail::check_shape(*grad_attn, {p.B, p.T, p.H, p.W}, "grad_attn");
  }
  if (p.has_grad_gate) {
    TORCH_CHECK(p.has_gate, "dynamic_memory: grad_gate needs gate_weight/gate_bias");
    detail::check_like(*grad_gate, h, "grad_gate");
    detail::check_shape(*grad_gate, {p.B, 1, p.H, p.W}, "grad_gate");
  }
  if (p.has_attn) {
    TORCH_CHECK(lse.scalar_type() == at::kFloat, "dynamic_memory: lse must be float32, got ",
                lse.scalar_type());
    TORCH_CHECK(lse.device() == h.device(), "dynamic_memory: lse is on ", lse.device(),
                " but h is on ", h.device());
    detail::check_shape(lse, {p.B, p.N}, "lse");
  }
  return p;
}

// The inputs of one call made contiguous (undefined when absent). They own the memory the
// bound DynamicMemoryParams point into, so they must outlive the kernel launch.
struct DynamicMemoryInputs {
  at::Tensor h, o, key, value, mask, gate_weight, gate_bias;
  at::Tensor grad_out, grad_attn, grad_gate, lse;  // backward only
};

namespace detail {

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return given(t) ? t->contiguous() : at::Tensor();
}

inline const void* ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

}  // namespace detail

// Makes the forward inputs contiguous and points p's input pointers at them.
inline DynamicMemoryInputs bind_forward_inputs(
    DynamicMemoryParams& p, const at::Tensor& h, const std::optional<at::Tensor>& o,
    const std::optional<at::Tensor>& key, const std::optional<at::Tensor>& value,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& gate_weight,
    const std::optional<at::Tensor>& gate_bias) {
  using detail::contiguous_or_undefined;
  using detail::ptr;
  DynamicMemoryInputs in;
  in.h = h.contiguous();
  in.o = contiguous_or_undefined(o);
  in.key = contiguous_or_undefined(key);
  in.value = contiguous_or_undefined(value);
  in.mask = contiguous_or_undefined(mask);
  in.gate_weight = contiguous_or_undefined(gate_weight);
  in.gate_bias = contiguous_or_undefined(gate_bias);
  p.h = ptr(in.h);
  p.o = ptr(in.o);
  p.key = ptr(in.key);
  p.value = ptr(in.value);
  p.mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  p.gate_weight = ptr(in.gate_weight);
  p.gate_bias = ptr(in.gate_bias);
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
  using detail::ptr;
  DynamicMemoryInputs in =
      bind_forward_inputs(p, h, o, key, value, mask, gate_weight, gate_bias);
  in.grad_out = grad_out.contiguous();
  in.grad_attn = p.has_grad_attn ? grad_attn->contiguous() : at::Tensor();
  in.grad_gate = p.has_grad_gate ? grad_gate->contiguous() : at::Tensor();
  in.lse = p.has_attn ? lse.contiguous() : at::Tensor();
  p.grad_out = ptr(in.grad_out);
  p.grad_attn = ptr(in.grad_attn);
  p.grad_gate = ptr(in.grad_gate);
  p.lse = in.lse.defined() ? in.lse.const_data_ptr<float>() : nullptr;
  return in;
}

}  // namespace t2i_fast

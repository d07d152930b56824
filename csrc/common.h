// What every binding of t2i_fast._C shares: the argument-check helpers, the gradient helpers,
// the dtype dispatch macros and the limits of the CUDA kernels. Included by the CPU sources and
// by the CUDA sources (.cpp and .cu), so it depends on ATen's core tensor only.
//
// Who checks what: the Python layer (t2i_fast/ops/) validates shapes, dtypes, devices and values
// once per call. The bindings keep only the checks that memory safety needs (defined tensors,
// consistent dims and sizes, equal dtypes and devices, the CUDA limits below) and read no tensor
// data, so no check synchronises with a device; the kernels stay memory-safe on any value.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

// Marks the small inline functions that CPU code and CUDA kernels share.
#ifdef __CUDACC__
#define T2I_HOST_DEVICE __host__ __device__
#else
#define T2I_HOST_DEVICE
#endif

// The CUDA kernels exist for float32, float16 and bfloat16; float64 gets ATen's "not implemented"
// error (the backend table does not offer it).
#define T2I_DISPATCH_GPU_FLOATS(dtype, name, ...)              \
  AT_DISPATCH_SWITCH(dtype, name,                             \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// The CPU kernels take every floating dtype.
#define T2I_DISPATCH_CPU_FLOATS(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

namespace t2i_fast {

// Limits of the CUDA kernels, exported by build_info() (csrc/ops.cpp) for the backend table.
// A call's T slots live in per-thread register arrays and 32-bit slot masks.
constexpr int64_t kCudaMaxSlots = 32;
// Batches (images, captions) run along grid dimension y, which holds at most 65535 blocks.
constexpr int64_t kCudaMaxBatch = 65535;

// The CUDA kernels keep a row of T slots as TM floats, T rounded up to a multiple of 8 so that
// rows are whole float4 pairs; they are instantiated for TM = 8, 16, 24 and 32.
inline int cuda_slot_bucket(int64_t slots) { return static_cast<int>((slots + 7) / 8 * 8); }

// The param structs hold untyped pointers; the kernels view them as their element type.
template <typename T>
T2I_HOST_DEVICE inline const T* typed(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T2I_HOST_DEVICE inline T* typed(void* p) {
  return static_cast<T*>(p);
}

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// An optional gradient counts as given only when it holds data: autograd may hand over an empty
// tensor for an output that was not used.
inline bool given_grad(const std::optional<at::Tensor>& t) {
  return given(t) && t->numel() > 0;
}

// t made contiguous, or an undefined tensor when t is absent.
inline at::Tensor contiguous_if_given(const std::optional<at::Tensor>& t) {
  return given(t) ? t->contiguous() : at::Tensor();
}

// The data of t, or null when t is undefined.
inline const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

// t is defined and has `ndim` dimensions; `shape` names them for the message.
inline void check_dims(const at::Tensor& t, int64_t ndim, const char* op, const char* name,
                       const char* shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == ndim, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// t has the sizes `expected`; `what` names them for the message.
inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                        const char* name, const char* what) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", what, " = ", expected,
              ", got ", t.sizes());
}

// t is defined, has the dtype and device of ref (named ref_name) and the sizes `expected`.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, at::IntArrayRef expected,
                       const char* op, const char* name, const char* ref_name,
                       const char* what) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  check_shape(t, expected, op, name, what);
}

// The same for a tensor of a fixed dtype (mask, lengths, lse), `kind` naming it for the message
// ("bool", "an int64 tensor"), on the device of the features ref.
inline void check_typed(const at::Tensor& t, at::ScalarType dtype, const char* kind,
                        const at::Tensor& ref, at::IntArrayRef expected, const char* op,
                        const char* name, const char* what) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", kind, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the features are on ", ref.device());
  check_shape(t, expected, op, name, what);
}

// The CUDA kernels' limits; beyond them a launch would be invalid or overrun register arrays.
inline void check_cuda_limits(const char* op, int64_t slots, int64_t batch) {
  TORCH_CHECK(slots <= kCudaMaxSlots, op, " (cuda): at most ", kCudaMaxSlots,
              " slots are supported, got T = ", slots);
  TORCH_CHECK(batch <= kCudaMaxBatch, op, " (cuda): at most ", kCudaMaxBatch,
              " batch entries are supported, got ", batch);
}

}  // namespace t2i_fast

// Small device helpers shared by the CUDA kernel files (dynamic_memory.cu, word_region.cu):
// typed loads, register-row products against shared-memory rows, slot masks, shared-memory
// carving, and the one launch path with its shared-memory check.
//
// Convention of both families: the T (<= kCudaMaxSlots = 32) slots of a row are kept as TM
// floats, TM = T rounded up to a multiple of 8 and zero-padded (cuda_slot_bucket), so that rows
// are whole float4 vectors and the per-thread register arrays have a compile-time size. TM is a
// template parameter in buckets 8/16/24/32 (with_bucket).
#pragma once

#include "../common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>

namespace t2i_fast {
namespace cuda {

// The block's dynamic shared memory, as floats (carved with Carve).
__device__ __forceinline__ float* shared_floats() {
  extern __shared__ float4 smem4[];
  return reinterpret_cast<float*>(smem4);
}

template <typename scalar_t>
__device__ __forceinline__ float ld(const scalar_t* p) {
  return static_cast<float>(*p);
}

// A float4 of a shared-memory row, or with kLdg of a global row through the read-only cache
// (rows that every thread of a block reads).
template <bool kLdg>
__device__ __forceinline__ float4 ld4(const float4* p) {
  if constexpr (kLdg) {
    return __ldg(p);
  } else {
    return *p;
  }
}

// acc[t] += x * row[t] for a row of TM floats at a 16-byte aligned address.
template <int TM, bool kLdg = false>
__device__ __forceinline__ void axpy_row(float (&acc)[TM], float x, const float* row) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll
  for (int q = 0; q < TM / 4; ++q) {
    const float4 w = ld4<kLdg>(r4 + q);
    acc[4 * q + 0] += x * w.x;
    acc[4 * q + 1] += x * w.y;
    acc[4 * q + 2] += x * w.z;
    acc[4 * q + 3] += x * w.w;
  }
}

template <int TM, bool kLdg = false>
__device__ __forceinline__ float dot_row(const float (&v)[TM], const float* row) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
  float s = 0.f;
#pragma unroll
  for (int q = 0; q < TM / 4; ++q) {
    const float4 w = ld4<kLdg>(r4 + q);
    s += v[4 * q] * w.x + v[4 * q + 1] * w.y + v[4 * q + 2] * w.z + v[4 * q + 3] * w.w;
  }
  return s;
}

template <int TM>
__device__ __forceinline__ void store_row(float* row, const float (&v)[TM]) {
  float4* r4 = reinterpret_cast<float4*>(row);
#pragma unroll
  for (int q = 0; q < TM / 4; ++q) {
    r4[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  }
}

template <int TM>
__device__ __forceinline__ void load_row(float (&v)[TM], const float* row) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll
  for (int q = 0; q < TM / 4; ++q) {
    const float4 w = r4[q];
    v[4 * q] = w.x;
    v[4 * q + 1] = w.y;
    v[4 * q + 2] = w.z;
    v[4 * q + 3] = w.w;
  }
}

// Loads a (rows, T) slice into shared rows of TM floats, zero-padded; every thread of the block
// takes part.
template <int TM, typename scalar_t>
__device__ void load_rows(float* dst, const scalar_t* src, int rows, int T) {
  for (int i = threadIdx.x; i < rows * TM; i += blockDim.x) {
    const int r = i / TM, t = i % TM;
    dst[i] = t < T ? ld(src + r * T + t) : 0.f;
  }
}

// Bit t set = slot t is a real word / unmasked slot.
__host__ __device__ inline unsigned first_slots(int n) {
  return n >= 32 ? 0xffffffffu : n <= 0 ? 0u : (1u << n) - 1u;
}

// The unmasked slots of row `row` of a bool (rows, T) mask (true = padded).
__device__ __forceinline__ unsigned unmasked_slots(const bool* mask, long long row, int T) {
  unsigned bits = 0;
  for (int t = 0; t < T; ++t) bits |= mask[row * T + t] ? 0u : (1u << t);
  return bits;
}

__device__ __forceinline__ bool slot_on(unsigned bits, int t) { return (bits >> t) & 1u; }

// Shared memory is carved in a fixed order; every piece is a whole number of float4 so that
// float4 rows stay aligned. The same code computes the size on the host (base = 0) and the
// offsets on the device.
struct Carve {
  size_t floats = 0;
  __host__ __device__ size_t take(size_t n) {
    const size_t at = floats;
    floats += (n + 3) / 4 * 4;
    return at;
  }
};

// Runs f(std::integral_constant<int, TM>) for the slot bucket tm (the callers have checked
// T <= kCudaMaxSlots, so tm is one of the buckets).
template <typename F>
void with_bucket(int tm, const F& f) {
  switch (tm) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 24: f(std::integral_constant<int, 24>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    default: TORCH_CHECK(false, "t2i_fast (cuda): slot bucket ", tm, " is not 8, 16, 24 or 32");
  }
}

// Launches kernel<<<grid, threads, smem_floats floats of dynamic shared memory>>>(args...) on
// stream, after allowing it that much shared memory or raising, naming `op`, if the device has
// less.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, int threads, size_t smem_floats, const char* op,
            cudaStream_t stream, const Args&... args) {
  const size_t bytes = sizeof(float) * smem_floats;
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(limit), op, " (cuda): these shapes need ", bytes,
              " bytes of shared memory per block, more than the device's ", limit,
              "; use smaller shapes or impl='triton'/'reference'");
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
  kernel<<<grid, threads, bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Explicit instantiations of a launcher for the dtypes of T2I_DISPATCH_GPU_FLOATS.
#define T2I_FOR_GPU_FLOATS(INSTANTIATE) \
  INSTANTIATE(float)                    \
  INSTANTIATE(c10::Half)                \
  INSTANTIATE(c10::BFloat16)

}  // namespace cuda
}  // namespace t2i_fast

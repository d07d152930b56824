// CUDA kernels of the dynamic-memory family (memory_read, response_gate, dynamic_memory) and
// their launchers; the argument checks, device guard and dtype dispatch live in
// dynamic_memory_dispatch.cpp (the two files need different stems: torch's ninja build names the
// objects after them).
//
// Design. One thread per pixel. A pixel's C channels sit N apart in NCHW, so a warp reading
// channel c of 32 consecutive pixels touches 128 contiguous bytes (fp32): the loads coalesce
// without any transpose. key, value and the gate weights of the block's image live in shared
// memory as rows of TM floats (T rounded up to 8, zero-padded), so a score update is TM/4
// broadcast float4 loads and TM FMAs per channel; the <= 32 scores, the softmax and the gate stay
// in registers. Variants (read only, gate only, read then gate) and the slot bucket TM are
// template parameters of one kernel; float32/float16/bfloat16 load and store their own type and
// compute in float32.
//
// Forward traffic: h is read twice (once for the scores, once for the gated blend; the second
// read of a block's pixels hits L1/L2 right after the first), out is written once, plus lse
// (4 bytes/pixel) and the optional attn (T values) and gate (1 value) per pixel.
//
// Backward recomputes scores, attention (from the float32 lse), read-out and gate per pixel and
// writes dh (and do for the gate-only variant) directly. dkey, dvalue and the gate parameters are
// sums over pixels: each block keeps them in shared memory, owned element by element by one
// thread, adds every tile of its pixels in a fixed order, and writes one partial per block; the
// host side sums the partials over the block dimension (deterministic, no atomics). The pixel
// sums read h and grad_out again through a small transposing shared-memory stage (L1/L2 hits).
//
// Limits: T <= kCudaMaxSlots = 32 (the slot bucket) and B <= kCudaMaxBatch (grid dimension y),
// both checked in dynamic_memory_dispatch.cpp. Shared memory per block is about
// (C + Cv) * TM * 4 bytes in forward and (C + Cv) * (2 TM + 33) * 4 + 2 * 128 * TM * 4 bytes in
// backward, within the device's 227 KB up to C = Cv = 256 for T <= 24 and C = Cv = 192 for
// T = 32 (DM-GAN: C = 64, T = 18 takes 67 KB); larger shapes raise a clear error at launch.
#include "../dynamic_memory.h"
#include "common.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace t2i_fast {
namespace cuda {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 128;  // pixels per backward tile; also rows of its smem stage
constexpr int kChunk = 32;             // pixels per transposing stage of the backward sums

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// The gate after a read: sigmoid(z + sum_t a[t] u[t]), z = w_h . h + bias (see stage_memory).
template <int TM>
__device__ __forceinline__ float read_gate(float z, const float (&a)[TM], const float* u) {
#pragma unroll
  for (int t = 0; t < TM; ++t) z += a[t] * u[t];
  return sigmoid(z);
}

// with_bucket for the variants with key/value; without them no row of slots exists and the
// kernels take TM = 4 (one float4) without using it.
template <bool ATTN, typename F>
void with_slot_bucket(int tm, const F& f) {
  if constexpr (ATTN) {
    with_bucket(tm, f);
  } else {
    f(std::integral_constant<int, 4>{});
  }
}

// Shared-memory layouts (offsets in floats), one source for the kernels and their launchers.
struct ForwardSmem {
  size_t key, value, w, u, bits, total;
};

template <bool ATTN, bool GATE>
__host__ __device__ ForwardSmem forward_smem(int C, int Cv, int TM) {
  Carve c;
  ForwardSmem s;
  s.key = c.take(ATTN ? C * TM : 0);          // (C, TM)
  s.value = c.take(ATTN ? Cv * TM : 0);       // (Cv, TM)
  s.w = c.take(GATE ? 2 * C : 0);             // [w_h; w_o]
  s.u = c.take(ATTN && GATE ? TM : 0);        // u[t] = w_o . value[:, t]
  s.bits = c.take(1);                         // unmasked slots of the block's image
  s.total = c.floats;
  return s;
}

struct BackwardSmem {
  size_t key, value, w, u, ds, a, g, dz, hs, ys, dk, dv, dw, za, db, bits, total;
};

template <bool ATTN, bool GATE>
__host__ __device__ BackwardSmem backward_smem(int C, int Cv, int TM) {
  constexpr int P = kBackwardThreads, S = kChunk + 1;
  Carve c;
  BackwardSmem s;
  s.key = c.take(ATTN ? C * TM : 0);
  s.value = c.take(ATTN ? Cv * TM : 0);
  s.w = c.take(GATE ? 2 * C : 0);
  s.u = c.take(ATTN && GATE ? TM : 0);
  s.ds = c.take(ATTN ? P * TM : 0);           // scale * d(scores) of the tile's pixels
  s.a = c.take(ATTN ? P * TM : 0);            // attention of the tile's pixels
  s.g = c.take(GATE ? P : 0);                 // gate
  s.dz = c.take(GATE ? P : 0);                // d(gate logit)
  s.hs = c.take(C * S);                       // (C, kChunk) stage of h
  s.ys = c.take((ATTN ? Cv : C) * S);         // (Cy, kChunk) stage of do (or of o)
  s.dk = c.take(ATTN ? C * TM : 0);           // dkey of the block's pixels
  s.dv = c.take(ATTN ? Cv * TM : 0);          // dvalue
  s.dw = c.take(GATE ? 2 * C : 0);            // [sum dz h; sum dz o (gate only)]
  s.za = c.take(GATE ? TM : 0);               // sum dz a[t] (read then gate)
  s.db = c.take(GATE ? 1 : 0);                // dgate_bias
  s.bits = c.take(1);
  s.total = c.floats;
  return s;
}

// The per-image operands every block stages first, in shared memory: key (C, TM) and value
// (Cv, TM) of its image b, the gate weights [w_h; w_o] (2C), u[t] = w_o . value[:, t] (TM) and
// the unmasked slots of b's mask row.
struct Memory {
  float* key;
  float* value;
  float* w;
  float* u;
  unsigned* bits;
};

// Carves the Memory part of layout L (ForwardSmem or BackwardSmem) out of smem, loads it and
// ends with a barrier. The gate sees the read-out o only through w_o . o = sum_t a[t] u[t], so
// no pass over o is needed.
template <typename scalar_t, int TM, bool ATTN, bool GATE, typename Smem>
__device__ Memory stage_memory(const DynamicMemoryParams& p, int64_t b, float* smem,
                               const Smem& L) {
  const Memory m{smem + L.key, smem + L.value, smem + L.w, smem + L.u,
                 reinterpret_cast<unsigned*>(smem + L.bits)};
  const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv), T = static_cast<int>(p.T);
  if constexpr (ATTN) {
    load_rows<TM>(m.key, typed<scalar_t>(p.key) + b * C * T, C, T);
    load_rows<TM>(m.value, typed<scalar_t>(p.value) + b * Cv * T, Cv, T);
    if (threadIdx.x == 0) m.bits[0] = p.has_mask ? unmasked_slots(p.mask, b, T) : first_slots(T);
  }
  if constexpr (GATE) {
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) {
      m.w[i] = ld(typed<scalar_t>(p.gate_weight) + i);
    }
  }
  __syncthreads();
  if constexpr (ATTN && GATE) {
    for (int t = threadIdx.x; t < TM; t += blockDim.x) {
      float s = 0.f;
      for (int c = 0; c < C; ++c) s += m.w[C + c] * m.value[c * TM + t];
      m.u[t] = s;
    }
    __syncthreads();
  }
  return m;
}

// Pixel n of image b (h at image b): a[t] = key[:, t] . h[:, n] unscaled, zh = w_h . h[:, n]
// with the gate, and the pixel's unmasked slots (its own mask row under mask_compat).
template <int TM, bool GATE, typename scalar_t>
__device__ __forceinline__ unsigned pixel_scores(const DynamicMemoryParams& p, const Memory& m,
                                                 const scalar_t* h, int64_t b, int64_t n,
                                                 float (&a)[TM], float& zh) {
  const int64_t N = p.N;
#pragma unroll
  for (int t = 0; t < TM; ++t) a[t] = 0.f;
  for (int c = 0; c < static_cast<int>(p.C); ++c) {
    const float x = ld(h + c * N + n);
    axpy_row<TM>(a, x, m.key + c * TM);
    if constexpr (GATE) zh += m.w[c] * x;
  }
  return p.has_mask && p.mask_compat
             ? unmasked_slots(p.mask, mask_compat_row(b, n, N, p.B), static_cast<int>(p.T))
             : m.bits[0];
}

template <typename scalar_t, int TM, bool ATTN, bool GATE>
__global__ void __launch_bounds__(kForwardThreads)
    dynamic_memory_forward_kernel(const DynamicMemoryParams p) {
  float* smem = shared_floats();
  const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv), T = static_cast<int>(p.T);
  const int64_t N = p.N;
  const int64_t b = blockIdx.y;
  const int tid = threadIdx.x;

  const Memory m =
      stage_memory<scalar_t, TM, ATTN, GATE>(p, b, smem, forward_smem<ATTN, GATE>(C, Cv, TM));
  const float bias = GATE ? ld(typed<scalar_t>(p.gate_bias)) : 0.f;
  const float scale = static_cast<float>(p.scale);
  const scalar_t* h = typed<scalar_t>(p.h) + b * C * N;
  scalar_t* out = typed<scalar_t>(p.out) + b * p.Cout * N;

  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + tid; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (ATTN) {
      float a[TM];
      float zh = 0.f;
      const unsigned valid = pixel_scores<TM, GATE>(p, m, h, b, n, a, zh);
      float peak = -INFINITY;
#pragma unroll
      for (int t = 0; t < TM; ++t) {
        a[t] *= scale;
        if ((valid >> t) & 1u) peak = fmaxf(peak, a[t]);
      }
      float lse = INFINITY;  // a fully masked pixel reads 0 and stores +inf
      if (peak != -INFINITY) {
        float total = 0.f;
#pragma unroll
        for (int t = 0; t < TM; ++t) {
          a[t] = ((valid >> t) & 1u) ? expf(a[t] - peak) : 0.f;
          total += a[t];
        }
        const float inv = 1.f / total;
#pragma unroll
        for (int t = 0; t < TM; ++t) a[t] *= inv;
        lse = peak + logf(total);
      } else {
#pragma unroll
        for (int t = 0; t < TM; ++t) a[t] = 0.f;
      }
      p.lse_out[b * N + n] = lse;
      if (p.attn != nullptr) {
        scalar_t* attn = typed<scalar_t>(p.attn) + b * T * N + n;
#pragma unroll
        for (int t = 0; t < TM; ++t) {
          if (t < T) attn[t * N] = static_cast<scalar_t>(a[t]);
        }
      }
      float g = 0.f;
      if constexpr (GATE) {
        g = read_gate<TM>(zh + bias, a, m.u);
        if (p.gate != nullptr) typed<scalar_t>(p.gate)[b * N + n] = static_cast<scalar_t>(g);
      }
      for (int c = 0; c < Cv; ++c) {
        const float o = dot_row<TM>(a, m.value + c * TM);
        float y = o;
        if constexpr (GATE) y = ld(h + c * N + n) * (1.f - g) + g * o;
        out[c * N + n] = static_cast<scalar_t>(y);
      }
    } else {
      // Gate only: o is an input.
      const scalar_t* o = typed<scalar_t>(p.o) + b * C * N;
      float z = bias;
      for (int c = 0; c < C; ++c) z += m.w[c] * ld(h + c * N + n) + m.w[C + c] * ld(o + c * N + n);
      const float g = sigmoid(z);
      if (p.gate != nullptr) typed<scalar_t>(p.gate)[b * N + n] = static_cast<scalar_t>(g);
      for (int c = 0; c < C; ++c) {
        const float y = ld(h + c * N + n) * (1.f - g) + g * ld(o + c * N + n);
        out[c * N + n] = static_cast<scalar_t>(y);
      }
    }
  }
}

// Floats of one block's partial: dkey (C, TM), dvalue (Cv, TM), dgate_weight (2C), dgate_bias.
__host__ __device__ inline int64_t partial_floats(bool attn, bool gate, int64_t C, int64_t Cv,
                                                  int64_t TM) {
  return (attn ? (C + Cv) * TM : 0) + (gate ? 2 * C + 1 : 0);
}

template <typename scalar_t, int TM, bool ATTN, bool GATE>
__global__ void __launch_bounds__(kBackwardThreads)
    dynamic_memory_backward_kernel(const DynamicMemoryParams p, float* partials) {
  float* smem = shared_floats();
  constexpr int P = kBackwardThreads, S = kChunk + 1, Q = TM / 4;
  const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv), T = static_cast<int>(p.T);
  const int Cy = ATTN ? Cv : C;  // channels of the second staged input: do, or o
  const int64_t N = p.N;
  const int64_t b = blockIdx.y;
  const int tid = threadIdx.x;

  const BackwardSmem L = backward_smem<ATTN, GATE>(C, Cv, TM);
  float* ds_s = smem + L.ds;
  float* a_s = smem + L.a;
  float* g_s = smem + L.g;
  float* dz_s = smem + L.dz;
  float* hs = smem + L.hs;
  float* ys = smem + L.ys;
  float* dk_acc = smem + L.dk;
  float* dv_acc = smem + L.dv;
  float* dw_acc = smem + L.dw;
  float* za_acc = smem + L.za;
  float* db_acc = smem + L.db;

  if constexpr (ATTN) {
    for (int i = tid; i < C * TM; i += P) dk_acc[i] = 0.f;
    for (int i = tid; i < Cv * TM; i += P) dv_acc[i] = 0.f;
  }
  if constexpr (GATE) {
    for (int i = tid; i < 2 * C; i += P) dw_acc[i] = 0.f;
    for (int t = tid; t < TM; t += P) za_acc[t] = 0.f;
    if (tid == 0) db_acc[0] = 0.f;
  }
  const Memory m = stage_memory<scalar_t, TM, ATTN, GATE>(p, b, smem, L);
  const float bias = GATE ? ld(typed<scalar_t>(p.gate_bias)) : 0.f;
  const float scale = static_cast<float>(p.scale);
  const scalar_t* h = typed<scalar_t>(p.h) + b * C * N;
  const scalar_t* gout = typed<scalar_t>(p.grad_out) + b * p.Cout * N;
  const scalar_t* o_in = ATTN ? nullptr : typed<scalar_t>(p.o) + b * C * N;
  scalar_t* dh = typed<scalar_t>(p.dh) + b * C * N;
  const int64_t tiles = (N + P - 1) / P;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t n = tile * P + tid;
    const bool live = n < N;
    // ---- per pixel: recompute, write dh (and do), leave what the pixel sums need in smem ----
    if constexpr (ATTN) {
      float a[TM], q[TM];
#pragma unroll
      for (int t = 0; t < TM; ++t) a[t] = q[t] = 0.f;
      float zh = 0.f, g = 0.f, dz = 0.f;
      if (live) {
        const unsigned valid = pixel_scores<TM, GATE>(p, m, h, b, n, a, zh);
        const float lse = p.lse[b * N + n];  // +inf on a fully masked pixel: a = 0
#pragma unroll
        for (int t = 0; t < TM; ++t) a[t] = ((valid >> t) & 1u) ? expf(scale * a[t] - lse) : 0.f;
        float dg = 0.f;
        if constexpr (GATE) g = read_gate<TM>(zh + bias, a, m.u);
        for (int c = 0; c < Cv; ++c) {
          const float go = ld(gout + c * N + n);
          axpy_row<TM>(q, go, m.value + c * TM);  // q[t] = sum_c grad_out[c] value[c, t]
          if constexpr (GATE) dg += go * (dot_row<TM>(a, m.value + c * TM) - ld(h + c * N + n));
        }
        if constexpr (GATE) {
          if (p.grad_gate != nullptr) dg += ld(typed<scalar_t>(p.grad_gate) + b * N + n);
          dz = dg * g * (1.f - g);
        }
        // d(attention): do = g grad_out + dz w_o, so sum_c do[c] value[c, t] = g q + dz u.
        float rowdot = 0.f;
#pragma unroll
        for (int t = 0; t < TM; ++t) {
          float da = GATE ? g * q[t] + dz * m.u[t] : q[t];
          if (p.grad_attn != nullptr && t < T) {
            da += ld(typed<scalar_t>(p.grad_attn) + (b * T + t) * N + n);
          }
          q[t] = da;
          rowdot += a[t] * da;
        }
#pragma unroll
        for (int t = 0; t < TM; ++t) q[t] = scale * a[t] * (q[t] - rowdot);  // scale * ds
        for (int c = 0; c < C; ++c) {
          float d = dot_row<TM>(q, m.key + c * TM);
          if constexpr (GATE) d += ld(gout + c * N + n) * (1.f - g) + dz * m.w[c];
          dh[c * N + n] = static_cast<scalar_t>(d);
        }
      }
      float4* ds4 = reinterpret_cast<float4*>(ds_s + tid * TM);
      float4* a4 = reinterpret_cast<float4*>(a_s + tid * TM);
#pragma unroll
      for (int k = 0; k < Q; ++k) {
        ds4[k] = make_float4(q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]);
        a4[k] = make_float4(a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]);
      }
      if constexpr (GATE) {
        g_s[tid] = g;
        dz_s[tid] = dz;
      }
    } else {
      float dz = 0.f;
      if (live) {
        float z = bias;
        for (int c = 0; c < C; ++c) {
          z += m.w[c] * ld(h + c * N + n) + m.w[C + c] * ld(o_in + c * N + n);
        }
        const float g = sigmoid(z);
        float dg = p.grad_gate != nullptr ? ld(typed<scalar_t>(p.grad_gate) + b * N + n) : 0.f;
        for (int c = 0; c < C; ++c) {
          dg += ld(gout + c * N + n) * (ld(o_in + c * N + n) - ld(h + c * N + n));
        }
        dz = dg * g * (1.f - g);
        scalar_t* d_o = typed<scalar_t>(p.d_o) + b * C * N;
        for (int c = 0; c < C; ++c) {
          const float go = ld(gout + c * N + n);
          dh[c * N + n] = static_cast<scalar_t>(go * (1.f - g) + dz * m.w[c]);
          d_o[c * N + n] = static_cast<scalar_t>(go * g + dz * m.w[C + c]);
        }
      }
      dz_s[tid] = dz;
    }
    __syncthreads();

    // ---- pixel sums of this tile, kChunk pixels at a time, each sum owned by one thread ----
    for (int pc = 0; pc < P; pc += kChunk) {
      const int64_t n0 = tile * P + pc;
      for (int i = tid; i < C * kChunk; i += P) {
        const int c = i / kChunk, k = i % kChunk;
        hs[c * S + k] = n0 + k < N ? ld(h + c * N + n0 + k) : 0.f;
      }
      for (int i = tid; i < Cy * kChunk; i += P) {
        const int c = i / kChunk, k = i % kChunk;
        float y = 0.f;
        if (n0 + k < N) {
          if constexpr (ATTN) {
            y = ld(gout + c * N + n0 + k);
            if constexpr (GATE) y = y * g_s[pc + k] + dz_s[pc + k] * m.w[C + c];
          } else {
            y = ld(o_in + c * N + n0 + k);
          }
        }
        ys[c * S + k] = y;
      }
      __syncthreads();
      if constexpr (ATTN) {
        // dkey[c, t] += h[c] * (scale ds[t]); dvalue[c, t] += do[c] * a[t]; 4 slots per unit.
        for (int u = tid; u < (C + Cv) * Q; u += P) {
          const bool is_key = u < C * Q;
          const int c = is_key ? u / Q : (u - C * Q) / Q, k4 = (is_key ? u : u - C * Q) % Q;
          const float* xs = (is_key ? hs : ys) + c * S;
          const float* rows = (is_key ? ds_s : a_s) + pc * TM + 4 * k4;
          float* accp = (is_key ? dk_acc : dv_acc) + c * TM + 4 * k4;
          float4 acc = *reinterpret_cast<float4*>(accp);
#pragma unroll 8
          for (int k = 0; k < kChunk; ++k) {
            const float x = xs[k];
            const float4 r = *reinterpret_cast<const float4*>(rows + k * TM);
            acc.x += x * r.x;
            acc.y += x * r.y;
            acc.z += x * r.z;
            acc.w += x * r.w;
          }
          *reinterpret_cast<float4*>(accp) = acc;
        }
      }
      if constexpr (GATE) {
        // dgate_weight[c] += dz h[c] (and dz o[c] for gate only); dz a[t] (read then gate);
        // dgate_bias += dz.
        const int n_w = ATTN ? C : 2 * C;
        const int n_units = n_w + (ATTN ? Q : 0) + 1;
        for (int u = tid; u < n_units; u += P) {
          if (u < n_w) {
            const float* xs = u < C ? hs + u * S : ys + (u - C) * S;
            float acc = dw_acc[u];
            for (int k = 0; k < kChunk; ++k) acc += xs[k] * dz_s[pc + k];
            dw_acc[u] = acc;
          } else if (u < n_units - 1) {
            const int k4 = u - n_w;
            float4 acc = *reinterpret_cast<float4*>(za_acc + 4 * k4);
            for (int k = 0; k < kChunk; ++k) {
              const float d = dz_s[pc + k];
              const float4 r = *reinterpret_cast<const float4*>(a_s + (pc + k) * TM + 4 * k4);
              acc.x += d * r.x;
              acc.y += d * r.y;
              acc.z += d * r.z;
              acc.w += d * r.w;
            }
            *reinterpret_cast<float4*>(za_acc + 4 * k4) = acc;
          } else {
            float acc = db_acc[0];
            for (int k = 0; k < kChunk; ++k) acc += dz_s[pc + k];
            db_acc[0] = acc;
          }
        }
      }
      __syncthreads();
    }
  }

  // ---- this block's partial ----
  float* part = partials + (b * gridDim.x + blockIdx.x) * partial_floats(ATTN, GATE, C, Cv, TM);
  if constexpr (ATTN) {
    for (int i = tid; i < C * TM; i += P) part[i] = dk_acc[i];
    for (int i = tid; i < Cv * TM; i += P) part[C * TM + i] = dv_acc[i];
    part += (C + Cv) * TM;
  }
  if constexpr (GATE) {
    for (int c = tid; c < C; c += P) {
      part[c] = dw_acc[c];
      float wo = dw_acc[C + c];
      if constexpr (ATTN) {  // sum_n dz o[c] = sum_t value[c, t] sum_n dz a[t]
        wo = 0.f;
        for (int t = 0; t < TM; ++t) wo += m.value[c * TM + t] * za_acc[t];
      }
      part[C + c] = wo;
    }
    if (tid == 0) part[2 * C] = db_acc[0];
  }
}

}  // namespace

// The launcher (declared in dynamic_memory_dispatch.cpp): the forward kernel, or with `backward`
// the backward kernel, which fully writes partials (B, blocks_per_image,
// dynamic_memory_partial_floats(...)) float32. tm: the slot bucket (cuda_slot_bucket of T), 4
// without key/value, where it sizes nothing. The caller handles o alone (no key/value, no gate)
// without a kernel.
template <typename scalar_t>
void dynamic_memory_launch(const DynamicMemoryParams& p, bool backward, int tm,
                           int blocks_per_image, float* partials, cudaStream_t stream) {
  with_variant(p, [&](auto attn, auto gate) {
    constexpr bool ATTN = decltype(attn)::value, GATE = decltype(gate)::value;
    if constexpr (ATTN || GATE) {
      with_slot_bucket<ATTN>(tm, [&](auto bucket) {
        constexpr int TM = decltype(bucket)::value;
        const dim3 grid(blocks_per_image, static_cast<unsigned>(p.B));
        const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv);
        if (backward) {
          launch(dynamic_memory_backward_kernel<scalar_t, TM, ATTN, GATE>, grid, kBackwardThreads,
                 backward_smem<ATTN, GATE>(C, Cv, TM).total, "dynamic_memory_backward", stream, p,
                 partials);
        } else {
          launch(dynamic_memory_forward_kernel<scalar_t, TM, ATTN, GATE>, grid, kForwardThreads,
                 forward_smem<ATTN, GATE>(C, Cv, TM).total, "dynamic_memory_forward", stream, p);
        }
      });
    }
  });
}

int64_t dynamic_memory_partial_floats(bool attn, bool gate, int64_t C, int64_t Cv, int64_t tm) {
  return partial_floats(attn, gate, C, Cv, tm);
}

#define T2I_INSTANTIATE(scalar_t)                                                           \
  template void dynamic_memory_launch<scalar_t>(const DynamicMemoryParams&, bool, int, int, \
                                                float*, cudaStream_t);
T2I_FOR_GPU_FLOATS(T2I_INSTANTIATE)
#undef T2I_INSTANTIATE

}  // namespace cuda
}  // namespace t2i_fast

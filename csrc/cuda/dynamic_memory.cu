// CUDA kernels of the dynamic-memory family (memory_read, response_gate, dynamic_memory); the
// argument checks, device guard and dtype dispatch live in dynamic_memory_dispatch.cpp (the two files need
// different stems: torch's ninja build names the objects after them).
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
// Limits: T <= 32 (the slot bucket). Shared memory per block is about (C + Cv) * TM * 4 bytes in
// forward and (C + Cv) * (2 TM + 33) * 4 + 2 * 128 * TM * 4 bytes in backward, within the
// device's 227 KB up to C = Cv = 256 for T <= 24 and C = Cv = 192 for T = 32 (DM-GAN: C = 64,
// T = 18 takes 67 KB); larger shapes raise a clear error at launch.
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

template <typename scalar_t, int TM, bool ATTN, bool GATE>
__global__ void __launch_bounds__(kForwardThreads)
    dynamic_memory_forward_kernel(const DynamicMemoryParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv), T = static_cast<int>(p.T);
  const int64_t N = p.N, B = p.B;
  const int64_t b = blockIdx.y;
  const int tid = threadIdx.x;

  const ForwardSmem L = forward_smem<ATTN, GATE>(C, Cv, TM);
  float* key_s = smem + L.key;
  float* val_s = smem + L.value;
  float* w_s = smem + L.w;
  float* u_s = smem + L.u;
  unsigned* bits_s = reinterpret_cast<unsigned*>(smem + L.bits);

  if constexpr (ATTN) {
    const scalar_t* key = typed<scalar_t>(p.key) + b * C * T;
    const scalar_t* value = typed<scalar_t>(p.value) + b * Cv * T;
    for (int i = tid; i < C * TM; i += blockDim.x) {
      const int c = i / TM, t = i % TM;
      key_s[i] = t < T ? ld(key + c * T + t) : 0.f;
    }
    for (int i = tid; i < Cv * TM; i += blockDim.x) {
      const int c = i / TM, t = i % TM;
      val_s[i] = t < T ? ld(value + c * T + t) : 0.f;
    }
    if (tid == 0) bits_s[0] = p.has_mask ? unmasked_slots(p.mask, b, T) : first_slots(T);
  }
  if constexpr (GATE) {
    for (int i = tid; i < 2 * C; i += blockDim.x) w_s[i] = ld(typed<scalar_t>(p.gate_weight) + i);
  }
  __syncthreads();
  if constexpr (ATTN && GATE) {
    // The gate sees o only through w_o . o = sum_t a[t] u[t]: no pass over o is needed.
    for (int t = tid; t < TM; t += blockDim.x) {
      float s = 0.f;
      for (int c = 0; c < C; ++c) s += w_s[C + c] * val_s[c * TM + t];
      u_s[t] = s;
    }
    __syncthreads();
  }
  const float bias = GATE ? ld(typed<scalar_t>(p.gate_bias)) : 0.f;
  const float scale = static_cast<float>(p.scale);
  const scalar_t* h = typed<scalar_t>(p.h) + b * C * N;
  scalar_t* out = typed<scalar_t>(p.out) + b * p.Cout * N;

  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + tid; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (ATTN) {
      float a[TM];
#pragma unroll
      for (int t = 0; t < TM; ++t) a[t] = 0.f;
      float zh = 0.f;
      for (int c = 0; c < C; ++c) {
        const float x = ld(h + c * N + n);
        axpy_row<TM>(a, x, key_s + c * TM);
        if constexpr (GATE) zh += w_s[c] * x;
      }
      const unsigned valid = !p.has_mask ? bits_s[0]
                             : p.mask_compat ? unmasked_slots(p.mask, (b * N + n) % B, T)
                                             : bits_s[0];
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
        float z = zh + bias;
#pragma unroll
        for (int t = 0; t < TM; ++t) z += a[t] * u_s[t];
        g = sigmoid(z);
        if (p.gate != nullptr) typed<scalar_t>(p.gate)[b * N + n] = static_cast<scalar_t>(g);
      }
      for (int c = 0; c < Cv; ++c) {
        const float o = dot_row<TM>(a, val_s + c * TM);
        float y = o;
        if constexpr (GATE) y = ld(h + c * N + n) * (1.f - g) + g * o;
        out[c * N + n] = static_cast<scalar_t>(y);
      }
    } else {
      // Gate only: o is an input.
      const scalar_t* o = typed<scalar_t>(p.o) + b * C * N;
      float z = bias;
      for (int c = 0; c < C; ++c) z += w_s[c] * ld(h + c * N + n) + w_s[C + c] * ld(o + c * N + n);
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
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  constexpr int P = kBackwardThreads, S = kChunk + 1, Q = TM / 4;
  const int C = static_cast<int>(p.C), Cv = static_cast<int>(p.Cv), T = static_cast<int>(p.T);
  const int Cy = ATTN ? Cv : C;  // channels of the second staged input: do, or o
  const int64_t N = p.N, B = p.B;
  const int64_t b = blockIdx.y;
  const int tid = threadIdx.x;

  const BackwardSmem L = backward_smem<ATTN, GATE>(C, Cv, TM);
  float* key_s = smem + L.key;
  float* val_s = smem + L.value;
  float* w_s = smem + L.w;
  float* u_s = smem + L.u;
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
  unsigned* bits_s = reinterpret_cast<unsigned*>(smem + L.bits);

  if constexpr (ATTN) {
    const scalar_t* key = typed<scalar_t>(p.key) + b * C * T;
    const scalar_t* value = typed<scalar_t>(p.value) + b * Cv * T;
    for (int i = tid; i < C * TM; i += P) {
      const int c = i / TM, t = i % TM;
      key_s[i] = t < T ? ld(key + c * T + t) : 0.f;
      dk_acc[i] = 0.f;
    }
    for (int i = tid; i < Cv * TM; i += P) {
      const int c = i / TM, t = i % TM;
      val_s[i] = t < T ? ld(value + c * T + t) : 0.f;
      dv_acc[i] = 0.f;
    }
    if (tid == 0) bits_s[0] = p.has_mask ? unmasked_slots(p.mask, b, T) : first_slots(T);
  }
  if constexpr (GATE) {
    for (int i = tid; i < 2 * C; i += P) {
      w_s[i] = ld(typed<scalar_t>(p.gate_weight) + i);
      dw_acc[i] = 0.f;
    }
    for (int t = tid; t < TM; t += P) za_acc[t] = 0.f;
    if (tid == 0) db_acc[0] = 0.f;
  }
  __syncthreads();
  if constexpr (ATTN && GATE) {
    for (int t = tid; t < TM; t += P) {
      float s = 0.f;
      for (int c = 0; c < C; ++c) s += w_s[C + c] * val_s[c * TM + t];
      u_s[t] = s;
    }
    __syncthreads();
  }
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
        for (int c = 0; c < C; ++c) {
          const float x = ld(h + c * N + n);
          axpy_row<TM>(a, x, key_s + c * TM);
          if constexpr (GATE) zh += w_s[c] * x;
        }
        const unsigned valid = p.has_mask && p.mask_compat
                                   ? unmasked_slots(p.mask, (b * N + n) % B, T) : bits_s[0];
        const float lse = p.lse[b * N + n];  // +inf on a fully masked pixel: a = 0
#pragma unroll
        for (int t = 0; t < TM; ++t) a[t] = ((valid >> t) & 1u) ? expf(scale * a[t] - lse) : 0.f;
        float dg = 0.f;
        if constexpr (GATE) {
          float z = zh + bias;
#pragma unroll
          for (int t = 0; t < TM; ++t) z += a[t] * u_s[t];
          g = sigmoid(z);
        }
        for (int c = 0; c < Cv; ++c) {
          const float go = ld(gout + c * N + n);
          axpy_row<TM>(q, go, val_s + c * TM);  // q[t] = sum_c grad_out[c] value[c, t]
          if constexpr (GATE) dg += go * (dot_row<TM>(a, val_s + c * TM) - ld(h + c * N + n));
        }
        if constexpr (GATE) {
          if (p.grad_gate != nullptr) dg += ld(typed<scalar_t>(p.grad_gate) + b * N + n);
          dz = dg * g * (1.f - g);
        }
        // d(attention): do = g grad_out + dz w_o, so sum_c do[c] value[c, t] = g q + dz u.
        float rowdot = 0.f;
#pragma unroll
        for (int t = 0; t < TM; ++t) {
          float da = GATE ? g * q[t] + dz * u_s[t] : q[t];
          if (p.grad_attn != nullptr && t < T) {
            da += ld(typed<scalar_t>(p.grad_attn) + (b * T + t) * N + n);
          }
          q[t] = da;
          rowdot += a[t] * da;
        }
#pragma unroll
        for (int t = 0; t < TM; ++t) q[t] = scale * a[t] * (q[t] - rowdot);  // scale * ds
        for (int c = 0; c < C; ++c) {
          float d = dot_row<TM>(q, key_s + c * TM);
          if constexpr (GATE) d += ld(gout + c * N + n) * (1.f - g) + dz * w_s[c];
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
          z += w_s[c] * ld(h + c * N + n) + w_s[C + c] * ld(o_in + c * N + n);
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
          dh[c * N + n] = static_cast<scalar_t>(go * (1.f - g) + dz * w_s[c]);
          d_o[c * N + n] = static_cast<scalar_t>(go * g + dz * w_s[C + c]);
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
            if constexpr (GATE) y = y * g_s[pc + k] + dz_s[pc + k] * w_s[C + c];
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
        for (int t = 0; t < TM; ++t) wo += val_s[c * TM + t] * za_acc[t];
      }
      part[C + c] = wo;
    }
    if (tid == 0) part[2 * C] = db_acc[0];
  }
}

template <typename scalar_t, bool ATTN, bool GATE>
void forward_variant(const DynamicMemoryParams& p, int tm, int blocks_per_image,
                     cudaStream_t stream) {
  const auto launch = [&](auto bucket) {
    constexpr int TM = decltype(bucket)::value;
    const auto kernel = dynamic_memory_forward_kernel<scalar_t, TM, ATTN, GATE>;
    const size_t bytes = sizeof(float) * forward_smem<ATTN, GATE>(int(p.C), int(p.Cv), TM).total;
    allow_shared_memory(kernel, bytes, "dynamic_memory_forward");
    const dim3 grid(blocks_per_image, static_cast<unsigned>(p.B));
    kernel<<<grid, kForwardThreads, bytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if constexpr (ATTN) {
    with_bucket(tm, launch);
  } else {
    launch(std::integral_constant<int, 4>{});  // no slots: the bucket is unused
  }
}

template <typename scalar_t, bool ATTN, bool GATE>
void backward_variant(const DynamicMemoryParams& p, int tm, int blocks_per_image,
                      float* partials, cudaStream_t stream) {
  const auto launch = [&](auto bucket) {
    constexpr int TM = decltype(bucket)::value;
    const auto kernel = dynamic_memory_backward_kernel<scalar_t, TM, ATTN, GATE>;
    const size_t bytes =
        sizeof(float) * backward_smem<ATTN, GATE>(int(p.C), int(p.Cv), TM).total;
    allow_shared_memory(kernel, bytes, "dynamic_memory_backward");
    const dim3 grid(blocks_per_image, static_cast<unsigned>(p.B));
    kernel<<<grid, kBackwardThreads, bytes, stream>>>(p, partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if constexpr (ATTN) {
    with_bucket(tm, launch);
  } else {
    launch(std::integral_constant<int, 4>{});
  }
}

}  // namespace

// Launchers (declared in dynamic_memory.cpp). tm: the slot bucket (T rounded up to 8), 4 without
// key/value. Variant without key/value and without gate is handled by the caller.
template <typename scalar_t>
void dynamic_memory_forward_launch(const DynamicMemoryParams& p, int tm, int blocks_per_image,
                                   cudaStream_t stream) {
  if (p.has_attn && p.has_gate) {
    forward_variant<scalar_t, true, true>(p, tm, blocks_per_image, stream);
  } else if (p.has_attn) {
    forward_variant<scalar_t, true, false>(p, tm, blocks_per_image, stream);
  } else {
    forward_variant<scalar_t, false, true>(p, tm, blocks_per_image, stream);
  }
}

// partials: (B, blocks_per_image, dynamic_memory_partial_floats(...)) float32, fully written.
template <typename scalar_t>
void dynamic_memory_backward_launch(const DynamicMemoryParams& p, int tm, int blocks_per_image,
                                    float* partials, cudaStream_t stream) {
  if (p.has_attn && p.has_gate) {
    backward_variant<scalar_t, true, true>(p, tm, blocks_per_image, partials, stream);
  } else if (p.has_attn) {
    backward_variant<scalar_t, true, false>(p, tm, blocks_per_image, partials, stream);
  } else {
    backward_variant<scalar_t, false, true>(p, tm, blocks_per_image, partials, stream);
  }
}

int64_t dynamic_memory_partial_floats(bool attn, bool gate, int64_t C, int64_t Cv, int64_t tm) {
  return partial_floats(attn, gate, C, Cv, tm);
}

#define T2I_INSTANTIATE(scalar_t)                                                            \
  template void dynamic_memory_forward_launch<scalar_t>(const DynamicMemoryParams&, int, int, \
                                                        cudaStream_t);                       \
  template void dynamic_memory_backward_launch<scalar_t>(const DynamicMemoryParams&, int,     \
                                                         int, float*, cudaStream_t);
T2I_INSTANTIATE(float)
T2I_INSTANTIATE(c10::Half)
T2I_INSTANTIATE(c10::BFloat16)
#undef T2I_INSTANTIATE

}  // namespace cuda
}  // namespace t2i_fast

// Vector building blocks of the CPU kernels (csrc/cpu/*.cpp): fixed-width vectors written with
// GCC/Clang vector extensions, the one vector exp and the blocked transposes.
//
// Vectors are W bytes wide. Code that includes this header compiles its hot loops once for the
// baseline ISA (W = 16: SSE2 on x86-64, NEON on AArch64) and, where it asks for it, again inside
// functions marked __attribute__((target("avx2,fma"))) with W = 32; the extension is built
// without -march, so the choice is made at run time. The helpers are always-inline so that each
// such entry point gets its own copy for its ISA.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if !defined(__GNUC__)
#error "the t2i_fast CPU kernels need GCC or Clang vector extensions"
#endif
#define T2I_INLINE inline __attribute__((always_inline))

#if !defined(__clang__)
// The always-inline helpers return vectors by value; no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace t2i_fast {
namespace cpu {

template <typename acc_t, int W>
struct Vec {
  typedef acc_t type __attribute__((vector_size(W)));
  static constexpr int64_t lanes = W / sizeof(acc_t);
};

template <typename V, typename acc_t>
T2I_INLINE V vload(const acc_t* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename acc_t>
T2I_INLINE void vstore(acc_t* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// exp of every lane. exp(x) = 2^m exp(r), m = round(x / ln 2), |r| <= ln(2) / 2, with ln 2 split
// in two (Cody-Waite) and exp(r) by the degree-7 polynomial of Cephes' expf: about 1 ulp. Inputs
// are clamped to [-87, 88] so that 2^m stays a normal float; below -87 (including -inf, masked
// slots) the result is 0, NaN stays NaN. Selects are bit masks: GCC turns vector ?: into scalar
// compares unless built with -fno-trapping-math.
template <int W>
T2I_INLINE typename Vec<float, W>::type vexp(const typename Vec<float, W>::type& v) {
  using V = typename Vec<float, W>::type;
  using VI = typename Vec<int32_t, W>::type;
  const V lo = V{} - 87.0f, hi = V{} + 88.0f;
  const V round_magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const VI under = v < lo;
  V c = (V)(((VI)v & ~under) | ((VI)lo & under));
  const VI over = c > hi;
  c = (V)(((VI)c & ~over) | ((VI)hi & over));
  const V t = c * 1.44269504088896341f + round_magic;
  const V m = t - round_magic;
  const V r = c - m * 0.693359375f + m * 2.12194440e-4f;
  V q = 1.9875691500e-4f * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const V e = q * r * r + r + 1.0f;
  const VI pow2 = ((VI)t - (VI)round_magic + 127) << 23;
  return (V)((VI)(e * (V)pow2) & ~under);
}

// x[i] = exp(x[i]) for i < n, n a whole number of vectors. libm's scalar exp would cost about
// as much as the products around it; float gets the vector version, double (the type tested
// against the reference at tight tolerances) keeps libm.
template <int W>
T2I_INLINE void exp_inplace(float* x, int64_t n) {
  using V = typename Vec<float, W>::type;
  for (int64_t i = 0; i < n; i += Vec<float, W>::lanes) vstore(x + i, vexp<W>(vload<V>(x + i)));
}

template <int W>
T2I_INLINE void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// dst[c * ld_dst + r] (+)= src[r * ld_src + c] for r < rows, c < cols. Done in groups of 8 rows
// so that consecutive stores share a cache line: a plain row-by-row transpose writes every value
// to a different line and costs as much as a matrix product.
template <bool kAccumulate = false, typename acc_t>
T2I_INLINE void transpose(acc_t* __restrict dst, int64_t ld_dst, const acc_t* __restrict src,
                          int64_t ld_src, int64_t rows, int64_t cols) {
  constexpr int64_t G = 8;
  int64_t r0 = 0;
  for (; r0 + G <= rows; r0 += G)
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t i = 0; i < G; ++i) {
        const acc_t x = src[(r0 + i) * ld_src + c];
        dst[c * ld_dst + r0 + i] = kAccumulate ? dst[c * ld_dst + r0 + i] + x : x;
      }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t x = src[r0 * ld_src + c];
      dst[c * ld_dst + r0] = kAccumulate ? dst[c * ld_dst + r0] + x : x;
    }
}

}  // namespace cpu
}  // namespace t2i_fast

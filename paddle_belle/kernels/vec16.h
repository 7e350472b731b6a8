// Sixteen-float vectors for the elementwise loops of decode_attention.cc and decoder_layer.cc: one AVX-512
// register, two AVX2 or four SSE ones (GCC's vector extension, lowered for whichever clone of a CLONES function the
// helpers are inlined into). The extension is built without -march=native, for any machine sharing the cache, so
// CLONES compiles a function for AVX-512, AVX2 (+FMA) and baseline x86-64, chosen at load time (GCC's
// target_clones; cpu_matmul.cc does the same by hand).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

namespace {

typedef float vec __attribute__((vector_size(64)));
constexpr int64_t W = 16;

// The helpers are always inlined: an out-of-line copy would be compiled for baseline x86-64 only, not per clone.
#define INLINE __attribute__((always_inline)) inline

INLINE vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);  // an unaligned load
  return v;
}

INLINE void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// The sum of v's lanes, halving: three vector adds, not fifteen dependent scalar ones (float addition is not
// associative, so without -ffast-math the compiler may not reorder a scalar loop's sum into this)
INLINE float sum_lanes(vec v) {
  typedef float half __attribute__((vector_size(32)));
  typedef float quarter __attribute__((vector_size(16)));
  half a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  quarter b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

}  // namespace

// Weight-only matmul on CPU: y[M, N] = x[M, K] @ W[K, N] in float32, with W read in its stored form
// (packed integer codes with per-group scales, or bfloat16/float16/float32) and never expanded in memory.
//
// Decoding one token is bound by memory bandwidth: every weight byte is read once per call, so the kernels read
// as few bytes as the format allows and do all the rows of x (M, small in decode) while a tile of the weight is in
// registers or L1. Layout (paddle_belle/quant/format.py): codes packed along K, 8/S codes of S bits to a byte,
// lowest bits first; weight[k, n] = (code[k, n] - zero[g, n]) * scale[g, n] with g = k / group_size. For rows
// k0..k1 of one group
//   y[m, n] += scale[g, n] * sum_k x[m, k] * (code[k, n] - zero[g, n])
// with the integer subtraction exact, and the scale applied once per such chunk. (Subtracting zero * sum x at the
// end instead would save one integer op per 16 codes, but loses digits to cancellation: 4e-5 off on int8.)
//
// With 4- and 8-bit codes x may be quantized to int8 too (opt-in, PADDLE_BELLE_INT8_ACTIVATIONS=1: per row, blocks of
// 32 within a group, as llama.cpp's q8_0) for integer dot products: see "int8 activations" below. It is faster where
// decoding codes to floats, not bytes, bounds the float path, most of all at several rows (benchmarks/cpu_kernels.py
// at bloom-560m's and 7B's shapes, 1-16 rows: int4 1.4-3x, int8 1.1-1.7x; README, "Int8 activations"). It is not
// the default because issue 14 allows it only where the test models' greedy ids stay those of the float path, and
// they part at near-ties: on the shipped belle-tiny-zh (RTN int4/int8 g128) it moves the logits by 0.6-0.7 % of the
// largest, against 11.6 % / 0.9 % for quantizing the weights (tests/kernels/test_cpu_matmul.py). Rechecked (stop 25,
// README "Int8 activations"): SmolLM2-135M perplexity +0.37 % (RTN-4) / +0.13 % (RTN-8), but one row of int8 codes
// is slower with int8 x (1024 x 4096 0.160 -> 0.205 ms, 4096 x 16384 2.54 -> 2.81) and the tiny test models' greedy
// ids part, so it stays opt-in. 2- and 3-bit codes always take the float path.
//
// The kernel is written once (tile/block below) against a few vector helpers, one set per instruction set
// (Scalar, Avx2, Avx512). Each instruction set gets an entry point carrying its target attribute and `flatten`,
// which inlines the generic code into it, so the same source compiles to AVX-512, AVX2 and portable code in one
// object without -march=native (the extension cache may be shared between machines). The choice is made at run
// time from the CPU's features.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BELLE_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

// ------------------------------------------------------------------------------------------ vector helpers
// V: a vector of W floats, Vi: of W 32-bit integers. bytes: W bytes zero-extended; shr, mask, tofloat: on Vi.

static inline float half_to_float(uint16_t h) {  // exact, without F16C (the scalar path)
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000 | (man << 13);  // inf, nan
  } else if (exp == 0) {
    float f = float(man) * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Scalar {
  using V = float;
  static constexpr int W = 1, MB = 4, NV = 1;  // a tile: MB rows of x by NV vectors of columns
  static constexpr bool LUT16 = false;         // lookup(table, i): table[i & 15], see Avx512
  static inline V zero() { return 0.0f; }
  static inline V set1(float v) { return v; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V mul(V a, V b) { return a * b; }
  static inline V loadf(const float* p) { return *p; }
  static inline void storef(float* p, V v) { *p = v; }
  using Vi = int32_t;
  static inline Vi bytes(const uint8_t* p) { return *p; }
  static inline Vi shr(Vi v, int n) { return v >> n; }
  static inline Vi mask(Vi v, int32_t m) { return v & m; }
  static inline Vi sub(Vi a, Vi b) { return a - b; }
  static inline Vi set1i(int32_t v) { return v; }
  static inline V tofloat(Vi v) { return float(v); }
  static inline V bf16(const uint16_t* p) {
    const uint32_t u = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline V f16(const uint16_t* p) { return half_to_float(*p); }
  static inline float hsum(V v) { return v; }
};

#ifdef BELLE_X86
#define AVX2 __attribute__((target("avx2,fma,f16c"))) static inline
struct Avx2 {
  using V = __m256;
  static constexpr int W = 8, MB = 4, NV = 2;  // 8 accumulators, 2 x (codes, zeros, weights), x: 15 of 16 registers
  static constexpr bool LUT16 = false;         // vpermps has 8 entries here: two and a blend would cost more
  AVX2 V zero() { return _mm256_setzero_ps(); }
  AVX2 V set1(float v) { return _mm256_set1_ps(v); }
  AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  AVX2 V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  AVX2 V loadf(const float* p) { return _mm256_loadu_ps(p); }
  AVX2 void storef(float* p, V v) { _mm256_storeu_ps(p, v); }
  using Vi = __m256i;
  AVX2 Vi bytes(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  AVX2 Vi shr(Vi v, int n) { return _mm256_srli_epi32(v, n); }
  AVX2 Vi mask(Vi v, int32_t m) { return _mm256_and_si256(v, _mm256_set1_epi32(m)); }
  AVX2 Vi sub(Vi a, Vi b) { return _mm256_sub_epi32(a, b); }
  AVX2 Vi set1i(int32_t v) { return _mm256_set1_epi32(v); }
  AVX2 V tofloat(Vi v) { return _mm256_cvtepi32_ps(v); }
  AVX2 V bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  AVX2 V f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  AVX2 float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
  }
};

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl"))) static inline
struct Avx512 {
  using V = __m512;
  static constexpr int W = 16, MB = 4, NV = 4;  // 16 accumulators, 4 x (codes, zeros, weights), x: 29 of 32
  static constexpr bool LUT16 = true;
  AVX512 V zero() { return _mm512_setzero_ps(); }
  AVX512 V set1(float v) { return _mm512_set1_ps(v); }
  AVX512 V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  AVX512 V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  AVX512 V add(V a, V b) { return _mm512_add_ps(a, b); }
  AVX512 V loadf(const float* p) { return _mm512_loadu_ps(p); }
  AVX512 void storef(float* p, V v) { _mm512_storeu_ps(p, v); }
  using Vi = __m512i;
  AVX512 Vi bytes(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  AVX512 Vi shr(Vi v, int n) { return _mm512_srli_epi32(v, n); }
  AVX512 Vi mask(Vi v, int32_t m) { return _mm512_and_si512(v, _mm512_set1_epi32(m)); }
  AVX512 Vi sub(Vi a, Vi b) { return _mm512_sub_epi32(a, b); }
  AVX512 Vi set1i(int32_t v) { return _mm512_set1_epi32(v); }
  AVX512 V tofloat(Vi v) { return _mm512_cvtepi32_ps(v); }
  AVX512 V bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  AVX512 V f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  AVX512 float hsum(V v) { return _mm512_reduce_add_ps(v); }
  AVX512 V lookup(V table, Vi i) { return _mm512_permutexvar_ps(i, table); }  // vpermps reads i's low 4 bits only
  AVX512 Vi load64(const uint8_t* p) { return _mm512_loadu_si512(p); }
  AVX512 void blocks(__m512i* a) {  // a 4 x 4 transpose of 128-bit blocks
    const __m512i t0 = _mm512_shuffle_i32x4(a[0], a[1], 0x44), t1 = _mm512_shuffle_i32x4(a[0], a[1], 0xee);
    const __m512i t2 = _mm512_shuffle_i32x4(a[2], a[3], 0x44), t3 = _mm512_shuffle_i32x4(a[2], a[3], 0xee);
    a[0] = _mm512_shuffle_i32x4(t0, t2, 0x88), a[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
    a[2] = _mm512_shuffle_i32x4(t1, t3, 0x88), a[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
  }
  // a[j] lane l holds column 4l + j -> 64 columns in order: unpacking gives, in block L of vector j, columns
  // 16L + 4j .. 16L + 4j + 3, and a transpose of blocks puts those in place.
  AVX512 void untangle(V* a) {
    const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a[0], a[1]));
    const __m512d t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a[0], a[1]));
    const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(a[2], a[3]));
    const __m512d t3 = _mm512_castps_pd(_mm512_unpackhi_ps(a[2], a[3]));
    __m512i u[4] = {_mm512_castpd_si512(_mm512_unpacklo_pd(t0, t2)), _mm512_castpd_si512(_mm512_unpackhi_pd(t0, t2)),
                    _mm512_castpd_si512(_mm512_unpacklo_pd(t1, t3)), _mm512_castpd_si512(_mm512_unpackhi_pd(t1, t3))};
    blocks(u);
    for (int j = 0; j < 4; ++j) a[j] = _mm512_castsi512_ps(u[j]);
  }
};
#endif

// ------------------------------------------------------------------------------------------ weight formats
// Rows are taken a chunk at a time: at most CHUNK rows of one group (in tile order a slab: Tiles below), with a
// tile's accumulators in registers over them. Few rows at a time keep the weight streaming row after row (bloom-7b's
// 4096 x 16384, int8, 2 threads: 128 rows 12 GB/s, 32 rows 30 GB/s), and each row's tile PREFETCH_TILES tiles ahead
// is prefetched, which the hardware prefetchers do not do for this pattern (32 rows without it: 8 GB/s).
//
// A dense weight (bfloat16, float16, float32) times one row of x (decoding) is read differently: DENSE_CHUNK rows
// at a time (first without software prefetch: below), and the rows, not the columns, split between the threads
// (parallel_chunks), so that each thread streams one contiguous run of the weight, DENSE_CHUNK rows side by side.
// Measured in-process at bloom-560m's and bloom-7b's shapes, 2 threads, weights rotated beyond the L3 cache (GB/s,
// float32 / bfloat16): 4096 x 16384, 32 rows with prefetch 21.9 / 19.2, 8 rows without 42.5 / 38.8 (another run, 8
// rows: columns split 32.6 / 31.0, rows split 33.1 / 31.9); 4096 x 1024 (N split in two: 1-2 KB runs) columns 19.5 /
// 15.0, rows 21.4 / 19.5; 1024 x 3072 26.9 / 22.4 -> 28.8 / 29.6. Paddle's float32 matmul 16.6-24.5 in the same runs.
// The same read serves up to DENSE_ROWS rows (a 4-row tile's registers; batched decoding of a few replies), ms,
// the old read -> this one, two alternating runs of `benchmarks/cpu_kernels.py --m 2,4 --methods "kernel fp32,kernel
// bf16"` (idle machine, stop 24): float32 2 rows 4096 x 16384 12.4 / 13.9 -> 8.1 / 8.6, 1024 x 4096 0.86 / 0.83 ->
// 0.54 / 0.74; 4 rows 4096 x 16384 14.4 / 16.1 -> 9.1 / 10.8, 4096 x 1024 1.34 / 1.08 -> 0.74 / 0.84; bfloat16 4 rows
// 4096 x 16384 6.9 / 8.3 -> 6.3 / 6.9, 1024 x 3072 0.43 / 0.39 -> 0.31 / 0.33.
// Since stop 28 these rows are prefetched after all, as packed codes are when streaming (below: into L2, the same 512
// bytes ahead: STREAM_PREFETCH_TILES / column_bytes tiles), except rows shorter than a page, read page by page
// (page_chunks). On an AMX-class host (2 vCPUs of a Granite/Sapphire Rapids-like CPU, 480 MiB L3) the hardware
// prefetchers alone left bfloat16 at ~80 % of the large read. In one process, alternating, weights rotated over 1.5
// GB, one row, ms, without -> with: bfloat16 4096 x 16384 5.09 -> 4.14, 16384 x 4096 5.42 -> 4.58, 4096 x 4096 1.45
// -> 1.20, 1024 x 3072 0.281 -> 0.243; float32 2-6 % less; bfloat16 4 rows 4096 x 16384 6.23 -> 5.77, 1024 x 4096
// 0.380 -> 0.326. (Prefetching 2 tiles ahead into L1 instead helped less and cost 4096 x 16384 3 %.)
//
// One to three rows of x over packed codes (decoding one reply; STREAM_ROWS), float or int8 x, take the dense
// recipe's thread split: the chunks, i.e. the weight's rows, shared out between the threads (parallel_chunks), each
// thread over every column, so that a chunk's rows are whole rows of the weight (N bytes each) rather than half
// rows; with N = 1024-4096 the column split left runs of 0.5-2 KB a row. They keep CHUNK rows and the prefetch,
// which goes further, STREAM_PREFETCH_TILES tiles ahead, into L2 only (prefetcht1): a row stride that is a multiple
// of 4 KiB (N = 4096, 16384) puts every row's line of a tile in one 8-way L1 set, where prefetched lines evicted one
// another. Measured in one process, the variants alternating call by call, weights rotated beyond the L3 cache, one
// row, 2 threads, ms median (a shared machine, load 1.6-4.3), column split -> rows split: int8 g128 4096 x 1024
// 0.376 -> 0.250, 1024 x 4096 0.237 -> 0.177, 1024 x 3072 0.167 -> 0.137, 4096 x 16384 2.41 -> 2.36; int4 0.184 ->
// 0.151, 0.151 -> 0.132, 0.111 -> 0.102, 1.60 -> 1.60; int8 x alike (int4 4096 x 1024 0.235 -> 0.164). With the rows
// split, prefetch off cost int8 4096 x 16384 2.06 -> 3.77 ms; 16 rows a chunk instead of 32 changed nothing; 8 (int4:
// 4 byte-rows, y revisited twice as often) cost int4 3.07 -> 4.09. At 7B's shape one row of int8 then reads ~29
// GB/s and of int4 with int8 x ~24-31, about the machine's large read; int4 with float x is bound by decoding codes
// to floats, not by the access pattern (the Lut notes below).
constexpr int64_t CHUNK = 32, PREFETCH_TILES = 2, STREAM_PREFETCH_TILES = 8, DENSE_CHUNK = 8, DENSE_ROWS = 4, STREAM_ROWS = 3;

template <bool streaming> constexpr int64_t ahead_tiles = streaming ? STREAM_PREFETCH_TILES : PREFETCH_TILES;
template <bool streaming> static inline void prefetch(const void* p) {  // into L2 only when streaming
  if (streaming) __builtin_prefetch(p, 0, 2);
  else __builtin_prefetch(p);
}
struct Chunk {
  int64_t k0, k1, g;     // rows [k0, k1) of group g
  int64_t step = 1;      // every step-th stored row of them (a dense weight's short rows: see page_chunks)
  int64_t q_offset = 0;  // the integer path: where the chunk's quantized x starts in a row of Args::q
  int64_t index = 0;     // the integer path: the chunk's column in Args::sx, sq (a thread may get a share of chunks)
};

struct Args {  // one call, all row-major and contiguous
  const float* x;
  float* y;
  int64_t M, K, N;
  const void* w;                 // codes [ceil(K / (8/S)), N] uint8, or a dense [K, N] weight
  const float* scales;           // [n_groups, N]            (quantized only)
  const uint8_t* zeros;          // [n_groups, N], or null: every zero is `zero` (symmetric)
  int32_t zero;
  const float* bias;             // [N] or null: added to y
  std::vector<Chunk> chunks;
  const int8_t* q = nullptr;     // the integer path (quantize_x): x quantized, [M, q_stride]
  int64_t q_stride = 0, q_chunks = 0;  // q's row length, sx's and sq's
  const float* sx = nullptr;     // [M, chunks]: the scales of q
  const int32_t* sq = nullptr;   // [M, chunks]: the sums of q
  bool prefetch = true;          // the float tile's software prefetch (off for page-ordered short dense rows)
  bool many = false;             // the many-rows loops (packed codes: run(); x @ E^T: run_rows())
  const float* xp = nullptr;     // x @ E^T's many-rows loop: x packed in blocks of xp_rows rows (pack_rows_x)
  int64_t xp_rows = 0;
  alignas(64) float lut[16] = {};  // code - zero for each 4-bit code (symmetric: the tile's Lut)
  bool tiled = false;            // packed codes in tile order (Tiles below)
  int64_t group = 0;             // packed codes: K-values a scale covers (add_chunks)
};

// Tiles: packed codes as the kernels read them when decoding, each slab's stored rows (TILE_K K-values of one group;
// fewer at a group's or the weight's end) TILE columns at a time, one tile's rows after another ([rows, TILE]
// row-major, the last tile of a row narrower when N is not a multiple of TILE), slab after slab: the same bytes as the
// checkpoint's [stored rows, N], permuted within each slab (belle_retile, in place; quant/linear.py KernelOrder keeps a
// layer's codes so while the kernels use them). One row of x then reads one sequential run of memory a thread, where
// the checkpoint's order has it read a tile's 16 (int4) or 32 (int8) rows from as many places N bytes apart: more
// streams than the prefetchers and the memory pages serve at full speed. TILE is the AVX-512 tile's width (the AVX2 and
// scalar tiles read within a tile). One row, 2 threads, 7B's Linears, weights rotated over 1 GB, in one process
// alternating with the checkpoint's order (stop 31: a Zen 5 guest, 2 vCPUs, whose numpy gemv probe reads 46-49 GB/s),
// ms: int4 g128 4096 x 16384 1.159 -> 0.730, 16384 x 4096 1.065 -> 0.853, 4096 x 12288 0.903 -> 0.636, 4096 x 4096
// 0.322 -> 0.247; int8 2.097 -> 1.741, 1.575 -> 1.335, 1.638 -> 0.887, 0.448 -> 0.366; int4 with int8 x 1.261 -> 0.883,
// 1.111 -> 0.858, 0.901 -> 0.491, 0.345 -> 0.232. TILE_AHEAD: 7B's four int4 Linears in turn (a layer's calls over 24
// layers' weights), 2 threads, ms a layer, 2 / 4 / 8 KB ahead 2.61 / 2.43 / 2.34, another run 4 / 8 / 12 / 16 / 24 KB
// 2.33 / 2.14 / 2.13 / 2.15 / 2.17; int8 4 / 8 / 12 KB 4.57 / 4.44 / 4.48; int4 with int8 x flat. 7B int4 decoding,
// processes alternating, 4 KB 9.79-10.15 tok/s, 8 KB 9.85-10.41.
// Slabs of TILE_K = 128 rather than chunks of CHUNK = 32 K-values (stop 32): the float tile then keeps its
// accumulators over a whole slab, and its once-a-chunk work (the scales, untangle, y) comes a quarter as often; the
// integer path, whose chunks are x's quantization blocks, reads a slab's chunks tile by tile (iblock). One thread,
// codes in the L3 cache (4096 x 4096, one row), ns per 64 code bytes, chunks -> slabs: int4 2.27 -> 1.76 (with Split,
// below), int8 1.31 -> 1.24; int4 with int8 x 1.42. That headroom shows only when the memory is fast: on the stop-32
// host, whose numpy probe swings between ~48 and ~61 GB/s, one row of int4 read ~54-58 GB/s where int8 read 72-74.
constexpr int64_t TILE = 64, TILE_K = 128;
constexpr int64_t TILE_AHEAD = 8192;  // bytes a tiled stream is prefetched ahead (into L2)

struct Rows {
  const char* p;   // stored row chunk.k0 / per at column n
  int64_t stride;  // bytes from one stored row to the next, same columns
};
// The first K-value of the slab (TILE_K K-values of one group: Tiles above) that holds K-value k of group g.
static inline int64_t slab_start(const Args& a, int64_t g, int64_t k) {
  const int64_t g0 = g * a.group;
  return g0 + (k - g0) / TILE_K * TILE_K;
}
static inline Rows rows_at(const Args& a, const Chunk& chunk, int per, int64_t n) {
  const int64_t s0 = chunk.k0 / per;
  if (!a.tiled) return {static_cast<const char*>(a.w) + s0 * a.N + n, a.N};
  const int64_t k0 = slab_start(a, chunk.g, chunk.k0), k1 = std::min({k0 + TILE_K, (chunk.g + 1) * a.group, a.K});
  const int64_t first = k0 / per, rows = (k1 + per - 1) / per - first;  // the slab's stored rows
  const int64_t t = n / TILE * TILE, width = std::min(TILE, a.N - t);
  return {static_cast<const char*>(a.w) + first * a.N + t * rows + (s0 - first) * width + (n - t), width};
}

// What a stored row of chunk prefetches, as a byte offset from its tile at column n0: the tile `columns` further
// along the row. Streaming (STREAM_ROWS rows or fewer over packed codes), a thread reads its chunks one after another,
// each over every column, so that distance lies, past the row's end, in the next chunk's rows. Prefetching the same row there instead (past the end: the next row,
// read long before) left the first tiles of every chunk to demand misses, half a chunk at N = 1024, int4. Measured
// with the variants alternating call by call in one process, cold weights, one row, 2 threads (load 1.1), us, the
// old prefetch -> this one and stream_start: int4 1024 x 1024 57 -> 48, 4096 x 1024 173 -> 132, 1024 x 4096 151 ->
// 137; int8 82 -> 53, 270 -> 173, 198 -> 153; int8 x: int4 50 -> 34, 180 -> 108; int8 79 -> 55, 330 -> 249;
// 4096 x 16384 (long rows: the wrap is rare) 1-3 % less.
static inline int64_t ahead_offset(const Args& a, const Chunk& chunk, int per, int column_bytes, int64_t n0,
                                   int64_t columns, bool streaming) {
  if (a.tiled) return TILE_AHEAD;  // one sequential run
  const int64_t rows = (chunk.k1 - chunk.k0 + per - 1) / per;  // stored rows of the chunk
  return (columns + (streaming && n0 + columns >= a.N ? (rows - 1) * a.N : 0)) * column_bytes;
}

// A thread's first tiles, which no earlier tile prefetched: columns [n0, n1) of its first chunk's rows, into L2.
static inline void stream_start(const Args& a, int per, int column_bytes, int64_t n0, int64_t n1) {
  if (a.chunks.empty()) return;
  if (a.tiled) {  // tiles: the first TILE_AHEAD bytes of the thread's run
    const char* p = rows_at(a, a.chunks[0], per, n0).p;
    for (int64_t line = 0; line < TILE_AHEAD; line += 64) __builtin_prefetch(p + line, 0, 2);
    return;
  }
  for (int64_t kb = a.chunks[0].k0 / per; kb * per < a.chunks[0].k1; ++kb)
    for (int64_t n = n0 * column_bytes; n < n1 * column_bytes; n += 64)
      __builtin_prefetch(static_cast<const char*>(a.w) + kb * a.N * column_bytes + n, 0, 2);
}

// A format reads stored row kb (PER weight rows: PER codes to a byte, or one dense row), columns [n, n + W), as a
// Raw vector, and decode(raw, r, zero) gives weight row kb * PER + r as floats (quantized: code - zero, unscaled).
// Reading a byte once for all its codes halves the work of decoding 4-bit codes.
template <int S> struct Packed {
  static constexpr bool quantized = true;
  static constexpr int PER = 8 / S, column_bytes = 1;
  template <class I> using Raw = typename I::Vi;
  static const char* at(const Args& a, int64_t kb, int64_t n) { return static_cast<const char*>(a.w) + kb * a.N + n; }
  template <class I> static inline Raw<I> read(const char* p) { return I::bytes(reinterpret_cast<const uint8_t*>(p)); }
  template <class I> static inline typename I::V decode(Raw<I> c, int r, typename I::Vi zero) {
    if (r) c = I::shr(c, S * r);
    if (S * (r + 1) < 8) c = I::mask(c, (1 << S) - 1);  // the top slot of a byte needs no mask
    return I::tofloat(I::sub(c, zero));
  }
};
template <class T, int Bytes> struct Dense {
  static constexpr bool quantized = false;
  static constexpr int PER = 1, column_bytes = Bytes;
  template <class I> using Raw = typename I::V;
  static const char* at(const Args& a, int64_t k, int64_t n) {
    return reinterpret_cast<const char*>(static_cast<const T*>(a.w) + k * a.N + n);
  }
  template <class I> static inline typename I::V decode(typename I::V w, int, typename I::Vi) { return w; }
};
// vec(w, i): W floats from element i of a dense weight, whatever its layout.
struct Float32 : Dense<float, 4> {
  template <class I> static inline typename I::V vec(const void* w, int64_t i) {
    return I::loadf(static_cast<const float*>(w) + i);
  }
  template <class I> static inline typename I::V read(const char* p) { return vec<I>(p, 0); }
};
struct BFloat16 : Dense<uint16_t, 2> {
  template <class I> static inline typename I::V vec(const void* w, int64_t i) {
    return I::bf16(static_cast<const uint16_t*>(w) + i);
  }
  template <class I> static inline typename I::V read(const char* p) { return vec<I>(p, 0); }
};
struct Float16 : Dense<uint16_t, 2> {
  template <class I> static inline typename I::V vec(const void* w, int64_t i) {
    return I::f16(static_cast<const uint16_t*>(w) + i);
  }
  template <class I> static inline typename I::V read(const char* p) { return vec<I>(p, 0); }
};

// ------------------------------------------------------------------------------------------ the kernel
// Chunk c's contribution to y[m0 : m0 + MB, n0 : n0 + NV * W], with MB x NV accumulators in registers. The first
// chunk stores y, later ones add to it; quantized formats apply the group's scale and zero here, once per chunk.
//
// Lut (4-bit codes, symmetric, an ISA with LUT16): code - zero is looked up in a 16-float table, one vpermps per
// vector of codes in place of mask, subtract and convert (the work that bounds the float path at one row), and
// exact all the same. One row, 2 threads, A/B in one process (load ~2), ms median without -> with: int4 g128 4096 x
// 16384 2.02 -> 1.67, 16384 x 4096 2.45 -> 2.18, 4096 x 12288 1.45 -> 1.28.
// Wide (AVX-512, a 64-column tile): the tile's 64 code bytes come in one load and each code is shifted down to the
// low bits of the 32-bit lane it lies in, for vpermps, which reads only those: accumulator j then holds columns
// n0 + 4l + j in lane l, put back in order once per chunk (untangle). This saves the four byte-to-dword widenings
// (shuffles, the port vpermps needs too) per stored row. Same A/B, int4 one row: 4096 x 16384 1.60 -> 1.51, 4096
// x 1024 0.162 -> 0.153, 1024 x 4096 0.146 -> 0.141, 1024 x 3072 0.113 -> 0.106.
// Split (the Wide tile at SPLIT_ROWS rows or fewer): a byte's lower and upper codes go to accumulators of their own,
// added once per chunk. One row has only NV accumulators, each taking two dependent FMAs per 64 code bytes, so the
// FMA's latency, not the machine's throughput, bounded the tile: the bare loop over L2-resident codes, one thread
// (stop 32, Zen 5), 1.85 -> 1.43 ns per 64 bytes (a third set of sums for odd/even bytes: 1.42); the kernel over a
// 4096 x 4096 weight in the L3 cache, tile order, one thread, 1 row 2.12 -> 1.76, 2 rows 2.42 -> 2.27.
constexpr int SPLIT_ROWS = 2;
template <class I, class F, int MB, int NV, bool Lut = false>
static inline void tile(const Args& a, int64_t c, int64_t m0, int64_t n0) {
  using V = typename I::V;
  constexpr bool streaming = !F::quantized || MB <= STREAM_ROWS;  // decoding (dense tiles: DENSE_ROWS at most)
  constexpr bool Wide = Lut && NV * I::W == 64;  // see Lut above
  constexpr bool Split = Wide && MB <= SPLIT_ROWS;  // see Split above
  constexpr int64_t tile_bytes = NV * I::W * F::column_bytes;
  constexpr int64_t ahead_columns = ahead_tiles<streaming> / F::column_bytes * NV * I::W;  // the same bytes ahead
  const Chunk& chunk = a.chunks[c];
  typename I::Vi zero[NV];
  for (int j = 0; j < NV; ++j)
    zero[j] = !F::quantized ? I::set1i(0) : a.zeros ? I::bytes(a.zeros + chunk.g * a.N + n0 + j * I::W) : I::set1i(a.zero);
  const V table = Lut ? I::loadf(a.lut) : I::zero();
  // The stored rows are walked by pointer, and what each prefetches lies a fixed distance past it (ahead_offset,
  // computed once): recomputed from Args every row, these took ~25 scalar instructions next to the Wide
  // tile's 23 vector ones, some on the two ports its shifts, vpermps and FMAs need. Quantized, the scales (and zeros)
  // of the tile as far ahead are prefetched too: a second stream, else read by demand misses at the chunk's end.
  // In-process A/B, 2 threads, weights rotated over 1.5 GB (beyond the host's L3), one row, ms, before -> after: int4
  // 4096 x 16384 1.62 -> 1.36, 4096 x 4096 0.46 -> 0.40, 1024 x 4096 0.121 -> 0.104 (3 rows 3.11 -> 2.79); int4
  // asymmetric and int8 2-5 % less.
  const Rows rows = F::quantized ? rows_at(a, chunk, F::PER, n0)  // chunks start on a whole byte
                                 : Rows{F::at(a, chunk.k0, n0), chunk.step * a.N * F::column_bytes};
  const char* row = rows.p;
  const int64_t stride = rows.stride;
  const int64_t ahead = ahead_offset(a, chunk, F::PER, F::column_bytes, n0, ahead_columns, streaming);
  if (F::quantized && a.prefetch) {
    int64_t n = n0 + ahead_columns, g = chunk.g;
    if (n >= a.N) n -= a.N, g = c + 1 < int64_t(a.chunks.size()) ? a.chunks[c + 1].g : g;
    const char* scales = reinterpret_cast<const char*>(a.scales + g * a.N + n);
    for (int64_t line = 0; line < NV * I::W * 4; line += 64) prefetch<streaming>(scales + line);
    if (a.zeros) prefetch<streaming>(a.zeros + g * a.N + n);
  }
  const float* x[MB];
  for (int i = 0; i < MB; ++i) x[i] = a.x + (m0 + i) * a.K;
  V acc[MB][NV], odd[Split ? MB : 1][NV];  // odd: the Split tile's sums of a byte's upper codes
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = odd[Split ? i : 0][j] = I::zero();
  for (int64_t kb = chunk.k0 / F::PER; kb * F::PER < chunk.k1; kb += chunk.step, row += stride) {
    // (past the end of a row or of the weight, a prefetch is only a hint: it never faults)
    if (a.prefetch)
      for (int64_t line = 0; line < tile_bytes; line += 64) prefetch<streaming>(row + ahead + line);
    if constexpr (Wide) {  // the tile's 64 bytes in one load: byte j of lane l is column n0 + 4l + j
      const typename I::Vi raw = I::load64(reinterpret_cast<const uint8_t*>(row));
      for (int r = 0; r < 2; ++r) {
        const int64_t k = kb * 2 + r;
        if (k >= chunk.k1) break;  // K odd: the last byte's upper codes are padding
        V w[NV];
        for (int j = 0; j < NV; ++j) w[j] = I::lookup(table, I::shr(raw, 8 * j + 4 * r));
        for (int i = 0; i < MB; ++i) {
          const V xk = I::set1(x[i][k]);
          V* sums = Split && r ? odd[Split ? i : 0] : acc[i];
          for (int j = 0; j < NV; ++j) sums[j] = I::fma(xk, w[j], sums[j]);
        }
      }
      continue;
    }
    typename F::template Raw<I> raw[NV];
    for (int j = 0; j < NV; ++j) raw[j] = F::template read<I>(row + j * I::W * F::column_bytes);
    for (int r = 0; r < F::PER; ++r) {
      const int64_t k = kb * F::PER + r;
      if (F::PER > 1 && k >= chunk.k1) break;  // K odd: the last byte's upper codes are padding
      V w[NV];
      if constexpr (Lut) {
        for (int j = 0; j < NV; ++j) w[j] = I::lookup(table, r ? I::shr(raw[j], 4) : raw[j]);
      } else {
        for (int j = 0; j < NV; ++j) w[j] = F::template decode<I>(raw[j], r, zero[j]);
      }
      for (int i = 0; i < MB; ++i) {
        const V xk = I::set1(x[i][k]);
        for (int j = 0; j < NV; ++j) acc[i][j] = I::fma(xk, w[j], acc[i][j]);
      }
    }
  }
  if constexpr (Split)
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NV; ++j) acc[i][j] = I::add(acc[i][j], odd[i][j]);
  if constexpr (Wide)
    for (int i = 0; i < MB; ++i) I::untangle(acc[i]);
  for (int j = 0; j < NV; ++j) {
    const int64_t n = n0 + j * I::W;
    const V s = F::quantized ? I::loadf(a.scales + chunk.g * a.N + n) : I::set1(1.0f);
    for (int i = 0; i < MB; ++i) {
      float* y = a.y + (m0 + i) * a.N + n;
      const V before = c ? I::loadf(y) : a.bias ? I::loadf(a.bias + n) : I::zero();
      I::storef(y, I::fma(s, acc[i][j], before));  // y (+)= scale * acc
    }
  }
}

// The tiles of rows [m0, m0 + mb), mb <= MB, with the register-resident row count as a template argument.
template <class I, class F, int NV, bool Lut = false>
static inline void tiles(const Args& a, int64_t c, int64_t m0, int64_t mb, int64_t n) {
  static_assert(I::MB == 4, "the switch below covers 1..4 rows");
  if constexpr (I::LUT16 && F::quantized && F::PER == 2 && !Lut)
    if (!a.zeros) return tiles<I, F, NV, true>(a, c, m0, mb, n);
  switch (mb) {
    case 1: tile<I, F, 1, NV, Lut>(a, c, m0, n); break;
    case 2: tile<I, F, 2, NV, Lut>(a, c, m0, n); break;
    case 3: tile<I, F, 3, NV, Lut>(a, c, m0, n); break;
    default: tile<I, F, 4, NV, Lut>(a, c, m0, n); break;
  }
}

// Columns [n0, n1) (one thread's share) for every row of x. Chunk by chunk, so that the weight is read row after
// row, in long runs of contiguous bytes (a tile's K rows at a time would touch a new page per row). A panel of
// columns bounds the slice of y that each chunk revisits (M x panel floats) when M is large. A streaming read (the
// tile's `streaming`) takes its columns as one panel: its prefetch runs on past a row's end into the next chunk
// (ahead_offset), so a panel's end left the next chunk's first tiles to demand misses and prefetched columns of the
// same rows that the next panel reads long after. One panel instead, in one process, alternating, weights rotated
// over 1.5-3 GB, 2 threads, ms: the int8 head 4096 x 250,880 (16 panels) one row 40.3 -> 37.2, two rows 51.4 ->
// 38.7; int4 g128 two rows 4096 x 16384 1.99 -> 1.72, 4096 x 12288 2.77 -> 2.19, three rows 3.53 -> 2.82 and 2.15
// -> 1.64; bfloat16 two rows 4096 x 16384 4.70 -> 4.20. (Panels of 32K or 64K columns with the prefetch wrapping at
// the panel's end instead: no faster than one; 4K-8K slower.)
// The columns of one panel (above): all `columns` when streaming
static inline int64_t panel_width(const Args& a, int64_t tile_width, int64_t columns, bool streaming) {
  return streaming ? columns : std::max<int64_t>(tile_width, (16384 / a.M) / tile_width * tile_width);
}

template <class I, class F>
static inline void block(const Args& a, int64_t n0, int64_t n1) {
  constexpr int64_t tile_width = I::NV * I::W;
  const bool streaming = !F::quantized || a.M <= STREAM_ROWS;  // dense weights come here at DENSE_ROWS rows at most
  const int64_t panel = panel_width(a, tile_width, n1 - n0, streaming);
  if (F::quantized && streaming)
    stream_start(a, F::PER, F::column_bytes, n0, std::min(n1, n0 + STREAM_PREFETCH_TILES * tile_width));
  for (int64_t p0 = n0; p0 < n1; p0 += panel) {
    const int64_t p1 = std::min(n1, p0 + panel);
    for (int64_t c = 0; c < int64_t(a.chunks.size()); ++c) {
      int64_t n = p0;
      for (; n + tile_width <= p1; n += tile_width)
        for (int64_t m0 = 0; m0 < a.M; m0 += I::MB) tiles<I, F, I::NV>(a, c, m0, std::min<int64_t>(I::MB, a.M - m0), n);
      for (; n + I::W <= p1; n += I::W)  // odd N: single vectors, then single columns
        for (int64_t m0 = 0; m0 < a.M; m0 += I::MB) tiles<I, F, 1>(a, c, m0, std::min<int64_t>(I::MB, a.M - m0), n);
      for (; n < p1; ++n)
        for (int64_t m0 = 0; m0 < a.M; m0 += I::MB) tiles<Scalar, F, 1>(a, c, m0, std::min<int64_t>(I::MB, a.M - m0), n);
    }
  }
}

// ------------------------------------------------------------------------------------------ many rows
// At MANY_ROWS rows of x or more (continuous batching's decoding steps) the FMAs bound block(), not the weight's
// bytes, and its tiles reach ~78 % of the FMA peak at 16 rows (one thread: 78 of ~98 GFLOP/s): each decodes its codes
// again for every MB = 4 rows, and its accumulators go to y after every chunk of 32 K-values. Here SPAN chunks x one
// tile of columns are decoded once, scaled ((code - zero) * scale: the dequantized weight, as the reference matmul
// has it), into an L1-resident buffer (AVX-512: 128 x 48 floats, 24 KiB), and a register-blocked microkernel runs
// every row over it: MR rows x NV vectors of accumulators (AVX-512: 8 x 3 = 24 of 32 registers, with 3 weights and
// one x; AVX2: 6 x 2 = 12 of 16), loaded from y once per SPAN chunks. 16 rows, one thread, alternating with block()
// in one process: 85-93 GFLOP/s, int4 0.79-0.90x block()'s time, int8 0.86-1.00x (bloom-560m's and 7B's Linears, a
// 250,880-column head). A row's numbers differ from the fewer-row path's by float rounding only (the scale applied
// per weight instead of per chunk sum).
// Dense weights (float32, bfloat16, float16) decode nothing: they take gemm() ("dense many rows" below).
constexpr int64_t MANY_ROWS = 5, SPAN = 4;
template <class I> struct Many { static constexpr int MR = 4, NV = 1; };  // the portable path
#ifdef BELLE_X86
template <> struct Many<Avx2> { static constexpr int MR = 6, NV = 2; };
template <> struct Many<Avx512> { static constexpr int MR = 8, NV = 3; };
#endif

// buf[k - k0][NV * W] = (code - zero) * scale for chunks [c0, c1)'s rows (k0: chunk c0's first), columns
// [n0, n0 + NV * W).
template <class I, class F, int NV>
static inline void decode_tile(const Args& a, int64_t c0, int64_t c1, int64_t n0, float* buf) {
  for (int64_t c = c0; c < c1; ++c) {
    const Chunk& chunk = a.chunks[c];
    typename I::Vi zero[NV];
    typename I::V scale[NV];
    for (int j = 0; j < NV; ++j) {
      zero[j] = a.zeros ? I::bytes(a.zeros + chunk.g * a.N + n0 + j * I::W) : I::set1i(a.zero);
      scale[j] = I::loadf(a.scales + chunk.g * a.N + n0 + j * I::W);
    }
    Rows rows[NV];
    for (int j = 0; j < NV; ++j) rows[j] = rows_at(a, chunk, F::PER, n0 + j * I::W);
    for (int64_t kb = chunk.k0 / F::PER; kb * F::PER < chunk.k1; ++kb) {  // as tile(), prefetch included
      const int64_t r0 = kb - chunk.k0 / F::PER;
      const char* ahead = a.tiled ? rows[0].p + r0 * rows[0].stride + PREFETCH_TILES * TILE * TILE_K / F::PER
                                  : F::at(a, kb, n0 + PREFETCH_TILES * NV * I::W);
      for (int line = 0; line < NV * I::W * F::column_bytes; line += 64) __builtin_prefetch(ahead + line);
      typename F::template Raw<I> raw[NV];
      for (int j = 0; j < NV; ++j) raw[j] = F::template read<I>(rows[j].p + r0 * rows[j].stride);
      for (int r = 0; r < F::PER; ++r) {
        const int64_t k = kb * F::PER + r;
        if (F::PER > 1 && k >= chunk.k1) break;
        float* out = buf + (k - a.chunks[c0].k0) * NV * I::W;
        for (int j = 0; j < NV; ++j)
          I::storef(out + j * I::W, I::mul(scale[j], F::template decode<I>(raw[j], r, zero[j])));
      }
    }
  }
}

// y[m0 : m0 + MR, tile] += x's rows times chunks [c0, c1)'s decoded tile, MR x NV accumulators in registers (the
// first chunks start from the bias).
template <class I, int MR, int NV>
static inline void micro(const Args& a, int64_t c0, int64_t c1, const float* buf, int64_t m0, int64_t n0) {
  using V = typename I::V;
  const float* x = a.x + m0 * a.K;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) {
      const int64_t n = n0 + j * I::W;
      acc[i][j] = c0 ? I::loadf(a.y + (m0 + i) * a.N + n) : a.bias ? I::loadf(a.bias + n) : I::zero();
    }
  const float* w = buf;
  for (int64_t k = a.chunks[c0].k0; k < a.chunks[c1 - 1].k1; ++k, w += NV * I::W) {
    V wk[NV];
    for (int j = 0; j < NV; ++j) wk[j] = I::loadf(w + j * I::W);
    for (int i = 0; i < MR; ++i) {
      const V xk = I::set1(x[i * a.K + k]);
      for (int j = 0; j < NV; ++j) acc[i][j] = I::fma(xk, wk[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) I::storef(a.y + (m0 + i) * a.N + n0 + j * I::W, acc[i][j]);
}

// micro() for mb <= MR rows, the row count a template argument.
template <class I, int NV, int MR>
static inline void micros(const Args& a, int64_t c0, int64_t c1, const float* buf, int64_t m0, int64_t mb,
                          int64_t n0) {
  if constexpr (MR > 1)
    if (mb < MR) return micros<I, NV, MR - 1>(a, c0, c1, buf, m0, mb, n0);
  micro<I, MR, NV>(a, c0, c1, buf, m0, n0);
}

// Decode a tile of chunks [c0, c1), then every row over it, in MR-row blocks.
template <class I, class F, int NV>
static inline void many_tile(const Args& a, int64_t c0, int64_t c1, int64_t n0, float* buf) {
  decode_tile<I, F, NV>(a, c0, c1, n0, buf);
  for (int64_t m0 = 0; m0 < a.M; m0 += Many<I>::MR)
    micros<I, NV, Many<I>::MR>(a, c0, c1, buf, m0, std::min<int64_t>(Many<I>::MR, a.M - m0), n0);
}

// block() for many rows: the same order (panels, then SPAN chunks at a time, tiles of a panel), single vectors and
// columns at the end.
template <class I, class F>
static inline void many_block(const Args& a, int64_t n0, int64_t n1) {
  constexpr int64_t tile_width = Many<I>::NV * I::W;
  alignas(64) float buf[SPAN * CHUNK * tile_width];
  const int64_t panel = panel_width(a, tile_width, n1 - n0, false);
  const int64_t chunks = a.chunks.size();
  for (int64_t p0 = n0; p0 < n1; p0 += panel) {
    const int64_t p1 = std::min(n1, p0 + panel);
    for (int64_t c0 = 0; c0 < chunks; c0 += SPAN) {
      const int64_t c1 = std::min(chunks, c0 + SPAN);
      int64_t n = p0;
      for (; n + tile_width <= p1; n += tile_width) many_tile<I, F, Many<I>::NV>(a, c0, c1, n, buf);
      for (; n + I::W <= p1; n += I::W) many_tile<I, F, 1>(a, c0, c1, n, buf);
      for (; n < p1; ++n) many_tile<Scalar, F, 1>(a, c0, c1, n, buf);
    }
  }
}

// ------------------------------------------------------------------------------------------ dense many rows
// A dense weight (float32, bfloat16, float16) times more than DENSE_ROWS rows of x (continuous batching's decoding
// steps) is bound by the FMAs, and the 4-row tiles above left a third of the peak unused (16 rows, 2 threads, float32:
// 83-133 GFLOP/s of ~196 on bloom-560m's Linears, 4096 x 1024 the worst): each tile's 32 x 64 weights are read again
// for every 4 rows of x, and with N a multiple of 1024 their 32 rows, N floats apart, fall in 4 sets of the 8-way L1,
// so all but 8 come from L2 each time; y goes to memory and back every 32 K-values; and the software prefetch never
// reaches past the end of a thread's columns, so every chunk of 32 rows starts with a wait on memory (at 512 columns
// a thread, 2 of its 8 tiles: 4096 x 1024 and 1024 x 1024 were the slowest).
//
// Here, as in BLIS's and llamafile's sgemm (tinyBLAS), the weight is packed: a sliver of KC rows x NR columns (AVX-512
// 128 x 64, 32 KiB of float32) is copied, bfloat16/float16 widened to float32, into a contiguous buffer, and a
// register-blocked microkernel runs every block of MR rows of x over it from there (AVX-512: 6 rows x 4 vectors = 24
// of 32 registers, 4 weight loads and 6 broadcasts per 24 FMAs; AVX2: 6 x 2 of 16), x packed once a call in blocks of
// MR rows, k-major, so that a step's MR broadcasts read one line. While the first row block runs over a sliver it
// prefetches the next sliver's rows into L2, one row of it per K-value, spread over the compute rather than issued
// in one burst (a burst of hundreds of prefetches overflows the miss buffers and most are dropped: the reason the
// quantized loop's copy, which prefetched a tile's 128 rows at once, was slower for dense weights).
//
// A row's result does not depend on the other rows or on M: the accumulators start from y (the bias, or 0, for the
// first K panel), so every y[m, n] is one FMA chain over k = 0 .. K-1 in order, whatever the row block, the panel
// size or the thread's share of columns.
constexpr int64_t KC = 128;
template <class I> struct Gemm { static constexpr int MR = 4, NV = 1; };  // the portable path
#ifdef BELLE_X86
template <> struct Gemm<Avx2> { static constexpr int MR = 6, NV = 2; };
template <> struct Gemm<Avx512> { static constexpr int MR = 6, NV = 4; };
#endif

// x in blocks of P rows, k-major: row m, value k at xp[(m / P * P) * K + k * P + m % P]; a last partial block padded
// with zeros.
static void pack_x_blocks(Args& a, int64_t P, std::vector<float>& xp) {
  xp.assign((a.M + P - 1) / P * P * a.K, 0.0f);
  for (int64_t m = 0; m < a.M; ++m) {
    float* out = xp.data() + (m / P * P) * a.K + m % P;
    for (int64_t k = 0; k < a.K; ++k) out[k * P] = a.x[m * a.K + k];
  }
  a.xp = xp.data(), a.xp_rows = P;
}

// y[m0 : m0 + MR, n0 : n0 + NV * W] += x's rows [k0, k1) times the sliver, MR x NV accumulators in registers. Pack:
// read the sliver from the weight (F) and write it to buf as float32 on the way (the first block of rows), else read
// buf. LINES > 0: prefetch LINES lines of row k of `ahead` (stride bytes apart) into L2 at each k.
template <class I, class F, int MR, int NV, bool Pack, int LINES>
static inline void gemm_micro(const Args& a, float* buf, int64_t k0, int64_t k1, int64_t m0, int64_t n0,
                              const char* ahead, int64_t stride) {
  using V = typename I::V;
  const int64_t P = a.xp_rows;
  const float* x = a.xp + m0 * a.K + k0 * P;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) {
      const int64_t n = n0 + j * I::W;
      acc[i][j] = k0 ? I::loadf(a.y + (m0 + i) * a.N + n) : a.bias ? I::loadf(a.bias + n) : I::zero();
    }
  for (int64_t k = 0; k < k1 - k0; ++k, buf += NV * I::W, x += P) {
    if (LINES && ahead)
      for (int l = 0; l < LINES; ++l) __builtin_prefetch(ahead + k * stride + 64 * l, 0, 2);
    V w[NV];
    for (int j = 0; j < NV; ++j) {
      if constexpr (Pack) I::storef(buf + j * I::W, w[j] = F::template vec<I>(a.w, (k0 + k) * a.N + n0 + j * I::W));
      else w[j] = I::loadf(buf + j * I::W);
    }
    for (int i = 0; i < MR; ++i) {
      const V xk = I::set1(x[i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = I::fma(xk, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) I::storef(a.y + (m0 + i) * a.N + n0 + j * I::W, acc[i][j]);
}

// buf[k - k0][width] = weight rows [k0, k1), columns [n0, n0 + cols), as float32, zero-padded to `width` columns.
template <class F>
static inline void pack_columns(const Args& a, int64_t k0, int64_t k1, int64_t n0, int64_t cols, int64_t width,
                                float* buf) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t j = 0; j < width; ++j)
      buf[(k - k0) * width + j] = j < cols ? F::template vec<Scalar>(a.w, k * a.N + n0 + j) : 0.0f;
}

// Every block of x's rows over a sliver (a last block of mb < MR rows: the row count a template argument); the first
// block packs it (Pack) and prefetches `ahead`.
template <class I, class F, int NV, bool Pack, int LINES>
static inline void gemm_rows(const Args& a, float* buf, int64_t k0, int64_t k1, int64_t n0, const char* ahead,
                             int64_t stride, int64_t m0 = 0) {
  constexpr int MR = Gemm<I>::MR;
  static_assert(MR <= 6, "the switch below covers 1..6 rows");
  for (; m0 < a.M; m0 += MR) {
    if (Pack && m0) return gemm_rows<I, F, NV, false, 0>(a, buf, k0, k1, n0, nullptr, 0, m0);  // the other blocks
    switch (std::min<int64_t>(MR, a.M - m0)) {
      case 1: gemm_micro<I, F, 1, NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
      case 2: gemm_micro<I, F, std::min(2, MR), NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
      case 3: gemm_micro<I, F, std::min(3, MR), NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
      case 4: gemm_micro<I, F, std::min(4, MR), NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
      case 5: gemm_micro<I, F, std::min(5, MR), NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
      default: gemm_micro<I, F, MR, NV, Pack, LINES>(a, buf, k0, k1, m0, n0, ahead, stride); break;
    }
  }
}

// Columns [n0, n1) (one thread's share) for every row of x: K panels of KC rows, the share's slivers in each. The last
// columns (fewer than a sliver) are padded with zeros to a whole one, in a copy of their slice of y, so that they take
// the same vector FMAs as the others: a scalar loop's may be contracted or not depending on how the compiler
// vectorizes it across the rows of a block, and a row's result would then depend on its place in the batch.
template <class I, class F>
static inline void gemm(const Args& a, int64_t n0, int64_t n1) {
  constexpr int NV = Gemm<I>::NV, NR = NV * I::W, LINES = (NR * F::column_bytes + 63) / 64;
  alignas(64) float buf[KC * NR];
  const int64_t whole = n0 + (n1 - n0) / NR * NR, stride = a.N * F::column_bytes;
  for (int64_t k0 = 0; k0 < a.K; k0 += KC) {
    const int64_t k1 = std::min(a.K, k0 + KC);
    for (int64_t n = n0; n < whole; n += NR) {  // the next sliver: the next NR columns, or the next panel's first
      const bool last = n + NR >= whole;
      const char* ahead = last && k1 >= a.K ? nullptr : F::at(a, last ? k1 : k0, last ? n0 : n + NR);
      gemm_rows<I, F, NV, true, LINES>(a, buf, k0, k1, n, ahead, stride);
    }
  }
  if (whole == n1) return;
  std::vector<float> y(a.M * NR), bias(NR, 0.0f);
  Args rest = a;
  rest.y = y.data(), rest.N = NR;
  if (a.bias) std::copy(a.bias + whole, a.bias + n1, bias.begin()), rest.bias = bias.data();
  for (int64_t k0 = 0; k0 < a.K; k0 += KC) {
    const int64_t k1 = std::min(a.K, k0 + KC);
    pack_columns<F>(a, k0, k1, whole, n1 - whole, NR, buf);
    gemm_rows<I, F, NV, false, 0>(rest, buf, k0, k1, 0, nullptr, 0);
  }
  for (int64_t m = 0; m < a.M; ++m) std::copy(&y[m * NR], &y[m * NR] + (n1 - whole), a.y + m * a.N + whole);
}

// Columns [n0, n1) of the float path: the many-rows loops where run() chose them (Args::many), else the tiles.
template <class I, class F>
static inline void columns(const Args& a, int64_t n0, int64_t n1) {
  if (a.many) {
    if constexpr (F::quantized) return many_block<I, F>(a, n0, n1);
    else return gemm<I, F>(a, n0, n1);
  }
  block<I, F>(a, n0, n1);
}

// One entry point per instruction set; `flatten` compiles everything above into it for that target.
template <class F> __attribute__((flatten)) static void block_scalar(const Args& a, int64_t n0, int64_t n1) {
  columns<Scalar, F>(a, n0, n1);
}
#ifdef BELLE_X86
template <class F> __attribute__((target("avx2,fma,f16c"), flatten))
static void block_avx2(const Args& a, int64_t n0, int64_t n1) {
  columns<Avx2, F>(a, n0, n1);
}
template <class F> __attribute__((target("avx512f,avx512bw,avx512vl"), flatten))
static void block_avx512(const Args& a, int64_t n0, int64_t n1) {
  columns<Avx512, F>(a, n0, n1);
}
#endif

// ------------------------------------------------------------------------------------------ int8 activations
// The integer path for 4- and 8-bit codes (opt-in: PADDLE_BELLE_INT8_ACTIVATIONS=1, read in paddle_belle/kernels;
// otherwise the float path above). Decoding at a few rows is bound by the work of turning codes into floats (per code:
// widen, subtract the zero, convert, one FMA per row), not by the weight's bytes. As llama.cpp's q8_0 does (ggml
// quantize_row_q8_0: one scale per 32 values, round to nearest; proven on real 7B models whose activations have
// outliers, because a block's scale follows its own largest value), x is quantized per row in blocks of at most
// 32 K-values (a chunk: never across a weight group), sx = max|x| / 127, q = round-half-even(x / sx) in int8,
// and each block is one exact integer dot product:
//   y[m, n] += scale[g, n] * (sx[m, c] * (sum_k q[m, k] * code[k, n] - zero[g, n] * sum_k q[m, k]))
// |sum| <= 32 * 255 * 127 < 2^24, so its float conversion is exact too and every path (VNNI, AVX2, scalar, the
// Paddle fallback in quant/linear.py) computes the same integers; only the float sums over chunks differ in order.
// Four K-values of one column make one 32-bit lane of unsigned codes, multiplied with four int8 values of q
// and summed into the lane (AVX-512 VNNI vpdpbusd; AVX2 vpmaddwd on 16-bit halves, exact; scalar the same sums).
// A 4-bit byte holds K and K+1, so two packed rows give the lane [k0, k2, k1, k3]: q is stored permuted alike,
// once per call. quads() builds QV lane vectors from a tile's 4 K rows; their columns come out in an ISA-specific
// order that natural() undoes on the integer sums, once per chunk.

// Lane bytes [a0 a1 a2 a3] (unsigned) times [b0 b1 b2 b3] (int8), summed: one 32-bit lane of vpdpbusd.
static inline int32_t dot4(uint32_t a, int32_t b) {
  int32_t s = 0;
  for (int i = 0; i < 4; ++i) s += int32_t((a >> (8 * i)) & 0xff) * int32_t(int8_t(uint32_t(b) >> (8 * i)));
  return s;
}

struct ScalarInt : Scalar {
  static constexpr int QV = 1;  // lane vectors in a tile: one column
  using Q = int32_t;
  static inline Q qset(int32_t q4) { return q4; }
  static inline Vi dot(Vi acc, Vi codes, Q q) { return acc + dot4(uint32_t(codes), q); }
  template <int S> static inline void quads(const uint8_t* p, int64_t stride, Vi* out) {
    const uint32_t r0 = p[0], r1 = p[stride];
    if (S == 8) out[0] = int32_t(r0 | r1 << 8 | uint32_t(p[2 * stride]) << 16 | uint32_t(p[3 * stride]) << 24);
    else out[0] = int32_t((r0 & 15) | (r1 & 15) << 8 | (r0 >> 4) << 16 | (r1 >> 4) << 24);  // [k0, k2, k1, k3]
  }
  static inline void natural(Vi*) {}
};

#ifdef BELLE_X86
// AVX2 and AVX-512 build lanes the same way within each 128-bit block: unpacking bytes then 16-bit pairs of the
// 4 K rows gives, for block L, columns 16L + 4j .. 16L + 4j + 3 in vector j.
template <class B, class I> struct Unpack {
  template <int S> static inline void quads(const uint8_t* p, int64_t stride, B* out) {
    if (S == 8) {
      const B r0 = I::load(p), r1 = I::load(p + stride), r2 = I::load(p + 2 * stride), r3 = I::load(p + 3 * stride);
      const B lo01 = I::unpacklo8(r0, r1), hi01 = I::unpackhi8(r0, r1);
      const B lo23 = I::unpacklo8(r2, r3), hi23 = I::unpackhi8(r2, r3);
      out[0] = I::unpacklo16(lo01, lo23), out[1] = I::unpackhi16(lo01, lo23);
      out[2] = I::unpacklo16(hi01, hi23), out[3] = I::unpackhi16(hi01, hi23);
    } else {  // 16-bit [p0, p1] -> low nibbles [k0, k2], high nibbles [k1, k3] -> lanes [k0, k2, k1, k3]
      const B r0 = I::load(p), r1 = I::load(p + stride), m = I::set1i8(15);
      const B lo = I::unpacklo8(r0, r1), hi = I::unpackhi8(r0, r1);
      const B lo_even = I::andb(lo, m), lo_odd = I::andb(I::srli16(lo, 4), m);
      const B hi_even = I::andb(hi, m), hi_odd = I::andb(I::srli16(hi, 4), m);
      out[0] = I::unpacklo16(lo_even, lo_odd), out[1] = I::unpackhi16(lo_even, lo_odd);
      out[2] = I::unpacklo16(hi_even, hi_odd), out[3] = I::unpackhi16(hi_even, hi_odd);
    }
  }
};

struct Avx2Int : Avx2, Unpack<__m256i, Avx2Int> {
  static constexpr int QV = 4;
  AVX2 Vi load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  AVX2 Vi unpacklo8(Vi a, Vi b) { return _mm256_unpacklo_epi8(a, b); }
  AVX2 Vi unpackhi8(Vi a, Vi b) { return _mm256_unpackhi_epi8(a, b); }
  AVX2 Vi unpacklo16(Vi a, Vi b) { return _mm256_unpacklo_epi16(a, b); }
  AVX2 Vi unpackhi16(Vi a, Vi b) { return _mm256_unpackhi_epi16(a, b); }
  AVX2 Vi andb(Vi a, Vi b) { return _mm256_and_si256(a, b); }
  AVX2 Vi srli16(Vi a, int n) { return _mm256_srli_epi16(a, n); }
  AVX2 Vi set1i8(char v) { return _mm256_set1_epi8(v); }
  struct Q {
    __m256i even, odd;  // q's bytes 0, 2 and 1, 3 sign-extended to 16 bits
  };
  AVX2 Q qset(int32_t q4) {
    const __m256i v = _mm256_set1_epi32(q4);
    return {_mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8), _mm256_srai_epi16(v, 8)};
  }
  AVX2 Vi dot(Vi acc, Vi codes, Q q) {  // codes < 256 and |q| <= 127 as 16-bit: vpmaddwd is exact
    const __m256i even = _mm256_and_si256(codes, _mm256_set1_epi16(0xff)), odd = _mm256_srli_epi16(codes, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(even, q.even), _mm256_madd_epi16(odd, q.odd)));
  }
  AVX2 void natural(Vi* a) {  // blocks [A0.0 A1.0] [A2.0 A3.0] [A0.1 A1.1] [A2.1 A3.1]: 32 columns in order
    const Vi b0 = _mm256_permute2x128_si256(a[0], a[1], 0x20), b1 = _mm256_permute2x128_si256(a[2], a[3], 0x20);
    const Vi b2 = _mm256_permute2x128_si256(a[0], a[1], 0x31), b3 = _mm256_permute2x128_si256(a[2], a[3], 0x31);
    a[0] = b0, a[1] = b1, a[2] = b2, a[3] = b3;
  }
};

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static inline
struct Avx512Int : Avx512, Unpack<__m512i, Avx512Int> {
  static constexpr int QV = 4;
  AVX512 Vi load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  AVX512 Vi unpacklo8(Vi a, Vi b) { return _mm512_unpacklo_epi8(a, b); }
  AVX512 Vi unpackhi8(Vi a, Vi b) { return _mm512_unpackhi_epi8(a, b); }
  AVX512 Vi unpacklo16(Vi a, Vi b) { return _mm512_unpacklo_epi16(a, b); }
  AVX512 Vi unpackhi16(Vi a, Vi b) { return _mm512_unpackhi_epi16(a, b); }
  AVX512 Vi andb(Vi a, Vi b) { return _mm512_and_si512(a, b); }
  AVX512 Vi srli16(Vi a, int n) { return _mm512_srli_epi16(a, n); }
  AVX512 Vi set1i8(char v) { return _mm512_set1_epi8(v); }
  using Q = __m512i;
  AVX512 Q qset(int32_t q4) { return _mm512_set1_epi32(q4); }
  VNNI Vi dot(Vi acc, Vi codes, Q q) { return _mm512_dpbusd_epi32(acc, codes, q); }
  AVX512 void natural(Vi* a) { blocks(a); }  // 64 columns in order
};
#endif

// Chunk c's contribution to y[m0 : m0 + MB, n0 : n0 + QV * W], S-bit codes, x quantized (Args::q, sx, sq).
template <class I, int S, int MB>
static inline void itile(const Args& a, int64_t c, int64_t m0, int64_t n0) {
  using V = typename I::V;
  using Vi = typename I::Vi;
  constexpr int QV = I::QV, PER = 8 / S, ROWS = 4 / PER;  // ROWS: stored rows of 4 K-values
  constexpr bool streaming = MB <= STREAM_ROWS;
  const Chunk& chunk = a.chunks[c];
  Vi acc[MB][QV];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < QV; ++j) acc[i][j] = I::set1i(0);
  const int64_t steps = (chunk.k1 - chunk.k0 + 3) / 4, stored = (a.K + PER - 1) / PER;
  const Rows rows = rows_at(a, chunk, PER, n0);
  const int64_t ahead = ahead_offset(a, chunk, PER, 1, n0, ahead_tiles<streaming> * QV * I::W, streaming);
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t kb = chunk.k0 / PER + s * ROWS;  // chunks start on a whole byte
    const uint8_t* p = reinterpret_cast<const uint8_t*>(rows.p) + s * ROWS * rows.stride;
    for (int r = 0; r < ROWS; ++r)  // as the float tile: a tile ahead, row by row
      prefetch<streaming>(p + r * rows.stride + ahead);
    Vi codes[QV];
    if (kb + ROWS <= stored) {
      I::template quads<S>(p, rows.stride, codes);
    } else {  // the weight's last rows: past them, zeros (their q is 0 too) instead of reading beyond the end
      alignas(64) uint8_t pad[ROWS][64] = {};
      for (int64_t r = 0; kb + r < stored; ++r) std::memcpy(pad[r], p + r * rows.stride, QV * I::W);
      I::template quads<S>(pad[0], 64, codes);
    }
    for (int i = 0; i < MB; ++i) {
      int32_t q4;
      std::memcpy(&q4, a.q + (m0 + i) * a.q_stride + chunk.q_offset + 4 * s, 4);
      const typename I::Q q = I::qset(q4);
      for (int j = 0; j < QV; ++j) acc[i][j] = I::dot(acc[i][j], codes[j], q);
    }
  }
  V scale[QV], zero[QV];
  for (int j = 0; j < QV; ++j) {
    const int64_t n = n0 + j * I::W;
    scale[j] = I::loadf(a.scales + chunk.g * a.N + n);
    zero[j] = a.zeros ? I::tofloat(I::bytes(a.zeros + chunk.g * a.N + n)) : I::set1(float(a.zero));
  }
  for (int i = 0; i < MB; ++i) {
    I::natural(acc[i]);
    const int64_t mc = (m0 + i) * a.q_chunks + chunk.index;
    const V sx = I::set1(a.sx[mc]), minus_sq = I::set1(-float(a.sq[mc]));
    for (int j = 0; j < QV; ++j) {
      const int64_t n = n0 + j * I::W;
      const V dot = I::fma(minus_sq, zero[j], I::tofloat(acc[i][j]));  // integers below 2^24: exact
      float* y = a.y + (m0 + i) * a.N + n;
      const V before = c ? I::loadf(y) : a.bias ? I::loadf(a.bias + n) : I::zero();
      I::storef(y, I::fma(scale[j], I::mul(sx, dot), before));
    }
  }
}

template <class I, int S>
static inline void itiles(const Args& a, int64_t c, int64_t m0, int64_t mb, int64_t n) {
  switch (mb) {
    case 1: itile<I, S, 1>(a, c, m0, n); break;
    case 2: itile<I, S, 2>(a, c, m0, n); break;
    case 3: itile<I, S, 3>(a, c, m0, n); break;
    default: itile<I, S, 4>(a, c, m0, n); break;
  }
}

// As block(): chunk by chunk, the columns of a panel in tiles, single columns at the end (the scalar tile).
template <class I, int S>
static inline void iblock(const Args& a, int64_t n0, int64_t n1) {
  constexpr int64_t tile_width = I::QV * I::W, MB = 4;
  const bool streaming = a.M <= STREAM_ROWS;
  const int64_t panel = panel_width(a, tile_width, n1 - n0, streaming);
  if (streaming) stream_start(a, 8 / S, 1, n0, std::min(n1, n0 + STREAM_PREFETCH_TILES * tile_width));
  const int64_t chunks = a.chunks.size();
  for (int64_t p0 = n0; p0 < n1; p0 += panel) {
    const int64_t p1 = std::min(n1, p0 + panel);
    // Chunks [c0, c1): one slab's in tile order (the tile's rows of its chunks one run of memory), else one chunk
    for (int64_t c0 = 0, c1; c0 < chunks; c0 = c1) {
      const Chunk& first = a.chunks[c0];
      const int64_t slab = slab_start(a, first.g, first.k0);
      for (c1 = c0 + 1; a.tiled && c1 < chunks && a.chunks[c1].g == first.g &&
                        slab_start(a, first.g, a.chunks[c1].k0) == slab; ++c1) {}
      int64_t n = p0;
      for (; n + tile_width <= p1; n += tile_width)
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t m0 = 0; m0 < a.M; m0 += MB) itiles<I, S>(a, c, m0, std::min(MB, a.M - m0), n);
      for (; n < p1; ++n)
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t m0 = 0; m0 < a.M; m0 += MB) itiles<ScalarInt, S>(a, c, m0, std::min(MB, a.M - m0), n);
    }
  }
}

template <int S> __attribute__((flatten)) static void iblock_scalar(const Args& a, int64_t n0, int64_t n1) {
  iblock<ScalarInt, S>(a, n0, n1);
}
#ifdef BELLE_X86
template <int S> __attribute__((target("avx2,fma,f16c"), flatten))
static void iblock_avx2(const Args& a, int64_t n0, int64_t n1) {
  iblock<Avx2Int, S>(a, n0, n1);
}
template <int S> __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), flatten))
static void iblock_avx512(const Args& a, int64_t n0, int64_t n1) {
  iblock<Avx512Int, S>(a, n0, n1);
}
#endif

// -------------------------------------------------------------------------------------- int8 activations, many rows
// From INT_MANY_ROWS rows of x (continuous batching's decoding steps, prefill chunks) iblock() is bound by the work
// around the integer dot products, not by them: each 4-row tile decodes its codes again (quads: 10-12 shuffles and
// masks per 4 K-values of a tile), and each row puts its sums back in column order (natural) after every chunk.
// Here a tile's codes for one chunk are decoded once, put in column order (natural() permutes whole 32-bit lanes, so
// it may as well be applied to the codes as to the sums), into an L1 buffer (AVX-512: 8 steps x 4 vectors, 2 KiB),
// and a register-blocked microkernel runs every row over it: MR rows x QV vectors of integer accumulators (AVX-512:
// 6 x 4 = 24 of 32 registers, with the tile's 4 code vectors; x's 4 bytes broadcast from memory by vpdpbusd itself).
// Symmetric codes start the sums at -zero * sum(q) (exact integers, as the float fma they replace: |sum| < 2^24).
// Everything else is itile's: the same chunks, loop order and integers, the same float operations per chunk, into y
// chunk after chunk; a row's y is therefore bit-identical to itile's whatever other rows share the call
// (tests/kernels/test_cpu_matmul.py). 1024 x 4096 int4 / int8 g128, one thread, in one process, alternating with
// iblock() (a shared machine, load ~4; vpdpbusd alone ran 225 GOP/s on one core in the same minutes), ms: 4 rows
// 0.253 / 0.318 against 0.232 / 0.283 (hence from 5 rows), 5 rows 0.286 / 0.354 against 0.301 / 0.472, 16 rows 0.666
// / 0.735 (202 / 183 GOP/s) against 0.865 / 1.175, 128 rows 4.85 / 5.00 (221 / 215 GOP/s) against 7.09 / 10.2.
constexpr int64_t INT_MANY_ROWS = 5;
// The microkernel's loops over rows and vectors are unrolled before GCC 12 decides where the accumulators live: left
// to its heuristics, some of a 6-row block's 24 accumulator vectors were stored to the stack every step (objdump of
// imany_avx512; so were all of them when idot took the accumulator by reference).
#define UNROLL _Pragma("GCC unroll 32")
template <class I> struct IMany { static constexpr int MR = 4; };  // the portable path
#ifdef BELLE_X86
template <> struct IMany<Avx2Int> { static constexpr int MR = 2; };  // 8 accumulators, 4 codes, q's two halves
template <> struct IMany<Avx512Int> { static constexpr int MR = 6; };
#endif

// acc plus the lanes of codes times x's 4 bytes at q (I::dot). AVX-512 VNNI: x broadcast from memory by vpdpbusd
// itself, in place: GCC 12 copies the accumulator to another register and back around each _mm512_dpbusd_epi32.
template <class I> static inline typename I::Vi idot(typename I::Vi acc, typename I::Vi codes, const int8_t* q) {
  int32_t q4;
  std::memcpy(&q4, q, 4);
  return I::dot(acc, codes, I::qset(q4));
}
#ifdef BELLE_X86
template <> __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
inline __m512i idot<Avx512Int>(__m512i acc, __m512i codes, const int8_t* q) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(codes), "m"(*reinterpret_cast<const int32_t*>(q)));
  return acc;
}
#endif

// buf[s * QV + j]: step s (K-values 4s .. 4s + 3) of chunk c, columns [n0, n0 + QV * W) in order, as itile reads them.
template <class I, int S>
static inline void decode_quads(const Args& a, int64_t c, int64_t n0, typename I::Vi* buf) {
  constexpr int QV = I::QV, PER = 8 / S, ROWS = 4 / PER;
  const Chunk& chunk = a.chunks[c];
  const int64_t steps = (chunk.k1 - chunk.k0 + 3) / 4, stored = (a.K + PER - 1) / PER;
  const Rows rows = rows_at(a, chunk, PER, n0);
  const int64_t ahead = a.tiled ? PREFETCH_TILES * TILE * TILE_K / PER : PREFETCH_TILES * QV * I::W;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t kb = chunk.k0 / PER + s * ROWS;
    const uint8_t* p = reinterpret_cast<const uint8_t*>(rows.p) + s * ROWS * rows.stride;
    typename I::Vi* codes = buf + s * QV;
    for (int r = 0; r < ROWS; ++r) __builtin_prefetch(p + r * rows.stride + ahead);
    if (kb + ROWS <= stored) {
      I::template quads<S>(p, rows.stride, codes);
    } else {  // as itile: zeros past the weight's last row
      alignas(64) uint8_t pad[ROWS][64] = {};
      for (int64_t r = 0; kb + r < stored; ++r) std::memcpy(pad[r], p + r * rows.stride, QV * I::W);
      I::template quads<S>(pad[0], 64, codes);
    }
    I::natural(codes);
  }
}

// Chunk c's contribution to y[m0 : m0 + MR, n0 : n0 + QV * W] from its decoded codes (buf).
template <class I, int S, int MR>
static inline void imicro(const Args& a, int64_t c, const typename I::Vi* buf, int64_t m0, int64_t n0) {
  using V = typename I::V;
  using Vi = typename I::Vi;
  constexpr int QV = I::QV;
  const Chunk& chunk = a.chunks[c];
  const int8_t* q = a.q + m0 * a.q_stride + chunk.q_offset;
  Vi acc[MR][QV];
  UNROLL for (int i = 0; i < MR; ++i) {
    const Vi start = I::set1i(a.zeros ? 0 : -a.zero * a.sq[(m0 + i) * a.q_chunks + chunk.index]);
    UNROLL for (int j = 0; j < QV; ++j) acc[i][j] = start;
  }
  const int64_t steps = (chunk.k1 - chunk.k0 + 3) / 4;
  for (int64_t s = 0; s < steps; ++s) {
    Vi w[QV];
    UNROLL for (int j = 0; j < QV; ++j) w[j] = buf[s * QV + j];
    UNROLL for (int i = 0; i < MR; ++i)
      UNROLL for (int j = 0; j < QV; ++j) acc[i][j] = idot<I>(acc[i][j], w[j], q + i * a.q_stride + 4 * s);
  }
  UNROLL for (int i = 0; i < MR; ++i) {
    const int64_t mc = (m0 + i) * a.q_chunks + chunk.index;
    const V sx = I::set1(a.sx[mc]), minus_sq = I::set1(-float(a.sq[mc]));
    UNROLL for (int j = 0; j < QV; ++j) {
      const int64_t n = n0 + j * I::W;
      V dot = I::tofloat(acc[i][j]);  // integers below 2^24: exact, as itile's
      if (a.zeros) dot = I::fma(minus_sq, I::tofloat(I::bytes(a.zeros + chunk.g * a.N + n)), dot);
      float* y = a.y + (m0 + i) * a.N + n;
      const V before = c ? I::loadf(y) : a.bias ? I::loadf(a.bias + n) : I::zero();
      I::storef(y, I::fma(I::loadf(a.scales + chunk.g * a.N + n), I::mul(sx, dot), before));
    }
  }
}

// imicro() for mb <= MR rows, the row count a template argument.
template <class I, int S, int MR>
static inline void imicros(const Args& a, int64_t c, const typename I::Vi* buf, int64_t m0, int64_t mb, int64_t n0) {
  if constexpr (MR > 1)
    if (mb < MR) return imicros<I, S, MR - 1>(a, c, buf, m0, mb, n0);
  imicro<I, S, MR>(a, c, buf, m0, n0);
}

// iblock() for many rows, in its order (panels, chunk by chunk, the tiles of a panel): each tile's codes decoded once,
// then every row over them; the last N % (QV * W) columns through itile's scalar tiles.
template <class I, int S>
static inline void imany_block(const Args& a, int64_t n0, int64_t n1) {
  constexpr int64_t tile_width = I::QV * I::W, MR = IMany<I>::MR, MB = 4;
  alignas(64) typename I::Vi buf[CHUNK / 4 * I::QV];
  const int64_t panel = panel_width(a, tile_width, n1 - n0, false);
  for (int64_t p0 = n0; p0 < n1; p0 += panel) {
    const int64_t p1 = std::min(n1, p0 + panel);
    for (int64_t c = 0; c < int64_t(a.chunks.size()); ++c) {
      int64_t n = p0;
      for (; n + tile_width <= p1; n += tile_width) {
        decode_quads<I, S>(a, c, n, buf);
        for (int64_t m0 = 0; m0 < a.M; m0 += MR) imicros<I, S, MR>(a, c, buf, m0, std::min(MR, a.M - m0), n);
      }
      for (; n < p1; ++n)
        for (int64_t m0 = 0; m0 < a.M; m0 += MB) itiles<ScalarInt, S>(a, c, m0, std::min(MB, a.M - m0), n);
    }
  }
}

template <int S> __attribute__((flatten)) static void imany_scalar(const Args& a, int64_t n0, int64_t n1) {
  imany_block<ScalarInt, S>(a, n0, n1);
}
#ifdef BELLE_X86
template <int S> __attribute__((target("avx2,fma,f16c"), flatten))
static void imany_avx2(const Args& a, int64_t n0, int64_t n1) {
  imany_block<Avx2Int, S>(a, n0, n1);
}
template <int S> __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), flatten))
static void imany_avx512(const Args& a, int64_t n0, int64_t n1) {
  imany_block<Avx512Int, S>(a, n0, n1);
}
#endif

// ------------------------------------------------------------------------------------------ x @ E^T
// The LM head tied to the input embedding E [N, K] (BLOOM: 250,880 x 4096) reads E as stored: y[m, n] is the dot
// product of x's row m with E's row n, one contiguous run of K weights, so no transposed copy of E is ever made.
// Four accumulators hide the FMA latency of one long dot product.
//
// One row of x (decoding) takes STREAMS rows of E at once, far apart (the thread's share cut in STREAMS runs, one row
// of each in turn): several sequential streams keep more reads in flight than one. Measured with a standalone copy
// of this loop at 250,880 x 1024, 2 threads (GB/s, float32 / bfloat16): one stream 29.8 / 28.4, four 30.9 / 32.3;
// one thread 19.1 / 17.7 -> 21.2 / 22.6 (eight: no better). Adjacent rows at once instead: bfloat16 one thread 9.7.
// Each stream is prefetched ROWS_AHEAD bytes ahead, into L2, on into its next row (the next row of E): a row is a
// page or less, and the hardware prefetchers start over at every page. In one process, alternating, E rotated over
// 3 GB, 2 threads, ms, without -> 512 -> 1024 bytes ahead: 250,880 x 1024 float32 34.4 -> 31.9 -> 32.4 (another run
// 33.5 -> 31.8 -> 32.0), bfloat16 19.6 -> 16.8 -> 16.5; 250,880 x 4096 bfloat16 73.7 -> 66.1 -> 64.5 (2048: no faster).
// Two streams rather than four on stop 32's Zen 5 guest (whose prefetchers serve few streams a core best: Tiles),
// in one process, alternating, 2 threads, ms, four -> two: bfloat16 head 250,880 x 1024 11.03 -> 10.69, 11.33 ->
// 10.65, 13.05 -> 12.68, 11.96 -> 11.78, float32 21.14 -> 19.52; the transposed Linears (N x K) 4096 x 16384 3.07
// -> 3.02, 3.13 -> 3.05, 2.38 -> 2.29, 1024 x 3072 0.147 -> 0.136, 0.152 -> 0.148 (one stream: between the two).
constexpr int64_t STREAMS = 2, ROWS_AHEAD = 1024;

template <class I, class F>
static inline void rows(const Args& a, int64_t n0, int64_t n1) {
  using V = typename I::V;
  if (a.M == 1) {
    constexpr int S = STREAMS, W = I::W;
    const int64_t run = (n1 - n0) / S;
    for (int64_t i = 0; i < run; ++i) {
      int64_t at[S];  // first weight of each stream's row
      V acc[S][2];
      for (int s = 0; s < S; ++s) at[s] = (n0 + s * run + i) * a.K, acc[s][0] = acc[s][1] = I::zero();
      int64_t k = 0;
      for (; k + 2 * W <= a.K; k += 2 * W) {
        const V x0 = I::loadf(a.x + k), x1 = I::loadf(a.x + k + W);
        for (int s = 0; s < S; ++s) {
          const char* next = static_cast<const char*>(a.w) + (at[s] + k) * F::column_bytes + ROWS_AHEAD;
          for (int line = 0; line < 2 * W * F::column_bytes; line += 64) __builtin_prefetch(next + line, 0, 2);
          acc[s][0] = I::fma(x0, F::template vec<I>(a.w, at[s] + k), acc[s][0]);
          acc[s][1] = I::fma(x1, F::template vec<I>(a.w, at[s] + k + W), acc[s][1]);
        }
      }
      for (int s = 0; s < S; ++s) {
        int64_t j = k;
        for (; j + W <= a.K; j += W)
          acc[s][0] = I::fma(I::loadf(a.x + j), F::template vec<I>(a.w, at[s] + j), acc[s][0]);
        float sum = I::hsum(acc[s][0]) + I::hsum(acc[s][1]);
        for (; j < a.K; ++j) sum += a.x[j] * F::template vec<Scalar>(a.w, at[s] + j);
        const int64_t n = n0 + s * run + i;
        a.y[n] = sum + (a.bias ? a.bias[n] : 0.0f);
      }
    }
    n0 += S * run;  // the last (n1 - n0) % S rows: one at a time, below
  }
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t row = n * a.K;
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.K;
      V acc[4] = {I::zero(), I::zero(), I::zero(), I::zero()};
      int64_t k = 0;
      for (; k + 4 * I::W <= a.K; k += 4 * I::W)
        for (int j = 0; j < 4; ++j)
          acc[j] = I::fma(I::loadf(x + k + j * I::W), F::template vec<I>(a.w, row + k + j * I::W), acc[j]);
      for (; k + I::W <= a.K; k += I::W) acc[0] = I::fma(I::loadf(x + k), F::template vec<I>(a.w, row + k), acc[0]);
      float s = I::hsum(acc[0]) + I::hsum(acc[1]) + I::hsum(acc[2]) + I::hsum(acc[3]);
      for (; k < a.K; ++k) s += x[k] * F::template vec<Scalar>(a.w, row + k);
      a.y[m * a.N + n] = s + (a.bias ? a.bias[n] : 0.0f);
    }
  }
}

// Several rows of x (continuous batching's decoding steps): the dot products above read two vectors per FMA (x's and
// E's) and reduce each one alone: 69 GFLOP/s on 2 cores at 16 rows of bloom-560m's head. Here MR rows of x times NR
// rows of E at once: MR x NR vector accumulators over K (AVX-512: 4 x 6 = 24 of 32 registers, with 4 of x and one of
// E; AVX2: 3 x 3), MR + NR loads for MR * NR FMAs, each reduced once at the end. E's NR rows (24 KiB at K = 1024)
// stay in L1 while every block of x's rows goes over them, so E is still read from memory once. x is packed first
// (pack_rows_x): its rows are K floats apart, so at K a multiple of 1024 the MR rows' lines at one k would share an
// L1 set with those of E's rows and evict each other. 16 rows, 2 threads, in one process, float32 / bfloat16:
// 119 -> 69 ms, 90 -> 60 ms, i.e. 119 / 137 GFLOP/s (the int4 checkpoint's int8 head is a QuantLinear [K, V]: the
// many-rows loop above).
template <class I> struct Dots { static constexpr int MR = 2, NR = 2; };  // the portable path
#ifdef BELLE_X86
template <> struct Dots<Avx2> { static constexpr int MR = 3, NR = 3; };
template <> struct Dots<Avx512> { static constexpr int MR = 4, NR = 6; };
#endif

// y[m0 : m0 + MR, n0 : n0 + NR] for x's rows m0.. (packed: block m0 / P, vector k / W of row i at
// xp[(m0 * K_vectors + (k / W) * P + i) * W]), E's rows n0..; K's last K % W columns one at a time.
template <class I, class F, int MR, int NR>
static inline void dots(const Args& a, int64_t m0, int64_t n0) {
  using V = typename I::V;
  constexpr int W = I::W;
  const int64_t P = a.xp_rows, kv = a.K / W;
  const float* xp = a.xp + m0 * kv * W;
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < NR; ++r) acc[i][r] = I::zero();
  for (int64_t v = 0; v < kv; ++v) {
    V xk[MR];
    for (int i = 0; i < MR; ++i) xk[i] = I::loadf(xp + (v * P + i) * W);
    for (int r = 0; r < NR; ++r) {
      const V e = F::template vec<I>(a.w, (n0 + r) * a.K + v * W);
      for (int i = 0; i < MR; ++i) acc[i][r] = I::fma(xk[i], e, acc[i][r]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < NR; ++r) {
      const float* x = a.x + (m0 + i) * a.K;
      float s = I::hsum(acc[i][r]);
      for (int64_t k = kv * W; k < a.K; ++k) s += x[k] * F::template vec<Scalar>(a.w, (n0 + r) * a.K + k);
      a.y[(m0 + i) * a.N + n0 + r] = s + (a.bias ? a.bias[n0 + r] : 0.0f);
    }
}

// dots() for mb <= MR rows, the row count a template argument.
template <class I, class F, int MR, int NR>
static inline void dots_rows(const Args& a, int64_t m0, int64_t mb, int64_t n0) {
  if constexpr (MR > 1)
    if (mb < MR) return dots_rows<I, F, MR - 1, NR>(a, m0, mb, n0);
  dots<I, F, MR, NR>(a, m0, n0);
}

// E's rows [n0, n1) for every row of x: NR rows of E at a time, then the last ones singly.
template <class I, class F>
static inline void many_rows_of_e(const Args& a, int64_t n0, int64_t n1) {
  constexpr int MR = Dots<I>::MR, NR = Dots<I>::NR;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) dots_rows<I, F, MR, NR>(a, m0, std::min<int64_t>(MR, a.M - m0), n);
  for (; n < n1; ++n)
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) dots_rows<I, F, MR, 1>(a, m0, std::min<int64_t>(MR, a.M - m0), n);
}

// A float32 E from HEAD_MANY_ROWS rows of x: x's rows in the lanes of a vector, up to W at once (x transposed, packed
// once a call, pack_x_lanes), and NR rows of E in NR accumulators, each FMA taking its E value as a broadcast from
// memory (AVX-512: vfmadd231ps {1to16}): no horizontal sums at the end and no x reload per FMA, as dots() needs.
// KB K-values of x (16 vectors on AVX-512) stay in registers while the NR = 8 rows of E go over them, so that each
// row's cache line is used whole at once: E's rows are K floats apart, at K a multiple of 1024 all in one L1 set, and
// a first try with 24 rows a K-value at a time missed L1 on nearly every load (13 GFLOP/s). The first lane group
// prefetches the next NR rows of E into L2, a line of each per KB K-values (without it 66 -> 80 GFLOP/s, below). Rows
// of x beyond W: further lane groups over the same E rows, a panel of LANES_KC K-values at a time, the accumulators
// kept in scratch between panels. A row's y is one FMA chain over k = 0 .. K-1 in its lane, whatever its lane or
// group (it does not depend on the other rows), plus the bias at the end. bloom-560m's head, 16 rows, one thread,
// thread CPU time alternating in one process (load 4-5, a shared machine): float32 dots 57-63 GFLOP/s, this loop
// 79-80; bfloat16 dots 67, this loop 63: the 2-byte formats keep dots() (a broadcast of a bfloat16 or float16 value
// costs a conversion per FMA).
template <class I> struct Lanes { static constexpr int NR = 4, KB = 1; };  // the portable path
#ifdef BELLE_X86
template <> struct Lanes<Avx2> { static constexpr int NR = 6, KB = 8; };
template <> struct Lanes<Avx512> { static constexpr int NR = 8, KB = 16; };
#endif
constexpr int64_t LANES_KC = 256;

// x transposed in groups of W rows: row g * W + l, value k at xt[(g * K + k) * W + l]; rows past M zero.
static void pack_x_lanes(Args& a, int64_t W, std::vector<float>& xt) {
  xt.assign((a.M + W - 1) / W * W * a.K, 0.0f);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t k = 0; k < a.K; ++k) xt[((m / W) * a.K + k) * W + m % W] = a.x[m * a.K + k];
  a.xp = xt.data(), a.xp_rows = W;
}

// y[rows of lane group g, n0 : n0 + NR] over K-values [k0, k1): accumulators from `scratch` (k0 > 0) and back to
// it, at the end of K into y. (The prefetch past E's last rows is only a hint: it never faults.)
template <class I, class F, int NR>
static inline void lanes(const Args& a, int64_t g, int64_t n0, int64_t k0, int64_t k1, float* scratch) {
  using V = typename I::V;
  constexpr int W = I::W;
  V acc[NR];
  const char* ahead = g == 0 ? static_cast<const char*>(a.w) + (n0 + NR) * a.K * F::column_bytes : nullptr;
  for (int r = 0; r < NR; ++r) acc[r] = k0 ? I::loadf(scratch + r * W) : I::zero();
  const float* xt = a.xp + (g * a.K + k0) * W;
  constexpr int KB = Lanes<I>::KB;
  int64_t k = k0;
  for (; k + KB <= k1; k += KB, xt += KB * W) {
    V xv[KB];
    if (ahead)
      for (int r = 0; r < NR; ++r) __builtin_prefetch(ahead + (r * a.K + k) * F::column_bytes, 0, 2);
    for (int q = 0; q < KB; ++q) xv[q] = I::loadf(xt + q * W);
    for (int q = 0; q < KB; ++q)
      for (int r = 0; r < NR; ++r) acc[r] = I::fma(I::set1(F::template vec<Scalar>(a.w, (n0 + r) * a.K + k + q)), xv[q], acc[r]);
  }
  for (; k < k1; ++k, xt += W) {
    const V xv = I::loadf(xt);
    for (int r = 0; r < NR; ++r) acc[r] = I::fma(I::set1(F::template vec<Scalar>(a.w, (n0 + r) * a.K + k)), xv, acc[r]);
  }
  for (int r = 0; r < NR; ++r) I::storef(scratch + r * W, acc[r]);
  if (k1 < a.K) return;
  for (int64_t l = 0; l < W && g * W + l < a.M; ++l)
    for (int r = 0; r < NR; ++r)
      a.y[(g * W + l) * a.N + n0 + r] = scratch[r * W + l] + (a.bias ? a.bias[n0 + r] : 0.0f);
}

// E's rows [n, n + NR) for every lane group of x's rows.
template <class I, class F, int NR>
static inline void lanes_block(const Args& a, int64_t n, float* scratch) {
  const int64_t groups = (a.M + I::W - 1) / I::W, kc = groups == 1 ? a.K : LANES_KC;
  for (int64_t k0 = 0; k0 < a.K; k0 += kc)
    for (int64_t g = 0; g < groups; ++g)
      lanes<I, F, NR>(a, g, n, k0, std::min(a.K, k0 + kc), scratch + g * NR * I::W);
}

// E's rows [n0, n1): NR at a time, the last ones singly.
template <class I, class F>
static inline void many_lanes(const Args& a, int64_t n0, int64_t n1) {
  constexpr int NR = Lanes<I>::NR;
  std::vector<float> scratch((a.M + I::W - 1) / I::W * NR * I::W);
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) lanes_block<I, F, NR>(a, n, scratch.data());
  for (; n < n1; ++n) lanes_block<I, F, 1>(a, n, scratch.data());
}

template <class I, class F>
static inline void rows_or_many(const Args& a, int64_t n0, int64_t n1) {
  if (a.many && F::column_bytes == 4) return many_lanes<I, F>(a, n0, n1);  // float32: see LANES
  if (a.many) return many_rows_of_e<I, F>(a, n0, n1);
  rows<I, F>(a, n0, n1);
}

template <class F> __attribute__((flatten)) static void rows_scalar(const Args& a, int64_t n0, int64_t n1) {
  rows_or_many<Scalar, F>(a, n0, n1);
}
#ifdef BELLE_X86
template <class F> __attribute__((target("avx2,fma,f16c"), flatten))
static void rows_avx2(const Args& a, int64_t n0, int64_t n1) {
  rows_or_many<Avx2, F>(a, n0, n1);
}
template <class F> __attribute__((target("avx512f,avx512bw,avx512vl"), flatten))
static void rows_avx512(const Args& a, int64_t n0, int64_t n1) {
  rows_or_many<Avx512, F>(a, n0, n1);
}
#endif

// 2: AVX-512, 1: AVX2, 0: portable. PADDLE_BELLE_KERNELS_ISA=avx2|scalar caps it (tests run every path).
static int isa_level() {
  int level = 0;
#ifdef BELLE_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) level = 1;
  if (level && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    level = 2;
#endif
  const char* cap = std::getenv("PADDLE_BELLE_KERNELS_ISA");
  if (cap && std::string(cap) == "avx2") level = std::min(level, 1);
  if (cap && std::string(cap) == "scalar") level = 0;
  return level;
}

static void fill_bias(float* y, int64_t m, int64_t n, const float* bias);

// The rows of x from which a many-rows loop is taken: `fallback`, or PADDLE_BELLE_KERNELS_MANY_ROWS (tests and
// benchmarks/cpu_kernels.py compare the two paths on the same rows; a large number turns it off). Packed codes:
// MANY_ROWS, or 16 for 8-bit codes (below 16 rows of a large int8 weight it was slower: 1.12-1.33x at 5 and 8 rows
// of 4096 x 16384 and 1024 x 250,880, one thread; twice the bytes of int4 per decoded weight). x @ E^T (dots):
// HEAD_MANY_ROWS (bloom-560m's head, float32, 2 threads, dot products -> dots in one process, ms: 2 rows 33 -> 39,
// 4 rows 40 -> 40 (both bound by E's 1 GB), 5 rows 58 -> 45, 6 72 -> 48, 8 87 -> 49, 16 119 -> 69).
constexpr int64_t HEAD_MANY_ROWS = 5;
static int64_t many_rows(int64_t fallback) {
  const char* rows = std::getenv("PADDLE_BELLE_KERNELS_MANY_ROWS");
  return rows ? std::max<int64_t>(1, std::atoll(rows)) : fallback;
}

// Chunks of at most `rows` rows within each group (dense weights: one group of K rows).
static void add_chunks(Args& a, int64_t group, int64_t rows = CHUNK) {
  a.group = group;
  for (int64_t g = 0; g * group < a.K; ++g)
    for (int64_t k = g * group; k < std::min(a.K, (g + 1) * group); k += rows)
      a.chunks.push_back({k, std::min({k + rows, (g + 1) * group, a.K}), g});
}

// A dense weight's rows shorter than a page, read DENSE_ROWS rows of x or fewer at a time (bloom-560m's 4096 x 1024 and
// 1024 x 1024 in bfloat16: 2 KB rows). DENSE_CHUNK rows side by side then share pages, two to four rows a page, and
// the hardware prefetcher, which follows the accesses within a page, saw them jump back and forth between the rows
// at every tile. Here the P = 4096 / row bytes rows of a page are read one after another, by chunks of DENSE_CHUNK
// rows one page apart (first row of each of DENSE_CHUNK pages, then their second rows, ...), so that each page is
// read from its start to its end. bfloat16, one row, 2 threads, weights rotated beyond the L3 cache, the two orders
// alternating call by call in one process, ms median, adjacent rows -> this order: 4096 x 1024 0.572 -> 0.355, 1024 x
// 1024 0.114 -> 0.092 (1024 x 4096, 1024 x 3072 and float32's 4 KB rows: unchanged, 0.31, 0.27). Only when the
// weight starts on a page (Paddle's CPU tensors do); otherwise add_chunks' order.
static bool page_chunks(Args& a, int64_t row_bytes) {
  const int64_t P = 4096 / std::max<int64_t>(row_bytes, 1);
  if (P < 2 || 4096 % row_bytes || reinterpret_cast<uintptr_t>(a.w) % 4096) return false;
  for (int64_t k = 0; k < a.K; k += DENSE_CHUNK * P) {
    const int64_t end = std::min(a.K, k + DENSE_CHUNK * P);  // DENSE_CHUNK pages (fewer at the end of the weight)
    for (int64_t h = 0; h < P && k + h < end; ++h) {
      Chunk chunk{k + h, end, 0};
      chunk.step = P;
      a.chunks.push_back(chunk);
    }
  }
  return true;
}

// Each thread takes an equal contiguous share of the column tiles (`width` columns each).
static void parallel_columns(const Args& a, void (*fn)(const Args&, int64_t, int64_t), int64_t width) {
  const int64_t tiles = (a.N + width - 1) / width;
#pragma omp parallel
  {
    int64_t threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads(), t = omp_get_thread_num();
#endif
    const int64_t b0 = tiles * t / threads, b1 = tiles * (t + 1) / threads;
    if (b0 < b1) fn(a, b0 * width, std::min(a.N, b1 * width));
  }
}

// Each thread takes an equal contiguous share of the chunks, i.e. of the weight's rows (one contiguous run of memory),
// into its own y (thread 0: the output; the others: scratch, M x N floats each, added to the output after the
// parallel region: a barrier inside it waits for a descheduled thread whenever another process holds a core).
static void parallel_chunks(const Args& a, void (*fn)(const Args&, int64_t, int64_t)) {
  int max_threads = 1, used = 1;
#ifdef _OPENMP
  max_threads = omp_get_max_threads();
#endif
  const int64_t size = a.M * a.N, chunks = a.chunks.size();
  std::vector<float> partial((max_threads - 1) * size);
#pragma omp parallel
  {
    int64_t threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads(), t = omp_get_thread_num();
#endif
    if (t == 0) used = threads;
    Args own = a;
    own.chunks.assign(a.chunks.begin() + chunks * t / threads, a.chunks.begin() + chunks * (t + 1) / threads);
    if (t) own.y = partial.data() + (t - 1) * size, own.bias = nullptr;
    if (own.chunks.empty()) fill_bias(own.y, a.M, a.N, own.bias);
    else fn(own, 0, a.N);
  }
  for (int u = 1; u < used; ++u)
    for (int64_t i = 0; i < size; ++i) a.y[i] += partial[(u - 1) * size + i];
}

template <class F>
static void run(Args& a, int64_t group) {
  const bool dense_few = !F::quantized && a.M <= DENSE_ROWS;  // see DENSE_CHUNK
  // several rows: each code decoded once for all of them; a dense weight packed (gemm)
  a.many = !dense_few && a.M >= many_rows(!F::quantized ? DENSE_ROWS + 1 : F::PER == 1 ? 16 : MANY_ROWS);
  const bool paged = dense_few && page_chunks(a, a.N * F::column_bytes);
  // tile order: a tile's accumulators over a whole slab (Tiles), but for the many-rows loops' buffers
  if (!paged) add_chunks(a, group, dense_few ? DENSE_CHUNK : a.tiled && !a.many ? TILE_K : CHUNK);
  a.prefetch = !paged;
  using Fn = void (*)(const Args&, int64_t, int64_t);
  Fn fn = block_scalar<F>;
  int64_t width = 64, mr = Gemm<Scalar>::MR;
  if (!F::quantized && a.many) width = Gemm<Scalar>::NV * Scalar::W;
#ifdef BELLE_X86
  const int level = isa_level();
  if (level == 2) fn = block_avx512<F>, width = (a.many ? Many<Avx512>::NV : Avx512::NV) * Avx512::W;
  if (level == 1) fn = block_avx2<F>, width = (a.many ? Many<Avx2>::NV : Avx2::NV) * Avx2::W;
  if (level == 2 && !F::quantized && a.many) width = Gemm<Avx512>::NV * Avx512::W, mr = Gemm<Avx512>::MR;
  if (level == 1 && !F::quantized && a.many) width = Gemm<Avx2>::NV * Avx2::W, mr = Gemm<Avx2>::MR;
#endif
  std::vector<float> xp;
  if (!F::quantized && a.many) pack_x_blocks(a, mr, xp);
  if (dense_few || (F::quantized && a.M <= STREAM_ROWS)) parallel_chunks(a, fn);
  else parallel_columns(a, fn, width);
}

// x quantized per row and chunk (the integer path's blocks): q [M, q_stride] int8, each chunk's values from
// q_offset, zero-padded to a multiple of 4 and, for 4-bit codes, each 4 stored as [k0, k2, k1, k3]; sx, sq [M,
// chunks]. Rounding: adding and subtracting 1.5 * 2^23 rounds a float32 |v| <= 2^22 to the nearest integer, ties
// to even (ggml's nearest_int), exactly what numpy's round and the Paddle fallback do.
static void quantize_x(Args& a, int S, std::vector<int8_t>& q, std::vector<float>& sx, std::vector<int32_t>& sq) {
  const int64_t chunks = a.chunks.size();
  a.q_stride = 0;
  a.q_chunks = chunks;
  for (int64_t c = 0; c < chunks; ++c) {
    Chunk& chunk = a.chunks[c];
    chunk.index = c, chunk.q_offset = a.q_stride, a.q_stride += (chunk.k1 - chunk.k0 + 3) / 4 * 4;
  }
  q.assign(a.M * a.q_stride, 0), sx.resize(a.M * chunks), sq.resize(a.M * chunks);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t c = 0; c < chunks; ++c) {
      const Chunk& chunk = a.chunks[c];
      const float* x = a.x + m * a.K;
      float amax = 0.0f;
      bool finite = true;
      for (int64_t k = chunk.k0; k < chunk.k1; ++k) amax = std::max(amax, std::fabs(x[k])), finite &= std::isfinite(x[k]);
      const float d = amax / 127.0f;
      int32_t sum = 0;
      int8_t* out = q.data() + m * a.q_stride + chunk.q_offset;
      if (finite && d > 0.0f) {
        for (int64_t k = chunk.k0; k < chunk.k1; ++k) {
          const int64_t i = k - chunk.k0, at = S == 4 ? (i & ~3) | ((i & 1) << 1) | ((i >> 1) & 1) : i;
          const int8_t v = int8_t(int32_t((x[k] / d + 12582912.0f) - 12582912.0f));
          out[at] = v, sum += v;
        }
      }
      // inf or NaN in x: NaN in y (a NaN scale); an all-zero block adds nothing.
      sx[m * chunks + c] = finite ? d : NAN, sq[m * chunks + c] = sum;
    }
  a.q = q.data(), a.sx = sx.data(), a.sq = sq.data();
}

// The integer path for S-bit codes (4 or 8): chunks as run(), then x quantized once, then the column tiles.
template <int S>
static void run_int(Args& a, int64_t group) {
  add_chunks(a, group);
  std::vector<int8_t> q;
  std::vector<float> sx;
  std::vector<int32_t> sq;
  quantize_x(a, S, q, sx, sq);
  using Fn = void (*)(const Args&, int64_t, int64_t);
  const bool many = a.M >= many_rows(INT_MANY_ROWS);  // see "int8 activations, many rows"
  Fn fn = many ? imany_scalar<S> : iblock_scalar<S>;
  int64_t width = 64;
#ifdef BELLE_X86
  int level = isa_level();
  if (level == 2 && !__builtin_cpu_supports("avx512vnni")) level = 1;  // AVX-512 without VNNI: the AVX2 integers
  if (level == 2) fn = many ? imany_avx512<S> : iblock_avx512<S>, width = Avx512Int::QV * Avx512Int::W;
  if (level == 1) fn = many ? imany_avx2<S> : iblock_avx2<S>, width = Avx2Int::QV * Avx2Int::W;
#endif
  if (a.M <= STREAM_ROWS) parallel_chunks(a, fn);
  else parallel_columns(a, fn, width);
}

// x for dots(): blocks of P rows, each vector of W columns of the block's rows side by side (row b * P + i, vector v
// at xp[((b * P) * kv + v * P + i) * W], kv = K / W whole vectors; the rest of K stays in x).
static void pack_rows_x(Args& a, int64_t P, int64_t W, std::vector<float>& xp) {
  const int64_t kv = a.K / W;
  xp.assign((a.M + P - 1) / P * P * kv * W, 0.0f);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t v = 0; v < kv; ++v)
      std::memcpy(&xp[((m / P * P) * kv + v * P + m % P) * W], a.x + m * a.K + v * W, W * sizeof(float));
  a.xp = xp.data(), a.xp_rows = P;
}

// Each thread takes an equal contiguous share of E's rows.
template <class F>
static void run_rows(Args& a) {
  a.many = a.M >= many_rows(HEAD_MANY_ROWS);
  using Fn = void (*)(const Args&, int64_t, int64_t);
  Fn fn = rows_scalar<F>;
  int64_t mr = Dots<Scalar>::MR, width = Scalar::W;
#ifdef BELLE_X86
  const int level = isa_level();
  if (level == 2) fn = rows_avx512<F>, mr = Dots<Avx512>::MR, width = Avx512::W;
  if (level == 1) fn = rows_avx2<F>, mr = Dots<Avx2>::MR, width = Avx2::W;
#endif
  std::vector<float> xp;
  if (a.many && F::column_bytes == 4) pack_x_lanes(a, width, xp);
  else if (a.many) pack_rows_x(a, mr, width, xp);
#pragma omp parallel
  {
    int64_t threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads(), t = omp_get_thread_num();
#endif
    const int64_t r0 = a.N * t / threads, r1 = a.N * (t + 1) / threads;
    if (r0 < r1) fn(a, r0, r1);
  }
}

// ------------------------------------------------------------------------------------------ the operators
std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

static std::vector<int64_t> out_shape(std::vector<int64_t> x_shape, int64_t n) {
  x_shape.back() = n;
  return x_shape;
}

static void check_x(const paddle::Tensor& x, const char* op) {
  PD_CHECK(x.is_cpu(), op, ": x must be on the CPU");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, op, ": x must be float32, got ", x.dtype());
  PD_CHECK(x.shape().size() >= 1, op, ": x must have at least one dimension");
  PD_CHECK(x.is_contiguous(), op, ": x must be contiguous");
}

static const float* check_bias(const paddle::optional<paddle::Tensor>& bias, int64_t n, const std::string& op) {
  if (!bias) return nullptr;
  PD_CHECK(bias->is_cpu() && bias->dtype() == paddle::DataType::FLOAT32 && bias->numel() == n &&
               bias->is_contiguous(),
           op, ": bias must be float32 [", n, "], got ", bias->dtype(), " ", shape_str(bias->shape()));
  return bias->data<float>();
}

// y = bias (or 0) where K = 0: there is nothing to multiply.
static void fill_bias(float* y, int64_t m, int64_t n, const float* bias) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) y[i * n + j] = bias ? bias[j] : 0.0f;
}

// The checks of packed codes qweight [ceil(K / per), N], `bits` each, in groups of group_size inputs; per, the codes
// a byte holds.
static int64_t check_codes(const paddle::Tensor& qweight, int64_t K, int bits, int group_size, const std::string& op) {
  PD_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, op, ": bits must be 2, 3, 4 or 8, got ", bits);
  const int64_t per = 8 / (bits == 3 ? 4 : bits);
  PD_CHECK(qweight.is_cpu() && qweight.dtype() == paddle::DataType::UINT8 && qweight.shape().size() == 2 &&
               qweight.shape()[0] == (K + per - 1) / per,
           op, ": qweight must be uint8 [", (K + per - 1) / per, ", N] for ", K, " inputs at ", bits,
           " bits, got ", qweight.dtype(), " ", shape_str(qweight.shape()));
  PD_CHECK(group_size > 0, op, ": group_size must be positive (the number of inputs for one group), got ", group_size);
  PD_CHECK(group_size % per == 0 || group_size >= K, op, ": group_size must be a multiple of ", per,
           " for ", bits, "-bit codes (groups start on a whole byte), got ", group_size);
  return per;
}

LinearWeight packed_weight(const paddle::Tensor& qweight, const paddle::Tensor& scales,
                           const paddle::optional<paddle::Tensor>& zeros, const paddle::optional<paddle::Tensor>& bias,
                           int64_t K, int bits, int group_size, bool int8_x, bool tiled, const std::string& op) {
  check_codes(qweight, K, bits, group_size, op);
  const int64_t N = qweight.shape()[1];
  const int64_t groups = (K + group_size - 1) / group_size;
  const std::vector<int64_t> gn = {groups, N};
  PD_CHECK(scales.is_cpu() && scales.dtype() == paddle::DataType::FLOAT32 && scales.shape() == gn, op,
           ": scales must be float32 ", shape_str(gn), ", got ", scales.dtype(), " ", shape_str(scales.shape()));
  if (zeros)
    PD_CHECK(zeros->is_cpu() && zeros->dtype() == paddle::DataType::UINT8 && zeros->shape() == gn, op,
             ": zeros must be uint8 ", shape_str(gn), ", got ", zeros->dtype(), " ", shape_str(zeros->shape()));
  PD_CHECK(qweight.is_contiguous() && scales.is_contiguous() && (!zeros || zeros->is_contiguous()), op,
           ": qweight, scales and zeros must be contiguous");
  LinearWeight w{LinearWeight::kPacked, qweight.data<uint8_t>(), K, N};
  w.scales = scales.data<float>(), w.zeros = zeros ? zeros->data<uint8_t>() : nullptr;
  w.bias = check_bias(bias, N, op), w.bits = bits, w.group_size = group_size;
  w.int8_x = int8_x && (bits == 8 || bits == 4);  // the integer path (the caller's choice: paddle_belle/kernels)
  w.tiled = tiled;
  return w;
}

// A dense weight in float32, bfloat16 or float16: w [K, N] ([in, out], a Linear), with `rows` w [N, K] (the LM
// head tied to the input embedding, read as stored: x @ w^T), or with `transposed` a Linear's w [K, N] whose bytes
// are its transpose [N, K] (belle_retile's order for a dense weight, read as x @ w^T too).
static LinearWeight dense_weight(const paddle::Tensor& w, const paddle::optional<paddle::Tensor>& bias, int64_t K,
                                 bool rows, bool transposed, const std::string& op) {
  const std::string k = std::to_string(K), want = rows ? "[N, " + k + "] ([out, in])" : "[" + k + ", N] ([in, out])";
  PD_CHECK(w.is_cpu() && w.shape().size() == 2 && w.shape()[rows ? 1 : 0] == K && w.is_contiguous(), op,
           ": w must be a contiguous CPU tensor ", want, ", got ", shape_str(w.shape()));
  const auto dtype = w.dtype();
  PD_CHECK(dtype == paddle::DataType::FLOAT32 || dtype == paddle::DataType::BFLOAT16 ||
               dtype == paddle::DataType::FLOAT16,
           op, ": w must be float32, bfloat16 or float16, got ", dtype);
  const int64_t N = w.shape()[rows ? 0 : 1];
  const auto format = dtype == paddle::DataType::FLOAT32    ? LinearWeight::kFloat32
                      : dtype == paddle::DataType::BFLOAT16 ? LinearWeight::kBFloat16
                                                            : LinearWeight::kFloat16;
  LinearWeight out{format, w.data(), K, N};
  out.bias = check_bias(bias, N, op);
  out.rows = rows || transposed;
  return out;
}

LinearWeight dense_weight(const paddle::Tensor& w, const paddle::optional<paddle::Tensor>& bias, int64_t K,
                          bool transposed, const std::string& op) {
  return dense_weight(w, bias, K, false, transposed, op);
}

// y = x @ W (+ bias); W stored [N, K] (weight.rows: x @ E^T). x's rows are read in perm's order when there is one.
static void product(const LinearWeight& weight, const float* x, float* y, int64_t M) {
  const bool rows = weight.rows;
  const int64_t K = weight.K, N = weight.N;
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_bias(y, M, N, weight.bias);
  std::vector<float> permuted;
  if (weight.perm) {  // act-order: the stored rows are in GPTQ's order; so is x's copy
    permuted.resize(M * K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) permuted[m * K + k] = x[m * K + weight.perm[k]];
    x = permuted.data();
  }
  Args a{x, y, M, K, N, weight.w, weight.scales, weight.zeros, 0, weight.bias};
  a.tiled = weight.tiled;
  switch (weight.format) {
    case LinearWeight::kFloat32: return rows ? run_rows<Float32>(a) : run<Float32>(a, K);
    case LinearWeight::kBFloat16: return rows ? run_rows<BFloat16>(a) : run<BFloat16>(a, K);
    case LinearWeight::kFloat16: return rows ? run_rows<Float16>(a) : run<Float16>(a, K);
    case LinearWeight::kPacked: break;
  }
  a.zero = 1 << (weight.bits - 1);
  for (int v = 0; v < 16; ++v) a.lut[v] = float(v - a.zero);
  if (weight.int8_x) return weight.bits == 8 ? run_int<8>(a, weight.group_size) : run_int<4>(a, weight.group_size);
  if (weight.bits == 8) run<Packed<8>>(a, weight.group_size);
  if (weight.bits == 4 || weight.bits == 3) run<Packed<4>>(a, weight.group_size);
  if (weight.bits == 2) run<Packed<2>>(a, weight.group_size);
}

void linear_forward(const LinearWeight& weight, const float* x, float* y, int64_t M) {
  product(weight, x, y, M);
}

static paddle::Tensor output(const paddle::Tensor& x, int64_t N) {
  return paddle::empty(out_shape(x.shape(), N), paddle::DataType::FLOAT32, x.place());
}

// y = x @ dequant(qweight, scales, zeros): the packed checkpoint format of paddle_belle/quant/format.py.
std::vector<paddle::Tensor> QuantMatmul(const paddle::Tensor& x, const paddle::Tensor& qweight,
                                        const paddle::Tensor& scales, const paddle::optional<paddle::Tensor>& zeros,
                                        const paddle::optional<paddle::Tensor>& bias, int bits, int group_size,
                                        bool int8_x, bool tiled) {
  const char* op = "belle_quant_matmul";
  check_x(x, op);
  const int64_t K = x.shape().back();
  const LinearWeight w = packed_weight(qweight, scales, zeros, bias, K, bits, group_size, int8_x, tiled, op);
  auto y = output(x, w.N);
  product(w, x.data<float>(), y.data<float>(), K ? x.numel() / K : 0);
  return {y};
}

static std::vector<paddle::Tensor> dense(const paddle::Tensor& x, const paddle::Tensor& w,
                                         const paddle::optional<paddle::Tensor>& bias, bool rows, bool transposed,
                                         const char* op) {
  check_x(x, op);
  const int64_t K = x.shape().back();
  const LinearWeight weight = dense_weight(w, bias, K, rows, transposed, op);
  auto y = output(x, weight.N);
  product(weight, x.data<float>(), y.data<float>(), K ? x.numel() / K : 0);
  return {y};
}

std::vector<paddle::Tensor> DenseMatmul(const paddle::Tensor& x, const paddle::Tensor& w,
                                        const paddle::optional<paddle::Tensor>& bias, bool transposed) {
  return dense(x, w, bias, false, transposed, "belle_dense_matmul");
}

std::vector<paddle::Tensor> RowsMatmul(const paddle::Tensor& x, const paddle::Tensor& e,
                                       const paddle::optional<paddle::Tensor>& bias) {
  return dense(x, e, bias, true, false, "belle_rows_matmul");
}

std::vector<std::vector<int64_t>> RowsMatmulShape(const std::vector<int64_t>& x, const std::vector<int64_t>& e,
                                                  const paddle::optional<std::vector<int64_t>>&) {
  return {out_shape(x, e.front())};
}

std::vector<std::vector<int64_t>> QuantMatmulShape(const std::vector<int64_t>& x, const std::vector<int64_t>& qweight,
                                                   const std::vector<int64_t>&,
                                                   const paddle::optional<std::vector<int64_t>>&,
                                                   const paddle::optional<std::vector<int64_t>>&) {
  return {out_shape(x, qweight.back())};
}
std::vector<std::vector<int64_t>> DenseMatmulShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                   const paddle::optional<std::vector<int64_t>>&) {
  return {out_shape(x, w.back())};
}
std::vector<paddle::DataType> QuantMatmulDtype(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::optional<paddle::DataType>&,
                                               const paddle::optional<paddle::DataType>&) {
  return {paddle::DataType::FLOAT32};
}
std::vector<paddle::DataType> DenseMatmulDtype(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::optional<paddle::DataType>&) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(belle_quant_matmul)
    .Inputs({"X", "QWeight", "Scales", paddle::Optional("Zeros"), paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"bits: int", "group_size: int", "int8_x: bool", "tiled: bool"})
    .SetKernelFn(PD_KERNEL(QuantMatmul))
    .SetInferShapeFn(PD_INFER_SHAPE(QuantMatmulShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(QuantMatmulDtype));

PD_BUILD_OP(belle_dense_matmul)
    .Inputs({"X", "W", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"transposed: bool"})
    .SetKernelFn(PD_KERNEL(DenseMatmul))
    .SetInferShapeFn(PD_INFER_SHAPE(DenseMatmulShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DenseMatmulDtype));

PD_BUILD_OP(belle_rows_matmul)
    .Inputs({"X", "E", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(RowsMatmul))
    .SetInferShapeFn(PD_INFER_SHAPE(RowsMatmulShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DenseMatmulDtype));

// ------------------------------------------------------------------------------------------ kernel order
// out[c * out_stride + r] = in[r * in_stride + c] for an 8 x 8 block of 16-bit values (SSE2, in every x86-64):
// three rounds of interleaving, 16-, 32- then 64-bit.
template <class T> static inline bool transpose8x8(const T*, int64_t, T*, int64_t) { return false; }
#ifdef BELLE_X86
template <> inline bool transpose8x8<uint16_t>(const uint16_t* in, int64_t in_stride, uint16_t* out,
                                               int64_t out_stride) {
  __m128i r[8], a[8], b[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * in_stride));
  for (int i = 0; i < 4; ++i)
    a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]), a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  for (int h = 0; h < 8; h += 4)
    for (int i = 0; i < 2; ++i)
      b[h + 2 * i] = _mm_unpacklo_epi32(a[h + i], a[h + i + 2]), b[h + 2 * i + 1] = _mm_unpackhi_epi32(a[h + i], a[h + i + 2]);
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (2 * i) * out_stride), _mm_unpacklo_epi64(b[i], b[i + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (2 * i + 1) * out_stride), _mm_unpackhi_epi64(b[i], b[i + 4]));
  }
  return true;
}
#endif

// in [rows, cols] -> out [cols, rows], in 256 x 256 tiles (the 4 KB pages a tile touches, 256 rows of 512 bytes on
// either side, stay in the TLB), each 32 x 32 blocks through a buffer in L1 (8 x 8 at a time where transpose8x8 can),
// so that each block's 32 input and 32 output runs of 32 values are read and written whole. 7B's bfloat16 Linears,
// 2 threads: element by element over 64 x 64 blocks (whose 64 input rows share one L1 set), the first decoding step
// took 11.6 s (0.5 after it); 32 x 32 blocks through the buffer, strip by strip down all the rows, 7.9 s (a 4096 x
// 16384 weight 71-76 ms, ~50 of them its copy on 4 KB pages); the tiles here 12 ms for that weight, and with the
// copy on 2 MiB pages (Scratch) 24-27 ms, the first step 3.3 s.
template <class T> static void transpose_into(const T* in, T* out, int64_t rows, int64_t cols) {
  constexpr int64_t B = 32, TB = 256;
  const int64_t col_tiles = (cols + TB - 1) / TB, row_tiles = (rows + TB - 1) / TB;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < col_tiles * row_tiles; ++t) {
    T block[B][B];  // block[c][r]
    const int64_t tc = t / row_tiles * TB, tr = t % row_tiles * TB;
    for (int64_t c0 = tc; c0 < std::min(cols, tc + TB); c0 += B) {
      const int64_t nc = std::min(B, cols - c0);
      for (int64_t r0 = tr; r0 < std::min(rows, tr + TB); r0 += B) {
        const int64_t nr = std::min(B, rows - r0);
        for (int64_t r = 0; r < nr; r += 8)
          for (int64_t c = 0; c < nc; c += 8)
            if (r + 8 > nr || c + 8 > nc || !transpose8x8(in + (r0 + r) * cols + c0 + c, cols, &block[c][r], B))
              for (int64_t i = r; i < std::min(nr, r + 8); ++i)
                for (int64_t j = c; j < std::min(nc, c + 8); ++j) block[j][i] = in[(r0 + i) * cols + c0 + j];
        for (int64_t c = 0; c < nc; ++c) std::memcpy(out + (c0 + c) * rows + r0, block[c], nr * sizeof(T));
      }
    }
  }
}

// A dense weight w [K, N] (bits 0: float32, bfloat16, float16) into its transpose's order [N, K], or back; the
// tensor's shape stays [K, N]. Read as x @ w^T (run_rows), each output is a dot product over one contiguous row,
// where the [K, N] read streams DENSE_CHUNK rows side by side: 7B's bfloat16 Linears, one row, 2 threads, weights
// rotated over 1 GB, alternating in one process (stop 31, the Zen 5 guest above), ms, [K, N] -> transposed: 4096 x
// 16384 3.862 -> 2.975, 16384 x 4096 3.370 -> 2.290, 4096 x 12288 2.611 -> 1.719, 4096 x 4096 0.894 -> 0.582. (The
// prefetch knobs of the [K, N] read, L1 or L2, 2-8 KB ahead, 2-16 rows a chunk, moved it by less than 10 %.)
// A transient buffer of n values, on 2 MiB pages where Linux gives them (madvise; this machine's transparent huge
// pages come only on request): on 4 KB pages every page was a fault, which in a KVM guest is slow (a 4096 x 16384
// bfloat16 weight's copy 45-56 ms, on 2 MiB pages 10-14).
template <class T> struct Scratch {
  T* p = nullptr;
  size_t mapped = 0;
  std::vector<T> fallback;
  explicit Scratch(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    void* m = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      madvise(m, n * sizeof(T), MADV_HUGEPAGE);
      p = static_cast<T*>(m), mapped = n * sizeof(T);
      return;
    }
#endif
    fallback.resize(n), p = fallback.data();
  }
  ~Scratch() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (mapped) munmap(p, mapped);
#endif
  }
};

template <class T> static void transpose_in_place(T* data, int64_t rows, int64_t cols) {
  Scratch<T> copy(rows * cols);
  std::memcpy(copy.p, data, rows * cols * sizeof(T));
  transpose_into(copy.p, data, rows, cols);
}
static void transpose_in_place(paddle::Tensor& w, int64_t K, bool to_rows) {
  const int64_t N = w.shape()[1], rows = to_rows ? K : N, cols = to_rows ? N : K;  // [rows, cols] -> [cols, rows]
  if (w.dtype() == paddle::DataType::FLOAT32) transpose_in_place(w.data<float>(), rows, cols);
  else transpose_in_place(static_cast<uint16_t*>(w.data()), rows, cols);
}

// qweight [stored rows, N] (K inputs, `bits`, `group_size`) from the checkpoint's order into tile order (Tiles,
// above), or back (to_tiles false), in place: one chunk's stored rows at a time through a copy of them. bits 0: a
// dense weight, transposed (above).
std::vector<paddle::Tensor> Retile(paddle::Tensor& qweight, int64_t K, int bits, int group_size, bool to_tiles) {
  const char* op = "belle_retile";
  if (bits == 0) {
    dense_weight(qweight, paddle::optional<paddle::Tensor>(), K, false, false, op);  // its checks
    transpose_in_place(qweight, K, to_tiles);
    return {};
  }
  const int64_t per = check_codes(qweight, K, bits, group_size, op);
  PD_CHECK(qweight.is_contiguous(), op, ": qweight must be contiguous");
  Args a{};
  a.K = K, a.N = qweight.shape()[1];
  add_chunks(a, group_size, TILE_K);  // the slabs
  uint8_t* w = qweight.data<uint8_t>();
  const int64_t N = a.N, chunks = a.chunks.size();
#pragma omp parallel
  {
    std::vector<uint8_t> copy;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const Chunk& chunk = a.chunks[c];
      const int64_t s0 = chunk.k0 / per, rows = (chunk.k1 + per - 1) / per - s0;
      uint8_t* slab = w + s0 * N;
      copy.assign(slab, slab + rows * N);
      for (int64_t t = 0; t < N; t += TILE) {
        const int64_t width = std::min(TILE, N - t);
        for (int64_t r = 0; r < rows; ++r) {
          uint8_t *tiled = slab + t * rows + r * width, *plain = slab + r * N + t;
          if (to_tiles) std::memcpy(tiled, copy.data() + r * N + t, width);
          else std::memcpy(plain, copy.data() + t * rows + r * width, width);
        }
      }
    }
  }
  return {};  // qweight is the in-place output
}

std::vector<std::vector<int64_t>> RetileShape(const std::vector<int64_t>& qweight) { return {qweight}; }
std::vector<paddle::DataType> RetileDtype(const paddle::DataType& qweight) { return {qweight}; }

PD_BUILD_OP(belle_retile)
    .Inputs({"QWeight"})
    .Outputs({"Out"})
    .Attrs({"K: int64_t", "bits: int", "group_size: int", "to_tiles: bool"})
    .SetInplaceMap({{"QWeight", "Out"}})
    .SetKernelFn(PD_KERNEL(Retile))
    .SetInferShapeFn(PD_INFER_SHAPE(RetileShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RetileDtype));

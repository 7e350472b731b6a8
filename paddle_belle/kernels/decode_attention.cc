// Decode attention on CPU: one new query token per row against that row's KV cache, in one op.
//
// A decoding step's attention in Paddle is about ten small ops a layer (split q/k/v, two cache writes, two slices,
// two matmuls, scale, bias, softmax, reshape), each a dispatch of 5-30 us against a few microseconds of work at
// one row; bloom-560m has 24 layers, SmolLM2-135M 30. This op does the whole of it: it writes the row's new key
// and value into the cache at the row's column (after RoPE for LLaMA), then computes
//   out[r, h] = softmax_j(q[r, h] . K[r, g, j] / sqrt(d) + slope[h] * pos[r, j]) V[r, g, j]
// over the row's real keys j (mask[r, j] != 0) among columns [0, width), with g = h / (n_head / kv_heads)
// (grouped-query attention: the cache holds kv heads only) and pos[r, j] the number of real keys before j (BLOOM's
// ALiBi, positions counted over real tokens as models/bloom.py alibi_bias does). The arithmetic follows the Paddle
// path (models/base.py attend): float32 scores, scaled then biased, a max-subtracted softmax, then the weighted sum
// of values; a row with no real key (not decoding this step) gets zeros, where Paddle's softmax over all-masked
// scores gives a uniform average nobody reads.
//
// Inputs: Q, and K, V when given: Q [b, n_head, 1, d], K and V [b, kv_heads, 1, d] (LLaMA); without K and V, Q is
// BLOOM's fused query_key_value output [b, 1, n_head * 3 * d] (per head q, k, v: models/bloom.py). KeyCache and
// ValueCache [B >= b, kv_heads, length, d] are written in place. Columns int64 [b]: where each row's new key goes.
// Mask int64 [b, width]. Slopes float32 [n_head] (ALiBi). Cos, Sin float32 [b, d] (RoPE with the sine's first half
// negated: x * cos + roll(x, d / 2) * sin, models/llama.py rope). Out: float32 [b, 1, n_head * d].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"
#include "vec16.h"

namespace {

void check_float(const paddle::Tensor& t, const char* name, int64_t numel, const char* op) {
  PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32 && t.is_contiguous(), op, ": ", name,
           " must be a contiguous float32 CPU tensor, got ", t.dtype(), " ", shape_str(t.shape()));
  PD_CHECK(numel < 0 || t.numel() == numel, op, ": ", name, " must have ", numel, " elements, got ",
           shape_str(t.shape()));
}

// dst = src * cos + roll(src, d / 2) * sin (or a copy without RoPE)
inline void rope(float* dst, const float* src, const float* cos, const float* sin, int64_t d) {
  if (!cos) {
    std::copy(src, src + d, dst);
    return;
  }
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) dst[i] = src[i] * cos[i] + src[(i + half) % d] * sin[i];
}

// The keys or values of the next (row, head) a thread takes: their rows are fetched into L2 while this one's are read
struct Next {
  const float *K, *V;
  const int32_t* keys;
  int64_t n;
};

// Fetch floats [0, n) of row i of `rows` (a (row, head) block of `nx`) into L2 (prefetcht1): one a cache line
INLINE void fetch(const float* rows, const Next& nx, int64_t i, int64_t d, int64_t n) {
  if (rows && i < nx.n)
    for (int64_t t = 0; t < n; t += W) __builtin_prefetch(rows + nx.keys[i] * d + t, 0, 2);
}

// o[0, C * W) = sum_i p[i] V[keys[i], 0, C * W): C vectors of sums in registers while the rows of V stream past in
// order (one pass over the value rows, not one per vector of o)
template <int C>
INLINE void weigh(const float* p, const float* V, const int32_t* keys, int64_t n, int64_t d, float* o,
                  const Next& nx, int64_t t) {
  vec acc[C] = {};
  for (int64_t i = 0; i < n; ++i) {
    const float* v = V + keys[i] * d;
    fetch(nx.V ? nx.V + t : nullptr, nx, i, d, C * W);
    for (int c = 0; c < C; ++c) acc[c] += p[i] * load(v + c * W);
  }
  for (int c = 0; c < C; ++c) store(o + c * W, acc[c]);
}

// One (row, query head): out[0, d) = the softmax-weighted sum of the values over the row's n real keys, at cache
// columns keys[0, n) (ALiBi's position of keys[i] is i); p: n floats of scratch. Compiled for AVX-512, AVX2 (+FMA)
// and baseline x86-64, chosen at load time (GCC's target_clones): the extension is built without -march=native, for
// any machine sharing the cache (cpu_matmul.cc does the same by hand). The cache is read once, in order: at 16 rows
// of bloom-560m a layer's keys and values are a few MB that the step's weights have pushed out of the CPU caches, so
// the op streams them from memory, and the arithmetic between the loads must be short to keep up. Each (row, head)'s
// rows are a few KB (of a cache row 2,048 columns long in the server): too short a run for the CPU's own prefetcher,
// so the rows of the next (row, head) are prefetched while this one's are read (bloom-560m's 16 rows at 48 keys, a
// layer's cache out of the CPU caches, one thread: 1.0-1.2 ms a layer before this kernel, ~0.5-0.65 ms with it).
CLONES void attend_one(const float* q, const float* K, const float* V, const int32_t* keys, int64_t n, int64_t d,
                float scale, float slope, float* p, float* o, const Next& next) {
  if (!n) {  // no real key: not a decoding row this step
    std::fill(o, o + d, 0.0f);
    return;
  }
  const int64_t dv = d / W * W;
  float top = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    const float* k = K + keys[i] * d;
    fetch(next.K, next, i, d, d);
    vec acc = {};
    for (int64_t t = 0; t < dv; t += W) acc += load(q + t) * load(k + t);
    float s = sum_lanes(acc);
    for (int64_t t = dv; t < d; ++t) s += q[t] * k[t];
    p[i] = s = s * scale + slope * float(i);
    top = std::max(top, s);
  }
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += p[i] = std::exp(p[i] - top);
  for (int64_t i = 0; i < n; ++i) p[i] /= sum;
  int64_t t = 0;  // the head's d in pieces of 8, 4 and 1 vectors (bloom-560m's 64: one piece of 4), then scalars
  for (; t + 8 * W <= dv; t += 8 * W) weigh<8>(p, V + t, keys, n, d, o + t, next, t);
  for (; t + 4 * W <= dv; t += 4 * W) weigh<4>(p, V + t, keys, n, d, o + t, next, t);
  for (; t < dv; t += W) weigh<1>(p, V + t, keys, n, d, o + t, next, t);
  if (t < d) {
    std::fill(o + t, o + d, 0.0f);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t u = t; u < d; ++u) o[u] += p[i] * V[keys[i] * d + u];
  }
}

}  // namespace

KVStep kv_step(paddle::Tensor& key_cache, paddle::Tensor& value_cache, const paddle::Tensor& columns,
               const paddle::Tensor& mask, const char* op) {
  PD_CHECK(key_cache.shape().size() == 4 && key_cache.shape() == value_cache.shape() && key_cache.shape()[1] > 0 &&
               key_cache.shape()[3] > 0,
           op, ": the key and value caches must be [batch, kv_heads, length, head_dim] alike, got ",
           shape_str(key_cache.shape()), " and ", shape_str(value_cache.shape()));
  check_float(key_cache, "the key cache", -1, op);
  check_float(value_cache, "the value cache", -1, op);
  KVStep s{key_cache.data<float>(), value_cache.data<float>(), key_cache.shape()[0], key_cache.shape()[1],
           key_cache.shape()[2], key_cache.shape()[3]};
  PD_CHECK(mask.is_cpu() && mask.dtype() == paddle::DataType::INT64 && mask.shape().size() == 2 &&
               mask.is_contiguous(),
           op, ": mask must be int64 [batch, width], got ", mask.dtype(), " ", shape_str(mask.shape()));
  s.b = mask.shape()[0], s.width = mask.shape()[1], s.mask = mask.data<int64_t>();
  PD_CHECK(s.b <= s.B && s.width <= s.L, op, ": mask ", shape_str(mask.shape()), " does not fit the cache ",
           shape_str(key_cache.shape()));
  PD_CHECK(columns.is_cpu() && columns.dtype() == paddle::DataType::INT64 && columns.numel() == s.b, op,
           ": columns must be int64 [", s.b, "], got ", columns.dtype(), " ", shape_str(columns.shape()));
  s.columns = columns.data<int64_t>();
  for (int64_t r = 0; r < s.b; ++r)
    PD_CHECK(s.columns[r] >= 0 && s.columns[r] < s.L, op, ": column ", s.columns[r], " of row ", r,
             " is outside the cache's ", s.L);
  return s;
}

void set_heads(KVStep& s, int64_t n_head, const paddle::optional<paddle::Tensor>& slopes, const char* op) {
  PD_CHECK(n_head > 0 && n_head % s.kv == 0, op, ": ", n_head, " heads are not a multiple of the cache's ", s.kv,
           " kv heads");
  if (slopes) check_float(*slopes, "slopes", n_head, op);
  s.n_head = n_head, s.slopes = slopes ? slopes->data<float>() : nullptr;
}

void decode_attention(const KVStep& s, const float* Q, const float* Kn, const float* Vn, bool fused, const float* C,
                      const float* Sn, float* O) {
  const int64_t b = s.b, kv = s.kv, L = s.L, d = s.d, width = s.width, n_head = s.n_head;
  const int64_t* col = s.columns;
  const int64_t* M = s.mask;
  const float* S = s.slopes;
  float *Kc = s.key_cache, *Vc = s.value_cache;
  const int64_t groups = n_head / kv, q_step = fused ? 3 * d : d;  // floats from one head's q to the next
  if (fused) Kn = Q + d, Vn = Q + 2 * d;
  // Where head h's (or kv head g's) new k/v of row r starts in q (fused) or k/v
  auto new_kv = [&](const float* base, int64_t r, int64_t g) {
    return fused ? base + (r * n_head + g) * q_step : base + (r * kv + g) * d;
  };
  const float scale = 1.0f / std::sqrt(float(d));
  // 1. the new keys (rotated) and values into the cache (a few KB: one thread); fused (BLOOM) has kv == n_head
  for (int64_t i = 0; i < b * kv; ++i) {
    const int64_t r = i / kv, g = i % kv, at = ((r * kv + g) * L + col[r]) * d;
    rope(Kc + at, new_kv(Kn, r, g), C ? C + r * d : nullptr, Sn ? Sn + r * d : nullptr, d);
    std::copy(new_kv(Vn, r, g), new_kv(Vn, r, g) + d, Vc + at);
  }
  // 2. each row's real keys (the mask's nonzero columns), once for all its heads
  std::vector<int32_t> keys(b * width);
  std::vector<int64_t> n_keys(b);
  for (int64_t r = 0; r < b; ++r)
    for (int64_t j = 0; j < width; ++j)
      if (M[r * width + j]) keys[r * width + n_keys[r]++] = int32_t(j);
  // 3. attention, a (row, query head) at a time; both threads once the keys and values to read (the bytes that
  // bound it) pay for waking the second (~10 us; on a busy machine a preempted thread stalls the whole region): a
  // one-row step of bloom-560m at 64 keys reads 0.5 MB, ~20 us, on one thread; sixteen rows read 8 MB
  const bool threads = b * kv * width * d >= (1 << 17);
#pragma omp parallel if (threads)
  {
    thread_local std::vector<float> p, qr;  // scratch, kept between calls
    p.resize(width);
    qr.resize(d);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < b * n_head; ++i) {
      const int64_t r = i / n_head, h = i % n_head, g = h / groups;
      const int64_t nr = (i + 1) / n_head, ng = (i + 1) % n_head / groups;  // the next (row, head)'s
      const Next next = i + 1 < b * n_head ? Next{Kc + (nr * kv + ng) * L * d, Vc + (nr * kv + ng) * L * d,
                                                  keys.data() + nr * width, n_keys[nr]}
                                           : Next{nullptr, nullptr, nullptr, 0};
      rope(qr.data(), Q + (r * n_head + h) * q_step, C ? C + r * d : nullptr, Sn ? Sn + r * d : nullptr, d);
      attend_one(qr.data(), Kc + (r * kv + g) * L * d, Vc + (r * kv + g) * L * d, keys.data() + r * width, n_keys[r],
                 d, scale, S ? S[h] : 0.0f, p.data(), O + (r * n_head + h) * d, next);
    }
  }
}

std::vector<paddle::Tensor> DecodeAttention(const paddle::Tensor& q, const paddle::optional<paddle::Tensor>& k,
                                            const paddle::optional<paddle::Tensor>& v, paddle::Tensor& key_cache,
                                            paddle::Tensor& value_cache, const paddle::Tensor& columns,
                                            const paddle::Tensor& mask, const paddle::optional<paddle::Tensor>& slopes,
                                            const paddle::optional<paddle::Tensor>& cos,
                                            const paddle::optional<paddle::Tensor>& sin) {
  const char* op = "belle_decode_attention";
  KVStep s = kv_step(key_cache, value_cache, columns, mask, op);
  PD_CHECK(bool(k) == bool(v), op, ": give both k and v, or neither (q is then BLOOM's fused qkv)");
  const bool fused = !k;
  check_float(q, "q", -1, op);
  const int64_t b = s.b, d = s.d, kv = s.kv, n_head = b ? q.numel() / (b * d * (fused ? 3 : 1)) : 0;
  PD_CHECK(n_head > 0 && q.numel() == b * n_head * d * (fused ? 3 : 1) && n_head % kv == 0, op, ": q ",
           shape_str(q.shape()), " is not ", b, " rows of n_head x ", fused ? "3 x " : "", d,
           " with n_head a multiple of the cache's ", kv, " kv heads");
  set_heads(s, n_head, slopes, op);
  if (!fused) {
    check_float(*k, "k", b * kv * d, op);
    check_float(*v, "v", b * kv * d, op);
  }
  PD_CHECK(bool(cos) == bool(sin), op, ": give both cos and sin, or neither");
  if (cos) {
    check_float(*cos, "cos", b * d, op);
    check_float(*sin, "sin", b * d, op);
  }
  auto out = paddle::empty({b, 1, n_head * d}, paddle::DataType::FLOAT32, q.place());
  decode_attention(s, q.data<float>(), fused ? nullptr : k->data<float>(), fused ? nullptr : v->data<float>(), fused,
                   cos ? cos->data<float>() : nullptr, sin ? sin->data<float>() : nullptr, out.data<float>());
  return {out};  // the caches are the in-place outputs
}

std::vector<std::vector<int64_t>> DecodeAttentionShape(
    const std::vector<int64_t>& q, const paddle::optional<std::vector<int64_t>>& k,
    const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>& key_cache,
    const std::vector<int64_t>& value_cache, const std::vector<int64_t>&, const std::vector<int64_t>& mask,
    const paddle::optional<std::vector<int64_t>>&, const paddle::optional<std::vector<int64_t>>&,
    const paddle::optional<std::vector<int64_t>>&) {
  int64_t n = 1;
  for (auto s : q) n *= s;
  return {{mask[0], 1, n / mask[0] / (k ? 1 : 3)}, key_cache, value_cache};
}

std::vector<paddle::DataType> DecodeAttentionDtype(
    const paddle::DataType&, const paddle::optional<paddle::DataType>&, const paddle::optional<paddle::DataType>&,
    const paddle::DataType&, const paddle::DataType&, const paddle::DataType&, const paddle::DataType&,
    const paddle::optional<paddle::DataType>&, const paddle::optional<paddle::DataType>&,
    const paddle::optional<paddle::DataType>&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(belle_decode_attention)
    .Inputs({"Q", paddle::Optional("K"), paddle::Optional("V"), "KeyCache", "ValueCache", "Columns", "Mask",
             paddle::Optional("Slopes"), paddle::Optional("Cos"), paddle::Optional("Sin")})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .SetKernelFn(PD_KERNEL(DecodeAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(DecodeAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecodeAttentionDtype));

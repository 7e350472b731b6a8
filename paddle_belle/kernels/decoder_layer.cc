// A whole decoder layer for a decoding step (one new token a row), in one op. BLOOM: LayerNorm, query_key_value,
// the decode attention with its cache writes, dense, the residual add, LayerNorm, dense_h_to_4h, GELU,
// dense_4h_to_h and the second add (models/bloom.py BloomBlock.forward, same order and arithmetic in float32).
// LLaMA: RMSNorm, q/k/v_proj, the decode attention with RoPE, o_proj, the add, RMSNorm, gate/up_proj, SiLU(gate) *
// up, down_proj, the add (models/llama.py LlamaDecoderLayer.forward).
//
// Why: a decoding step is the weights' bytes streamed once (the Linears: cpu_matmul.cc) plus ~10 small ops a layer
// between them. Each Linear streams 30-100 MB through the caches, so whatever runs between two of them -- Python,
// Paddle's dispatch, the small ops -- starts cold: at belle-7b-2m's shape, int4, the small ops took ~14 ms of a 177
// ms step, 4.5 ms of it with warm caches (benchmarks/step_parts.py, stop 29). A native add + LayerNorm (fewer ops,
// the same Python between the Linears) gained nothing; the same work done in C++ between two streams costs 20-46 us
// a layer cold (a standalone probe). So the layer is one call: Python runs once a layer, not between the Linears.
// Each layer one op against op by op, one process a run, alternating, 3 runs of 16 tokens each (stop 30): bloom-560m
// float32 11.2-11.6 -> 12.5-12.9 tok/s, int4 38.3-42.0 -> 43.2-47.1; belle-7b-2m's shape int4 4.73-5.33 ->
// 5.33-5.55. The elementwise work is vectorized (vec16.h): std::tanh alone took ~80 us for a 7B layer's 16,384
// GELU inputs.
//
// Inputs: X [b, 1, hidden] float32; Params: the two norms' weights (BLOOM: weight and bias each), then each
// Linear's tensors in the order above, as `layout` describes them (three numbers a Linear: bits, 0 for a dense
// weight [in, out] in float32/bfloat16/float16, else the packed codes of quant/format.py; group_size; flags ZEROS |
// PERM | BIAS | INT8_X | TILED, saying which of qweight, scales, zeros, perm, bias follow, and TILED that the codes
// are in the kernels' tile order, cpu_matmul.cc); the caches, columns, mask and ALiBi's slopes (BLOOM) or RoPE's cos
// and sin [b, head_dim] (LLaMA) as belle_decode_attention takes them. Out: [b, 1, hidden].
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "vec16.h"

namespace {

enum Flags { ZEROS = 1, PERM = 2, BIAS = 4, INT8_X = 8, TILED = 16 };
const char* const BLOOM_LINEARS[] = {"self_attention.query_key_value", "self_attention.dense",
                                     "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"};
const char* const LLAMA_LINEARS[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};

typedef int32_t ivec __attribute__((vector_size(64)));
INLINE vec splat(float f) { return vec{} + f; }

// out = (x - mean) / sqrt(var + eps) * w + b over n values, the variance as the mean of squared deviations (two
// passes, as Paddle's CPU layer_norm; not E[x^2] - mean^2, which cancels)
CLONES void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* out) {
  const int64_t nv = n / W * W;
  vec acc = {};
  for (int64_t i = 0; i < nv; i += W) acc += load(x + i);
  float sum = sum_lanes(acc);
  for (int64_t i = nv; i < n; ++i) sum += x[i];
  const float mean = sum / float(n);
  acc = vec{};
  for (int64_t i = 0; i < nv; i += W) {
    const vec c = load(x + i) - mean;
    acc += c * c;
  }
  float sq = sum_lanes(acc);
  for (int64_t i = nv; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.0f / std::sqrt(sq / float(n) + eps);
  for (int64_t i = 0; i < nv; i += W) store(out + i, (load(x + i) - mean) * inv * load(w + i) + load(b + i));
  for (int64_t i = nv; i < n; ++i) out[i] = (x[i] - mean) * inv * w[i] + b[i];
}

// out = x / sqrt(mean(x^2) + eps) * w over n values (LLaMA's RMSNorm)
CLONES void rms_norm(const float* x, const float* w, float eps, int64_t n, float* out) {
  const int64_t nv = n / W * W;
  vec acc = {};
  for (int64_t i = 0; i < nv; i += W) acc += load(x + i) * load(x + i);
  float sq = sum_lanes(acc);
  for (int64_t i = nv; i < n; ++i) sq += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sq / float(n) + eps);
  for (int64_t i = 0; i < nv; i += W) store(out + i, load(x + i) * inv * load(w + i));
  for (int64_t i = nv; i < n; ++i) out[i] = x[i] * inv * w[i];
}

// exp(v) for v <= 0 (Cephes' expf: v = k ln 2 + r, |r| <= ln 2 / 2, a degree-7 polynomial in r, times 2^k; within 2
// ulp), flushing to 0 below -87
INLINE vec exp_nonpositive(vec v) {
  v = v < -87.0f ? splat(-87.0f) : v;
  const vec k = __builtin_convertvector(__builtin_convertvector(v * 1.44269504088896341f - 0.5f, ivec), vec);
  // (the conversion truncates toward zero; v * log2(e) - 0.5 is negative, so that rounds to nearest)
  vec r = v - k * 0.693359375f + k * 2.12194440e-4f;
  vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const ivec bits = (__builtin_convertvector(k, ivec) + 127) << 23;  // 2^k
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// BLOOM's GELU in place: x / 2 * (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (models/bloom.py bloom_gelu), with
// tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2 |z|), 16 values at a time
CLONES void gelu(float* x, int64_t n) {
  const float c = 0.7978845608028654f;
  const int64_t nv = n / W * W;
  for (int64_t i = 0; i < nv; i += W) {
    const vec v = load(x + i), z = c * (v + 0.044715f * v * v * v);
    const vec a = z < 0.0f ? -z : z, e = exp_nonpositive(-2.0f * a);
    vec t = (1.0f - e) / (1.0f + e);
    t = z < 0.0f ? -t : t;
    store(x + i, 0.5f * v * (1.0f + t));
  }
  for (int64_t i = nv; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::tanh(c * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}

// gate = silu(gate) * up = gate / (1 + exp(-gate)) * up, the sigmoid from e = exp(-|gate|) (never overflowing):
// 1 / (1 + e) for gate >= 0, e / (1 + e) below
CLONES void silu_mul(float* gate, const float* up, int64_t n) {
  const int64_t nv = n / W * W;
  for (int64_t i = 0; i < nv; i += W) {
    const vec g = load(gate + i), e = exp_nonpositive(g < 0.0f ? g : -g);
    store(gate + i, g * ((g < 0.0f ? e : 1.0f) / (1.0f + e)) * load(up + i));
  }
  for (int64_t i = nv; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

CLONES void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// The op's tensors in turn, checked as they are taken
struct Params {
  const char* op;
  const std::vector<paddle::Tensor>& tensors;
  const std::vector<int64_t>& layout;
  size_t at = 0;

  const paddle::Tensor& next(const std::string& what) {
    PD_CHECK(at < tensors.size(), op, ": the parameter list ends before ", what);
    return tensors[at++];
  }
  // A norm's weight or bias, float32 [H]
  const float* norm(const char* what, int64_t H) {
    const paddle::Tensor& t = next(what);
    PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32 && t.numel() == H && t.is_contiguous(), op, ": ",
             what, " must be float32 [", H, "], got ", t.dtype(), " ", shape_str(t.shape()));
    return t.data<float>();
  }
  // Linear i's weight (its tensors as `layout` entry i says), checked against K inputs
  LinearWeight linear(int i, const char* const* names, int64_t K);
  void end() {
    PD_CHECK(at == tensors.size(), op, ": ", tensors.size() - at, " parameters more than the layout describes");
  }
};

LinearWeight Params::linear(int i, const char* const* names, int64_t K) {
  const std::string name = std::string(op) + ": " + names[i];
  const int bits = int(layout[3 * i]), group_size = int(layout[3 * i + 1]), flags = int(layout[3 * i + 2]);
  auto optional = [&](bool present, const char* what) {
    return present ? paddle::optional<paddle::Tensor>(next(name + " " + what)) : paddle::optional<paddle::Tensor>();
  };
  if (bits == 0) {
    const paddle::Tensor& w = next(name);
    return dense_weight(w, optional(flags & BIAS, "bias"), K, flags & TILED, name);
  }
  const paddle::Tensor& qweight = next(name);
  const paddle::Tensor& scales = next(name + " scales");
  const auto zeros = optional(flags & ZEROS, "zeros");
  const auto perm = optional(flags & PERM, "perm");
  LinearWeight w = packed_weight(qweight, scales, zeros, optional(flags & BIAS, "bias"), K, bits, group_size,
                                 flags & INT8_X, flags & TILED, name);
  if (perm) {
    PD_CHECK(perm->is_cpu() && perm->dtype() == paddle::DataType::INT32 && perm->numel() == K, name,
             ": perm must be int32 [", K, "], got ", perm->dtype(), " ", shape_str(perm->shape()));
    w.perm = perm->data<int32_t>();
    for (int64_t k = 0; k < K; ++k)
      PD_CHECK(w.perm[k] >= 0 && w.perm[k] < K, name, ": perm holds ", w.perm[k], ", outside [0, ", K, ")");
  }
  return w;
}

// x [b, 1, hidden] float32, and the layout's length for `linears` Linears
void check_layer_input(const paddle::Tensor& x, const std::vector<int64_t>& layout, int linears, const char* op) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() == 3 && x.shape()[1] == 1 &&
               x.is_contiguous(),
           op, ": x must be a contiguous float32 CPU tensor [batch, 1, hidden], got ", x.dtype(), " ",
           shape_str(x.shape()));
  PD_CHECK(layout.size() == size_t(3 * linears), op, ": layout must have 3 numbers for each of the ", linears,
           " Linears, got ", layout.size());
}

// The step's caches and mask for x's rows, with hidden / head_dim query heads
KVStep layer_step(const paddle::Tensor& x, paddle::Tensor& key_cache, paddle::Tensor& value_cache,
                  const paddle::Tensor& columns, const paddle::Tensor& mask,
                  const paddle::optional<paddle::Tensor>& slopes, const char* op) {
  const int64_t b = x.shape()[0], H = x.shape()[2];
  KVStep s = kv_step(key_cache, value_cache, columns, mask, op);
  PD_CHECK(H % s.d == 0, op, ": the cache ", shape_str(key_cache.shape()), " does not hold heads of the hidden size ",
           H);
  set_heads(s, H / s.d, slopes, op);
  PD_CHECK(s.b == b, op, ": mask ", shape_str(mask.shape()), " is not for the ", b, " rows of x");
  return s;
}

// The scratch rows of a layer's activations, kept between calls
float* scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  buffer.resize(floats);
  return buffer.data();
}

}  // namespace

std::vector<paddle::Tensor> BloomBlock(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params,
                                       paddle::Tensor& key_cache, paddle::Tensor& value_cache,
                                       const paddle::Tensor& columns, const paddle::Tensor& mask,
                                       const paddle::Tensor& slopes, const std::vector<int64_t>& layout,
                                       float epsilon, bool post_ln_residual) {
  const char* op = "belle_bloom_block";
  check_layer_input(x, layout, 4, op);
  const int64_t b = x.shape()[0], H = x.shape()[2];
  const KVStep step = layer_step(x, key_cache, value_cache, columns, mask, slopes, op);

  Params p{op, params, layout};
  const float* ln1_w = p.norm("input_layernorm.weight", H);
  const float* ln1_b = p.norm("input_layernorm.bias", H);
  const float* ln2_w = p.norm("post_attention_layernorm.weight", H);
  const float* ln2_b = p.norm("post_attention_layernorm.bias", H);
  const LinearWeight qkv = p.linear(0, BLOOM_LINEARS, H), dense = p.linear(1, BLOOM_LINEARS, H);
  const LinearWeight up = p.linear(2, BLOOM_LINEARS, H), down = p.linear(3, BLOOM_LINEARS, up.N);
  p.end();
  PD_CHECK(qkv.N == 3 * H && dense.N == H && down.N == H, op, ": the Linears' outputs ", qkv.N, ", ", dense.N,
           ", ", down.N, " are not 3 x ", H, ", ", H, ", ", H);

  auto out = paddle::empty({b, 1, H}, paddle::DataType::FLOAT32, x.place());
  float* h = scratch(b * (H + 3 * H + H + std::max(up.N, H)));
  float *q = h + b * H, *attn = q + b * 3 * H, *mid = attn + b * H;
  const float* X = x.data<float>();
  float* Y = out.data<float>();

  for (int64_t r = 0; r < b; ++r) layer_norm(X + r * H, ln1_w, ln1_b, epsilon, H, h + r * H);
  linear_forward(qkv, h, q, b);
  decode_attention(step, q, nullptr, nullptr, true, nullptr, nullptr, attn);
  linear_forward(dense, attn, mid, b);
  add(post_ln_residual ? h : X, mid, Y, b * H);  // Y: the attention block's output
  for (int64_t r = 0; r < b; ++r) layer_norm(Y + r * H, ln2_w, ln2_b, epsilon, H, h + r * H);
  linear_forward(up, h, mid, b);
  gelu(mid, b * up.N);
  linear_forward(down, mid, attn, b);
  add(post_ln_residual ? h : Y, attn, Y, b * H);
  return {out};
}

std::vector<paddle::Tensor> LlamaLayer(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params,
                                       paddle::Tensor& key_cache, paddle::Tensor& value_cache,
                                       const paddle::Tensor& columns, const paddle::Tensor& mask,
                                       const paddle::Tensor& cos, const paddle::Tensor& sin,
                                       const std::vector<int64_t>& layout, float epsilon) {
  const char* op = "belle_llama_layer";
  check_layer_input(x, layout, 7, op);
  const int64_t b = x.shape()[0], H = x.shape()[2];
  const KVStep step = layer_step(x, key_cache, value_cache, columns, mask, paddle::optional<paddle::Tensor>(), op);
  const int64_t d = step.d, kv = step.kv * d;
  for (const paddle::Tensor* t : {&cos, &sin})
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32 && t->numel() == b * d && t->is_contiguous(), op,
             ": cos and sin must be float32 [", b, ", ", d, "], got ", t->dtype(), " ", shape_str(t->shape()));

  Params p{op, params, layout};
  const float* ln1 = p.norm("input_layernorm.weight", H);
  const float* ln2 = p.norm("post_attention_layernorm.weight", H);
  const LinearWeight wq = p.linear(0, LLAMA_LINEARS, H), wk = p.linear(1, LLAMA_LINEARS, H);
  const LinearWeight wv = p.linear(2, LLAMA_LINEARS, H), wo = p.linear(3, LLAMA_LINEARS, H);
  const LinearWeight gate = p.linear(4, LLAMA_LINEARS, H), up = p.linear(5, LLAMA_LINEARS, H);
  const LinearWeight down = p.linear(6, LLAMA_LINEARS, gate.N);
  p.end();
  PD_CHECK(wq.N == H && wk.N == kv && wv.N == kv && wo.N == H && up.N == gate.N && down.N == H, op,
           ": the Linears' outputs ", wq.N, ", ", wk.N, ", ", wv.N, ", ", wo.N, ", ", gate.N, ", ", up.N, ", ", down.N,
           " are not ", H, ", ", kv, ", ", kv, ", ", H, ", I, I, ", H);

  auto out = paddle::empty({b, 1, H}, paddle::DataType::FLOAT32, x.place());
  const int64_t I = gate.N;
  float* h = scratch(b * (H + H + 2 * kv + H + 2 * std::max(I, H)));
  float *q = h + b * H, *k = q + b * H, *v = k + b * kv, *attn = v + b * kv, *g = attn + b * H, *u = g + b * I;
  const float* X = x.data<float>();
  float* Y = out.data<float>();

  for (int64_t r = 0; r < b; ++r) rms_norm(X + r * H, ln1, epsilon, H, h + r * H);
  linear_forward(wq, h, q, b);
  linear_forward(wk, h, k, b);
  linear_forward(wv, h, v, b);
  decode_attention(step, q, k, v, false, cos.data<float>(), sin.data<float>(), attn);
  linear_forward(wo, attn, g, b);
  add(X, g, Y, b * H);  // Y: the attention block's output
  for (int64_t r = 0; r < b; ++r) rms_norm(Y + r * H, ln2, epsilon, H, h + r * H);
  linear_forward(gate, h, g, b);
  linear_forward(up, h, u, b);
  silu_mul(g, u, b * I);
  linear_forward(down, g, attn, b);
  add(Y, attn, Y, b * H);
  return {out};
}

std::vector<std::vector<int64_t>> BloomBlockShape(const std::vector<int64_t>& x,
                                                  const std::vector<std::vector<int64_t>>&,
                                                  const std::vector<int64_t>& key_cache,
                                                  const std::vector<int64_t>& value_cache, const std::vector<int64_t>&,
                                                  const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {x, key_cache, value_cache};
}

std::vector<paddle::DataType> BloomBlockDtype(const paddle::DataType&, const std::vector<paddle::DataType>&,
                                              const paddle::DataType&, const paddle::DataType&,
                                              const paddle::DataType&, const paddle::DataType&,
                                              const paddle::DataType&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(belle_bloom_block)
    .Inputs({"X", paddle::Vec("Params"), "KeyCache", "ValueCache", "Columns", "Mask", "Slopes"})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .Attrs({"layout: std::vector<int64_t>", "epsilon: float", "post_ln_residual: bool"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .SetKernelFn(PD_KERNEL(BloomBlock))
    .SetInferShapeFn(PD_INFER_SHAPE(BloomBlockShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BloomBlockDtype));

std::vector<std::vector<int64_t>> LlamaLayerShape(const std::vector<int64_t>& x,
                                                  const std::vector<std::vector<int64_t>>&,
                                                  const std::vector<int64_t>& key_cache,
                                                  const std::vector<int64_t>& value_cache, const std::vector<int64_t>&,
                                                  const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                  const std::vector<int64_t>&) {
  return {x, key_cache, value_cache};
}

std::vector<paddle::DataType> LlamaLayerDtype(const paddle::DataType&, const std::vector<paddle::DataType>&,
                                              const paddle::DataType&, const paddle::DataType&,
                                              const paddle::DataType&, const paddle::DataType&,
                                              const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(belle_llama_layer)
    .Inputs({"X", paddle::Vec("Params"), "KeyCache", "ValueCache", "Columns", "Mask", "Cos", "Sin"})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .Attrs({"layout: std::vector<int64_t>", "epsilon: float"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .SetKernelFn(PD_KERNEL(LlamaLayer))
    .SetInferShapeFn(PD_INFER_SHAPE(LlamaLayerShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LlamaLayerDtype));

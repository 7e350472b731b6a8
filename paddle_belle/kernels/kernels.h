// What one kernel source offers the others (the three .cc files build into one library): a Linear's weight as
// stored and its product (cpu_matmul.cc), a decoding step's attention (decode_attention.cc), each on raw pointers
// after the op's checks, so that decoder_layer.cc can run a whole layer in one op.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "paddle/extension.h"

// A Linear's weight [K, N] ([in, out]) as stored: packed codes with their scales (quant/format.py), or dense.
struct LinearWeight {
  enum Format { kPacked, kFloat32, kBFloat16, kFloat16 } format;
  const void* w;                    // codes [ceil(K / (8/S)), N] uint8, or the dense [K, N]
  int64_t K, N;
  const float* scales = nullptr;    // [groups, N] (packed)
  const uint8_t* zeros = nullptr;   // [groups, N], or null: symmetric
  const int32_t* perm = nullptr;    // [K] or null: act-order, the input's index of each stored row
  const float* bias = nullptr;      // [N] or null
  int bits = 0, group_size = 0;     // (packed)
  bool int8_x = false;              // (packed, 4/8 bits) the integer path: x quantized to int8
  bool tiled = false;               // (packed) the codes in the kernels' tile order (cpu_matmul.cc, Tiles)
  bool rows = false;                // (dense) the bytes are [N, K]: y = x @ w^T
};

// The checks of belle_quant_matmul / belle_dense_matmul, then the weight; `op` names the op (or the tensor) in
// the one-line error. `tiled` / `transposed`: the bytes are in belle_retile's order (cpu_matmul.cc).
LinearWeight packed_weight(const paddle::Tensor& qweight, const paddle::Tensor& scales,
                           const paddle::optional<paddle::Tensor>& zeros, const paddle::optional<paddle::Tensor>& bias,
                           int64_t K, int bits, int group_size, bool int8_x, bool tiled, const std::string& op);
LinearWeight dense_weight(const paddle::Tensor& w, const paddle::optional<paddle::Tensor>& bias, int64_t K,
                          bool transposed, const std::string& op);

// y[M, N] = x[M, K] @ weight + bias (x's columns taken in perm's order first, act-order).
void linear_forward(const LinearWeight& weight, const float* x, float* y, int64_t M);

// A decoding step's KV caches [B, kv, L, d] (written in place), each row's column for its new key and value, the
// mask [b, width] of the keys each row attends over, and its n_head query heads (a multiple of kv) with ALiBi's
// slopes [n_head] or null.
struct KVStep {
  float *key_cache, *value_cache;
  int64_t B, kv, L, d;
  const int64_t* columns;
  const int64_t* mask;
  int64_t b, width;
  int64_t n_head;
  const float* slopes;
};

// The checks of the caches, columns and mask (decode attention's, and a layer op's); `op` names the op in errors
KVStep kv_step(paddle::Tensor& key_cache, paddle::Tensor& value_cache, const paddle::Tensor& columns,
               const paddle::Tensor& mask, const char* op);
// s's query heads, checked against its kv heads, and their slopes
void set_heads(KVStep& s, int64_t n_head, const paddle::optional<paddle::Tensor>& slopes, const char* op);

// out [b, n_head * d]: writes k, v into the caches and attends (decode_attention.cc). q [b, n_head, q_step]
// (fused BLOOM qkv: q_step = 3d and k = q + d, v = q + 2d), cos/sin [b, d] or null.
void decode_attention(const KVStep& s, const float* q, const float* k, const float* v, bool fused, const float* cos,
                      const float* sin, float* out);

std::string shape_str(const std::vector<int64_t>& s);

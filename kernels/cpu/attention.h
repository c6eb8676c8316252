// attention.h — flash attention and the fused elementwise ops (rms_norm, swiglu) of the CPU extension.
//
// Rules it keeps:
//  * The ops validate shapes and dtypes and throw std::invalid_argument (a Python ValueError) before
//    building the graph node; the Primitives only ever see valid float32 inputs.
//  * flash_attention never materializes the (L, S) score matrix: it walks the keys in tiles of
//    kKeyTile with an online softmax, so its scratch memory is O(rows x (D + tile)) per thread.
//  * It reads q, k and v through their strides (only the last axis must be contiguous), so a cache
//    buffer sliced to its filled length is not copied, and the additive mask through all four of its
//    strides, so a mask broadcast to (B, H, L, S) stays the small array it came from (stride 0 on the
//    broadcast axes); the output is written (B, L, H, D) and handed
//    back as a transposed (B, H, L, D) view, so the usual `.transpose(0, 2, 1, 3).reshape(...)` after
//    attention is free.
//  * Primitives run on the CPU stream only; eval_gpu throws. All threading is tiny_llm::ThreadPool.
#pragma once

#include <optional>
#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace tiny_llm {

namespace mx = mlx::core;

// softmax(q k^T * scale + mask) v. q: (B, H, L, D), k, v: (B, H_kv, S, D) float32, H % H_kv == 0;
// kv_lengths: (B,) integer or none (= S for every row). Row b's query i sits at position
// kv_lengths[b] - L + i and sees keys j < kv_lengths[b] (and j <= its position when causal).
// mask: none or float32 (B, H, L, S), any strides (a broadcast view reads as one): added to the scaled
// scores of the keys those rules leave visible; -inf hides a key. A query that sees no key (or only
// keys at -inf) gets zeros. Returns (B, H, L, D) float32.
mx::array flash_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                          bool causal, const std::optional<mx::array>& kv_lengths,
                          const std::optional<mx::array>& mask = std::nullopt, mx::StreamOrDevice s = {});

// One decode step of attention for B rows that each keep their own cache buffers (continuous batching):
// row b's new key/value (k, v: (B, H_kv, 1, D)) are written at position lengths[b] of its buffers
// caches[2b] (keys) and caches[2b + 1] (values), each float32 row-contiguous (1, H_kv, capacity_b, D) with
// capacity_b > lengths[b] — IN PLACE, like a paged cache's writes: positions >= lengths[b] of those buffers
// must not be read by anything else pending. Then q[b] (q: (B, H, 1, D)) attends over the row's first
// lengths[b] + 1 keys. `after`: arrays this op must run after (the outputs of the ops that wrote these
// buffers before: the writes are not edges of the graph); not read. Returns out (B, H, 1, D).
// No padding, no concatenation, one op per layer.
mx::array decode_attention_rows(const mx::array& q, const mx::array& k, const mx::array& v,
                                const std::vector<mx::array>& caches, const std::vector<int>& lengths, float scale,
                                const std::vector<mx::array>& after = {}, mx::StreamOrDevice s = {});

// x / sqrt(mean(x^2) + eps) * w over the last axis. x: (M, D), w: (D,) float32 -> (M, D).
mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s = {});

// silu(gate) * up, elementwise. gate, up: same shape, float32.
mx::array swiglu(const mx::array& gate, const mx::array& up, mx::StreamOrDevice s = {});

// RoPE fused with the (B, L, H, D) -> (B, H, L, D) transpose the attention needs.
// x: (B, L, H, D) float32 (a linear layer's output, reshaped); inv_freq: (D/2,) float32; the position
// of (b, l) is offset + l, or offsets[b] + l when offsets ((B,) int32) is given. Pair i rotates by
// position * inv_freq[i]: pair (i, i + D/2) (rotate-half, Qwen2) or, when traditional, the adjacent
// pair (2i, 2i + 1) (RoFormer / LLaMA-1). Returns (B, H, L, D).
mx::array rope(const mx::array& x, const mx::array& inv_freq, int offset,
               const std::optional<mx::array>& offsets, bool traditional = false, mx::StreamOrDevice s = {});

class RoPE : public mx::Primitive {
 public:
  RoPE(mx::Stream stream, int offset, bool per_row, bool traditional)
      : mx::Primitive(stream), offset_(offset), per_row_(per_row), traditional_(traditional) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMRoPE"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  int offset_;
  bool per_row_;
  bool traditional_;
};

class FlashAttention : public mx::Primitive {
 public:
  FlashAttention(mx::Stream stream, float scale, bool causal, bool has_lengths, bool has_mask)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_lengths_(has_lengths), has_mask_(has_mask) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMFlashAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  float scale_;
  bool causal_;
  bool has_lengths_;
  bool has_mask_;
};

class DecodeAttentionRows : public mx::Primitive {
 public:
  DecodeAttentionRows(mx::Stream stream, float scale, std::vector<int> lengths)
      : mx::Primitive(stream), scale_(scale), lengths_(std::move(lengths)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMDecodeAttentionRows"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  float scale_;
  std::vector<int> lengths_;
};

class RMSNorm : public mx::Primitive {
 public:
  RMSNorm(mx::Stream stream, float eps) : mx::Primitive(stream), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMRMSNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  float eps_;
};

class SwiGLU : public mx::Primitive {
 public:
  explicit SwiGLU(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMSwiGLU"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
};

}  // namespace tiny_llm

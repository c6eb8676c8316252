// paged.h — the paged KV cache's ops of the CPU extension: kv_pool, paged_write, paged_attention,
// paged_copy_blocks (kernels/ops.py has their full spec, kernels/ref.py their readable twins).
//
// Rules it keeps:
//  * A pool is one layer's keys (or values): float32 (num_blocks, block_size, H_kv, D), row-contiguous.
//    Position p of row b lives in block block_tables[b, p / block_size], slot p % block_size.
//  * kv_pool only allocates (no fill): the OS backs a page when a block is first written, so a pool
//    sized for the whole cache costs what its used blocks hold. Only written slots are ever read.
//  * The writers (paged_write, paged_attention with k/v, paged_copy_blocks) write IN PLACE into the pools
//    they get as inputs, as decode_attention_rows does with its row buffers, and return only their own
//    small output: later readers and writers of the pools must be ordered after it (`mx.depends`, or
//    the `after` inputs: arrays an op must run after, never read).
//  * The ops validate shapes and dtypes, and the tables' values when they are already evaluated, and
//    throw std::invalid_argument (a Python ValueError); the kernels check the values again before
//    touching a pool (std::runtime_error at eval time), so a bad table never writes out of bounds.
//  * paged_attention reads the keys through the tables tile by tile (no contiguous copy, no (L, S)
//    scores), with flash attention's tile kernels (attention.cpp) and its per-ISA dispatch.
#pragma once

#include <optional>
#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace tiny_llm {

namespace mx = mlx::core;

// (num_blocks, block_size, n_kv_heads, head_dim) float32, uninitialized (allocated only).
mx::array kv_pool(int num_blocks, int block_size, int n_kv_heads, int head_dim, mx::StreamOrDevice s = {});

// Row b's new keys/values k, v (B, H_kv, L, D) go to its positions lengths[b] - L + i (i < L) of the
// pools, in place; a row with lengths[b] = 0 stores nothing. block_tables: (B, T) int32 (-1 past a
// row's blocks), lengths: (B,) int32, each 0 or >= L and covered by the row's table. Returns `done`,
// shape (0,): what later users of the pools must follow.
mx::array paged_write(const mx::array& k, const mx::array& v, const mx::array& k_pool, const mx::array& v_pool,
                      const mx::array& block_tables, const mx::array& lengths, const std::vector<mx::array>& after = {},
                      mx::StreamOrDevice s = {});

// Attention of q (B, H, L, D) over each row's lengths[b] keys read through its table: query i of row b
// sits at position lengths[b] - L + i, sees keys 0 .. lengths[b] - 1 (only those up to its position when
// causal), query head h reads kv head h / (H / H_kv); an empty row gets zeros. With k and v (both or
// neither) they are first stored as paged_write does, in the same op. Returns out (B, H, L, D), a
// transposed view of a (B, L, H, D) buffer.
mx::array paged_attention(const mx::array& q, const std::optional<mx::array>& k, const std::optional<mx::array>& v,
                          const mx::array& k_pool, const mx::array& v_pool, const mx::array& block_tables,
                          const mx::array& lengths, float scale, bool causal = true,
                          const std::vector<mx::array>& after = {}, mx::StreamOrDevice s = {});

// Block dst[i] of both pools becomes a copy of block src[i], in place; each dst once, never a source.
// Returns `done`, shape (0,).
mx::array paged_copy_blocks(const mx::array& k_pool, const mx::array& v_pool, const std::vector<int>& src,
                            const std::vector<int>& dst, const std::vector<mx::array>& after = {},
                            mx::StreamOrDevice s = {});

// No is_equivalent: two pools, or two writes, are never the same node (mx.compile must not merge them).
class KVPool : public mx::Primitive {
 public:
  explicit KVPool(mx::Stream stream, mx::Shape shape) : mx::Primitive(stream), shape_(std::move(shape)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMKVPool"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {shape_}; }

 private:
  mx::Shape shape_;
};

// inputs: k, v, k_pool, v_pool, block_tables, lengths, after...
class PagedWrite : public mx::Primitive {
 public:
  explicit PagedWrite(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMPagedWrite"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {mx::Shape{0}}; }
};

// inputs: q, [k, v,] k_pool, v_pool, block_tables, lengths, after...
class PagedAttention : public mx::Primitive {
 public:
  PagedAttention(mx::Stream stream, float scale, bool causal, bool has_kv)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_kv_(has_kv) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMPagedAttention"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  float scale_;
  bool causal_;
  bool has_kv_;
};

// inputs: k_pool, v_pool, after...
class PagedCopyBlocks : public mx::Primitive {
 public:
  PagedCopyBlocks(mx::Stream stream, std::vector<int> src, std::vector<int> dst)
      : mx::Primitive(stream), src_(std::move(src)), dst_(std::move(dst)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "TinyLLMPagedCopyBlocks"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {mx::Shape{0}}; }

 private:
  std::vector<int> src_, dst_;
};

}  // namespace tiny_llm

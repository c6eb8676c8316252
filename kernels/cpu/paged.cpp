// paged.cpp — the paged KV cache's ops (see paged.h): an uninitialized pool, in-place token writes and
// block copies, and attention through block tables on flash attention's driver (attention.cpp).
//
// In-place writes: a pool is an input of the op that writes it; the kernel writes through the
// input's data pointer (mlx cannot hand a buffer updated in place back through an op for many rows, as
// decode_attention_rows explains) and the op's own output, a (0,) `done` or the attention's `out`, is
// what later users follow. Before any write, the kernel checks the tables' values again (they may have
// been lazy when the op was built): every live entry inside the pool, every length 0 or >= L.
#include "paged.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

#include "attention_impl.h"
#include "mlx/allocator.h"
#include "mlx/ops.h"

namespace tiny_llm {

namespace {

// Where a batch's rows live in the pools: tables (B, T) int32, lengths (B,) int32 (after the step).
struct PagedRows {
  const int32_t* tables;
  const int32_t* lengths;
  int64_t B, T, L;             // L: tokens per row this op stores / queries
  int64_t num_blocks, bs, Hkv, D;
  float* kpool;
  float* vpool;
};

// What is wrong with the tables' values ("" when nothing): each row holds 0 tokens (an empty slot of
// the batch) or at least L, and its table covers them with blocks of the pool.
std::string tables_error(const int32_t* tables, const int32_t* lengths, int64_t B, int64_t T, int64_t L,
                         int64_t num_blocks, int64_t bs) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[b];
    if (n < 0 || (n > 0 && n < L)) {
      return "row " + std::to_string(b) + " holds " + std::to_string(n) +
             " tokens: must be 0 (an empty row) or at least L = " + std::to_string(L);
    }
    const int64_t need = (n + bs - 1) / bs;
    if (need > T) {
      return "row " + std::to_string(b) + "'s " + std::to_string(n) + " tokens are not covered by its table of " +
             std::to_string(T) + " blocks";
    }
    for (int64_t i = 0; i < need; ++i) {
      const int64_t blk = tables[b * T + i];
      if (blk < 0 || blk >= num_blocks) {
        return "row " + std::to_string(b) + "'s table names block " + std::to_string(blk) +
               ", outside the pool of " + std::to_string(num_blocks);
      }
    }
  }
  return "";
}

std::string tables_error(const PagedRows& r) {
  return tables_error(r.tables, r.lengths, r.B, r.T, r.L, r.num_blocks, r.bs);
}

// Shapes and dtypes of the two pools; returns (num_blocks, block_size, H_kv, D).
std::array<int64_t, 4> check_pools(const std::string& op, const mx::array& k_pool, const mx::array& v_pool) {
  for (const mx::array* p : {&k_pool, &v_pool}) {
    if (p->ndim() != 4 || p->dtype() != mx::float32) {
      throw std::invalid_argument(op + "the pools must be float32 (num_blocks, block_size, H_kv, D), got " +
                                  shape_str(*p));
    }
    if (p->is_available() && !p->flags().row_contiguous) {
      throw std::invalid_argument(op + "the pools must be row-contiguous (pass the pool itself, not a view)");
    }
  }
  if (k_pool.shape() != v_pool.shape()) {
    throw std::invalid_argument(op + "k_pool " + shape_str(k_pool) + " and v_pool " + shape_str(v_pool) +
                                " must have one shape");
  }
  if (k_pool.id() == v_pool.id()) throw std::invalid_argument(op + "k_pool and v_pool must be two pools");
  return {k_pool.shape(0), k_pool.shape(1), k_pool.shape(2), k_pool.shape(3)};
}

// Shapes and dtypes of block_tables (B, T) and lengths (B,), both int32; their values too when both are
// already evaluated (else the kernel checks them before it writes anything).
void check_tables(const std::string& op, const mx::array& tables, const mx::array& lengths, int64_t B, int64_t L,
                  const std::array<int64_t, 4>& pool) {
  if (tables.ndim() != 2 || tables.shape(0) != B || tables.dtype() != mx::int32) {
    throw std::invalid_argument(op + "block_tables must be int32 (B, T) = (" + std::to_string(B) + ", T), got " +
                                shape_str(tables));
  }
  if (lengths.ndim() != 1 || lengths.shape(0) != B || lengths.dtype() != mx::int32) {
    throw std::invalid_argument(op + "lengths must be int32 (" + std::to_string(B) + ",), got " + shape_str(lengths));
  }
  if (!tables.is_available() || !lengths.is_available() || !tables.flags().row_contiguous ||
      !lengths.flags().row_contiguous) {
    return;
  }
  const std::string err =
      tables_error(tables.data<int32_t>(), lengths.data<int32_t>(), B, tables.shape(1), L, pool[0], pool[1]);
  if (!err.empty()) throw std::invalid_argument(op + err);
}

// The pools of an op being evaluated, as writable pointers (they are its inputs: see the top).
float* pool_data(const char* op, const mx::array& pool) {
  if (!pool.flags().row_contiguous) {
    throw std::runtime_error(std::string(op) + ": a pool is not row-contiguous (pass the pool itself, not a view)");
  }
  return const_cast<float*>(pool.data<float>());
}

PagedRows paged_rows(const char* op, const mx::array& k_pool, const mx::array& v_pool, const mx::array& tables,
                     const mx::array& lengths, int64_t L) {
  PagedRows r{};
  r.tables = tables.data<int32_t>();
  r.lengths = lengths.data<int32_t>();
  r.B = tables.shape(0);
  r.T = tables.shape(1);
  r.L = L;
  r.num_blocks = k_pool.shape(0);
  r.bs = k_pool.shape(1);
  r.Hkv = k_pool.shape(2);
  r.D = k_pool.shape(3);
  r.kpool = pool_data(op, k_pool);
  r.vpool = pool_data(op, v_pool);
  return r;
}

// Row b's L new tokens k, v (B, Hkv, L, D) contiguous go to its positions lengths[b] - L + i.
void write_tokens(const PagedRows& r, const float* k, const float* v) {
  const int64_t D = r.D, slot_floats = r.Hkv * D;
  for (int64_t b = 0; b < r.B; ++b) {
    const int64_t n = r.lengths[b];
    if (n <= 0) continue;  // an empty row stores nothing
    for (int64_t i = 0; i < r.L; ++i) {
      const int64_t p = n - r.L + i;
      const int64_t dst = (int64_t(r.tables[b * r.T + p / r.bs]) * r.bs + p % r.bs) * slot_floats;
      for (int64_t h = 0; h < r.Hkv; ++h) {
        const int64_t src = ((b * r.Hkv + h) * r.L + i) * D;
        std::memcpy(r.kpool + dst + h * D, k + src, D * sizeof(float));
        std::memcpy(r.vpool + dst + h * D, v + src, D * sizeof(float));
      }
    }
  }
}

mx::Stream cpu_stream(mx::StreamOrDevice s) { return mx::to_stream(s, mx::Device::cpu); }

}  // namespace

// ---- kv_pool

mx::array kv_pool(int num_blocks, int block_size, int n_kv_heads, int head_dim, mx::StreamOrDevice s) {
  const int dims[4] = {num_blocks, block_size, n_kv_heads, head_dim};
  const char* names[4] = {"num_blocks", "block_size", "n_kv_heads", "head_dim"};
  for (int i = 0; i < 4; ++i) {
    if (dims[i] < 1) {
      throw std::invalid_argument(std::string("kv_pool: ") + names[i] + " must be >= 1, got " +
                                  std::to_string(dims[i]));
    }
  }
  mx::Shape shape{num_blocks, block_size, n_kv_heads, head_dim};
  const mx::Stream st = cpu_stream(s);
  return mx::array(shape, mx::float32, std::make_shared<KVPool>(st, shape), {});
}

void KVPool::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  begin_eval(stream(), inputs, out);  // allocates only: no fill, so no page is touched here
  if (out.nbytes() > 0 && out.buffer().ptr() == nullptr) {
    throw std::runtime_error("kv_pool: could not allocate " + std::to_string(out.nbytes()) + " bytes");
  }
}

void KVPool::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMKVPool has no GPU implementation; run it on the cpu stream");
}

// ---- paged_write

mx::array paged_write(const mx::array& k, const mx::array& v, const mx::array& k_pool, const mx::array& v_pool,
                      const mx::array& block_tables, const mx::array& lengths, const std::vector<mx::array>& after,
                      mx::StreamOrDevice s) {
  const std::string op = "paged_write: ";
  const auto pool = check_pools(op, k_pool, v_pool);
  if (k.ndim() != 4 || k.shape() != v.shape() || k.shape(1) != pool[2] || k.shape(3) != pool[3]) {
    throw std::invalid_argument(op + "k, v must be (B, " + std::to_string(pool[2]) + ", L, " +
                                std::to_string(pool[3]) + ") like the pools, got " + shape_str(k) + " and " +
                                shape_str(v));
  }
  if (k.dtype() != mx::float32 || v.dtype() != mx::float32) {
    throw std::invalid_argument(op + "k and v must be float32 (the pools' dtype)");
  }
  check_tables(op, block_tables, lengths, k.shape(0), k.shape(2), pool);
  const mx::Stream st = cpu_stream(s);
  std::vector<mx::array> inputs = {mx::contiguous(k, false, st), mx::contiguous(v, false, st), k_pool, v_pool,
                                   mx::contiguous(block_tables, false, st), mx::contiguous(lengths, false, st)};
  for (const auto& a : after) inputs.push_back(a);  // not read: they order this op after earlier writers
  return mx::array(mx::Shape{0}, mx::float32, std::make_shared<PagedWrite>(st), std::move(inputs));
}

void PagedWrite::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& enc = begin_eval(stream(), inputs, outputs[0]);
  const mx::array &k = inputs[0], &v = inputs[1];
  const PagedRows r = paged_rows("paged_write", inputs[2], inputs[3], inputs[4], inputs[5], k.shape(2));
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  enc.dispatch([r, kp, vp]() {
    const std::string err = tables_error(r);
    if (!err.empty()) throw std::runtime_error("paged_write: " + err);
    write_tokens(r, kp, vp);
  });
}

void PagedWrite::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMPagedWrite has no GPU implementation; run it on the cpu stream");
}

// ---- paged_attention

mx::array paged_attention(const mx::array& q, const std::optional<mx::array>& k, const std::optional<mx::array>& v,
                          const mx::array& k_pool, const mx::array& v_pool, const mx::array& block_tables,
                          const mx::array& lengths, float scale, bool causal, const std::vector<mx::array>& after,
                          mx::StreamOrDevice s) {
  const std::string op = "paged_attention: ";
  const auto pool = check_pools(op, k_pool, v_pool);
  const int64_t Hkv = pool[2], D = pool[3];
  if (q.ndim() != 4 || q.shape(3) != D || q.dtype() != mx::float32) {
    throw std::invalid_argument(op + "q must be float32 (B, H, L, " + std::to_string(D) + "), got " + shape_str(q));
  }
  const int B = q.shape(0), H = q.shape(1), L = q.shape(2);
  if (H % Hkv != 0) {
    throw std::invalid_argument(op + "query heads (" + std::to_string(H) + ") must be a multiple of kv heads (" +
                                std::to_string(Hkv) + ")");
  }
  if (k.has_value() != v.has_value()) throw std::invalid_argument(op + "give both k and v, or neither");
  if (k) {
    const mx::Shape want{B, int(Hkv), L, int(D)};
    if (k->shape() != want || v->shape() != want || k->dtype() != mx::float32 || v->dtype() != mx::float32) {
      throw std::invalid_argument(op + "k, v must be float32 (" + std::to_string(B) + ", " + std::to_string(Hkv) +
                                  ", " + std::to_string(L) + ", " + std::to_string(D) + "), got " + shape_str(*k) +
                                  " and " + shape_str(*v));
    }
  }
  check_tables(op, block_tables, lengths, B, L, pool);
  const mx::Stream st = cpu_stream(s);
  std::vector<mx::array> inputs = {mx::contiguous(q, false, st)};
  if (k) {
    inputs.push_back(mx::contiguous(*k, false, st));
    inputs.push_back(mx::contiguous(*v, false, st));
  }
  for (const mx::array& a : {k_pool, v_pool}) inputs.push_back(a);  // as is: the kernel writes into them
  inputs.push_back(mx::contiguous(block_tables, false, st));
  inputs.push_back(mx::contiguous(lengths, false, st));
  for (const auto& a : after) inputs.push_back(a);  // not read: they order this op after earlier writers
  mx::array out(mx::Shape{B, L, H, int(D)}, mx::float32,
                std::make_shared<PagedAttention>(st, scale, causal, k.has_value()), std::move(inputs));
  return mx::transpose(out, {0, 2, 1, 3}, st);  // (B, H, L, D) view of the (B, L, H, D) buffer
}

void PagedAttention::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  auto& enc = begin_eval(stream(), inputs, out);
  const mx::array& q = inputs[0];
  const int p = has_kv_ ? 3 : 1;  // the pools' place among the inputs
  const PagedRows r = paged_rows("paged_attention", inputs[p], inputs[p + 1], inputs[p + 2], inputs[p + 3], q.shape(2));
  const float* kn = has_kv_ ? inputs[1].data<float>() : nullptr;
  const float* vn = has_kv_ ? inputs[2].data<float>() : nullptr;
  AttnArgs a{};
  a.B = q.shape(0);
  a.H = q.shape(1);
  a.L = q.shape(2);
  a.D = q.shape(3);
  a.Hkv = r.Hkv;
  a.q = q.data<float>();
  a.qs[0] = a.H * a.L * a.D;
  a.qs[1] = a.L * a.D;
  a.qs[2] = a.D;
  a.out = out.data<float>();
  a.scale = scale_;
  a.causal = causal_;
  a.kv_len = r.lengths;
  a.tables = r.tables;
  a.T = r.T;
  a.bs = r.bs;
  a.kpool = r.kpool;
  a.vpool = r.vpool;
  enc.dispatch([a, r, kn, vn]() mutable {
    const std::string err = tables_error(r);
    if (!err.empty()) throw std::runtime_error("paged_attention: " + err);
    if (kn != nullptr) write_tokens(r, kn, vn);  // this step's keys first: the queries see them
    a.S = 0;
    for (int64_t b = 0; b < r.B; ++b) a.S = std::max<int64_t>(a.S, r.lengths[b]);
    flash_attention_f32(a);
  });
}

void PagedAttention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMPagedAttention has no GPU implementation; run it on the cpu stream");
}

std::vector<mx::Shape> PagedAttention::output_shapes(const std::vector<mx::array>& inputs) {
  const auto& q = inputs[0];
  return {mx::Shape{q.shape(0), q.shape(2), q.shape(1), q.shape(3)}};
}

// ---- paged_copy_blocks

mx::array paged_copy_blocks(const mx::array& k_pool, const mx::array& v_pool, const std::vector<int>& src,
                            const std::vector<int>& dst, const std::vector<mx::array>& after, mx::StreamOrDevice s) {
  const std::string op = "paged_copy_blocks: ";
  const int64_t num_blocks = check_pools(op, k_pool, v_pool)[0];
  if (src.size() != dst.size()) {
    throw std::invalid_argument(op + std::to_string(src.size()) + " sources for " + std::to_string(dst.size()) +
                                " destinations");
  }
  for (const std::vector<int>* list : {&src, &dst}) {
    for (int b : *list) {
      if (b < 0 || b >= num_blocks) {
        throw std::invalid_argument(op + "block " + std::to_string(b) + " is outside the pool of " +
                                    std::to_string(num_blocks));
      }
    }
  }
  const std::set<int> dsts(dst.begin(), dst.end());
  if (dsts.size() != dst.size() || std::any_of(src.begin(), src.end(), [&](int b) { return dsts.count(b) > 0; })) {
    throw std::invalid_argument(op + "each destination once, and never a source");
  }
  const mx::Stream st = cpu_stream(s);
  std::vector<mx::array> inputs = {k_pool, v_pool};
  for (const auto& a : after) inputs.push_back(a);
  return mx::array(mx::Shape{0}, mx::float32, std::make_shared<PagedCopyBlocks>(st, src, dst), std::move(inputs));
}

void PagedCopyBlocks::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& enc = begin_eval(stream(), inputs, outputs[0]);
  float* kp = pool_data("paged_copy_blocks", inputs[0]);
  float* vp = pool_data("paged_copy_blocks", inputs[1]);
  const int64_t block_floats = int64_t(inputs[0].shape(1)) * inputs[0].shape(2) * inputs[0].shape(3);
  enc.dispatch([kp, vp, block_floats, src = src_, dst = dst_]() {
    for (size_t i = 0; i < src.size(); ++i) {
      std::memcpy(kp + dst[i] * block_floats, kp + src[i] * block_floats, block_floats * sizeof(float));
      std::memcpy(vp + dst[i] * block_floats, vp + src[i] * block_floats, block_floats * sizeof(float));
    }
  });
}

void PagedCopyBlocks::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMPagedCopyBlocks has no GPU implementation; run it on the cpu stream");
}

}  // namespace tiny_llm

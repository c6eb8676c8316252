// attention_impl.h — what attention.cpp shares with paged.cpp (internal to the extension): the flash
// attention driver's arguments and entry point, and the helpers every Primitive's eval starts with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"

namespace tiny_llm {

namespace mx = mlx::core;

struct AttnArgs {
  const float* q;
  const float* k;
  const float* v;
  float* out;  // (B, L, H, D) contiguous
  int64_t B, H, Hkv, L, S, D;
  int64_t qs[3], ks[3], vs[3];  // element strides of axes (batch, head, position); the last axis is 1
  const int32_t* kv_len;        // (B,) or null (= S)
  // Additive mask, (B, H, L, S) read through its element strides ms (0 on broadcast axes), or null.
  const float* mask = nullptr;
  int64_t ms[4] = {0, 0, 0, 0};
  float scale;
  bool causal;
  int64_t QB, n_qb;  // queries per task block, blocks per (b, hk)
  int64_t HG = 1;    // kv heads per task (set by the driver)
  // Per-row K/V buffers instead of k/v (decode_attention_rows): row b's keys of kv head hk start at
  // krows[b] + hk * row_hs[b], one position every ks[2] floats.
  const float* const* krows = nullptr;
  const float* const* vrows = nullptr;
  const int64_t* row_hs = nullptr;
  // A paged cache instead of k/v (paged_attention): pools (num_blocks, bs, Hkv, D); position p of row b
  // lives in block tables[b * T + p / bs], slot p % bs, so its kv head hk starts at
  // kpool + ((tables[b * T + p / bs] * bs + p % bs) * Hkv + hk) * D. kv_len (the row lengths) is set and
  // every live table entry names a block of the pool (checked before).
  const int32_t* tables = nullptr;
  int64_t T = 0, bs = 0;
  const float* kpool = nullptr;
  const float* vpool = nullptr;
};

// Runs attention as `a` describes (dense k/v, per-row buffers or paged), on the thread pool, with the
// tile kernels of the active ISA. Call it inside the encoder's dispatch (the inputs are ready there).
void flash_attention_f32(AttnArgs a);

// "(2, 3)": an array's shape for error messages.
std::string shape_str(const mx::array& a);

// Allocate `out` and register the arrays with the stream's encoder (every eval_cpu starts so).
mx::cpu::CommandEncoder& begin_eval(const mx::Stream& stream, const std::vector<mx::array>& inputs, mx::array& out);

}  // namespace tiny_llm

// bindings.cpp — the nanobind module kernels.cpu._ext.
//
// Rules it keeps:
//  * Built with NB_DOMAIN mlx so mlx.core.array crosses the boundary as the same Python type;
//    this only works with the nanobind version mlx itself was built with (3.1.0 for mlx 0.32).
//  * Validation errors are std::invalid_argument, which nanobind raises as ValueError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "attention.h"
#include "linear.h"
#include "paged.h"
#include "quant.h"
#include "threadpool.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "Tiny LLM Playground CPU kernels (mlx extension, custom Primitives).";

  m.def(
      "linear",
      [](const mlx::core::array& x, const mlx::core::array& w, const std::optional<mlx::core::array>& b,
         bool batch_invariant) { return tiny_llm::linear(x, w, b, batch_invariant); },
      "x"_a, "w"_a, "b"_a = nb::none(), "batch_invariant"_a = false,
      "y = x @ w.T (+ b). x: (M, K) float32, w: (N, K) float32, b: (N,) float32 or None -> (M, N).\n"
      "Runs on the cpu stream; lazy like any mlx op.");
  m.def(
      "quantized_linear",
      [](const mlx::core::array& x, const mlx::core::array& q, const std::optional<mlx::core::array>& scales,
         const std::optional<mlx::core::array>& biases, const std::optional<mlx::core::array>& b,
         const std::string& format, const std::optional<mlx::core::array>& high, bool batch_invariant) {
        return tiny_llm::quantized_linear(x, q, scales, biases, b, format, high, batch_invariant);
      },
      "x"_a, "q"_a, "scales"_a = nb::none(), "biases"_a = nb::none(), "b"_a = nb::none(), "format"_a = "q8_0",
      "high"_a = nb::none(), "batch_invariant"_a = false,
      "y = x @ dequantize(w).T (+ b). x: (M, K) float32; format 'q8_0': q int8 (N, K), scales float16\n"
      "(N, K/32); 'q5_0': q uint8 (N, K/2), scales float16 (N, K/32), high uint32 (N, K/32);\n"
      "'affine4': q uint32 (N, K/8), scales/biases (N, K/64), both float16 or both float32 (read as\n"
      "stored); 'q8_0x16' / 'q5_0x16': q uint8 (N/16, K/32, 544) / (N/16, K/64, 704) only (AVX-512\n"
      "VNNI) -> (M, N) float32. q8_0, q5_0 and their panel formats round x to Q8_0 blocks (int8 dot\n"
      "products per block). batch_invariant: one kernel path for every M, so each row's result is the\n"
      "same bits whatever the other rows are.");
  m.def(
      "flash_attention",
      [](const mlx::core::array& q, const mlx::core::array& k, const mlx::core::array& v, float scale,
         bool causal, const std::optional<mlx::core::array>& kv_lengths,
         const std::optional<mlx::core::array>& mask) {
        return tiny_llm::flash_attention(q, k, v, scale, causal, kv_lengths, mask);
      },
      "q"_a, "k"_a, "v"_a, "scale"_a, "causal"_a = true, "kv_lengths"_a = nb::none(), "mask"_a = nb::none(),
      "softmax(q k^T * scale + mask) v with an online softmax over key tiles (never (L, S) scores).\n"
      "q: (B, H, L, D), k, v: (B, H_kv, S, D) float32; kv_lengths: (B,) int or None. Query i of row b\n"
      "sits at position kv_lengths[b] - L + i and sees keys j < kv_lengths[b] (j <= position if causal).\n"
      "mask: float32 (B, H, L, S) or None, any strides (pass mx.broadcast_to's view: it is not expanded),\n"
      "added to the scaled scores of the keys the rules above leave visible; -inf hides a key.\n"
      "A query that sees no key gets zeros. Returns (B, H, L, D) (a view of a (B, L, H, D) buffer).");
  m.def(
      "decode_attention_rows",
      [](const mlx::core::array& q, const mlx::core::array& k, const mlx::core::array& v,
         const std::vector<mlx::core::array>& caches, const std::vector<int>& lengths, float scale,
         const std::vector<mlx::core::array>& after) {
        return tiny_llm::decode_attention_rows(q, k, v, caches, lengths, scale, after);
      },
      "q"_a, "k"_a, "v"_a, "caches"_a, "lengths"_a, "scale"_a, "after"_a = std::vector<mlx::core::array>{},
      "One decode step for B rows with their own cache buffers: row b's k, v (B, H_kv, 1, D) are written IN\n"
      "PLACE at position lengths[b] of caches[2b] (keys) / caches[2b + 1] (values), each (1, H_kv, capacity,\n"
      "D) float32 row-contiguous, and q[b] (B, H, 1, D) attends over its first lengths[b] + 1 keys.\n"
      "after: arrays to run after (earlier writers of these buffers); not read. Returns out (B, H, 1, D).");
  m.def(
      "kv_pool",
      [](int num_blocks, int block_size, int n_kv_heads, int head_dim) {
        return tiny_llm::kv_pool(num_blocks, block_size, n_kv_heads, head_dim);
      },
      "num_blocks"_a, "block_size"_a, "n_kv_heads"_a, "head_dim"_a,
      "One layer's paged key (or value) storage: float32 (num_blocks, block_size, n_kv_heads, head_dim),\n"
      "uninitialized (evaluating it only allocates; pages are taken as blocks are first written).");
  m.def(
      "paged_write",
      [](const mlx::core::array& k, const mlx::core::array& v, const mlx::core::array& k_pool,
         const mlx::core::array& v_pool, const mlx::core::array& block_tables, const mlx::core::array& lengths,
         const std::vector<mlx::core::array>& after) {
        return tiny_llm::paged_write(k, v, k_pool, v_pool, block_tables, lengths, after);
      },
      "k"_a, "v"_a, "k_pool"_a, "v_pool"_a, "block_tables"_a, "lengths"_a,
      "after"_a = std::vector<mlx::core::array>{},
      "Row b's new keys/values k, v (B, H_kv, L, D) float32 are written IN PLACE into the pools\n"
      "(num_blocks, block_size, H_kv, D) at its positions lengths[b] - L + i: block block_tables[b, p //\n"
      "block_size], slot p % block_size (block_tables (B, T) int32, lengths (B,) int32, each 0 = an empty row\n"
      "that stores nothing, or >= L). after: arrays to run after (earlier writers of the pools); not read.\n"
      "Returns done, shape (0,): later users of the pools must follow it (mx.depends).");
  m.def(
      "paged_attention",
      [](const mlx::core::array& q, const std::optional<mlx::core::array>& k,
         const std::optional<mlx::core::array>& v, const mlx::core::array& k_pool, const mlx::core::array& v_pool,
         const mlx::core::array& block_tables, const mlx::core::array& lengths, float scale, bool causal,
         const std::vector<mlx::core::array>& after) {
        return tiny_llm::paged_attention(q, k, v, k_pool, v_pool, block_tables, lengths, scale, causal, after);
      },
      "q"_a, "k"_a.none(), "v"_a.none(), "k_pool"_a, "v_pool"_a, "block_tables"_a, "lengths"_a, "scale"_a,
      "causal"_a = true, "after"_a = std::vector<mlx::core::array>{},
      "Attention of q (B, H, L, D) float32 over each row's keys, read through its block table (pools,\n"
      "block_tables, lengths as paged_write): query i of row b sits at position lengths[b] - L + i and sees\n"
      "keys 0 .. lengths[b] - 1 (up to its position when causal); GQA; an empty row gets zeros. k, v\n"
      "(B, H_kv, L, D) or None: stored first, in place, as paged_write does. Online softmax over tiles of\n"
      "64 keys (no (L, S) scores, no contiguous copy of the cache). Returns out (B, H, L, D), a view of a\n"
      "(B, L, H, D) buffer; with k, v later users of the pools must follow it.");
  m.def(
      "paged_copy_blocks",
      [](const mlx::core::array& k_pool, const mlx::core::array& v_pool, const std::vector<int>& src,
         const std::vector<int>& dst, const std::vector<mlx::core::array>& after) {
        return tiny_llm::paged_copy_blocks(k_pool, v_pool, src, dst, after);
      },
      "k_pool"_a, "v_pool"_a, "src"_a, "dst"_a, "after"_a = std::vector<mlx::core::array>{},
      "Block dst[i] of both pools becomes a copy of block src[i], IN PLACE (each destination once, never a\n"
      "source). Returns done, shape (0,), as paged_write.");
  m.def(
      "rms_norm",
      [](const mlx::core::array& x, const mlx::core::array& w, float eps) { return tiny_llm::rms_norm(x, w, eps); },
      "x"_a, "w"_a, "eps"_a, "x / sqrt(mean(x^2) + eps) * w. x: (M, D), w: (D,) float32 -> (M, D).");
  m.def(
      "swiglu",
      [](const mlx::core::array& g, const mlx::core::array& u) { return tiny_llm::swiglu(g, u); }, "gate"_a,
      "up"_a, "silu(gate) * up elementwise; float32, one shape.");
  m.def(
      "rope",
      [](const mlx::core::array& x, const mlx::core::array& inv_freq, int offset,
         const std::optional<mlx::core::array>& offsets, bool traditional) {
        return tiny_llm::rope(x, inv_freq, offset, offsets, traditional);
      },
      "x"_a, "inv_freq"_a, "offset"_a = 0, "offsets"_a = nb::none(), "traditional"_a = false,
      "RoPE fused with the transpose to attention layout. x: (B, L, H, D) float32, inv_freq: (D/2,)\n"
      "float32; position of (b, l) = offset + l, or offsets[b] + l -> (B, H, L, D). Pair i rotates by\n"
      "position * inv_freq[i]: (i, i + D/2) (rotate-half), or (2i, 2i + 1) when traditional.");
  m.def("cpu_isa", &tiny_llm::cpu_isa, "Instruction set the kernels dispatch to: avx512, avx2 or generic.");
  m.def("supported_isas", &tiny_llm::supported_isas, "ISAs this CPU and build can run, best first.");
  m.def("set_isa", &tiny_llm::set_isa, "name"_a, "Force the kernels onto one supported ISA (tests).");
  m.def("panel_kernels", [] { return tiny_llm::panel_kernels(); },
        "True when the active ISA has the int8 GEMM that reads the panel formats (q8_0x16, q5_0x16).");
  m.def("num_threads", &tiny_llm::num_threads, "Threads in the pool (hardware or TINY_LLM_THREADS).");
  m.def(
      "set_spin_us", [](int us) { tiny_llm::ThreadPool::spin_us().store(us < 0 ? 0 : us); }, "us"_a,
      "Microseconds an idle pool thread polls (yielding) before it sleeps (default 50, TINY_LLM_SPIN_US).");
  m.def(
      "spin_us", [] { return tiny_llm::ThreadPool::spin_us().load(); },
      "Microseconds an idle pool thread polls (yielding) before it sleeps.");
}

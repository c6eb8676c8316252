// linear.cpp — float32 y = x @ w.T (+ b) for the CPU: SIMD kernels, run-time ISA dispatch, threading,
// and the mlx Primitive that puts it in the graph.
//
// Rules it keeps:
//  * Portable build: no -march flags. Wide code lives only in functions carrying
//    __attribute__((target(...))) (see linear_kernels.inc) and runs only after
//    __builtin_cpu_supports says the CPU (and OS) has that ISA. x86 intrinsics are guarded by
//    __x86_64__; everywhere else the generic kernels (plain C++, auto-vectorized) are used.
//  * No AMX (the kernel here does not enable its tile state).
//  * All threading goes through tiny_llm::ThreadPool (blocking, never spinning).
#include "linear.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "kernel_table.h"
#include "threadpool.h"

// TL_NO_X86 builds only the portable kernels (to check the non-x86 build on an x86 machine).
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(TL_NO_X86)
#include <immintrin.h>
#define TL_X86 1
#else
#define TL_X86 0
#endif

namespace tiny_llm {

// ------------------------------------------------------------------------------------------------
#if TL_X86
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512 intrinsic headers build "undefined" vectors as `__m256d __Y = __Y;`, which
// -Wall flags at -O3 once inlined here. It's a known false positive; silence it for this block.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace isa_avx512 {
#define TL_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
struct Ops {
  using V = __m512;
  static constexpr int W = 16;
  static constexpr int MV_BIG = 2, NR_BIG = 12;    // 32 x 12 tile: 24 accumulators
  static constexpr int MV_SMALL = 1, NR_SMALL = 24;  // 16 x 24 tile: 24 accumulators
  TL_ATTR static inline V zero() { return _mm512_setzero_ps(); }
  TL_ATTR static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  TL_ATTR static inline V load_partial(const float* p, int n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  TL_ATTR static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  TL_ATTR static inline V set1(float f) { return _mm512_set1_ps(f); }
  TL_ATTR static inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  TL_ATTR static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // W int8 -> W floats.
  TL_ATTR static inline V load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // W bytes -> their low nibbles and high nibbles as floats.
  TL_ATTR static inline void load_nibbles(const uint8_t* p, V& lo, V& hi) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0xF)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
  }
  TL_ATTR static inline void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    }
    if (i < n) {  // masked tail: no scalar conversions (K = 896 leaves 12 of 28 scales here)
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
      _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
    }
  }
  TL_ATTR static inline float hsum(V v) {
    // Fold 512 -> 256 -> 128 -> 32 bits (GCC's _mm512_reduce_add_ps warns from its own header).
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // The two steps the x86 int8 kernels do differently (the rest is int8_ymm_ops.inc):
  // u8 x s8 dot product, 4 products summed per int32 lane (VNNI: one instruction, no saturation).
  TL_ATTR static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
  }
  // b + 0x10 in every byte whose bit is set in qh (Q5_0's fifth bits).
  TL_ATTR static inline __m256i add_fifth_bits(__m256i b, uint32_t qh) {
    return _mm256_mask_add_epi8(b, static_cast<__mmask32>(qh), b, _mm256_set1_epi8(0x10));
  }
#include "int8_ymm_ops.inc"
};
#include "linear_kernels.inc"
#include "quant_kernels.inc"
#include "qgemm_vnni.inc"
static const KernelTable table = {"avx512",  MR_BIG,     MR_SMALL,   Ops::NR_SMALL, pack_task,
                                  gemm_task, skinny_task, gemm_cols, q8_gemv_task,  a4_gemv_task,
                                  q5_gemv_task, dequant_rows, qgemm_task, qgemm_prepare_x};
#undef TL_ATTR
}  // namespace isa_avx512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace isa_avx2 {
#define TL_ATTR __attribute__((target("avx2,fma,f16c")))
struct Ops {
  using V = __m256;
  static constexpr int W = 8;
  static constexpr int MV_BIG = 2, NR_BIG = 6;     // 16 x 6 tile: 12 accumulators of 16 ymm
  static constexpr int MV_SMALL = 1, NR_SMALL = 12;  // 8 x 12 tile: 12 accumulators
  TL_ATTR static inline V zero() { return _mm256_setzero_ps(); }
  TL_ATTR static inline V load(const float* p) { return _mm256_loadu_ps(p); }
  TL_ATTR static inline V load_partial(const float* p, int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
    return _mm256_maskload_ps(p, mask);
  }
  TL_ATTR static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  TL_ATTR static inline V set1(float f) { return _mm256_set1_ps(f); }
  TL_ATTR static inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  TL_ATTR static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  TL_ATTR static inline V load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  TL_ATTR static inline void load_nibbles(const uint8_t* p, V& lo, V& hi) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0xF)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
  }
  TL_ATTR static inline void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
    if (i < n) {  // tail through a small buffer: no scalar conversions
      alignas(16) uint16_t h[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      alignas(32) float f[8];
      for (int64_t j = i; j < n; ++j) h[j - i] = src[j];
      _mm256_store_ps(f, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
      for (int64_t j = i; j < n; ++j) dst[j] = f[j - i];
    }
  }
  TL_ATTR static inline float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // The two steps the x86 int8 kernels do differently (the rest is int8_ymm_ops.inc):
  // u8 x s8 dot product, 4 products summed per int32 lane: pairs in int16 first, which cannot saturate
  // here (|w| <= 127 against x in [-127, 127], or u <= 31): 2 * 127 * 127 < 32767.
  TL_ATTR static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
  // b + 0x10 in every byte whose bit is set in qh: byte i of qh's broadcast goes to lanes 8i..8i+7,
  // each lane keeps its own bit, then 0xFF where set (no AVX-512 mask registers here).
  TL_ATTR static inline __m256i add_fifth_bits(__m256i b, uint32_t qh) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
    __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)), shuf);
    bits = _mm256_or_si256(bits, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    bits = _mm256_cmpeq_epi8(bits, _mm256_set1_epi64x(-1));
    return _mm256_or_si256(b, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)));
  }
#include "int8_ymm_ops.inc"
};
#include "linear_kernels.inc"
#include "quant_kernels.inc"
static const KernelTable table = {"avx2",    MR_BIG,     MR_SMALL,   Ops::NR_SMALL, pack_task,
                                  gemm_task, skinny_task, gemm_cols, q8_gemv_task,  a4_gemv_task,
                                  q5_gemv_task, dequant_rows, nullptr, nullptr};
#undef TL_ATTR
}  // namespace isa_avx2
#endif  // TL_X86

namespace isa_generic {
#define TL_ATTR
// Eight lanes as a plain struct: loops the compiler vectorizes for whatever the baseline ISA is
// (SSE2 on x86-64, NEON on arm64).
struct Ops {
  struct V {
    float v[8];
  };
  static constexpr int W = 8;
  static constexpr int MV_BIG = 2, NR_BIG = 4;
  static constexpr int MV_SMALL = 1, NR_SMALL = 8;
  static inline V zero() {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = 0.0f;
    return r;
  }
  static inline V load(const float* p) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static inline V load_partial(const float* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
  }
  static inline void store(float* p, const V& a) {
    for (int i = 0; i < W; ++i) p[i] = a.v[i];
  }
  static inline V set1(float f) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = f;
    return r;
  }
  static inline V fmadd(const V& a, const V& b, const V& c) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static inline float hsum(const V& a) {
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += a.v[i];
    return s;
  }
  static inline V mul(const V& a, const V& b) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  static inline V load_i8(const int8_t* p) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = static_cast<float>(p[i]);
    return r;
  }
  static inline void load_nibbles(const uint8_t* p, V& lo, V& hi) {
    for (int i = 0; i < W; ++i) {
      lo.v[i] = static_cast<float>(p[i] & 0xF);
      hi.v[i] = static_cast<float>(p[i] >> 4);
    }
  }
  static inline void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
  // Q8_0 x Q8_0 blocks (quant_kernels.inc): exact int32 dot per block, one float accumulator.
  struct I8 {
    int8_t v[32];
  };
  using F8 = float;
  static inline I8 i8_load(const int8_t* p) {
    I8 r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static inline const I8& i8_abs(const I8& w) { return w; }  // the portable dot needs no sign trick
  static inline F8 f8_zero() { return 0.0f; }
  static inline F8 dot_i8_madd(const I8&, const I8& w, const I8& x, const float* s, F8 acc) {
    int32_t d = 0;
    for (int i = 0; i < 32; ++i) d += static_cast<int32_t>(w.v[i]) * static_cast<int32_t>(x.v[i]);
    return acc + s[0] * static_cast<float>(d);
  }
  static inline float f8_hsum(F8 v) { return v; }
  static inline I8 q5_load(const uint8_t* qs, uint32_t qh) {
    I8 r;
    for (int i = 0; i < 16; ++i) {
      r.v[i] = static_cast<int8_t>((qs[i] & 0xF) | (((qh >> i) & 1u) << 4));
      r.v[i + 16] = static_cast<int8_t>((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4));
    }
    return r;
  }
  static inline F8 dot_u8_madd(const I8& u, const I8& x, const float* s, F8 acc) {
    int32_t d = 0;
    for (int i = 0; i < 32; ++i) d += static_cast<int32_t>(u.v[i]) * static_cast<int32_t>(x.v[i]);
    return acc + s[0] * static_cast<float>(d);
  }
  static inline void i8_store(int8_t* p, const I8& v) { std::memcpy(p, v.v, sizeof v.v); }
  static inline void q5_load2(const uint8_t* qs, uint64_t qh2, I8& lo, I8& hi) {
    const uint32_t h0 = static_cast<uint32_t>(qh2), h1 = static_cast<uint32_t>(qh2 >> 32);
    for (int i = 0; i < 16; ++i) {
      lo.v[i] = static_cast<int8_t>((qs[i] & 0xF) | (((h0 >> i) & 1u) << 4));
      lo.v[i + 16] = static_cast<int8_t>((qs[16 + i] & 0xF) | (((h1 >> i) & 1u) << 4));
      hi.v[i] = static_cast<int8_t>((qs[i] >> 4) | (((h0 >> (i + 16)) & 1u) << 4));
      hi.v[i + 16] = static_cast<int8_t>((qs[16 + i] >> 4) | (((h1 >> (i + 16)) & 1u) << 4));
    }
  }
  static inline F8 dot2_u8_madd(const I8& lo, const I8& hi, const I8& xlo, const I8& xhi, const float* s, F8 acc) {
    int32_t d0 = 0, d1 = 0;
    for (int i = 0; i < 16; ++i) {
      d0 += int32_t(lo.v[i]) * xlo.v[i] + int32_t(hi.v[i]) * xhi.v[i];
      d1 += int32_t(lo.v[i + 16]) * xlo.v[i + 16] + int32_t(hi.v[i + 16]) * xhi.v[i + 16];
    }
    return acc + s[0] * static_cast<float>(d0) + s[1] * static_cast<float>(d1);
  }
};
#include "linear_kernels.inc"
#include "quant_kernels.inc"
static const KernelTable table = {"generic", MR_BIG,     MR_SMALL,   Ops::NR_SMALL, pack_task,
                                  gemm_task, skinny_task, gemm_cols, q8_gemv_task,  a4_gemv_task,
                                  q5_gemv_task, dequant_rows, nullptr, nullptr};
#undef TL_ATTR
}  // namespace isa_generic

// ------------------------------------------------------------------------------------------------
// ISA selection

static bool isa_supported(const std::string& name) {
  if (name == "generic") return true;
#if TL_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (name == "avx2") return avx2;
  if (name == "avx512") {
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
#endif
  return false;
}

static const KernelTable* table_for(const std::string& name) {
#if TL_X86
  if (name == "avx512") return &isa_avx512::table;
  if (name == "avx2") return &isa_avx2::table;
#endif
  if (name == "generic") return &isa_generic::table;
  return nullptr;
}

static const KernelTable* best_table() {
  for (const char* name : {"avx512", "avx2", "generic"}) {
    if (isa_supported(name)) return table_for(name);
  }
  return &isa_generic::table;
}

static const KernelTable*& current_table() {
  static const KernelTable* t = best_table();
  return t;
}

std::string cpu_isa() { return current_table()->name; }

bool panel_kernels() { return current_table()->q_gemm != nullptr; }

const KernelTable& active_kernels() { return *current_table(); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* name : {"avx512", "avx2", "generic"}) {
    if (isa_supported(name)) out.emplace_back(name);
  }
  return out;
}

void set_isa(const std::string& name) {
  if (!isa_supported(name)) {
    throw std::invalid_argument("ISA '" + name + "' is not supported on this CPU/build");
  }
  current_table() = table_for(name);
}

int num_threads() { return ThreadPool::global().size(); }

// ------------------------------------------------------------------------------------------------
// Driver

// Decode and tiny batches: a dot-product kernel that reads each weight once per <= 4 rows.
static constexpr int64_t kSkinnyMaxM = 8;
// Below this many flops, waking another thread costs more than it saves.
static constexpr double kMinParallelFlops = 2.0e5;

void linear_f32(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t N,
                int64_t K, bool batch_invariant) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: y = b (or 0)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = b ? b[n] : 0.0f;
    return;
  }
  const KernelTable& t = *current_table();
  ThreadPool& pool = ThreadPool::global();
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int max_threads = flops < kMinParallelFlops ? 1 : 0;
  const int64_t threads = max_threads == 1 ? 1 : pool.size();

  if (M < kSkinnyMaxM || batch_invariant) {
    // Tasks of ~32 KB of weight rows (multiple of 8 rows), enough of them to balance the threads.
    int64_t rows = std::max<int64_t>(8, (32 * 1024 / (4 * K)) / 8 * 8);
    const int64_t balanced = ((N + 8 * threads - 1) / (8 * threads) + 7) / 8 * 8;
    rows = std::max<int64_t>(8, std::min(rows, balanced));
    const int64_t n_tasks = (N + rows - 1) / rows;
    pool.parallel_for(
        n_tasks,
        [&](int64_t task) {
          const int64_t n0 = task * rows;
          const int64_t n1 = std::min(N, n0 + rows);
          for (int64_t m0 = 0; m0 < M; m0 += 4) {
            t.skinny(x + m0 * K, w, b, y + m0 * N, N, K, std::min<int64_t>(4, M - m0), n0, n1);
          }
        },
        max_threads);
    return;
  }

  // GEMM: pack x transposed into M-blocks, then tasks over column ranges of y.
  int64_t n_big = M / t.mr_big;
  int64_t small_rows = M - n_big * t.mr_big;
  if (small_rows > t.mr_small) {  // a partial big block wastes less than two small ones
    ++n_big;
    small_rows = 0;
  }
  const int64_t n_blocks = n_big + (small_rows > 0 ? 1 : 0);
  const int64_t packed = (n_big * t.mr_big + (small_rows > 0 ? t.mr_small : 0)) * K;
  // One buffer per calling thread (the mlx stream thread), grown on demand and reused.
  thread_local std::vector<float> xT_buf;
  if (static_cast<int64_t>(xT_buf.size()) < packed) xT_buf.resize(packed);
  float* xT = xT_buf.data();
  pool.parallel_for(
      n_blocks, [&](int64_t blk) { t.pack(x, M, K, n_big, xT, blk); }, max_threads);

  // Columns per task: keep the task's weight rows within ~256 KB (L2), and make enough tasks
  // that a thread the OS runs late does not hold everyone up.
  const int64_t nr = t.nr_small;
  int64_t cols = std::max<int64_t>(nr, (256 * 1024 / (4 * K)) / nr * nr);
  const int64_t balanced = ((N + 4 * threads - 1) / (4 * threads) + nr - 1) / nr * nr;
  cols = std::max<int64_t>(nr, std::min(cols, balanced));
  GemmArgs g{xT, w, b, y, M, N, K, n_big, small_rows, cols};
  const int64_t n_tasks = (N + cols - 1) / cols;
  pool.parallel_for(n_tasks, [&](int64_t task) { t.gemm(g, task); }, max_threads);
}

// ------------------------------------------------------------------------------------------------
// Op and Primitive

mx::array linear(const mx::array& x, const mx::array& w, const std::optional<mx::array>& b,
                 bool batch_invariant, mx::StreamOrDevice s) {
  auto shape_str = [](const mx::array& a) {
    std::string out = "(";
    for (size_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
    return out + (a.ndim() == 1 ? ",)" : ")");
  };
  if (x.ndim() != 2) throw std::invalid_argument("linear: x must be 2-D (M, K), got " + shape_str(x));
  if (w.ndim() != 2) throw std::invalid_argument("linear: w must be 2-D (N, K), got " + shape_str(w));
  if (x.shape(1) != w.shape(1)) {
    throw std::invalid_argument("linear: K mismatch, x " + shape_str(x) + " vs w " + shape_str(w));
  }
  if (x.dtype() != mx::float32 || w.dtype() != mx::float32) {
    throw std::invalid_argument("linear: the cpu backend takes float32 x and w only");
  }
  if (b) {
    if (b->ndim() != 1 || b->shape(0) != w.shape(0)) {
      throw std::invalid_argument("linear: b must be (N,) = (" + std::to_string(w.shape(0)) +
                                  ",), got " + shape_str(*b));
    }
    if (b->dtype() != mx::float32) throw std::invalid_argument("linear: b must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, st), mx::contiguous(w, false, st)};
  if (b) inputs.push_back(mx::contiguous(*b, false, st));
  return mx::array(mx::Shape{x.shape(0), w.shape(0)}, mx::float32,
                   std::make_shared<Linear>(st, b.has_value(), batch_invariant), std::move(inputs));
}

void Linear::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array& x = inputs[0];
  const mx::array& w = inputs[1];
  mx::array& out = outputs[0];
  for (const auto& a : inputs) {
    if (!a.flags().row_contiguous) {
      throw std::runtime_error("TinyLLMLinear: input is not row-contiguous (op builder bug)");
    }
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  // mlx keeps the input buffers alive until the stream has run this task; capture raw pointers.
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* bp = has_bias_ ? inputs[2].data<float>() : nullptr;
  float* yp = out.data<float>();
  const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
  const bool inv = batch_invariant_;
  enc.dispatch([=]() { linear_f32(xp, wp, bp, yp, M, N, K, inv); });
}

void Linear::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMLinear has no GPU implementation; run it on the cpu stream");
}

bool Linear::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const Linear*>(&other);
  return o != nullptr && o->has_bias_ == has_bias_ && o->batch_invariant_ == batch_invariant_;
}

std::vector<mx::Shape> Linear::output_shapes(const std::vector<mx::array>& inputs) {
  return {mx::Shape{inputs[0].shape(0), inputs[1].shape(0)}};
}

}  // namespace tiny_llm

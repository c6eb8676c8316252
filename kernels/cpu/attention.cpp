// attention.cpp — flash attention (causal, GQA, per-row key lengths) and fused rms_norm / swiglu / rope.
//
// Flash attention, one task = one (batch row b, kv head hk, block of queries). The task gathers the
// queries of all G = H / H_kv heads that share kv head hk — R = G x (queries in the block) rows —
// so each K/V tile is read once for all of them. It walks the keys in tiles of kKeyTile:
//   S = Qs K_tile^T (Qs pre-scaled)        scores of the tile, (R, kKeyTile)
//   m' = max(m, rowmax S);  P = exp(S - m'); l = l e^(m - m') + rowsum P;  O = O e^(m - m') + P V_tile
// and finally out = O / l. Keys a row may not see (past its kv length, or its future when causal)
// get P = 0; tiles past the last visible key of the block are never read. An additive mask is added
// to S for the keys those rules leave visible, in the ISA-independent driver before the tile kernels
// take the max (so every ISA sees the same masked scores): a score of -inf gives P = 0 in every exp
// kernel, and a row whose visible scores are all -inf so far is skipped, keeping m = -inf (no
// exp(-inf - -inf)). Memory: O(R x (D + tile)).
// Tasks are handed out heaviest first (causal: the last query blocks see the most keys).
//
// Rules it keeps (see also linear.cpp):
//  * Portable build: AVX-512 code lives only in functions with __attribute__((target(...))) and runs
//    only when the ISA in use (`active_kernels()`, the same switch as linear/quant) is avx512.
//    avx2 = hand-written AVX2 + FMA tile kernels (the AVX-512 ones at half width; rms_norm and swiglu are
//    the portable loops compiled with target("avx2,fma")); generic = the portable loops plain.
//  * All threading goes through tiny_llm::ThreadPool (blocking, never spinning).
#include "attention.h"
#include "attention_impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "kernel_table.h"
#include "threadpool.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(TL_NO_X86)
#include <immintrin.h>
#define TL_X86 1
#else
#define TL_X86 0
#endif

namespace tiny_llm {

static constexpr int64_t kKeyTile = 64;  // keys per tile (4 AVX-512 vectors of scores per row)
static constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Where the tile kernels find key (or value) j of a tile: one every `stride` floats from `base` (a dense
// cache), or the j-th of an array of pointers (a paged cache: a tile of kKeyTile keys spans blocks that
// lie anywhere in the pool). Both inline into the kernels, so the dense path is what it was.
struct StridedRows {
  const float* base;
  int64_t stride;
  __attribute__((always_inline)) const float* operator()(int64_t j) const { return base + j * stride; }
};
struct RowPointers {
  const float* const* p;
  int64_t off;  // floats past each pointer (the kv head within a paged slot)
  __attribute__((always_inline)) const float* operator()(int64_t j) const { return p[j] + off; }
};

// ------------------------------------------------------------------------------------------------
// Tile kernels per ISA

namespace isa_generic {
#define TL_ATTR
#define TL_NAME "generic"
#include "attention_generic.inc"
#undef TL_NAME
#undef TL_ATTR
}  // namespace isa_generic

#if TL_X86
namespace isa_avx2 {
#define TL_ATTR __attribute__((target("avx2,fma")))
#define TL_NAME "avx2"
#include "attention_generic.inc"
#undef TL_NAME

TL_ATTR static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TL_ATTR static inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for x <= 88, the AVX-512 vexp's Cephes polynomial; AVX2 has no scalef, so 2^n is built in the
// exponent bits, which needs n >= -126: x < -87.336 (where e^x leaves the normal floats) gives exactly
// 0, as does -inf (a masked score). Relative error ~2 ulp on [-87, 88]; the attention feeds x <= 0.
TL_ATTR static inline __m256 vexp(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

// The attention tile kernels by hand, the AVX-512 ones at half the width (8 floats a vector, 16
// registers); D must be a multiple of 8 (the driver sends other D to the compiled loops of Kn above).
// rms_norm_row and swiglu stay Kn's.
struct KnSimd : Kn {
  template <class Rows>
  TL_ATTR static void scores_gemm(const float* Qs, int64_t R, int64_t D, Rows keys, int64_t kn, float* S,
                                  float* Kt) {
    for (int64_t j = 0; j < kn; ++j) {
      const float* kj = keys(j);
      for (int64_t d = 0; d < D; ++d) Kt[d * kKeyTile + j] = kj[d];
    }
    for (int64_t j = kn; j < kKeyTile; ++j)
      for (int64_t d = 0; d < D; ++d) Kt[d * kKeyTile + j] = 0.0f;
    const int64_t cols = (kn + 15) / 16 * 16;  // past kn the zero columns; S has kKeyTile columns
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      const float* q0 = Qs + r * D;
      for (int64_t c = 0; c < cols; c += 16) {
        __m256 acc[4][2];
        for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; ++d) {
          const float* kt = Kt + d * kKeyTile + c;
          const __m256 k0 = _mm256_loadu_ps(kt), k1 = _mm256_loadu_ps(kt + 8);
          for (int i = 0; i < 4; ++i) {
            const __m256 qv = _mm256_broadcast_ss(q0 + i * D + d);
            acc[i][0] = _mm256_fmadd_ps(qv, k0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(qv, k1, acc[i][1]);
          }
        }
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(S + (r + i) * kKeyTile + c, acc[i][0]);
          _mm256_storeu_ps(S + (r + i) * kKeyTile + c + 8, acc[i][1]);
        }
      }
    }
    for (; r < R; ++r) {
      const float* qr = Qs + r * D;
      for (int64_t c = 0; c < cols; c += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; ++d) {
          const __m256 qv = _mm256_broadcast_ss(qr + d);
          a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(Kt + d * kKeyTile + c), a0);
          a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(Kt + d * kKeyTile + c + 8), a1);
        }
        _mm256_storeu_ps(S + r * kKeyTile + c, a0);
        _mm256_storeu_ps(S + r * kKeyTile + c + 8, a1);
      }
    }
  }

  // One path for every number of rows (decode too): each score is the same chain of FMAs over d, however
  // many rows share the task, so a token's attention does not depend on the batch it is computed in
  // (a decode step, a prefill chunk, a recompute after preemption). A dot-product path for few rows was
  // no faster, and rounded differently.
  template <class Rows>
  TL_ATTR static void scores(const float* Qs, int64_t R, int64_t D, Rows keys, int64_t kn, float* S, float* Kt) {
    scores_gemm(Qs, R, D, keys, kn, S, Kt);
  }

  TL_ATTR static float row_max(const float* s, int64_t n) {
    __m256 m = _mm256_set1_ps(kNegInf);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    float out = hmax(m);
    for (; j < n; ++j) out = s[j] > out ? s[j] : out;
    return out;
  }

  // s[j] = exp(s[j] - m) for j < vis, 0 for vis <= j < kn (whole vectors: S has kKeyTile columns).
  TL_ATTR static float exp_row(float* s, int64_t vis, int64_t kn, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < kn; j += 8) {
      const __m256 on = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(vis - j)), lane));
      const __m256 e = _mm256_and_ps(on, vexp(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv)));
      _mm256_storeu_ps(s + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    return hsum(sum);
  }

  // O[r] += sum_j P[r, j] v_j, two rows at a time sharing the v loads, D in chunks of 32.
  template <int CN, class Rows>
  TL_ATTR static void pv_chunk(const float* P, int64_t R, int64_t kn, Rows vals, int64_t D, float* O, int64_t c0) {
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) {
      float* o0 = O + r * D + c0;
      float* o1 = o0 + D;
      const float* p0 = P + r * kKeyTile;
      const float* p1 = p0 + kKeyTile;
      __m256 a0[CN], a1[CN];
      for (int c = 0; c < CN; ++c) {
        a0[c] = _mm256_loadu_ps(o0 + 8 * c);
        a1[c] = _mm256_loadu_ps(o1 + 8 * c);
      }
      for (int64_t j = 0; j < kn; ++j) {
        const float* vj = vals(j) + c0;
        const __m256 w0 = _mm256_set1_ps(p0[j]), w1 = _mm256_set1_ps(p1[j]);
        for (int c = 0; c < CN; ++c) {
          const __m256 vv = _mm256_loadu_ps(vj + 8 * c);
          a0[c] = _mm256_fmadd_ps(w0, vv, a0[c]);
          a1[c] = _mm256_fmadd_ps(w1, vv, a1[c]);
        }
      }
      for (int c = 0; c < CN; ++c) {
        _mm256_storeu_ps(o0 + 8 * c, a0[c]);
        _mm256_storeu_ps(o1 + 8 * c, a1[c]);
      }
    }
    for (; r < R; ++r) {
      float* o0 = O + r * D + c0;
      const float* p0 = P + r * kKeyTile;
      __m256 a0[CN];
      for (int c = 0; c < CN; ++c) a0[c] = _mm256_loadu_ps(o0 + 8 * c);
      for (int64_t j = 0; j < kn; ++j) {
        const float* vj = vals(j) + c0;
        const __m256 w0 = _mm256_set1_ps(p0[j]);
        for (int c = 0; c < CN; ++c) a0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(vj + 8 * c), a0[c]);
      }
      for (int c = 0; c < CN; ++c) _mm256_storeu_ps(o0 + 8 * c, a0[c]);
    }
  }

  template <class Rows>
  TL_ATTR static void pv(const float* P, int64_t R, int64_t kn, Rows vals, int64_t D, float* O) {
    for (int64_t c0 = 0; c0 < D; c0 += 32) {
      switch ((std::min<int64_t>(32, D - c0)) / 8) {
        case 4: pv_chunk<4>(P, R, kn, vals, D, O, c0); break;
        case 3: pv_chunk<3>(P, R, kn, vals, D, O, c0); break;
        case 2: pv_chunk<2>(P, R, kn, vals, D, O, c0); break;
        default: pv_chunk<1>(P, R, kn, vals, D, O, c0); break;
      }
    }
  }
};
#undef TL_ATTR
}  // namespace isa_avx2

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace isa_avx512 {
#define TL_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))

TL_ATTR static inline float hsum(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TL_ATTR static inline float hmax(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE));
  const __m256 s8 = _mm256_max_ps(lo, hi);
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x, Cephes-style: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, then scalef by 2^n.
// Relative error ~2 ulp on [-87, 88]; x < -104 gives exactly 0, x > 100 gives +inf.
TL_ATTR static inline __m512 vexp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(100.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// The AVX-512 tile kernels; D must be a multiple of 16 (the driver sends other D to avx2/generic).
struct Kn {
  static constexpr const char* name = "avx512";

  template <class Rows>
  TL_ATTR static void scores_gemm(const float* Qs, int64_t R, int64_t D, Rows keys, int64_t kn, float* S,
                                  float* Kt) {
    for (int64_t j = 0; j < kn; ++j) {
      const float* kj = keys(j);
      for (int64_t d = 0; d < D; ++d) Kt[d * kKeyTile + j] = kj[d];
    }
    for (int64_t j = kn; j < kKeyTile; ++j)
      for (int64_t d = 0; d < D; ++d) Kt[d * kKeyTile + j] = 0.0f;
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_setzero_ps();
      const float* q0 = Qs + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const float* kt = Kt + d * kKeyTile;
        const __m512 k0 = _mm512_loadu_ps(kt), k1 = _mm512_loadu_ps(kt + 16);
        const __m512 k2 = _mm512_loadu_ps(kt + 32), k3 = _mm512_loadu_ps(kt + 48);
        for (int i = 0; i < 4; ++i) {
          const __m512 qv = _mm512_set1_ps(q0[i * D + d]);
          acc[i][0] = _mm512_fmadd_ps(qv, k0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(qv, k1, acc[i][1]);
          acc[i][2] = _mm512_fmadd_ps(qv, k2, acc[i][2]);
          acc[i][3] = _mm512_fmadd_ps(qv, k3, acc[i][3]);
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(S + (r + i) * kKeyTile + 16 * c, acc[i][c]);
    }
    for (; r < R; ++r) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      const float* qr = Qs + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const __m512 qv = _mm512_set1_ps(qr[d]);
        for (int c = 0; c < 4; ++c) acc[c] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(Kt + d * kKeyTile + 16 * c), acc[c]);
      }
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(S + r * kKeyTile + 16 * c, acc[c]);
    }
  }

  // One path for every number of rows (decode too): each score is the same chain of FMAs over d, however
  // many rows share the task, so a token's attention does not depend on the batch it is computed in
  // (a decode step, a prefill chunk, a recompute after preemption). A dot-product path for few rows was
  // no faster, and rounded differently.
  template <class Rows>
  TL_ATTR static void scores(const float* Qs, int64_t R, int64_t D, Rows keys, int64_t kn, float* S, float* Kt) {
    scores_gemm(Qs, R, D, keys, kn, S, Kt);
  }

  TL_ATTR static float row_max(const float* s, int64_t n) {
    __m512 m = _mm512_set1_ps(kNegInf);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
    if (j < n) {
      const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
      m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), k, s + j));
    }
    return hmax(m);
  }

  TL_ATTR static float exp_row(float* s, int64_t vis, int64_t kn, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < kn; j += 16) {
      const int64_t left = vis - j;
      const __mmask16 k = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                          : left <= 0 ? static_cast<__mmask16>(0)
                                      : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 e = _mm512_maskz_mov_ps(k, vexp(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv)));
      _mm512_storeu_ps(s + j, e);  // the S buffer has kKeyTile columns, so a full store is in bounds
      sum = _mm512_add_ps(sum, e);
    }
    return hsum(sum);
  }

  // O[r] += sum_j P[r, j] v_j, two rows at a time sharing the v loads, D in chunks of 64.
  template <int CN, class Rows>
  TL_ATTR static void pv_chunk(const float* P, int64_t R, int64_t kn, Rows vals, int64_t D, float* O, int64_t c0) {
    int64_t r = 0;
    for (; r + 2 <= R; r += 2) {
      float* o0 = O + r * D + c0;
      float* o1 = o0 + D;
      const float* p0 = P + r * kKeyTile;
      const float* p1 = p0 + kKeyTile;
      __m512 a0[CN], a1[CN];
      for (int c = 0; c < CN; ++c) {
        a0[c] = _mm512_loadu_ps(o0 + 16 * c);
        a1[c] = _mm512_loadu_ps(o1 + 16 * c);
      }
      for (int64_t j = 0; j < kn; ++j) {
        const float* vj = vals(j) + c0;
        const __m512 w0 = _mm512_set1_ps(p0[j]), w1 = _mm512_set1_ps(p1[j]);
        for (int c = 0; c < CN; ++c) {
          const __m512 vv = _mm512_loadu_ps(vj + 16 * c);
          a0[c] = _mm512_fmadd_ps(w0, vv, a0[c]);
          a1[c] = _mm512_fmadd_ps(w1, vv, a1[c]);
        }
      }
      for (int c = 0; c < CN; ++c) {
        _mm512_storeu_ps(o0 + 16 * c, a0[c]);
        _mm512_storeu_ps(o1 + 16 * c, a1[c]);
      }
    }
    for (; r < R; ++r) {
      float* o0 = O + r * D + c0;
      const float* p0 = P + r * kKeyTile;
      __m512 a0[CN];
      for (int c = 0; c < CN; ++c) a0[c] = _mm512_loadu_ps(o0 + 16 * c);
      for (int64_t j = 0; j < kn; ++j) {
        const float* vj = vals(j) + c0;
        const __m512 w0 = _mm512_set1_ps(p0[j]);
        for (int c = 0; c < CN; ++c) a0[c] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(vj + 16 * c), a0[c]);
      }
      for (int c = 0; c < CN; ++c) _mm512_storeu_ps(o0 + 16 * c, a0[c]);
    }
  }

  template <class Rows>
  TL_ATTR static void pv(const float* P, int64_t R, int64_t kn, Rows vals, int64_t D, float* O) {
    for (int64_t c0 = 0; c0 < D; c0 += 64) {
      switch ((std::min<int64_t>(64, D - c0)) / 16) {
        case 4: pv_chunk<4>(P, R, kn, vals, D, O, c0); break;
        case 3: pv_chunk<3>(P, R, kn, vals, D, O, c0); break;
        case 2: pv_chunk<2>(P, R, kn, vals, D, O, c0); break;
        default: pv_chunk<1>(P, R, kn, vals, D, O, c0); break;
      }
    }
  }

  TL_ATTR static void rms_norm_row(const float* x, const float* w, float* y, int64_t D, float eps) {
    __m512 acc = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
      const __m512 v = _mm512_loadu_ps(x + d);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const __mmask16 tail = static_cast<__mmask16>((1u << (D - d)) - 1u);
    if (d < D) {
      const __m512 v = _mm512_maskz_loadu_ps(tail, x + d);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / std::sqrt(hsum(acc) / static_cast<float>(D) + eps);
    const __m512 iv = _mm512_set1_ps(inv);
    for (d = 0; d + 16 <= D; d += 16) {
      _mm512_storeu_ps(y + d, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + d), iv), _mm512_loadu_ps(w + d)));
    }
    if (d < D) {
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + d), iv),
                                     _mm512_maskz_loadu_ps(tail, w + d));
      _mm512_mask_storeu_ps(y + d, tail, v);
    }
  }

  TL_ATTR static void swiglu(const float* g, const float* u, float* y, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 gv = _mm512_loadu_ps(g + i);
      const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, vexp(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
      _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    if (i < n) {
      const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1u);
      const __m512 gv = _mm512_maskz_loadu_ps(k, g + i);
      const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, vexp(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
      _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, u + i)));
    }
  }
};
#undef TL_ATTR
}  // namespace isa_avx512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // TL_X86

// ------------------------------------------------------------------------------------------------
// Flash attention driver

// One task of flash attention: rows (b, kv heads hk0 .. hk0 + HG - 1) x one block of queries. kPaged:
// the keys come through the block tables (AttnArgs::tables), else from k / v or the per-row buffers.
// A paged slot holds every kv head's keys side by side, so a paged task may take all of a row's heads
// (HG = Hkv) and read each slot whole; one head per task would leave the neighbouring lines the hardware
// prefetches to another task, and the row's keys would cross the memory bus once per head.
template <class K, bool kPaged>
static void attn_task(const AttnArgs& a, int64_t task) {
  const int64_t G = a.H / a.Hkv, D = a.D, L = a.L, HG = a.HG, n_hg = a.Hkv / HG;
  const int64_t qb = a.n_qb - 1 - task / (a.B * n_hg);  // heaviest (last) query blocks first
  const int64_t bg = task % (a.B * n_hg);
  const int64_t b = bg / n_hg, hk0 = (bg % n_hg) * HG;
  const int64_t i0 = qb * a.QB, i1 = std::min(L, i0 + a.QB), nq = i1 - i0, R = G * nq;
  const int64_t kvl = a.kv_len ? std::clamp<int64_t>(a.kv_len[b], 0, a.S) : a.S;

  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(HG * (2 * R * D + 2 * R) + R * kKeyTile + D * kKeyTile);
  if (buf.size() < need) buf.resize(need);
  float* Qs = buf.data();             // (HG, R, D) scaled queries
  float* O = Qs + HG * R * D;         // (HG, R, D) running numerators
  float* m = O + HG * R * D;          // (HG, R) running max
  float* l = m + HG * R;              // (HG, R) running sum
  float* Sb = l + HG * R;             // (R, kKeyTile) scores, then probabilities (one head at a time)
  float* Kt = Sb + R * kKeyTile;      // (D, kKeyTile) transposed key tile (gemm scores)
  thread_local std::vector<int64_t> kend_buf;
  if (static_cast<int64_t>(kend_buf.size()) < R) kend_buf.resize(R);
  int64_t* kend = kend_buf.data();  // (R,) keys [0, kend) are visible to row r (alike for every head)

  int64_t kmax = 0;
  for (int64_t hh = 0; hh < HG; ++hh) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = (hk0 + hh) * G + g;
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t r = g * nq + i;
        const float* src = a.q + b * a.qs[0] + h * a.qs[1] + (i0 + i) * a.qs[2];
        float* qs = Qs + (hh * R + r) * D;
        for (int64_t d = 0; d < D; ++d) qs[d] = src[d] * a.scale;
        const int64_t e = a.causal ? std::min(kvl, kvl - L + (i0 + i) + 1) : kvl;
        kend[r] = std::max<int64_t>(e, 0);
        kmax = std::max(kmax, kend[r]);
        m[hh * R + r] = kNegInf;
        l[hh * R + r] = 0.0f;
      }
    }
  }
  std::fill(O, O + HG * R * D, 0.0f);

  const float* kb = nullptr;
  const float* vb = nullptr;
  // Paged: the slots of a tile (their kv head hk0), wherever their blocks are, for this tile and the
  // next one, whose lines are prefetched while this one is computed: the blocks lie anywhere in the pool,
  // so the hardware prefetchers, which follow a stream within a page, start cold at every block.
  const float* ptrs[2][2][kKeyTile];  // [tile parity][keys, values][j]
  const auto tile_ptrs = [&](int64_t t0, int64_t kn, const float** kp, const float** vp) {
    const int32_t* table = a.tables + b * a.T;  // position p: block table[p / bs], slot p % bs
    const int64_t slot_floats = a.Hkv * D;      // one slot holds every kv head's D floats
    int64_t bi = t0 / a.bs, slot = t0 % a.bs;
    for (int64_t j = 0; j < kn; ++j) {
      const int64_t off = (int64_t(table[bi]) * a.bs + slot) * slot_floats + hk0 * D;
      kp[j] = a.kpool + off;
      vp[j] = a.vpool + off;
      if (++slot == a.bs) {
        slot = 0;
        ++bi;
      }
    }
  };
  if constexpr (kPaged) {
    if (kmax > 0) tile_ptrs(0, std::min(kKeyTile, kmax), ptrs[0][0], ptrs[0][1]);
  } else {  // HG = 1
    kb = a.krows ? a.krows[b] + hk0 * a.row_hs[b] : a.k + b * a.ks[0] + hk0 * a.ks[1];
    vb = a.vrows ? a.vrows[b] + hk0 * a.row_hs[b] : a.v + b * a.vs[0] + hk0 * a.vs[1];
  }
  for (int64_t t0 = 0; t0 < kmax; t0 += kKeyTile) {
    const int64_t kn = std::min(kKeyTile, kmax - t0);
    const int cur = int(t0 / kKeyTile) & 1;
    if constexpr (kPaged) {
      const int64_t t1 = t0 + kKeyTile;
      if (t1 < kmax) {
        const int64_t n1 = std::min(kKeyTile, kmax - t1);
        const float** kp = ptrs[cur ^ 1][0];
        const float** vp = ptrs[cur ^ 1][1];
        tile_ptrs(t1, n1, kp, vp);
        const int64_t span = HG * D;  // the floats this task reads of a slot
        for (int64_t j = 0; j < n1; ++j) {  // every 64-byte line of the keys and of the values
          for (int64_t d = 0; d < span; d += 16) {
            __builtin_prefetch(kp[j] + d);
            __builtin_prefetch(vp[j] + d);
          }
          __builtin_prefetch(kp[j] + span - 1);
          __builtin_prefetch(vp[j] + span - 1);
        }
      }
    }
    for (int64_t hh = 0; hh < HG; ++hh) {
      const float* Qh = Qs + hh * R * D;
      float* Oh = O + hh * R * D;
      float* mh = m + hh * R;
      float* lh = l + hh * R;
      if constexpr (kPaged) {
        K::scores(Qh, R, D, RowPointers{ptrs[cur][0], hh * D}, kn, Sb, Kt);
      } else {
        K::scores(Qh, R, D, StridedRows{kb + t0 * a.ks[2], a.ks[2]}, kn, Sb, Kt);
      }
      for (int64_t r = 0; r < R; ++r) {
        float* s = Sb + r * kKeyTile;
        const int64_t vis = std::min(kn, kend[r] - t0);
        if (vis <= 0) {
          std::fill(s, s + kn, 0.0f);
          continue;
        }
        if (a.mask) {  // row r = (head (hk0 + hh) * G + r / nq, query i0 + r % nq)
          const float* mr = a.mask + b * a.ms[0] + ((hk0 + hh) * G + r / nq) * a.ms[1] +
                            (i0 + r % nq) * a.ms[2] + t0 * a.ms[3];
          if (a.ms[3] == 1) {  // contiguous keys (the usual case): a loop the compiler vectorizes
            for (int64_t j = 0; j < vis; ++j) s[j] += mr[j];
          } else {
            for (int64_t j = 0; j < vis; ++j) s[j] += mr[j * a.ms[3]];
          }
        }
        const float m_new = std::max(mh[r], K::row_max(s, vis));
        if (m_new == kNegInf) {  // every visible key so far is masked to -inf: nothing to add (O, l are 0)
          std::fill(s, s + kn, 0.0f);
          continue;
        }
        const float alpha = mh[r] == kNegInf ? 0.0f : std::exp(mh[r] - m_new);
        lh[r] = lh[r] * alpha + K::exp_row(s, vis, kn, m_new);
        mh[r] = m_new;
        if (alpha != 1.0f) {
          float* o = Oh + r * D;
          for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
        }
      }
      if constexpr (kPaged) {
        K::pv(Sb, R, kn, RowPointers{ptrs[cur][1], hh * D}, D, Oh);
      } else {
        K::pv(Sb, R, kn, StridedRows{vb + t0 * a.vs[2], a.vs[2]}, D, Oh);
      }
    }
  }

  for (int64_t hh = 0; hh < HG; ++hh) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = (hk0 + hh) * G + g;
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t r = g * nq + i;
        float* dst = a.out + (((b * L) + i0 + i) * a.H + h) * D;
        const float* o = O + (hh * R + r) * D;
        const float inv = l[hh * R + r] > 0.0f ? 1.0f / l[hh * R + r] : 0.0f;
        for (int64_t d = 0; d < D; ++d) dst[d] = o[d] * inv;
      }
    }
  }
}

using AttnTaskFn = void (*)(const AttnArgs&, int64_t);
using RmsRowFn = void (*)(const float*, const float*, float*, int64_t, float);
using SwigluFn = void (*)(const float*, const float*, float*, int64_t);

struct FusedTable {
  const char* name;
  AttnTaskFn attn;
  AttnTaskFn paged_attn;
  RmsRowFn rms;
  SwigluFn swiglu;
};

template <class K>
static FusedTable make_table() {
  return {K::name, &attn_task<K, false>, &attn_task<K, true>, &K::rms_norm_row, &K::swiglu};
}

// The tile kernels of the ISA linear/quant use (set_isa switches all of them) for attention with head
// dimension D (0 for the elementwise ops): the AVX-512 ones need D % 16 == 0, the hand-written AVX2 ones
// D % 8 == 0; other D run the loops of attention_generic.inc compiled for AVX2.
static FusedTable fused_table(int64_t D) {
#if TL_X86
  const char* isa = active_kernels().name;
  const bool avx512 = std::strcmp(isa, "avx512") == 0;
  if (avx512 && D % 16 == 0) return make_table<isa_avx512::Kn>();
  if (avx512 || std::strcmp(isa, "avx2") == 0) {
    FusedTable t = D % 8 == 0 ? make_table<isa_avx2::KnSimd>() : make_table<isa_avx2::Kn>();
    if (avx512) {
      t.rms = &isa_avx512::Kn::rms_norm_row;
      t.swiglu = &isa_avx512::Kn::swiglu;
    }
    return t;
  }
#else
  (void)D;
#endif
  return make_table<isa_generic::Kn>();
}

void flash_attention_f32(AttnArgs a) {
  if (a.B == 0 || a.H == 0 || a.L == 0 || a.D == 0) return;
  const int64_t G = a.H / a.Hkv;
  // ~64 rows per task: enough to amortize a key tile, small enough for L1 and for many tasks.
  a.QB = std::clamp<int64_t>(64 / G, 1, a.L);
  a.n_qb = (a.L + a.QB - 1) / a.QB;
  const FusedTable t = fused_table(a.D);
  // A paged task takes all of a row's kv heads when there are still two tasks per thread so.
  a.HG = a.tables && a.B * a.n_qb >= 2 * ThreadPool::global().size() ? a.Hkv : 1;
  const int64_t n_tasks = a.B * (a.Hkv / a.HG) * a.n_qb;
  const double work = double(a.B) * a.H * a.L * double(a.S) * a.D;
  const int max_threads = work < 1.0e5 ? 1 : 0;
  const AttnTaskFn fn = a.tables ? t.paged_attn : t.attn;
  ThreadPool::global().parallel_for(n_tasks, [&](int64_t task) { fn(a, task); }, max_threads);
}

// ------------------------------------------------------------------------------------------------
// Ops

std::string shape_str(const mx::array& a) {
  std::string out = "(";
  for (size_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

mx::array flash_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                          bool causal, const std::optional<mx::array>& kv_lengths,
                          const std::optional<mx::array>& mask, mx::StreamOrDevice s) {
  const std::string fa = "flash_attention: ";
  if (q.ndim() != 4) throw std::invalid_argument(fa + "q must be (B, H, L, D), got " + shape_str(q));
  if (k.ndim() != 4) throw std::invalid_argument(fa + "k must be (B, H_kv, S, D), got " + shape_str(k));
  if (k.shape() != v.shape()) {
    throw std::invalid_argument(fa + "k " + shape_str(k) + " and v " + shape_str(v) + " must have one shape");
  }
  const int B = q.shape(0), H = q.shape(1), L = q.shape(2), D = q.shape(3);
  const int Hkv = k.shape(1);
  if (k.shape(0) != B || k.shape(3) != D) {
    throw std::invalid_argument(fa + "k " + shape_str(k) + " does not match q " + shape_str(q));
  }
  if (Hkv <= 0 || H % Hkv != 0) {
    throw std::invalid_argument(fa + "query heads (" + std::to_string(H) + ") must be a multiple of kv heads (" +
                                std::to_string(Hkv) + ")");
  }
  for (const mx::array* a : {&q, &k, &v}) {
    if (a->dtype() != mx::float32) throw std::invalid_argument(fa + "q, k, v must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  std::vector<mx::array> inputs = {q, k, v};
  if (kv_lengths) {
    if (kv_lengths->ndim() != 1 || kv_lengths->shape(0) != B) {
      throw std::invalid_argument(fa + "kv_lengths must be (B,) = (" + std::to_string(B) + ",), got " +
                                  shape_str(*kv_lengths));
    }
    if (!mx::issubdtype(kv_lengths->dtype(), mx::integer)) {
      throw std::invalid_argument(fa + "kv_lengths must be an integer array");
    }
    inputs.push_back(mx::contiguous(mx::astype(*kv_lengths, mx::int32, st), false, st));
  }
  if (mask) {
    const int S = k.shape(2);
    if (mask->ndim() != 4 || mask->shape(0) != B || mask->shape(1) != H || mask->shape(2) != L ||
        mask->shape(3) != S) {
      throw std::invalid_argument(fa + "mask must be (B, H, L, S) = (" + std::to_string(B) + ", " +
                                  std::to_string(H) + ", " + std::to_string(L) + ", " + std::to_string(S) +
                                  ") (broadcast it first: a view is not copied), got " + shape_str(*mask));
    }
    if (mask->dtype() != mx::float32) {
      throw std::invalid_argument(fa + "mask must be float32 (additive: turn a boolean mask into 0 / -inf first)");
    }
    inputs.push_back(*mask);  // as is: read through its strides, so a broadcast view is never expanded
  }
  mx::array out(mx::Shape{B, L, H, D}, mx::float32,
                std::make_shared<FlashAttention>(st, scale, causal, kv_lengths.has_value(), mask.has_value()),
                std::move(inputs));
  return mx::transpose(out, {0, 2, 1, 3}, st);  // (B, H, L, D) view of the (B, L, H, D) buffer
}

// A float32 4-D input whose last axis is contiguous, as (pointer, strides of the first three axes).
// Anything else (a transposed last axis) is copied into `scratch` first.
static const float* strided_view(const mx::array& a, int64_t st[3], std::vector<float>& scratch) {
  const auto& sh = a.shape();
  const auto& s = a.strides();
  if (s[3] == 1 || sh[3] == 1) {
    for (int i = 0; i < 3; ++i) st[i] = s[i];
    return a.data<float>();
  }
  const int64_t n = int64_t(sh[0]) * sh[1] * sh[2] * sh[3];
  scratch.resize(n);
  const float* src = a.data<float>();
  int64_t o = 0;
  for (int64_t i0 = 0; i0 < sh[0]; ++i0)
    for (int64_t i1 = 0; i1 < sh[1]; ++i1)
      for (int64_t i2 = 0; i2 < sh[2]; ++i2)
        for (int64_t i3 = 0; i3 < sh[3]; ++i3) scratch[o++] = src[i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3]];
  st[0] = int64_t(sh[1]) * sh[2] * sh[3];
  st[1] = int64_t(sh[2]) * sh[3];
  st[2] = sh[3];
  return scratch.data();
}

mx::cpu::CommandEncoder& begin_eval(const mx::Stream& stream, const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream);
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  return enc;
}

void FlashAttention::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array &q = inputs[0], &k = inputs[1], &v = inputs[2];
  mx::array& out = outputs[0];
  auto& enc = begin_eval(stream(), inputs, out);
  AttnArgs a{};
  a.B = q.shape(0);
  a.H = q.shape(1);
  a.L = q.shape(2);
  a.D = q.shape(3);
  a.Hkv = k.shape(1);
  a.S = k.shape(2);
  a.out = out.data<float>();
  a.kv_len = has_lengths_ ? inputs[3].data<int32_t>() : nullptr;
  if (has_mask_) {
    const mx::array& mk = inputs[has_lengths_ ? 4 : 3];
    a.mask = mk.data<float>();
    for (int i = 0; i < 4; ++i) a.ms[i] = mk.strides()[i];
  }
  a.scale = scale_;
  a.causal = causal_;
  // Strides are read here (the inputs are evaluated); the rare copies happen inside the task.
  a.q = q.data<float>();
  a.k = k.data<float>();
  a.v = v.data<float>();
  const bool copy = (q.strides()[3] != 1 && q.shape(3) != 1) || (k.strides()[3] != 1 && k.shape(3) != 1) ||
                    (v.strides()[3] != 1 && v.shape(3) != 1);
  if (!copy) {
    for (int i = 0; i < 3; ++i) {
      a.qs[i] = q.strides()[i];
      a.ks[i] = k.strides()[i];
      a.vs[i] = v.strides()[i];
    }
    enc.dispatch([a]() { flash_attention_f32(a); });
    return;
  }
  enc.dispatch([a, q, k, v]() mutable {
    std::vector<float> qb, kb, vb;
    a.q = strided_view(q, a.qs, qb);
    a.k = strided_view(k, a.ks, kb);
    a.v = strided_view(v, a.vs, vb);
    flash_attention_f32(a);
  });
}

void FlashAttention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMFlashAttention has no GPU implementation; run it on the cpu stream");
}

bool FlashAttention::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const FlashAttention*>(&other);
  return o != nullptr && o->scale_ == scale_ && o->causal_ == causal_ && o->has_lengths_ == has_lengths_ &&
         o->has_mask_ == has_mask_;
}

std::vector<mx::Shape> FlashAttention::output_shapes(const std::vector<mx::array>& inputs) {
  const auto& q = inputs[0];
  return {mx::Shape{q.shape(0), q.shape(2), q.shape(1), q.shape(3)}};
}

// ---- decode_attention_rows

mx::array decode_attention_rows(const mx::array& q, const mx::array& k, const mx::array& v,
                                const std::vector<mx::array>& caches, const std::vector<int>& lengths, float scale,
                                const std::vector<mx::array>& after, mx::StreamOrDevice s) {
  const std::string fa = "decode_attention_rows: ";
  if (q.ndim() != 4 || q.shape(2) != 1) throw std::invalid_argument(fa + "q must be (B, H, 1, D), got " + shape_str(q));
  const int B = q.shape(0), H = q.shape(1), D = q.shape(3);
  if (k.ndim() != 4 || k.shape(0) != B || k.shape(2) != 1 || k.shape(3) != D || k.shape() != v.shape()) {
    throw std::invalid_argument(fa + "k and v must be (B, H_kv, 1, D) matching q " + shape_str(q) + ", got " +
                                shape_str(k) + " and " + shape_str(v));
  }
  const int Hkv = k.shape(1);
  if (Hkv <= 0 || H % Hkv != 0) throw std::invalid_argument(fa + "query heads must be a multiple of kv heads");
  for (const mx::array* a : {&q, &k, &v}) {
    if (a->dtype() != mx::float32) throw std::invalid_argument(fa + "q, k, v must be float32");
  }
  if (static_cast<int>(caches.size()) != 2 * B || static_cast<int>(lengths.size()) != B) {
    throw std::invalid_argument(fa + "need 2 cache buffers (keys, values) and one length per row: B = " +
                                std::to_string(B) + ", got " + std::to_string(caches.size()) + " buffers and " +
                                std::to_string(lengths.size()) + " lengths");
  }
  for (int b = 0; b < B; ++b) {
    const mx::array &kc = caches[2 * b], &vc = caches[2 * b + 1];
    if (kc.ndim() != 4 || kc.shape(0) != 1 || kc.shape(1) != Hkv || kc.shape(3) != D || kc.shape() != vc.shape() ||
        kc.dtype() != mx::float32 || vc.dtype() != mx::float32) {
      throw std::invalid_argument(fa + "row " + std::to_string(b) + ": cache buffers must be float32 (1, " +
                                  std::to_string(Hkv) + ", capacity, " + std::to_string(D) + "), got " +
                                  shape_str(kc) + " and " + shape_str(vc));
    }
    if (lengths[b] < 0 || lengths[b] >= kc.shape(2)) {
      throw std::invalid_argument(fa + "row " + std::to_string(b) + ": length " + std::to_string(lengths[b]) +
                                  " leaves no room for the new token in a buffer of " +
                                  std::to_string(kc.shape(2)));
    }
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(q, false, st), mx::contiguous(k, false, st),
                                   mx::contiguous(v, false, st)};
  for (const auto& c : caches) inputs.push_back(c);  // as is: the kernel writes into these very buffers
  // Not read: they order this op after the ops that wrote these buffers before (one output, so no
  // per-row sibling arrays: handing the buffers back as outputs cost O(B^2) bookkeeping per layer).
  for (const auto& a : after) inputs.push_back(a);
  mx::array out(mx::Shape{B, 1, H, D}, mx::float32, std::make_shared<DecodeAttentionRows>(st, scale, lengths),
                std::move(inputs));
  return mx::transpose(out, {0, 2, 1, 3}, st);  // (B, H, 1, D) view of the (B, 1, H, D) buffer
}

void DecodeAttentionRows::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array &q = inputs[0], &k = inputs[1], &v = inputs[2];
  const int64_t B = q.shape(0), H = q.shape(1), D = q.shape(3), Hkv = k.shape(1);
  auto& enc = begin_eval(stream(), inputs, outputs[0]);
  // The new token goes into the cache buffers themselves (positions lengths[b], past every length
  // anything has read so far), like vLLM's cache writes: mlx cannot update buffers in place through a
  // multi-output op (each output holds its own reference to every input, so none is ever donatable).
  std::vector<float*> rows(2 * B);  // keys of rows 0..B-1, then their values
  std::vector<int64_t> hs(B);        // floats per kv head in row b's buffers
  std::vector<int32_t> kv_len(B);
  for (int64_t i = 0; i < 2 * B; ++i) {
    if (!inputs[3 + i].flags().row_contiguous) {
      throw std::runtime_error("decode_attention_rows: cache buffer " + std::to_string(i) +
                               " is not row-contiguous (pass the cache's own buffers)");
    }
    rows[i % 2 == 0 ? i / 2 : B + i / 2] = const_cast<float*>(inputs[3 + i].data<float>());
  }
  for (int64_t b = 0; b < B; ++b) {
    hs[b] = int64_t(inputs[3 + 2 * b].shape(2)) * D;
    kv_len[b] = lengths_[b] + 1;
  }
  AttnArgs a{};
  a.B = B;
  a.H = H;
  a.L = 1;
  a.D = D;
  a.Hkv = Hkv;
  a.S = *std::max_element(kv_len.begin(), kv_len.end());
  a.out = outputs[0].data<float>();
  a.scale = scale_;
  a.causal = true;
  a.q = q.data<float>();
  a.qs[0] = H * D;
  a.qs[1] = D;
  a.qs[2] = D;
  a.ks[2] = a.vs[2] = D;
  const float* kn = k.data<float>();
  const float* vn = v.data<float>();
  enc.dispatch([a, rows = std::move(rows), hs = std::move(hs), kv_len = std::move(kv_len), kn, vn, B, Hkv,
                D]() mutable {
    for (int64_t b = 0; b < B; ++b) {  // the new token's keys and values at position kv_len[b] - 1
      for (int64_t h = 0; h < Hkv; ++h) {
        const int64_t dst = h * hs[b] + int64_t(kv_len[b] - 1) * D, src = (b * Hkv + h) * D;
        std::memcpy(rows[b] + dst, kn + src, D * sizeof(float));
        std::memcpy(rows[B + b] + dst, vn + src, D * sizeof(float));
      }
    }
    a.krows = rows.data();
    a.vrows = rows.data() + B;
    a.row_hs = hs.data();
    a.kv_len = kv_len.data();
    flash_attention_f32(a);
  });
}

void DecodeAttentionRows::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMDecodeAttentionRows has no GPU implementation; run it on the cpu stream");
}

bool DecodeAttentionRows::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const DecodeAttentionRows*>(&other);
  return o != nullptr && o->scale_ == scale_ && o->lengths_ == lengths_;
}

std::vector<mx::Shape> DecodeAttentionRows::output_shapes(const std::vector<mx::array>& inputs) {
  return {mx::Shape{inputs[0].shape(0), 1, inputs[0].shape(1), inputs[0].shape(3)}};
}

// ---- rms_norm

mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s) {
  if (x.ndim() != 2) throw std::invalid_argument("rms_norm: x must be 2-D (M, D), got " + shape_str(x));
  if (w.ndim() != 1 || w.shape(0) != x.shape(1)) {
    throw std::invalid_argument("rms_norm: w must be (D,) = (" + std::to_string(x.shape(1)) + ",), got " +
                                shape_str(w));
  }
  if (x.dtype() != mx::float32 || w.dtype() != mx::float32) {
    throw std::invalid_argument("rms_norm: x and w must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<RMSNorm>(st, eps),
                   {mx::contiguous(x, false, st), mx::contiguous(w, false, st)});
}

void RMSNorm::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  auto& enc = begin_eval(stream(), inputs, out);
  const float* xp = inputs[0].data<float>();
  const float* wp = inputs[1].data<float>();
  float* yp = out.data<float>();
  const int64_t M = inputs[0].shape(0), D = inputs[0].shape(1);
  const float eps = eps_;
  enc.dispatch([=]() {
    const RmsRowFn row = fused_table(0).rms;
    const int64_t rows = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));  // ~64 KB per task
    const int64_t n_tasks = (M + rows - 1) / rows;
    ThreadPool::global().parallel_for(
        n_tasks,
        [&](int64_t t) {
          for (int64_t r = t * rows; r < std::min(M, (t + 1) * rows); ++r) row(xp + r * D, wp, yp + r * D, D, eps);
        },
        n_tasks < 2 ? 1 : 0);
  });
}

void RMSNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMRMSNorm has no GPU implementation; run it on the cpu stream");
}

bool RMSNorm::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const RMSNorm*>(&other);
  return o != nullptr && o->eps_ == eps_;
}

std::vector<mx::Shape> RMSNorm::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

// ---- swiglu

mx::array swiglu(const mx::array& gate, const mx::array& up, mx::StreamOrDevice s) {
  if (gate.shape() != up.shape()) {
    throw std::invalid_argument("swiglu: gate " + shape_str(gate) + " and up " + shape_str(up) +
                                " must have one shape");
  }
  if (gate.dtype() != mx::float32 || up.dtype() != mx::float32) {
    throw std::invalid_argument("swiglu: gate and up must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  return mx::array(gate.shape(), mx::float32, std::make_shared<SwiGLU>(st),
                   {mx::contiguous(gate, false, st), mx::contiguous(up, false, st)});
}

void SwiGLU::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  auto& enc = begin_eval(stream(), inputs, out);
  const float* gp = inputs[0].data<float>();
  const float* up = inputs[1].data<float>();
  float* yp = out.data<float>();
  const int64_t n = inputs[0].size();
  enc.dispatch([=]() {
    const SwigluFn fn = fused_table(0).swiglu;
    constexpr int64_t chunk = 16384;  // 64 KB of output per task
    const int64_t n_tasks = (n + chunk - 1) / chunk;
    ThreadPool::global().parallel_for(
        n_tasks,
        [&](int64_t t) {
          const int64_t i0 = t * chunk;
          fn(gp + i0, up + i0, yp + i0, std::min(chunk, n - i0));
        },
        n_tasks < 2 ? 1 : 0);
  });
}

void SwiGLU::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMSwiGLU has no GPU implementation; run it on the cpu stream");
}

bool SwiGLU::is_equivalent(const mx::Primitive& other) const {
  return dynamic_cast<const SwiGLU*>(&other) != nullptr;
}

std::vector<mx::Shape> SwiGLU::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

// ---- rope

mx::array rope(const mx::array& x, const mx::array& inv_freq, int offset, const std::optional<mx::array>& offsets,
               bool traditional, mx::StreamOrDevice s) {
  if (x.ndim() != 4) throw std::invalid_argument("rope: x must be 4-D (B, L, H, D), got " + shape_str(x));
  const int D = x.shape(3);
  if (D % 2) throw std::invalid_argument("rope: the head dimension must be even, got " + std::to_string(D));
  if (inv_freq.ndim() != 1 || inv_freq.shape(0) != D / 2) {
    throw std::invalid_argument("rope: inv_freq must be (D/2,) = (" + std::to_string(D / 2) + ",), got " +
                                shape_str(inv_freq));
  }
  if (x.dtype() != mx::float32 || inv_freq.dtype() != mx::float32) {
    throw std::invalid_argument("rope: x and inv_freq must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, st), mx::contiguous(inv_freq, false, st)};
  if (offsets) {
    if (offsets->ndim() != 1 || offsets->shape(0) != x.shape(0)) {
      throw std::invalid_argument("rope: offsets must be (B,) = (" + std::to_string(x.shape(0)) + ",), got " +
                                  shape_str(*offsets));
    }
    inputs.push_back(mx::contiguous(mx::astype(*offsets, mx::int32, st), false, st));
  }
  return mx::array(mx::Shape{x.shape(0), x.shape(2), x.shape(1), D}, mx::float32,
                   std::make_shared<RoPE>(st, offset, offsets.has_value(), traditional), std::move(inputs));
}

void RoPE::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  auto& enc = begin_eval(stream(), inputs, out);
  const float* xp = inputs[0].data<float>();
  const float* fp = inputs[1].data<float>();
  const int32_t* op = per_row_ ? inputs[2].data<int32_t>() : nullptr;
  float* yp = out.data<float>();
  const int64_t B = inputs[0].shape(0), L = inputs[0].shape(1), H = inputs[0].shape(2), D = inputs[0].shape(3);
  const int64_t offset = offset_;
  const bool traditional = traditional_;
  enc.dispatch([=]() {
    const int64_t half = D / 2;
    // One task per (b, l): its angles once, then every head; ~64 KB of output per task at least.
    // Plain loops, the same for every ISA (set_isa does not switch them).
    const int64_t per = std::max<int64_t>(1, 16384 / std::max<int64_t>(H * D, 1));
    const int64_t n_tasks = (B * L + per - 1) / per;
    ThreadPool::global().parallel_for(
        n_tasks,
        [&](int64_t t) {
          std::vector<float> c(half), sn(half);
          for (int64_t bl = t * per; bl < std::min(B * L, (t + 1) * per); ++bl) {
            const int64_t b = bl / L, l = bl % L;
            const float pos = static_cast<float>((op ? op[b] : offset) + l);
            for (int64_t i = 0; i < half; ++i) {
              const float a = pos * fp[i];
              c[i] = std::cos(a);
              sn[i] = std::sin(a);
            }
            for (int64_t h = 0; h < H; ++h) {
              const float* x = xp + ((b * L + l) * H + h) * D;
              float* y = yp + ((b * H + h) * L + l) * D;
              if (traditional) {  // pair i = (2i, 2i + 1)
                for (int64_t i = 0; i < half; ++i) {
                  const float x1 = x[2 * i], x2 = x[2 * i + 1];
                  y[2 * i] = x1 * c[i] - x2 * sn[i];
                  y[2 * i + 1] = x2 * c[i] + x1 * sn[i];
                }
              } else {  // pair i = (i, i + D/2)
                for (int64_t i = 0; i < half; ++i) {
                  const float x1 = x[i], x2 = x[i + half];
                  y[i] = x1 * c[i] - x2 * sn[i];
                  y[i + half] = x2 * c[i] + x1 * sn[i];
                }
              }
            }
          }
        },
        n_tasks < 2 ? 1 : 0);
  });
}

void RoPE::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMRoPE has no GPU implementation; run it on the cpu stream");
}

bool RoPE::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const RoPE*>(&other);
  return o != nullptr && o->offset_ == offset_ && o->per_row_ == per_row_ && o->traditional_ == traditional_;
}

std::vector<mx::Shape> RoPE::output_shapes(const std::vector<mx::array>& inputs) {
  const auto& x = inputs[0];
  return {mx::Shape{x.shape(0), x.shape(2), x.shape(1), x.shape(3)}};
}

}  // namespace tiny_llm

// kernel_table.h — what one instruction set provides to the drivers (internal to the extension).
//
// linear.cpp compiles linear_kernels.inc and quant_kernels.inc once per ISA (avx512, avx2, generic)
// and fills one KernelTable per ISA; the drivers in linear.cpp and quant.cpp only talk to
// `active_kernels()`, the table chosen at run time (or forced by set_isa for tests).
#pragma once

#include <cstdint>
#include <cstring>

namespace tiny_llm {

struct GemmArgs {
  const float* xT;        // packed x: per M-block, (K, MR) k-major
  const float* w;         // (N, K)
  const float* b;         // (N,) or nullptr
  float* y;               // (M, N)
  int64_t M, N, K;
  int64_t n_big_blocks;   // M-blocks of MR_BIG rows, then at most one block of MR_SMALL rows
  int64_t small_rows;     // rows in the small block (0 = none)
  int64_t cols_per_task;  // output columns per task (a multiple of NR_SMALL)
};

// Quantized weight formats (see kernels/quant.py for the layouts).
//   Q8_0:    q int8 (N, K), scales fp16 (N, K/32): w = d * q per block of 32.
//   AFFINE4: q uint32 (N, K/8) = mlx.quantize layout (value i of a word at bits 4i..4i+3, so byte j
//            of a row holds values 2j (low nibble) and 2j+1 (high nibble)), scales and biases (N, K/64)
//            both fp16 or both float32: w = scale * q + bias per group of 64.
//   Q5_0:    GGML's Q5_0 blocks split into three arrays: qs uint8 (N, K/2) (byte j of a block holds
//            value j in its low nibble and value j + 16 in its high nibble), qh uint32 (N, K/32) (bit
//            i = the fifth bit of value i), scales fp16 (N, K/32): w = d * ((nibble | bit << 4) - 16).
//   Q8_0_X16, Q5_0_X16: the same blocks repacked into panels of 16 rows, one uint8 array (kernels/quant.py,
//            q8_0x16 / q5_0x16): per block (Q8_0) or pair of blocks (Q5_0), the 16 rows' bytes in the order
//            vpdpbusd reads them, then their scales. Only the int8 GEMM (AVX-512 VNNI) reads them.
enum class QFormat : int { Q8_0 = 0, AFFINE4 = 1, Q5_0 = 2, Q8_0_X16 = 3, Q5_0_X16 = 4 };
constexpr int64_t kQ8Block = 32;
constexpr int64_t kA4Group = 64;
constexpr int64_t kPanelRows = 16;
constexpr int64_t kQ8PanelUnit = 544;  // Q8_0_X16: bytes per block of a panel (8 x 64 + 16 fp16 scales)
constexpr int64_t kQ5PanelUnit = 704;  // Q5_0_X16: bytes per pair of blocks (2 x 256 + 2 x 64 masks + 32 scales)

inline bool is_panel(QFormat f) { return f == QFormat::Q8_0_X16 || f == QFormat::Q5_0_X16; }
// The row format a panel format repacks (the format itself otherwise).
inline QFormat row_format(QFormat f) {
  return f == QFormat::Q8_0_X16 ? QFormat::Q8_0 : f == QFormat::Q5_0_X16 ? QFormat::Q5_0 : f;
}
// Bytes of one panel (16 rows x K) of a panel format.
inline int64_t panel_bytes(QFormat f, int64_t K) {
  return f == QFormat::Q8_0_X16 ? (K / kQ8Block) * kQ8PanelUnit : (K / (2 * kQ8Block)) * kQ5PanelUnit;
}

// Bytes one weight row of K values takes in format f, every array of the format counted (AFFINE4 with
// fp16 scales and biases; float32 ones add 4 bytes per group of 64, which only moves the task sizes and
// prefetch distances this sets a little).
inline int64_t packed_row_bytes(QFormat f, int64_t K) {
  f = row_format(f);
  if (f == QFormat::Q8_0) return K + 2 * (K / kQ8Block);
  if (f == QFormat::Q5_0) return K / 2 + 6 * (K / kQ8Block);
  return K / 2 + 4 * (K / kA4Group);
}

// Arguments of the quantized GEMV kernels (M < 8: decode).
struct QGemvArgs {
  const float* x;          // (M, K) (Q8_0 GEMM: already rounded to Q8_0 blocks); for AFFINE4 permuted per group: 32 even k, then 32 odd k
  const float* xsum;       // AFFINE4: (M, K/64) sums of x per group (the bias term); else null
  const uint8_t* q;        // packed weights, row-major, K/32*32 (Q8_0) or K/2 (AFFINE4) bytes a row
  const uint16_t* scales;  // fp16 bits; null for AFFINE4 with float32 scales
  const uint16_t* biases;  // fp16 bits (AFFINE4) or null
  const float* b;          // (N,) or null
  float* y;                // (M, N)
  int64_t M, N, K;
  // AFFINE4 with float32 scales and biases (then scales and biases above are null), (N, K/64) each: read
  // as stored, never through half.
  const float* scales_f32 = nullptr;
  const float* biases_f32 = nullptr;
  const int8_t* xq = nullptr;    // Q8_0, Q5_0: x rounded to int8 per block of 32, (M, K)
  const float* dx = nullptr;     // Q8_0, Q5_0: the scale of each of those blocks, (M, K/32)
  const float* xqsum = nullptr;  // Q5_0: sum of each block of xq, (M, K/32)
  const uint32_t* qh = nullptr;  // Q5_0: fifth bits, (N, K/32)
  // Q5_0: xq permuted per pair of blocks (b, b + 1), b even: values 0..15 of b, 0..15 of b + 1, 16..31 of
  // b, 16..31 of b + 1 (an odd last block stays as it is), (M, K).
  const int8_t* xq2 = nullptr;
};

// The int8 GEMM keeps x in tiles of this many rows (fewer when M is smaller), block-major inside a tile
// (qgemm_vnni.inc: xtile_index); its buffers hold ceil(M / R) * R rows.
constexpr int64_t kXTileRows = 8;
inline int64_t xtile_rows(int64_t M) { return M < kXTileRows ? M : kXTileRows; }

// Arguments of the int8 GEMM (Q8_0 / Q5_0 weights, x rounded to Q8_0 blocks; qgemm_vnni.inc).
struct QGemmArgs {
  QFormat f;               // Q8_0, Q5_0, Q8_0_X16 or Q5_0_X16
  const uint8_t* q;        // as in QGemvArgs; the panels of a panel format (then scales and qh are null)
  const uint16_t* scales;  // fp16 bits, (N, K/32)
  const uint32_t* qh;      // Q5_0: fifth bits, (N, K/32); else null
  const float* b;          // (N,) or null
  float* y;                // (M, N)
  int64_t M, N, K;
  const int8_t* xa;        // x rounded to int8 per block of 32, in tiles of min(M, 8) rows (qgemm_vnni.inc: xtile_index)
  const float* dx;         // scales of x's blocks, same layout
  const int32_t* xcorr;    // -128 (Q8_0) or -16 (Q5_0) times the block sums of xa (x16: the same), same layout
};

struct KernelTable {
  const char* name;
  int mr_big, mr_small, nr_small;
  void (*pack)(const float* x, int64_t M, int64_t K, int64_t n_big_blocks, float* xT, int64_t blk);
  void (*gemm)(const GemmArgs& g, int64_t task);
  void (*skinny)(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t K,
                 int64_t mrows, int64_t n_begin, int64_t n_end);
  // All M-blocks of y, columns [c0, c1), with the weight rows of those columns given as a dense
  // (c1 - c0, K) float panel starting at row c0 (the quantized GEMM dequantizes into it).
  void (*gemm_cols)(const GemmArgs& g, int64_t c0, int64_t c1, const float* w_c0);
  // Rows [m0, m0 + mrows) (mrows <= 4) of y, columns [n_begin, n_end).
  void (*q8_gemv)(const QGemvArgs& a, int64_t m0, int64_t mrows, int64_t n_begin, int64_t n_end);
  void (*a4_gemv)(const QGemvArgs& a, int64_t m0, int64_t mrows, int64_t n_begin, int64_t n_end);
  void (*q5_gemv)(const QGemvArgs& a, int64_t m0, int64_t mrows, int64_t n_begin, int64_t n_end);
  // Dequantize weight rows [r0, r1) into dst ((r1 - r0), K) float32; AFFINE4 rows come out in the
  // permuted order (per group: 32 even k, then 32 odd k), matching the permuted x.
  void (*dequant_rows)(QFormat f, const QGemvArgs& a, int64_t r0, int64_t r1, float* dst);
  // Int8 GEMM, all rows of x, weight rows [n_begin, n_end) (n_begin a multiple of 16); null where the
  // ISA has none (then the GEMV and the dequantize + float GEMM paths serve every M).
  void (*q_gemm)(const QGemmArgs& a, int64_t n_begin, int64_t n_end);
  // x's rows [m0, m1) rounded to Q8_0 blocks in q_gemm's layout (QGemmArgs::xa, dx, xcorr); null with q_gemm.
  void (*q_gemm_prepare_x)(QFormat f, const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, int8_t* xa,
                           float* dx, int32_t* xcorr);
};

// The kernels of the ISA in use (best supported, or the one forced by set_isa).
const KernelTable& active_kernels();

// IEEE half -> float, portable (normals, subnormals, zero, inf/nan).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3FFu;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace tiny_llm

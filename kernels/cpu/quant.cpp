// quant.cpp — driver, op and Primitive for quantized_linear (kernels in quant_kernels.inc).
//
// Rules it keeps:
//  * Q8_0 and Q5_0 round x to Q8_0 blocks first (integer dot products per block, as llama.cpp does); both
//    paths below see the same rounded x.
//  * M < 16 (decode, batched decode): GEMV tasks over ranges of weight rows, each row read once per <= 4 rows of x.
//  * M >= 16 (prefill): each task dequantizes its weight rows into a float32 panel (L2-sized) and
//    runs the float32 GEMM micro-kernel on it, so the dequantization is paid once per M rows.
//  * AFFINE4 permutes x per group of 64 (even k, then odd k) once per call, matching the nibble
//    order of the packed weights; the dot product is the same sum in another order.
//  * batch_invariant: one path for every M (the int8 GEMM where the ISA has one, else the GEMV), so a
//    row's result never depends on the other rows (the engine's batch-invariant mode).
//  * All threading goes through tiny_llm::ThreadPool (blocking, never spinning).
#include "quant.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "threadpool.h"

namespace tiny_llm {

// Integer GEMV below this many rows of x, dequantize + float GEMM from there (env TINY_LLM_QGEMV_ROWS).
static int64_t qgemv_max_rows() {
  static const int64_t v = [] {
    const char* env = std::getenv("TINY_LLM_QGEMV_ROWS");
    return env ? std::max<int64_t>(1, std::atoll(env)) : int64_t{16};
  }();
  return v;
}
// Int8 GEMM (where the ISA has one: AVX-512 VNNI) from this many rows of x (env TINY_LLM_QGEMM_ROWS;
// 0 turns it off, leaving the GEMV + dequantize/float GEMM paths).
static int64_t qgemm_min_rows() {
  static const int64_t v = [] {
    const char* env = std::getenv("TINY_LLM_QGEMM_ROWS");
    return env ? std::max<int64_t>(0, std::atoll(env)) : int64_t{3};
  }();
  return v;
}
static constexpr double kQMinParallelFlops = 2.0e5;

// Q8_0 activations, as ggml's quantize_row_q8_0 (but scales kept in float32): per block of 32,
// d = max|x| / 127, q = round-half-away(x / d) (as x * (1/d)), so x ~ d * q. kernels/ref.py does the
// same in plain mx ops. `xr`, if not null, receives d * q (the rounded x, for the GEMM path).
// `xs`, if not null, receives each block's sum of q (Q5_0's offset term).
static void quantize_x_q8(const float* x, int64_t M, int64_t K, int8_t* xq, float* dx, float* xr, float* xs) {
  const int64_t nb = K / kQ8Block;
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* src = x + i * kQ8Block;
    float amax = 0.0f;
    for (int64_t j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    dx[i] = d;
    int32_t sum = 0;
    for (int64_t j = 0; j < kQ8Block; ++j) {
      const float v = std::min(127.0f, std::max(-127.0f, std::round(src[j] * id)));
      xq[i * kQ8Block + j] = static_cast<int8_t>(v);
      sum += static_cast<int32_t>(v);
      if (xr) xr[i * kQ8Block + j] = d * v;
    }
    if (xs) xs[i] = static_cast<float>(sum);
  }
}


// The int8 GEMM path: round x to Q8_0 blocks, lay it out for vpdpbusd (see qgemm_vnni.inc), then tasks
// over ranges of 16-row weight panels.
static void qgemm(const KernelTable& t, ThreadPool& pool, QFormat f, const float* x, const uint8_t* q,
                  const uint16_t* scales, const uint32_t* qh, const float* b, float* y, int64_t M, int64_t N,
                  int64_t K, int max_threads) {
  const int64_t nb = K / kQ8Block;
  thread_local std::vector<int8_t> xa_buf;
  thread_local std::vector<float> dx_buf;
  thread_local std::vector<int32_t> xc_buf;
  const int64_t R = xtile_rows(M), Mt = (M + R - 1) / R * R;  // x in tiles of R rows (kernel_table.h)
  if (static_cast<int64_t>(xa_buf.size()) < Mt * K) xa_buf.resize(Mt * K);
  if (static_cast<int64_t>(dx_buf.size()) < Mt * nb) dx_buf.resize(Mt * nb);
  if (static_cast<int64_t>(xc_buf.size()) < Mt * nb) xc_buf.resize(Mt * nb);
  QGemmArgs a{f, q, scales, qh, b, y, M, N, K, xa_buf.data(), dx_buf.data(), xc_buf.data()};
  {  // x's rows in chunks of 16 (a few MB at prefill sizes: worth both cores)
    const int64_t chunk = 16, n_chunks = (M + chunk - 1) / chunk;
    int8_t* xa = xa_buf.data();
    float* dx = dx_buf.data();
    int32_t* xc = xc_buf.data();
    pool.parallel_for(
        n_chunks,
        [&](int64_t c) { t.q_gemm_prepare_x(f, x, M, K, c * chunk, std::min(M, (c + 1) * chunk), xa, dx, xc); },
        M * K < 16384 ? 1 : max_threads);
  }
  // Tasks of whole 16-row panels: at most ~256 KB of packed panels each (they stay in L2 while x's row
  // tiles sweep them), and at least 4 tasks per thread where N allows.
  const int64_t threads = max_threads == 1 ? 1 : pool.size();
  const int64_t panels = (N + 15) / 16;
  const int64_t panel_bytes = nb * (512 + 64);
  int64_t per_task = std::max<int64_t>(1, (256 * 1024) / panel_bytes);
  per_task = std::max<int64_t>(1, std::min(per_task, (panels + 4 * threads - 1) / (4 * threads)));
  const int64_t n_tasks = (panels + per_task - 1) / per_task;
  pool.parallel_for(
      n_tasks,
      [&](int64_t task) {
        const int64_t n0 = task * per_task * 16;
        t.q_gemm(a, n0, std::min(N, n0 + per_task * 16));
      },
      max_threads);
}

void quantized_linear_f32(QFormat f, const float* x, const uint8_t* q, const uint16_t* scales,
                          const uint16_t* biases, const uint32_t* qh, const float* b, float* y, int64_t M,
                          int64_t N, int64_t K, const float* scales_f32, const float* biases_f32,
                          bool batch_invariant) {
  if (M <= 0 || N <= 0) return;
  const KernelTable& t = active_kernels();
  ThreadPool& pool = ThreadPool::global();
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int max_threads = flops < kQMinParallelFlops ? 1 : 0;
  const int64_t threads = max_threads == 1 ? 1 : pool.size();

  QGemvArgs a{x, nullptr, q, scales, biases, b, y, M, N, K};
  a.qh = qh;
  a.scales_f32 = scales_f32;
  a.biases_f32 = biases_f32;
  thread_local std::vector<float> xperm_buf, xsum_buf;
  if (f == QFormat::AFFINE4) {
    const int64_t ng = K / kA4Group;
    if (static_cast<int64_t>(xperm_buf.size()) < M * K) xperm_buf.resize(M * K);
    if (static_cast<int64_t>(xsum_buf.size()) < M * ng) xsum_buf.resize(M * ng);
    float* xp = xperm_buf.data();
    float* xs = xsum_buf.data();
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < ng; ++g) {
        const float* src = x + m * K + g * kA4Group;
        float* dst = xp + m * K + g * kA4Group;
        float s = 0.0f;
        for (int64_t j = 0; j < kA4Group / 2; ++j) {
          dst[j] = src[2 * j];
          dst[kA4Group / 2 + j] = src[2 * j + 1];
          s += src[2 * j] + src[2 * j + 1];
        }
        xs[m * ng + g] = s;
      }
    }
    a.x = xp;
    a.xsum = xs;
  }
  thread_local std::vector<int8_t> xq_buf;
  thread_local std::vector<float> dx_buf, xs_buf, xr_buf;
  if (is_panel(f)) {  // only the int8 GEMM reads the panel formats, at every M
    if (t.q_gemm == nullptr) {
      throw std::runtime_error(std::string("quantized_linear: the panel formats (q8_0x16, q5_0x16) need the AVX-512 VNNI "
                                           "kernels; the active ISA is ") + t.name + " (use q8_0 / q5_0)");
    }
    qgemm(t, pool, f, x, q, nullptr, nullptr, b, y, M, N, K, max_threads);
    return;
  }
  const bool int8 = f == QFormat::Q8_0 || f == QFormat::Q5_0;
  const bool has_i8gemm = int8 && t.q_gemm != nullptr;
  const bool i8gemm = has_i8gemm && (batch_invariant || (qgemm_min_rows() > 0 && M >= qgemm_min_rows()));
  const bool gemv = !i8gemm && (batch_invariant || M < qgemv_max_rows());
  if (i8gemm) {
    qgemm(t, pool, f, x, q, scales, qh, b, y, M, N, K, max_threads);
    return;
  }
  if (int8) {
    const int64_t nb = M * (K / kQ8Block);
    if (static_cast<int64_t>(xq_buf.size()) < M * K) xq_buf.resize(M * K);
    if (static_cast<int64_t>(dx_buf.size()) < nb) dx_buf.resize(nb);
    if (f == QFormat::Q5_0 && static_cast<int64_t>(xs_buf.size()) < nb) xs_buf.resize(nb);
    if (!gemv && static_cast<int64_t>(xr_buf.size()) < M * K) xr_buf.resize(M * K);
    float* xs = f == QFormat::Q5_0 ? xs_buf.data() : nullptr;  // only Q5_0's offset term needs the sums
    quantize_x_q8(x, M, K, xq_buf.data(), dx_buf.data(), gemv ? nullptr : xr_buf.data(), xs);
    a.xq = xq_buf.data();
    a.dx = dx_buf.data();
    a.xqsum = xs;
    if (f == QFormat::Q5_0 && gemv) {  // the pair layout the Q5_0 GEMV reads (see QGemvArgs::xq2)
      thread_local std::vector<int8_t> xq2_buf;
      if (static_cast<int64_t>(xq2_buf.size()) < M * K) xq2_buf.resize(M * K);
      const int64_t nb = K / kQ8Block, h = kQ8Block / 2;
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* src = xq_buf.data() + m * K;
        int8_t* dst = xq2_buf.data() + m * K;
        int64_t b = 0;
        for (; b + 1 < nb; b += 2) {
          const int8_t* s0 = src + b * kQ8Block;
          int8_t* d = dst + b * kQ8Block;
          std::memcpy(d, s0, h);                              // block b, values 0..15
          std::memcpy(d + h, s0 + kQ8Block, h);               // block b + 1, values 0..15
          std::memcpy(d + 2 * h, s0 + h, h);                  // block b, values 16..31
          std::memcpy(d + 3 * h, s0 + kQ8Block + h, h);       // block b + 1, values 16..31
        }
        if (b < nb) std::memcpy(dst + b * kQ8Block, src + b * kQ8Block, kQ8Block);
      }
      a.xq2 = xq2_buf.data();
    }
    if (!gemv) a.x = xr_buf.data();
  }

  if (gemv) {
    auto kernel = f == QFormat::Q8_0 ? t.q8_gemv : f == QFormat::Q5_0 ? t.q5_gemv : t.a4_gemv;
    // Tasks of ~32 KB of packed weight rows (multiple of 4 rows), enough to balance the threads.
    int64_t rows = std::max<int64_t>(4, (32 * 1024 / packed_row_bytes(f, K)) / 4 * 4);
    const int64_t balanced = ((N + 8 * threads - 1) / (8 * threads) + 3) / 4 * 4;
    rows = std::max<int64_t>(4, std::min(rows, balanced));
    const int64_t n_tasks = (N + rows - 1) / rows;
    pool.parallel_for(
        n_tasks,
        [&](int64_t task) {
          const int64_t n0 = task * rows;
          const int64_t n1 = std::min(N, n0 + rows);
          for (int64_t m0 = 0; m0 < M; m0 += 4) kernel(a, m0, std::min<int64_t>(4, M - m0), n0, n1);
        },
        max_threads);
    return;
  }

  // GEMM: pack (the possibly permuted) x, then tasks over column ranges with dequantized panels.
  int64_t n_big = M / t.mr_big;
  int64_t small_rows = M - n_big * t.mr_big;
  if (small_rows > t.mr_small) {
    ++n_big;
    small_rows = 0;
  }
  const int64_t n_blocks = n_big + (small_rows > 0 ? 1 : 0);
  const int64_t packed = (n_big * t.mr_big + (small_rows > 0 ? t.mr_small : 0)) * K;
  thread_local std::vector<float> xT_buf;
  if (static_cast<int64_t>(xT_buf.size()) < packed) xT_buf.resize(packed);
  float* xT = xT_buf.data();
  const float* xin = a.x;
  pool.parallel_for(
      n_blocks, [&](int64_t blk) { t.pack(xin, M, K, n_big, xT, blk); }, max_threads);

  const int64_t nr = t.nr_small;
  int64_t cols = std::max<int64_t>(nr, (256 * 1024 / (4 * K)) / nr * nr);
  const int64_t balanced = ((N + 4 * threads - 1) / (4 * threads) + nr - 1) / nr * nr;
  cols = std::max<int64_t>(nr, std::min(cols, balanced));
  GemmArgs g{xT, nullptr, b, y, M, N, K, n_big, small_rows, cols};
  const int64_t n_tasks = (N + cols - 1) / cols;
  pool.parallel_for(
      n_tasks,
      [&](int64_t task) {
        const int64_t c0 = task * cols;
        const int64_t c1 = std::min(N, c0 + cols);
        thread_local std::vector<float> panel;  // one per pool thread, reused
        if (static_cast<int64_t>(panel.size()) < (c1 - c0) * K) panel.resize((c1 - c0) * K);
        t.dequant_rows(f, a, c0, c1, panel.data());
        t.gemm_cols(g, c0, c1, panel.data());
      },
      max_threads);
}

// ------------------------------------------------------------------------------------------------
// Op and Primitive

static std::string shape_str(const mx::array& a) {
  std::string out = "(";
  for (size_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

static void expect_shape(const char* what, const mx::array& a, int64_t d0, int64_t d1) {
  if (a.ndim() != 2 || a.shape(0) != d0 || a.shape(1) != d1) {
    throw std::invalid_argument(std::string("quantized_linear: ") + what + " must have shape (" +
                                std::to_string(d0) + ", " + std::to_string(d1) + "), got " +
                                shape_str(a));
  }
}

mx::array quantized_linear(const mx::array& x, const mx::array& q, const std::optional<mx::array>& scales,
                           const std::optional<mx::array>& biases, const std::optional<mx::array>& b,
                           const std::string& format, const std::optional<mx::array>& high, bool batch_invariant,
                           mx::StreamOrDevice s) {
  QFormat f;
  if (format == "q8_0") {
    f = QFormat::Q8_0;
  } else if (format == "affine4") {
    f = QFormat::AFFINE4;
  } else if (format == "q5_0") {
    f = QFormat::Q5_0;
  } else if (format == "q8_0x16") {
    f = QFormat::Q8_0_X16;
  } else if (format == "q5_0x16") {
    f = QFormat::Q5_0_X16;
  } else {
    throw std::invalid_argument("quantized_linear: unknown format '" + format +
                                "' (q8_0, q5_0, affine4, q8_0x16, q5_0x16)");
  }
  if (x.ndim() != 2) throw std::invalid_argument("quantized_linear: x must be 2-D (M, K), got " + shape_str(x));
  if (x.dtype() != mx::float32) throw std::invalid_argument("quantized_linear: x must be float32");
  const int64_t K = x.shape(1);
  const int64_t block = f == QFormat::AFFINE4 || f == QFormat::Q5_0_X16 ? kA4Group : kQ8Block;
  if (K <= 0 || K % block != 0) {
    throw std::invalid_argument("quantized_linear: K = " + std::to_string(K) + " must be a positive multiple of " +
                                std::to_string(block) + " for " + format);
  }
  int64_t N;
  std::vector<const mx::array*> weights = {&q};  // the weight's arrays, in the order eval_cpu reads them
  if (is_panel(f)) {  // one uint8 array (N/16, units, unit bytes); nothing else
    const int64_t units = f == QFormat::Q8_0_X16 ? K / kQ8Block : K / (2 * kQ8Block);
    const int64_t unit = f == QFormat::Q8_0_X16 ? kQ8PanelUnit : kQ5PanelUnit;
    if (q.dtype() != mx::uint8 || q.ndim() != 3 || q.shape(0) <= 0 || q.shape(1) != units || q.shape(2) != unit) {
      throw std::invalid_argument("quantized_linear: " + format + " q must be uint8 (N/16, " + std::to_string(units) +
                                  ", " + std::to_string(unit) + "), got " + shape_str(q));
    }
    if (scales || biases || high) throw std::invalid_argument("quantized_linear: " + format + " takes q only");
    N = q.shape(0) * kPanelRows;
  } else {
    if (!scales) throw std::invalid_argument("quantized_linear: " + format + " needs scales");
    if (q.ndim() != 2) throw std::invalid_argument("quantized_linear: q must be 2-D, got " + shape_str(q));
    N = q.shape(0);
    if (f == QFormat::Q8_0) {
      if (q.dtype() != mx::int8) throw std::invalid_argument("quantized_linear: q8_0 q must be int8");
      expect_shape("q", q, N, K);
      if (biases) throw std::invalid_argument("quantized_linear: q8_0 takes no biases");
    } else if (f == QFormat::Q5_0) {
      if (q.dtype() != mx::uint8) throw std::invalid_argument("quantized_linear: q5_0 q must be uint8");
      expect_shape("q", q, N, K / 2);
      if (biases) throw std::invalid_argument("quantized_linear: q5_0 takes no biases");
      if (!high) throw std::invalid_argument("quantized_linear: q5_0 needs high (the fifth bits)");
      if (high->dtype() != mx::uint32) throw std::invalid_argument("quantized_linear: high must be uint32");
      expect_shape("high", *high, N, K / block);
    } else {
      if (q.dtype() != mx::uint32) throw std::invalid_argument("quantized_linear: affine4 q must be uint32");
      expect_shape("q", q, N, K / 8);
      if (!biases) throw std::invalid_argument("quantized_linear: affine4 needs biases");
      // float16 (the compact form) or float32 (mx.quantize's own output), read as stored either way
      if (scales->dtype() != mx::float16 && scales->dtype() != mx::float32) {
        throw std::invalid_argument("quantized_linear: affine4 scales must be float16 or float32");
      }
      if (biases->dtype() != scales->dtype()) {
        throw std::invalid_argument("quantized_linear: affine4 biases must have the scales' dtype");
      }
      expect_shape("biases", *biases, N, K / block);
    }
    if (f != QFormat::Q5_0 && high) throw std::invalid_argument("quantized_linear: only q5_0 takes high");
    if (f != QFormat::AFFINE4 && scales->dtype() != mx::float16) {
      throw std::invalid_argument("quantized_linear: scales must be float16");
    }
    expect_shape("scales", *scales, N, K / block);
    weights.push_back(&*scales);
    if (biases) weights.push_back(&*biases);
    if (high) weights.push_back(&*high);
  }
  if (b) {
    if (b->ndim() != 1 || b->shape(0) != N) {
      throw std::invalid_argument("quantized_linear: b must be (N,) = (" + std::to_string(N) + ",), got " +
                                  shape_str(*b));
    }
    if (b->dtype() != mx::float32) throw std::invalid_argument("quantized_linear: b must be float32");
  }
  const mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  std::vector<mx::array> inputs = {mx::contiguous(x, false, st)};
  for (const mx::array* w : weights) inputs.push_back(mx::contiguous(*w, false, st));
  if (b) inputs.push_back(mx::contiguous(*b, false, st));
  return mx::array(mx::Shape{x.shape(0), static_cast<int>(N)}, mx::float32,
                   std::make_shared<QuantizedLinear>(st, f, b.has_value(), batch_invariant), std::move(inputs));
}

void QuantizedLinear::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  for (const auto& a : inputs) {
    if (!a.flags().row_contiguous) {
      throw std::runtime_error("TinyLLMQuantizedLinear: input is not row-contiguous (op builder bug)");
    }
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  const bool a4 = format_ == QFormat::AFFINE4, q5 = format_ == QFormat::Q5_0, panel = is_panel(format_);
  const bool a4_f32 = a4 && inputs[2].dtype() == mx::float32;  // the op builder checked biases match
  const float* xp = inputs[0].data<float>();
  const uint8_t* qp = inputs[1].data<uint8_t>();
  const uint16_t* sp = panel || a4_f32 ? nullptr : inputs[2].data<uint16_t>();
  const uint16_t* bip = a4 && !a4_f32 ? inputs[3].data<uint16_t>() : nullptr;
  const float* sfp = a4_f32 ? inputs[2].data<float>() : nullptr;
  const float* bfp = a4_f32 ? inputs[3].data<float>() : nullptr;
  const uint32_t* qhp = q5 ? inputs[3].data<uint32_t>() : nullptr;
  const float* bp = has_bias_ ? inputs[panel ? 2 : (a4 || q5) ? 4 : 3].data<float>() : nullptr;
  float* yp = out.data<float>();
  const int64_t M = inputs[0].shape(0), K = inputs[0].shape(1), N = out.shape(1);
  const QFormat f = format_;
  const bool inv = batch_invariant_;
  enc.dispatch([=]() { quantized_linear_f32(f, xp, qp, sp, bip, qhp, bp, yp, M, N, K, sfp, bfp, inv); });
}

void QuantizedLinear::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("TinyLLMQuantizedLinear has no GPU implementation; run it on the cpu stream");
}

bool QuantizedLinear::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const QuantizedLinear*>(&other);
  return o != nullptr && o->format_ == format_ && o->has_bias_ == has_bias_ &&
         o->batch_invariant_ == batch_invariant_;
}

std::vector<mx::Shape> QuantizedLinear::output_shapes(const std::vector<mx::array>& inputs) {
  const int n = inputs[1].shape(0) * (is_panel(format_) ? static_cast<int>(kPanelRows) : 1);
  return {mx::Shape{inputs[0].shape(0), n}};
}

}  // namespace tiny_llm

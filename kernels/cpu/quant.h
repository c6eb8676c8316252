// quant.h — the `quantized_linear` op of the CPU extension: y = x @ dequantize(w).T (+ b).
//
// Rules it keeps:
//  * The op validates shapes and dtypes and throws std::invalid_argument (a Python ValueError)
//    before building the graph node; the Primitive only ever sees valid inputs.
//  * Activations and outputs are float32; the weights stay packed in memory (formats in
//    kernel_table.h and kernels/quant.py) and are dequantized in registers or into small panels.
//  * The Primitive runs on the CPU stream only; eval_gpu throws.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kernel_table.h"
#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace tiny_llm {

namespace mx = mlx::core;

// format: "q8_0" (q int8 (N, K), scales float16 (N, K/32), biases none) or
//         "affine4" (q uint32 (N, K/8), scales and biases (N, K/64), both float16 or both float32) or
//         "q5_0" (q uint8 (N, K/2), scales float16 (N, K/32), high uint32 (N, K/32)).
// x: (M, K) float32, b: (N,) float32 or none -> (M, N) float32.
//         "q8_0x16" / "q5_0x16" (q uint8 (N/16, K/32, 544) / (N/16, K/64, 704), nothing else; AVX-512 VNNI only).
mx::array quantized_linear(const mx::array& x, const mx::array& q, const std::optional<mx::array>& scales,
                           const std::optional<mx::array>& biases, const std::optional<mx::array>& b,
                           const std::string& format, const std::optional<mx::array>& high = std::nullopt,
                           bool batch_invariant = false, mx::StreamOrDevice s = {});

// Raw kernel on contiguous row-major buffers (see QGemvArgs for the layouts). AFFINE4 takes its scales
// and biases either as fp16 bits (scales, biases) or as float32 (scales_f32, biases_f32, the fp16
// pointers null). batch_invariant: one path for every M (the int8 GEMM where the ISA has one, else the
// integer GEMV), so a row of y is the same bits whatever other rows x holds; otherwise M picks the
// fastest path, and the GEMV and the dequantize + float GEMM round differently.
void quantized_linear_f32(QFormat f, const float* x, const uint8_t* q, const uint16_t* scales,
                          const uint16_t* biases, const uint32_t* qh, const float* b, float* y, int64_t M,
                          int64_t N, int64_t K, const float* scales_f32 = nullptr,
                          const float* biases_f32 = nullptr, bool batch_invariant = false);

class QuantizedLinear : public mx::Primitive {
 public:
  QuantizedLinear(mx::Stream stream, QFormat format, bool has_bias, bool batch_invariant)
      : mx::Primitive(stream), format_(format), has_bias_(has_bias), batch_invariant_(batch_invariant) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  const char* name() const override { return "TinyLLMQuantizedLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  QFormat format_;
  bool has_bias_;
  bool batch_invariant_;
};

}  // namespace tiny_llm

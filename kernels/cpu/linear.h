// linear.h — the float32 `linear` op of the CPU extension: y = x @ w.T (+ b).
//
// Rules it keeps:
//  * The op validates shapes and dtypes and throws std::invalid_argument (a Python ValueError)
//    before building the graph node; the Primitive itself only ever sees valid float32 inputs.
//  * The Primitive runs on the CPU stream only; eval_gpu throws.
//  * Inputs are made row-contiguous with mlx's `contiguous` op (free when they already are).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace tiny_llm {

namespace mx = mlx::core;

// x: (M, K) float32, w: (N, K) float32, b: (N,) float32 or none -> (M, N) float32.
// batch_invariant: the dot-product kernel for every M (else the GEMM from 8 rows, which rounds otherwise),
// so a row of y is the same bits whatever other rows x holds.
mx::array linear(const mx::array& x, const mx::array& w, const std::optional<mx::array>& b,
                 bool batch_invariant = false, mx::StreamOrDevice s = {});

// Raw kernel on contiguous row-major buffers: y (M, N) = x (M, K) · w (N, K)^T + b (N) (b may be null).
void linear_f32(const float* x, const float* w, const float* b, float* y, int64_t M, int64_t N,
                int64_t K, bool batch_invariant = false);

// Which instruction set the kernels dispatch to on this CPU: "avx512", "avx2" or "generic".
std::string cpu_isa();

// ISAs this CPU and build can run, best first, and a switch between them (tests cover each path).
std::vector<std::string> supported_isas();

// True when the active ISA reads the panel formats (q8_0x16, q5_0x16): it has the int8 GEMM.
bool panel_kernels();
void set_isa(const std::string& name);

// Threads the pool uses (hardware concurrency or TINY_LLM_THREADS).
int num_threads();

class Linear : public mx::Primitive {
 public:
  Linear(mx::Stream stream, bool has_bias, bool batch_invariant)
      : mx::Primitive(stream), has_bias_(has_bias), batch_invariant_(batch_invariant) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  const char* name() const override { return "TinyLLMLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  bool has_bias_;
  bool batch_invariant_;
};

}  // namespace tiny_llm

"""Elementary layers written with plain `mx` ops: softmax, SiLU, linear, embedding.

The readable path never calls `mlx.nn` or `mx.fast` (those serve as test references). `linear` is the one
hot op: it goes through `kernels.linear` (or `kernels.quantized_linear` when the weight is a
`kernels.QuantizedWeight`), whose reference backend is exactly `x @ w.T + b` in plain `mx` ops (after
dequantizing), and whose fast backends (the C++ CPU extension, Metal, CUDA) compute the same thing.
"""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    """Numerically stable softmax: subtract the row max before exp, so exp never overflows; computed in
    float32 (a half-precision sum of many terms overflows) and returned in x's dtype."""
    xf = x.astype(mx.float32)
    e = mx.exp(xf - mx.max(xf, axis=axis, keepdims=True))
    return (e / mx.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def silu(x: mx.array) -> mx.array:
    """SiLU (swish): x * sigmoid(x), written as x / (1 + exp(-x))."""
    return x / (1.0 + mx.exp(-x))


def linear(
    x: mx.array, w: mx.array | kernels.QuantizedWeight, b: mx.array | None = None, backend: str | None = None
) -> mx.array:
    """y = x @ w.T + b.  x: (..., K), w: (N, K) (PyTorch/HF layout), b: (N,) -> (..., N).

    w may be a kernels.QuantizedWeight (q8_0 / affine4): then the kernel dequantizes on the fly."""
    if isinstance(w, kernels.QuantizedWeight):
        return kernels.quantized_linear(x, w, b, backend=backend)
    return kernels.linear(x, w, b, backend=backend)


def embedding(ids: mx.array, table: mx.array) -> mx.array:
    """Row lookup: ids (B, L) int -> (B, L, D)."""
    return table[ids]

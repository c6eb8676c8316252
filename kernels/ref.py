"""Readable reference kernels: every op of `kernels/` written with plain `mx` ops.

Rules it keeps:
- One function per op, same signature and semantics as the public op, no validation (the public
  wrapper in `kernels/__init__.py` validates before dispatch).
- No tricks: these are the definitions the fast backends are tested against.
"""

from __future__ import annotations

import mlx.core as mx


def linear(x: mx.array, w: mx.array, b: mx.array | None = None) -> mx.array:
    """y = x @ w.T (+ b). x: (..., K), w: (N, K), b: (N,) or None -> (..., N)."""
    y = x @ w.T  # (..., N)
    if b is not None:
        y = y + b  # (..., N)
    return y


def quantized_linear(x: mx.array, qw, b: mx.array | None = None) -> mx.array:
    """y = x @ dequantize(qw).T (+ b): dequantize the whole matrix, then the float linear above.
    x: (..., K), qw: kernels.quant.QuantizedWeight of shape (N, K), b: (N,) or None -> (..., N)."""
    from kernels.quant import dequantize

    return linear(x, dequantize(qw), b)

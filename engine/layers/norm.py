"""RMSNorm as Qwen2 uses it: x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

from __future__ import annotations

import mlx.core as mx


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """x: (..., D), weight: (D,). Statistics in float32 even for half-precision inputs."""
    xf = x.astype(mx.float32)
    inv_rms = mx.rsqrt(mx.mean(xf * xf, axis=-1, keepdims=True) + eps)  # (..., 1)
    return (xf * inv_rms).astype(x.dtype) * weight


class RMSNorm:
    def __init__(self, weight: mx.array, eps: float) -> None:
        self.weight = weight
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return rms_norm(x, self.weight, self.eps)

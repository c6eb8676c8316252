"""RMSNorm as Qwen2 uses it: x / sqrt(mean(x^2) + eps) * weight, computed in float32.

`rms_norm` is the readable math. The `RMSNorm` layer runs it when its backend is "ref" and otherwise
calls `kernels.rms_norm` (one fused, multi-threaded pass on the cpu backend; the same math)."""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """x: (..., D), weight: (D,). Statistics in float32 even for half-precision inputs."""
    xf = x.astype(mx.float32)
    inv_rms = mx.rsqrt(mx.mean(xf * xf, axis=-1, keepdims=True) + eps)  # (..., 1)
    return (xf * inv_rms).astype(x.dtype) * weight


class RMSNorm:
    def __init__(self, weight: mx.array, eps: float, backend: str | None = "ref") -> None:
        """backend: "ref" = the readable `rms_norm` above; None or a name = `kernels.rms_norm`."""
        self.weight = weight
        self.eps = eps
        self.backend = backend

    def __call__(self, x: mx.array) -> mx.array:
        if self.backend == "ref":
            return rms_norm(x, self.weight, self.eps)
        return kernels.rms_norm(x, self.weight, self.eps, backend=self.backend)

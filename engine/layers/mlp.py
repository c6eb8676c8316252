"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x)), Qwen2's MLP (no biases).

With backend "ref" the product is the readable `silu(g) * u`; otherwise `kernels.swiglu` (one fused
pass, multi-threaded on the cpu backend)."""

from __future__ import annotations

import mlx.core as mx

import kernels
from engine.layers.basics import linear, silu


def swiglu_mlp(x: mx.array, w_gate: mx.array, w_up: mx.array, w_down: mx.array, backend: str | None = None) -> mx.array:
    """x: (..., D); w_gate, w_up: (F, D); w_down: (D, F) -> (..., D)."""
    g = linear(x, w_gate, backend=backend)  # (..., F)
    u = linear(x, w_up, backend=backend)  # (..., F)
    h = silu(g) * u if backend == "ref" else kernels.swiglu(g, u, backend=backend)  # (..., F)
    return linear(h, w_down, backend=backend)

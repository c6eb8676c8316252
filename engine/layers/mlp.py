"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x)), Qwen2's MLP (no biases).

`swiglu` is the gated product the model calls: the readable `silu(g) * u` on the "ref" backend, otherwise
`kernels.swiglu` (one fused pass, multi-threaded on the cpu backend). `swiglu_mlp` is the whole block
written out, as the course gives it."""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.layers.basics import linear, silu


def swiglu(gate: mx.array, up: mx.array, backend: str | None = None) -> mx.array:
    """silu(gate) * up, elementwise."""
    return silu(gate) * up if backend == "ref" else kernels.swiglu(gate, up, backend=backend)


def swiglu_mlp(x: mx.array, w_gate: mx.array, w_up: mx.array, w_down: mx.array, backend: str | None = None) -> mx.array:
    """x: (..., D); w_gate, w_up: (F, D); w_down: (D, F) -> (..., D)."""
    g = linear(x, w_gate, backend=backend)  # (..., F)
    u = linear(x, w_up, backend=backend)  # (..., F)
    return linear(swiglu(g, u, backend), w_down, backend=backend)

"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x)), Qwen2's MLP (no biases)."""

from __future__ import annotations

import mlx.core as mx

from engine.layers.basics import linear, silu


def swiglu_mlp(
    x: mx.array, w_gate: mx.array, w_up: mx.array, w_down: mx.array, backend: str | None = None
) -> mx.array:
    """x: (..., D); w_gate, w_up: (F, D); w_down: (D, F) -> (..., D)."""
    h = silu(linear(x, w_gate, backend=backend)) * linear(x, w_up, backend=backend)  # (..., F)
    return linear(h, w_down, backend=backend)

"""Rotary position embedding, the "rotate-half" (non-traditional) layout Qwen2 uses.

Dimension pairs are (i, i + D/2), not adjacent (2i, 2i+1). Pair i rotates by angle pos * base^(-2i/D).
Positions start at `offset`, which is how a KV cache continues a sequence; `offset` may also be one
integer per batch row (continuous batching puts sequences of different lengths in one batch).
"""

from __future__ import annotations

import mlx.core as mx


def rope_frequencies(dims: int, base: float) -> mx.array:
    """Inverse frequencies base^(-2i/D) for i in [0, D/2): (D/2,) float32."""
    return 1.0 / (base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims))


def rope_angles(positions: mx.array, inv_freq: mx.array) -> mx.array:
    """Angles pos * freq: positions (..., L) -> (..., L, D/2)."""
    return positions.astype(mx.float32)[..., None] * inv_freq


class RoPE:
    def __init__(self, dims: int, base: float) -> None:
        if dims % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {dims}")
        self.dims = dims
        self.base = base
        self.inv_freq = rope_frequencies(dims, base)  # (D/2,)

    def positions(self, length: int, offset: int | mx.array) -> mx.array:
        """(L,) for an int offset, (B, L) for per-row offsets of shape (B,)."""
        steps = mx.arange(length)
        if isinstance(offset, int):
            return steps + offset
        return offset[:, None] + steps[None, :]

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        """x: (B, H, L, D) -> rotated (B, H, L, D)."""
        L, D = x.shape[-2], x.shape[-1]
        ang = rope_angles(self.positions(L, offset), self.inv_freq)  # (L, D/2) or (B, L, D/2)
        if ang.ndim == 3:
            ang = ang[:, None]  # (B, 1, L, D/2): broadcast over heads
        cos, sin = mx.cos(ang), mx.sin(ang)
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        rotated = mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        return rotated.astype(x.dtype)

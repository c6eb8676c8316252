"""Rotary position embedding: Qwen2's "rotate-half" layout, and the "traditional" (interleaved) one.

Pair i rotates by angle pos * base^(-2i/D). Rotate-half (Qwen2, Llama 2+, mlx's `traditional=False`) pairs
dimensions (i, i + D/2); traditional (RoFormer, Llama 1, `traditional=True`) pairs adjacent ones
(2i, 2i + 1). Positions start at `offset`, which is how a KV cache continues a sequence; `offset` may also
be one integer per batch row (continuous batching puts sequences of different lengths in one batch).

`RoPE.__call__` is the readable math on (B, H, L, D). `RoPE.rotate` is what the model calls on a
projection's (B, L, H, D) output: the readable math after a transpose on the "ref" backend, otherwise
`kernels.rope`, the same rotation fused with that transpose.
"""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels


def rope_frequencies(dims: int, base: float) -> mx.array:
    """Inverse frequencies base^(-2i/D) for i in [0, D/2): (D/2,) float32."""
    return 1.0 / (base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims))


def rope_angles(positions: mx.array, inv_freq: mx.array) -> mx.array:
    """Angles pos * freq: positions (..., L) -> (..., L, D/2)."""
    return positions.astype(mx.float32)[..., None] * inv_freq


class RoPE:
    def __init__(self, dims: int, base: float, *, traditional: bool = False, backend: str | None = "ref") -> None:
        """backend: kernel backend of `rotate` ("ref" = the readable math, None = fastest available)."""
        if dims % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {dims}")
        self.dims = dims
        self.base = base
        self.traditional = traditional
        self.backend = backend
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
        if self.traditional:  # pairs (2i, 2i + 1), interleaved back in place
            x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., D/2) each
            rotated = mx.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)
        else:  # pairs (i, i + D/2)
            x1, x2 = x[..., : D // 2], x[..., D // 2 :]
            rotated = mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        return rotated.astype(x.dtype)

    def rotate(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        """A projection's heads x (B, L, H, D) -> rotated, in attention layout (B, H, L, D)."""
        if self.backend == "ref":
            return self(x.transpose(0, 2, 1, 3), offset)
        # The rotation and the transpose in one pass, angles computed once per position.
        return kernels.rope(x, self.inv_freq, offset, traditional=self.traditional, backend=self.backend)

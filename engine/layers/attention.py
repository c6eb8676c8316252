"""Scaled dot-product attention with a causal mask and grouped-query heads, in plain `mx` ops.

Multi-head attention is the case n_kv_heads == n_heads; grouped-query attention (GQA) lets G = H / H_kv
query heads share one K/V head. We never copy K/V G times: queries are reshaped to (B, H_kv, G, L, D)
and broadcast against (B, H_kv, 1, S, D).

Causality with a cache: query i sits at absolute position offset + i and may see keys 0..offset + i,
where offset = S - L is the number of cached tokens before this chunk.
"""

from __future__ import annotations

import math

import mlx.core as mx

from engine.layers.basics import softmax


def causal_mask(L: int, S: int) -> mx.array:
    """Boolean (L, S) mask, True where query i (at position S - L + i) may attend key j."""
    q_pos = mx.arange(S - L, S)[:, None]
    k_pos = mx.arange(S)[None, :]
    return k_pos <= q_pos


def _grouped_mask(mask: mx.array, H_kv: int, G: int) -> mx.array:
    """Reshape a mask broadcastable to (B, H, L, S) so it broadcasts against (B, H_kv, G, L, S)."""
    if mask.ndim <= 2:  # (L, S) broadcasts as is
        return mask
    if mask.ndim == 3:  # (B, L, S): one mask per batch row, shared by all heads
        return mask[:, None, None]
    b, h, L, S = mask.shape
    if h == 1:
        return mask[:, :, None]  # (B, 1, 1, L, S)
    return mask.reshape(b, H_kv, G, L, S)


def scaled_dot_product_attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float | None = None,
    mask: mx.array | str | None = None,
    return_probs: bool = False,
) -> mx.array | tuple[mx.array, mx.array]:
    """softmax(q k^T * scale + mask) v.

    q: (B, H, L, D); k, v: (B, H_kv, S, D) with H % H_kv == 0.
    mask: None, "causal", a boolean array (True = keep) or an additive float array, broadcastable to
    (B, H, L, S). Returns (B, H, L, D), and the probabilities (B, H, L, S) when return_probs.
    """
    B, H, L, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if H % H_kv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({H_kv})")
    G = H // H_kv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qg = q.reshape(B, H_kv, G, L, D)
    scores = (qg * scale) @ k[:, :, None].swapaxes(-1, -2)  # (B, H_kv, G, L, S)
    scores = scores.astype(mx.float32)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown mask {mask!r}")
        mask = causal_mask(L, S)
    if mask is not None:
        mask = _grouped_mask(mask, H_kv, G)
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, -mx.inf)
        else:
            scores = scores + mask
    probs = softmax(scores, axis=-1)  # (B, H_kv, G, L, S)
    out = probs.astype(v.dtype) @ v[:, :, None]  # (B, H_kv, G, L, D)
    out = out.reshape(B, H, L, D)
    if return_probs:
        return out, probs.reshape(B, H, L, S)
    return out

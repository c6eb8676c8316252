"""Scaled dot-product attention with a causal mask and grouped-query heads, in plain `mx` ops, and the
model's attention entry point (`attention`), which runs either this readable math or the fast kernel.

Multi-head attention is the case n_kv_heads == n_heads; grouped-query attention (GQA) lets G = H / H_kv
query heads share one K/V head. We never copy K/V G times: queries are reshaped to (B, H_kv, G, L, D)
and broadcast against (B, H_kv, 1, S, D).

Causality with a cache: query i sits at absolute position offset + i and may see keys 0..offset + i,
where offset = S - L is the number of cached tokens before this chunk.
"""

from __future__ import annotations

import math

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.layers.basics import softmax

Mask = mx.array | str | None  # None (every key), "causal", or a boolean (True = keep) / additive float array


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
    # Scores, softmax and the weighted sum in float32 whatever the inputs' dtype: half-precision products
    # and sums overflow past 65504.
    qg = q.reshape(B, H_kv, G, L, D).astype(mx.float32)
    scores = (qg * scale) @ k[:, :, None].astype(mx.float32).swapaxes(-1, -2)  # (B, H_kv, G, L, S)
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
    out = probs @ v[:, :, None].astype(mx.float32)  # (B, H_kv, G, L, D)
    out = out.reshape(B, H, L, D).astype(v.dtype)
    if return_probs:
        return out, probs.reshape(B, H, L, S)
    return out


def visibility_mask(L: int, S: int, kv_lengths: mx.array | None = None, causal: bool = True) -> mx.array | None:
    """Boolean mask, True where a query may see a key, for L queries over S keys per row.

    kv_lengths (B,): row b holds kv_lengths[b] valid keys (the rest is padding) and its L queries are the
    last L of those positions: query i sits at kv_lengths[b] - L + i. Without it every row has all S.
    Returns (L, S) for one shared length, (B, 1, L, S) per row, or None when every key is visible."""
    if kv_lengths is None:
        return causal_mask(L, S) if causal and L > 1 else None
    k_pos = mx.arange(S)[None, None, :]  # (1, 1, S)
    visible = k_pos < kv_lengths[:, None, None]  # (B, 1, S)
    if causal:
        q_pos = kv_lengths[:, None] - L + mx.arange(L)[None, :]  # (B, L)
        visible = visible & (k_pos <= q_pos[:, :, None])  # (B, L, S)
    return visible[:, None]  # (B, 1, L or 1, S): shared by all heads


def attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    *,
    scale: float,
    mask: Mask = "causal",
    kv_lengths: mx.array | None = None,
    backend: str | None = None,
) -> mx.array:
    """The model's attention: softmax(q k^T * scale + mask) v over the keys each query may see.

    q: (B, H, L, D); k, v: (B, H_kv, S, D). mask: "causal" (query i sits at position S - L + i, or at
    kv_lengths[b] - L + i), None (every key: non-causal) or a mask array broadcastable to (B, H, L, S).
    kv_lengths (B,): valid keys per row (right padding past them is ignored).
    backend "ref" runs the readable math above (the path the playground's views show); any other goes to
    `kernels.flash_attention` (same result, never builds the (L, S) score matrix on the cpu backend).
    """
    causal = isinstance(mask, str)
    if causal and mask != "causal":
        raise ValueError(f"unknown mask {mask!r}; use 'causal', None or a mask array")
    array_mask = None if causal else mask
    if backend == "ref":
        visible = visibility_mask(q.shape[2], k.shape[2], kv_lengths, causal)
        if array_mask is not None and visible is not None:
            if array_mask.dtype == mx.bool_:
                array_mask = array_mask & visible
            else:
                array_mask = mx.where(visible, array_mask.astype(mx.float32), -mx.inf)
        return scaled_dot_product_attention(q, k, v, scale=scale, mask=visible if array_mask is None else array_mask)
    return kernels.flash_attention(
        q, k, v, scale=scale, causal=causal, kv_lengths=kv_lengths, mask=array_mask, backend=backend
    )

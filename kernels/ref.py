"""Readable reference kernels: every op of `kernels/` written with plain `mx` ops.

Rules it keeps:
- One function per op, same signature and semantics as the public op, no validation (the public
  wrapper in `kernels/ops.py` validates before dispatch).
- No tricks: these are the definitions the fast backends are tested against.
"""

from __future__ import annotations

import mlx.core as mx


def linear(x: mx.array, w: mx.array, b: mx.array | None = None, batch_invariant: bool = False) -> mx.array:
    """y = x @ w.T (+ b). x: (..., K), w: (N, K), b: (N,) or None -> (..., N). One path for every M already
    (batch_invariant changes nothing here)."""
    y = x @ w.T  # (..., N)
    if b is not None:
        y = y + b  # (..., N)
    return y


def quantized_linear(x: mx.array, qw, b: mx.array | None = None, batch_invariant: bool = False) -> mx.array:
    """y = x @ dequantize(qw).T (+ b): dequantize the whole matrix, then the float linear above.
    x: (..., K), qw: kernels.quant.QuantizedWeight of shape (N, K), b: (N,) or None -> (..., N).
    For q8_0 and q5_0, x is first rounded to Q8_0 blocks (kernels.quant.round_activations_q8), as the kernels
    do: weight and activation blocks then meet in exact int32 dot products."""
    from tiny_llm_playground.kernels.quant import dequantize, round_activations_q8

    if qw.format in ("q8_0", "q5_0", "q8_0x16", "q5_0x16"):
        x = round_activations_q8(x)
    return linear(x, dequantize(qw), b)


def flash_attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    causal: bool = True,
    kv_lengths: mx.array | None = None,
    mask: mx.array | None = None,
) -> mx.array:
    """softmax(q k^T * scale + mask, over the visible keys) v, the plain way: the whole (L, S) score matrix.

    q: (B, H, L, D), k, v: (B, H_kv, S, D), H % H_kv == 0 (query head h reads kv head h // (H / H_kv));
    kv_lengths: (B,) ints in [0, S] or None (= S). Row b's query i sits at position
    kv_lengths[b] - L + i and sees keys j < kv_lengths[b], and only j <= its position when causal.
    mask: None, boolean (True = may see) or additive float (added to the scaled scores; -inf hides a
    key), broadcastable to (B, H, L, S) by numpy's rules. All rules apply at once: a key is visible when
    kv_lengths, causal and a boolean mask all allow it and an additive mask does not hold -inf there.
    A query that sees no key gets zeros. Scores, softmax and the weighted sum run in float32 whatever
    the inputs' dtype (float16 sums overflow past 65504); returns (B, H, L, D) in q's dtype.
    """
    B, H, L, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    G = H // H_kv
    lengths = mx.full((B,), S, dtype=mx.int32) if kv_lengths is None else mx.clip(kv_lengths, 0, S)
    key_pos = mx.arange(S)  # (S,)
    visible = key_pos[None, None, :] < lengths[:, None, None]  # (B, 1, S)
    if causal:
        q_pos = lengths[:, None] - L + mx.arange(L)[None, :]  # (B, L)
        visible = visible & (key_pos[None, None, :] <= q_pos[:, :, None])  # (B, L, S)
    visible = visible[:, None, None]  # (B, 1, 1, L or 1, S): shared by all heads
    qg = q.astype(mx.float32).reshape(B, H_kv, G, L, D)  # query heads grouped by the kv head they read
    kf, vf = k.astype(mx.float32), v.astype(mx.float32)
    scores = (qg * scale) @ kf[:, :, None].swapaxes(-1, -2)  # (B, H_kv, G, L, S)
    if mask is not None:
        m = mx.broadcast_to(mask, (B, H, L, S)).reshape(B, H_kv, G, L, S)  # query head h = (h // G, h % G)
        if m.dtype == mx.bool_:
            visible = visible & m
        else:
            scores = scores + m.astype(mx.float32)
    scores = mx.where(visible, scores, -mx.inf)
    row_max = mx.max(scores, axis=-1, keepdims=True)  # -inf where a query sees no key
    e = mx.exp(scores - mx.where(mx.isinf(row_max), 0.0, row_max))  # exp(-inf) = 0 for hidden keys
    denom = mx.sum(e, axis=-1, keepdims=True)
    probs = e / mx.where(denom > 0, denom, 1.0)  # rows with no visible key stay all-zero
    out = probs @ vf[:, :, None]  # (B, H_kv, G, L, D)
    return out.reshape(B, H, L, D).astype(q.dtype)


def decode_attention_rows(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    rows: list[tuple[mx.array, mx.array]],
    lengths: list[int],
    scale: float,
    after=(),
) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
    """One decode step for B rows with their own cache buffers, the plain way: write row b's new key and
    value at position lengths[b] of its buffers, pad every row's keys to the longest and run
    flash_attention with per-row lengths (statistics in float32). q: (B, H, 1, D); k, v: (B, H_kv, 1, D);
    rows[b]: (keys, values) buffers (1, H_kv, capacity, D). Returns (out (B, H, 1, D) in q's dtype, the
    updated buffers: new arrays, so `after` (the ordering in-place kernels need) is not needed here)."""
    S = max(lengths) + 1
    new_rows, ks, vs = [], [], []
    for b, ((kc, vc), n) in enumerate(zip(rows, lengths, strict=True)):
        kc = mx.concatenate([kc[:, :, :n], k[b : b + 1], kc[:, :, n + 1 :]], axis=2)
        vc = mx.concatenate([vc[:, :, :n], v[b : b + 1], vc[:, :, n + 1 :]], axis=2)
        new_rows.append((kc, vc))
        pad = [(0, 0), (0, 0), (0, S - n - 1), (0, 0)]
        ks.append(mx.pad(kc[:, :, : n + 1], pad))
        vs.append(mx.pad(vc[:, :, : n + 1], pad))
    kv_lengths = mx.array([n + 1 for n in lengths], dtype=mx.int32)
    out = flash_attention(q, mx.concatenate(ks), mx.concatenate(vs), scale, True, kv_lengths)
    return out, new_rows


def kv_pool(num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int) -> mx.array:
    """One layer's paged key (or value) storage, (num_blocks, block_size, H_kv, D) float32, zeros."""
    return mx.zeros((num_blocks, block_size, n_kv_heads, head_dim), dtype=mx.float32)


def _paged_slots(block_tables: mx.array, lengths: mx.array, L: int, block_size: int) -> tuple[mx.array, mx.array]:
    """Blocks and slots of each row's last L positions (lengths[b] - L .. lengths[b] - 1): two (B * L,)."""
    pos = lengths.astype(mx.int32)[:, None] - L + mx.arange(L, dtype=mx.int32)[None, :]  # (B, L)
    blocks = mx.take_along_axis(block_tables, pos // block_size, axis=1)  # (B, L)
    return blocks.reshape(-1), (pos % block_size).reshape(-1)


def paged_write(
    k: mx.array, v: mx.array, k_pool: mx.array, v_pool: mx.array, block_tables: mx.array, lengths: mx.array, after=()
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Store row b's L new keys/values (B, H_kv, L, D) at its positions lengths[b] - L + i, in the blocks
    its table names: block block_tables[b, pos // bs], slot pos % bs. Returns (a marker array, (k_pool,
    v_pool) updated: new arrays here, so `after` is not needed). An empty row (lengths[b] = 0, a free slot
    of the batch) stores nothing."""
    k_pool, v_pool = mx.array(k_pool), mx.array(v_pool)
    live = [b for b, n in enumerate(lengths.tolist()) if n > 0]
    if live:
        rows = mx.array(live, dtype=mx.int32)
        k, v, block_tables, lengths = k[rows], v[rows], block_tables[rows], lengths[rows]
        B, H_kv, L, D = k.shape
        blocks, slots = _paged_slots(block_tables, lengths, L, k_pool.shape[1])
        rows_k = k.transpose(0, 2, 1, 3).reshape(B * L, H_kv, D)  # (B * L, H_kv, D), row-major as (b, i)
        rows_v = v.transpose(0, 2, 1, 3).reshape(B * L, H_kv, D)
        k_pool[blocks, slots] = rows_k
        v_pool[blocks, slots] = rows_v
    return k_pool[:0, 0, 0, 0], (k_pool, v_pool)


def paged_attention(
    q: mx.array,
    k: mx.array | None,
    v: mx.array | None,
    k_pool: mx.array,
    v_pool: mx.array,
    block_tables: mx.array,
    lengths: mx.array,
    scale: float,
    causal: bool = True,
    after=(),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Attention through block tables, the plain way: store the new keys/values (when given, as
    `paged_write`), gather each row's lengths[b] keys from its blocks into one padded (B, H_kv, S, D)
    array, and run flash_attention with per-row lengths. q: (B, H, L, D), the last L positions of each
    row. Returns (out (B, H, L, D), (k_pool, v_pool))."""
    if k is not None:
        _, (k_pool, v_pool) = paged_write(k, v, k_pool, v_pool, block_tables, lengths)
    B = q.shape[0]
    bs = k_pool.shape[1]
    S = max(1, int(mx.max(lengths).item()) if B else 1)
    pos = mx.arange(S, dtype=mx.int32)  # (S,)
    blocks = mx.take(block_tables, pos // bs, axis=1)  # (B, S); -1 (padding) past each row's table
    blocks = mx.where(blocks < 0, 0, blocks)  # any real block: positions past lengths[b] are hidden
    keys = k_pool[blocks, pos % bs]  # (B, S, H_kv, D)
    values = v_pool[blocks, pos % bs]
    out = flash_attention(
        q, keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3), scale, causal, lengths.astype(mx.int32)
    )
    return out, (k_pool, v_pool)


def paged_copy_blocks(
    k_pool: mx.array, v_pool: mx.array, src: list[int], dst: list[int], after=()
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Copy whole blocks: block dst[i] becomes a copy of block src[i] (copy-on-write of a shared block).
    Returns (a marker array, (k_pool, v_pool) updated)."""
    k_pool, v_pool = mx.array(k_pool), mx.array(v_pool)
    if src:
        s, d = mx.array(src, dtype=mx.int32), mx.array(dst, dtype=mx.int32)
        k_pool[d] = k_pool[s]
        v_pool[d] = v_pool[s]
    return k_pool[:0, 0, 0, 0], (k_pool, v_pool)


def rms_norm(x: mx.array, w: mx.array, eps: float) -> mx.array:
    """x / sqrt(mean(x^2, last axis) + eps) * w. x: (..., D), w: (D,) -> (..., D).
    The statistics run in float32 (a float16 sum of squares overflows past 65504); the normalised x is
    cast back to x's dtype and then multiplied by w, as engine/layers/norm.py does."""
    xf = x.astype(mx.float32)
    inv_rms = mx.rsqrt(mx.mean(xf * xf, axis=-1, keepdims=True) + eps)  # (..., 1)
    return (xf * inv_rms).astype(x.dtype) * w


def rope(x: mx.array, inv_freq: mx.array, offset, traditional: bool = False) -> mx.array:
    """RoPE: x (B, L, H, D) -> (B, H, L, D); position of (b, l) = offset (or offset[b]) + l.
    Rotate-half (traditional=False, Qwen2's layout, as engine/layers/rope.py): pair (i, i + D/2) rotates
    by position * inv_freq[i]. Traditional (RoFormer / LLaMA-1): pair (2i, 2i + 1) rotates by the same
    angle."""
    B, L, _, D = x.shape
    steps = mx.arange(L)
    pos = (offset[:, None] + steps[None, :]) if isinstance(offset, mx.array) else (steps + offset)[None, :]
    ang = pos.astype(mx.float32)[:, None, :, None] * inv_freq  # (B or 1, 1, L, D/2)
    cos, sin = mx.cos(ang), mx.sin(ang)
    x = x.transpose(0, 2, 1, 3)  # (B, H, L, D)
    if traditional:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, D/2): the even and the odd members of each pair
        rot = mx.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B, H, L, D/2, 2)
        return rot.reshape(*x.shape).astype(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up with silu(x) = x / (1 + exp(-x)); elementwise, one shape."""
    return gate / (1.0 + mx.exp(-gate)) * up

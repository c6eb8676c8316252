"""The cpu backend: each op of kernels/ref.py, same name and arguments, run by the C++ extension.

Rules it keeps:
- Called only through kernels/registry.py after kernels/ops.py validated the inputs: these functions only
  reshape to what the extension takes and call it.
- float32 inputs only (`FLOAT32_ONLY`); the extension's ISA (AVX-512 / AVX2 / portable) is chosen at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mlx.core as mx

from tiny_llm_playground.kernels.cpu import BUILD_HINT, load, load_error
from tiny_llm_playground.kernels.quant import BLOCK, PANEL_ROWS, QuantizedWeight, repack

FLOAT32_ONLY = True
FIX_HINT = BUILD_HINT


def unavailable() -> str | None:
    """Why the extension cannot run here (not built, or failed to import), or None."""
    return load_error()


def reads_panels() -> bool:
    """True when the active ISA has the int8 GEMM that reads the panel formats (AVX-512 VNNI)."""
    ext = load()
    return ext is not None and bool(ext.panel_kernels())


def preferred_layout(qw: QuantizedWeight) -> QuantizedWeight:
    """q8_0 / q5_0 repacked into 16-row panels (`repack`) where the int8 GEMM reads them and the shape
    allows (N % 16 == 0, K % 64 == 0 for q5_0); anything else as it is."""
    if qw.format not in ("q8_0", "q5_0") or not reads_panels():
        return qw
    N, K = qw.shape
    if N % PANEL_ROWS or K % BLOCK[qw.format + "x16"]:
        return qw
    return repack(qw)


def linear(x: mx.array, w: mx.array, b: mx.array | None = None, batch_invariant: bool = False) -> mx.array:
    N, K = w.shape
    lead = x.shape[:-1]
    y = load().linear(x.reshape(math.prod(lead), K), w, b, batch_invariant)  # (M, N)
    return y.reshape(*lead, N)  # (..., N)


def quantized_linear(x: mx.array, qw, b: mx.array | None = None, batch_invariant: bool = False) -> mx.array:
    N, K = qw.shape
    lead = x.shape[:-1]
    ext = load()
    y = ext.quantized_linear(x.reshape(math.prod(lead), K), qw.q, qw.scales, qw.biases, b, qw.format, qw.high,
                             batch_invariant)  # fmt: skip
    return y.reshape(*lead, N)  # (..., N)


def flash_attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    causal: bool = True,
    kv_lengths: mx.array | None = None,
    mask: mx.array | None = None,
) -> mx.array:
    if mask is not None:
        # The kernel takes one kind, float32 additive, at the full (B, H, L, S) shape: a boolean mask
        # becomes 0 / -inf at its own (small) shape, then broadcast_to makes a view with stride 0 on the
        # broadcast axes, which the kernel reads through its strides (never a (B, H, L, S) copy).
        add = mx.where(mask, 0.0, -mx.inf) if mask.dtype == mx.bool_ else mask.astype(mx.float32)
        mask = mx.broadcast_to(add, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    return load().flash_attention(q, k, v, scale, causal, kv_lengths, mask)


def decode_attention_rows(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    rows: list[tuple[mx.array, mx.array]],
    lengths: list[int],
    scale: float,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
    # The kernel writes each row's new key/value into the given buffers in place and returns only `out`.
    out = load().decode_attention_rows(q, k, v, [a for r in rows for a in r], list(lengths), scale, list(after))
    return out, list(rows)


def rms_norm(x: mx.array, w: mx.array, eps: float) -> mx.array:
    D = x.shape[-1]
    return load().rms_norm(x.reshape(-1, D), w, float(eps)).reshape(x.shape)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    return load().swiglu(gate, up)


def rope(x: mx.array, inv_freq: mx.array, offset: int | mx.array = 0, traditional: bool = False) -> mx.array:
    if isinstance(offset, mx.array):
        return load().rope(x, inv_freq, 0, offset, traditional)
    return load().rope(x, inv_freq, offset, None, traditional)


# ----- paged KV cache: the extension writes the pools in place and returns only its own output -----


def kv_pool(num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int) -> mx.array:
    # Uninitialized: evaluating it only allocates, so pages are taken as blocks are first written.
    return load().kv_pool(num_blocks, block_size, n_kv_heads, head_dim)


def paged_write(
    k: mx.array,
    v: mx.array,
    k_pool: mx.array,
    v_pool: mx.array,
    block_tables: mx.array,
    lengths: mx.array,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    done = load().paged_write(k, v, k_pool, v_pool, block_tables, lengths, list(after))
    return done, (k_pool, v_pool)  # the same pools: written in place once `done` is evaluated


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
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    out = load().paged_attention(q, k, v, k_pool, v_pool, block_tables, lengths, scale, causal, list(after))
    return out, (k_pool, v_pool)


def paged_copy_blocks(
    k_pool: mx.array, v_pool: mx.array, src: list[int], dst: list[int], after: Sequence[mx.array] = ()
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    done = load().paged_copy_blocks(k_pool, v_pool, list(src), list(dst), list(after))
    return done, (k_pool, v_pool)

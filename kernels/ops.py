"""The kernel ops: one validated Python function per hot op; kernels/registry.py picks who runs it.

Each public op validates shapes and dtypes and raises ValueError before dispatching anywhere, then runs
the implementation `registry.select` returns: the backend asked for, or (backend=None) the fastest one
that can run the call here. The implementations (kernels/ref.py, kernels/cpu/ops.py, kernels/metal/,
kernels/cuda/) take the same arguments and trust them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import mlx.core as mx

from tiny_llm_playground.kernels import registry
from tiny_llm_playground.kernels.quant import QuantizedWeight
from tiny_llm_playground.kernels.registry import BACKENDS, OPS

__all__ = [
    "OPS",
    "available_backends",
    "backend_for",
    "batch_invariant",
    "batch_invariant_on",
    "decode_attention_rows",
    "flash_attention",
    "for_backend",
    "kv_pool",
    "linear",
    "paged_attention",
    "paged_copy_blocks",
    "paged_write",
    "panel_kernels",
    "quantized_linear",
    "reads_panels",
    "rms_norm",
    "rope",
    "swiglu",
]


def available_backends() -> dict[str, str]:
    """Every backend with "ok" or "unavailable: <reason>"."""
    return {name: registry.status(name) for name in BACKENDS}


def backend_for(op: str) -> str:
    """The backend `op` runs on by default (for float32 inputs) in this process."""
    return registry.default_backend(op)


def _shape(a: mx.array) -> str:
    return _shape_of(a.shape)


def _shape_of(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_linear(x: mx.array, w: mx.array, b: mx.array | None) -> None:
    if not isinstance(x, mx.array) or not isinstance(w, mx.array):
        raise ValueError("linear: x and w must be mx.array")
    if x.ndim < 1:
        raise ValueError(f"linear: x must have at least 1 dim (..., K), got shape {_shape(x)}")
    if w.ndim != 2:
        raise ValueError(f"linear: w must be 2-D (N, K), got shape {_shape(w)}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: K mismatch: x {_shape(x)} has K={x.shape[-1]}, w {_shape(w)} has K={w.shape[1]}")
    if b is not None:
        if not isinstance(b, mx.array):
            raise ValueError("linear: b must be an mx.array or None")
        if b.ndim != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"linear: b must have shape ({w.shape[0]},) to match w {_shape(w)}, got {_shape(b)}")
    for name, a in (("x", x), ("w", w), ("b", b)):
        if a is not None and not mx.issubdtype(a.dtype, mx.floating):
            raise ValueError(f"linear: {name} must be a floating dtype, got {a.dtype}")


_mode = threading.local()


@contextmanager
def batch_invariant(on: bool = True) -> Iterator[None]:
    """Ops built inside (on this thread) compute each row of the linear layers with one kernel path for
    every number of rows, so a token's numbers do not depend on what else is in the batch: a decode step
    of 3 rows or 16, a prefill chunk, a recompute after preemption give the same bits (vLLM's and SGLang's
    batch-invariant / deterministic mode). Slower where the fastest path depends on M (the prefill's
    GEMM on CPUs without an int8 GEMM). Attention is batch invariant always. The cpu backend keeps it;
    ref has one path per op already (mx's own matmul)."""
    before = getattr(_mode, "batch_invariant", False)
    _mode.batch_invariant = on
    try:
        yield
    finally:
        _mode.batch_invariant = before


def batch_invariant_on() -> bool:
    """Whether ops built now on this thread are batch invariant (see `batch_invariant`)."""
    return getattr(_mode, "batch_invariant", False)


def linear(x: mx.array, w: mx.array, b: mx.array | None = None, *, backend: str | None = None) -> mx.array:
    """y = x @ w.T (+ b).

    x: (..., K) float32, w: (N, K) float32 row-major, b: (N,) float32 or None. Returns (..., N).
    backend: None = the fastest available for these inputs (non-float32 inputs go to "ref");
    "ref" = plain mx ops; "cpu" = the C++ extension (float32 only, ValueError otherwise).
    Raises ValueError on bad shapes/dtypes/backend names and RuntimeError if the requested
    backend can't run here.
    """
    _check_linear(x, w, b)
    all_f32 = x.dtype == mx.float32 and w.dtype == mx.float32 and (b is None or b.dtype == mx.float32)
    return registry.select("linear", backend, float32=all_f32)(x, w, b, batch_invariant=batch_invariant_on())


def _check_quantized_linear(x: mx.array, qw: QuantizedWeight, b: mx.array | None) -> None:
    if not isinstance(x, mx.array):
        raise ValueError("quantized_linear: x must be an mx.array")
    if not isinstance(qw, QuantizedWeight):
        raise ValueError(f"quantized_linear: qw must be a kernels.QuantizedWeight, got {type(qw).__name__}")
    qw.validate()
    N, K = qw.shape
    if x.ndim < 1:
        raise ValueError(f"quantized_linear: x must have at least 1 dim (..., K), got shape {_shape(x)}")
    if x.shape[-1] != K:
        raise ValueError(f"quantized_linear: K mismatch: x {_shape(x)} has K={x.shape[-1]}, weight is {qw.shape}")
    if x.dtype != mx.float32:
        raise ValueError(f"quantized_linear: x must be float32, got {x.dtype}")
    if b is not None:
        if not isinstance(b, mx.array) or b.ndim != 1 or b.shape[0] != N:
            got = _shape(b) if isinstance(b, mx.array) else type(b).__name__
            raise ValueError(f"quantized_linear: b must have shape ({N},), got {got}")
        if b.dtype != mx.float32:
            raise ValueError(f"quantized_linear: b must be float32, got {b.dtype}")


def panel_kernels() -> bool:
    """True when the cpu backend can read the panel formats (q8_0x16, q5_0x16): the extension is built
    and the active ISA has the int8 GEMM (AVX-512 VNNI)."""
    return reads_panels("cpu")


def _layout_backend(backend: str | None):
    return registry.backend_module(backend or backend_for("quantized_linear"))


def reads_panels(backend: str | None = None) -> bool:
    """Whether `quantized_linear` on `backend` (None = the default one) reads the 16-row panel formats
    (its backend module says so; today the cpu kernels with the int8 GEMM)."""
    module = _layout_backend(backend)
    return hasattr(module, "reads_panels") and bool(module.reads_panels())


def for_backend(qw: QuantizedWeight, backend: str | None = None) -> QuantizedWeight:
    """The layout `quantized_linear` reads fastest on `backend` (None = the default one), as its backend
    module's `preferred_layout` gives it (the cpu kernels with the int8 GEMM: q8_0 / q5_0 repacked into
    16-row panels where the shape allows); anything else unchanged. Exact: the same blocks, reordered."""
    if not isinstance(qw, QuantizedWeight):
        return qw
    layout = getattr(_layout_backend(backend), "preferred_layout", None)
    return qw if layout is None else layout(qw)


def quantized_linear(
    x: mx.array, qw: QuantizedWeight, b: mx.array | None = None, *, backend: str | None = None
) -> mx.array:
    """y = x @ dequantize(qw).T (+ b) without materialising the float weights (cpu backend).

    x: (..., K) float32; qw: QuantizedWeight (N, K) in format "q8_0", "q5_0", "affine4" (scales and
    biases float16 or float32: every backend reads them as stored, no rounding) or a panel
    format "q8_0x16" / "q5_0x16" (kernels/quant.py; `for_backend` picks the layout; the q8/q5 formats
    round x to Q8_0 blocks first, in every backend; the cpu backend reads panel formats only where
    `panel_kernels()`);
    b: (N,) float32 or None. Returns (..., N) float32. backend: None = fastest available,
    "ref" = dequantize with plain mx ops then matmul, "cpu" = the C++ extension.
    Raises ValueError on bad shapes/dtypes/formats/backend names, RuntimeError if the requested
    backend can't run here.
    """
    _check_quantized_linear(x, qw, b)
    return registry.select("quantized_linear", backend)(x, qw, b, batch_invariant=batch_invariant_on())


def _check_attention(
    q: mx.array, k: mx.array, v: mx.array, causal: bool, kv_lengths: mx.array | None, mask: mx.array | None
) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, mx.array):
            raise ValueError(f"flash_attention: {name} must be an mx.array")
        if a.ndim != 4:
            raise ValueError(f"flash_attention: {name} must be 4-D, got shape {_shape(a)}")
        if not mx.issubdtype(a.dtype, mx.floating):
            raise ValueError(f"flash_attention: {name} must be a floating dtype, got {a.dtype}")
    B, H, L, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k {_shape(k)} and v {_shape(v)} must have the same shape")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"flash_attention: k {_shape(k)} must be (B, H_kv, S, D) = ({B}, H_kv, S, {D}) for q {_shape(q)}"
        )
    H_kv, S = k.shape[1], k.shape[2]
    if H_kv == 0 or H % H_kv:
        raise ValueError(f"flash_attention: query heads ({H}) must be a multiple of kv heads ({H_kv})")
    if mask is not None:
        if not isinstance(mask, mx.array):
            raise ValueError(f"flash_attention: mask must be an mx.array or None, got {type(mask).__name__}")
        if mask.dtype != mx.bool_ and not mx.issubdtype(mask.dtype, mx.floating):
            raise ValueError(f"flash_attention: mask must be boolean or floating (additive), got {mask.dtype}")
        full = (B, H, L, S)
        if mask.ndim > 4 or any(m not in (1, f) for m, f in zip(reversed(mask.shape), reversed(full), strict=False)):
            raise ValueError(
                f"flash_attention: mask {_shape(mask)} does not broadcast to (B, H, L, S) = {_shape_of(full)} "
                "(numpy's rules: at most 4 dims, aligned on the right, each 1 or the full size)"
            )
    if kv_lengths is None:
        if causal and L > S:
            raise ValueError(
                f"flash_attention: causal with {L} queries but only {S} keys (the queries are the last "
                "L positions of the keys); pass kv_lengths to say otherwise"
            )
        return
    if not isinstance(kv_lengths, mx.array) or kv_lengths.shape != (B,):
        got = _shape(kv_lengths) if isinstance(kv_lengths, mx.array) else type(kv_lengths).__name__
        raise ValueError(f"flash_attention: kv_lengths must be an mx.array of shape ({B},), got {got}")
    if not mx.issubdtype(kv_lengths.dtype, mx.integer):
        raise ValueError(f"flash_attention: kv_lengths must be integers, got {kv_lengths.dtype}")


def flash_attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    *,
    scale: float | None = None,
    causal: bool = True,
    kv_lengths: mx.array | None = None,
    mask: mx.array | None = None,
    backend: str | None = None,
) -> mx.array:
    """softmax(q k^T * scale + mask) v over the keys each query may see; the cpu backend never builds (L, S).

    q: (B, H, L, D); k, v: (B, H_kv, S, D) with H % H_kv == 0 (grouped-query attention: query head h
    reads kv head h // (H / H_kv)). scale: default 1/sqrt(D).
    Which keys a query sees — one rule covers prefill, chunked prefill, decode and ragged batches:
      kv_lengths (B,) ints in [0, S], default S for every row: row b holds kv_lengths[b] valid keys
      (keys past that, e.g. a batch's right padding, are ignored — no mask needed). Its L queries are
      the last L of those positions: query i sits at kv_lengths[b] - L + i and, when causal, sees
      keys j <= that position.
      mask: None, or an mx.array broadcastable to (B, H, L, S) by numpy's rules (at most 4 dims, aligned
      on the right: (S,), (L, S), (H, L, S), (B, 1, L, S) for one mask per batch row shared by the
      heads, ...): boolean (True = the query may see that key) or floating, added to the scaled scores
      (-inf hides a key). It combines with the two rules above: a key is visible only if all allow it,
      and an additive mask's values are added for the visible keys.
    A query that sees no key (kv_lengths[b] < L, or everything masked / -inf) gets zeros.
    Returns (B, H, L, D) in q's float dtype (cpu: float32 only; it returns a transposed view of a
    (B, L, H, D) buffer, so `.transpose(0, 2, 1, 3).reshape(B, L, H * D)` afterwards is free); scores,
    softmax and the weighted sum run in float32 for half-precision inputs too ("ref").
    backend: None = fastest available ("ref" for non-float32), "ref" = plain mx ops with the full score
    matrix, "cpu" = the C++ kernel (online softmax over key tiles of 64, AVX-512 / AVX2 / portable).
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run.
    """
    _check_attention(q, k, v, causal, kv_lengths, mask)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    all_f32 = q.dtype == mx.float32 and k.dtype == mx.float32 and v.dtype == mx.float32
    fn = registry.select("flash_attention", backend, float32=all_f32)
    return fn(q, k, v, scale, causal, kv_lengths, mask)


def decode_attention_rows(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    rows: list[tuple[mx.array, mx.array]],
    lengths: list[int],
    *,
    scale: float | None = None,
    backend: str | None = None,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
    """One decode step of a continuous batch whose rows keep their own cache buffers.

    q: (B, H, 1, D); k, v: (B, H_kv, 1, D), the new token of each row; rows[b] = (keys, values) buffers
    of row b, each (1, H_kv, capacity_b, D) with capacity_b > lengths[b]; lengths[b]: tokens row b holds.
    Row b's k/v are stored at position lengths[b] and q[b] attends over the row's lengths[b] + 1 keys.
    Returns (out (B, H, 1, D), the updated (keys, values) per row); callers replace their buffers with
    these. The cpu kernel writes the new token into the given buffers IN PLACE (as a paged cache's writes
    do: mlx cannot donate buffers through one op for many rows) and returns the same arrays, so nothing
    pending may read positions >= lengths[b] of them. Those writes are not edges of the graph: `after`
    lists arrays the op must run after (the `out` of the steps that wrote these buffers before, when
    steps are built lazily one after another), and whatever reads the buffers later must depend on this
    `out` (`mx.depends`). A step then costs one op per layer instead of padding and concatenating every
    row's cache. The ref backend returns new arrays (and ignores `after`).
    Raises ValueError on bad shapes/dtypes/lengths/backends, RuntimeError if the backend can't run.
    """
    if not all(isinstance(a, mx.array) for a in (q, k, v)):
        raise ValueError("decode_attention_rows: q, k, v must be mx.arrays")
    if q.ndim != 4 or q.shape[2] != 1:
        raise ValueError(f"decode_attention_rows: q must be (B, H, 1, D), got {_shape(q)}")
    B, H, _, D = q.shape
    if k.ndim != 4 or k.shape != v.shape or k.shape[0] != B or k.shape[2] != 1 or k.shape[3] != D:
        raise ValueError(
            f"decode_attention_rows: k, v must be (B, H_kv, 1, D) = ({B}, H_kv, 1, {D}), got {_shape(k)}, {_shape(v)}"
        )
    if len(rows) != B or len(lengths) != B:
        raise ValueError(f"decode_attention_rows: need {B} rows and {B} lengths, got {len(rows)} and {len(lengths)}")
    for b, ((kc, vc), n) in enumerate(zip(rows, lengths, strict=True)):
        if kc.ndim != 4 or kc.shape != vc.shape or kc.shape[:2] != (1, k.shape[1]) or kc.shape[3] != D:
            raise ValueError(
                f"decode_attention_rows: row {b}'s buffers must be (1, {k.shape[1]}, capacity, {D}), "
                f"got {_shape(kc)}, {_shape(vc)}"
            )
        if not 0 <= int(n) < kc.shape[2]:
            raise ValueError(f"decode_attention_rows: row {b} holds {n} tokens: no room in a buffer of {kc.shape[2]}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    arrays = (q, k, v, *(a for r in rows for a in r))
    f32 = all(a.dtype == mx.float32 for a in arrays)
    fn = registry.select("decode_attention_rows", backend, float32=f32)
    return fn(q, k, v, list(rows), [int(n) for n in lengths], scale, list(after))


def rms_norm(x: mx.array, w: mx.array, eps: float, *, backend: str | None = None) -> mx.array:
    """x / sqrt(mean(x^2, last axis) + eps) * w in one pass per row (cpu: rows split over threads).

    x: (..., D), w: (D,), both floating (cpu: float32). Returns (..., D): the normalised x in x's dtype,
    times w (mlx's type promotion). For half-precision x the statistics still run in float32 ("ref": a
    float16 sum of squares overflows past 65504).
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run.
    """
    if not isinstance(x, mx.array) or not isinstance(w, mx.array):
        raise ValueError("rms_norm: x and w must be mx.array")
    if x.ndim < 1 or w.ndim != 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: w must be (D,) with D = x.shape[-1]; got x {_shape(x)}, w {_shape(w)}")
    for name, a in (("x", x), ("w", w)):
        if not mx.issubdtype(a.dtype, mx.floating):
            raise ValueError(f"rms_norm: {name} must be a floating dtype, got {a.dtype}")
    return registry.select("rms_norm", backend, float32=x.dtype == mx.float32 and w.dtype == mx.float32)(x, w, eps)


def swiglu(gate: mx.array, up: mx.array, *, backend: str | None = None) -> mx.array:
    """silu(gate) * up, elementwise in one pass (cpu: multi-threaded). gate, up: one shape, floating.
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run."""
    if not isinstance(gate, mx.array) or not isinstance(up, mx.array):
        raise ValueError("swiglu: gate and up must be mx.array")
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {_shape(gate)} and up {_shape(up)} must have the same shape")
    for name, a in (("gate", gate), ("up", up)):
        if not mx.issubdtype(a.dtype, mx.floating):
            raise ValueError(f"swiglu: {name} must be a floating dtype, got {a.dtype}")
    f32 = gate.dtype == mx.float32 and up.dtype == mx.float32
    return registry.select("swiglu", backend, float32=f32)(gate, up)


def rope(
    x: mx.array,
    inv_freq: mx.array,
    offset: int | mx.array = 0,
    *,
    traditional: bool = False,
    backend: str | None = None,
) -> mx.array:
    """RoPE fused with the transpose into attention layout.

    x: (B, L, H, D) floating (a projection's output reshaped into heads); inv_freq: (D/2,) frequencies
    base^(-2i/D); offset: int, or (B,) ints for per-row offsets (continuous batching). The position of
    (b, l) is offset (+ offset[b]) + l. traditional=False (rotate-half, Qwen2's layout): pair
    (i, i + D/2) rotates by position * inv_freq[i]; traditional=True (RoFormer / LLaMA-1, as
    `mx.fast.rope(..., traditional=True)`): adjacent pair (2i, 2i + 1) rotates by the same angle.
    Returns (B, H, L, D) (cpu: one pass, angles computed once per position and shared by the heads).
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run.
    """
    if not isinstance(x, mx.array) or not isinstance(inv_freq, mx.array):
        raise ValueError("rope: x and inv_freq must be mx.array")
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"rope: x must be (B, L, H, D) with an even D, got {_shape(x)}")
    if inv_freq.ndim != 1 or inv_freq.shape[0] != x.shape[-1] // 2:
        raise ValueError(f"rope: inv_freq must be (D/2,) = ({x.shape[-1] // 2},), got {_shape(inv_freq)}")
    per_row = isinstance(offset, mx.array)
    if per_row and (offset.ndim != 1 or offset.shape[0] != x.shape[0]):
        raise ValueError(f"rope: per-row offsets must be (B,) = ({x.shape[0]},), got {_shape(offset)}")
    if not per_row and not isinstance(offset, int):
        raise ValueError(f"rope: offset must be an int or a (B,) mx.array, got {type(offset).__name__}")
    if not isinstance(traditional, bool):
        raise ValueError(f"rope: traditional must be a bool, got {type(traditional).__name__}")
    f32 = x.dtype == mx.float32 and inv_freq.dtype == mx.float32
    return registry.select("rope", backend, float32=f32)(x, inv_freq, offset, traditional)


# ----- paged KV cache: one pool of fixed-size blocks per layer, rows reach their tokens via block tables -----


def kv_pool(
    num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int, *, backend: str | None = None
) -> mx.array:
    """One layer's paged key (or value) storage: (num_blocks, block_size, H_kv, D) float32. The cpu backend
    leaves it uninitialized, so memory pages are taken only as blocks are first written (a pool sized for
    the whole cache costs what its used blocks hold); ref fills zeros. Only written slots are ever read."""
    for name, n in (("num_blocks", num_blocks), ("block_size", block_size), ("n_kv_heads", n_kv_heads),
                    ("head_dim", head_dim)):  # fmt: skip
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"kv_pool: {name} must be an integer >= 1, got {n!r}")
    return registry.select("kv_pool", backend)(num_blocks, block_size, n_kv_heads, head_dim)


def _check_pool(op: str, k_pool: mx.array, v_pool: mx.array) -> tuple[int, int, int, int]:
    for name, a in (("k_pool", k_pool), ("v_pool", v_pool)):
        if not isinstance(a, mx.array) or a.ndim != 4 or a.dtype != mx.float32:
            got = f"{a.dtype} {_shape(a)}" if isinstance(a, mx.array) else type(a).__name__
            raise ValueError(f"{op}: {name} must be float32 (num_blocks, block_size, H_kv, D), got {got}")
    if k_pool.shape != v_pool.shape:
        raise ValueError(f"{op}: k_pool {_shape(k_pool)} and v_pool {_shape(v_pool)} must have one shape")
    return tuple(k_pool.shape)


_checked_tables: tuple = ()  # the (tables, lengths, L, pool shape) checked last: one step's layers share them


def _check_tables(op: str, block_tables: mx.array, lengths: mx.array, B: int, L: int, pool_shape) -> None:
    """Shapes, dtypes, and that every row's table covers its lengths with distinct real blocks. The values
    are read (tables and lengths are small); the same arrays checked for the previous call (every layer of
    a step gets the same ones) are not read again."""
    global _checked_tables
    key = (block_tables, lengths, L, tuple(pool_shape))
    last = _checked_tables
    if last and last[0] is block_tables and last[1] is lengths and last[2:] == key[2:]:
        return
    num_blocks, bs = pool_shape[0], pool_shape[1]
    if not isinstance(block_tables, mx.array) or block_tables.ndim != 2 or block_tables.shape[0] != B:
        raise ValueError(f"{op}: block_tables must be an int32 array (B, T) = ({B}, T)")
    if block_tables.dtype != mx.int32:
        raise ValueError(f"{op}: block_tables must be int32, got {block_tables.dtype}")
    if not isinstance(lengths, mx.array) or lengths.shape != (B,) or lengths.dtype != mx.int32:
        raise ValueError(f"{op}: lengths must be an int32 array ({B},)")
    tables, lens = block_tables.tolist(), lengths.tolist()
    for b, (row, n) in enumerate(zip(tables, lens, strict=True)):
        if n < 0 or (n and n < L):
            raise ValueError(f"{op}: row {b} holds {n} tokens: must be 0 (an empty row) or at least L = {L}")
        need = -(-n // bs)
        if need > len(row):
            raise ValueError(f"{op}: row {b}'s {n} tokens are not covered by its table of {len(row)} blocks")
        live = row[:need]
        if any(not 0 <= blk < num_blocks for blk in live):
            raise ValueError(f"{op}: row {b}'s table names a block outside the pool of {num_blocks}: {live}")
        if len(set(live)) != len(live):
            raise ValueError(f"{op}: row {b}'s table names a block twice: {live}")
    _checked_tables = key


def paged_write(
    k: mx.array,
    v: mx.array,
    k_pool: mx.array,
    v_pool: mx.array,
    block_tables: mx.array,
    lengths: mx.array,
    *,
    backend: str | None = None,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Store each row's new keys and values in its blocks.

    k, v: (B, H_kv, L, D) float32, row b's L new tokens, which sit at positions lengths[b] - L + i of
    the row; block_tables: (B, T) int32, row b's blocks in order (-1 past them); lengths: (B,) int32,
    the tokens each row holds once these are stored. Position p of row b lives in block
    block_tables[b, p // block_size], slot p % block_size. Returns (done, (k_pool, v_pool)): the cpu
    kernel writes IN PLACE and returns the same pools, `done` being the op's output that later readers
    and writers of the pools must be ordered after (`mx.depends`; `after` lists earlier writers this op
    must follow, as for decode_attention_rows); ref returns new pools."""
    num_blocks, bs, H_kv, D = _check_pool("paged_write", k_pool, v_pool)
    if not isinstance(k, mx.array) or k.ndim != 4 or k.shape != v.shape or k.shape[1] != H_kv or k.shape[3] != D:
        raise ValueError(f"paged_write: k, v must be (B, {H_kv}, L, {D}) like the pool, got {_shape(k)}")
    if k.dtype != mx.float32 or v.dtype != mx.float32:
        raise ValueError("paged_write: k and v must be float32 (the pool's dtype)")
    _check_tables("paged_write", block_tables, lengths, k.shape[0], k.shape[2], k_pool.shape)
    return registry.select("paged_write", backend)(k, v, k_pool, v_pool, block_tables, lengths, list(after))


def paged_attention(
    q: mx.array,
    k: mx.array | None,
    v: mx.array | None,
    k_pool: mx.array,
    v_pool: mx.array,
    block_tables: mx.array,
    lengths: mx.array,
    *,
    scale: float | None = None,
    causal: bool = True,
    backend: str | None = None,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Attention over each row's tokens, read through its block table (no contiguous copy of the cache).

    q: (B, H, L, D) float32, the queries of each row's last L positions (a decode step: L = 1; a prefill
    chunk over a cached prefix: L > 1); k, v: (B, H_kv, L, D), those positions' keys and values, stored
    first as `paged_write` does (None: already stored); pools, block_tables, lengths as `paged_write`.
    Query i of row b sits at position lengths[b] - L + i and sees keys 0 .. lengths[b] - 1, only those up
    to its own position when causal; grouped-query heads as flash_attention; a row with lengths[b] = 0
    (an empty slot of the batch) gets zeros. Returns (out (B, H, L, D), (k_pool, v_pool)); with k and v
    the cpu kernel writes in place, so `out` is what later users of the pools follow (see paged_write).
    """
    num_blocks, bs, H_kv, D = _check_pool("paged_attention", k_pool, v_pool)
    if not isinstance(q, mx.array) or q.ndim != 4 or q.shape[3] != D or q.dtype != mx.float32:
        raise ValueError(f"paged_attention: q must be float32 (B, H, L, {D}), got {_shape(q)}")
    B, H, L, _ = q.shape
    if H % H_kv:
        raise ValueError(f"paged_attention: query heads ({H}) must be a multiple of kv heads ({H_kv})")
    if (k is None) != (v is None):
        raise ValueError("paged_attention: give both k and v, or neither")
    if k is not None and (
        not isinstance(k, mx.array) or k.shape != (B, H_kv, L, D) or k.shape != v.shape
        or k.dtype != mx.float32 or v.dtype != mx.float32
    ):  # fmt: skip
        raise ValueError(f"paged_attention: k, v must be float32 ({B}, {H_kv}, {L}, {D}), got {_shape(k)}")
    _check_tables("paged_attention", block_tables, lengths, B, L, k_pool.shape)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    fn = registry.select("paged_attention", backend)
    return fn(q, k, v, k_pool, v_pool, block_tables, lengths, scale, causal, list(after))


def paged_copy_blocks(
    k_pool: mx.array,
    v_pool: mx.array,
    src: Sequence[int],
    dst: Sequence[int],
    *,
    backend: str | None = None,
    after: Sequence[mx.array] = (),
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Block dst[i] becomes a copy of block src[i], keys and values (copy-on-write: a sequence about to
    write into a block it shares gets its own copy first). Returns (done, (k_pool, v_pool)) as
    paged_write (in place on the cpu backend)."""
    num_blocks = _check_pool("paged_copy_blocks", k_pool, v_pool)[0]
    src, dst = [int(b) for b in src], [int(b) for b in dst]
    if len(src) != len(dst):
        raise ValueError(f"paged_copy_blocks: {len(src)} sources for {len(dst)} destinations")
    if any(not 0 <= b < num_blocks for b in (*src, *dst)):
        raise ValueError(f"paged_copy_blocks: a block outside the pool of {num_blocks}")
    if len(set(dst)) != len(dst) or set(src) & set(dst):
        raise ValueError("paged_copy_blocks: each destination once, and never a source")
    return registry.select("paged_copy_blocks", backend)(k_pool, v_pool, src, dst, list(after))

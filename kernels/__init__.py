"""kernels: the engine's hot ops, each with a readable twin and fast backends.

Backends:
  "ref"   plain `mx` ops (kernels/ref.py) — the definition every other backend is tested against.
  "cpu"   the C++ mlx extension kernels/cpu/_ext (custom Primitive, SIMD, blocking thread pool);
          build it with `python -m kernels.build`.
  "metal" / "cuda"  reported (with the reason they can't run) but not written yet.

Rules it keeps:
- Each public op validates shapes and dtypes and raises ValueError before dispatching anywhere.
- `backend=None` picks the fastest backend that can run the call; asking for a backend that
  can't run raises instead of quietly running another one.
- If the cpu extension is missing or broken, default calls run on "ref" after ONE loud warning
  (warnings + logging) saying how to build it. Nothing is ever faked.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import mlx.core as mx

from . import cpu as _cpu
from . import ref
from .quant import BLOCK, FORMATS, PANEL_ROWS, QuantizedWeight, dequantize, quantize, repack, unpack

__all__ = [
    "BLOCK",
    "FORMATS",
    "OPS",
    "QuantizedWeight",
    "available_backends",
    "backend_for",
    "decode_attention_rows",
    "dequantize",
    "flash_attention",
    "for_backend",
    "linear",
    "panel_kernels",
    "quantize",
    "quantized_linear",
    "reads_panels",
    "repack",
    "rms_norm",
    "rope",
    "swiglu",
    "unpack",
]

OPS: tuple[str, ...] = (
    "linear",
    "quantized_linear",
    "flash_attention",
    "decode_attention_rows",
    "rms_norm",
    "rope",
    "swiglu",
)
_BACKENDS: tuple[str, ...] = ("ref", "cpu", "metal", "cuda")

_log = logging.getLogger("kernels")
_warned_fallback = False


def _gpu_status(name: str) -> str:
    """Status line for a GPU backend: no kernels are written for them yet, say why they can't run."""
    if name == "metal":
        present = mx.metal.is_available()
        device = "mx.metal.is_available() is True" if present else "mx.metal.is_available() is False"
    else:
        cuda = getattr(mx, "cuda", None)
        if cuda is None:
            return "unavailable: this mlx build has no mx.cuda"
        present = cuda.is_available()
        device = "mx.cuda.is_available() is True" if present else "mx.cuda.is_available() is False"
    if present:
        return f"unavailable: {device} but no {name} kernels are written yet"
    return f"unavailable: {device}"


def available_backends() -> dict[str, str]:
    """Every backend with "ok" or "unavailable: <reason>"."""
    out = {"ref": "ok"}
    err = _cpu.load_error()
    out["cpu"] = "ok" if err is None else f"unavailable: {err}; {_cpu.BUILD_HINT}"
    out["metal"] = _gpu_status("metal")
    out["cuda"] = _gpu_status("cuda")
    return out


def backend_for(op: str) -> str:
    """The backend `op` runs on by default (for float32 inputs) in this process."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if mx.default_device() == mx.gpu:
        return "ref"  # on a GPU, mlx's own ops beat a CPU kernel; no GPU kernels of ours yet
    return "cpu" if _cpu.load() is not None else "ref"


def _warn_fallback_once() -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    msg = (
        f"kernels: the cpu backend is unavailable ({_cpu.load_error()}); falling back to the "
        "reference mx ops, which are MUCH slower on CPU (netlib BLAS, one thread). "
        f"To fix: {_cpu.BUILD_HINT}."
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    _log.warning(msg)


def _shape(a: mx.array) -> str:
    return "(" + ", ".join(str(d) for d in a.shape) + ("," if a.ndim == 1 else "") + ")"


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
    if backend is None:
        backend = backend_for("linear")
        if backend == "cpu" and not all_f32:
            backend = "ref"  # the cpu kernel is float32-only; other dtypes keep mlx's semantics
        if backend == "ref" and _cpu.load() is None and mx.default_device() == mx.cpu:
            _warn_fallback_once()
    if backend == "ref":
        return ref.linear(x, w, b)
    if backend == "cpu":
        if not all_f32:
            dtypes = ", ".join(f"{n}={a.dtype}" for n, a in (("x", x), ("w", w), ("b", b)) if a is not None)
            raise ValueError(f"linear: the cpu backend takes float32 only, got {dtypes}")
        ext = _cpu.load()
        if ext is None:
            raise RuntimeError(f"linear: backend 'cpu' {available_backends()['cpu']}")
        N, K = w.shape
        lead = x.shape[:-1]
        M = math.prod(lead)
        y = ext.linear(x.reshape(M, K), w, b)  # (M, N)
        return y.reshape(*lead, N)  # (..., N)
    if backend in _BACKENDS:
        raise RuntimeError(f"linear: backend {backend!r} {available_backends()[backend]}")
    raise ValueError(f"linear: unknown backend {backend!r}; choose from {', '.join(_BACKENDS)} or None")


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
    ext = _cpu.load()
    return ext is not None and bool(ext.panel_kernels())


def reads_panels(backend: str | None = None) -> bool:
    """Whether `quantized_linear` on `backend` (None = the default one) reads the panel formats: it runs
    on the cpu kernels and those have the int8 GEMM (`panel_kernels`)."""
    return (backend or backend_for("quantized_linear")) == "cpu" and panel_kernels()


def for_backend(qw: QuantizedWeight, backend: str | None = None) -> QuantizedWeight:
    """The layout `quantized_linear` reads fastest on `backend` (None = the default one): q8_0 / q5_0
    repacked into 16-row panels (`repack`) where the cpu kernels read them and the shape allows
    (N % 16 == 0, K % 64 == 0 for q5_0); anything else unchanged. Exact: the same blocks, reordered."""
    if not isinstance(qw, QuantizedWeight) or qw.format not in ("q8_0", "q5_0") or not reads_panels(backend):
        return qw
    N, K = qw.shape
    panel = qw.format + "x16"
    if N % PANEL_ROWS or K % BLOCK[panel]:
        return qw
    return repack(qw)


def quantized_linear(
    x: mx.array, qw: QuantizedWeight, b: mx.array | None = None, *, backend: str | None = None
) -> mx.array:
    """y = x @ dequantize(qw).T (+ b) without materialising the float weights (cpu backend).

    x: (..., K) float32; qw: QuantizedWeight (N, K) in format "q8_0", "q5_0", "affine4" or a panel
    format "q8_0x16" / "q5_0x16" (kernels/quant.py; `for_backend` picks the layout; the q8/q5 formats
    round x to Q8_0 blocks first, in every backend; the cpu backend reads panel formats only where
    `panel_kernels()`);
    b: (N,) float32 or None. Returns (..., N) float32. backend: None = fastest available,
    "ref" = dequantize with plain mx ops then matmul, "cpu" = the C++ extension.
    Raises ValueError on bad shapes/dtypes/formats/backend names, RuntimeError if the requested
    backend can't run here.
    """
    _check_quantized_linear(x, qw, b)
    if backend is None:
        backend = backend_for("quantized_linear")
        if backend == "ref" and _cpu.load() is None and mx.default_device() == mx.cpu:
            _warn_fallback_once()
    if backend == "ref":
        return ref.quantized_linear(x, qw, b)
    if backend == "cpu":
        ext = _cpu.load()
        if ext is None:
            raise RuntimeError(f"quantized_linear: backend 'cpu' {available_backends()['cpu']}")
        N, K = qw.shape
        lead = x.shape[:-1]
        M = math.prod(lead)
        y = ext.quantized_linear(x.reshape(M, K), qw.q, qw.scales, qw.biases, b, qw.format, qw.high)  # (M, N)
        return y.reshape(*lead, N)  # (..., N)
    if backend in _BACKENDS:
        raise RuntimeError(f"quantized_linear: backend {backend!r} {available_backends()[backend]}")
    raise ValueError(f"quantized_linear: unknown backend {backend!r}; choose from {', '.join(_BACKENDS)} or None")


def _pick(op: str, backend: str | None, all_f32: bool) -> str:
    """The backend an elementwise/attention op runs on: the default goes to "ref" for non-float32."""
    if backend is None:
        backend = backend_for(op)
        if backend == "cpu" and not all_f32:
            backend = "ref"  # the cpu kernels are float32-only; other dtypes keep mlx's semantics
        if backend == "ref" and _cpu.load() is None and mx.default_device() == mx.cpu:
            _warn_fallback_once()
    if backend == "cpu":
        if not all_f32:
            raise ValueError(f"{op}: the cpu backend takes float32 only")
        if _cpu.load() is None:
            raise RuntimeError(f"{op}: backend 'cpu' {available_backends()['cpu']}")
    elif backend in _BACKENDS and backend != "ref":
        raise RuntimeError(f"{op}: backend {backend!r} {available_backends()[backend]}")
    elif backend not in _BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose from {', '.join(_BACKENDS)} or None")
    return backend


def _check_attention(q: mx.array, k: mx.array, v: mx.array, causal: bool, kv_lengths: mx.array | None) -> None:
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
    backend: str | None = None,
) -> mx.array:
    """softmax(q k^T * scale) v over the keys each query may see; the cpu backend never builds (L, S).

    q: (B, H, L, D); k, v: (B, H_kv, S, D) with H % H_kv == 0 (grouped-query attention: query head h
    reads kv head h // (H / H_kv)). scale: default 1/sqrt(D).
    Which keys a query sees — one rule covers prefill, chunked prefill, decode and ragged batches:
      kv_lengths (B,) ints in [0, S], default S for every row: row b holds kv_lengths[b] valid keys
      (keys past that, e.g. a batch's right padding, are ignored — no mask needed). Its L queries are
      the last L of those positions: query i sits at kv_lengths[b] - L + i and, when causal, sees
      keys j <= that position. A query that sees no key (kv_lengths[b] < L) gets zeros.
    Returns (B, H, L, D) in q's float dtype (cpu: float32 only; it returns a transposed view of a
    (B, L, H, D) buffer, so `.transpose(0, 2, 1, 3).reshape(B, L, H * D)` afterwards is free).
    backend: None = fastest available ("ref" for non-float32), "ref" = plain mx ops with the full score
    matrix, "cpu" = the C++ kernel (online softmax over key tiles of 64, AVX-512 / AVX2 / portable).
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run.
    """
    _check_attention(q, k, v, causal, kv_lengths)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    all_f32 = q.dtype == mx.float32 and k.dtype == mx.float32 and v.dtype == mx.float32
    backend = _pick("flash_attention", backend, all_f32)
    if backend == "ref":
        return ref.flash_attention(q, k, v, scale, causal, kv_lengths)
    return _cpu.load().flash_attention(q, k, v, scale, causal, kv_lengths)


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
    backend = _pick("decode_attention_rows", backend, all(a.dtype == mx.float32 for a in arrays))
    if backend == "ref":
        return ref.decode_attention_rows(q, k, v, rows, [int(n) for n in lengths], scale)
    out = _cpu.load().decode_attention_rows(
        q, k, v, [a for r in rows for a in r], [int(n) for n in lengths], scale, list(after)
    )
    return out, [(kc, vc) for kc, vc in rows]


def rms_norm(x: mx.array, w: mx.array, eps: float, *, backend: str | None = None) -> mx.array:
    """x / sqrt(mean(x^2, last axis) + eps) * w in one pass per row (cpu: rows split over threads).

    x: (..., D), w: (D,), both floating (cpu: float32). Returns (..., D).
    Raises ValueError on bad shapes/dtypes/backends, RuntimeError if the requested backend can't run.
    """
    if not isinstance(x, mx.array) or not isinstance(w, mx.array):
        raise ValueError("rms_norm: x and w must be mx.array")
    if x.ndim < 1 or w.ndim != 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: w must be (D,) with D = x.shape[-1]; got x {_shape(x)}, w {_shape(w)}")
    for name, a in (("x", x), ("w", w)):
        if not mx.issubdtype(a.dtype, mx.floating):
            raise ValueError(f"rms_norm: {name} must be a floating dtype, got {a.dtype}")
    backend = _pick("rms_norm", backend, x.dtype == mx.float32 and w.dtype == mx.float32)
    if backend == "ref":
        return ref.rms_norm(x, w, eps)
    D = x.shape[-1]
    return _cpu.load().rms_norm(x.reshape(-1, D), w, float(eps)).reshape(x.shape)


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
    backend = _pick("swiglu", backend, gate.dtype == mx.float32 and up.dtype == mx.float32)
    if backend == "ref":
        return ref.swiglu(gate, up)
    return _cpu.load().swiglu(gate, up)


def rope(x: mx.array, inv_freq: mx.array, offset: int | mx.array = 0, *, backend: str | None = None) -> mx.array:
    """Rotate-half RoPE (Qwen2's layout) fused with the transpose into attention layout.

    x: (B, L, H, D) floating (a projection's output reshaped into heads); inv_freq: (D/2,) frequencies
    base^(-2i/D); offset: int, or (B,) ints for per-row offsets (continuous batching). The position of
    (b, l) is offset (+ offset[b]) + l; pair (i, i + D/2) rotates by position * inv_freq[i].
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
    backend = _pick("rope", backend, x.dtype == mx.float32 and inv_freq.dtype == mx.float32)
    if backend == "ref":
        return ref.rope(x, inv_freq, offset)
    if per_row:
        return _cpu.load().rope(x, inv_freq, 0, offset)
    return _cpu.load().rope(x, inv_freq, offset)

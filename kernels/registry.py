"""Which backend runs each kernel op: one registry, per op and per backend.

A backend is one module with the same function names as kernels/ref.py, one per op it implements, and
`unavailable() -> str | None` (why it cannot run in this process; None when it can):

  ref    kernels/ref.py        plain mx ops, every op: the definition every other backend is tested against
  cpu    kernels/cpu/ops.py    the C++ MLX extension (custom Primitives, SIMD per ISA, float32 only)
  metal  kernels/metal/        `mx.fast.metal_kernel` twins, for Apple GPUs
  cuda   kernels/cuda/         `mx.fast.cuda_kernel` twins, for NVIDIA GPUs

So a twin for another device is one module with those names, and this file is where the engine's choice
and its fallback warning live. A backend module may set `FLOAT32_ONLY = True` (its kernels take float32
inputs only).

Rules it keeps:
- `select(op, None, ...)` picks the backend for this device (cpu on a CPU, the GPU's own twin on a GPU)
  when it implements the op, can run here and takes the inputs' dtypes, else ref (mlx's own ops).
- `select(op, name, ...)` with a backend that cannot run this call raises (RuntimeError; ValueError for
  dtypes it does not take) instead of quietly running another one.
- A default call that falls back to ref because this device's fast backend is unavailable warns ONCE
  (warnings + logging), saying why and how to fix it. Nothing is ever faked.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable
from types import ModuleType

import mlx.core as mx

OPS: tuple[str, ...] = (
    "linear",
    "quantized_linear",
    "flash_attention",
    "decode_attention_rows",
    "rms_norm",
    "rope",
    "swiglu",
    "kv_pool",
    "paged_write",
    "paged_attention",
    "paged_copy_blocks",
)
BACKENDS: tuple[str, ...] = ("ref", "cpu", "metal", "cuda")
_MODULES = {
    "ref": "tiny_llm_playground.kernels.ref",
    "cpu": "tiny_llm_playground.kernels.cpu.ops",
    "metal": "tiny_llm_playground.kernels.metal",
    "cuda": "tiny_llm_playground.kernels.cuda",
}

_log = logging.getLogger("kernels")
_loaded: dict[str, ModuleType] = {}
_warned_fallback = False


def backend_module(name: str) -> ModuleType:
    """The module implementing backend `name` (imported once)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} or None")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_MODULES[name])
    return _loaded[name]


def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run in this process, or None when it can."""
    module = backend_module(name)
    return module.unavailable() if hasattr(module, "unavailable") else None


def _hint(name: str) -> str:
    hint = getattr(backend_module(name), "FIX_HINT", "")
    return f"; {hint}" if hint else ""


def status(name: str) -> str:
    """'ok' (it runs here and has kernels), or 'unavailable: <reason>' (and how to fix it, when known)."""
    reason = unavailable(name)
    if reason is not None:
        return f"unavailable: {reason}{_hint(name)}"
    if not any(implements(name, op) for op in OPS):
        return f"unavailable: no {name} kernels are written yet"
    return "ok"


def implements(name: str, op: str) -> bool:
    """Whether backend `name` has a kernel for `op` (a function of that name)."""
    return callable(getattr(backend_module(name), op, None))


def _device_backend() -> str:
    """The fast backend of the default device: cpu on a CPU, the GPU's own twins on a GPU."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


def default_backend(op: str) -> str:
    """The backend `op` runs on by default (for float32 inputs) in this process."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    fast = _device_backend()
    return fast if unavailable(fast) is None and implements(fast, op) else "ref"


def _warn_fallback_once(op: str) -> None:
    global _warned_fallback
    fast = _device_backend()
    reason = unavailable(fast)
    if _warned_fallback or reason is None:
        return  # the device's backend runs; it just has no kernel for this op (or dtype)
    _warned_fallback = True
    hint = getattr(backend_module(fast), "FIX_HINT", "")
    msg = (
        f"kernels: the {fast} backend is unavailable ({reason}); {op} and every other op fall back to the "
        "reference mx ops, which are MUCH slower (on CPU: netlib BLAS, one thread)."
        + (f" To fix: {hint}." if hint else "")
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=5)  # the frame that called the kernel op
    _log.warning(msg)


_chosen: dict[tuple, Callable] = {}  # (op, backend, float32, on a CPU device) -> implementation, once chosen


def select(op: str, backend: str | None, *, float32: bool = True) -> Callable:
    """The implementation of `op` on `backend` (None = the default choice for inputs that are all float32
    when `float32`, else for other dtypes). Raises ValueError for unknown names or dtypes a named backend
    does not take, RuntimeError when a named backend cannot run here or has no kernel for `op`.

    Every op call of every step asks, so a choice is made once per (op, backend, dtypes, kind of device)
    and kept (a backend's availability does not change in a process; a test that fakes it replaces
    `_chosen`). The device enters as CPU or not: mlx's Device objects hash by identity."""
    key = (op, backend, float32, mx.default_device() == mx.cpu)
    fn = _chosen.get(key)
    if fn is None:
        fn = _chosen[key] = _select(op, backend, float32)
    return fn


def _select(op: str, backend: str | None, float32: bool) -> Callable:
    if backend is None:
        name = default_backend(op)
        if name != "ref" and not float32 and getattr(backend_module(name), "FLOAT32_ONLY", False):
            name = "ref"  # float32-only kernels; other dtypes keep mlx's own semantics
        if name == "ref":
            _warn_fallback_once(op)
        return getattr(backend_module(name), op)
    module = backend_module(backend)  # ValueError for an unknown name
    reason = unavailable(backend)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} unavailable: {reason}{_hint(backend)}")
    if not implements(backend, op):
        raise RuntimeError(f"{op}: backend {backend!r} has no {op} kernel")
    if not float32 and getattr(module, "FLOAT32_ONLY", False):
        raise ValueError(f"{op}: the {backend} backend takes float32 only")
    return getattr(module, op)

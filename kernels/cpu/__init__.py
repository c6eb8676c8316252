"""Loader for the CPU backend: the C++ mlx extension `kernels.cpu._ext`.

Rules it keeps:
- Importing this package never fails: if the module is not built or does not load, `load()`
  returns None and `load_error()` says why and how to build it (`python -m tiny_llm_playground.kernels.build`).
- mlx.core is imported first, so the extension finds mlx's array type registered with nanobind.
- Sources live next to this file (CMakeLists.txt, linear.cpp, threadpool.h, ...).
"""

from __future__ import annotations

import glob
import os
from types import ModuleType

import mlx.core  # noqa: F401  (must be loaded before the extension)

BUILD_HINT = (
    "build it with `python -m tiny_llm_playground.kernels.build` (or rerun `bash scripts/setup.sh`; needs cmake,"
    " a C++20 compiler, nanobind==3.1.0)"
)

_module: ModuleType | None = None
_error: str | None = None
_tried = False


def built_files() -> list[str]:
    """Paths of built extension modules next to this file."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(glob.glob(os.path.join(here, "_ext*.so")) + glob.glob(os.path.join(here, "_ext*.pyd")))


def load() -> ModuleType | None:
    """Import the extension once; return it, or None when it is missing or broken."""
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            from . import _ext

            _module = _ext
        except ImportError as e:
            if not built_files():
                _error = "extension not built"
            else:
                _error = f"extension failed to import: {e}"
    return _module


def load_error() -> str | None:
    """Why `load()` returned None, without the build hint (None when the extension loaded)."""
    load()
    return _error

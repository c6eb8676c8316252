"""The metal backend: Apple-GPU twins of kernels/ref.py's ops, written with `mx.fast.metal_kernel`.

A kernel added here is a function with ref's name and arguments; kernels/registry.py finds it by that
name. None is written yet: they must be verified on a Mac (the project's machines have no Apple GPU), and
a twin that never ran would be a stub. Until then every op runs on mlx's own ops on the GPU (ref).
"""

from __future__ import annotations

import mlx.core as mx


def unavailable() -> str | None:
    """Why this backend cannot run here: no Metal device (None on a Mac with one)."""
    return None if mx.metal.is_available() else "mx.metal.is_available() is False"

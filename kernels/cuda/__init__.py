"""The cuda backend: NVIDIA-GPU twins of kernels/ref.py's ops, written with `mx.fast.cuda_kernel`.

A kernel added here is a function with ref's name and arguments; kernels/registry.py finds it by that
name. None is written yet (they must be verified on an NVIDIA GPU, and a twin that never ran would be a
stub). Until then every op runs on mlx's own ops on the GPU (ref).
"""

from __future__ import annotations

import mlx.core as mx


def unavailable() -> str | None:
    """Why this backend cannot run here: an mlx build without CUDA, or no device (None when it has one)."""
    cuda = getattr(mx, "cuda", None)
    if cuda is None:
        return "this mlx build has no mx.cuda"
    return None if cuda.is_available() else "mx.cuda.is_available() is False"

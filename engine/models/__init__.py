"""Model architectures, one file each, found by the config's `model_type` (mlx-lm's convention).

An architecture is a module `engine/models/<model_type>.py` holding `ModelArgs` (with `from_dict`),
`Model(args, weights, backend, consume=...)` and `sanitize(weights, args)`; adding one is adding that
file. `CausalLM` is what the rest of the engine needs of a model (the runner, generation, inspection; the
test fakes implement it too).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import mlx.core as mx


class CausalLM(Protocol):
    """A decoder the engine can run: token ids (B, L) and per-layer caches in, logits out."""

    args: Any  # num_hidden_layers, vocab_size, max_position_embeddings, ...

    def make_cache(self) -> list: ...

    def hidden_states(self, ids: mx.array, cache: list | None = None) -> mx.array: ...

    def logits(self, h: mx.array) -> mx.array: ...

    def __call__(self, ids: mx.array, cache: list | None = None, *, last_only: bool = False) -> mx.array: ...


def supported_model_types() -> list[str]:
    """The architectures this engine implements (one module each in this folder)."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def model_module(model_type: str) -> ModuleType:
    """The module implementing `model_type`; ValueError naming the supported ones otherwise."""
    if (
        not isinstance(model_type, str)
        or not re.fullmatch(r"[a-z0-9_]+", model_type)
        or (model_type not in supported_model_types())
    ):
        raise ValueError(f"unsupported model type {model_type!r}; supported: {', '.join(supported_model_types())}")
    return importlib.import_module(f"{__name__}.{model_type}")

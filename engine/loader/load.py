"""Load a model by manifest name (fetching it on first use) or from a folder given by path.

A folder is HF/MLX style: config.json, one or more *.safetensors, tokenizer.json and
tokenizer_config.json. Weights are cast to float32 (the CPU kernels' activation dtype), then the
linear weights are quantized per `quant` (engine/loader/quantize.py; default "auto": the GGUF's own
blocks when its source GGUF is on disk, else q8_0; "none" keeps float32), reusing the quantized copy
stored in the folder's quantized/ subfolder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from tiny_llm_playground.engine.loader.manifest import get_spec
from tiny_llm_playground.engine.loader.quantize import (
    DEFAULT_QUANT,
    check_quant,
    quantize_weights,
    resolve_quant,
    weight_arrays,
)
from tiny_llm_playground.engine.models import CausalLM, model_module
from tiny_llm_playground.engine.text import Tokenizer


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: CausalLM
    tokenizer: Tokenizer
    config: dict
    quant: str = "none"


def resolve_model_dir(name_or_path: str, *, quiet: bool = False) -> tuple[str, Path]:
    """(display name, folder) for a manifest name (fetched if needed) or an existing folder."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p.name, p
    if "/" in name_or_path or name_or_path.startswith("."):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    from tiny_llm_playground.engine.loader.fetch import fetch

    spec = get_spec(name_or_path)  # raises UnknownModelError listing the known names
    return spec.name, fetch(spec.name, quiet=quiet)


def load_weights(folder: Path) -> dict[str, mx.array]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    weights: dict[str, mx.array] = {}
    for f in files:
        weights.update(mx.load(str(f)))
    if any(k.endswith(".scales") for k in weights):
        raise ValueError(f"{folder} holds MLX-quantized weights; load a float16/bfloat16/float32 folder instead")
    return weights


def _layout(backend: str | None) -> str:
    """The quantized weights' layout the model's linear layers read fastest: the 16-row panel formats
    where they run on the cpu kernels and those read them (AVX-512 VNNI), else the row layout."""
    from tiny_llm_playground import kernels

    return "panels" if kernels.reads_panels(backend) else "rows"


def load_model(
    name_or_path: str, *, backend: str | None = None, quant: str = DEFAULT_QUANT, quiet: bool = False
) -> LoadedModel:
    """Load model + tokenizer. backend: kernel backend for the linear layers (None = fastest).
    quant: "auto" (default: "gguf" when the folder's source GGUF is on disk, else "q8_0"), "gguf" (the
    GGUF's own Q5_0/Q8_0 blocks, Q8_0 for the rest), "q8_0", "affine4" (4-bit, lossier) or "none"
    (float32). LoadedModel.quant is the concrete mode used."""
    check_quant(quant)
    name, folder = resolve_model_dir(name_or_path, quiet=quiet)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: a model folder needs config.json")
    config = json.loads(cfg_file.read_text(encoding="utf-8"))
    arch = model_module(config.get("model_type", "qwen2"))  # ValueError for an architecture we lack
    args = arch.ModelArgs.from_dict(config)
    weights = arch.sanitize(load_weights(folder), args)
    quant = resolve_quant(quant, folder)
    weights = quantize_weights(weights, quant, tied=args.tie_word_embeddings, folder=folder, layout=_layout(backend))
    mx.eval(weight_arrays(weights))
    model = arch.Model(args, weights, backend=backend, consume=True)
    del weights
    tokenizer = Tokenizer.from_dir(folder)
    return LoadedModel(name=name, path=folder, model=model, tokenizer=tokenizer, config=config, quant=quant)

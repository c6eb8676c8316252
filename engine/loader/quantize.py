"""Quantize a model's linear weights at load, and keep the quantized copy next to the float32 weights.

Modes (`load_model(..., quant=...)`, CLI `--quant`):
  "none"     float32 weights (the reference the quantized modes are measured against).
  "q8_0"     the default: every linear weight (q/k/v/o, gate/up/down, lm_head) in Q8_0, blocks of 32
             int8 + one float16 scale. Near-lossless (KL to float32 ~1e-4 on the test prompts, see
             kernels/README_quant.md) at 1.06 bytes per weight instead of 4.
  "affine4"  MLX's 4-bit affine format, groups of 64 (mx.quantize layout): 0.56 bytes per weight,
             faster but lossier (KL to float32 up to ~0.1).

Rules it keeps:
- Only 2-D matmul weights are quantized; embeddings, norms and biases stay float32. A weight whose K is
  not a multiple of the format's block stays float32 (tiny test models).
- A tied lm_head gets its own quantized copy of the embedding table ("lm_head.weight").
- The quantized copy is written once to <model folder>/quantized/<mode>.safetensors (temp file +
  rename), tagged with a fingerprint of the float32 files; a copy whose fingerprint does not match is
  rebuilt. If the folder is read-only the model still loads (quantized in memory) after a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import mlx.core as mx

from kernels import BLOCK, QuantizedWeight, quantize

QUANT_MODES: tuple[str, ...] = ("none", "q8_0", "affine4")
DEFAULT_QUANT = "q8_0"
_CACHE_VERSION = "1"


def check_quant(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {', '.join(QUANT_MODES)}")
    return mode


def linear_weight_names(weights: dict[str, mx.array], tied: bool) -> list[str]:
    """Names of the matmul weights (HF names): every *_proj.weight, and lm_head.weight."""
    names = sorted(k for k in weights if k.endswith("_proj.weight") and weights[k].ndim == 2)
    if "lm_head.weight" in weights or tied:
        names.append("lm_head.weight")
    return names


def source_fingerprint(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors"))
    return json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def cache_file(folder: Path, mode: str) -> Path:
    return folder / "quantized" / f"{mode}.safetensors"


def _read_cache(path: Path, mode: str, fingerprint: str) -> dict[str, QuantizedWeight] | None:
    if not path.is_file():
        return None
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
    except Exception:  # a truncated or foreign file: rebuild it
        return None
    if (meta.get("format"), meta.get("version"), meta.get("source")) != (mode, _CACHE_VERSION, fingerprint):
        return None
    shapes = json.loads(meta["shapes"])
    return {
        name: QuantizedWeight(
            format=mode,
            shape=tuple(shape),
            q=arrays[f"{name}.q"],
            scales=arrays[f"{name}.scales"],
            biases=arrays.get(f"{name}.biases"),
        )
        for name, shape in shapes.items()
    }


def _write_cache(path: Path, mode: str, fingerprint: str, qws: dict[str, QuantizedWeight]) -> None:
    arrays: dict[str, mx.array] = {}
    for name, qw in qws.items():
        arrays[f"{name}.q"] = qw.q
        arrays[f"{name}.scales"] = qw.scales
        if qw.biases is not None:
            arrays[f"{name}.biases"] = qw.biases
    meta = {
        "format": mode,
        "version": _CACHE_VERSION,
        "source": fingerprint,
        "shapes": json.dumps({n: list(qw.shape) for n, qw in qws.items()}),
    }
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(tmp), arrays, metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not store the {mode} copy in {path.parent} ({e}); it will be rebuilt next load",
            stacklevel=3,
        )


def quantize_weights(
    weights: dict[str, mx.array], mode: str, *, tied: bool, folder: Path | None = None
) -> dict[str, mx.array | QuantizedWeight]:
    """Return `weights` with the linear weights replaced by QuantizedWeight (mode != "none").

    folder: the model folder whose float32 files `weights` came from; enables the on-disk copy."""
    check_quant(mode)
    if mode == "none":
        return weights
    block = BLOCK[mode]
    embed = weights["model.embed_tokens.weight"]
    source = {n: weights.get(n, embed) for n in linear_weight_names(weights, tied)}
    wanted = {n for n, w in source.items() if w.shape[1] % block == 0}
    qws = None
    if folder is not None:
        fingerprint = source_fingerprint(folder)
        qws = _read_cache(cache_file(folder, mode), mode, fingerprint)
        if qws is not None and set(qws) != wanted:
            qws = None
    if qws is None:
        qws = {n: quantize(source[n], mode) for n in sorted(wanted)}
        if folder is not None:
            _write_cache(cache_file(folder, mode), mode, fingerprint, qws)
    out: dict[str, mx.array | QuantizedWeight] = {k: v for k, v in weights.items() if k not in qws}
    if tied and "lm_head.weight" not in qws:
        out.pop("lm_head.weight", None)  # the embedding stays the head
    out.update(qws)
    return out


def weight_arrays(weights: dict[str, mx.array | QuantizedWeight]) -> list[mx.array]:
    """Every array behind a weights dict (for mx.eval)."""
    out: list[mx.array] = []
    for v in weights.values():
        out.extend(v.arrays() if isinstance(v, QuantizedWeight) else [v])
    return out


__all__ = ["DEFAULT_QUANT", "QUANT_MODES", "check_quant", "quantize_weights", "weight_arrays"]

"""Quantize a model's linear weights at load, and keep the quantized copy next to the float32 weights.

Modes (`load_model(..., quant=...)`, CLI `--quant`):
  "auto"     the default: "gguf" when the folder came from a GGUF that is still on disk (every manifest
             model), else "q8_0".
  "gguf"     the GGUF's own blocks, bit for bit, for the matrices it stores as Q5_0 or Q8_0 (for the
             Qwen2.5 GGUFs: all but ffn_down and the embedding table); the others (Q6_K / Q4_K
             ffn_down) in Q8_0. The float32 model *is* the dequantized GGUF, so these weights carry no
             error at all; what remains is the activations' rounding to Q8_0 blocks (the integer dot
             products) and Q8_0 on ffn_down. 0.69 bytes per weight for most matrices.
  "none"     float32 weights (the reference the quantized modes are measured against).
  "q8_0"     every linear weight (q/k/v/o, gate/up/down, lm_head) in Q8_0, blocks of 32
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
import numpy as np

from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import BLOCK, QuantizedWeight, quantize

QUANT_MODES: tuple[str, ...] = ("auto", "gguf", "q8_0", "affine4", "none")
DEFAULT_QUANT = "auto"
_CACHE_VERSION = "2"


def check_quant(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {', '.join(QUANT_MODES)}")
    return mode


def gguf_source(folder: Path) -> Path | None:
    """The GGUF a converted folder was made from (its source.json), if that file is still there."""
    try:
        meta = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path = Path(meta.get("gguf") or "")
    return path if meta.get("gguf") and path.is_file() else None


def _required_gguf_source(folder: Path | None) -> Path:
    source = gguf_source(folder) if folder is not None else None
    if source is None:
        raise ValueError(
            f"quant 'gguf' needs the GGUF the model was converted from, and {folder} has none"
            " (source.json missing or its file gone); use --quant q8_0"
        )
    return source


def resolve_quant(mode: str, folder: Path | None) -> str:
    """The concrete mode for `mode` ("auto" -> "gguf" or "q8_0"); "gguf" without a GGUF is an error."""
    check_quant(mode)
    if mode == "auto":
        return "gguf" if folder is not None and gguf_source(folder) is not None else "q8_0"
    if mode == "gguf":
        _required_gguf_source(folder)
    return mode


_GGUF_BLOCK_BYTES = {"Q8_0": 34, "Q5_0": 22}  # per 32 weights: fp16 d, then (qh, qs) or qs


def _from_gguf_blocks(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> QuantizedWeight:
    """Split a GGUF tensor's raw Q8_0 / Q5_0 blocks (N rows of K/32 blocks) into a QuantizedWeight."""
    N, K = shape
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(N, K // 32, _GGUF_BLOCK_BYTES[kind])
    d = blocks[..., :2].copy().view(np.float16)[..., 0]  # (N, K/32)
    if kind == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).reshape(N, K)
        return QuantizedWeight("q8_0", (N, K), mx.array(q), mx.array(d))
    high = blocks[..., 2:6].copy().view(np.uint32)[..., 0]  # (N, K/32), little-endian as written
    q = blocks[..., 6:].reshape(N, K // 2)
    return QuantizedWeight("q5_0", (N, K), mx.array(q), mx.array(d), high=mx.array(high))


def gguf_quantized(gguf_file: Path, names: set[str]) -> dict[str, QuantizedWeight]:
    """The weights among `names` (HF names) that the GGUF stores as Q8_0 or Q5_0, as they are stored."""
    import gguf

    from tiny_llm_playground.engine.loader.convert import hf_name

    out = {}
    for t in gguf.GGUFReader(str(gguf_file)).tensors:
        kind = t.tensor_type.name
        if kind not in _GGUF_BLOCK_BYTES:
            continue
        name = hf_name(t.name)
        if name in names:
            shape = tuple(int(d) for d in reversed(t.shape))  # (N, K)
            qw = _from_gguf_blocks(np.asarray(t.data), kind, shape)
            qw.validate()
            out[name] = qw
    return out


def linear_weight_names(weights: dict[str, mx.array], tied: bool) -> list[str]:
    """Names of the matmul weights (HF names): every *_proj.weight, and lm_head.weight."""
    names = sorted(k for k in weights if k.endswith("_proj.weight") and weights[k].ndim == 2)
    if "lm_head.weight" in weights or tied:
        names.append("lm_head.weight")
    return names


def source_fingerprint(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors"))
    return json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])


LAYOUTS: tuple[str, ...] = ("rows", "panels")


def cache_file(folder: Path, mode: str, layout: str = "rows") -> Path:
    return folder / "quantized" / (f"{mode}.safetensors" if layout == "rows" else f"{mode}.{layout}.safetensors")


def _read_cache(path: Path, mode: str, fingerprint: str, layout: str = "rows") -> dict[str, QuantizedWeight] | None:
    if not path.is_file():
        return None
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
    except Exception:  # a truncated or foreign file: rebuild it
        return None
    if (meta.get("format"), meta.get("version"), meta.get("source")) != (mode, _CACHE_VERSION, fingerprint):
        return None
    if meta.get("layout", "rows") != layout:
        return None
    shapes = json.loads(meta["shapes"])
    formats = json.loads(meta["formats"])
    return {
        name: QuantizedWeight(
            format=formats[name],
            shape=tuple(shape),
            q=arrays[f"{name}.q"],
            scales=arrays.get(f"{name}.scales"),
            biases=arrays.get(f"{name}.biases"),
            high=arrays.get(f"{name}.high"),
        )
        for name, shape in shapes.items()
    }


def _write_cache(
    path: Path, mode: str, fingerprint: str, qws: dict[str, QuantizedWeight], layout: str = "rows"
) -> None:
    arrays: dict[str, mx.array] = {}
    for name, qw in qws.items():
        arrays[f"{name}.q"] = qw.q
        if qw.scales is not None:
            arrays[f"{name}.scales"] = qw.scales
        if qw.biases is not None:
            arrays[f"{name}.biases"] = qw.biases
        if qw.high is not None:
            arrays[f"{name}.high"] = qw.high
    meta = {
        "format": mode,
        "version": _CACHE_VERSION,
        "source": fingerprint,
        "layout": layout,
        "shapes": json.dumps({n: list(qw.shape) for n, qw in qws.items()}),
        "formats": json.dumps({n: qw.format for n, qw in qws.items()}),
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
    weights: dict[str, mx.array],
    mode: str,
    *,
    tied: bool,
    folder: Path | None = None,
    layout: str = "rows",
) -> dict[str, mx.array | QuantizedWeight]:
    """Return `weights` with the linear weights replaced by QuantizedWeight (mode != "none").

    mode: a concrete mode (see resolve_quant; "gguf" needs `folder`'s source GGUF).
    folder: the model folder whose float32 files `weights` came from; enables the on-disk copy.
    layout: "rows" (the formats' row layout) or "panels" (q8_0 / q5_0 repacked into the 16-row panel
    formats the cpu kernels read where they can, `kernels.for_backend`; exact). Each layout has its own
    on-disk copy, so a load in either reads it straight from disk (no repacking, no second copy in memory)."""
    check_quant(mode)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if mode == "none":
        return weights
    if mode == "auto":
        raise ValueError("quantize_weights takes a concrete mode; resolve 'auto' with resolve_quant first")
    block = BLOCK["q8_0" if mode == "gguf" else mode]
    embed = weights["model.embed_tokens.weight"]
    source = {n: weights.get(n, embed) for n in linear_weight_names(weights, tied)}
    wanted = {n for n, w in source.items() if w.shape[1] % block == 0}
    qws = None
    fingerprint = source_fingerprint(folder) if folder is not None else None
    if fingerprint is not None and layout != "rows":
        qws = _read_cache(cache_file(folder, mode, layout), mode, fingerprint, layout)
        if qws is not None and set(qws) != wanted:
            qws = None
    if qws is None:
        qws = _row_weights(mode, folder=folder, fingerprint=fingerprint, wanted=wanted, source=source)
        if layout != "rows":
            qws = {n: kernels.for_backend(qw, "cpu") for n, qw in qws.items()}
            if fingerprint is not None:
                _write_cache(cache_file(folder, mode, layout), mode, fingerprint, qws, layout)
    out: dict[str, mx.array | QuantizedWeight] = {k: v for k, v in weights.items() if k not in qws}
    if tied and "lm_head.weight" not in qws:
        out.pop("lm_head.weight", None)  # the embedding stays the head
    out.update(qws)
    return out


def _row_weights(
    mode: str, *, folder: Path | None, fingerprint: str | None, wanted: set, source: dict
) -> dict[str, QuantizedWeight]:
    """The quantized weights in the row layout: from the on-disk copy, or built (and stored)."""
    qws = None
    if folder is not None:
        qws = _read_cache(cache_file(folder, mode), mode, fingerprint)
        if qws is not None and set(qws) != wanted:
            qws = None
    if qws is None:
        if mode == "gguf":
            qws = gguf_quantized(_required_gguf_source(folder), wanted)
            qws.update({n: quantize(source[n], "q8_0") for n in sorted(wanted - set(qws))})
        else:
            qws = {n: quantize(source[n], mode) for n in sorted(wanted)}
        if folder is not None:
            _write_cache(cache_file(folder, mode), mode, fingerprint, qws)
    return qws


def weight_arrays(weights: dict[str, mx.array | QuantizedWeight]) -> list[mx.array]:
    """Every array behind a weights dict (for mx.eval)."""
    out: list[mx.array] = []
    for v in weights.values():
        out.extend(v.arrays() if isinstance(v, QuantizedWeight) else [v])
    return out


__all__ = [
    "DEFAULT_QUANT",
    "LAYOUTS",
    "QUANT_MODES",
    "check_quant",
    "gguf_quantized",
    "gguf_source",
    "quantize_weights",
    "resolve_quant",
    "weight_arrays",
]

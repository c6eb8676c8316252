"""kernels: the engine's hot ops, each with a readable twin and fast backends.

- `ops.py`       the public ops (linear, quantized_linear, flash_attention, decode_attention_rows,
                 rms_norm, rope, swiglu; the paged cache's kv_pool, paged_write, paged_attention,
                 paged_copy_blocks): validate, then run what the registry picks
- `registry.py`  per op, per backend: which implementation runs, the default choice, the one fallback warning
- `ref.py`       every op in plain `mx` ops: the definition each backend is tested against
- `cpu/`         the C++ MLX extension (build: `python -m tiny_llm_playground.kernels.build`) and `cpu/ops.py`
- `metal/`, `cuda/`  the GPU twins' homes (same function names as ref.py)
- `quant.py`     quantized weight formats (QuantizedWeight, quantize, dequantize, the panel layouts)
- `bench/`       kernel benchmarks (`python -m kernels.bench.quant` from the repo root, ...)
"""

from tiny_llm_playground.kernels.ops import (
    OPS,
    available_backends,
    backend_for,
    batch_invariant,
    batch_invariant_on,
    decode_attention_rows,
    flash_attention,
    for_backend,
    kv_pool,
    linear,
    paged_attention,
    paged_copy_blocks,
    paged_write,
    panel_kernels,
    quantized_linear,
    reads_panels,
    rms_norm,
    rope,
    swiglu,
)
from tiny_llm_playground.kernels.quant import BLOCK, FORMATS, QuantizedWeight, dequantize, quantize, repack, unpack

__all__ = [
    "BLOCK",
    "FORMATS",
    "OPS",
    "QuantizedWeight",
    "available_backends",
    "backend_for",
    "batch_invariant",
    "batch_invariant_on",
    "decode_attention_rows",
    "dequantize",
    "flash_attention",
    "for_backend",
    "kv_pool",
    "linear",
    "paged_attention",
    "paged_copy_blocks",
    "paged_write",
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

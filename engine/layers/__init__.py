"""Transformer building blocks written from scratch on plain `mx` ops (no `mlx.nn`, no `mx.fast`).

Each layer that has a fast kernel takes a `backend`: "ref" runs the readable math written here, anything
else the kernel (`kernels/`), which computes the same thing; so model files never branch on backends.
"""

from tiny_llm_playground.engine.layers.attention import (
    attention,
    causal_mask,
    scaled_dot_product_attention,
    visibility_mask,
)
from tiny_llm_playground.engine.layers.basics import embedding, linear, silu, softmax
from tiny_llm_playground.engine.layers.mlp import swiglu, swiglu_mlp
from tiny_llm_playground.engine.layers.norm import RMSNorm, rms_norm
from tiny_llm_playground.engine.layers.projection import Linear, MergedLinear
from tiny_llm_playground.engine.layers.rope import RoPE

__all__ = [
    "Linear",
    "MergedLinear",
    "RMSNorm",
    "RoPE",
    "attention",
    "causal_mask",
    "embedding",
    "linear",
    "rms_norm",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
    "swiglu",
    "swiglu_mlp",
    "visibility_mask",
]

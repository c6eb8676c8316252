"""Transformer building blocks written from scratch on plain `mx` ops (no `mlx.nn`, no `mx.fast`)."""

from engine.layers.attention import causal_mask, scaled_dot_product_attention
from engine.layers.basics import embedding, linear, silu, softmax
from engine.layers.mlp import swiglu_mlp
from engine.layers.norm import RMSNorm, rms_norm
from engine.layers.rope import RoPE

__all__ = [
    "RMSNorm",
    "RoPE",
    "causal_mask",
    "embedding",
    "linear",
    "rms_norm",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
    "swiglu_mlp",
]

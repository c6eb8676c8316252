"""Qwen2 written from scratch on the layers in `engine.layers` (plain `mx` ops, no `mlx.nn`).

Order (mlx-lm's): ModelArgs -> Attention -> MLP -> TransformerBlock -> Model -> sanitize.
Weights use the Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, ...), so one folder loads
here, in mlx-lm and in transformers. Qwen2 specifics: q/k/v projections have biases, o_proj has none;
RoPE is rotate-half with a large base (1e6); grouped-query attention (14 query heads share 2 KV heads in
the 0.5B model). `backend` is handed to the layers ("ref" = their readable math, None = the fastest
kernels); they, not this file, choose kernels and weight layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx

from tiny_llm_playground.engine.cache import KVCache, make_cache
from tiny_llm_playground.engine.layers import Linear, MergedLinear, RMSNorm, RoPE, attention, embedding, swiglu
from tiny_llm_playground.engine.layers.attention import Mask


@dataclass
class ModelArgs:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    head_dim: int | None = None
    model_type: str = "qwen2"

    def __post_init__(self) -> None:
        if self.model_type != "qwen2":
            raise ValueError(f"this model file implements qwen2, not {self.model_type!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of"
                f" num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, params: dict) -> ModelArgs:
        """Keep only our own fields (HF configs carry many more)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


class Attention:
    def __init__(self, args: ModelArgs, w: dict[str, mx.array], backend: str | None) -> None:
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = self.head_dim**-0.5
        self.backend = backend
        # q, k and v of one input: one matmul where their weights stack (engine/layers/projection.py).
        self.qkv = MergedLinear([w[f"{n}_proj.weight"] for n in "qkv"], [w[f"{n}_proj.bias"] for n in "qkv"], backend)
        self.o_proj = Linear(w["o_proj.weight"], None, backend)
        self.rope = RoPE(self.head_dim, args.rope_theta, backend=backend)

    def __call__(self, x: mx.array, cache: KVCache | None = None, mask: Mask = "causal") -> mx.array:
        B, L, _ = x.shape
        q, k, v = self.qkv(x)  # (B, L, H*D), (B, L, H_kv*D) x 2
        offset = 0 if cache is None else cache.offset
        q = self.rope.rotate(q.reshape(B, L, self.n_heads, self.head_dim), offset)  # (B, H, L, D)
        k = self.rope.rotate(k.reshape(B, L, self.n_kv_heads, self.head_dim), offset)  # (B, H_kv, L, D)
        v = v.reshape(B, L, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, H_kv, L, D)
        if cache is None:
            out = attention(q, k, v, scale=self.scale, mask=mask, backend=self.backend)  # (B, H, L, D)
        else:  # the cache stores k, v and attends (causally) over every key each query may see
            out = cache.attend(q, k, v, scale=self.scale, backend=self.backend)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, self.n_heads * self.head_dim))


class MLP:
    def __init__(self, w: dict[str, mx.array], backend: str | None) -> None:
        self.backend = backend
        self.gate_up = MergedLinear([w["gate_proj.weight"], w["up_proj.weight"]], backend=backend)
        self.down_proj = Linear(w["down_proj.weight"], None, backend)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = self.gate_up(x)  # (..., F) x 2
        return self.down_proj(swiglu(gate, up, self.backend))


class TransformerBlock:
    """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, args: ModelArgs, w: dict[str, mx.array], backend: str | None) -> None:
        self.input_layernorm = RMSNorm(w["input_layernorm.weight"], args.rms_norm_eps, backend)
        self.post_attention_layernorm = RMSNorm(w["post_attention_layernorm.weight"], args.rms_norm_eps, backend)
        self.self_attn = Attention(args, _sub(w, "self_attn."), backend)
        self.mlp = MLP(_sub(w, "mlp."), backend)

    def __call__(self, x: mx.array, cache: KVCache | None = None, mask: Mask = "causal") -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model:
    def __init__(
        self, args: ModelArgs, weights: dict[str, mx.array], backend: str | None = None, *, consume: bool = False
    ) -> None:
        """weights: sanitized HF-named float arrays; linear weights may be kernels.QuantizedWeight
        (engine/loader/quantize.py). backend: "ref" = the readable math of engine/layers (the path inspect
        shows), None = the fastest kernels available, or a kernel backend's name.
        consume: take each layer's entries out of `weights` as it is built, so a weight the layers replace
        (stacked, repacked) is freed at once instead of when the caller drops the dict (the loader passes
        True: peak memory stays near one copy of the weights)."""
        self.args = args
        self.backend = backend
        missing = [k for k in required_weight_names(args) if k not in weights]
        if missing:
            raise ValueError(f"missing {len(missing)} weights, e.g. {missing[:3]}")
        self.embed_tokens = weights["model.embed_tokens.weight"]  # (V, D)
        self.layers = [
            TransformerBlock(args, _sub(weights, f"model.layers.{i}.", pop=consume), backend)
            for i in range(args.num_hidden_layers)
        ]
        self.norm = RMSNorm(weights["model.norm.weight"], args.rms_norm_eps, backend)
        # A quantized model carries its own (quantized) head even when the embedding is tied.
        head = weights.pop("lm_head.weight", None) if consume else weights.get("lm_head.weight")
        self.lm_head = Linear(self.embed_tokens if head is None else head, None, backend)

    def make_cache(self) -> list[KVCache]:
        return make_cache(self.args.num_hidden_layers)

    def hidden_states(self, ids: mx.array, cache: list[KVCache] | None = None, mask: Mask = "causal") -> mx.array:
        """ids (B, L) int -> final normed hidden states (B, L, D). mask: "causal" (a decoder; the only
        choice with a cache), None (every token sees every token) or a mask array (B, H, L, L)."""
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {ids.shape}")
        if cache is not None and not isinstance(mask, str):
            raise ValueError("a KV cache attends causally: pass mask='causal' (the default) with a cache")
        h = embedding(ids, self.embed_tokens)  # (B, L, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, None if cache is None else cache[i], mask)
        return self.norm(h)

    def logits(self, h: mx.array) -> mx.array:
        """(..., D) -> (..., V)."""
        return self.lm_head(h)

    def __call__(
        self, ids: mx.array, cache: list[KVCache] | None = None, *, last_only: bool = False, mask: Mask = "causal"
    ) -> mx.array:
        """ids (B, L) -> logits (B, L, V), or (B, 1, V) for the last position when last_only
        (generation needs only that one, and the vocab projection is the largest matmul)."""
        h = self.hidden_states(ids, cache, mask)
        if last_only:
            h = h[:, -1:, :]
        return self.logits(h)


def required_weight_names(args: ModelArgs) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not args.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{n}_proj.{t}" for n in "qkv" for t in ("weight", "bias")]
        names += [p + "self_attn.o_proj.weight"]
        names += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
    return names


def sanitize(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Drop what the model does not use (rotary caches, a tied head's copy) and cast to float32."""
    out = {}
    for k, v in weights.items():
        if "rotary_emb.inv_freq" in k:
            continue
        if k == "lm_head.weight" and args.tie_word_embeddings:
            continue
        out[k] = v.astype(mx.float32) if v.dtype != mx.float32 else v
    return out


def _sub(weights: dict[str, mx.array], prefix: str, *, pop: bool = False) -> dict[str, mx.array]:
    """The entries under `prefix`, with the prefix removed (and taken out of `weights` when pop)."""
    n = len(prefix)
    keys = [k for k in weights if k.startswith(prefix)]
    return {k[n:]: weights.pop(k) if pop else weights[k] for k in keys}

"""Qwen2 written from scratch on the layers in `engine.layers` (plain `mx` ops, no `mlx.nn`).

Order: ModelArgs -> Attention -> MLP -> TransformerBlock -> Qwen2Model -> sanitize.
Weights use the Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, ...), so one folder loads
here, in mlx-lm and in transformers. Qwen2 specifics: q/k/v projections have biases, o_proj has none;
RoPE is rotate-half with a large base (1e6); grouped-query attention (14 query heads share 2 KV heads
in the 0.5B model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import accumulate

import mlx.core as mx

import kernels
from engine.cache import KVCache, make_cache
from engine.layers import RMSNorm, RoPE, embedding, linear, scaled_dot_product_attention, swiglu_mlp
from kernels.quant import QuantizedWeight, concat_rows


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
        self.w = w  # q_proj.{weight,bias}, k_proj.*, v_proj.*, o_proj.weight
        self.rope = RoPE(self.head_dim, args.rope_theta)
        self.backend = backend
        # Fast path: q, k (and v when it shares their format) as one stacked quantized matmul, so x is
        # rounded and the thread pool woken once. The stacked copy replaces the parts in w (a slice of
        # it would be copied on every call); `project` is the one way to get q, k, v.
        self.fused: tuple[QuantizedWeight, mx.array, list[int]] | None = None
        if backend != "ref":
            names = ["q_proj", "k_proj", "v_proj"]
            fused = concat_rows([w[f"{n}.weight"] for n in names])
            if fused is None:
                names = names[:2]
                fused = concat_rows([w[f"{n}.weight"] for n in names])
            if fused is not None:
                sizes = [w.pop(f"{n}.weight").shape[0] for n in names]
                self.fused = (
                    kernels.for_backend(fused, backend),
                    mx.concatenate([w[f"{n}.bias"] for n in names]),
                    sizes,
                )
            _to_backend_layout(w, backend)

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """x (B, L, E) -> q (B, L, H*D), k, v (B, L, H_kv*D), before RoPE."""
        w, be = self.w, self.backend
        if self.fused is None:
            return tuple(linear(x, w[f"{n}_proj.weight"], w[f"{n}_proj.bias"], be) for n in "qkv")
        fused, bias, sizes = self.fused
        parts = mx.split(linear(x, fused, bias, be), list(accumulate(sizes))[:-1], axis=-1)  # q, k (, v)
        v = parts[2] if len(parts) == 3 else linear(x, w["v_proj.weight"], w["v_proj.bias"], be)
        return parts[0], parts[1], v

    def __call__(self, x: mx.array, cache: KVCache | None = None) -> mx.array:
        B, L, _ = x.shape
        w, be = self.w, self.backend
        q, k, v = self.project(x)  # (B, L, H*D), (B, L, H_kv*D) x 2
        q = q.reshape(B, L, self.n_heads, self.head_dim)  # (B, L, H, D)
        k = k.reshape(B, L, self.n_kv_heads, self.head_dim)
        v = v.reshape(B, L, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, H_kv, L, D)
        offset = 0 if cache is None else cache.offset
        if be == "ref":  # the readable RoPE (engine/layers/rope.py) on (B, H, L, D)
            q = self.rope(q.transpose(0, 2, 1, 3), offset)  # (B, H, L, D)
            k = self.rope(k.transpose(0, 2, 1, 3), offset)  # (B, H_kv, L, D)
        else:  # the kernel: the same rotation fused with the transpose, angles once per position
            q = kernels.rope(q, self.rope.inv_freq, offset, backend=be)  # (B, H, L, D)
            k = kernels.rope(k, self.rope.inv_freq, offset, backend=be)  # (B, H_kv, L, D)
        if be != "ref" and L == 1 and getattr(cache, "fused_decode", False):
            # A decode step (one row, or a continuous batch's rows): store and attend per row in one kernel
            # (no padding, no separate cache ops).
            out = cache.decode_attention(q, k, v, scale=self.scale, backend=be)
            out = out.transpose(0, 2, 1, 3).reshape(B, L, self.n_heads * self.head_dim)
            return linear(out, w["o_proj.weight"], None, be)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, H_kv, S, D), S = offset + L
        if be == "ref":  # the readable math (engine/layers/attention.py), as inspect shows it
            mask = "causal" if L > 1 else None
            if cache is not None:
                mask = cache.attention_mask(L)  # a batch of ragged rows masks each row's padding
            out = scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)  # (B, H, L, D)
        else:  # the kernel: causal over each row's own keys; ragged rows give lengths, not a mask
            lengths = None if cache is None else cache.kv_lengths()
            out = kernels.flash_attention(q, k, v, scale=self.scale, kv_lengths=lengths, backend=be)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, self.n_heads * self.head_dim)
        return linear(out, w["o_proj.weight"], None, be)


class MLP:
    def __init__(self, w: dict[str, mx.array], backend: str | None) -> None:
        self.w = w
        self.backend = backend
        # Fast path: gate and up as one stacked quantized matmul, replacing the two in w (see Attention).
        self.fused = None if backend == "ref" else concat_rows([w["gate_proj.weight"], w["up_proj.weight"]])
        if self.fused is not None:
            del w["gate_proj.weight"], w["up_proj.weight"]
            self.fused = kernels.for_backend(self.fused, backend)
        if backend != "ref":
            _to_backend_layout(w, backend)

    def project(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """x (..., E) -> gate, up (..., F)."""
        w, be = self.w, self.backend
        if self.fused is None:
            return linear(x, w["gate_proj.weight"], None, be), linear(x, w["up_proj.weight"], None, be)
        g, u = mx.split(linear(x, self.fused, None, be), 2, axis=-1)
        return g, u

    def __call__(self, x: mx.array) -> mx.array:
        w = self.w
        if self.fused is not None:
            g, u = self.project(x)
            return linear(kernels.swiglu(g, u, backend=self.backend), w["down_proj.weight"], None, self.backend)
        return swiglu_mlp(x, w["gate_proj.weight"], w["up_proj.weight"], w["down_proj.weight"], self.backend)


class TransformerBlock:
    """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, args: ModelArgs, w: dict[str, mx.array], backend: str | None) -> None:
        self.input_layernorm = RMSNorm(w["input_layernorm.weight"], args.rms_norm_eps, backend)
        self.post_attention_layernorm = RMSNorm(w["post_attention_layernorm.weight"], args.rms_norm_eps, backend)
        self.self_attn = Attention(args, _sub(w, "self_attn."), backend)
        self.mlp = MLP(_sub(w, "mlp."), backend)

    def __call__(self, x: mx.array, cache: KVCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen2Model:
    def __init__(
        self, args: ModelArgs, weights: dict[str, mx.array], backend: str | None = None, *, consume: bool = False
    ) -> None:
        """weights: sanitized HF-named float arrays; linear weights may be kernels.QuantizedWeight
        (engine/loader/quantize.py). backend: kernel backend for linear layers
        (None = fastest available, "ref" = plain mx ops). Attention, RMSNorm and the SwiGLU product
        go through kernels.flash_attention / rms_norm / swiglu unless backend is "ref", which keeps the
        readable math of engine/layers (the path inspect shows).
        consume: take each layer's entries out of `weights` as it is built, so a weight the fast path
        replaces (stacked, repacked) is freed at once instead of when the caller drops the dict (the
        loader passes True: peak memory stays near one copy of the weights)."""
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
        self.lm_head = weights["lm_head.weight"] if "lm_head.weight" in weights else self.embed_tokens
        if backend != "ref":
            if consume:
                weights.pop("lm_head.weight", None)
            self.lm_head = kernels.for_backend(self.lm_head, backend)

    def make_cache(self) -> list[KVCache]:
        return make_cache(self.args.num_hidden_layers)

    def hidden_states(self, ids: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        """ids (B, L) int -> final normed hidden states (B, L, D)."""
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {ids.shape}")
        h = embedding(ids, self.embed_tokens)  # (B, L, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, None if cache is None else cache[i])
        return self.norm(h)

    def logits(self, h: mx.array) -> mx.array:
        """(..., D) -> (..., V)."""
        return linear(h, self.lm_head, None, self.backend)

    def __call__(self, ids: mx.array, cache: list[KVCache] | None = None, *, last_only: bool = False) -> mx.array:
        """ids (B, L) -> logits (B, L, V), or (B, 1, V) for the last position when last_only
        (generation needs only that one, and the vocab projection is the largest matmul)."""
        h = self.hidden_states(ids, cache)
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


def _to_backend_layout(w: dict, backend: str | None) -> None:
    """Replace each quantized weight in w by the layout the backend's kernels read fastest (the panel
    formats on the cpu kernels: kernels.for_backend; exact, the same blocks reordered)."""
    for k, v in w.items():
        if isinstance(v, QuantizedWeight):
            w[k] = kernels.for_backend(v, backend)


def _sub(weights: dict[str, mx.array], prefix: str, *, pop: bool = False) -> dict[str, mx.array]:
    """The entries under `prefix`, with the prefix removed (and taken out of `weights` when pop)."""
    n = len(prefix)
    keys = [k for k in weights if k.startswith(prefix)]
    return {k[n:]: weights.pop(k) if pop else weights[k] for k in keys}


__all__ = ["ModelArgs", "Qwen2Model", "sanitize", "required_weight_names"]

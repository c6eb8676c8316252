"""Inspect one forward pass: attention probabilities, q/k around RoPE, hidden states, the logit lens.

`inspect_forward(model, token_ids)` re-runs the model on the readable path, one step at a time, and
returns frozen dataclasses of float32 numpy arrays (the playground's views and the tests read them; no
MLX array leaves this module). It walks the same layer objects as the model's `hidden_states` — same
weights, same norms, same RoPE — but computes attention with `engine.layers.scaled_dot_product_attention(
..., return_probs=True)` so the softmax probabilities exist as data. Linear layers go through the model's
own kernel backend (the fast CPU kernel computes exactly what the "ref" twin does, and ref matmuls are
too slow on CPU for 24 layers x 500 tokens). The tests check this path against the model's own forward.

Rules it keeps:
- Call it on the engine thread (MLX arrays must not cross threads); the results are plain numpy.
- Memory grows as layers x heads x L^2: `layers=` limits which layers keep attention and q/k
  (hidden states, L x D per layer, are always kept: the logit lens needs every layer).
- `logit_lens` applies the final norm + lm_head to each layer's hidden state; the vocabulary projection
  is the most expensive matmul, so callers pick the positions (`positions=`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np

from tiny_llm_playground.engine.layers import embedding, scaled_dot_product_attention
from tiny_llm_playground.engine.models.qwen2 import Model, TransformerBlock

MAX_INSPECT_TOKENS = 512  # the playground's limit: attention alone is layers x heads x L^2 x 4 bytes


@dataclass(frozen=True)
class LayerAttention:
    """One layer's attention, per head. H query heads share H_kv key heads (GQA)."""

    layer: int
    probs: np.ndarray = field(repr=False)  # (H, L, L) float32, row i = query i's weights over keys 0..i (causal)
    q_pre: np.ndarray = field(repr=False)  # (H, L, D) queries before RoPE
    q_post: np.ndarray = field(repr=False)  # (H, L, D) queries after RoPE
    k_pre: np.ndarray = field(repr=False)  # (H_kv, L, D) keys before RoPE
    k_post: np.ndarray = field(repr=False)  # (H_kv, L, D) keys after RoPE

    def kv_head(self, head: int) -> int:
        """The key/value head query head `head` reads (heads are grouped in order)."""
        return head // (self.q_pre.shape[0] // self.k_pre.shape[0])


@dataclass(frozen=True)
class LogitLens:
    """Top tokens predicted from each layer's hidden state at the chosen positions."""

    positions: tuple[int, ...]  # which prompt positions (columns)
    token_ids: np.ndarray = field(repr=False)  # (n_layers, P, top) int64, most probable first
    probs: np.ndarray = field(repr=False)  # (n_layers, P, top) float32 softmax probabilities


@dataclass(frozen=True)
class InspectResult:
    token_ids: tuple[int, ...]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    attention: tuple[LayerAttention, ...]  # the layers asked for, in order
    hidden: np.ndarray = field(repr=False)  # (n_layers, L, D) residual stream after each block (not normed)
    final_hidden: np.ndarray = field(repr=False)  # (L, D) after the final RMSNorm
    final_logits: np.ndarray = field(
        repr=False
    )  # (V,) float32 logits of the last position (what generation samples from)
    lens: LogitLens | None = None

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(a.layer for a in self.attention)

    def layer(self, index: int) -> LayerAttention:
        """The attention record of layer `index`; KeyError if it was not kept."""
        for a in self.attention:
            if a.layer == index:
                return a
        raise KeyError(f"layer {index} was not inspected (kept: {list(self.layers)})")


def _np(x: mx.array) -> np.ndarray:
    out = np.array(x.astype(mx.float32), dtype=np.float32)
    out.flags.writeable = False  # results are frozen: nobody edits the arrays in place either
    return out


def _traced_block(block: TransformerBlock, x: mx.array, keep: bool):
    """TransformerBlock.__call__ written out, returning (h, (probs, q_pre, q_post, k_pre, k_post))."""
    attn = block.self_attn
    B, L, _ = x.shape
    xn = block.input_layernorm(x)
    q, k, v = attn.qkv(xn)  # (B, L, H*D), (B, L, H_kv*D) x 2
    q_pre = q.reshape(B, L, attn.n_heads, attn.head_dim).transpose(0, 2, 1, 3)  # (B, H, L, D)
    k_pre = k.reshape(B, L, attn.n_kv_heads, attn.head_dim).transpose(0, 2, 1, 3)  # (B, H_kv, L, D)
    v = v.reshape(B, L, attn.n_kv_heads, attn.head_dim).transpose(0, 2, 1, 3)
    q_post, k_post = attn.rope(q_pre, 0), attn.rope(k_pre, 0)
    mask = "causal" if L > 1 else None
    out, probs = scaled_dot_product_attention(
        q_post, k_post, v, scale=attn.scale, mask=mask, return_probs=True
    )  # (B, H, L, D), (B, H, L, L)
    out = out.transpose(0, 2, 1, 3).reshape(B, L, attn.n_heads * attn.head_dim)
    h = x + attn.o_proj(out)
    h = h + block.mlp(block.post_attention_layernorm(h))
    trace = (probs[0], q_pre[0], q_post[0], k_pre[0], k_post[0]) if keep else None
    return h, trace


def inspect_forward(
    model: Model,
    token_ids: Sequence[int],
    *,
    layers: Iterable[int] | None = None,
    lens_positions: Iterable[int] | None = (),
    lens_top: int = 5,
) -> InspectResult:
    """One forward pass over `token_ids` that records what happens inside.

    layers: which layers keep attention probabilities and q/k (None = all).
    lens_positions: positions for the logit lens stored in the result (() = no lens, None = all).
    """
    ids = [int(t) for t in token_ids]
    args = model.args
    if not ids:
        raise ValueError("nothing to inspect: the token list is empty")
    bad = [t for t in ids if not 0 <= t < args.vocab_size]
    if bad:
        raise ValueError(f"token ids out of range [0, {args.vocab_size}): {bad[:5]}")
    keep = set(range(args.num_hidden_layers)) if layers is None else {int(i) for i in layers}
    wrong = sorted(i for i in keep if not 0 <= i < args.num_hidden_layers)
    if wrong:
        raise ValueError(f"layers {wrong} do not exist (the model has {args.num_hidden_layers})")

    h = embedding(mx.array([ids]), model.embed_tokens)  # (1, L, D)
    attention: list[LayerAttention] = []
    hidden: list[np.ndarray] = []
    for i, block in enumerate(model.layers):
        h, trace = _traced_block(block, h, i in keep)
        mx.eval(h, *(trace or ()))  # evaluate layer by layer: bounds the graph and the memory
        hidden.append(np.array(h[0], dtype=np.float32))
        if trace is not None:
            attention.append(LayerAttention(i, *(_np(t) for t in trace)))
    final = model.norm(h)  # (1, L, D)
    last_logits = model.logits(final[:, -1])  # (1, V)
    mx.eval(final, last_logits)
    hidden_all = np.stack(hidden)
    hidden_all.flags.writeable = False
    result = InspectResult(
        token_ids=tuple(ids),
        n_layers=args.num_hidden_layers,
        n_heads=args.num_attention_heads,
        n_kv_heads=args.num_key_value_heads,
        head_dim=args.head_dim,
        rope_base=float(args.rope_theta),
        attention=tuple(attention),
        hidden=hidden_all,
        final_hidden=_np(final[0]),
        final_logits=_np(last_logits[0]),
    )
    if lens_positions is None or tuple(lens_positions):
        lens = logit_lens(result, model, top=lens_top, positions=lens_positions)
        result = replace(result, lens=lens)
    return result


def logit_lens(result: InspectResult, model: Model, top: int = 5, positions: Iterable[int] | None = None) -> LogitLens:
    """What each layer would predict if it were the last: softmax(lm_head(norm(hidden[layer, pos]))).

    positions: prompt positions to decode (None = all). Cost: n_layers x P x D x V multiply-adds.
    The last layer's row is the model's own prediction (its hidden state goes through the same norm).
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    pos = tuple(range(result.length)) if positions is None else tuple(int(p) for p in positions)
    bad = [p for p in pos if not 0 <= p < result.length]
    if bad or not pos:
        raise ValueError(f"positions must be a non-empty subset of 0..{result.length - 1}, got {bad or pos}")
    n_layers = result.hidden.shape[0]
    ids_out = np.zeros((n_layers, len(pos), top), dtype=np.int64)
    probs_out = np.zeros((n_layers, len(pos), top), dtype=np.float32)
    for layer in range(n_layers):  # one layer at a time: P x V logits, not n_layers x P x V
        h = mx.array(result.hidden[layer][list(pos)])  # (P, D)
        logits = model.logits(model.norm(h))  # (P, V)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        idx = mx.argpartition(-logp, kth=top - 1, axis=-1)[:, :top]  # (P, top), unordered
        vals = mx.take_along_axis(logp, idx, axis=-1)
        mx.eval(idx, vals)
        idx_np, vals_np = np.array(idx), np.array(vals, dtype=np.float32)
        order = np.argsort(-vals_np, axis=-1, kind="stable")
        ids_out[layer] = np.take_along_axis(idx_np, order, axis=-1)
        probs_out[layer] = np.exp(np.take_along_axis(vals_np, order, axis=-1))
    ids_out.flags.writeable = False
    probs_out.flags.writeable = False
    return LogitLens(positions=pos, token_ids=ids_out, probs=probs_out)


__all__ = [
    "MAX_INSPECT_TOKENS",
    "InspectResult",
    "LayerAttention",
    "LogitLens",
    "inspect_forward",
    "logit_lens",
]

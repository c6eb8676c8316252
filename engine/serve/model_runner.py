"""Runs the model side of a step: one batched decode forward, and the prefill chunk forwards.

The runner owns the K/V arrays behind each cache slot (per layer a `DenseKVBuffer`, created on first
use, released when the slot is freed). For every forward it builds each layer's cache view over the
rows' buffers at the lengths their sequences hold (`Sequence.num_cached`, the one count of a sequence's
position), and advances those counts once the forward ran.

Decode rows go through the model as one (B, 1) batch, so every linear layer runs one (B, K) x (K, N)
matmul instead of B matrix-vector products: that is where batching pays (the weights are read once per
step, not once per sequence); attention stays per row (per-row RoPE positions, per-row buffers, one
kernel call per layer). Prefill chunks of one length run as one (B, chunk) forward; only a prompt's last
chunk computes logits. Without a cache (`use_cache=False`, the week-1 baseline) every forward recomputes
each sequence from its first token.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from tiny_llm_playground.engine.cache import DenseKVBuffer, DenseKVCache, KVCache
from tiny_llm_playground.engine.models import CausalLM
from tiny_llm_playground.engine.serve.sequence import Sequence


class ModelRunner:
    def __init__(self, model: CausalLM, *, use_cache: bool = True) -> None:
        self.model = model
        self.use_cache = use_cache
        self._buffers: dict[int, list[DenseKVBuffer]] = {}  # slot -> per-layer buffers

    def _slot_buffers(self, slot: int) -> list[DenseKVBuffer]:
        if slot not in self._buffers:
            self._buffers[slot] = [DenseKVBuffer() for _ in range(self.model.args.num_hidden_layers)]
        return self._buffers[slot]

    def caches(self, seqs: list[Sequence]) -> list[KVCache] | None:
        """Per layer, the sequences' caches as one view (row b = seqs[b]) at the lengths they hold."""
        if not self.use_cache:
            return None
        buffers = [self._slot_buffers(s.slot) for s in seqs]
        lengths = [s.num_cached for s in seqs]
        positions = mx.array(lengths) if len(seqs) > 1 else None  # (B,), shared by every layer's view
        layers = range(self.model.args.num_hidden_layers)
        return [DenseKVCache.over([b[i] for b in buffers], lengths, positions) for i in layers]

    def release(self, slot: int) -> None:
        for buf in self._buffers.pop(slot, []):
            buf.release()

    def cache_bytes(self, seq: Sequence) -> int:
        """Bytes of the K/V of the tokens `seq` has cached (tokens x layers x 2 x kv heads x head dim x dtype)."""
        return seq.num_cached * sum(b.bytes_per_token for b in self._buffers.get(seq.slot, []))

    def allocated_bytes(self, slot: int | None) -> int:
        """Bytes of the buffers behind `slot` (dense buffers grow in steps of 256 tokens)."""
        return sum(b.nbytes for b in self._buffers.get(slot, [])) if slot is not None else 0

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        """Feed each sequence its last sampled token in one batched forward; logits (B, V) float32."""
        if self.use_cache:
            ids = mx.array([[s.next_input] for s in seqs])  # (B, 1)
            logits = self.model(ids, self.caches(seqs), last_only=True)[:, 0]  # (B, V)
        else:  # rows of different lengths, each recomputed from its first token
            logits = mx.concatenate([self.model(mx.array([s.history]), None, last_only=True)[:, 0] for s in seqs])
        mx.eval(logits)
        for s in seqs:
            s.num_cached += 1
        return np.array(logits, dtype=np.float32)

    def prefill(self, seqs: list[Sequence], n: int) -> list[np.ndarray | None]:
        """The next n prompt tokens of every sequence in one (B, n) forward; logits (V,) for each sequence
        whose prompt this chunk completes, None for the others."""
        if not self.use_cache and any(s.num_cached or n != len(s.prompt_ids) for s in seqs):
            raise ValueError("without a KV cache a prompt is prefilled in one chunk")
        ids = mx.array([s.prompt_ids[s.num_cached : s.num_cached + n] for s in seqs])  # (B, n)
        caches = self.caches(seqs)
        last = [s.num_cached + n == len(s.prompt_ids) for s in seqs]
        if any(last):
            out = self.model(ids, caches, last_only=True)[:, 0]  # (B, V)
        else:
            out = self.model.hidden_states(ids, caches)  # the vocab projection is not needed yet
        mx.eval(out)
        for s in seqs:
            s.num_cached += n
        rows = np.array(out, dtype=np.float32) if any(last) else None
        return [rows[b] if done else None for b, done in enumerate(last)]

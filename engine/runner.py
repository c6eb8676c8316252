"""Executes the model side of a step: one batched decode forward and the prefill chunk forwards.

The runner owns the K/V arrays behind each slot (a list of per-layer dense caches, created on first
use and released when the slot is freed). Decode rows go through the model as one (B, 1) batch, so every
linear layer runs one (B, K) x (K, N) matmul instead of B matrix-vector products: that is where batching
pays (the weights are read once per step, not once per sequence). Attention stays per row through
`BatchKVCache` (per-row RoPE offsets, per-row caches; one kernel call per layer for a decode step).
Prefill chunks of the same length run together as one (B, chunk) forward (one (B x chunk)-row matmul per
layer: the int8 GEMM is more efficient on more rows), others as their own (1, chunk) forwards; only a
prompt's last chunk computes logits.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from engine.cache import BatchKVCache, KVCache
from engine.models.qwen2 import Qwen2Model
from engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: Qwen2Model) -> None:
        self.model = model
        self._caches: dict[int, list[KVCache]] = {}  # slot -> per-layer caches

    def cache(self, slot: int) -> list[KVCache]:
        if slot not in self._caches:
            self._caches[slot] = self.model.make_cache()
        return self._caches[slot]

    def release(self, slot: int) -> None:
        for c in self._caches.pop(slot, []):
            c.release()

    def cache_bytes(self, slot: int | None) -> int:
        """Bytes of the K/V of the tokens cached in `slot` (tokens x layers x 2 x kv heads x head dim x dtype)."""
        return sum(c.used_nbytes for c in self._caches.get(slot, [])) if slot is not None else 0

    def allocated_bytes(self, slot: int | None) -> int:
        """Bytes of the buffers behind `slot` (dense caches grow in steps of 256 tokens)."""
        return sum(c.nbytes for c in self._caches.get(slot, [])) if slot is not None else 0

    def _batch_cache(self, seqs: list[Sequence]) -> list[BatchKVCache]:
        """Per layer, the sequences' own caches of that layer as one batch (row b = seqs[b])."""
        per_seq = [self.cache(s.slot) for s in seqs]
        return [BatchKVCache([c[i] for c in per_seq]) for i in range(len(per_seq[0]))]

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        """Feed each sequence its last sampled token in one batched forward; logits (B, V) float32."""
        ids = mx.array([[s.next_input] for s in seqs])  # (B, 1)
        if len(seqs) == 1:
            cache = self.cache(seqs[0].slot)
        else:
            cache = self._batch_cache(seqs)
        logits = self.model(ids, cache, last_only=True)  # (B, 1, V)
        mx.eval(logits)
        for s in seqs:
            s.num_cached += 1
        return np.array(logits[:, 0, :], dtype=np.float32)

    def prefill_batch(self, seqs: list[Sequence], n: int) -> list[np.ndarray | None]:
        """The next n prompt tokens of every sequence in one (B, n) forward; logits (V,) for each sequence
        whose prompt this chunk completes, None for the others."""
        if len(seqs) == 1:
            return [self.prefill(seqs[0], n)]
        ids = mx.array([s.prompt_ids[s.num_cached : s.num_cached + n] for s in seqs])  # (B, n)
        cache = self._batch_cache(seqs)
        last = [s.num_cached + n == len(s.prompt_ids) for s in seqs]
        if any(last):
            out = self.model(ids, cache, last_only=True)  # (B, 1, V)
        else:
            out = self.model.hidden_states(ids, cache)
        mx.eval(out)
        for s in seqs:
            s.num_cached += n
        rows = np.array(out[:, -1], dtype=np.float32) if any(last) else None
        return [rows[b] if done else None for b, done in enumerate(last)]

    def prefill(self, seq: Sequence, n: int) -> np.ndarray | None:
        """Store the next n prompt tokens in the cache; the last chunk returns the logits (V,)."""
        start = seq.num_cached
        ids = mx.array([seq.prompt_ids[start : start + n]])  # (1, n)
        cache = self.cache(seq.slot)
        last = start + n == len(seq.prompt_ids)
        if last:
            out = self.model(ids, cache, last_only=True)  # (1, 1, V)
        else:
            out = self.model.hidden_states(ids, cache)  # the vocab projection is not needed yet
        mx.eval(out)
        seq.num_cached += n
        return np.array(out[0, -1], dtype=np.float32) if last else None

"""Runs the model side of a step: one batched decode forward, and the prefill chunk forwards.

The runner owns the K/V arrays behind the cache: with the paged cache one `PagedKVPool` whose blocks the
block manager hands out (it says which blocks each sequence holds), with the dense cache a `DenseKVBuffer`
per layer per sequence (made on first use, released when the sequence leaves). For every forward it
builds each layer's cache view over the rows' storage at the lengths their sequences hold
(`Sequence.num_cached`, the one count of a sequence's position), and advances those counts once the
forward ran.

Decode rows go through the model as one (B, 1) batch, so every linear layer runs one (B, K) x (K, N)
matmul instead of B matrix-vector products: that is where batching pays (the weights are read once per
step, not once per sequence); attention stays per row (per-row RoPE positions, per-row blocks or
buffers, one kernel call per layer). Prefill chunks of one length run as one (B, chunk) forward; only a
prompt's last chunk computes logits. Without a cache (`use_cache=False`, the week-1 baseline) every
forward recomputes each sequence from its first token.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.cache import BlockManager, DenseKVBuffer, DenseKVCache, KVCache, PagedKVCache
from tiny_llm_playground.engine.cache.paged import PagedKVPool
from tiny_llm_playground.engine.models import CausalLM
from tiny_llm_playground.engine.serve.sequence import Sequence


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        *,
        use_cache: bool = True,
        blocks: BlockManager | None = None,
        backend=None,
        batch_invariant: bool = False,
    ) -> None:
        """blocks: the paged cache's block manager (None: dense per-sequence buffers). batch_invariant: build
        every forward under kernels.batch_invariant (EngineConfig.batch_invariant)."""
        self.model = model
        self.batch_invariant = batch_invariant
        self.use_cache = use_cache
        self.blocks = blocks
        layers = model.args.num_hidden_layers
        self.pool = None if blocks is None else PagedKVPool(layers, blocks.num_blocks, blocks.block_size, backend)
        self._buffers: dict[int, list[DenseKVBuffer]] = {}  # dense: sequence id -> per-layer buffers

    def _dense_buffers(self, rid: int) -> list[DenseKVBuffer]:
        if rid not in self._buffers:
            self._buffers[rid] = [DenseKVBuffer() for _ in range(self.model.args.num_hidden_layers)]
        return self._buffers[rid]

    def caches(self, seqs: list[Sequence], new_tokens: int) -> list[KVCache] | None:
        """Per layer, the sequences' caches as one view (row b = seqs[b]) at the lengths they hold, for a
        forward that adds `new_tokens` to each."""
        if not self.use_cache:
            return None
        lengths = [s.num_cached for s in seqs]
        positions = mx.array(lengths) if len(set(lengths)) > 1 else None  # (B,), shared by every layer
        layers = range(self.model.args.num_hidden_layers)
        if self.pool is None:
            buffers = [self._dense_buffers(s.id) for s in seqs]
            return [DenseKVCache.over([b[i] for b in buffers], lengths, positions) for i in layers]
        self.pool.copy_blocks(self.blocks.take_copies())  # copy-on-write planned at admission
        tables = [self.blocks.table(s.id) for s in seqs]
        width = max(len(t) for t in tables)
        tables = mx.array([t + [-1] * (width - len(t)) for t in tables], dtype=mx.int32)  # (B, T)
        after = mx.array([n + new_tokens for n in lengths], dtype=mx.int32)  # (B,)
        return [PagedKVCache(self.pool, i, tables, lengths, new_tokens, after, positions) for i in layers]

    def release(self, seq: Sequence) -> None:
        """The sequence left: free its dense buffers (a paged sequence's blocks are the block manager's)."""
        for buf in self._buffers.pop(seq.id, []):
            buf.release()

    def cache_bytes(self, seq: Sequence) -> int:
        """Bytes of the K/V of the tokens `seq` has cached (tokens x layers x 2 x kv heads x head dim x dtype)."""
        if self.pool is not None:
            return seq.num_cached * self.pool.block_nbytes // self.pool.block_size
        return seq.num_cached * sum(b.bytes_per_token for b in self._buffers.get(seq.id, []))

    def allocated_bytes(self, seq: Sequence) -> int:
        """Bytes of the storage `seq` holds: its blocks (paged; shared ones counted for each holder), or its
        buffers (dense: grown in steps of 256 tokens)."""
        if self.pool is not None:
            held = len(self.blocks.table(seq.id)) if seq.slot is not None else 0
            return held * self.pool.block_nbytes
        return sum(b.nbytes for b in self._buffers.get(seq.id, []))

    def decode(self, seqs: list[Sequence]) -> np.ndarray:
        """Feed each sequence its last sampled token in one batched forward; logits (B, V) float32."""
        if self.use_cache:
            ids = mx.array([[s.next_input] for s in seqs])  # (B, 1)
            with kernels.batch_invariant(self.batch_invariant):
                logits = self.model(ids, self.caches(seqs, 1), last_only=True)[:, 0]  # (B, V)
        else:  # rows of different lengths, each recomputed from its first token
            logits = mx.concatenate([self.model(mx.array([s.history]), None, last_only=True)[:, 0] for s in seqs])
        mx.eval(logits)
        for s in seqs:
            s.num_cached += 1
        return np.array(logits, dtype=np.float32)

    def prefill(self, seqs: list[Sequence], n: int) -> list[np.ndarray | None]:
        """The next n tokens to prefill of every sequence (its prompt; after a preemption also the tokens it
        had generated) in one (B, n) forward; logits (V,) for each sequence this chunk completes, None for
        the others."""
        if not self.use_cache and any(s.num_cached or n != len(s.prefill_ids) for s in seqs):
            raise ValueError("without a KV cache a prompt is prefilled in one chunk")
        ids = mx.array([s.prefill_ids[s.num_cached : s.num_cached + n] for s in seqs])  # (B, n)
        caches = self.caches(seqs, n)
        last = [s.num_cached + n == len(s.prefill_ids) for s in seqs]
        with kernels.batch_invariant(self.batch_invariant):
            if any(last):
                out = self.model(ids, caches, last_only=True)[:, 0]  # (B, V)
            else:
                out = self.model.hidden_states(ids, caches)  # the vocab projection is not needed yet
        mx.eval(out)
        for s in seqs:
            s.num_cached += n
        rows = np.array(out, dtype=np.float32) if any(last) else None
        return [rows[b] if done else None for b, done in enumerate(last)]

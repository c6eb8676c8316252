"""The paged KV cache's storage and the cache view a layer sees (the block manager is block_manager.py).

- `PagedKVPool` owns the K/V arrays: per layer, keys and values of shape (num_blocks, block_size, H_kv, D)
  (`kernels.kv_pool`: on the cpu backend uninitialized, so memory is taken only as blocks are written).
- `PagedKVCache` is one layer's `KVCache` for one forward: B rows, each reaching its tokens through its
  block table, with the lengths the sequences hold. `attend` stores the step's keys/values in their blocks
  and attends through the tables in one kernel call (`kernels.paged_attention`): no row's cache is ever
  gathered into a contiguous copy on the fast path.

Rules it keeps:
- The kernels write the pool IN PLACE; the pool keeps each layer's last writer and every later user of
  that layer's arrays is ordered after it (`after`, `mx.depends`), so lazily chained steps see each
  other's writes (as engine/cache/dense.py does for its buffers).
- Positions are the sequences' (`Sequence.num_cached`): a view counts nothing that outlives its forward.
"""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.cache.base import KVCache


def kv_token_bytes(args) -> int:
    """Bytes one token's keys and values take in a paged pool over every layer (the pools are float32)."""
    return 2 * args.num_hidden_layers * args.num_key_value_heads * args.head_dim * 4


class PagedKVPool:
    """Every layer's keys and values of a paged cache, made at the first write (its shape is the keys')."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, backend: str | None = None) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.backend = backend
        self.keys: list[mx.array | None] = [None] * num_layers
        self.values: list[mx.array | None] = [None] * num_layers
        self.writers: list[mx.array | None] = [None] * num_layers  # each layer's last in-place writer

    def ensure(self, layer: int, like: mx.array) -> None:
        """Make layer `layer`'s arrays for keys shaped like `like` (B, H_kv, L, D), if not made yet."""
        if self.keys[layer] is None:
            H_kv, D = like.shape[1], like.shape[3]
            make = kernels.kv_pool
            self.keys[layer] = make(self.num_blocks, self.block_size, H_kv, D, backend=self.backend)
            self.values[layer] = make(self.num_blocks, self.block_size, H_kv, D, backend=self.backend)

    def after(self, layer: int) -> list[mx.array]:
        w = self.writers[layer]
        return [] if w is None else [w]

    def written(self, layer: int, keys: mx.array, values: mx.array, writer: mx.array) -> None:
        """A kernel wrote layer `layer`'s arrays (in place on the cpu backend) and returned them."""
        self.keys[layer], self.values[layer], self.writers[layer] = keys, values, writer

    def read(self, layer: int) -> tuple[mx.array, mx.array]:
        """Layer `layer`'s arrays, ordered after their last writer (for ops that read them)."""
        k, v = self.keys[layer], self.values[layer]
        if self.writers[layer] is not None:
            k, v = mx.depends([k, v], [self.writers[layer]])
        return k, v

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Block dst becomes a copy of block src in every layer made so far (copy-on-write)."""
        if not copies:
            return
        src, dst = [s for s, _ in copies], [d for _, d in copies]
        for layer, k in enumerate(self.keys):
            if k is not None:
                done, (kp, vp) = kernels.paged_copy_blocks(
                    k, self.values[layer], src, dst, backend=self.backend, after=self.after(layer)
                )
                self.written(layer, kp, vp, done)

    @property
    def block_nbytes(self) -> int:
        """Bytes one block takes over every layer made so far (keys and values)."""
        return sum(2 * k.nbytes // self.num_blocks for k in self.keys if k is not None)

    def release(self) -> None:
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)
        self.writers = [None] * len(self.writers)


class PagedKVCache(KVCache):
    """One layer's paged cache for the B rows of one forward.

    tables: (B, T) int32 block tables (-1 past a row's blocks); lengths: what each row holds before this
    forward; L: the tokens this forward adds to every row. `offset` is an int while the rows are alike,
    else (B,) positions."""

    def __init__(
        self,
        pool: PagedKVPool,
        layer: int,
        tables: mx.array,
        lengths: list[int],
        new_tokens: int,
        lengths_after: mx.array | None = None,
        positions: mx.array | None = None,
    ) -> None:
        self.pool, self.layer, self.tables = pool, layer, tables
        self.lengths = [int(n) for n in lengths]
        self.new_tokens = new_tokens
        # (B,) int32 lengths once this forward's tokens are stored, and (B,) positions: one forward's
        # layers share them (the runner makes them once)
        self._after = lengths_after
        self._positions = positions

    @property
    def offset(self) -> int | mx.array:
        if min(self.lengths) == max(self.lengths):
            return self.lengths[0]
        if self._positions is None:
            self._positions = mx.array(self.lengths)
        return self._positions

    def _lengths_after(self, L: int) -> mx.array:
        if L != self.new_tokens:
            raise ValueError(f"this forward stores {self.new_tokens} tokens per row, not {L}")
        if self._after is None:
            self._after = mx.array([n + L for n in self.lengths], dtype=mx.int32)
        return self._after

    def attend(self, q: mx.array, keys: mx.array, values: mx.array, *, scale: float, backend: str | None) -> mx.array:
        pool, layer = self.pool, self.layer
        pool.ensure(layer, keys)
        out, (kp, vp) = kernels.paged_attention(
            q, keys, values, pool.keys[layer], pool.values[layer], self.tables, self._lengths_after(keys.shape[2]),
            scale=scale, backend=backend, after=pool.after(layer),
        )  # fmt: skip
        pool.written(layer, kp, vp, out)
        return out

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Store the keys/values, then gather every row's tokens into (B, H_kv, S, D), right-padded (the
        course's API; `attend` never gathers)."""
        pool, layer = self.pool, self.layer
        pool.ensure(layer, keys)
        after = self._lengths_after(keys.shape[2])
        done, (kp, vp) = kernels.paged_write(
            keys, values, pool.keys[layer], pool.values[layer], self.tables, after,
            backend=pool.backend, after=pool.after(layer),
        )  # fmt: skip
        pool.written(layer, kp, vp, done)
        kp, vp = pool.read(layer)
        S = max(self.lengths) + keys.shape[2]
        pos = mx.arange(S)
        blocks = mx.take(self.tables, pos // pool.block_size, axis=1)  # (B, S)
        blocks = mx.where(blocks < 0, 0, blocks)  # past a row's blocks: any block, masked by its length
        valid = (pos[None, :] < after[:, None])[:, None, :, None]  # (B, 1, S, 1)
        k = mx.where(valid, kp[blocks, pos % pool.block_size].transpose(0, 2, 1, 3), 0.0)  # (B, H_kv, S, D)
        v = mx.where(valid, vp[blocks, pos % pool.block_size].transpose(0, 2, 1, 3), 0.0)
        self.lengths = [n + keys.shape[2] for n in self.lengths]
        self._after = self._positions = None
        self.new_tokens = 0
        return k, v

    def release(self) -> None:
        pass  # the blocks are the block manager's to free; the arrays are the pool's

"""Dense KV caches: each sequence's keys and values for a layer in one contiguous buffer (the week-2 cache).

- `DenseKVBuffer` holds one sequence's buffers for one layer, grown `step` tokens at a time (amortized O(1)
  appends). It stores and does not count: whoever owns the sequence knows how many tokens it holds.
- `DenseKVCache` is the `KVCache` a layer sees: B buffers and each row's length. `DenseKVCache()` is the
  course's self-contained cache (one row of its own, counting its own tokens); the engine builds one per
  layer per forward over its sequences' buffers (`DenseKVCache.over`) with the lengths the sequences hold,
  so a sequence's position is counted in one place.

Rules it keeps:
- A decode step (one new token per row, on a fast backend) stores and attends in one kernel call per layer,
  `kernels.decode_attention_rows`, which writes each row's new key and value into its buffer IN PLACE.
  Those writes are not graph edges: the buffer keeps the op's output as its `writer`, and every later
  reader or writer of the buffer is ordered after it (`mx.depends`), so lazily chained steps see each
  other's writes.
- Rows of different lengths are right-padded when fetched; attention gets each row's length (`kv_lengths`)
  and nothing else, so which keys a row may see is decided in one place.
"""

from __future__ import annotations

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.cache.base import KVCache
from tiny_llm_playground.engine.layers.attention import attention


class DenseKVBuffer:
    """One sequence's keys and values for one layer: (1, H_kv, capacity, D) buffers, grown in steps."""

    def __init__(self, step: int = 256) -> None:
        self.step = step
        self.keys: mx.array | None = None  # (1, H_kv, capacity, D)
        self.values: mx.array | None = None
        # The output of the last kernel that wrote into the buffers in place (None once anything else has
        # been ordered after it): later readers and writers must run after it.
        self.writer: mx.array | None = None

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def _after_writer(self) -> None:
        if self.writer is not None:
            self.keys, self.values = mx.depends([self.keys, self.values], [self.writer])
            self.writer = None

    def reserve(self, length: int, keys: mx.array, values: mx.array) -> None:
        """Make room for keys/values (1, H_kv, L, D) after the first `length` tokens (copied if it grows)."""
        _, H, L, D = keys.shape
        if length + L <= self.capacity:
            return
        self._after_writer()  # the copy below reads the buffers
        new_cap = ((length + L + self.step - 1) // self.step) * self.step  # the next multiple of `step`
        k_new = mx.zeros((1, H, new_cap, D), dtype=keys.dtype)
        v_new = mx.zeros((1, H, new_cap, values.shape[3]), dtype=values.dtype)
        if self.keys is not None and length > 0:
            k_new[:, :, :length, :] = self.keys[:, :, :length, :]
            v_new[:, :, :length, :] = self.values[:, :, :length, :]
        self.keys, self.values = k_new, v_new

    def write(self, pos: int, keys: mx.array, values: mx.array) -> None:
        """Store keys/values (1, H_kv, L, D) at positions pos .. pos + L - 1."""
        L = keys.shape[2]
        self._after_writer()  # the slice updates below read and write the buffers
        self.reserve(pos, keys, values)
        self.keys[:, :, pos : pos + L, :] = keys
        self.values[:, :, pos : pos + L, :] = values

    def read(self, n: int) -> tuple[mx.array, mx.array]:
        """The first n stored keys and values, (1, H_kv, n, D) each (views of the buffers)."""
        self._after_writer()
        return self.keys[:, :, :n, :], self.values[:, :, :n, :]

    def written_in_place(self, keys: mx.array, values: mx.array, writer: mx.array) -> None:
        """A kernel wrote into the buffers in place and returned them as `keys`/`values`; `writer` is its
        output, which every later user of the buffers must follow."""
        self.keys, self.values, self.writer = keys, values, writer

    def release(self) -> None:
        self.keys = self.values = self.writer = None

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    @property
    def bytes_per_token(self) -> int:  # H_kv x D x itemsize, keys and values
        return 0 if self.keys is None else self.nbytes // self.capacity


class DenseKVCache(KVCache):
    """One layer's dense cache for B rows: row b's tokens live in `rows[b]`, `lengths[b]` of them.

    `DenseKVCache()` is the course's cache: empty, it takes its rows (as many as the first keys stored
    have) and counts their tokens itself. `DenseKVCache.over(rows, lengths)` is a view the engine builds for
    one forward over its sequences' buffers. `offset` is an int while every row holds as many tokens, and
    (B,) per-row positions otherwise (RoPE rotates each row at its own position).
    """

    def __init__(self, step: int = 256) -> None:
        self.step = step
        self.rows: list[DenseKVBuffer] = []
        self.lengths: list[int] = []
        self._positions: mx.array | None = None

    @classmethod
    def over(cls, rows: list[DenseKVBuffer], lengths: list[int], positions: mx.array | None = None) -> DenseKVCache:
        """A view over `rows` holding `lengths[b]` tokens each. positions: mx.array(lengths), when the caller
        already made it (one forward's layers share it)."""
        if not rows or len(rows) != len(lengths):
            raise ValueError(f"a dense cache needs one length per row, got {len(rows)} rows, {len(lengths)} lengths")
        cache = cls(rows[0].step)
        cache.rows, cache.lengths, cache._positions = list(rows), [int(n) for n in lengths], positions
        return cache

    def _take_rows(self, B: int) -> None:
        """An empty self-counting cache takes B rows at its first store; afterwards B must match."""
        if not self.rows:
            self.rows, self.lengths = [DenseKVBuffer(self.step) for _ in range(B)], [0] * B
        elif B != len(self.rows):
            raise ValueError(f"{B} rows of keys for a cache of {len(self.rows)} rows")

    @property
    def offset(self) -> int | mx.array:
        if not self.lengths or min(self.lengths) == max(self.lengths):
            return self.lengths[0] if self.lengths else 0
        if self._positions is None:
            self._positions = mx.array(self.lengths)  # (B,)
        return self._positions

    def _advance(self, n: int) -> None:
        self.lengths = [length + n for length in self.lengths]
        self._positions = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        B, _, L, _ = keys.shape
        self._take_rows(B)
        for b, (buf, n) in enumerate(zip(self.rows, self.lengths, strict=True)):
            buf.write(n, keys[b : b + 1] if B > 1 else keys, values[b : b + 1] if B > 1 else values)
        self._advance(L)
        if B == 1:
            return self.rows[0].read(self.lengths[0])
        S = max(self.lengths)
        fetched = [buf.read(n) for buf, n in zip(self.rows, self.lengths, strict=True)]

        def pad(a: mx.array) -> mx.array:
            n = S - a.shape[2]
            return a if n == 0 else mx.pad(a, [(0, 0), (0, 0), (0, n), (0, 0)])

        k = mx.concatenate([pad(k) for k, _ in fetched], axis=0)  # (B, H_kv, S, D)
        v = mx.concatenate([pad(v) for _, v in fetched], axis=0)
        return k, v

    def attend(self, q: mx.array, keys: mx.array, values: mx.array, *, scale: float, backend: str | None) -> mx.array:
        self._take_rows(keys.shape[0])
        if keys.shape[2] == 1 and backend != "ref":
            return self._decode_step(q, keys, values, scale, backend)
        k, v = self.update_and_fetch(keys, values)  # (B, H_kv, S, D)
        ragged = min(self.lengths) != max(self.lengths)
        lengths = mx.array(self.lengths, dtype=mx.int32) if ragged else None  # (B,): right padding is ignored
        return attention(q, k, v, scale=scale, kv_lengths=lengths, backend=backend)

    def _decode_step(self, q: mx.array, k: mx.array, v: mx.array, scale: float, backend: str | None) -> mx.array:
        """One new token per row: store each row's k/v (B, H_kv, 1, D) in its own buffer and attend q
        (B, H, 1, D) over each row's keys in one kernel call, instead of B slice updates, padding and
        concatenating every row. Returns (B, H, 1, D)."""
        for b, (buf, n) in enumerate(zip(self.rows, self.lengths, strict=True)):
            if n >= buf.capacity:  # slice (an op each) only to grow
                buf.reserve(n, k[b : b + 1], v[b : b + 1])
        after = list({id(buf.writer): buf.writer for buf in self.rows if buf.writer is not None}.values())
        out, bufs = kernels.decode_attention_rows(
            q, k, v, [(buf.keys, buf.values) for buf in self.rows], self.lengths, scale=scale, backend=backend,
            after=after,
        )  # fmt: skip
        for buf, (kb, vb) in zip(self.rows, bufs, strict=True):
            buf.written_in_place(kb, vb, out)
        self._advance(1)
        return out

    @property
    def keys(self) -> mx.array | None:
        """Row 0's key buffer (1, H_kv, capacity, D), None before the first store: the one-row cache API."""
        return self.rows[0].keys if self.rows else None

    @property
    def values(self) -> mx.array | None:
        return self.rows[0].values if self.rows else None

    @property
    def can_rewind(self) -> bool:
        return True

    def rewind(self, n: int) -> None:
        held = min(self.lengths, default=0)
        if not 0 <= n <= held:
            raise ValueError(f"cannot rewind {n} tokens from a cache holding {held}")
        self._advance(-n)

    def release(self) -> None:
        for buf in self.rows:
            buf.release()
        self.lengths = [0] * len(self.rows)
        self._positions = None

    @property
    def nbytes(self) -> int:
        return sum(buf.nbytes for buf in self.rows)

    @property
    def used_nbytes(self) -> int:
        return sum(n * buf.bytes_per_token for buf, n in zip(self.rows, self.lengths, strict=True))


def make_cache(num_layers: int) -> list[KVCache]:
    """One dense cache per layer (the course's per-sequence cache)."""
    return [DenseKVCache() for _ in range(num_layers)]

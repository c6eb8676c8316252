"""KV caches. The model does not know which cache it has: attention hands each layer's cache the new
keys/values and gets back everything it should attend to (`update_and_fetch`).

Which feature needs which method:
- `update_and_fetch`, `offset`: every generation with a cache (week 1).
- `rewind(n)`: speculative decoding drops rejected draft tokens (week 3); callers check `can_rewind`.
- `release()`: paged caches give their blocks back to the pool (week 3); dense caches free their buffers.
- `attention_mask(L)`: caches whose rows hold different lengths (`BatchKVCache`, continuous batching)
  tell attention which keys each row may see; plain caches keep the causal default.
- `kv_lengths()`: the same fact as numbers, for `kernels.flash_attention` (the fast path): how many keys
  of the fetched (B, H_kv, S, D) are valid per row; None = all S in every row.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Interface of a per-layer KV cache."""

    offset: int = 0  # tokens stored so far (the position of the next token)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append keys/values (B, H_kv, L, D); return all cached (B, H_kv, offset, D)."""
        raise NotImplementedError

    def attention_mask(self, L: int) -> mx.array | str | None:
        """The mask for the L queries just stored: causal over the cache, None for one query."""
        return "causal" if L > 1 else None

    def kv_lengths(self) -> mx.array | None:
        """(B,) valid keys per row of the last `update_and_fetch`, or None when every row has all S."""
        return None

    @property
    def can_rewind(self) -> bool:
        return False

    def rewind(self, n: int) -> None:
        """Forget the last n tokens."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewind")

    def release(self) -> None:
        """Free the storage; the cache is empty afterwards."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of storage the cache holds now (buffers may be larger than what is stored)."""
        return 0

    @property
    def used_nbytes(self) -> int:
        """Bytes of the keys and values of the `offset` tokens stored."""
        return 0


class DenseKVCache(KVCache):
    """Contiguous per-layer buffers grown in steps of `step` tokens (amortized O(1) appends)."""

    def __init__(self, step: int = 256) -> None:
        self.step = step
        self.keys: mx.array | None = None  # (B, H_kv, capacity, D)
        self.values: mx.array | None = None
        self.offset = 0
        # The output of the last decode_attention op that wrote into the buffers in place (None once
        # anything else has been ordered after it): later readers and writers must run after it.
        self.writer: mx.array | None = None

    def _after_writer(self) -> None:
        if self.writer is not None:
            self.keys, self.values = mx.depends([self.keys, self.values], [self.writer])
            self.writer = None

    def reserve(self, keys: mx.array, values: mx.array) -> None:
        """Make room for these keys/values (B, H_kv, L, D) after the stored tokens."""
        B, H, L, D = keys.shape
        prev = self.offset
        capacity = 0 if self.keys is None else self.keys.shape[2]
        if prev + L > capacity:
            self._after_writer()  # the copy below reads the buffers
            # Grow to the next multiple of `step` that fits, copying what we have.
            new_cap = ((prev + L + self.step - 1) // self.step) * self.step
            k_new = mx.zeros((B, H, new_cap, D), dtype=keys.dtype)
            v_new = mx.zeros((B, H, new_cap, values.shape[3]), dtype=values.dtype)
            if self.keys is not None and prev > 0:
                k_new[:, :, :prev, :] = self.keys[:, :, :prev, :]
                v_new[:, :, :prev, :] = self.values[:, :, :prev, :]
            self.keys, self.values = k_new, v_new

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        L = keys.shape[2]
        prev = self.offset
        self._after_writer()  # the slice updates below read and write the buffers
        self.reserve(keys, values)
        self.keys[:, :, prev : prev + L, :] = keys
        self.values[:, :, prev : prev + L, :] = values
        self.offset = prev + L
        return self.keys[:, :, : self.offset, :], self.values[:, :, : self.offset, :]

    @property
    def fused_decode(self) -> bool:
        """Whether `decode_attention` can serve a one-token step: a started cache of one row."""
        return self.keys is not None and self.keys.shape[0] == 1

    def decode_attention(self, q: mx.array, k: mx.array, v: mx.array, *, scale: float, backend: str | None) -> mx.array:
        """One new token: store k/v (1, H_kv, 1, D) and attend q (1, H, 1, D) over every stored key in one
        kernel call (kernels.decode_attention_rows with one row), instead of two slice updates, two slices
        and the attention op. Returns (1, H, 1, D)."""
        return BatchKVCache([self]).decode_attention(q, k, v, scale=scale, backend=backend)

    @property
    def can_rewind(self) -> bool:
        return True

    def rewind(self, n: int) -> None:
        if not 0 <= n <= self.offset:
            raise ValueError(f"cannot rewind {n} tokens from a cache holding {self.offset}")
        self.offset -= n

    def release(self) -> None:
        self.keys = self.values = self.writer = None
        self.offset = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    @property
    def used_nbytes(self) -> int:  # offset x (B x H_kv x D x itemsize, keys and values)
        return 0 if self.keys is None else self.offset * (self.nbytes // self.keys.shape[2])


class BatchKVCache(KVCache):
    """One layer's view over B per-sequence caches of different lengths, for one batched forward.

    `offset` is per row (B,), so RoPE rotates each row at its own position. `update_and_fetch` stores each
    row in its own cache and returns the rows right-padded with zeros to the longest, (B, H_kv, S, D);
    `attention_mask` then hides the padding (and the future, for L > 1) row by row.
    """

    def __init__(self, rows: list[KVCache]) -> None:
        self.rows = rows
        self._offsets = [c.offset for c in rows]
        self._mask: mx.array | None = None

    @property
    def offset(self) -> mx.array:  # (B,) positions of each row's first new token
        return mx.array(self._offsets)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        B, _, L, _ = keys.shape
        fetched = [c.update_and_fetch(keys[b : b + 1], values[b : b + 1]) for b, c in enumerate(self.rows)]
        lengths = [k.shape[2] for k, _ in fetched]
        S = max(lengths)

        def pad(a: mx.array) -> mx.array:
            n = S - a.shape[2]
            return a if n == 0 else mx.pad(a, [(0, 0), (0, 0), (0, n), (0, 0)])

        k = mx.concatenate([pad(k) for k, _ in fetched], axis=0)  # (B, H_kv, S, D)
        v = mx.concatenate([pad(v) for _, v in fetched], axis=0)
        # Row b's query i sits at position lengths[b] - L + i and sees keys 0..that position.
        q_pos = mx.array(lengths)[:, None] - L + mx.arange(L)[None, :]  # (B, L)
        self._mask = (mx.arange(S)[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, L, S)
        self._offsets = lengths
        return k, v

    def attention_mask(self, L: int) -> mx.array | None:
        return self._mask

    @property
    def fused_decode(self) -> bool:
        """Whether `decode_attention` can serve this batch (every row a dense cache)."""
        return all(isinstance(c, DenseKVCache) for c in self.rows)

    def decode_attention(self, q: mx.array, k: mx.array, v: mx.array, *, scale: float, backend: str | None) -> mx.array:
        """The fast path for one new token per row: store each row's k/v (B, H_kv, 1, D) in its own buffer
        and attend q (B, H, 1, D) over each row's keys in one kernel call (kernels.decode_attention_rows),
        instead of `update_and_fetch`'s padding and concatenation of every row. Returns (B, H, 1, D)."""
        import kernels

        for b, c in enumerate(self.rows):
            if c.keys is None or c.offset >= c.keys.shape[2]:  # slice (an op each) only to grow
                c.reserve(k[b : b + 1], v[b : b + 1])
        lengths = [c.offset for c in self.rows]
        after = list({id(c.writer): c.writer for c in self.rows if c.writer is not None}.values())
        out, bufs = kernels.decode_attention_rows(
            q, k, v, [(c.keys, c.values) for c in self.rows], lengths, scale=scale, backend=backend, after=after
        )
        for c, (kb, vb) in zip(self.rows, bufs, strict=True):
            c.keys, c.values = kb, vb
            c.writer = out  # the writes into the buffers are not graph edges: order later users after `out`
            c.offset += 1
        self._offsets = [n + 1 for n in lengths]
        return out

    def kv_lengths(self) -> mx.array:
        return mx.array(self._offsets, dtype=mx.int32)  # (B,) right padding past these is ignored

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.rows)

    @property
    def used_nbytes(self) -> int:
        return sum(c.used_nbytes for c in self.rows)


def make_cache(num_layers: int) -> list[KVCache]:
    """One dense cache per layer."""
    return [DenseKVCache() for _ in range(num_layers)]

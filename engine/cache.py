"""KV caches. The model does not know which cache it has: attention hands each layer's cache the new
keys/values and gets back everything it should attend to (`update_and_fetch`).

Which feature needs which method:
- `update_and_fetch`, `offset`: every generation with a cache (week 1).
- `rewind(n)`: speculative decoding drops rejected draft tokens (week 3); callers check `can_rewind`.
- `release()`: paged caches give their blocks back to the pool (week 3); dense caches free their buffers.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Interface of a per-layer KV cache."""

    offset: int = 0  # tokens stored so far (the position of the next token)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append keys/values (B, H_kv, L, D); return all cached (B, H_kv, offset, D)."""
        raise NotImplementedError

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
        return 0


class DenseKVCache(KVCache):
    """Contiguous per-layer buffers grown in steps of `step` tokens (amortized O(1) appends)."""

    def __init__(self, step: int = 256) -> None:
        self.step = step
        self.keys: mx.array | None = None  # (B, H_kv, capacity, D)
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        B, H, L, D = keys.shape
        prev = self.offset
        capacity = 0 if self.keys is None else self.keys.shape[2]
        if prev + L > capacity:
            # Grow to the next multiple of `step` that fits, copying what we have.
            new_cap = ((prev + L + self.step - 1) // self.step) * self.step
            k_new = mx.zeros((B, H, new_cap, D), dtype=keys.dtype)
            v_new = mx.zeros((B, H, new_cap, values.shape[3]), dtype=values.dtype)
            if self.keys is not None and prev > 0:
                k_new[:, :, :prev, :] = self.keys[:, :, :prev, :]
                v_new[:, :, :prev, :] = self.values[:, :, :prev, :]
            self.keys, self.values = k_new, v_new
        self.keys[:, :, prev : prev + L, :] = keys
        self.values[:, :, prev : prev + L, :] = values
        self.offset = prev + L
        return self.keys[:, :, : self.offset, :], self.values[:, :, : self.offset, :]

    @property
    def can_rewind(self) -> bool:
        return True

    def rewind(self, n: int) -> None:
        if not 0 <= n <= self.offset:
            raise ValueError(f"cannot rewind {n} tokens from a cache holding {self.offset}")
        self.offset -= n

    def release(self) -> None:
        self.keys = self.values = None
        self.offset = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


def make_cache(num_layers: int) -> list[KVCache]:
    """One dense cache per layer."""
    return [DenseKVCache() for _ in range(num_layers)]

"""The KV-cache interface the model sees: one object per layer, for one forward of B rows.

The model does not know which cache it has. Each attention layer asks its cache for the positions of the
new tokens (`offset`, for RoPE) and hands it the new keys and values together with the queries
(`attend`): the cache stores them and attends over every key each query may see, with whatever kernel
fits its storage (a dense buffer's fused decode step; block tables for a paged pool). No other method is
probed or called by the model.

Which feature needs which method (a cache that lacks one raises, and callers check up front):
- `offset`, `attend`: every generation with a cache.
- `update_and_fetch`: the course's week-1/2 API (store, then get every stored key back as one array);
  tests and the readable path use it.
- `can_rewind` / `rewind(n)`: speculative decoding drops rejected draft tokens (callers check `can_rewind`),
  on a cache that counts its own tokens. Inside the engine a sequence's position is counted once, in
  `Sequence.num_cached`, and each forward's caches are views built from it: the engine rewinds a sequence
  by lowering that count (what the views then hold past it is overwritten by the next tokens).
- `release()`: give the storage back (a paged cache returns its blocks to the pool).
- `nbytes` / `used_nbytes`: what the KV-cache view of the playground shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import mlx.core as mx


class KVCache(ABC):
    """One layer's keys and values for the B rows of one forward (B = 1 for a single sequence)."""

    @property
    @abstractmethod
    def offset(self) -> int | mx.array:
        """Position of each row's first new token: an int while every row holds as many tokens (always for
        B == 1), else (B,) per row."""

    @abstractmethod
    def attend(self, q: mx.array, keys: mx.array, values: mx.array, *, scale: float, backend: str | None) -> mx.array:
        """Store keys/values (B, H_kv, L, D) after each row's stored tokens and attend q (B, H, L, D) over
        every key its queries may see (causally: query i of a row sits at offset + i). Returns (B, H, L, D)."""

    @abstractmethod
    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Store keys/values (B, H_kv, L, D); return every stored key and value, (B, H_kv, S, D) (rows
        shorter than the longest are right-padded; `attend` knows each row's length)."""

    @property
    def can_rewind(self) -> bool:
        return False

    def rewind(self, n: int) -> None:
        """Forget the last n tokens of every row."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewind")

    @abstractmethod
    def release(self) -> None:
        """Free the storage; the cache is empty afterwards."""

    @property
    def nbytes(self) -> int:
        """Bytes of storage the cache holds now (buffers may be larger than what is stored)."""
        return 0

    @property
    def used_nbytes(self) -> int:
        """Bytes of the keys and values of the tokens stored."""
        return 0

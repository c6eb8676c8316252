"""KV-cache capacity in integers only (no tensors): the allocator protocol, and the dense cache's slot pool.

The scheduler asks an allocator whether a request fits, admits it, grows it step by step and frees it; the
model runner owns the arrays behind what was allocated. `KVAllocator` is the protocol both allocators keep:
`SlotPool` (dense caches: one slot per sequence, prompt + max new tokens reserved at admission, so a
sequence never grows out of room) and `BlockManager` (engine/cache/block_manager.py: the paged cache,
blocks taken as tokens arrive, a prefix cache, preemption when the pool runs out). A handle is the
sequence's id. Tests assert `full` after cancels and errors: everything came back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class KVAllocator(Protocol):
    """Integer bookkeeping of the KV cache: capacity, who holds what, and the one size check."""

    capacity_tokens: int

    @property
    def free_tokens(self) -> int: ...

    @property
    def full(self) -> bool:
        """True when nothing is allocated."""
        ...

    def check_fits(self, tokens: int) -> None:
        """Raise ValueError when a request that may hold `tokens` tokens could never fit, even alone."""
        ...

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        """Tokens of `token_ids` a new sequence would find already computed (a prefix cache's hit)."""
        ...

    def can_admit(self, token_ids: Sequence[int], upto: int, reserve: int) -> bool:
        """Whether a sequence can be admitted now, holding room for its first `upto` tokens (its whole
        `reserve` where the allocator reserves up front)."""
        ...

    def admit(self, handle: int, token_ids: Sequence[int], upto: int, reserve: int) -> int:
        """Take capacity for `handle`; returns the tokens found cached."""
        ...

    def can_grow(self, handle: int, upto: int) -> bool: ...

    def grow(self, handle: int, upto: int) -> None:
        """Make room for `handle`'s first `upto` tokens."""
        ...

    def room(self, handle: int) -> int:
        """The most tokens `handle` could hold now."""
        ...

    def commit(self, handle: int, token_ids: Sequence[int], computed: int) -> None:
        """`handle`'s first `computed` tokens now have their keys and values (a prefix cache may share them)."""
        ...

    def free(self, handle: int) -> None: ...

    def preempt(self, handle: int) -> None:
        """Free `handle` to make room for older sequences; it will be computed again."""
        ...


class SlotPool:
    """`num_slots` dense caches sharing `capacity_tokens`: a request takes a slot and reserves its prompt +
    max new tokens at admission, so a running sequence never runs out of cache (no preemption needed)."""

    def __init__(self, num_slots: int, capacity_tokens: int) -> None:
        if num_slots < 1 or capacity_tokens < 1:
            raise ValueError("a slot pool needs at least one slot and one token of capacity")
        self.num_slots = num_slots
        self.capacity_tokens = capacity_tokens
        self._free = list(range(num_slots - 1, -1, -1))  # a stack: pop() hands out slot 0 first
        self._slots: dict[int, tuple[int, int]] = {}  # handle -> (slot, tokens reserved)
        self.preemptions = 0

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def reserved_tokens(self) -> int:
        return sum(n for _, n in self._slots.values())

    @property
    def free_tokens(self) -> int:
        return self.capacity_tokens - self.reserved_tokens

    @property
    def full(self) -> bool:
        return self.free_slots == self.num_slots and not self._slots

    def check_fits(self, tokens: int) -> None:
        if tokens > self.capacity_tokens:
            raise ValueError(
                f"the request needs {tokens} cache tokens (prompt + max_tokens) but the engine holds"
                f" {self.capacity_tokens}; shorten the prompt or lower max_tokens"
            )

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        return 0  # dense caches share nothing

    def can_admit(self, token_ids: Sequence[int], upto: int, reserve: int) -> bool:
        return bool(self._free) and reserve <= self.free_tokens

    def admit(self, handle: int, token_ids: Sequence[int], upto: int, reserve: int) -> int:
        """Take a free slot and reserve `reserve` tokens of capacity for `handle`."""
        if handle in self._slots:
            raise ValueError(f"sequence {handle} already holds a slot")
        if not self.can_admit(token_ids, upto, reserve):
            raise RuntimeError(
                f"no room for {reserve} tokens: {self.free_slots} free slots, {self.free_tokens} free tokens"
            )
        self._slots[handle] = (self._free.pop(), reserve)
        return 0

    def slot(self, handle: int) -> int:
        return self._slots[handle][0]

    def can_grow(self, handle: int, upto: int) -> bool:
        return upto <= self._slots[handle][1]

    def grow(self, handle: int, upto: int) -> None:
        if not self.can_grow(handle, upto):
            raise ValueError(f"sequence {handle} reserved {self._slots[handle][1]} tokens, not {upto}")

    def room(self, handle: int) -> int:
        return self._slots[handle][1]

    def commit(self, handle: int, token_ids: Sequence[int], computed: int) -> None:
        pass  # nothing is shared

    def free(self, handle: int) -> None:
        if handle not in self._slots:
            raise ValueError(f"sequence {handle} holds no slot")
        slot, _ = self._slots.pop(handle)
        self._free.append(slot)

    def preempt(self, handle: int) -> None:
        self.free(handle)
        self.preemptions += 1

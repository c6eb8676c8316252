"""KV-cache capacity in integers only (no tensors): the allocator protocol and the dense slot pool.

The scheduler asks an allocator whether a request fits and takes capacity for it; the model runner owns
the arrays behind what was allocated. `KVAllocator` is the protocol every allocator keeps: `SlotPool` for
dense per-sequence caches today, the paged cache's block manager next. Tests assert `full` after cancels
and errors: every slot and token came back.
"""

from __future__ import annotations

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

    def can_allocate(self, tokens: int) -> bool: ...

    def allocate(self, tokens: int) -> int:
        """Take capacity for `tokens` tokens; returns the handle to free it with."""
        ...

    def free(self, handle: int) -> None: ...


class SlotPool:
    """`num_slots` dense caches sharing `capacity_tokens`: a request takes a slot and reserves its prompt +
    max new tokens at admission, so a running sequence never runs out of cache (no preemption needed)."""

    def __init__(self, num_slots: int, capacity_tokens: int) -> None:
        if num_slots < 1 or capacity_tokens < 1:
            raise ValueError("a slot pool needs at least one slot and one token of capacity")
        self.num_slots = num_slots
        self.capacity_tokens = capacity_tokens
        self._free = list(range(num_slots - 1, -1, -1))  # a stack: pop() hands out slot 0 first
        self._reserved: dict[int, int] = {}  # slot -> tokens reserved

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def reserved_tokens(self) -> int:
        return sum(self._reserved.values())

    @property
    def free_tokens(self) -> int:
        return self.capacity_tokens - self.reserved_tokens

    @property
    def full(self) -> bool:
        return self.free_slots == self.num_slots and not self._reserved

    def check_fits(self, tokens: int) -> None:
        if tokens > self.capacity_tokens:
            raise ValueError(
                f"the request needs {tokens} cache tokens (prompt + max_tokens) but the engine holds"
                f" {self.capacity_tokens}; shorten the prompt or lower max_tokens"
            )

    def can_allocate(self, tokens: int) -> bool:
        return bool(self._free) and tokens <= self.free_tokens

    def allocate(self, tokens: int) -> int:
        """Take a free slot and reserve `tokens` of capacity for it; returns the slot."""
        if not self.can_allocate(tokens):
            raise RuntimeError(
                f"no room for {tokens} tokens: {self.free_slots} free slots, {self.free_tokens} free tokens"
            )
        slot = self._free.pop()
        self._reserved[slot] = tokens
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._reserved:
            raise ValueError(f"slot {slot} is not allocated")
        del self._reserved[slot]
        self._free.append(slot)

    def reserved(self, slot: int) -> int:
        return self._reserved.get(slot, 0)

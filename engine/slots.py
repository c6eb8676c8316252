"""KV-cache slot accounting in integers only (no tensors): which slots are free, how many tokens are
reserved. The runner owns the arrays behind each slot; the scheduler asks this pool whether a request
fits. Tests assert `full` after cancels and errors: every slot and token came back.
"""

from __future__ import annotations


class SlotPool:
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
        """True when nothing is allocated: every slot and every token is free."""
        return self.free_slots == self.num_slots and not self._reserved

    def can_allocate(self, tokens: int) -> bool:
        return bool(self._free) and tokens <= self.free_tokens

    def allocate(self, tokens: int) -> int:
        """Take a free slot and reserve `tokens` of capacity for it."""
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

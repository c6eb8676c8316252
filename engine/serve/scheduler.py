"""Continuous-batching policy, pure (no tensors): which sequences run this step and with how many tokens.

Each step, in this order, within `max_tokens_per_step`:
1. every DECODING sequence gets one token (its row in the batched decode forward);
2. PREFILLING sequences, oldest first, get prompt chunks of at most `prefill_chunk` tokens;
3. WAITING sequences are admitted first-come first-served while a slot, cache tokens and budget remain,
   and start prefilling in the same step.
Admission never skips the head of the queue (a big request is not starved by small ones behind it), and
the budget is at least `max_batch`, so the oldest prefilling sequence always progresses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tiny_llm_playground.engine.cache import KVAllocator
from tiny_llm_playground.engine.events import Phase
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.sequence import Sequence, Status


@dataclass(frozen=True)
class StepPlan:
    decode: tuple[Sequence, ...]  # one new token each, batched into one forward
    prefill: tuple[tuple[Sequence, int], ...]  # (sequence, chunk length)
    admitted: tuple[Sequence, ...]

    @property
    def phase(self) -> Phase:
        if self.decode and self.prefill:
            return "mixed"
        return "decode" if self.decode else "prefill" if self.prefill else "idle"

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)


class Scheduler:
    def __init__(self, config: EngineConfig, pool: KVAllocator) -> None:
        self.config = config
        self.pool = pool  # integer-only: slots today, blocks with the paged cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def check(self, seq: Sequence) -> None:
        """ValueError when `seq` could never be admitted, however long it waited (too large for the cache)."""
        self.pool.check_fits(seq.cache_need)

    def add(self, seq: Sequence) -> None:
        self.check(seq)
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        budget = self.config.max_tokens_per_step
        decode = [s for s in self.running if s.status is Status.DECODING]
        budget -= len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for s in self.running:
            if s.status is Status.PREFILLING and budget > 0:
                n = min(self.config.prefill_chunk, s.prefill_left, budget)
                prefill.append((s, n))
                budget -= n
        admitted: list[Sequence] = []
        while (
            self.waiting
            and budget > 0
            and len(self.running) < self.config.max_batch
            and self.pool.can_allocate(self.waiting[0].cache_need)
        ):
            s = self.waiting.popleft()
            s.slot = self.pool.allocate(s.cache_need)
            s.status = Status.PREFILLING
            self.running.append(s)
            admitted.append(s)
            n = min(self.config.prefill_chunk, s.prefill_left, budget)
            prefill.append((s, n))
            budget -= n
        return StepPlan(tuple(decode), tuple(prefill), tuple(admitted))

    def remove(self, seq: Sequence) -> None:
        """Take a finished (or cancelled, or failed) sequence out and give its slot back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.slot is not None:
            self.pool.free(seq.slot)
            seq.slot = None

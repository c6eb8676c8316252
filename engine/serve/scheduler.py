"""Continuous-batching policy, pure (no tensors): which sequences run this step and with how many tokens.

Each step, in this order, within `max_tokens_per_step`:
1. every DECODING sequence gets one token (its row in the batched decode forward), once the allocator
   gives it room for it;
2. PREFILLING sequences, oldest first, get prompt chunks of at most `prefill_chunk` tokens (shortened to
   the room left);
3. WAITING sequences are admitted first-come first-served while a slot, cache and budget remain, and
   start prefilling in the same step; a prefix the cache already holds is not computed again.
When the cache cannot give a running sequence the room it needs (the paged cache takes blocks as tokens
arrive), the newest running sequence is preempted: its cache is freed and it goes back to the head of the
queue, to be computed again (prompt and the tokens it had generated) when it is readmitted. Admission
never skips the head of the queue (a big request is not starved by small ones behind it), the oldest
running sequence is never preempted for a newer one, and the budget is at least `max_batch`, so the
oldest sequence always progresses.
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
    preempted: tuple[Sequence, ...] = ()

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
        self.pool = pool  # integer-only: slots (dense) or blocks (paged)
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

    def _preempt(self, seq: Sequence) -> Sequence:
        """Free `seq`'s cache and put it back at the head of the queue, to be computed again."""
        self.running.remove(seq)
        self.pool.preempt(seq.id)
        seq.slot = None
        seq.restart()
        self.waiting.appendleft(seq)  # ahead of everyone who arrived after it
        return seq

    def schedule(self) -> StepPlan:
        budget = self.config.max_tokens_per_step
        preempted: list[Sequence] = []
        decode: list[Sequence] = []
        for s in list(self.running):  # oldest first: the newest give way
            if s.status is not Status.DECODING or s not in self.running:
                continue
            while not self.pool.can_grow(s.id, s.num_cached + 1) and self.running[-1] is not s:
                preempted.append(self._preempt(self.running[-1]))
            if self.pool.can_grow(s.id, s.num_cached + 1):
                self.pool.grow(s.id, s.num_cached + 1)
                decode.append(s)
            else:  # the newest, and the older ones hold the rest: it waits for them
                preempted.append(self._preempt(s))
        budget -= len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for s in list(self.running):
            if s.status is not Status.PREFILLING or budget <= 0 or s not in self.running:
                continue
            n = min(self.config.prefill_chunk, s.prefill_left, budget)
            while self.pool.room(s.id) < s.num_cached + n and self.running[-1] is not s:
                victim = self._preempt(self.running[-1])
                preempted.append(victim)
                if victim in decode:  # it had its decode row already: the row goes with it
                    decode.remove(victim)
                    budget += 1
            n = min(n, self.pool.room(s.id) - s.num_cached)  # what fits (the newest may get less)
            if n > 0:
                self.pool.grow(s.id, s.num_cached + n)
                prefill.append((s, n))
                budget -= n
        admitted: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch:
            s = self.waiting[0]
            tokens = s.prefill_ids
            cached = self.pool.cached_prefix(tokens)
            n = min(self.config.prefill_chunk, len(tokens) - cached, budget)
            if not self.pool.can_admit(tokens, cached + n, s.cache_need):
                break
            self.waiting.popleft()
            s.admit(self.pool.admit(s.id, tokens, cached + n, s.cache_need))
            s.slot = s.id
            self.running.append(s)
            admitted.append(s)
            prefill.append((s, n))
            budget -= n
        return StepPlan(tuple(decode), tuple(prefill), tuple(admitted), tuple(preempted))

    def remove(self, seq: Sequence) -> None:
        """Take a finished (or cancelled, or failed) sequence out and give its cache back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.slot is not None:
            self.pool.free(seq.id)
            seq.slot = None

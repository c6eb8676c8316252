"""The engine's synchronous core: `add()` sequences, call `step()` until `has_work` is False.

No threads here: the threaded `Engine` (engine.py), `generate()`, a test or a benchmark drives it. One step =
reap cancelled sequences -> schedule (pure policy) -> run the batched decode forward and the prefill
chunks (chunks of one length batched together) -> sample each row with its own sampler -> free the
slots of whatever finished. A failure while running or sampling one request finishes that request with
an ErrorEvent and frees its slot (a failed batched prefill fails its rows); the other requests keep
going. `step()` returns a frozen StepEvent saying what ran.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from tiny_llm_playground.engine.cache import BlockManager, KVAllocator, SlotPool
from tiny_llm_playground.engine.cache.paged import kv_token_bytes
from tiny_llm_playground.engine.events import StepEvent
from tiny_llm_playground.engine.models import CausalLM
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.model_runner import ModelRunner
from tiny_llm_playground.engine.serve.scheduler import Scheduler
from tiny_llm_playground.engine.serve.sequence import Sequence, Status

log = logging.getLogger(__name__)


class EngineCore:
    def __init__(
        self, model: CausalLM, config: EngineConfig | None = None, *, use_cache: bool = True, raise_errors: bool = False
    ) -> None:
        """use_cache=False: the week-1 path, every forward recomputes each sequence (prompts must then be
        prefilled in one chunk: prefill_chunk and max_tokens_per_step at least the prompt's length).
        raise_errors: a failing forward or sampler raises out of `step()` as it is, instead of ending its
        requests with an ErrorEvent (one caller, one request: `generate()`)."""
        self.config = c = config or EngineConfig()
        self.raise_errors = raise_errors
        self.pool: KVAllocator
        if c.kv_cache == "paged":
            blocks = c.pool_blocks(kv_token_bytes(model.args))
            self.pool = BlockManager(blocks, c.block_size, prefix_caching=c.prefix_caching)
        else:
            self.pool = SlotPool(c.max_batch, c.cache_tokens)
        self.scheduler = Scheduler(c, self.pool)
        blocks = self.pool if isinstance(self.pool, BlockManager) else None
        self.runner = ModelRunner(model, use_cache=use_cache, blocks=blocks, backend=getattr(model, "backend", None),
                                  batch_invariant=c.batch_invariant)  # fmt: skip
        self.steps: deque[StepEvent] = deque(maxlen=self.config.recent_steps)
        self._index = 0

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def reset_prefix_cache(self) -> int:
        """Forget the paged pool's cached free blocks (0 with the dense cache); returns how many."""
        return self.pool.reset_prefix_cache() if isinstance(self.pool, BlockManager) else 0

    def check(self, seq: Sequence) -> None:
        """ValueError if `seq` could never be served here (it would not fit in the cache even alone)."""
        self.scheduler.check(seq)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; ValueError if it could never fit in the cache."""
        self.scheduler.add(seq)

    def step(self) -> StepEvent:
        t0 = time.perf_counter()
        finished = [s for s in self.sequences() if s.cancel_flag.is_set()]
        for s in finished:
            s.finish("cancelled")
            self._free(s)
        plan = self.scheduler.schedule()
        new_tokens = 0
        if plan.decode:
            try:
                logits = self.runner.decode(list(plan.decode))  # (B, V)
            except Exception as e:
                for s in plan.decode:
                    self._fail(s, e)
            else:
                self._commit(plan.decode)
                new_tokens += sum(self._sample(s, row) for s, row in zip(plan.decode, logits, strict=True))
        groups: dict[int, list[Sequence]] = {}  # chunks of one length run as one batched forward
        for s, n in plan.prefill:
            groups.setdefault(n, []).append(s)
        for n, seqs in groups.items():
            try:
                rows = self.runner.prefill(seqs, n)
            except Exception as e:
                for s in seqs:
                    self._fail(s, e)
                continue
            self._commit(seqs)
            for s, row in zip(seqs, rows, strict=True):
                if row is not None:
                    s.status = Status.DECODING
                    new_tokens += self._sample(s, row)
        finished += [s for s in (*plan.decode, *(s for s, _ in plan.prefill)) if s.finished]
        ev = StepEvent(
            index=self._index,
            phase=plan.phase,
            decode_ids=tuple(s.id for s in plan.decode),
            prefill=tuple((s.id, n) for s, n in plan.prefill),
            admitted=tuple(s.id for s in plan.admitted),
            finished=tuple(s.id for s in finished),
            preempted=tuple(s.id for s in plan.preempted),
            new_tokens=new_tokens,
            duration_s=time.perf_counter() - t0,
        )
        self._index += 1
        self.steps.append(ev)
        return ev

    def run(self, max_steps: int | None = None) -> list[StepEvent]:
        """Step until nothing is left (offline batch generation)."""
        out: list[StepEvent] = []
        while self.has_work and (max_steps is None or len(out) < max_steps):
            out.append(self.step())
        return out

    def fail_all(self, message: str) -> None:
        """Finish every request with an ErrorEvent (the step itself broke) and free every slot."""
        for s in self.sequences():
            s.fail(message)
            self._free(s)

    def sequences(self) -> list[Sequence]:
        """Every sequence the core holds: running (admission order), then waiting (arrival order)."""
        return [*self.scheduler.running, *self.scheduler.waiting]

    def _commit(self, seqs) -> None:
        """The forward computed these sequences' new tokens: the cache may share their full blocks now."""
        for s in seqs:
            self.pool.commit(s.id, s.history, s.num_cached)

    def _sample(self, s: Sequence, logits: np.ndarray) -> int:
        try:
            s.accept(s.sample(logits))
        except Exception as e:
            self._fail(s, e)
            return 0
        if s.finished:
            self._free(s)
        return 1

    def _fail(self, s: Sequence, e: Exception) -> None:
        if self.raise_errors:
            raise e
        log.error("request %d failed: %s: %s", s.id, type(e).__name__, e, exc_info=e)
        s.fail(f"generation failed: {type(e).__name__}: {e}")
        self._free(s)

    def _free(self, s: Sequence) -> None:
        self.scheduler.remove(s)
        self.runner.release(s)

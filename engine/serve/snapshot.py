"""Snapshots: the engine's state after a step as frozen records (engine/events.py), cheap to hand out.

The engine thread builds one after every step (`engine_snapshot`); `Engine.snapshot()` returns the latest
to any thread, plus the requests submitted since (`request_timing` of each).

Rules it keeps: built on the engine thread only (it reads the core's live objects); holds plain values.
"""

from __future__ import annotations

from collections.abc import Iterable

from tiny_llm_playground.engine.cache import BlockManager
from tiny_llm_playground.engine.events import EngineSnapshot, RequestState, RequestTiming
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import Sequence

LIVE = ("waiting", "prefilling", "decoding")  # RequestTiming.status of a request not finished yet


def request_timing(seq: Sequence, now: float) -> RequestTiming:
    """The latency figures of `seq` at time `now` (perf_counter seconds)."""
    t0, first, end = seq.submitted_at, seq.first_token_at, seq.finished_at or now
    n_after_first = len(seq.output_ids) - 1
    tps = n_after_first / (end - first) if first is not None and n_after_first > 0 and end > first else None
    return RequestTiming(
        id=seq.id,
        status=seq.finish_reason if seq.finished and seq.finish_reason else seq.status.value,
        prompt_tokens=len(seq.prompt_ids),
        generated=len(seq.output_ids),
        queue_s=None if seq.admitted_at is None else seq.admitted_at - t0,
        ttft_s=None if first is None else first - t0,
        decode_tps=tps,
        age_s=end - t0,
    )


def request_states(core: EngineCore) -> tuple[RequestState, ...]:
    """Every request the core holds (running, then waiting) with the cache it holds."""
    paged = isinstance(core.pool, BlockManager)
    out = []
    for s in core.sequences():
        held = s.slot is not None
        out.append(
            RequestState(
                id=s.id,
                status=s.status.value,
                slot=core.pool.slot(s.id) if held and not paged else None,
                prompt_tokens=len(s.prompt_ids),
                generated=len(s.output_ids),
                cache_tokens=s.num_cached,
                cache_bytes=core.runner.cache_bytes(s),
                allocated_bytes=core.runner.allocated_bytes(s),
                blocks=tuple(core.pool.table(s.id)) if held and paged else (),
                cached_prompt_tokens=s.cached_prompt_tokens,
                preemptions=s.preemptions,
            )
        )
    return tuple(out)


def engine_snapshot(core: EngineCore, *, model: str, served: int, timings: Iterable[RequestTiming]) -> EngineSnapshot:
    steps = tuple(core.steps)
    busy = sum(s.duration_s for s in steps)
    paged = isinstance(core.pool, BlockManager)
    running = tuple(s.id for s in core.scheduler.running)
    return EngineSnapshot(
        model=model,
        ready=True,
        running=running,
        waiting=tuple(s.id for s in core.scheduler.waiting),
        served=served,
        free_slots=core.config.max_batch - len(running),
        total_slots=core.config.max_batch,
        free_cache_tokens=core.pool.free_tokens,
        requests=request_states(core),
        steps=steps,
        tokens_per_s=sum(s.new_tokens for s in steps) / busy if busy > 0 else 0.0,
        config=core.config,
        timings=tuple(timings),
        blocks=core.pool.state() if paged else None,
        kv_block_bytes=core.runner.pool.block_nbytes if paged else 0,
    )


def empty_snapshot(model: str, config: EngineConfig, *, ready: bool, waiting: tuple[int, ...]) -> EngineSnapshot:
    """Before the first step: nothing ran, the whole cache is free."""
    c = config
    blocks = c.kv_pool_blocks or -(-c.cache_tokens // c.block_size)  # a byte-sized pool: known once loaded
    free = blocks * c.block_size if c.kv_cache == "paged" else c.cache_tokens
    return EngineSnapshot(model, ready, (), waiting, 0, c.max_batch, c.max_batch, free, (), (), 0.0, c)

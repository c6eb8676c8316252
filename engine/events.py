"""What the engine publishes: frozen dataclasses, the one vocabulary of every caller (the playground's tabs,
the benchmarks, the tests; the HTTP API, RAG and agents next).

- Per request (`Engine.submit()`'s stream, `generate()`): TokenEvent per new token, then exactly one
  FinishEvent or ErrorEvent.
- Per step (`EngineCore.step()`): StepEvent, which phase ran and with which requests.
- Per snapshot (`Engine.snapshot()`): EngineSnapshot, with RequestState (the cache each request holds) and
  RequestTiming (its latency figures).

Rules it keeps: every record is frozen and holds plain values (ints, floats, strings, tuples, numpy
arrays inside SampleRecord), never MLX arrays, so any thread may read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tiny_llm_playground.engine.cache import BlockPoolState
from tiny_llm_playground.engine.sampling import SampleRecord
from tiny_llm_playground.engine.serve.config import EngineConfig

FinishReason = Literal["eos", "stop", "length", "cancelled"]
Phase = Literal["idle", "prefill", "decode", "mixed"]


@dataclass(frozen=True)
class TokenEvent:
    index: int  # 0-based position among the generated tokens
    token: int
    text: str  # newly finalized text (may be "" while a multi-byte character or stop prefix is pending)
    sample: SampleRecord


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    text: str  # the whole generated text (stop string excluded)
    tail: str  # text held back until the end (a pending character or stop-string prefix), not yet streamed
    token_ids: tuple[int, ...]
    prompt_tokens: int
    prefill_s: float  # admitted -> first token
    decode_s: float  # first token -> finished
    queue_s: float = 0.0  # submitted -> admitted to a batch slot
    ttft_s: float = 0.0  # submitted -> first token
    cached_prompt_tokens: int = 0  # prompt tokens a prefix cache already held (not computed)
    preemptions: int = 0  # times the request was preempted (and computed again)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes out of the prefill; the decode phase produced the rest.
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class ErrorEvent:
    """The request failed inside the engine; the engine itself keeps serving."""

    message: str


RequestEvent = TokenEvent | FinishEvent | ErrorEvent


@dataclass(frozen=True)
class StepEvent:
    index: int
    phase: Phase
    decode_ids: tuple[int, ...]  # rows of the batched decode forward
    prefill: tuple[tuple[int, int], ...]  # (request id, chunk tokens)
    admitted: tuple[int, ...]
    finished: tuple[int, ...]
    new_tokens: int  # tokens sampled this step
    duration_s: float
    preempted: tuple[int, ...] = ()  # requests sent back to the queue to make room (paged cache)

    @property
    def batch(self) -> tuple[int, ...]:
        return self.decode_ids + tuple(rid for rid, _ in self.prefill)

    @property
    def decode_rows(self) -> int:
        return len(self.decode_ids)


@dataclass(frozen=True)
class RequestState:
    """One request as the snapshot shows it."""

    id: int
    status: str
    slot: int | None
    prompt_tokens: int
    generated: int
    cache_tokens: int
    cache_bytes: int  # K/V bytes of the cached tokens
    allocated_bytes: int = 0  # bytes of the storage it holds (dense: buffers grown in steps; paged: blocks)
    blocks: tuple[int, ...] = ()  # paged: its block table
    cached_prompt_tokens: int = 0  # prompt tokens found in the prefix cache
    preemptions: int = 0


@dataclass(frozen=True)
class RequestTiming:
    """Latency figures of one request, live or recently finished (seconds; None = not reached yet)."""

    id: int
    status: str  # waiting / prefilling / decoding, or the finish reason once finished
    prompt_tokens: int
    generated: int
    queue_s: float | None  # submitted -> admitted to a slot
    ttft_s: float | None  # submitted -> first token
    decode_tps: float | None  # tokens after the first per second since the first token
    age_s: float  # seconds since submission (at the snapshot)


@dataclass(frozen=True)
class EngineSnapshot:
    model: str
    ready: bool
    running: tuple[int, ...]  # ids holding a slot, admission order
    waiting: tuple[int, ...]  # ids waiting for a slot, arrival order
    served: int  # requests finished (any reason)
    free_slots: int
    total_slots: int
    free_cache_tokens: int
    requests: tuple[RequestState, ...]
    steps: tuple[StepEvent, ...]  # recent steps, oldest first
    tokens_per_s: float  # sampled tokens per second of step time over the recent steps
    config: EngineConfig
    timings: tuple[RequestTiming, ...] = ()  # live requests, then the recently finished (newest last)
    blocks: BlockPoolState | None = None  # the paged cache's pool (None: the dense cache)
    kv_block_bytes: int = 0  # bytes one block takes over all layers (paged; 0 before the first write)

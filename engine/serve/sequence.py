"""One request inside the engine: its tokens, sampler, text state, cache slot, status and timings.

A sequence moves WAITING -> PREFILLING -> DECODING -> FINISHED (or to FINISHED from any state when it is
cancelled or fails); a preempted one goes back to WAITING and, readmitted, prefills its prompt and the
tokens it had generated (`prefill_ids`) before it decodes on. The scheduler reads only integers from it
(`prefill_left`, `cache_need`, status); the model runner feeds `next_input` to the model and counts
`num_cached`, the one record of how many of its tokens the model has processed (their keys and values
are in its cache; a prefix cache's hit starts it above 0); `accept()` turns each sampled token into
events. These finishing rules (EOS unless ignore_eos, stop strings, the length limit)
exist only here: `generate()` and the threaded `Engine` both run sequences.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from tiny_llm_playground.engine.events import ErrorEvent, FinishEvent, FinishReason, RequestEvent, TokenEvent
from tiny_llm_playground.engine.sampling import Sampler, SampleRecord, SamplingParams
from tiny_llm_playground.engine.text import StopStringMatcher, StreamingDetokenizer


class PromptError(ValueError):
    """The prompt cannot be generated from (empty, or longer than the context)."""


def check_prompt(prompt_ids: list[int], context: int) -> None:
    """Raise PromptError for an empty prompt or one that leaves no room to generate."""
    if len(prompt_ids) == 0:
        raise PromptError("the prompt is empty: give at least one token of text")
    if len(prompt_ids) >= context:
        raise PromptError(
            f"the prompt has {len(prompt_ids)} tokens but the model's context holds {context}; shorten the prompt"
        )


class Status(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        rid: int,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        context: int,
        tokenizer=None,
        emit: Callable[[RequestEvent], None] = lambda ev: None,
        cancel_flag: threading.Event | None = None,
    ) -> None:
        """A request for `params.max_tokens` new tokens after `prompt_ids`, at most up to the model's
        `context`. Raises PromptError for an empty prompt or one that fills the context."""
        check_prompt(prompt_ids, context)
        self.id = rid
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.max_new = min(params.max_tokens, context - len(self.prompt_ids))
        self.emit = emit  # receives TokenEvent / FinishEvent / ErrorEvent (the handle's queue)
        self.cancel_flag = cancel_flag or threading.Event()
        self.status = Status.WAITING
        self.slot: int | None = None  # the allocator's handle while the sequence holds cache capacity
        self.num_cached = 0  # tokens the model has processed: their keys and values are in the cache
        self.cached_prompt_tokens = 0  # prompt tokens found in a prefix cache at the first admission
        self.preemptions = 0
        self.output_ids: list[int] = []
        self.sampler = Sampler(params)
        # Ids that finish the request: the tokenizer's EOS set, empty when the params say ignore_eos.
        use_eos = tokenizer is not None and not params.ignore_eos
        self.eos_ids = frozenset(tokenizer.eos_token_ids) if use_eos else frozenset()
        self._detok = StreamingDetokenizer(tokenizer) if tokenizer is not None else None
        self._stops = StopStringMatcher(list(params.stop))
        self._text: list[str] = []
        self.finish_reason: str | None = None
        self.submitted_at = time.perf_counter()
        self.admitted_at = self.first_token_at = self.finished_at = None

    @property
    def cache_need(self) -> int:
        """Tokens this sequence may ever hold in the cache (reserved at admission)."""
        return len(self.prompt_ids) + self.max_new

    @property
    def prefill_ids(self) -> list[int]:
        """What a prefill computes: the prompt, and after a preemption the tokens generated before it."""
        return self.history if self.output_ids else self.prompt_ids

    @property
    def prefill_left(self) -> int:
        return max(0, len(self.prefill_ids) - self.num_cached)

    def admit(self, cached_tokens: int) -> None:
        """Admitted to the cache with its first `cached_tokens` already computed (a prefix hit)."""
        self.status = Status.PREFILLING
        self.num_cached = cached_tokens
        if self.admitted_at is None:  # the first admission: what the request's figures report
            self.admitted_at = time.perf_counter()
            self.cached_prompt_tokens = cached_tokens

    def restart(self) -> None:
        """Preempted: its cache is gone; it waits to be admitted and computed again."""
        self.status = Status.WAITING
        self.num_cached = 0
        self.preemptions += 1

    @property
    def next_input(self) -> int:
        """The token a decode step feeds: the last one sampled."""
        return self.output_ids[-1]

    @property
    def history(self) -> list[int]:
        """Every token so far: the prompt, then the output."""
        return self.prompt_ids + self.output_ids

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def sample(self, logits) -> SampleRecord:
        """Draw the next token from this position's logits (V,) with the request's own sampler (which looks
        back at the history only for a repetition penalty: building it is O(length) per token)."""
        penalized = self.params.repetition_penalty != 1.0
        return self.sampler(logits, self.history if penalized else ())

    def accept(self, rec: SampleRecord) -> None:
        """Take one sampled token: stream it, and finish on EOS (unless ignore_eos), a stop string or the
        length limit."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if rec.token in self.eos_ids:
            return self.finish("eos")
        self.output_ids.append(rec.token)
        delta, stopped = self._stops.push(self._detok.add(rec.token) if self._detok else "")
        self._text.append(delta)
        self.emit(TokenEvent(index=len(self.output_ids) - 1, token=rec.token, text=delta, sample=rec))
        if stopped:
            self.finish("stop")
        elif len(self.output_ids) >= self.max_new:
            self.finish("length")

    def finish(self, reason: FinishReason) -> None:
        """Emit the FinishEvent (with the held-back tail) and mark the sequence finished."""
        tail = ""
        if reason in ("eos", "length") and self._detok is not None:
            tail, stopped = self._stops.push(self._detok.finalize())
            reason = "stop" if stopped else reason
            tail += "" if stopped else self._stops.flush()
        self._text.append(tail)
        self._close(reason)
        t = self.submitted_at
        first = self.first_token_at or self.finished_at
        admitted = self.admitted_at or self.finished_at
        self.emit(
            FinishEvent(
                reason=reason,
                text="".join(self._text),
                tail=tail,
                token_ids=tuple(self.output_ids),
                prompt_tokens=len(self.prompt_ids),
                prefill_s=first - admitted,
                decode_s=self.finished_at - first,
                queue_s=admitted - t,
                ttft_s=first - t,
                cached_prompt_tokens=self.cached_prompt_tokens,
                preemptions=self.preemptions,
            )
        )

    def fail(self, message: str) -> None:
        self._close("error")
        self.emit(ErrorEvent(message))

    def _close(self, reason: str) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.finished_at = time.perf_counter()

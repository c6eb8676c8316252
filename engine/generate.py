"""Generation loops: the week-1 path without a cache, and the dense-KV-cache path.

`generate()` yields a frozen TokenEvent per new token and one FinishEvent at the end. The no-cache path
recomputes the whole sequence at every step (O(n^2) work): it is the teaching baseline that later
benchmarks measure against. Both paths share sampling, stopping and detokenization, so their greedy
outputs must be identical.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import mlx.core as mx
import numpy as np

from engine.models.qwen2 import Qwen2Model
from engine.sampling import Sampler, SampleRecord, SamplingParams
from engine.tokenizer import StopStringMatcher, StreamingDetokenizer, Tokenizer

FinishReason = Literal["eos", "stop", "length", "cancelled"]


class PromptError(ValueError):
    """The prompt cannot be generated from (empty, or longer than the context)."""


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
    prefill_s: float
    decode_s: float
    queue_s: float = 0.0  # submitted -> admitted to a batch slot (the Engine; 0 for generate())
    ttft_s: float = 0.0  # submitted -> first token (the Engine; 0 for generate())

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes out of the prefill; the decode phase produced the rest.
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def check_prompt(prompt_ids: list[int], context: int) -> None:
    """Raise PromptError for an empty prompt or one that leaves no room to generate."""
    if len(prompt_ids) == 0:
        raise PromptError("the prompt is empty: give at least one token of text")
    if len(prompt_ids) >= context:
        raise PromptError(
            f"the prompt has {len(prompt_ids)} tokens but the model's context holds {context}; shorten the prompt"
        )


def last_logits(model: Qwen2Model, ids: list[int], cache=None) -> np.ndarray:
    """Run the model on `ids` and return the last position's logits as float32 (V,)."""
    logits = model(mx.array([ids]), cache, last_only=True)  # (1, 1, V)
    mx.eval(logits)
    return np.array(logits[0, -1], dtype=np.float32)


def generate(
    model: Qwen2Model,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> Iterator[TokenEvent | FinishEvent]:
    """Stream tokens for one prompt. Stops on an EOS token (unless `params.ignore_eos`), a stop string, or
    max_tokens / the context."""
    context = model.args.max_position_embeddings
    check_prompt(prompt_ids, context)
    max_new = min(params.max_tokens, context - len(prompt_ids))
    sampler = Sampler(params)
    detok = StreamingDetokenizer(tokenizer)
    stops = StopStringMatcher(list(params.stop))
    cache = model.make_cache() if use_cache else None
    eos_ids = frozenset() if params.ignore_eos else frozenset(tokenizer.eos_token_ids)
    seq = list(prompt_ids)
    out_ids: list[int] = []
    text_parts: list[str] = []
    reason: FinishReason = "length"

    t0 = time.perf_counter()
    logits = last_logits(model, seq, cache)
    prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i in range(max_new):
        rec = sampler(logits, seq)
        if rec.token in eos_ids:
            reason = "eos"
            break
        seq.append(rec.token)
        out_ids.append(rec.token)
        delta, stopped = stops.push(detok.add(rec.token))
        text_parts.append(delta)
        yield TokenEvent(index=i, token=rec.token, text=delta, sample=rec)
        if stopped:
            reason = "stop"
            break
        if i + 1 < max_new:
            logits = last_logits(model, [rec.token] if use_cache else seq, cache)
    tail = ""
    if reason != "stop":
        tail, stopped = stops.push(detok.finalize())
        if stopped:
            reason = "stop"
        else:
            tail += stops.flush()
    text_parts.append(tail)
    yield FinishEvent(
        reason=reason,
        text="".join(text_parts),
        tail=tail,
        token_ids=tuple(out_ids),
        prompt_tokens=len(prompt_ids),
        prefill_s=prefill_s,
        decode_s=time.perf_counter() - t1,
    )

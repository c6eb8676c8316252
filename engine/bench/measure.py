"""Engine-side measurements, all through one threaded `Engine` (the engine as the playground serves it).

- `single_stream`: one request alone; prefill tok/s = prompt tokens / (admitted -> first token), decode
  tok/s = tokens after the first / (first -> last token), both from the request's FinishEvent.
- `concurrent`: N requests submitted at once (continuous batching); total throughput = all generated
  tokens / (first submit -> last token), TTFT per request = submitted -> first token.
- `no_cache_steps`: the week-1 path (`generate(use_cache=False)`) run on the engine thread between
  batching steps (MLX arrays must stay on the thread that made the model), timing each token's forward.
Every request is greedy with `ignore_eos`, so it makes exactly `gen` tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tiny_llm_playground.engine.events import ErrorEvent, FinishEvent, TokenEvent
from tiny_llm_playground.engine.generate import generate, last_logits
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.engine import Engine, RequestHandle


def bench_params(gen: int) -> SamplingParams:
    """Greedy, exactly `gen` tokens, no top-logprob bookkeeping."""
    return SamplingParams(temperature=0, max_tokens=gen, logprobs=0, ignore_eos=True)


@dataclass(frozen=True)
class StreamRun:
    prefill_tps: float
    decode_tps: float
    ttft_s: float
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class LevelRun:
    n: int
    tokens: int  # generated, all requests
    wall_s: float  # first submit -> last token
    total_tps: float
    ttft_s: tuple[float, ...]  # per request, submission order
    decode_tps: tuple[float, ...]  # per request
    token_ids: tuple[tuple[int, ...], ...] = ()  # per request: what it generated
    cached_prompt_tokens: tuple[int, ...] = ()  # per request: its prompt tokens found in the prefix cache
    preemptions: tuple[int, ...] = ()  # per request


def finish_of(handle: RequestHandle, gen: int) -> FinishEvent:
    """Drain a request; raise RuntimeError if it failed or did not make exactly `gen` tokens."""
    fin = None
    for ev in handle:
        if isinstance(ev, ErrorEvent):
            raise RuntimeError(f"benchmark request {handle.id} failed: {ev.message}")
        if isinstance(ev, FinishEvent):
            fin = ev
    if fin is None or len(fin.token_ids) != gen:
        got = None if fin is None else (len(fin.token_ids), fin.reason)
        raise RuntimeError(f"benchmark request {handle.id} should make {gen} tokens, got {got}")
    return fin


def single_stream(engine: Engine, ids: list[int], gen: int) -> StreamRun:
    """One request alone. Every measurement starts with an empty prefix cache: the reps repeat their
    prompts, and a hit would time the cache instead of the prefill."""
    engine.reset_prefix_cache()
    fin = finish_of(engine.submit(ids, bench_params(gen)), gen)
    return StreamRun(fin.prefill_tps, fin.decode_tps, fin.ttft_s, fin.token_ids)


def concurrent(engine: Engine, prompts: list[list[int]], gen: int, *, stagger_first: bool = False) -> LevelRun:
    """N requests submitted at once. stagger_first: the first alone until its first token (its prompt is
    then computed and in the prefix cache), then the others at once (a class asking under one prompt)."""
    params = bench_params(gen)
    engine.reset_prefix_cache()  # cold, as in single_stream
    t0 = time.perf_counter()
    handles = [engine.submit(prompts[0], params)]
    fins: list[FinishEvent] = []
    if stagger_first:
        events = iter(handles[0])
        for ev in events:
            if isinstance(ev, ErrorEvent):
                raise RuntimeError(f"benchmark request {handles[0].id} failed: {ev.message}")
            if isinstance(ev, TokenEvent):
                break
        handles += [engine.submit(ids, params) for ids in prompts[1:]]
        rest = list(events)
        fin = rest[-1] if rest else None
        if not isinstance(fin, FinishEvent) or len(fin.token_ids) != gen:
            raise RuntimeError(f"benchmark request {handles[0].id} should make {gen} tokens, got {fin}")
        fins.append(fin)
        fins += [finish_of(h, gen) for h in handles[1:]]
    else:
        handles += [engine.submit(ids, params) for ids in prompts[1:]]
        fins = [finish_of(h, gen) for h in handles]
    # Each request's last token came at submitted + ttft + decode time (engine-side timestamps).
    end = max(h.submitted_at + f.ttft_s + f.decode_s for h, f in zip(handles, fins, strict=True))
    wall = end - t0
    tokens = sum(len(f.token_ids) for f in fins)
    return LevelRun(
        n=len(prompts),
        tokens=tokens,
        wall_s=wall,
        total_tps=tokens / wall if wall > 0 else 0.0,
        ttft_s=tuple(f.ttft_s for f in fins),
        decode_tps=tuple(f.decode_tps for f in fins),
        token_ids=tuple(f.token_ids for f in fins),
        cached_prompt_tokens=tuple(f.cached_prompt_tokens for f in fins),
        preemptions=tuple(f.preemptions for f in fins),
    )


def no_cache_steps(engine: Engine, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Time the first `steps` tokens of the no-cache path on `ids`: token i costs one forward over
    len(ids) + i tokens (plus sampling). Returns (forward lengths, seconds)."""

    def run(lm) -> tuple[list[int], list[float]]:
        lengths: list[int] = []
        seconds: list[float] = []
        t = time.perf_counter()
        for ev in generate(lm.model, lm.tokenizer, ids, bench_params(steps), use_cache=False):
            if isinstance(ev, TokenEvent):
                now = time.perf_counter()
                lengths.append(len(ids) + ev.index)
                seconds.append(now - t)
                t = now
        return lengths, seconds

    return engine.run_on_engine_thread(run)


def no_cache_probe(engine: Engine, ids: list[int]) -> float:
    """Seconds of one no-cache step over all of `ids` (the forward a request's last token costs)."""

    def run(lm) -> float:
        t0 = time.perf_counter()
        last_logits(lm.model, ids)
        return time.perf_counter() - t0

    return engine.run_on_engine_thread(run)

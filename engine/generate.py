"""`generate()`: stream one prompt's tokens, a loop over the same step as the threaded engine.

It runs one `Sequence` through an `EngineCore` (scheduler, model runner, sampler, finishing rules: one
implementation of each), with the whole prompt prefilled in one step, and yields the sequence's frozen
events: a TokenEvent per new token, then one FinishEvent. `use_cache=False` is the week-1 teaching
baseline: every step recomputes the whole sequence (O(n^2) work), which later benchmarks measure
against; greedy outputs with and without the cache must be identical.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from tiny_llm_playground.engine.events import FinishEvent, RequestEvent, TokenEvent
from tiny_llm_playground.engine.models import CausalLM
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import Sequence
from tiny_llm_playground.engine.text import Tokenizer


def last_logits(model: CausalLM, ids: list[int], cache=None) -> np.ndarray:
    """Run the model on `ids` and return the last position's logits as float32 (V,)."""
    logits = model(mx.array([ids]), cache, last_only=True)  # (1, 1, V)
    mx.eval(logits)
    return np.array(logits[0, -1], dtype=np.float32)


def generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
    kv_cache: str = "paged",
    block_size: int = 16,
    batch_invariant: bool = False,
) -> Iterator[TokenEvent | FinishEvent]:
    """Stream tokens for one prompt. Stops on an EOS token (unless `params.ignore_eos`), a stop string, or
    max_tokens / the context. kv_cache: "paged" (blocks of `block_size` tokens) or "dense"; batch_invariant:
    EngineConfig.batch_invariant (the prompt's forward then rounds as the decode steps do). Raises
    PromptError for an empty prompt or one that fills the context; an error inside a forward or the
    sampler comes out as it was raised."""
    events: deque[RequestEvent] = deque()
    context = model.args.max_position_embeddings
    seq = Sequence(0, prompt_ids, params, context=context, tokenizer=tokenizer, emit=events.append)
    n = len(seq.prompt_ids)  # the whole prompt in the first step, as one forward
    config = EngineConfig(max_batch=1, max_waiting=1, prefill_chunk=n, max_tokens_per_step=n,
                          cache_tokens=seq.cache_need, recent_steps=0, kv_cache=kv_cache,
                          block_size=block_size, batch_invariant=batch_invariant)  # fmt: skip
    core = EngineCore(model, config, use_cache=use_cache, raise_errors=True)
    core.add(seq)
    while core.has_work:
        core.step()
        while events:
            yield events.popleft()

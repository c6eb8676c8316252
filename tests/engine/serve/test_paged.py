"""The paged cache end to end on the tiny random model: the same numbers as the dense cache, prefix hits
(a shared system prompt, a prompt seen before in full), preemption under a small pool; every greedy token
is checked against the prompt alone through an independent loop (tests.utils.reference_generate)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.utils import assert_allclose, reference_generate
from tiny_llm_playground.engine.cache import BlockManager
from tiny_llm_playground.engine.events import FinishEvent, TokenEvent
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.model_runner import ModelRunner
from tiny_llm_playground.engine.serve.sequence import Sequence

GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from tiny_llm_playground.engine.loader import load_model

    return load_model(str(tiny_model_dir))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("backend", ["ref", None])
def test_paged_forwards_give_the_dense_log_probabilities(tiny_lm, backend):
    """Prefill in chunks then decode steps, three rows of different lengths in one batch: the paged
    runner's log-probabilities equal the dense runner's within 1e-5 (float32)."""
    from tiny_llm_playground.engine.loader import load_model

    model = load_model(str(tiny_lm.path), backend=backend).model
    prompts = [list(range(3, 40)), list(range(50, 59)), list(range(7, 30))]
    runs = {}
    for kind in ("paged", "dense"):
        blocks = BlockManager(64, block_size=4) if kind == "paged" else None
        runner = ModelRunner(model, blocks=blocks, backend=backend)
        seqs = [Sequence(i, p, GREEDY, context=128) for i, p in enumerate(prompts)]
        out = []
        for s in seqs:
            if blocks is not None:
                blocks.admit(s.id, s.prompt_ids, len(s.prompt_ids))
        last: dict[int, np.ndarray] = {}
        for n in (5, 4):  # two chunks of every prompt, batched (the 9-token prompt ends there)
            for s, row in zip(seqs, runner.prefill(seqs, n), strict=True):
                if row is not None:
                    last[s.id] = row
        for s in seqs:  # the rest of each prompt alone
            if s.id not in last:
                last[s.id] = runner.prefill([s], len(s.prompt_ids) - s.num_cached)[0]
        for s in seqs:  # each prompt's first token
            out.append(last[s.id])
            s.output_ids.append(int(np.argmax(last[s.id])))
        for _ in range(4):  # decode steps of all three rows at once
            if blocks is not None:
                for s in seqs:
                    blocks.grow(s.id, s.num_cached + 1)
            logits = runner.decode(seqs)
            out += list(logits)
            for s, row in zip(seqs, logits, strict=True):
                s.output_ids.append(int(np.argmax(row)))
        runs[kind] = np.stack(out)
    assert_allclose(log_softmax(runs["paged"]), log_softmax(runs["dense"]), 1e-5, 1e-5, "log-probabilities")


def serve(lm, prompts, params=GREEDY, one_by_one=False, **config) -> tuple[dict[int, FinishEvent], list]:
    """Every prompt through one core (each to the end before the next when `one_by_one`)."""
    core = EngineCore(lm.model, EngineConfig(**config))
    events: dict[int, list] = {}
    steps = []
    for i, p in enumerate(prompts):
        events[i] = []
        core.add(Sequence(i, p, params, context=128, tokenizer=lm.tokenizer, emit=events[i].append))
        if one_by_one:
            steps += core.run()
    steps += core.run()
    assert core.pool.full, "the cache did not come back whole"
    return {i: evs[-1] for i, evs in events.items()}, steps


def check_against_reference(lm, prompts, finals, params=GREEDY) -> None:
    for i, p in enumerate(prompts):
        ref = reference_generate(lm.model, lm.tokenizer, p, params)
        assert finals[i].token_ids == ref.token_ids, f"request {i}"


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_requests_sharing_a_system_prompt_hit_its_blocks_and_match_the_reference(tiny_lm, prefix_caching):
    system = list(range(10, 74))  # 64 tokens: 4 blocks of 16
    prompts = [system + [200 + i, 201 + i, 202] for i in range(5)]
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=3, prefix_caching=prefix_caching))
    finals: dict[int, FinishEvent] = {}
    first = Sequence(0, prompts[0], GREEDY, context=128, tokenizer=tiny_lm.tokenizer,
                     emit=lambda ev: finals.setdefault(0, ev) if isinstance(ev, FinishEvent) else None)  # fmt: skip
    core.add(first)
    core.run()  # the first computes the system prompt; the others arrive together after it
    for i in range(1, 5):
        core.add(Sequence(i, prompts[i], GREEDY, context=128, tokenizer=tiny_lm.tokenizer,
                          emit=lambda ev, i=i: finals.__setitem__(i, ev) if isinstance(ev, FinishEvent) else None))  # fmt: skip
    core.run()
    assert core.pool.full
    check_against_reference(tiny_lm, prompts, finals)
    cached = [finals[i].cached_prompt_tokens for i in range(5)]
    assert cached == ([0, 64, 64, 64, 64] if prefix_caching else [0] * 5)
    state = core.pool.state()
    assert state.prefix_hit_tokens == sum(cached)
    assert (state.cached_free > 0) == prefix_caching  # the system prompt's blocks stay cached
    assert core.reset_prefix_cache() == state.cached_free
    again: list = []
    core.add(Sequence(5, prompts[1], GREEDY, context=128, emit=again.append))
    core.run()
    assert again[-1].cached_prompt_tokens == 0 and again[-1].token_ids == finals[1].token_ids, "cold after reset"


def test_a_prompt_seen_before_in_full_recomputes_only_its_last_token(tiny_lm):
    prompt = list(range(20, 52))  # exactly two blocks of 16
    finals, _ = serve(tiny_lm, [prompt, prompt, prompt + [5]], one_by_one=True)
    assert [finals[i].cached_prompt_tokens for i in range(3)] == [0, 31, 32]
    check_against_reference(tiny_lm, [prompt, prompt, prompt + [5]], finals)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_pool_too_small_for_everyone_preempts_and_every_output_stays_the_same(tiny_lm, prefix_caching):
    """Eight requests of 30-45 tokens + 24 new in a pool of 12 blocks of 16 (about 40% of what they need
    together): the newest are preempted and computed again, nobody starves, every output equals the
    reference, and the pool is whole afterwards."""
    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(1, 250, int(rng.integers(30, 46)))] for _ in range(8)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    finals, steps = serve(tiny_lm, prompts, params, max_batch=8, kv_pool_blocks=12, prefix_caching=prefix_caching,
                          prefill_chunk=32)  # fmt: skip
    preempted = [rid for s in steps for rid in s.preempted]
    assert preempted, "nothing was preempted: the pool was not small enough"
    assert sum(f.preemptions for f in finals.values()) == len(preempted)
    assert all(isinstance(f, FinishEvent) and f.reason == "length" for f in finals.values())
    check_against_reference(tiny_lm, prompts, finals, params)
    assert 0 not in preempted, "the oldest request was preempted"


def test_a_request_larger_than_the_pool_is_refused_and_the_engine_keeps_serving(tiny_lm):
    core = EngineCore(tiny_lm.model, EngineConfig(kv_pool_blocks=2, block_size=16))
    big = Sequence(0, list(range(40)), GREEDY, context=128)
    with pytest.raises(ValueError, match="needs 52 cache tokens .* holds 2 blocks"):
        core.add(big)
    events: list = []
    core.add(Sequence(1, [1, 2, 3], SamplingParams(temperature=0, max_tokens=4), context=128, emit=events.append))
    core.run()
    assert isinstance(events[-1], FinishEvent) and sum(isinstance(e, TokenEvent) for e in events) <= 4


def test_the_pool_can_be_sized_in_bytes(tiny_lm):
    from tiny_llm_playground.engine.cache.paged import kv_token_bytes

    args = tiny_lm.model.args
    token = kv_token_bytes(args)
    assert token == 2 * args.num_hidden_layers * args.num_key_value_heads * args.head_dim * 4
    core = EngineCore(tiny_lm.model, EngineConfig(kv_pool_bytes=5 * 16 * token + 7, block_size=16))
    assert core.pool.num_blocks == 5, "rounded down to whole blocks"
    with pytest.raises(ValueError, match="holds no block"):
        EngineCore(tiny_lm.model, EngineConfig(kv_pool_bytes=16 * token - 1, block_size=16))
    with pytest.raises(ValueError, match="not both"):
        EngineConfig(kv_pool_blocks=4, kv_pool_bytes=1 << 20)
    events: list = []
    core.add(Sequence(1, [1, 2, 3], SamplingParams(temperature=0, max_tokens=4), context=128, emit=events.append))
    core.run()
    assert isinstance(events[-1], FinishEvent)
    assert core.runner.pool.block_nbytes == 16 * token, "the pool's arrays take what kv_token_bytes says"

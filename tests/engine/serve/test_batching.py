"""Continuous batching on real tensors: EngineCore on the tiny random model (plus one real-model test).

The reference for every output is the prompt alone through a loop written independently of the serving
code (`tests.utils.reference_generate`): batching, chunking and arrivals in the middle of other requests
must not change a greedy token.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.utils import assert_allclose, reference_generate
from tiny_llm_playground.engine.cache import DenseKVCache
from tiny_llm_playground.engine.events import ErrorEvent, FinishEvent, TokenEvent
from tiny_llm_playground.engine.generate import generate
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import Sequence, Status
from tiny_llm_playground.engine.serve.snapshot import request_states

PROMPTS = [
    " the thin",
    " a",
    " over the lazy dog and",
    " th",
    " jumps",
    " hello world, this is a longer prompt",
]


@pytest.fixture(params=["paged", "dense"])
def kv(request) -> str:
    """Every batching test runs on both caches: the paged default and the dense week-2 cache."""
    return request.param


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from tiny_llm_playground.engine.loader import load_model

    return load_model(str(tiny_model_dir))


class Recorder:
    """Collects each request's events in place of a handle."""

    def __init__(self) -> None:
        self.events: dict[int, list] = {}

    def seq(self, lm, rid: int, prompt: str | list[int], params: SamplingParams) -> Sequence:
        ids = lm.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        self.events[rid] = []
        context = lm.model.args.max_position_embeddings
        return Sequence(rid, ids, params, context=context, tokenizer=lm.tokenizer, emit=self.events[rid].append)

    def tokens(self, rid: int) -> tuple[int, ...]:
        return tuple(e.token for e in self.events[rid] if isinstance(e, TokenEvent))

    def final(self, rid: int):
        ends = [e for e in self.events[rid] if isinstance(e, FinishEvent | ErrorEvent)]
        assert len(ends) == 1, f"request {rid} has {len(ends)} final events"
        assert self.events[rid][-1] is ends[0], "the final event must come last"
        return ends[0]


def single_stream(lm, prompt: str | list[int], params: SamplingParams):
    """The reference: the prompt alone, through a loop independent of the serving code (tests/utils.py)."""
    ids = lm.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    return reference_generate(lm.model, lm.tokenizer, ids, params)


def test_generate_equals_the_independent_reference(tiny_lm):
    """generate() (a loop over the engine's own step) against the written-out loop, sampled and greedy."""
    for params in (SamplingParams(temperature=0, max_tokens=12), SamplingParams(temperature=1.0, seed=3)):
        for prompt in PROMPTS[:3]:
            fin = list(generate(tiny_lm.model, tiny_lm.tokenizer, tiny_lm.tokenizer.encode(prompt), params))[-1]
            ref = single_stream(tiny_lm, prompt, params)
            assert (fin.token_ids, fin.reason, fin.text) == (ref.token_ids, ref.reason, ref.text), prompt


@pytest.mark.parametrize("chunk", [256, 4, 1])
def test_batched_greedy_equals_single_stream_token_for_token(tiny_lm, chunk, kv):
    params = SamplingParams(temperature=0, max_tokens=20)
    core = EngineCore(
        tiny_lm.model, EngineConfig(max_batch=4, prefill_chunk=chunk, max_tokens_per_step=16, kv_cache=kv)
    )
    rec = Recorder()
    # Staggered arrivals: two now, the rest while those decode (more requests than slots).
    for rid in (0, 1):
        core.add(rec.seq(tiny_lm, rid, PROMPTS[rid], params))
    steps = [core.step() for _ in range(3)]
    for rid in range(2, len(PROMPTS)):
        core.add(rec.seq(tiny_lm, rid, PROMPTS[rid], params))
    steps += core.run(max_steps=500)
    assert not core.has_work and core.pool.full
    assert max(s.decode_rows for s in steps) > 1, "decode rows were never batched"
    assert any(s.phase == "mixed" for s in steps), "no step mixed decode rows with a prefill chunk"
    for rid, prompt in enumerate(PROMPTS):
        ref = single_stream(tiny_lm, prompt, params)
        fin = rec.final(rid)
        assert rec.tokens(rid) == ref.token_ids == fin.token_ids, f"request {rid} ({prompt!r})"
        assert (fin.reason, fin.text) == (ref.reason, ref.text)


def test_equal_chunks_prefill_together_and_match_single_stream(tiny_lm, kv):
    """Prompt chunks of one length run as one (B, chunk) forward over the rows' own caches (RoPE at each
    row's offset, attention over each row's keys): greedy tokens must still equal single-stream ones."""
    params = SamplingParams(temperature=0, max_tokens=6)
    prompts = [" over the lazy dog and", " hello world, this is a", " jumps over the thin dog"]
    ids = [tiny_lm.tokenizer.encode(p) for p in prompts]
    n = min(len(i) for i in ids)
    ids = [i[:n] for i in ids]  # same length, different tokens
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=3, prefill_chunk=3, max_tokens_per_step=16, kv_cache=kv))
    rec = Recorder()
    for rid, i in enumerate(ids):
        core.add(rec.seq(tiny_lm, rid, i, params))
    steps = core.run(max_steps=100)
    assert any(len(s.prefill) >= 2 and len({c for _, c in s.prefill}) == 1 for s in steps), "no batched prefill"
    for rid, i in enumerate(ids):
        assert rec.tokens(rid) == single_stream(tiny_lm, i, params).token_ids, f"request {rid}"


def test_ignore_eos_generates_through_eos_in_generate_and_in_batching(tiny_lm, monkeypatch, kv):
    """Make the 3rd greedy token an EOS: it ends both paths early, unless the params say ignore_eos."""
    from dataclasses import replace

    params = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
    full = single_stream(tiny_lm, PROMPTS[0], params).token_ids
    assert len(full) == 8, "the tiny model hit a real EOS; pick another prompt"
    k = full.index(full[2])  # where that token first appears
    monkeypatch.setattr(tiny_lm.tokenizer, "_eos_ids", frozenset({full[2]}))
    ignoring = replace(params, ignore_eos=True)

    stopped, kept = single_stream(tiny_lm, PROMPTS[0], params), single_stream(tiny_lm, PROMPTS[0], ignoring)
    assert (stopped.reason, stopped.token_ids) == ("eos", full[:k])
    assert (kept.reason, kept.token_ids) == ("length", full)

    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=2, kv_cache=kv))
    rec = Recorder()
    core.add(rec.seq(tiny_lm, 0, PROMPTS[0], params))
    core.add(rec.seq(tiny_lm, 1, PROMPTS[0], ignoring))
    core.run(max_steps=100)
    assert (rec.final(0).reason, rec.tokens(0)) == ("eos", full[:k])
    assert (rec.final(1).reason, rec.tokens(1)) == ("length", full)


def test_sampled_requests_keep_their_own_seeded_stream(tiny_lm, kv):
    """Per-request sampling params: a seeded request gives the same tokens alone and in a batch."""
    mixed = [
        SamplingParams(temperature=0.9, top_k=20, seed=7, max_tokens=12),
        SamplingParams(temperature=0, max_tokens=5),
        SamplingParams(temperature=1.3, top_p=0.8, seed=3, max_tokens=9, repetition_penalty=1.2),
    ]
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=3, prefill_chunk=3, kv_cache=kv))
    rec = Recorder()
    for rid, p in enumerate(mixed):
        core.add(rec.seq(tiny_lm, rid, PROMPTS[rid], p))
    core.run(max_steps=200)
    for rid, p in enumerate(mixed):
        assert rec.tokens(rid) == single_stream(tiny_lm, PROMPTS[rid], p).token_ids


def test_chunked_and_unchunked_prefill_give_the_same_logits(tiny_lm):
    model = tiny_lm.model
    ids = tiny_lm.tokenizer.encode(PROMPTS[-1])
    whole = model(mx.array([ids]), model.make_cache())[0]  # (L, V)
    for chunk in (1, 3, 7):
        cache = model.make_cache()
        parts = [model(mx.array([ids[i : i + chunk]]), cache)[0] for i in range(0, len(ids), chunk)]
        assert_allclose(mx.concatenate(parts, axis=0), whole, 1e-5, 1e-5, f"chunk {chunk}")


def test_batch_cache_decode_equals_per_row_decode(tiny_lm):
    """One (B, 1) forward over ragged per-row caches gives each row's own (1, 1) logits."""
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    prompts = [tok.encode(p) for p in (PROMPTS[0], PROMPTS[2], PROMPTS[4], PROMPTS[5])]
    caches = [model.make_cache() for _ in prompts]
    for ids, c in zip(prompts, caches, strict=True):
        model(mx.array([ids[:-1]]), c)
    single = [model(mx.array([[ids[-1]]]), [*map(_copy, c)])[0, -1] for ids, c in zip(prompts, caches, strict=True)]
    batch = [_view([c[i] for c in caches]) for i in range(model.args.num_hidden_layers)]
    logits = model(mx.array([[ids[-1]] for ids in prompts]), batch)[:, -1]  # (B, V)
    assert_allclose(logits, mx.stack(single), 1e-5, 1e-5, "batched decode")
    assert all(b.lengths == [len(ids) for ids in prompts] for b in batch)


def test_batched_decode_steps_across_cache_growth_equal_single_rows(tiny_lm):
    """Several batched decode steps (the fast path writes each row's token into its own buffer) while the
    rows' buffers grow (step 3: a row crosses a capacity boundary every few tokens) give the same logits
    as decoding each row alone, and the rows' stored keys stay those of the single-row caches."""
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    layers = model.args.num_hidden_layers
    prompts = [tok.encode(p) for p in (PROMPTS[0], PROMPTS[2], PROMPTS[5])]
    batched = [[DenseKVCache(step=3) for _ in range(layers)] for _ in prompts]
    alone = [[DenseKVCache(step=3) for _ in range(layers)] for _ in prompts]
    for ids, b, a in zip(prompts, batched, alone, strict=True):
        mx.eval(model(mx.array([ids]), b), model(mx.array([ids]), a))
    nxt = [ids[-1] for ids in prompts]
    cache = [_view([c[i] for c in batched]) for i in range(layers)]  # counts the rows' tokens from here
    for step in range(7):
        logits = model(mx.array([[t] for t in nxt]), cache)[:, -1]  # (B, V)
        single = [model(mx.array([[t]]), a)[0, -1] for t, a in zip(nxt, alone, strict=True)]
        assert_allclose(logits, mx.stack(single), 1e-5, 1e-5, f"step {step}")
        nxt = [int(i) for i in mx.argmax(logits, axis=-1).tolist()]
    for row, a in enumerate(alone):
        n = cache[0].lengths[row]
        assert n == a[0].offset
        assert_allclose(cache[0].rows[row].keys[:, :, :n], a[0].keys[:, :, :n], 1e-5, 1e-5, "stored keys")


def test_lazily_chained_decode_steps_and_chunks_see_each_others_writes(tiny_lm):
    """The decode op writes the cache in place; its writes are ordered by hand (`after`, mx.depends). A
    graph of decode steps followed by a multi-token chunk, all built before one eval, must give the same
    logits as evaluating every step as it is built."""
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    ids = tok.encode(PROMPTS[5])
    prompt, steps, chunk = ids[:4], ids[4:7], ids[7:10]

    def run(eager: bool) -> list[mx.array]:
        cache = model.make_cache()
        mx.eval(model(mx.array([prompt]), cache))
        outs = []
        for t in steps:
            outs.append(model(mx.array([[t]]), cache)[0, -1])
            if eager:
                mx.eval(outs[-1])
        outs.append(model(mx.array([chunk]), cache)[0, -1])
        outs.append(model(mx.array([[ids[-1]]]), cache)[0, -1])
        mx.eval(outs)
        return outs

    for i, (lazy, eager) in enumerate(zip(run(False), run(True), strict=True)):
        assert_allclose(lazy, eager, 1e-5, 1e-5, f"output {i}")


def _view(caches: list[DenseKVCache]) -> DenseKVCache:
    """One layer's batch view over one-row caches: their buffers, at the lengths they hold now."""
    return DenseKVCache.over([c.rows[0] for c in caches], [c.offset for c in caches])


def _copy(c):
    d = DenseKVCache()
    d.update_and_fetch(c.keys[:, :, : c.offset], c.values[:, :, : c.offset])
    return d


def test_cancel_and_errors_free_every_slot(tiny_lm, monkeypatch, kv):
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=3, prefill_chunk=2, kv_cache=kv))
    rec = Recorder()
    seqs = [rec.seq(tiny_lm, rid, PROMPTS[rid], SamplingParams(temperature=0, max_tokens=30)) for rid in range(6)]
    for s in seqs:
        core.add(s)
    core.step()
    core.step()
    seqs[0].cancel_flag.set()  # running
    seqs[5].cancel_flag.set()  # still waiting
    original = core.runner.prefill

    def flaky(seqs, n):
        if any(s.id == 3 for s in seqs):
            raise RuntimeError("kernel exploded")
        return original(seqs, n)

    monkeypatch.setattr(core.runner, "prefill", flaky)
    original_decode = core.runner.decode

    def flaky_decode(batch):
        if any(s.id == 4 for s in batch) and len(rec.tokens(4)) >= 2:
            raise RuntimeError("batch exploded")
        return original_decode(batch)

    monkeypatch.setattr(core.runner, "decode", flaky_decode)
    core.run(max_steps=300)
    assert core.pool.full and not core.scheduler.running and not core.runner._buffers
    assert rec.final(0).reason == "cancelled" and rec.final(5).reason == "cancelled"
    assert rec.final(5).token_ids == ()
    assert "kernel exploded" in rec.final(3).message
    assert "batch exploded" in rec.final(4).message
    # Rows that shared the failed batch end with the error too; everyone else finishes normally.
    for rid in (1, 2):
        assert isinstance(rec.final(rid), FinishEvent | ErrorEvent)


def test_a_failing_sampler_ends_only_its_request(tiny_lm, kv):
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=2, kv_cache=kv))
    rec = Recorder()
    bad = rec.seq(tiny_lm, 0, PROMPTS[0], SamplingParams(temperature=0, max_tokens=8))
    good = rec.seq(tiny_lm, 1, PROMPTS[1], SamplingParams(temperature=0, max_tokens=8))

    def boom(logits, history=()):
        raise FloatingPointError("nan logits")

    bad.sampler = boom
    core.add(bad)
    core.add(good)
    core.run(max_steps=50)
    assert isinstance(rec.final(0), ErrorEvent) and "nan logits" in rec.final(0).message
    assert rec.tokens(1) == single_stream(tiny_lm, PROMPTS[1], good.params).token_ids
    assert core.pool.full


# ----- randomized arrivals -----

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 40), st.integers(1, 12), st.sampled_from([0.0, 0.8])),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("step"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=ops, max_batch=st.integers(1, 4), chunk=st.integers(1, 16), budget_extra=st.integers(0, 8),
    kv=st.sampled_from(["paged", "dense"]), block_size=st.sampled_from([1, 4, 16]),
)  # fmt: skip
def test_random_arrivals_lose_and_starve_no_request(tiny_lm, ops, max_batch, chunk, budget_extra, kv, block_size):
    """Random submits, cancels and steps on a small cache (200 tokens: the paged one preempts): nothing is
    lost or starved, every request ends once, the cache comes back whole, first admissions keep arrival
    order."""
    cfg = EngineConfig(max_batch=max_batch, prefill_chunk=chunk, max_tokens_per_step=max_batch + budget_extra,
                       cache_tokens=200, kv_cache=kv, block_size=block_size)  # fmt: skip
    core = EngineCore(tiny_lm.model, cfg)
    rec = Recorder()
    seqs: list[Sequence] = []
    admitted: list[int] = []
    rng = np.random.default_rng(0)

    def step() -> None:
        ev = core.step()
        admitted.extend(ev.admitted)
        assert len(core.scheduler.running) <= max_batch
        assert ev.decode_rows + sum(n for _, n in ev.prefill) <= cfg.max_tokens_per_step
        assert all(s.num_cached <= s.cache_need for s in core.scheduler.running)

    for op in ops:
        if op[0] == "submit":
            _, n_prompt, max_tokens, temp = op
            params = SamplingParams(temperature=temp, seed=len(seqs), max_tokens=max_tokens)
            s = rec.seq(tiny_lm, len(seqs), [int(t) for t in rng.integers(0, 256, n_prompt)], params)
            seqs.append(s)
            core.add(s)
        elif op[0] == "cancel" and seqs:
            seqs[op[1] % len(seqs)].cancel_flag.set()
        elif op[0] == "step":
            for _ in range(op[1]):
                step()
    # Every request needs at most 40 + 12 tokens of work, so the queue drains within a bounded number of steps.
    bound = sum(s.cache_need for s in seqs) + 2 * len(seqs) + 1
    n = 0
    while core.has_work:
        step()
        n += 1
        assert n <= bound, "requests starved: the engine did not drain"
    assert core.pool.full and not core.runner._buffers
    for s in seqs:
        fin = rec.final(s.id)  # exactly one final event each: nothing lost
        assert s.status is Status.FINISHED
        if not s.cancel_flag.is_set():
            assert isinstance(fin, FinishEvent) and fin.reason in ("eos", "length", "stop")
            assert len(fin.token_ids) <= s.params.max_tokens
    # First come, first served: first admissions follow arrival order (a preempted one comes back later).
    first = list(dict.fromkeys(admitted))
    assert first == sorted(first)


@pytest.mark.real_model
def test_four_concurrent_greedy_requests_match_single_stream_on_the_real_model(real_lm):
    prompts = [
        "def fibonacci(n):",
        "# Sort a list in Python\n",
        "The capital of France is",
        "import numpy as np\n",
    ]
    params = SamplingParams(temperature=0, max_tokens=16)
    core = EngineCore(real_lm.model, EngineConfig(max_batch=4, prefill_chunk=8))
    rec = Recorder()
    for rid, p in enumerate(prompts):
        core.add(rec.seq(real_lm, rid, p, params))
    steps = core.run(max_steps=200)
    assert max(s.decode_rows for s in steps) == 4
    for rid, p in enumerate(prompts):
        assert rec.tokens(rid) == single_stream(real_lm, p, params).token_ids, p


def test_snapshot_cache_bytes_count_the_cached_tokens_not_the_buffers(tiny_lm, kv):
    """RequestState.cache_bytes = tokens x layers x 2 (K and V) x kv heads x head dim x 4 (float32);
    allocated_bytes = the storage it holds: dense buffers grow in steps of 256 tokens, paged blocks hold 16."""
    a = tiny_lm.model.args
    per_token = a.num_hidden_layers * 2 * a.num_key_value_heads * a.head_dim * 4
    core = EngineCore(tiny_lm.model, EngineConfig(max_batch=2, prefill_chunk=3, kv_cache=kv))
    rec = Recorder()
    for rid, prompt in enumerate((PROMPTS[-1], PROMPTS[1])):
        core.add(rec.seq(tiny_lm, rid, prompt, SamplingParams(temperature=0, max_tokens=5)))
    for _ in range(3):
        core.step()
        for r in request_states(core):
            assert r.cache_tokens > 0 and r.cache_bytes == r.cache_tokens * per_token, r
            if kv == "dense":  # buffers grown 256 tokens at a time
                assert r.allocated_bytes == 256 * per_token, r
            else:  # the blocks it holds, 16 tokens each
                assert r.allocated_bytes == len(r.blocks) * 16 * per_token > 0, r
                assert len(r.blocks) == -(-r.cache_tokens // 16), r
    states = {r.id: r for r in request_states(core)}
    assert states[0].cache_bytes != states[1].cache_bytes, "two lengths, two sizes (not a constant)"
    core.run()
    assert request_states(core) == ()

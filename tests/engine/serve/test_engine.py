"""The threaded Engine on a tiny random model: streaming, ordering, cancellation, errors, busy queue."""

from __future__ import annotations

import threading

import pytest

from tiny_llm_playground.engine import (
    Engine,
    EngineBusyError,
    ErrorEvent,
    FinishEvent,
    PromptError,
    SamplingParams,
    TokenEvent,
)
from tiny_llm_playground.engine.generate import generate


@pytest.fixture
def engine(tiny_model_dir):
    eng = Engine(str(tiny_model_dir))
    eng.wait_ready(60)
    yield eng
    eng.shutdown()
    assert not eng._thread.is_alive(), "the engine thread must end on shutdown"


def collect(handle):
    events = list(handle)
    assert isinstance(events[-1], FinishEvent | ErrorEvent)
    return events


def test_stream_matches_direct_generation(engine, tiny_model_dir):
    from tiny_llm_playground.engine.loader import load_model

    params = SamplingParams(temperature=0, max_tokens=12)
    events = collect(engine.submit(" the thin", params))
    tokens = [e.token for e in events if isinstance(e, TokenEvent)]
    lm = load_model(str(tiny_model_dir))
    direct = list(generate(lm.model, lm.tokenizer, lm.tokenizer.encode(" the thin"), params))
    assert tuple(tokens) == direct[-1].token_ids == events[-1].token_ids
    assert "".join(e.text for e in events[:-1]) + events[-1].tail == events[-1].text


def test_requests_from_many_threads_all_finish(engine):
    results: dict[int, FinishEvent] = {}

    def worker(i: int) -> None:
        h = engine.submit(f" th{i}", SamplingParams(temperature=0.8, seed=i, max_tokens=6))
        results[i] = collect(h)[-1]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(6))
    assert all(isinstance(r, FinishEvent) for r in results.values())
    assert engine.snapshot().served >= 6


def test_chat_messages_use_the_template(engine):
    h = engine.submit([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=2))
    assert engine.tokenizer.decode(h.prompt_ids).startswith("<|im_start|>user\nhi<|im_end|>")
    collect(h)


def test_cancel_stops_within_a_token_and_engine_keeps_serving(engine, monkeypatch):
    """The engine runs one decode step per permit the test gives it, so when the reader cancels after its
    second token the engine is at most one step ahead: one more token at most, then the finish."""
    engine.wait_ready()
    runner = engine._core.runner
    decode, permits = runner.decode, threading.Semaphore(0)

    def gated_decode(seqs):
        assert permits.acquire(timeout=60), "the test never let this decode step run"
        return decode(seqs)

    monkeypatch.setattr(runner, "decode", gated_decode)
    h = engine.submit(" the", SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    seen = 0
    for ev in h:
        if isinstance(ev, TokenEvent):
            seen += 1
            if seen == 2:
                h.cancel()
            permits.release()  # one more decode step
        else:
            last = ev
    assert isinstance(last, FinishEvent) and last.reason == "cancelled"
    assert 2 <= seen <= 3 and len(last.token_ids) == seen
    monkeypatch.setattr(runner, "decode", decode)
    after = collect(engine.submit(" th", SamplingParams(temperature=0, max_tokens=3)))
    assert isinstance(after[-1], FinishEvent) and after[-1].reason in ("length", "eos")
    assert wait_idle(engine).free_slots == engine.config.max_batch  # every slot came back


@pytest.mark.parametrize(
    ("prompt", "exc", "match"),
    [
        ("", ValueError, "empty"),
        ("   \n", ValueError, "empty"),
        ([], ValueError, "empty"),
        ([{"role": "user", "content": "  "}], ValueError, "empty"),
        ([5, 999999], ValueError, "out of range"),
        ("x" * 300, PromptError, r"300 tokens but the model's context holds 128"),
    ],
)
def test_bad_input_is_rejected_at_submit(engine, prompt, exc, match):
    with pytest.raises(exc, match=match):
        engine.submit(prompt, SamplingParams())
    assert engine.snapshot().waiting == ()


def wait_idle(engine, timeout: float = 30.0):
    """The snapshot once nothing is running or waiting (the engine publishes after every step)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = engine.snapshot()
        if not snap.running and not snap.waiting:
            return snap
        time.sleep(0.02)
    raise AssertionError(f"the engine did not go idle: {engine.snapshot()}")


def assert_pool_full(engine):
    snap = wait_idle(engine)
    assert snap.free_slots == snap.total_slots and snap.free_cache_tokens == snap.config.cache_tokens
    assert snap.requests == ()


def test_failure_inside_generation_reports_an_error_event_and_engine_survives(engine, monkeypatch):
    runner = engine._core.runner
    original = runner.prefill

    def broken(seq, n):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(runner, "prefill", broken)
    events = collect(engine.submit(" t", SamplingParams(max_tokens=2)))
    assert isinstance(events[-1], ErrorEvent) and "kernel exploded" in events[-1].message
    assert_pool_full(engine)
    monkeypatch.setattr(runner, "prefill", original)
    assert isinstance(collect(engine.submit(" t", SamplingParams(max_tokens=2)))[-1], FinishEvent)


def test_concurrent_requests_share_decode_steps_and_match_single_stream(engine, tiny_model_dir):
    from tiny_llm_playground.engine.loader import load_model

    lm = load_model(str(tiny_model_dir))
    params = SamplingParams(temperature=0, max_tokens=10)
    prompts = [" the thin", " over the", " jumps", " a b c d e"]
    handles = [engine.submit(p, params) for p in prompts]
    finals = [collect(h)[-1] for h in handles]
    for p, fin in zip(prompts, finals, strict=True):
        ref = list(generate(lm.model, lm.tokenizer, lm.tokenizer.encode(p), params))[-1]
        assert fin.token_ids == ref.token_ids
        assert fin.ttft_s >= fin.queue_s >= 0 and fin.decode_s >= 0
    snap = wait_idle(engine)
    assert {s.phase for s in snap.steps} >= {"prefill", "decode"}
    assert max(s.decode_rows for s in snap.steps) > 1
    assert snap.served >= 4 and snap.tokens_per_s > 0


def test_abandoned_or_closed_handles_free_their_slots(engine):
    import gc

    params = SamplingParams(temperature=0, max_tokens=100)
    h = engine.submit(" the", params)
    it = iter(h)
    next(it)  # the first token arrived: the request holds a slot
    it.close()  # the consumer stopped reading
    assert h.cancelled
    h2 = engine.submit(" the", params)
    del h2  # dropped without reading a single event
    gc.collect()
    assert_pool_full(engine)


def test_snapshot_shows_requests_in_flight(engine):
    h = engine.submit(" the", SamplingParams(temperature=0, max_tokens=100))
    it = iter(h)
    next(it)
    snap = engine.snapshot()
    assert snap.running == (h.id,) and snap.free_slots == snap.total_slots - 1
    (req,) = snap.requests
    assert req.status == "decoding" and req.cache_tokens >= len(h.prompt_ids) and req.cache_bytes > 0
    h.cancel()
    assert isinstance(list(it)[-1], FinishEvent)
    assert_pool_full(engine)


def test_requests_show_in_the_snapshot_timings_while_the_engine_thread_is_busy(engine):
    """A page that just sent a request must see it, even while the engine is in a long step."""
    gate, started = threading.Event(), threading.Event()

    def hold(_lm):
        started.set()
        gate.wait(30)

    blocker = threading.Thread(target=engine.run_on_engine_thread, args=(hold,))
    blocker.start()
    assert started.wait(30)
    try:
        hs = [engine.submit(p, SamplingParams(temperature=0, max_tokens=2)) for p in (" a", " the")]
        snap = engine.snapshot()
        timings = {t.id: t for t in snap.timings}
        assert set(snap.waiting) >= {h.id for h in hs}
        assert all(timings[h.id].status == "waiting" and timings[h.id].prompt_tokens > 0 for h in hs)
    finally:
        gate.set()
        blocker.join(30)
    for h in hs:
        assert isinstance(collect(h)[-1], FinishEvent)


@pytest.mark.parametrize(
    ("params", "exc", "match"),
    [
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"stop": ("",)}, ValueError, "stop"),
        ({"temperture": 0.5}, ValueError, "unknown temperture"),
        ("greedy", TypeError, "SamplingParams"),
    ],
)
def test_bad_sampling_params_are_rejected_at_submit(engine, params, exc, match):
    with pytest.raises(exc, match=match):
        engine.submit(" t", params)
    assert engine.snapshot().waiting == ()


def test_a_request_larger_than_the_cache_is_rejected_at_submit(tiny_model_dir):
    from tiny_llm_playground.engine import EngineConfig

    eng = Engine(str(tiny_model_dir), config=EngineConfig(max_batch=2, max_tokens_per_step=4, cache_tokens=20))
    eng.wait_ready(60)
    with pytest.raises(ValueError, match="cache tokens"):
        eng.submit(" the thin", SamplingParams(max_tokens=50))
    assert isinstance(collect(eng.submit(" the", SamplingParams(max_tokens=3)))[-1], FinishEvent)
    eng.shutdown()


def test_full_waiting_queue_says_busy(tiny_model_dir, monkeypatch):
    eng = Engine(str(tiny_model_dir), max_waiting=2)
    eng.wait_ready(60)
    release = threading.Event()
    original = eng._core.step

    def slow():
        release.wait(30)
        return original()

    monkeypatch.setattr(eng._core, "step", slow)
    # The engine thread is held inside its step: two requests fill the waiting queue.
    handles = [eng.submit(" t", SamplingParams(max_tokens=1)) for _ in range(2)]
    with pytest.raises(EngineBusyError, match="busy"):
        eng.submit(" t", SamplingParams(max_tokens=1))
    assert len(eng.snapshot().waiting) == 2
    release.set()
    for h in handles:
        assert isinstance(collect(h)[-1], FinishEvent)
    eng.shutdown()


def test_load_failure_is_reported_by_wait_ready(tmp_path):
    eng = Engine(str(tmp_path))  # an empty folder: no config.json
    with pytest.raises(RuntimeError, match="could not load model"):
        eng.wait_ready(30)


def test_warm_up_runs_outside_the_batch_and_leaves_no_trace(engine):
    before = engine.snapshot()
    assert engine.warm_up(timeout=60) > 0
    after = engine.snapshot()
    assert (after.served, after.steps, after.timings, after.free_slots) == (
        before.served,
        before.steps,
        before.timings,
        before.free_slots,
    )
    events = collect(engine.submit(" the thin", SamplingParams(temperature=0, max_tokens=3)))
    assert events[-1].reason in ("length", "eos") and engine.snapshot().served == before.served + 1

"""The threaded Engine on a tiny random model: streaming, ordering, cancellation, errors, busy queue."""

from __future__ import annotations

import threading

import pytest

from engine import Engine, EngineBusyError, ErrorEvent, FinishEvent, PromptError, SamplingParams, TokenEvent
from engine.generate import generate


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
    from engine.loader import load_model

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


def test_cancel_stops_within_a_token_and_engine_keeps_serving(engine):
    h = engine.submit(" the", SamplingParams(temperature=0, max_tokens=100))
    seen = 0
    for ev in h:
        if isinstance(ev, TokenEvent):
            seen += 1
            if seen == 2:
                h.cancel()
        else:
            last = ev
    assert isinstance(last, FinishEvent) and last.reason == "cancelled"
    assert seen <= 3
    after = collect(engine.submit(" th", SamplingParams(temperature=0, max_tokens=3)))
    assert isinstance(after[-1], FinishEvent) and after[-1].reason in ("length", "eos")


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


def test_failure_inside_generation_reports_an_error_event_and_engine_survives(engine, monkeypatch):
    import engine.runtime as rt

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")
        yield  # pragma: no cover

    monkeypatch.setattr(rt, "generate", broken)
    events = collect(engine.submit(" t", SamplingParams(max_tokens=2)))
    assert isinstance(events[-1], ErrorEvent) and "kernel exploded" in events[-1].message
    monkeypatch.undo()
    assert isinstance(collect(engine.submit(" t", SamplingParams(max_tokens=2)))[-1], FinishEvent)


def test_full_waiting_queue_says_busy(tiny_model_dir, monkeypatch):
    eng = Engine(str(tiny_model_dir), max_waiting=2)
    eng.wait_ready(60)
    release = threading.Event()
    original = eng._serve_one

    def slow(handle):
        release.wait(30)
        original(handle)

    monkeypatch.setattr(eng, "_serve_one", slow)
    handles = [eng.submit(" t", SamplingParams(max_tokens=1))]
    # The first request is taken by the engine thread (blocked); two more fill the queue.
    for _ in range(50):
        if eng.snapshot().running is not None:
            break
        threading.Event().wait(0.05)
    handles += [eng.submit(" t", SamplingParams(max_tokens=1)) for _ in range(2)]
    with pytest.raises(EngineBusyError, match="busy"):
        eng.submit(" t", SamplingParams(max_tokens=1))
    release.set()
    for h in handles:
        assert isinstance(collect(h)[-1], FinishEvent)
    eng.shutdown()


def test_load_failure_is_reported_by_wait_ready(tmp_path):
    eng = Engine(str(tmp_path))  # an empty folder: no config.json
    with pytest.raises(RuntimeError, match="could not load model"):
        eng.wait_ready(30)

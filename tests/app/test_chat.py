"""The Chat tab's logic without a browser or a model: a scripted engine stands in for engine.Engine."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from types import SimpleNamespace

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tests.utils import run_coroutine  # noqa: E402
from tiny_llm_playground.app.main import build_app  # noqa: E402
from tiny_llm_playground.app.tabs import chat  # noqa: E402
from tiny_llm_playground.app.tabs.chat import build_messages, format_stats, make_params, message_text  # noqa: E402
from tiny_llm_playground.engine import EngineBusyError, FinishEvent, PromptError, SamplingParams, TokenEvent  # noqa: E402
from tiny_llm_playground.engine.events import ErrorEvent  # noqa: E402

# ----- a scripted engine -----


class FakeClock:
    """Virtual seconds: the scripted handle moves them on per token instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0


class ScriptedHandle:
    """Yields TokenEvents for `pieces`, then a FinishEvent; `gate` (if set) holds each token back, `delay`
    spaces them out (seconds)."""

    def __init__(
        self,
        pieces: list[str],
        gate: threading.Event | None = None,
        error: str | None = None,
        delay: float = 0.0,
        lockstep: bool = False,
        clock: FakeClock | None = None,
    ):
        self.id = 1
        self.pieces = pieces
        self.prompt_ids = [1, 2, 3]
        self.gate = gate
        self.error = error
        self.delay = delay
        self.cancelled = False
        self.lockstep = lockstep
        self.turn = threading.Semaphore(0)  # lockstep: released once per update the page got
        self.clock = clock
        self.finished = False  # set once every event is handed over (the finish is the last)

    def cancel(self) -> None:
        self.cancelled = True
        if self.gate is not None:
            self.gate.set()

    def __iter__(self):
        for i, piece in enumerate(self.pieces):
            if self.gate is not None:
                self.gate.wait(5)
            if self.lockstep and i > 0:
                assert self.turn.acquire(timeout=30), "the page never took the previous token"
            if self.clock is not None:
                self.clock.now += self.delay  # virtual time: the test never depends on the real clock
            else:
                time.sleep(self.delay)
            if self.cancelled:
                break
            yield TokenEvent(index=i, token=100 + i, text=piece, sample=None)
        if self.lockstep and self.pieces:
            assert self.turn.acquire(timeout=30), "the page never took the last token"
        if self.error:
            yield ErrorEvent(self.error)
            return
        self.finished = True
        yield FinishEvent(
            reason="cancelled" if self.cancelled else "eos",
            text="".join(self.pieces),
            tail="",
            token_ids=tuple(range(len(self.pieces))),
            prompt_tokens=3,
            prefill_s=0.01,
            decode_s=0.1,
        )


class ScriptedEngine:
    model_name = "scripted-model"

    def __init__(self, pieces=("Hel", "lo", "!"), submit_error: Exception | None = None, **handle_kw):
        self.pieces = list(pieces)
        self.submit_error = submit_error
        self.handle_kw = handle_kw
        self.submitted: list[tuple[object, SamplingParams]] = []
        self.handles: list[ScriptedHandle] = []

    def wait_ready(self, timeout=None) -> None:
        pass

    def submit(self, prompt, params, chat=False):
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append((prompt, params))
        h = ScriptedHandle(self.pieces, **self.handle_kw)
        self.handles.append(h)
        return h


def _fn(demo, api_name: str):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


SLIDERS = dict(temp=0.7, k=0, p=1.0, mp=0.0, rep=1.0, max_new=32, seed_value=-1)


async def _collect(engine, text: str, history=None, system="Be brief.", session="s1", **overrides):
    respond = _fn(build_app(engine), "chat")
    values = {**SLIDERS, **overrides}
    out = []
    request = SimpleNamespace(session_hash=session)
    async for item in respond(text, history or [], system, *values.values(), request=request):
        out.append(item)
        if isinstance(item[1], list) and item[1] and item[1][-1].get("content"):  # an update with reply text
            for h in engine.handles:
                h.turn.release()  # lockstep handles may send their next token
    return out


# ----- plain helpers -----


def test_make_params_maps_ui_values_and_minus_one_seed_means_random():
    p = make_params(0.5, 40.0, 0.9, 0.05, 1.1, 128.0, -1)
    assert p == SamplingParams(
        temperature=0.5, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1, seed=None, max_tokens=128
    )
    assert make_params(0.5, 0, 1, 0, 1, 8, 7).seed == 7
    assert make_params(0.5, 0, 1, 0, 1, 8, None).seed is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0.5, 0, 1, 0, 1, 8, -5), "seed"),
        ((0.5, 2.5, 1, 0, 1, 8, 0), "top-k"),
        ((0.5, 0, 1, 0, 1, 8.5, 0), "max tokens"),
        ((-1.0, 0, 1, 0, 1, 8, 0), "temperature"),
        ((0.5, 0, 0.0, 0, 1, 8, 0), "top_p"),
    ],
)
def test_make_params_rejects_bad_values_with_readable_message(args, needle):
    with pytest.raises(ValueError, match=needle):
        make_params(*args)


def test_build_messages_puts_system_first_and_flattens_gradio_content_parts():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
    ]
    assert build_messages(history, "  Be brief. ", "next?") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "next?"},
    ]
    assert build_messages([], "   ", "q") == [{"role": "user", "content": "q"}]


def test_message_text_accepts_strings_parts_and_junk():
    assert message_text("a") == "a"
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text(None) == ""


def test_format_stats_names_speeds_and_finish_reason():
    fin = FinishEvent("length", "abc", "", (1, 2, 3), 10, 0.5, 1.0)
    s = format_stats(fin)
    assert "prompt 10 tok" in s and "prefill 20.0 tok/s" in s and "decode 2.0 tok/s" in s
    assert "finish: length" in s


# ----- the page -----


def test_every_event_has_an_api_name_and_the_header_names_the_model():
    demo = build_app(ScriptedEngine())
    names = {f.api_name for f in demo.fns.values()}
    assert {"chat", "stop", "clear"} <= names
    assert all(f.api_name for f in demo.fns.values())
    assert "scripted-model" in demo.config["components"][0]["props"]["value"]


def test_reply_streams_token_by_token_and_ends_with_stats():
    engine = ScriptedEngine(lockstep=True)  # the next token only after the page got the last one
    out = run_coroutine(_collect(engine, "Say hello", history=[{"role": "user", "content": "x"}]))
    replies = [item[1][-1]["content"] for item in out]
    assert replies[:4] == ["", "Hel", "Hello", "Hello!"]  # one update per token, after the placeholder
    assert 'data-i="0"' in out[1][3], "the first token's view goes out with the first token"
    msg_box, history, stats = out[-1][:3]
    assert msg_box == ""
    assert [m["role"] for m in history] == ["user", "user", "assistant"]
    assert "finish: eos" in stats
    prompt, params = engine.submitted[0]
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert prompt[-1] == {"role": "user", "content": "Say hello"}
    assert params.max_tokens == 32 and params.seed is None


def test_tokens_that_arrive_together_go_out_as_one_update():
    """The page reads the stream only after all 40 tokens and the finish are queued: one update holds
    them all (not one per token)."""
    engine = ScriptedEngine(pieces=["a"] * 40)

    async def collect() -> list:
        respond = _fn(build_app(engine), "chat")
        gen = respond("go", [], "Be brief.", *SLIDERS.values(), request=SimpleNamespace(session_hash="s1"))
        out = [await gen.__anext__()]  # the placeholder, sent before the stream is read
        for _ in range(3000):  # the scripted handle hands its events over at once (no waits)
            if engine.handles and engine.handles[0].finished:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the pump's queued puts run now, before the reply reads the queue
        return out + [item async for item in gen]

    out = run_coroutine(collect())
    assert len(out) == 2, f"{len(out) - 1} updates for tokens that arrived together"
    assert out[-1][1][-1]["content"] == "a" * 40
    assert out[-1][3].count('<span class="tok" data-i=') == 40, "the final view holds every token"


def test_the_token_view_is_resent_at_most_every_quarter_second(monkeypatch):
    """One update per token (lockstep), 0.125 virtual seconds apart: the view goes with tokens 1, 3, 5, 7
    and 9 (0.25 s after the one before), the text with every one."""
    clock = FakeClock()
    monkeypatch.setattr(chat, "_clock", lambda: clock.now)
    engine = ScriptedEngine(pieces=[f"t{i} " for i in range(10)], delay=0.125, clock=clock, lockstep=True)
    out = run_coroutine(_collect(engine, "go"))
    streaming = out[1:-1]
    assert [item[1][-1]["content"].count("t") for item in streaming] == list(range(1, 11)), "one update a token"
    views = [i for i, item in enumerate(streaming) if isinstance(item[3], str)]
    assert views == [0, 2, 4, 6, 8]
    assert out[-1][3].count('<span class="tok" data-i=') == 10, "the final view holds every token"


@pytest.mark.parametrize(
    ("text", "overrides", "submit_error", "needle"),
    [
        ("   ", {}, None, "empty"),
        ("hi", {"seed_value": -3}, None, "seed"),
        ("hi", {"temp": -0.5}, None, "temperature"),
        ("hi", {}, PromptError("the prompt has 40000 tokens but the context holds 32768"), "context"),
        ("hi", {}, EngineBusyError("the engine is busy: try again shortly"), "busy"),
    ],
)
def test_bad_input_gives_one_readable_error_and_keeps_the_message(text, overrides, submit_error, needle):
    engine = ScriptedEngine(submit_error=submit_error)
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        out = run_coroutine(_collect(engine, text, **overrides))
    assert len(out) == 1
    msg_box, history, note = out[0][:3]
    assert not isinstance(msg_box, str)  # gr.update(): the typed message stays in the box
    assert history == []
    assert "chat-error" in note and needle in note and "Traceback" not in note
    assert engine.submitted == []


def test_engine_error_event_is_shown_and_partial_reply_kept():
    engine = ScriptedEngine(pieces=["par", "tial"], error="generation failed: boom")
    out = run_coroutine(_collect(engine, "go"))
    _, history, note = out[-1][:3]
    assert history[-1]["content"] == "partial"
    assert "generation failed: boom" in note


def test_closing_the_stream_early_cancels_the_handle():
    """A disconnected browser or a cancelled Gradio task closes the generator: `finally` cancels."""
    engine = ScriptedEngine(pieces=["a"] * 50, gate=threading.Event())

    async def run():
        respond = _fn(build_app(engine), "chat")
        gen = respond("go", [], "", *SLIDERS.values(), request=SimpleNamespace(session_hash="s"))
        await gen.__anext__()  # the placeholder: the request is in flight
        await gen.aclose()

    run_coroutine(run())
    assert engine.handles[0].cancelled


def test_stop_cancels_the_sessions_reply_and_reports_cancelled():
    engine = ScriptedEngine(pieces=["a"] * 50, gate=threading.Event())
    demo = build_app(engine)
    respond, stop = _fn(demo, "chat"), _fn(demo, "stop")
    request = SimpleNamespace(session_hash="s")

    async def run():
        out = []
        async for item in respond("go", [], "", *SLIDERS.values(), request=request):
            out.append(item)
            if len(out) == 1:
                await stop(request)
        return out

    out = run_coroutine(run())
    assert engine.handles[0].cancelled
    assert "finish: cancelled" in out[-1][2]

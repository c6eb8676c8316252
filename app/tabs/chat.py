"""Chat tab: a multi-turn conversation with the model, streamed token by token, with sampling controls.

Rules it keeps:
- The whole conversation goes to the engine as chat messages (system prompt first); the engine applies
  the model's chat template. The tab never tokenizes or touches MLX itself.
- Handlers take plain values and `yield` the growing reply. Request handles are heavy (they hold a live
  stream), so they live in a per-browser-session table here, never in gr.State.
- Stop, Clear and closing the tab cancel the session's handle; the stream loop's `finally` cancels it
  whatever else happens (exception, cancelled task), so the engine never generates for nobody.
- Bad input (empty message, invalid sampling values, a prompt longer than the context, a full engine
  queue) becomes a warning toast plus a line under the chat, never a traceback; the engine keeps serving.
- Under the chat, the reply streams as tokens coloured by their probability (viz.tokens). Clicking a token
  (or moving the "Token #" slider) shows that step's distribution (viz.sampling); moving the sampling
  sliders redraws it from the stored step record, with no new forward pass. The records of each
  session's latest reply are kept here (slim copies, bounded), never in gr.State.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tiny_llm_playground.engine import (
    Engine,
    EngineBusyError,
    ErrorEvent,
    FinishEvent,
    RequestHandle,
    SamplingParams,
    TokenEvent,
)
from tiny_llm_playground.viz.layout import message_figure
from tiny_llm_playground.viz.sampling import sampling_distribution
from tiny_llm_playground.viz.tokens import token_html, token_span, token_view

log = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are Qwen, a helpful coding assistant. Answer concisely."
MODEL_LOAD_TIMEOUT_S = 300.0
_STOPPED = object()  # put on a stream's queue by Stop / Clear / tab close
_END = object()  # put by the pump thread after the handle's last event
MAX_SESSIONS = 64  # sessions whose latest reply's step records are kept (least recently used dropped)
PICK_HINT = "Click a token of a reply to see the distribution it was drawn from."
TOKEN_VIEW_EVERY_S = 0.25  # while a reply streams, the token view is resent at most this often
_clock = time.monotonic  # the token view's throttle clock (tests give it a virtual one)


@dataclass(frozen=True)
class StepRecord:
    """What the distribution view needs from one sampling step (a SampleRecord without its kept set,
    which can hold the whole vocabulary)."""

    token: int
    text: str  # the text this token added to the reply ("" while a multi-byte character is pending)
    prob: float | None  # probability under the distribution it was drawn from (None: not recorded)
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()

    @staticmethod
    def of(ev: TokenEvent) -> StepRecord:
        s = ev.sample
        if s is None:
            return StepRecord(ev.token, ev.text, None)
        return StepRecord(ev.token, ev.text, float(s.prob), tuple(s.top_ids), tuple(s.top_logprobs))


class StepRecords:
    """Each session's latest reply as StepRecords; at most `max_sessions` sessions (LRU)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._by_session: OrderedDict[str, list[StepRecord]] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, session: str) -> list[StepRecord]:
        """A fresh (empty) record list for the session's new reply; the caller appends to it."""
        records: list[StepRecord] = []
        with self._lock:
            self._by_session[session] = records
            self._by_session.move_to_end(session)
            while len(self._by_session) > self.max_sessions:
                self._by_session.popitem(last=False)
        return records

    def get(self, session: str) -> list[StepRecord]:
        with self._lock:
            records = self._by_session.get(session)
            if records is not None:
                self._by_session.move_to_end(session)
            return list(records or [])

    def __len__(self) -> int:
        return len(self._by_session)


@dataclass
class _Stream:
    """One in-flight reply: the engine handle and the asyncio queue its events are pumped into."""

    handle: RequestHandle
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cleared: bool = False  # stopped by Clear: the reply must not redraw the conversation

    def stop(self, *, cleared: bool = False) -> None:
        self.cleared = self.cleared or cleared
        self.handle.cancel()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, _STOPPED)


class _Streams:
    """The in-flight reply of each browser session (at most one), keyed by Gradio's session hash."""

    def __init__(self) -> None:
        self._by_session: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def open(self, session: str, handle: RequestHandle) -> _Stream:
        loop = asyncio.get_running_loop()
        stream = _Stream(handle, asyncio.Queue(), loop)

        def pump() -> None:  # blocks on the handle in its own thread, so the event loop never does
            try:
                for ev in handle:
                    loop.call_soon_threadsafe(stream.queue.put_nowait, ev)
                loop.call_soon_threadsafe(stream.queue.put_nowait, _END)
            except RuntimeError:  # the event loop closed (server shutting down): nobody is listening
                handle.cancel()

        with self._lock:
            self._by_session[session] = stream
        threading.Thread(target=pump, name=f"chat-pump-{handle.id}", daemon=True).start()
        return stream

    def busy(self, session: str) -> bool:
        with self._lock:
            return session in self._by_session

    def close(self, session: str, stream: _Stream) -> None:
        stream.handle.cancel()  # no-op when it already finished
        with self._lock:
            if self._by_session.get(session) is stream:
                del self._by_session[session]

    def stop(self, session: str, *, cleared: bool = False) -> bool:
        with self._lock:
            stream = self._by_session.get(session)
        if stream is None:
            return False
        stream.stop(cleared=cleared)
        return True


# ----- plain helpers (unit tested without a browser) -----


def message_text(content: Any) -> str:
    """The text of a Chatbot message's content: a string, or Gradio's list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return ""


def build_messages(history: list[dict], system: str, message: str) -> list[dict[str, str]]:
    """Chat messages for the engine: the system prompt (if any), the earlier turns, the new user message."""
    messages = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history or []:
        role = m.get("role")
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": message_text(m.get("content"))})
    messages.append({"role": "user", "content": message})
    return messages


def _as_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None or value == "":
        if allow_none:
            return None
        raise ValueError(f"{name} is required")
    f = float(value)
    if not f.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(f)


def make_params(
    temperature: float,
    top_k: float,
    top_p: float,
    min_p: float,
    repetition_penalty: float,
    max_tokens: float,
    seed: float | None,
) -> SamplingParams:
    """SamplingParams from the UI's values; raises ValueError with a readable message."""
    seed_i = _as_int(seed, "seed", allow_none=True)
    if seed_i is not None and seed_i < 0:
        if seed_i != -1:
            raise ValueError("seed must be >= 0, or -1 for a random seed")
        seed_i = None
    return SamplingParams(
        temperature=float(temperature),
        top_k=_as_int(top_k, "top-k"),
        top_p=float(top_p),
        min_p=float(min_p),
        repetition_penalty=float(repetition_penalty),
        seed=seed_i,
        max_tokens=_as_int(max_tokens, "max tokens"),
    )


def format_stats(fin: FinishEvent) -> str:
    """The one-line summary shown under a finished reply."""
    n = len(fin.token_ids)
    parts = [
        f"prompt {fin.prompt_tokens} tok",
        f"prefill {fin.prefill_tps:,.1f} tok/s",
        f"decode {fin.decode_tps:,.1f} tok/s",
        f"{n} new tok",
        f"finish: {fin.reason}",
    ]
    return f'<div class="chat-stats-line">{" · ".join(parts)}</div>'


def format_error(message: str) -> str:
    return f'<div class="chat-error">⚠ {html.escape(message)}</div>'


def _stopped_stats(n_tokens: int) -> str:
    return f'<div class="chat-stats-line">stopped · {n_tokens} new tok · finish: cancelled</div>'


def _busy(text: str) -> str:
    return f'<div class="chat-busy">{html.escape(text)}</div>'


def tokens_view(records: list[StepRecord], selected: int | None = None, note: str = "") -> str:
    """The reply's tokens coloured by probability (the HTML under the chat)."""
    return token_html([r.text for r in records], [r.prob for r in records], selected, note=note)


def step_figure(records: list[StepRecord], index: float | None, temp: float, k: float, p: float, mp: float,
                piece=lambda t: str(t)):  # fmt: skip
    """The distribution of step `index` under the given slider values, recomputed from its record.
    `piece(token_id)` names a token (the tokenizer's visible text)."""
    if not records:
        return message_figure(PICK_HINT, "Next-token distribution", height=480)
    i = min(max(int(index or 0), 0), len(records) - 1)
    r = records[i]
    if not r.top_logprobs:
        return message_figure(f"Token {i} has no recorded distribution.", "Next-token distribution", height=480)
    top_k = int(k) if float(k).is_integer() and k >= 0 else 0
    top_p = min(max(float(p), 0.01), 1.0)
    drawn = r.top_ids.index(r.token) if r.token in r.top_ids else None
    label = f"token {i} {piece(r.token)!r}" + ("" if drawn is not None else " (drawn token outside the top shown)")
    return sampling_distribution(
        [piece(t) for t in r.top_ids], list(r.top_logprobs), temperature=max(float(temp), 0.0), top_k=top_k,
        top_p=top_p, min_p=min(max(float(mp), 0.0), 1.0), drawn=drawn, step_label=label,
    )  # fmt: skip


def least_likely(records: list[StepRecord]) -> int | None:
    """Index of the drawn token with the lowest probability (the reply's most surprising step)."""
    known = [(r.prob, i) for i, r in enumerate(records) if r.prob is not None]
    return min(known)[1] if known else None


# ----- the tab -----


@dataclass(frozen=True)
class ChatTab:
    """What main.py needs from the tab: `on_unload` cancels a closed session's reply."""

    chatbot: gr.Chatbot
    message: gr.Textbox
    stats: gr.HTML
    on_unload: Any
    records: StepRecords


TOKEN_CLICK_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-i]');
  if (t) trigger('click', {index: parseInt(t.dataset.i)});
});
"""


def build(engine: Engine, labels: MutableMapping[int, str] | None = None) -> ChatTab:
    """Create the chat tab's components inside the current gr.Tab, then wire its events.
    `labels` (optional, shared with the batching tab) gets "chat" for each request this tab submits."""
    streams = _Streams()
    records_store = StepRecords()

    def piece(token_id: int) -> str:
        try:
            return engine.tokenizer.id_to_piece(int(token_id), visible_whitespace=True)
        except Exception:  # an engine without a tokenizer (tests) still gets a label
            return str(token_id)

    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=520):
            chatbot = gr.Chatbot(
                label="Conversation",
                show_label=False,
                elem_id="chat-box",
                height=380,
                buttons=["copy"],
                feedback_options=None,
                placeholder="Ask something — e.g. *Write a Python function that reverses a string.*",
                autoscroll=True,
            )
            with gr.Row(equal_height=True):
                message = gr.Textbox(
                    placeholder="Type a message, press Enter to send",
                    show_label=False,
                    lines=1,
                    max_lines=6,
                    scale=6,
                    elem_id="chat-input",
                    autofocus=True,
                )
                send = gr.Button("Send", variant="primary", scale=1, min_width=100, elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=100, elem_id="chat-stop")
                clear = gr.Button("Clear", variant="secondary", scale=1, min_width=100, elem_id="chat-clear")
            stats = gr.HTML("", elem_id="chat-stats")
            tokens = gr.HTML(
                tokens_view([]), elem_id="chat-tokens", js_on_load=TOKEN_CLICK_JS, max_height=260,
                padding=False,
            )  # fmt: skip
        with gr.Column(scale=2, min_width=340, elem_id="chat-controls"):
            system = gr.Textbox(label="System prompt", value=DEFAULT_SYSTEM, lines=2, max_lines=6)
            with gr.Group():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", buttons=[])
                with gr.Row():
                    top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k", buttons=[])
                    top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Top-p", buttons=[])
                with gr.Row():
                    min_p = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Min-p", buttons=[])
                    repetition_penalty = gr.Slider(
                        0.5, 2.0, value=1.0, step=0.01, label="Repetition penalty", buttons=[]
                    )
                with gr.Row():
                    max_tokens = gr.Slider(1, 2048, value=256, step=1, label="Max tokens", buttons=[])
                    seed = gr.Number(value=-1, precision=0, label="Seed (−1 = random)")
            gr.HTML(
                '<div class="hint">Off: top-k 0 · top-p 1 · min-p 0 · penalty 1. Temperature 0 = greedy.</div>',
                elem_id="sampling-hint",
            )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=520):
            # Empty until a reply exists: a figure here would make every page load plotly.js (~1.5 s of
            # main-thread work on a busy 2-core machine) before the first Send could be answered.
            step_plot = gr.Plot(None, show_label=False, elem_id="chat-dist")
        with gr.Column(scale=2, min_width=340):
            pick = gr.Slider(0, 1, value=0, step=1, label="Token #", buttons=[], elem_id="tok-pick")
            gr.HTML(
                '<div class="hint">Click a token above (or move this slider) to see the distribution it '
                "was drawn from: grey outline = raw model probability, blue = what the sampler kept after "
                "temperature, top-k, top-p and min-p, vermillion = the drawn token. Move the sampling sliders "
                "to see how they would change <i>this</i> step (recomputed from the stored record, no new "
                "forward pass; repetition penalty not included).</div>"
            )

    # ----- handlers: plain values in, yields out -----
    async def respond(
        text: str,
        history: list[dict],
        system_prompt: str,
        temp: float,
        k: float,
        p: float,
        mp: float,
        rep: float,
        max_new: float,
        seed_value: float | None,
        request: gr.Request,
    ):
        history = list(history or [])
        session = request.session_hash if request is not None else None
        session = session or "anonymous"

        def refuse(msg: str):
            gr.Warning(html.escape(msg))
            return gr.update(), history, format_error(msg), gr.update(), gr.update()

        if not text or not text.strip():
            yield refuse("The message is empty: type something first.")
            return
        if streams.busy(session):
            yield refuse("A reply is still streaming: press Stop first.")
            return
        try:
            params = make_params(temp, k, p, mp, rep, max_new, seed_value)
            messages = build_messages(history, system_prompt, text)

            def submit() -> RequestHandle:  # waits for the model while it loads, then tokenizes
                engine.wait_ready(MODEL_LOAD_TIMEOUT_S)
                return engine.submit(messages, params)

            handle = await asyncio.to_thread(submit)  # one hop off the event loop
        except EngineBusyError as e:
            yield refuse(str(e))
            return
        except (ValueError, TimeoutError, RuntimeError) as e:
            yield refuse(str(e))
            return

        if labels is not None:
            labels[handle.id] = "chat"
        stream = streams.open(session, handle)
        records = records_store.start(session)
        history = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        reply = ""
        n_tokens = 0
        spans: list[str] = []  # the token view's spans so far: each new token adds one, none is redrawn
        view_at = -math.inf  # when the token view was last sent (never yet: the first token's view goes at once)

        def done():  # the token view with the most surprising token selected, and the slider on it
            sel = least_likely(records)
            note = "" if sel is None else f"outlined: token {sel}, the least likely drawn token"
            return tokens_view(records, sel, note), gr.update(maximum=max(len(records) - 1, 1), value=sel or 0)

        try:
            yield (
                "",
                history,
                _busy(f"generating… (prompt {len(handle.prompt_ids)} tokens)"),
                tokens_view([]),
                gr.update(),
            )
            ended = False
            while not ended:
                # Everything that arrived while the last update was being sent goes out as one update.
                batch = [await stream.queue.get()]
                while not stream.queue.empty():
                    batch.append(stream.queue.get_nowait())
                grew = False
                for ev in batch:
                    if ev is _END:
                        ended = True
                        break
                    if ev is _STOPPED:
                        if stream.cleared:
                            yield "", [], "", tokens_view([]), gr.update()
                        else:
                            history = [*history[:-1], {"role": "assistant", "content": reply}]
                            yield "", history, _stopped_stats(n_tokens), *done()
                        ended = True
                        break
                    if isinstance(ev, TokenEvent):
                        n_tokens += 1
                        record = StepRecord.of(ev)
                        records.append(record)
                        spans.append(token_span(len(spans), record.text, record.prob))
                        reply += ev.text
                        history = [*history[:-1], {"role": "assistant", "content": reply}]
                        grew = True
                    elif isinstance(ev, FinishEvent):
                        if ev.reason != "cancelled" or not reply:
                            reply += ev.tail
                        history = [*history[:-1], {"role": "assistant", "content": reply}]
                        yield "", history, format_stats(ev), *done()
                        grew = False
                    elif isinstance(ev, ErrorEvent):
                        yield "", history, format_error(ev.message), *done()
                        grew = False
                if grew and not ended:
                    # The page rebuilds the whole token view on each update: at most every TOKEN_VIEW_EVERY_S.
                    view, now = gr.skip(), _clock()
                    if now - view_at >= TOKEN_VIEW_EVERY_S:
                        view, view_at = token_view(spans), now
                    yield "", history, _busy(f"generating… {n_tokens} tokens"), view, gr.update()
        except Exception as e:  # never let a traceback reach the page
            log.exception("chat stream failed")
            yield (
                "",
                history,
                format_error(f"the reply failed: {type(e).__name__}: {e}"),
                gr.update(),
                gr.update(),
            )
        finally:
            streams.close(session, stream)

    def show_step(index: float, temp: float, k: float, p: float, mp: float, request: gr.Request):
        records = records_store.get(_session(request))
        return step_figure(records, index, temp, k, p, mp, piece)

    def click_token(evt: gr.EventData, temp: float, k: float, p: float, mp: float, request: gr.Request):
        records = records_store.get(_session(request))
        try:
            index = int(evt.index)
        except (AttributeError, TypeError, ValueError):
            return gr.update(), gr.update(), gr.update()
        if not 0 <= index < len(records):
            return gr.update(), gr.update(), gr.update()
        return (
            step_figure(records, index, temp, k, p, mp, piece),
            gr.update(value=index, maximum=max(len(records) - 1, 1)),
            tokens_view(records, index),
        )

    def pick_token(index: float, temp: float, k: float, p: float, mp: float, request: gr.Request):
        records = records_store.get(_session(request))
        i = min(max(int(index or 0), 0), max(len(records) - 1, 0))
        return step_figure(records, i, temp, k, p, mp, piece), tokens_view(records, i if records else None)

    async def stop_reply(request: gr.Request) -> None:
        if request is not None and request.session_hash:
            streams.stop(request.session_hash)

    async def clear_chat(request: gr.Request):
        if request is not None and request.session_hash:
            streams.stop(request.session_hash, cleared=True)
        records_store.start(_session(request))
        return [], "", "", tokens_view([]), None

    async def clear_stream(request: gr.Request) -> None:  # the chatbot's own trash-can button
        if request is not None and request.session_hash:
            streams.stop(request.session_hash, cleared=True)

    def on_unload(request: gr.Request) -> None:
        if request is not None and request.session_hash:
            streams.stop(request.session_hash)

    # ----- wiring -----
    gr.on(
        triggers=[send.click, message.submit],
        fn=respond,
        inputs=[message, chatbot, system, temperature, top_k, top_p, min_p, repetition_penalty, max_tokens]
        + [seed],
        outputs=[message, chatbot, stats, tokens, pick],
        api_name="chat",
        show_progress="hidden",
    ).then(
        show_step, [pick, temperature, top_k, top_p, min_p], step_plot, api_name="chat_step_after_reply",
        show_progress="hidden",
    )  # fmt: skip
    sliders = [temperature, top_k, top_p, min_p]
    tokens.click(click_token, sliders, [step_plot, pick, tokens], api_name="chat_token_click",
                 show_progress="hidden", concurrency_limit=None)  # fmt: skip
    pick.input(pick_token, [pick, *sliders], [step_plot, tokens], api_name="chat_token_pick",
               show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)  # fmt: skip
    gr.on(
        triggers=[c.input for c in sliders], fn=show_step, inputs=[pick, *sliders], outputs=step_plot,
        api_name="chat_step_resample", show_progress="hidden", trigger_mode="always_last", concurrency_limit=None,
    )  # fmt: skip
    stop.click(stop_reply, None, None, api_name="stop", concurrency_limit=None, show_progress="hidden")
    clear.click(
        clear_chat, None, [chatbot, message, stats, tokens, step_plot], api_name="clear", concurrency_limit=None,
        show_progress="hidden",
    )  # fmt: skip
    chatbot.clear(clear_stream, None, None, api_name="clear_conversation", concurrency_limit=None)
    return ChatTab(chatbot=chatbot, message=message, stats=stats, on_unload=on_unload, records=records_store)


def _session(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"

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
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine import Engine, EngineBusyError, ErrorEvent, FinishEvent, RequestHandle, SamplingParams, TokenEvent

log = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are Qwen, a helpful coding assistant. Answer concisely."
MODEL_LOAD_TIMEOUT_S = 300.0
_STOPPED = object()  # put on a stream's queue by Stop / Clear / tab close
_END = object()  # put by the pump thread after the handle's last event


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


# ----- the tab -----


@dataclass(frozen=True)
class ChatTab:
    """What main.py needs from the tab: `on_unload` cancels a closed session's reply."""

    chatbot: gr.Chatbot
    message: gr.Textbox
    stats: gr.HTML
    on_unload: Any


def build(engine: Engine) -> ChatTab:
    """Create the chat tab's components inside the current gr.Tab, then wire its events."""
    streams = _Streams()

    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=520):
            chatbot = gr.Chatbot(
                label="Conversation",
                show_label=False,
                elem_id="chat-box",
                height=430,
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
                '<div class="hint">Off: top-k 0 · top-p 1 · min-p 0 · penalty 1. '
                "Temperature 0 = greedy.</div>",
                elem_id="sampling-hint",
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
            return gr.update(), history, format_error(msg)

        if not text or not text.strip():
            yield refuse("The message is empty: type something first.")
            return
        if streams.busy(session):
            yield refuse("A reply is still streaming: press Stop first.")
            return
        try:
            params = make_params(temp, k, p, mp, rep, max_new, seed_value)
            messages = build_messages(history, system_prompt, text)
            # submit() tokenizes (and waits for the model while it loads): keep it off the event loop.
            await asyncio.to_thread(engine.wait_ready, MODEL_LOAD_TIMEOUT_S)
            handle = await asyncio.to_thread(engine.submit, messages, params)
        except EngineBusyError as e:
            yield refuse(str(e))
            return
        except (ValueError, TimeoutError, RuntimeError) as e:
            yield refuse(str(e))
            return

        stream = streams.open(session, handle)
        history = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        reply = ""
        n_tokens = 0
        try:
            yield "", history, _busy(f"generating… (prompt {len(handle.prompt_ids)} tokens)")
            while True:
                ev = await stream.queue.get()
                if ev is _END:
                    break
                if ev is _STOPPED:
                    if stream.cleared:
                        yield "", [], ""
                    else:
                        history = [*history[:-1], {"role": "assistant", "content": reply}]
                        yield "", history, _stopped_stats(n_tokens)
                    break
                if isinstance(ev, TokenEvent):
                    n_tokens += 1
                    if ev.text:
                        reply += ev.text
                        history = [*history[:-1], {"role": "assistant", "content": reply}]
                        yield "", history, _busy(f"generating… {n_tokens} tokens")
                elif isinstance(ev, FinishEvent):
                    if ev.reason != "cancelled" or not reply:
                        reply += ev.tail
                    history = [*history[:-1], {"role": "assistant", "content": reply}]
                    yield "", history, format_stats(ev)
                elif isinstance(ev, ErrorEvent):
                    yield "", history, format_error(ev.message)
        except Exception as e:  # never let a traceback reach the page
            log.exception("chat stream failed")
            yield "", history, format_error(f"the reply failed: {type(e).__name__}: {e}")
        finally:
            streams.close(session, stream)

    async def stop_reply(request: gr.Request) -> None:
        if request is not None and request.session_hash:
            streams.stop(request.session_hash)

    async def clear_chat(request: gr.Request):
        if request is not None and request.session_hash:
            streams.stop(request.session_hash, cleared=True)
        return [], "", ""

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
        outputs=[message, chatbot, stats],
        api_name="chat",
        show_progress="hidden",
    )
    stop.click(stop_reply, None, None, api_name="stop", concurrency_limit=None, show_progress="hidden")
    clear.click(
        clear_chat, None, [chatbot, message, stats], api_name="clear", concurrency_limit=None,
        show_progress="hidden",
    )  # fmt: skip
    chatbot.clear(clear_stream, None, None, api_name="clear_conversation", concurrency_limit=None)
    return ChatTab(chatbot=chatbot, message=message, stats=stats, on_unload=on_unload)

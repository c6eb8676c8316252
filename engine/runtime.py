"""The engine runtime: one thread owns all MLX work; callers submit requests and read event streams.

MLX streams are per thread, so the model is loaded and run on the engine thread only. Any thread may call
`submit()`, which validates and tokenizes the request (raising ValueError subclasses for bad input), then
queues it; the returned handle yields frozen events. Week 1 serves requests one at a time in arrival
order; continuous batching (week 2) replaces `_serve_one` with a scheduler step, keeping this surface.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from engine.generate import FinishEvent, TokenEvent, check_prompt, generate
from engine.sampling import SamplingParams

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]


class EngineBusyError(RuntimeError):
    """The waiting queue is full; try again shortly."""


@dataclass(frozen=True)
class ErrorEvent:
    """The request failed inside the engine; the engine itself keeps serving."""

    message: str


Event = TokenEvent | FinishEvent | ErrorEvent
_DONE = object()


class RequestHandle:
    """Stream of one request's events. Iterate it; `cancel()` stops generation within one token."""

    def __init__(self, rid: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.id = rid
        self.prompt_ids = prompt_ids
        self.params = params
        self.submitted_at = time.perf_counter()
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self._events.get()
            if ev is _DONE:
                return
            yield ev

    def _put(self, ev: object) -> None:
        self._events.put(ev)


@dataclass(frozen=True)
class EngineSnapshot:
    model: str
    ready: bool
    running: int | None  # id of the request being generated
    waiting: tuple[int, ...]
    served: int


class Engine:
    def __init__(self, model: str, *, backend: str | None = None, max_waiting: int = 64) -> None:
        """Start the engine thread and load `model` (a manifest name or a folder) on it."""
        self.model_name = model
        self.backend = backend
        self.max_waiting = max_waiting
        self._queue: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._running: int | None = None
        self._waiting: list[int] = []
        self._served = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.loaded = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # ----- caller side -----
    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; re-raise the load error if loading failed."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"model {self.model_name} did not load within {timeout} s")
        if self._load_error is not None:
            raise RuntimeError(f"could not load model {self.model_name}: {self._load_error}") from (
                self._load_error
            )

    @property
    def tokenizer(self):
        self.wait_ready()
        return self.loaded.tokenizer

    def encode_prompt(self, prompt: str | Messages | list[int], *, chat: bool = False) -> list[int]:
        """Token ids for a text prompt (optionally wrapped in the chat template), messages or ids."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty: type some text first")
            if chat:
                return tok.apply_chat_template([{"role": "user", "content": prompt}])
            return tok.encode(prompt)
        if prompt and isinstance(prompt[0], dict):
            if not any(str(m.get("content", "")).strip() for m in prompt):
                raise ValueError("the conversation is empty: type a message first")
            return tok.apply_chat_template(prompt)
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < self.loaded.model.args.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.loaded.model.args.vocab_size}): {bad[:5]}")
        return ids

    def submit(
        self, prompt: str | Messages | list[int], params: SamplingParams | None = None, *, chat: bool = False
    ) -> RequestHandle:
        """Validate, tokenize and queue a request. Raises ValueError for bad input, EngineBusyError
        when the waiting queue is full."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        ids = self.encode_prompt(prompt, chat=chat)
        check_prompt(ids, self.loaded.model.args.max_position_embeddings)
        handle = RequestHandle(next(self._ids), ids, params)
        with self._lock:
            try:
                self._queue.put_nowait(handle)
            except queue.Full:
                raise EngineBusyError(
                    f"the engine is busy: {self.max_waiting} requests are already waiting; try again shortly"
                ) from None
            self._waiting.append(handle.id)
        return handle

    def snapshot(self) -> EngineSnapshot:
        with self._lock:
            return EngineSnapshot(
                model=self.model_name,
                ready=self._ready.is_set() and self._load_error is None,
                running=self._running,
                waiting=tuple(self._waiting),
                served=self._served,
            )

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._queue.put(None)  # wake the loop
        self._thread.join(timeout)

    # ----- engine thread -----
    def _run(self) -> None:
        from engine.loader import load_model

        try:
            self.loaded = load_model(self.model_name, backend=self.backend, quiet=True)
        except BaseException as e:  # reported to callers by wait_ready()
            log.exception("model load failed")
            self._load_error = e
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            handle = self._queue.get()
            if handle is None:
                continue
            if isinstance(handle, _EngineCall):  # inspection work queued by run_on_engine_thread()
                handle.run(self.loaded)
                continue
            with self._lock:
                self._waiting.remove(handle.id)
                self._running = handle.id
            try:
                self._serve_one(handle)
            finally:
                with self._lock:
                    self._running = None
                    self._served += 1
                handle._put(_DONE)

    def _serve_one(self, handle: RequestHandle) -> None:
        if handle.cancelled:
            handle._put(_cancelled_finish(handle))
            return
        lm = self.loaded
        try:
            for ev in generate(lm.model, lm.tokenizer, handle.prompt_ids, handle.params):
                handle._put(ev)
                if handle.cancelled and not isinstance(ev, FinishEvent):
                    handle._put(_cancelled_finish(handle))
                    return
        except Exception as e:  # one bad request must not stop the engine
            log.exception("request %d failed", handle.id)
            handle._put(ErrorEvent(f"generation failed: {type(e).__name__}: {e}"))

    # ----- work on the engine thread, between requests (inspection) -----
    def run_on_engine_thread(self, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """Run `fn(loaded_model)` on the engine thread between requests and return its result (or raise its
        exception). MLX arrays must not cross threads, so `fn` must return plain data (numpy, dataclasses)."""
        self.wait_ready()
        call = _EngineCall(fn)
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            raise EngineBusyError("the engine is busy; try again shortly") from None
        return call.future.result(timeout)

    def inspect(self, token_ids: list[int], **kwargs: Any):
        """engine.inspect.inspect_forward on the loaded model: attention, q/k, hidden states (numpy)."""
        from engine.inspect import inspect_forward

        return self.run_on_engine_thread(lambda lm: inspect_forward(lm.model, token_ids, **kwargs))


class _EngineCall:
    """A callable queued to the engine thread; its result or exception comes back through a Future."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.future: Future = Future()

    def run(self, loaded: Any) -> None:
        try:
            self.future.set_result(self.fn(loaded))
        except BaseException as e:  # the caller re-raises it; the engine keeps serving
            self.future.set_exception(e)


def _cancelled_finish(handle: RequestHandle) -> FinishEvent:
    return FinishEvent(
        reason="cancelled", text="", tail="", token_ids=(), prompt_tokens=len(handle.prompt_ids),
        prefill_s=0.0, decode_s=0.0,
    )  # fmt: skip

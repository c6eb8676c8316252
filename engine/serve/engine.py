"""The threaded `Engine`: one thread owns all MLX work; callers submit requests and read event streams.

MLX streams are per thread, so the model is loaded and run on the engine thread only. Any thread may call
`submit()`, which validates and tokenizes the request (raising ValueError subclasses for bad input), then
puts it in an inbox; the returned handle yields frozen events (TokenEvent..., then one FinishEvent or
ErrorEvent). The engine thread moves the inbox into the `EngineCore` and calls `step()` while there is
work: continuous batching, so requests join and leave the batch at every step.

Rules it keeps:
- At most `max_waiting` requests wait for a slot; one more raises EngineBusyError at once.
- `handle.cancel()`, closing the handle's iterator early, or dropping the handle frees the request's
  slot and cache at the next step.
- A failure of one request ends it with an ErrorEvent; a failure of a whole step ends the requests in
  flight the same way; either way the engine keeps serving.
- `snapshot()` is cheap: the engine thread publishes a frozen picture after every step.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import fields
from typing import Any

from tiny_llm_playground.engine.events import (
    EngineSnapshot,
    ErrorEvent,
    FinishEvent,
    RequestEvent,
    RequestTiming,
)
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import Sequence
from tiny_llm_playground.engine.serve.snapshot import LIVE, empty_snapshot, engine_snapshot, request_timing

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]
RECENT_FINISHED = 32  # finished requests whose timings the snapshot keeps


class EngineBusyError(RuntimeError):
    """The waiting queue is full; try again shortly."""


class RequestHandle:
    """Stream of one request's events. Iterate it; `cancel()` (or abandoning it) stops generation."""

    def __init__(self, rid: int, prompt_ids: list[int], params: SamplingParams, wake) -> None:
        self.id = rid
        self.prompt_ids = prompt_ids
        self.params = params
        self.submitted_at = time.perf_counter()
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._wake = wake
        self._done = False
        # The engine holds the queue and the flag, never the handle: dropping the handle cancels.
        weakref.finalize(self, _cancel, self._cancelled, wake)

    def cancel(self) -> None:
        _cancel(self._cancelled, self._wake)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[RequestEvent]:
        try:
            while not self._done:
                ev = self._events.get()
                self._done = isinstance(ev, FinishEvent | ErrorEvent)
                yield ev
        finally:
            if not self._done:  # the consumer stopped reading: nobody wants the rest
                self.cancel()


def _cancel(flag: threading.Event, wake) -> None:
    flag.set()
    wake()


class Engine:
    def __init__(
        self,
        model: str,
        *,
        backend: str | None = None,
        config: EngineConfig | None = None,
        max_waiting: int | None = None,
        quant: str | None = None,
    ) -> None:
        """Start the engine thread and load `model` (a manifest name or a folder) on it. quant: the linear
        layers' weight format (None = the loader's default, "auto": the GGUF's own blocks when its source GGUF is
        on disk, else q8_0)."""
        config = config or EngineConfig()
        if max_waiting is not None:
            config = EngineConfig(**{**config.__dict__, "max_waiting": max_waiting})
        self.config = config
        self.model_name = model
        self.backend = backend
        self.quant = quant
        self.max_waiting = config.max_waiting
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._calls: list[_EngineCall] = []  # work queued by run_on_engine_thread(), run between steps
        self._core_waiting: tuple[int, ...] = ()  # published by the engine thread under _cv
        self._served = 0
        self._stop = False
        self._snap: EngineSnapshot | None = None
        self._core: EngineCore | None = None
        self._live: dict[int, Sequence] = {}  # engine thread only: sequences handed to the core
        self._finished: deque[RequestTiming] = deque(maxlen=RECENT_FINISHED)
        self.loaded = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # ----- caller side -----
    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; re-raise the load error if loading failed."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"model {self.model_name} did not load within {timeout} s")
        if self._load_error is not None:
            raise RuntimeError(f"could not load model {self.model_name}: {self._load_error}") from (self._load_error)

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
        self,
        prompt: str | Messages | list[int],
        params: SamplingParams | Mapping | None = None,
        *,
        chat: bool = False,
    ) -> RequestHandle:
        """Validate, tokenize and queue a request. Raises ValueError for bad input (prompt, bad sampling
        values, a request larger than the whole cache), TypeError for params of another type, and
        EngineBusyError when the waiting queue is full."""
        if params is None:
            params = SamplingParams()
        elif isinstance(params, Mapping):  # plain values (e.g. from JSON) are validated the same way
            unknown = set(params) - {f.name for f in fields(SamplingParams)}
            if unknown:
                raise ValueError(f"invalid sampling parameters: unknown {', '.join(sorted(unknown))}")
            params = SamplingParams(**params)
        elif not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams or a dict, got {type(params).__name__}")
        ids = self.encode_prompt(prompt, chat=chat)
        context = self.loaded.model.args.max_position_embeddings
        seq = Sequence(0, ids, params, context=context, tokenizer=self.loaded.tokenizer)  # PromptError
        self._core.check(seq)  # ValueError now, for a request the cache could never hold
        # Valid: only now does it get an id and a handle, whose stream the sequence feeds.
        handle = RequestHandle(next(self._ids), ids, params, self._wake)
        seq.id, seq.emit, seq.cancel_flag = handle.id, handle._events.put, handle._cancelled
        with self._cv:
            if len(self._inbox) + len(self._core_waiting) >= self.max_waiting:
                raise EngineBusyError(
                    f"the engine is busy: {self.max_waiting} requests are already waiting; try again shortly"
                )
            self._inbox.append(seq)
            self._cv.notify()
        return handle

    def snapshot(self) -> EngineSnapshot:
        """The state after the latest step; `waiting` and `timings` also list requests submitted since then
        (a step can take seconds: a page must see a request it just sent)."""
        with self._cv:  # the engine thread may have taken new requests since its last step
            snap, inbox = self._snap, list(self._inbox)
            waiting = self._core_waiting + tuple(s.id for s in inbox)
        ready = self._ready.is_set() and self._load_error is None
        if snap is None:
            return empty_snapshot(self.model_name, self.config, ready=ready, waiting=waiting)
        timings = snap.timings
        if inbox:  # live requests first, then the recently finished
            now = time.perf_counter()
            n_live = sum(t.status in LIVE for t in timings)
            timings = timings[:n_live] + tuple(request_timing(s, now) for s in inbox) + timings[n_live:]
        return EngineSnapshot(**{**snap.__dict__, "ready": ready, "waiting": waiting, "timings": timings})

    def run_on_engine_thread(self, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """Run `fn(loaded_model)` on the engine thread between steps and return its result (or raise its
        exception). MLX arrays must not cross threads, so `fn` must return plain data (numpy, dataclasses)."""
        self.wait_ready()
        call = _EngineCall(fn)
        with self._cv:
            if self._stop:
                raise RuntimeError("the engine has shut down")
            self._calls.append(call)
            self._cv.notify()
        return call.future.result(timeout)

    def reset_prefix_cache(self, timeout: float | None = None) -> int:
        """Forget every cached prefix block that no request holds, between steps; returns how many."""
        return self.run_on_engine_thread(lambda _: self._core.reset_prefix_cache(), timeout)

    def warm_up(self, timeout: float | None = None) -> float:
        """Generate two tokens for a short chat prompt, outside the batch (snapshots show nothing), so the
        first real request does not pay the one-off costs: compiling the chat template, MLX's first
        allocations, starting the kernels' threads. Returns the seconds it took."""
        from tiny_llm_playground.engine.generate import generate

        t0 = time.perf_counter()
        ids = self.encode_prompt([{"role": "user", "content": "Say hi."}])

        def run(lm) -> None:
            for _ in generate(lm.model, lm.tokenizer, ids, SamplingParams(temperature=0.0, max_tokens=2)):
                pass

        self.run_on_engine_thread(run, timeout)
        return time.perf_counter() - t0

    def inspect(self, token_ids: list[int], **kwargs: Any):
        """engine.inspect.inspect_forward on the loaded model (readable path): attention, q/k around RoPE,
        hidden states, as numpy. Runs between batching steps, so generation pauses for one forward."""
        from tiny_llm_playground.engine.inspect import inspect_forward

        return self.run_on_engine_thread(lambda lm: inspect_forward(lm.model, token_ids, **kwargs))

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ----- engine thread -----
    def _run(self) -> None:
        from tiny_llm_playground.engine.loader import load_model

        try:
            quant = {} if self.quant is None else {"quant": self.quant}
            self.loaded = load_model(self.model_name, backend=self.backend, quiet=True, **quant)
            self._core = EngineCore(self.loaded.model, self.config)
        except BaseException as e:  # reported to callers by wait_ready()
            log.exception("model load failed")
            self._load_error = e
            self._ready.set()
            return
        self._publish()
        self._ready.set()
        core = self._core
        while True:
            with self._cv:
                while not (self._stop or self._inbox or self._calls or core.has_work):
                    self._cv.wait()
                if self._stop:
                    break
                new, self._inbox = self._inbox, []
                calls, self._calls = self._calls, []
                for seq in new:
                    core.add(seq)
                    self._live[seq.id] = seq
                self._core_waiting = tuple(s.id for s in core.scheduler.waiting)
                if new:  # shown as waiting now, not after the (maybe long) step that admits them
                    self._publish()  # under the lock (re-entrant), so no snapshot misses them in between
            for call in calls:
                call.run(self.loaded)
            if not core.has_work:
                continue
            try:
                ev = core.step()
                self._served += len(ev.finished)
            except Exception as e:  # a bug in the step itself: end what is in flight, keep serving
                log.exception("engine step failed")
                n = len(core.scheduler.running) + len(core.scheduler.waiting)
                core.fail_all(f"engine step failed: {type(e).__name__}: {e}")
                self._served += n
            self._publish()
        core.fail_all("the engine shut down")
        with self._cv:
            calls, self._calls = self._calls, []
        for call in calls:
            call.future.set_exception(RuntimeError("the engine shut down"))

    def _publish(self) -> None:
        now = time.perf_counter()
        for rid, seq in list(self._live.items()):
            if seq.finished:
                self._finished.append(request_timing(seq, now))
                del self._live[rid]
        live = tuple(request_timing(seq, now) for seq in self._live.values())
        snap = engine_snapshot(
            self._core, model=self.model_name, served=self._served, timings=live + tuple(self._finished)
        )
        with self._cv:
            self._snap = snap
            self._core_waiting = snap.waiting


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

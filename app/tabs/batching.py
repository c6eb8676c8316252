"""KV cache & batching tab: a live view of continuous batching, and a one-click class demo.

Rules it keeps:
- Live by polling: a gr.Timer (~1 s, active only while this tab is open; main.py switches it) reads
  `engine.snapshot()`, a cheap frozen picture the engine thread publishes after every step, and redraws
  only when the snapshot changed. Figures come from viz/batching.py (pure functions).
- The views are made once per snapshot for every session (SharedViews): building the two plotly figures
  costs ~100+ ms of CPU, which the engine needs, so 30 students polling must not build them 30 times.
  They are rebuilt at most once per REBUILD_S (half the poll period, so each poll of a session still gets
  a newer picture when there is one) and handed out already serialized.
- The class demo submits N real requests (varied prompts, moderate max_tokens) through the same
  `engine.submit()` every browser session uses, so they batch with whatever else is running. Their
  handles live in a server-side table here (a dropped handle would cancel its request), each drained by a
  thread that discards the events; "Cancel demo" cancels the ones still running.
- Requests are labelled in the views by who sent them ("chat", "demo") through a shared RequestLabels
  (id -> label), which keeps only the most recent ids: the views never show older ones.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tiny_llm_playground.engine import EngineBusyError, RequestHandle, SamplingParams
from tiny_llm_playground.viz.batching import cache_occupancy, requests_table_html, step_timeline, summary_html

log = logging.getLogger(__name__)

POLL_S = 1.0
REBUILD_S = 0.5 * POLL_S  # the shared views are rebuilt at most this often, however many sessions poll
MAX_DEMO = 16  # the demo slider's maximum
CHAT_SLOTS = 4  # slots python -m app keeps beyond MAX_DEMO, so chats join the batch during a full demo
MAX_LABELS = 1024  # ids remembered; the views show at most ~200 (live, 32 finished, the last 128 steps)
DEMO_PROMPTS = (
    "Write a Python function that checks whether a number is prime.",
    "Explain what a KV cache is in two sentences.",
    "Write a SQL query that returns the five most recent orders.",
    "What does the `yield` keyword do in Python?",
    "Write a bash one-liner that counts the lines of every .py file.",
    "Reverse a linked list in C. Show only the function.",
    "Give three tips for writing readable code.",
    "Write a JavaScript function that debounces another function.",
    "What is the difference between a process and a thread?",
    "Write a Rust function that sums a vector of integers.",
    "Explain big-O notation to a beginner in three sentences.",
    "Write a Python class for a stack with push, pop and peek.",
    "What is a hash map and when would you use one?",
    "Write a regular expression that matches an email address.",
    "Write a haiku about compilers.",
    "How does binary search work? Answer in two sentences.",
)


class RequestLabels(MutableMapping):
    """Request id -> who sent it ("chat", "demo"), for the views. Thread-safe; keeps the `max_size` most
    recently added ids (ids only grow, so these are the newest requests) and forgets older ones."""

    def __init__(self, max_size: int = MAX_LABELS) -> None:
        self.max_size = max_size
        self._labels: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()

    def __setitem__(self, rid: int, label: str) -> None:
        with self._lock:
            self._labels[rid] = label
            self._labels.move_to_end(rid)
            while len(self._labels) > self.max_size:
                self._labels.popitem(last=False)

    def __getitem__(self, rid: int) -> str:
        with self._lock:
            return self._labels[rid]

    def __delitem__(self, rid: int) -> None:
        with self._lock:
            del self._labels[rid]

    def __iter__(self):
        with self._lock:
            return iter(list(self._labels))

    def __len__(self) -> int:
        return len(self._labels)


class DemoRequests:
    """The class demo's in-flight requests: handles kept (and drained) until they finish."""

    def __init__(self, engine, labels: MutableMapping[int, str]) -> None:
        self.engine = engine
        self.labels = labels
        self._handles: dict[int, RequestHandle] = {}
        self._lock = threading.Lock()

    def start(self, n: int, max_tokens: int) -> list[int]:
        """Submit n demo requests; returns their ids. Raises ValueError / EngineBusyError from submit()."""
        ids = []
        for i in range(n):
            params = SamplingParams(temperature=0.7, top_k=40, max_tokens=max_tokens, logprobs=0)
            handle = self.engine.submit(DEMO_PROMPTS[i % len(DEMO_PROMPTS)], params, chat=True)
            self.labels[handle.id] = "demo"
            with self._lock:
                self._handles[handle.id] = handle
            threading.Thread(target=self._drain, args=(handle,), name=f"demo-{handle.id}", daemon=True).start()
            ids.append(handle.id)
        return ids

    def _drain(self, handle: RequestHandle) -> None:
        try:
            for _ in handle:  # events are not needed; the batching view reads the engine's snapshot
                pass
        finally:
            with self._lock:
                self._handles.pop(handle.id, None)

    def cancel(self) -> int:
        with self._lock:
            handles = list(self._handles.values())
        for h in handles:
            h.cancel()
        return len(handles)

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._handles)


def snapshot_key(snap, labels: Mapping[int, str] | None = None) -> tuple:
    """What changes when the picture changes (the last step, who is where, the finished count, and the
    labels of the requests in the table, which the chat sets just after submitting)."""
    last = snap.steps[-1].index if snap.steps else -1
    tags = tuple((labels or {}).get(t.id) for t in snap.timings)
    return (last, snap.running, snap.waiting, snap.served, snap.ready, tags)


def views(snap, labels: Mapping[int, str]) -> tuple[str, Any, str, Any]:
    """(summary HTML, cache figure, requests table HTML, timeline figure) of one snapshot."""
    return (
        summary_html(snap),
        cache_occupancy(snap.requests, snap.config.cache_tokens, snap.free_cache_tokens, labels),
        requests_table_html(snap.timings, labels),
        step_timeline(snap.steps, labels),
    )


class SharedViews:
    """The views of the latest snapshot, made once and shared by every session that polls.

    `get()` returns (key, views): a session whose last key equals `key` has nothing to redraw. A newer
    snapshot is drawn only when the shared views are at least `min_age_s` old (the engine publishes after
    every step, several times a second); the lock makes concurrent polls wait for one build, not start their
    own. `serialize(fig)` turns a figure into what gr.Plot sends (done once here, not once per session)."""

    def __init__(
        self,
        engine,
        labels: Mapping[int, str],
        serialize=lambda fig: fig,
        min_age_s: float = REBUILD_S,
        clock=time.monotonic,
    ):
        self.engine = engine
        self.labels = labels
        self.serialize = serialize
        self.min_age_s = min_age_s
        self.clock = clock
        self.builds = 0
        self._key: tuple | None = None
        self._views: tuple | None = None
        self._built_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, *, fresh: bool = False) -> tuple[tuple, tuple]:
        """(key, (summary HTML, cache plot, table HTML, timeline plot)); `fresh` ignores the minimum age."""
        with self._lock:
            now = self.clock()
            if self._views is None or fresh or now - self._built_at >= self.min_age_s:
                snap = self.engine.snapshot()
                key = snapshot_key(snap, self.labels)
                if key != self._key:  # age counts from the snapshot taken, not from the end of the build
                    summary, cache_fig, table, timeline = views(snap, self.labels)
                    self._views = (summary, self.serialize(cache_fig), table, self.serialize(timeline))
                    self._key, self._built_at = key, now
                    self.builds += 1
            return self._key, self._views


def _note(text: str, error: bool = False) -> str:
    return f'<div class="{"inspect-error" if error else "inspect-ok"}">{html.escape(text)}</div>'


@dataclass(frozen=True)
class BatchingTab:
    timer: gr.Timer
    refresh: Any  # fn(key) -> outputs, for main.py's tab-select event
    inputs: list
    outputs: list
    demo: DemoRequests
    shared: SharedViews


def build(engine, labels: MutableMapping[int, str]) -> BatchingTab:
    demo = DemoRequests(engine, labels)
    timer = gr.Timer(POLL_S, active=False)
    last_key = gr.State(None)  # a small tuple, never the snapshot
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=520):
            summary = gr.HTML(summary_html(engine.snapshot()) if hasattr(engine, "snapshot") else "",
                              elem_id="batch-kpis")  # fmt: skip
            demo_status = gr.HTML(_note("Class demo: start N requests and watch them share the batch."),
                                  elem_id="demo-status")  # fmt: skip
        with gr.Column(scale=2, min_width=400):
            with gr.Group(elem_id="batch-demo"):
                with gr.Row():
                    n_requests = gr.Slider(1, MAX_DEMO, value=8, step=1, label="Demo requests", buttons=[],
                                           elem_id="demo-n")  # fmt: skip
                    demo_tokens = gr.Slider(8, 256, value=64, step=8, label="Max tokens each", buttons=[],
                                            elem_id="demo-tokens")  # fmt: skip
                with gr.Row():
                    start = gr.Button("Start demo", variant="primary", elem_id="demo-start")
                    cancel = gr.Button("Cancel demo", variant="stop", elem_id="demo-cancel")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=480):
            cache_plot = gr.Plot(show_label=False, elem_id="batch-cache")
        with gr.Column(scale=1, min_width=480):
            table = gr.HTML(requests_table_html([]), elem_id="batch-requests", max_height=420)
    timeline = gr.Plot(show_label=False, elem_id="batch-timeline")
    gr.HTML(
        '<div class="hint">Timeline: each column is one engine step; circles = a decode row (one new token), '
        "squares = a chunk of prompt prefill (hover for its size). Requests join and leave the batch at any "
        "step: that is continuous batching. TTFT = time from submit to the first token.</div>"
    )

    outputs = [summary, cache_plot, table, timeline, last_key]
    shared = SharedViews(engine, labels, serialize=cache_plot.postprocess)  # both plots serialize alike

    def refresh(key, *, fresh: bool = False):
        new_key, drawn = shared.get(fresh=fresh)
        if new_key == key:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), key
        return (*drawn, new_key)

    def force_refresh():
        return refresh(None, fresh=True)

    async def start_demo(n: float, max_tokens: float):
        try:
            await asyncio.to_thread(engine.wait_ready, 300)
            ids = await asyncio.to_thread(demo.start, int(n), int(max_tokens))
        except (ValueError, EngineBusyError, TimeoutError, RuntimeError) as e:
            gr.Warning(str(e))
            return _note(f"Could not start the demo: {e}", error=True), *force_refresh()
        msg = f"Started {len(ids)} demo requests (#{ids[0]}–#{ids[-1]}), {int(max_tokens)} tokens max each."
        return _note(msg), *force_refresh()

    def cancel_demo():
        n = demo.cancel()
        return _note(f"Cancelled {n} demo requests." if n else "No demo requests are running.")

    timer.tick(refresh, last_key, outputs, api_name="batching_poll", show_progress="hidden",
               concurrency_limit=2, concurrency_id="batching_poll")  # fmt: skip
    start.click(start_demo, [n_requests, demo_tokens], [demo_status, *outputs], api_name="demo_start",
                concurrency_limit=None, show_progress="hidden")  # fmt: skip
    cancel.click(cancel_demo, None, demo_status, api_name="demo_cancel", concurrency_limit=None, show_progress="hidden")
    return BatchingTab(timer=timer, refresh=force_refresh, inputs=[], outputs=outputs, demo=demo, shared=shared)

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
  thread that discards the events; "Cancel demo" cancels the ones still running. The shared-prefix demo
  sends them all under one ~1,000-token system prompt (assets/demo/class_notes.md): the first goes alone,
  the others once its first token is out, so they find the prompt in the paged cache's prefix cache.
- With the paged cache the tab also draws the block pool (viz/paged.py): who holds which block, the
  blocks several requests share, the cached ones, each request's block table and the pool's numbers.
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
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from tiny_llm_playground.engine import EngineBusyError, RequestHandle, SamplingParams, TokenEvent
from tiny_llm_playground.viz.batching import cache_occupancy, requests_table_html, step_timeline, summary_html
from tiny_llm_playground.viz.paged import block_grid, block_tables_html, pool_summary_html

log = logging.getLogger(__name__)

POLL_S = 1.0
REBUILD_S = 0.5 * POLL_S  # the shared views are rebuilt at most this often, however many sessions poll
MAX_DEMO = 16  # the demo slider's maximum
CHAT_SLOTS = 4  # slots python -m app keeps beyond MAX_DEMO, so chats join the batch during a full demo
MAX_LABELS = 1024  # ids remembered; the views show at most ~200 (live, 32 finished, the last 128 steps)
CLASS_NOTES = Path(__file__).resolve().parents[2] / "assets" / "demo" / "class_notes.md"
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

    def start(self, n: int, max_tokens: int, *, shared_prefix: bool = False) -> list[int]:
        """Submit n demo requests; returns the first's id. shared_prefix: all under the class notes as their
        system prompt, the first alone and the others once its first token is out (so they hit its blocks).
        Raises ValueError / EngineBusyError from submit()."""
        system = CLASS_NOTES.read_text(encoding="utf-8") if shared_prefix else None

        def submit(i: int) -> RequestHandle:
            params = SamplingParams(temperature=0.7, top_k=40, max_tokens=max_tokens, logprobs=0)
            question = DEMO_PROMPTS[i % len(DEMO_PROMPTS)]
            if system is None:
                handle = self.engine.submit(question, params, chat=True)
            else:
                messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
                handle = self.engine.submit(messages, params)
            self.labels[handle.id] = "class" if system else "demo"
            with self._lock:
                self._handles[handle.id] = handle
            return handle

        def rest() -> None:  # the others, once the first has its first token (its prompt is computed)
            for i in range(1, n):
                try:
                    self._watch(submit(i))
                except (ValueError, EngineBusyError) as e:
                    log.warning("shared-prefix demo: request %d of %d not sent: %s", i + 1, n, e)
                    return

        first = submit(0)
        self._watch(first, on_first_token=rest if shared_prefix and n > 1 else None)
        ids = [first.id]
        if not shared_prefix:
            for i in range(1, n):
                handle = submit(i)
                self._watch(handle)
                ids.append(handle.id)
        return ids

    def _watch(self, handle: RequestHandle, on_first_token=None) -> None:
        threading.Thread(target=self._drain, args=(handle, on_first_token), name=f"demo-{handle.id}",
                         daemon=True).start()  # fmt: skip

    def _drain(self, handle: RequestHandle, on_first_token=None) -> None:
        try:
            for ev in handle:  # events are not needed; the batching view reads the engine's snapshot
                if on_first_token is not None and isinstance(ev, TokenEvent):
                    on_first_token, call = None, on_first_token
                    call()
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


def views(snap, labels: Mapping[int, str]) -> tuple:
    """(summary HTML, cache figure, requests table HTML, timeline figure, pool numbers HTML, block grid
    figure, block tables HTML) of one snapshot."""
    pool = getattr(snap, "blocks", None)
    total = pool.num_blocks * pool.block_size if pool is not None else snap.config.cache_tokens
    return (
        summary_html(snap),
        cache_occupancy(snap.requests, total, snap.free_cache_tokens, labels),
        requests_table_html(snap.timings, labels),
        step_timeline(snap.steps, labels),
        pool_summary_html(pool),
        block_grid(pool, labels),
        block_tables_html(snap.requests, labels),
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
        """(key, `views(...)` with the figures serialized); `fresh` ignores the minimum age."""
        with self._lock:
            now = self.clock()
            if self._views is None or fresh or now - self._built_at >= self.min_age_s:
                snap = self.engine.snapshot()
                key = snapshot_key(snap, self.labels)
                if key != self._key:  # age counts from the snapshot taken, not from the end of the build
                    drawn = views(snap, self.labels)
                    self._views = tuple(self.serialize(v) if isinstance(v, go.Figure) else v for v in drawn)
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
                    shared_start = gr.Button("Shared-prefix demo", variant="secondary", elem_id="demo-shared")
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
    paged = getattr(getattr(engine, "config", None), "kv_cache", "paged") == "paged"
    with gr.Group(visible=paged, elem_id="batch-paged"):
        pool_kpis = gr.HTML(elem_id="pool-kpis")
        gr.HTML(
            '<div class="hint">The paged KV cache keeps every token\'s keys and values in fixed-size blocks: '
            "a request takes a new block only when its last one is full, and the pool is shared by all "
            "requests. Hit rate = prompt tokens found already computed; preemptions = requests sent back to "
            "the queue when the pool ran out; fragmentation = empty slots in the blocks in use.</div>"
        )
        grid = gr.Plot(show_label=False, elem_id="pool-grid")
        gr.HTML(
            '<div class="hint">Block grid: one cell per block, by block id. A colour is one request\'s block; '
            "black cells are shared by several requests (the number is how many): a prompt they start with "
            "alike, computed once. Pale blue cells belong to finished requests and stay cached for the next "
            "prompt that starts the same way; grey cells are free. Try the shared-prefix demo.</div>"
        )
        block_tables = gr.HTML(elem_id="pool-tables", max_height=320)
        gr.HTML(
            '<div class="hint">Block tables: each request\'s blocks in the order of its tokens (bold = shared); '
            "attention reads a request's keys and values through this list, so its blocks need not be "
            "next to each other.</div>"
        )

    outputs = [summary, cache_plot, table, timeline, pool_kpis, grid, block_tables, last_key]
    shared = SharedViews(engine, labels, serialize=cache_plot.postprocess)  # both plots serialize alike

    def refresh(key, *, fresh: bool = False):
        new_key, drawn = shared.get(fresh=fresh)
        if new_key == key:
            return (*(gr.skip() for _ in drawn), key)
        return (*drawn, new_key)

    def force_refresh():
        return refresh(None, fresh=True)

    async def start_demo(n: float, max_tokens: float, shared_prefix: bool = False):
        try:
            await asyncio.to_thread(engine.wait_ready, 300)
            ids = await asyncio.to_thread(demo.start, int(n), int(max_tokens), shared_prefix=shared_prefix)
        except (ValueError, EngineBusyError, TimeoutError, RuntimeError) as e:
            gr.Warning(str(e))
            return _note(f"Could not start the demo: {e}", error=True), *force_refresh()
        if shared_prefix:
            msg = (f"Shared-prefix demo: #{ids[0]} computes the class notes' system prompt; the other {int(n) - 1}"
                   " follow when its first token is out and find that prompt in the prefix cache.")  # fmt: skip
        else:
            msg = f"Started {len(ids)} demo requests (#{ids[0]}–#{ids[-1]}), {int(max_tokens)} tokens max each."
        return _note(msg), *force_refresh()

    async def start_shared(n: float, max_tokens: float):
        return await start_demo(n, max_tokens, shared_prefix=True)

    def cancel_demo():
        n = demo.cancel()
        return _note(f"Cancelled {n} demo requests." if n else "No demo requests are running.")

    timer.tick(refresh, last_key, outputs, api_name="batching_poll", show_progress="hidden",
               concurrency_limit=2, concurrency_id="batching_poll")  # fmt: skip
    start.click(start_demo, [n_requests, demo_tokens], [demo_status, *outputs], api_name="demo_start",
                concurrency_limit=None, show_progress="hidden")  # fmt: skip
    shared_start.click(start_shared, [n_requests, demo_tokens], [demo_status, *outputs], api_name="demo_shared",
                       concurrency_limit=None, show_progress="hidden")  # fmt: skip
    cancel.click(cancel_demo, None, demo_status, api_name="demo_cancel", concurrency_limit=None, show_progress="hidden")
    return BatchingTab(timer=timer, refresh=force_refresh, inputs=[], outputs=outputs, demo=demo, shared=shared)

"""What the Attention, RoPE and Logit-lens tabs share: one inspected prompt per browser session.

Rules it keeps:
- The inspection (numpy arrays up to ~150 MB for 512 tokens) is heavy, so it lives here, keyed by Gradio's
  session hash, never in gr.State; only the few most recent sessions are kept.
- All MLX work goes through the engine (`engine.inspect`, `engine.run_on_engine_thread`), which runs it on
  the engine thread between requests. These helpers block: call them from worker threads.
- Bad input (empty prompt, too many tokens) raises ValueError with a message fit for the page.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from dataclasses import dataclass

from tiny_llm_playground.engine.inspect import MAX_INSPECT_TOKENS, InspectResult, LogitLens, logit_lens

LENS_WINDOW = 16  # positions per logit-lens view: each costs n_layers x vocab x hidden multiply-adds
LENS_TOP = 5
MODEL_LOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Inspection:
    prompt: str
    tokens: tuple[str, ...]  # display text of each token (whitespace made visible)
    result: InspectResult


class InspectionStore:
    """The latest Inspection of each browser session (least recently used dropped beyond `capacity`)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Inspection] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, item: Inspection) -> None:
        with self._lock:
            self._items[session] = item
            self._items.move_to_end(session)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, session: str) -> Inspection | None:
        with self._lock:
            item = self._items.get(session)
            if item is not None:
                self._items.move_to_end(session)
            return item

    def replace_lens(self, session: str, lens: LogitLens) -> Inspection | None:
        from dataclasses import replace

        with self._lock:
            item = self._items.get(session)
            if item is None:
                return None
            item = replace(item, result=replace(item.result, lens=lens))
            self._items[session] = item
            return item


def session_of(request) -> str:
    return (getattr(request, "session_hash", None) or "anonymous") if request is not None else "anonymous"


def lens_window(length: int, start: int | None = None) -> tuple[int, ...]:
    """LENS_WINDOW consecutive positions starting at `start` (default: the last ones), inside the prompt."""
    if start is None:
        start = length - LENS_WINDOW
    start = max(0, min(int(start), length - LENS_WINDOW))
    return tuple(range(start, min(length, start + LENS_WINDOW)))


def run_inspection(engine, prompt: str) -> Inspection:
    """Tokenize `prompt` and inspect it on the engine thread (blocking). ValueError for bad input."""
    if not prompt or not prompt.strip():
        raise ValueError("The prompt is empty: type some text to inspect.")
    engine.wait_ready(MODEL_LOAD_TIMEOUT_S)
    ids = engine.encode_prompt(prompt)
    if len(ids) > MAX_INSPECT_TOKENS:
        raise ValueError(
            f"The prompt has {len(ids)} tokens; inspection is limited to {MAX_INSPECT_TOKENS}"
            " (attention grows as layers × heads × tokens²). Shorten it."
        )
    tok = engine.tokenizer
    tokens = tuple(tok.id_to_piece(i, visible_whitespace=True) for i in ids)
    result = engine.inspect(ids, lens_positions=lens_window(len(ids)), lens_top=LENS_TOP)
    return Inspection(prompt=prompt, tokens=tokens, result=result)


def compute_lens(engine, item: Inspection, positions: tuple[int, ...]) -> LogitLens:
    """The logit lens of `positions` of an inspection, computed on the engine thread (blocking)."""
    return engine.run_on_engine_thread(lambda lm: logit_lens(item.result, lm.model, top=LENS_TOP, positions=positions))


def status_html(text: str, *, error: bool = False) -> str:
    cls = "inspect-error" if error else "inspect-ok"
    return f'<div class="{cls}">{"⚠ " if error else ""}{html.escape(text)}</div>'


NOTHING_YET = "Nothing inspected yet: type a prompt on the Attention tab and press Inspect."

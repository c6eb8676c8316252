"""Logit-lens tab: what each layer of the real model would predict next, for a window of the inspected prompt.

Reads the session's inspection (made on the Attention tab). Inspect computes the lens for the last
LENS_WINDOW positions; moving the window recomputes it on the engine thread (each window costs
n_layers x window x vocab x hidden multiply-adds: a few seconds on CPU). Figure: viz/lens.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tiny_llm_playground.app.tabs.inspection import (
    LENS_WINDOW,
    NOTHING_YET,
    Inspection,
    InspectionStore,
    compute_lens,
    lens_window,
    session_of,
    status_html,
)
from tiny_llm_playground.viz.layout import message_figure
from tiny_llm_playground.viz.lens import logit_lens_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LensTab:
    refresh: Any  # (request) -> outputs; main.py runs it after Inspect
    inputs: list
    outputs: list


def lens_figure(item: Inspection, piece):
    """The logit-lens table of the inspection's stored lens; piece(id) -> display text of a token."""
    lens = item.result.lens
    top = [[[piece(int(t)) for t in lens.token_ids[l, c]] for c in range(len(lens.positions))]
           for l in range(lens.token_ids.shape[0])]  # fmt: skip
    labels = [item.tokens[p] for p in lens.positions]
    return logit_lens_table(top, lens.probs, labels, positions=list(lens.positions))


def build(engine, store: InspectionStore) -> LensTab:
    status = gr.HTML(status_html(NOTHING_YET), elem_id="lens-status")
    start = gr.Slider(0, 1, value=0, step=1, label=f"First position of the {LENS_WINDOW}-token window",
                      buttons=[], elem_id="lens-start")  # fmt: skip
    table = gr.Plot(message_figure(NOTHING_YET), show_label=False, elem_id="lens-table")

    def piece(token_id: int) -> str:
        return engine.tokenizer.id_to_piece(token_id, visible_whitespace=True)

    def outputs_for(item: Inspection):
        lens = item.result.lens
        n = item.result.length
        msg = (
            f"Prompt of {n} tokens (from the Attention tab) · positions"
            f" {lens.positions[0]}–{lens.positions[-1]}"
            " · colour = probability of the top guess · last row = the model's real prediction"
        )
        return (
            status_html(msg),
            gr.update(maximum=max(1, n - LENS_WINDOW), value=lens.positions[0], interactive=n > LENS_WINDOW),
            lens_figure(item, piece),
        )

    def refresh(request: gr.Request):
        item = store.get(session_of(request))
        if item is None or item.result.lens is None:
            return status_html(NOTHING_YET), gr.update(), gr.update()
        return outputs_for(item)

    async def move(start_v: float, request: gr.Request):
        session = session_of(request)
        item = store.get(session)
        if item is None:
            return status_html(NOTHING_YET), gr.update(), gr.update()
        positions = lens_window(item.result.length, int(start_v))
        if item.result.lens is None or item.result.lens.positions != positions:
            try:
                lens = await asyncio.to_thread(compute_lens, engine, item, positions)
            except (ValueError, RuntimeError) as e:
                log.exception("logit lens failed")
                return status_html(str(e), error=True), gr.update(), gr.update()
            item = store.replace_lens(session, lens) or item
        return outputs_for(item)

    outputs = [status, start, table]
    start.input(move, [start], outputs, api_name="lens_window", show_progress="minimal", trigger_mode="always_last")
    return LensTab(refresh=refresh, inputs=[], outputs=outputs)

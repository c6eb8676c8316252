"""Attention tab: type a prompt, press Inspect, see every head's attention on the real model.

Rules it keeps:
- Inspect tokenizes and runs one traced forward on the engine thread (engine.inspect); the result is kept
  per browser session in the shared InspectionStore (app/tabs/inspection.py), never in gr.State. The RoPE
  and Logit-lens tabs read the same inspection (main.py chains their refresh after Inspect).
- Figures come from viz/ (pure functions); the handlers only pick the slice to draw.
- The layers x heads overview is an HTML grid (gr.Plot has no click events in Gradio 6): clicking a cell
  shows that head, like the Layer / Head sliders do.
- Empty or too-long prompts give a notice line and a toast, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tiny_llm_playground.app.tabs.inspection import (
    NOTHING_YET,
    InspectionStore,
    run_inspection,
    session_of,
    status_html,
)
from tiny_llm_playground.viz.attention import attention_heatmap, attention_overview_html, gqa_groups
from tiny_llm_playground.viz.layout import message_figure

log = logging.getLogger(__name__)

EXAMPLE = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "print(fibonacci(10))"
)
METRICS = {"entropy (focus)": "entropy", "mean distance": "distance"}
OVERVIEW_EMPTY = '<div class="hint">The layers × heads overview appears here after Inspect.</div>'
# Event delegation on the component's root survives every redraw of the grid inside it.
OVERVIEW_CLICK_JS = """
element.addEventListener('click', (e) => {
  const c = e.target.closest('[data-l]');
  if (c) trigger('click', {layer: parseInt(c.dataset.l), head: parseInt(c.dataset.h)});
});
"""


@dataclass(frozen=True)
class AttentionTab:
    prompt: gr.Textbox
    inspect_event: Any  # the Inspect event: main.py chains the other tabs' refresh on it with .then()


def figures(item, layer: int, head: int, metric: str):
    """(heatmap figure, overview HTML) for the selected head of an inspection."""
    res = item.result
    layer = min(max(int(layer), 0), res.n_layers - 1)
    head = min(max(int(head), 0), res.n_heads - 1)
    att = res.layer(layer)
    heat = attention_heatmap(att.probs[head], list(item.tokens), layer, head)
    overview = attention_overview_html(res, METRICS.get(metric, "entropy"), selected=(layer, head))
    return heat, overview


def build(engine, store: InspectionStore) -> AttentionTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=560):
            heatmap = gr.Plot(message_figure(NOTHING_YET), show_label=False, elem_id="attn-heatmap")
        with gr.Column(scale=2, min_width=420):
            prompt = gr.Textbox(
                value=EXAMPLE, label="Prompt to inspect (plain text, up to 512 tokens)", lines=3,
                max_lines=8, elem_id="inspect-prompt",
            )  # fmt: skip
            inspect = gr.Button("Inspect", variant="primary", elem_id="inspect-run")
            status = gr.HTML(status_html(NOTHING_YET), elem_id="inspect-status")
            with gr.Row():
                layer = gr.Slider(0, 23, value=0, step=1, label="Layer", buttons=[], elem_id="attn-layer")
                head = gr.Slider(0, 13, value=0, step=1, label="Head", buttons=[], elem_id="attn-head")
            metric = gr.Radio(list(METRICS), value="entropy (focus)", label="Overview colour", elem_id="attn-metric")
            overview = gr.HTML(OVERVIEW_EMPTY, elem_id="attn-overview", js_on_load=OVERVIEW_CLICK_JS, padding=False)
            gr.HTML('<div class="hint">Outlined cell = the head on the left. Click a cell, or use the sliders.</div>')
    gqa = gr.Plot(message_figure("grouped-query attention"), show_label=False, elem_id="attn-gqa")

    async def do_inspect(text: str, layer_v: float, head_v: float, metric_v: str, request: gr.Request):
        try:
            item = await asyncio.to_thread(run_inspection, engine, text)
        except (ValueError, TimeoutError, RuntimeError) as e:
            gr.Warning(str(e))
            return (status_html(str(e), error=True), *[gr.update()] * 5)
        store.put(session_of(request), item)
        res = item.result
        lv, hv = min(int(layer_v), res.n_layers - 1), min(int(head_v), res.n_heads - 1)
        heat, ov = await asyncio.to_thread(figures, item, lv, hv, metric_v)
        msg = (
            f"Inspected {res.length} tokens · {res.n_layers} layers × {res.n_heads} heads"
            f" ({res.n_kv_heads} K/V heads) · also on the RoPE and Logit lens tabs"
        )
        return (
            status_html(msg),
            gr.update(maximum=res.n_layers - 1, value=lv),
            gr.update(maximum=res.n_heads - 1, value=hv),
            heat,
            ov,
            gqa_groups(res.n_heads, res.n_kv_heads),
        )

    def render(layer_v: float, head_v: float, metric_v: str, request: gr.Request):
        item = store.get(session_of(request))
        if item is None:
            return gr.update(), gr.update()
        return figures(item, layer_v, head_v, metric_v)

    def pick_head(evt: gr.EventData, metric_v: str, request: gr.Request):
        item = store.get(session_of(request))
        try:
            lv, hv = int(evt.layer), int(evt.head)
        except (AttributeError, TypeError, ValueError):
            item = None
        if item is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        heat, ov = figures(item, lv, hv, metric_v)
        return gr.update(value=lv), gr.update(value=hv), heat, ov

    inspect_event = gr.on(
        triggers=[inspect.click],
        fn=do_inspect,
        inputs=[prompt, layer, head, metric],
        outputs=[status, layer, head, heatmap, overview, gqa],
        api_name="inspect",
    )
    gr.on(
        triggers=[layer.input, head.input, metric.change],
        fn=render,
        inputs=[layer, head, metric],
        outputs=[heatmap, overview],
        api_name="attention_view",
        show_progress="minimal",
        trigger_mode="always_last",  # dragging a slider redraws for the last value, not every step
    )
    overview.click(
        pick_head, [metric], [layer, head, heatmap, overview], api_name="attention_pick_head",
        show_progress="hidden", trigger_mode="always_last",
    )  # fmt: skip
    return AttentionTab(prompt=prompt, inspect_event=inspect_event)

"""RoPE tab: how rotary position embedding turns the real queries of the inspected prompt.

Reads the session's inspection (made on the Attention tab); nothing here touches the engine. Layer, head
and token pick one query vector; the four figures come from viz/rope.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from tiny_llm_playground.app.tabs.inspection import NOTHING_YET, InspectionStore, session_of, status_html
from tiny_llm_playground.viz.layout import message_figure
from tiny_llm_playground.viz.rope import rope_angle_heatmap, rope_pairs, rope_relative_scores, rope_spectrum


@dataclass(frozen=True)
class RopeTab:
    refresh: Any  # (layer, head, position, request) -> outputs; main.py runs it after Inspect
    inputs: list
    outputs: list


def figures(item, layer: int, head: int, position: int, context: int | None = None):
    res = item.result
    layer = min(max(int(layer), 0), res.n_layers - 1)
    head = min(max(int(head), 0), res.n_heads - 1)
    pos = min(max(int(position), 0), res.length - 1)
    att = res.layer(layer)
    kv = att.kv_head(head)
    pairs = rope_pairs(att.q_pre[head, pos], att.q_post[head, pos], pos)
    rel = rope_relative_scores(att.q_pre[head, pos], att.k_pre[kv, pos], res.rope_base, max_distance=512)
    spectrum = rope_spectrum(res.head_dim, res.rope_base, context=context)
    angles = rope_angle_heatmap(list(range(res.length)), res.head_dim, res.rope_base)
    return pairs, rel, spectrum, angles


def build(engine, store: InspectionStore) -> RopeTab:
    status = gr.HTML(status_html(NOTHING_YET), elem_id="rope-status")
    with gr.Row():
        layer = gr.Slider(0, 23, value=0, step=1, label="Layer", buttons=[], elem_id="rope-layer")
        head = gr.Slider(0, 13, value=0, step=1, label="Head", buttons=[], elem_id="rope-head")
        position = gr.Slider(0, 1, value=0, step=1, label="Token position", buttons=[], elem_id="rope-pos")
    with gr.Row(equal_height=False):
        pairs = gr.Plot(message_figure(NOTHING_YET), show_label=False, elem_id="rope-pairs")
        rel = gr.Plot(message_figure("relative scores"), show_label=False, elem_id="rope-relative")
    with gr.Row(equal_height=False):
        spectrum = gr.Plot(message_figure("spectrum"), show_label=False, elem_id="rope-spectrum")
        angles = gr.Plot(message_figure("angles"), show_label=False, elem_id="rope-angles")

    def context() -> int | None:
        loaded = getattr(engine, "loaded", None)
        return getattr(getattr(getattr(loaded, "model", None), "args", None), "max_position_embeddings", None)

    def render(item, layer_v: float, head_v: float, pos: int):
        res = item.result
        pos = min(max(int(pos), 0), res.length - 1)
        figs = figures(item, layer_v, head_v, pos, context())
        msg = (
            f"Prompt of {res.length} tokens (from the Attention tab) · layer {int(layer_v)} · head"
            f" {int(head_v)} · token {pos}: “{item.tokens[pos]}” (q and k of this token)"
        )
        return (
            status_html(msg),
            gr.update(maximum=res.n_layers - 1),
            gr.update(maximum=res.n_heads - 1),
            gr.update(maximum=max(1, res.length - 1), value=pos),
            *figs,
        )

    def view(layer_v: float, head_v: float, pos_v: float, request: gr.Request):
        item = store.get(session_of(request))
        if item is None:
            return (status_html(NOTHING_YET), *[gr.update()] * 7)
        return render(item, layer_v, head_v, pos_v)

    def refresh(layer_v: float, head_v: float, pos_v: float, request: gr.Request):
        """After a new Inspect: show the last token of the new prompt."""
        item = store.get(session_of(request))
        if item is None:
            return (status_html(NOTHING_YET), *[gr.update()] * 7)
        return render(item, layer_v, head_v, item.result.length - 1)

    inputs = [layer, head, position]
    outputs = [status, layer, head, position, pairs, rel, spectrum, angles]
    gr.on(
        triggers=[layer.input, head.input, position.input],
        fn=view,
        inputs=inputs,
        outputs=outputs,
        api_name="rope_view",
        show_progress="minimal",
        trigger_mode="always_last",  # dragging a slider redraws for the last value, not every step
    )
    return RopeTab(refresh=refresh, inputs=inputs, outputs=outputs)

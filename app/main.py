"""The playground page: a header naming the model, then one tab per module in `app/tabs/`.

`build_app(engine)` only builds and wires components; starting the engine and the server is
`app/__main__.py`'s job, so tests can build the page around any engine-like object.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.tabs import attention, chat, lens, rope  # noqa: E402
from app.tabs.inspection import InspectionStore  # noqa: E402
from app.theme import CSS, THEME  # noqa: E402

TITLE = "Tiny LLM Playground"
TAGLINE = "a from-scratch inference engine on MLX, running real weights — watch it generate, token by token"


def model_label(model: str) -> str:
    """Human name of a manifest model (e.g. Qwen2.5-Coder-0.5B-Instruct), or a model folder's name."""
    from engine.loader.manifest import UnknownModelError, get_spec

    try:
        return get_spec(model).display_name
    except UnknownModelError:
        return Path(model).name or model


def header_html(model: str) -> str:
    return (
        f'<div id="app-header"><h1>{TITLE}</h1>'
        f'<span class="model">{html.escape(model_label(model))}</span>'
        f'<span class="tagline">{html.escape(TAGLINE)}</span></div>'
    )


def build_app(engine) -> gr.Blocks:
    """The whole page around `engine` (an engine.Engine). Tabs are built first, then app-level events."""
    inspections = InspectionStore()  # the inspected prompt the Attention, RoPE and Lens tabs share
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.HTML(header_html(engine.model_name))
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_tab = chat.build(engine)
            with gr.Tab("Attention", id="attention"):
                attention_tab = attention.build(engine, inspections)
            with gr.Tab("RoPE", id="rope"):
                rope_tab = rope.build(engine, inspections)
            with gr.Tab("Logit lens", id="lens"):
                lens_tab = lens.build(engine, inspections)
        demo.unload(chat_tab.on_unload)  # closing the browser tab cancels that session's reply
        # A new inspection redraws the RoPE and Lens tabs too.
        attention_tab.inspect_event.then(
            rope_tab.refresh, rope_tab.inputs, rope_tab.outputs, api_name="rope_after_inspect",
            show_progress="hidden",
        ).then(
            lens_tab.refresh, lens_tab.inputs, lens_tab.outputs, api_name="lens_after_inspect",
            show_progress="hidden",
        )  # fmt: skip
    return demo


def launch(demo: gr.Blocks, *, host: str, port: int, **kwargs) -> None:
    """Serve `demo` with the playground's theme. The queue admits many events at once so requests reach
    the engine (which batches / queues them itself) instead of waiting in Gradio's queue."""
    demo.queue(default_concurrency_limit=64)
    demo.launch(
        server_name=host,
        server_port=port,
        theme=THEME,
        css=CSS,
        show_error=False,
        footer_links=["api", "settings"],
        **kwargs,
    )

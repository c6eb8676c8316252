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

from tiny_llm_playground.app.tabs import attention, batching, chat, course, lens, rope  # noqa: E402
from tiny_llm_playground.app.tabs.inspection import InspectionStore  # noqa: E402
from tiny_llm_playground.app.theme import CSS, THEME  # noqa: E402

TITLE = "Tiny LLM Playground"
TAGLINE = "a from-scratch inference engine on MLX, running real weights — watch it generate, token by token"


def model_label(model: str) -> str:
    """Human name of a manifest model (e.g. Qwen2.5-Coder-0.5B-Instruct), or a model folder's name."""
    from tiny_llm_playground.engine.loader.manifest import UnknownModelError, get_spec

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
    labels = batching.RequestLabels()  # request id -> who sent it ("chat", "demo"), for the batching view
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.HTML(header_html(engine.model_name))
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat") as chat_item:
                chat_tab = chat.build(engine, labels)
            with gr.Tab("Attention", id="attention") as attention_item:
                attention_tab = attention.build(engine, inspections)
            with gr.Tab("RoPE", id="rope") as rope_item:
                rope_tab = rope.build(engine, inspections)
            with gr.Tab("Logit lens", id="lens") as lens_item:
                lens_tab = lens.build(engine, inspections)
            with gr.Tab("KV cache & batching", id="batching") as batching_item:
                batching_tab = batching.build(engine, labels)
            with gr.Tab("Course map", id="course") as course_item:
                course.build(tabs)
        demo.unload(chat_tab.on_unload)  # closing the browser tab cancels that session's reply
        # The batching view polls only while its tab is open (and redraws at once when it opens).
        batching_item.select(
            lambda: (gr.Timer(active=True), *batching_tab.refresh()), None,
            [batching_tab.timer, *batching_tab.outputs], api_name="batching_open", show_progress="hidden",
        )  # fmt: skip
        for i, item in enumerate((chat_item, attention_item, rope_item, lens_item, course_item)):
            item.select(lambda: gr.Timer(active=False), None, batching_tab.timer, api_name=f"batching_close_{i}",
                        show_progress="hidden")  # fmt: skip
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
        allowed_paths=[str(course.ROOT / p) for p in course.course_files()],  # the course map's links only
        **kwargs,
    )

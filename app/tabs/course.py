"""Course map tab: each day of the tiny-llm course -> the engine module, its tests, the tab that shows it.

Data-driven: COURSE is a list of small frozen dataclasses; the table is generated from it, and a test
checks that every file it names exists. Days not built yet say so (no placeholder pages). File links
open the source through Gradio's file route (main.py allows exactly the files named here); tab buttons
switch the page's gr.Tabs to that tab.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

ROOT = Path(__file__).resolve().parents[2]
TAB_NAMES = {
    "chat": "Chat",
    "attention": "Attention",
    "rope": "RoPE",
    "lens": "Logit lens",
    "batching": "KV cache & batching",
}


@dataclass(frozen=True)
class CourseDay:
    week: int
    day: str
    topic: str
    modules: tuple[str, ...] = ()  # repo-relative paths; empty = not built yet
    tests: tuple[str, ...] = ()
    tab: str | None = None  # a key of TAB_NAMES, or None when no tab shows it
    note: str = ""

    @property
    def built(self) -> bool:
        return bool(self.modules)


COURSE: tuple[CourseDay, ...] = (
    CourseDay(1, "1", "Attention (scaled dot-product, causal mask)", ("engine/layers/attention.py",),
              ("tests/engine/test_layers.py",), "attention"),
    CourseDay(1, "2", "RoPE (rotary position embedding)", ("engine/layers/rope.py",),
              ("tests/engine/test_layers.py",), "rope"),
    CourseDay(1, "3", "Grouped-query attention", ("engine/layers/attention.py",), ("tests/engine/test_layers.py",),
              "attention", "GQA figure at the bottom of the tab"),
    CourseDay(1, "4", "RMSNorm and SwiGLU MLP", ("engine/layers/norm.py", "engine/layers/mlp.py"),
              ("tests/engine/test_layers.py",), None, "no dedicated view"),
    CourseDay(1, "5", "Qwen2 model, loading real weights", ("engine/models/qwen2.py", "engine/loader/load.py"),
              ("tests/engine/models/test_qwen2.py", "tests/engine/models/test_qwen2_real.py"), "lens",
              "the logit lens reads its layers"),
    CourseDay(1, "6–7", "Generation and sampling", ("engine/generate.py", "engine/sampling/filters.py",
              "engine/sampling/sampler.py"), ("tests/engine/sampling/test_sampling.py",), "chat",
              "click a token to see its distribution"),
    CourseDay(2, "1", "KV cache", ("engine/cache/base.py", "engine/cache/dense.py"),
              ("tests/engine/cache/test_dense.py", "tests/engine/models/test_qwen2.py"), "batching"),
    CourseDay(2, "2–3", "Quantized matmul (+ fast CPU kernels)", ("kernels/quant.py", "kernels/cpu/quant.cpp",
              "kernels/cpu/linear.cpp"), ("tests/kernels/test_quant.py", "tests/kernels/test_linear.py"), None,
              "no view; python -m kernels.bench.quant"),
    CourseDay(2, "4–5", "Flash attention (+ fused RMSNorm, RoPE, SwiGLU)", ("kernels/ops.py", "kernels/ref.py",
              "kernels/cpu/attention.cpp"), ("tests/kernels/test_attention.py", "tests/kernels/test_rope.py"),
              "attention", "the tab shows the same probabilities from the readable path"),
    CourseDay(2, "6–7", "Continuous batching, chunked prefill",
              ("engine/serve/scheduler.py", "engine/serve/engine_core.py", "engine/serve/engine.py"),
              ("tests/engine/serve/test_scheduler.py", "tests/engine/serve/test_batching.py",
               "tests/engine/serve/test_engine.py"), "batching", "try the class demo"),
    CourseDay(3, "1–2", "Paged attention, prefix cache, preemption",
              ("engine/cache/block_manager.py", "engine/cache/paged.py", "engine/cache/allocator.py",
               "kernels/ops.py", "kernels/cpu/paged.cpp"),
              ("tests/engine/cache/test_block_manager.py", "tests/engine/serve/test_paged.py",
               "tests/kernels/test_paged.py"), "batching", "try the shared-prefix demo"),
    CourseDay(3, "3", "Mixture of experts", note="not built yet"),
    CourseDay(3, "4", "Speculative decoding", note="not built yet"),
    CourseDay(3, "5", "RAG pipeline", note="not built yet"),
    CourseDay(3, "6", "AI agent, tool calling", note="not built yet"),
    CourseDay(3, "7", "Long context", note="not built yet"),
)  # fmt: skip


def course_files(course: tuple[CourseDay, ...] = COURSE) -> list[str]:
    """Every repo-relative file the map links to."""
    return sorted({p for d in course for p in (*d.modules, *d.tests)})


def file_link(path: str) -> str:
    href = f"gradio_api/file={html.escape(str(ROOT / path))}"
    return f'<a href="{href}" target="_blank"><code>{html.escape(path)}</code></a>'


def course_table_html(course: tuple[CourseDay, ...] = COURSE) -> str:
    """The course map as an HTML table (one row per course day)."""
    rows = []
    for d in course:
        status = '<span class="built">built</span>' if d.built else '<span class="todo">not yet</span>'
        mods = "<br>".join(file_link(p) for p in d.modules) or "—"
        tests = "<br>".join(file_link(p) for p in d.tests) or "—"
        tab = f'<span class="tab-ref">{html.escape(TAB_NAMES[d.tab])}</span>' if d.tab else "—"
        note = f'<div class="course-note">{html.escape(d.note)}</div>' if d.note else ""
        rows.append(
            f'<tr class="{"row-built" if d.built else "row-todo"}"><td>W{d.week} · D{html.escape(d.day)}</td>'
            f"<td>{html.escape(d.topic)}{note}</td><td>{status}</td><td>{mods}</td><td>{tests}</td><td>{tab}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("week · day", "topic", "status", "engine", "tests", "tab"))
    return f'<table class="course-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def build(tabs: gr.Tabs) -> None:
    """The map, then one button per tab that some day points to (switches `tabs`)."""
    built = sum(d.built for d in COURSE)
    gr.HTML(
        f'<div class="hint">The <a href="https://skyzh.github.io/tiny-llm/" target="_blank">tiny-llm</a> course, '
        f"day by day: {built} of {len(COURSE)} parts built in this engine. File links open the source.</div>"
    )
    with gr.Row():
        for key in dict.fromkeys(d.tab for d in COURSE if d.tab):
            btn = gr.Button(f"Open {TAB_NAMES[key]} →", size="md", elem_id=f"course-open-{key}")
            btn.click(lambda k=key: gr.Tabs(selected=k), None, tabs, api_name=f"course_open_{key}",
                      show_progress="hidden")  # fmt: skip
    gr.HTML(course_table_html(), elem_id="course-map")

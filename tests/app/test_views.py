"""The Attention, RoPE and Logit-lens tabs' logic on a tiny random model (no browser)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tiny_llm_playground.app.main import build_app  # noqa: E402
from tiny_llm_playground.app.tabs import attention, lens, rope  # noqa: E402
from tiny_llm_playground.app.tabs.inspection import (  # noqa: E402
    LENS_WINDOW,
    InspectionStore,
    compute_lens,
    lens_window,
    run_inspection,
)
from tiny_llm_playground.engine.inspect import MAX_INSPECT_TOKENS  # noqa: E402


def test_lens_window_stays_inside_the_prompt():
    assert lens_window(5) == (0, 1, 2, 3, 4)
    assert lens_window(40) == tuple(range(40 - LENS_WINDOW, 40))
    assert lens_window(40, 3) == tuple(range(3, 3 + LENS_WINDOW))
    assert lens_window(40, 39) == tuple(range(40 - LENS_WINDOW, 40))


def test_inspection_gives_every_tabs_figures(engine):
    item = run_inspection(engine, "the cat sat on the mat")
    res = item.result
    assert len(item.tokens) == res.length == 20  # byte-level tiny vocab: 22 bytes, " the" merges to "Ġth"+"e"
    assert res.lens is not None and res.lens.positions == lens_window(res.length)
    heat, overview = attention.figures(item, 1, 3, "entropy")
    assert heat.data[0].z.shape == (res.length, res.length)
    assert overview.count("<td ") == res.n_layers * res.n_heads and 'data-l="1" data-h="3" class="sel"' in overview
    pairs, rel, spectrum, angles = rope.figures(item, 0, 2, 5, context=128)
    assert len(spectrum.data[0].y) == res.head_dim // 2
    fig = lens.lens_figure(item, lambda i: engine.tokenizer.id_to_piece(i, visible_whitespace=True))
    assert fig.data[0].z.shape == (res.n_layers, len(res.lens.positions))
    moved = compute_lens(engine, item, (0, 1, 2))
    assert moved.token_ids.shape == (res.n_layers, 3, 5)


@pytest.mark.parametrize("text, match", [("   ", "empty"), ("x" * (MAX_INSPECT_TOKENS + 1), "limited")])
def test_bad_prompts_raise_readable_errors(engine, text, match):
    with pytest.raises(ValueError, match=match):
        run_inspection(engine, text)


def test_store_keeps_the_latest_sessions():
    store = InspectionStore(capacity=2)
    for s in "abc":
        store.put(s, s)
    assert store.get("a") is None and store.get("c") == "c"


def test_page_builds_with_the_new_tabs_and_named_events(engine):
    demo = build_app(engine)
    names = {d.api_name for d in demo.fns.values()}
    assert {"inspect", "attention_view", "rope_view", "lens_window", "rope_after_inspect"} <= names


def test_clicking_an_overview_cell_shows_that_head(engine):
    from types import SimpleNamespace

    import gradio as gr

    demo = build_app(engine)
    fns = {d.api_name: d.fn for d in demo.fns.values()}
    request = SimpleNamespace(session_hash="pick")
    item = run_inspection(engine, "the cat sat on the mat")
    InspectionStore.put(_store_of(fns["attention_pick_head"]), "pick", item)
    layer, head, heat, overview = fns["attention_pick_head"](
        gr.EventData(None, {"layer": 1, "head": 2}), "entropy (focus)", request
    )
    assert layer["value"] == 1 and head["value"] == 2
    assert "layer 1 · head 2" in heat.layout.title.text and 'data-l="1" data-h="2" class="sel"' in overview
    nothing = fns["attention_pick_head"](gr.EventData(None, {}), "entropy (focus)", request)
    assert all(isinstance(x, dict) and x.get("__type__") == "update" for x in nothing)


def _store_of(fn) -> InspectionStore:
    """The InspectionStore a handler closes over (build_app makes one per page)."""
    return next(c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, InspectionStore))

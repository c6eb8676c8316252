"""The Chat token records, the batching tab's demo and views, and the course map, without a browser."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tiny_llm_playground.app.main import build_app  # noqa: E402
from tiny_llm_playground.app.tabs import batching, course  # noqa: E402
from tiny_llm_playground.app.tabs.chat import StepRecord, StepRecords, least_likely, step_figure, tokens_view  # noqa: E402
from tiny_llm_playground.engine import TokenEvent  # noqa: E402
from tiny_llm_playground.engine.sampling import Distribution, SampleRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _event(i: int, token: int, prob: float) -> TokenEvent:
    lp = np.log([0.5, 0.3, 0.1, 0.05])
    rec = SampleRecord(
        token, prob, float(lp[0]), (10, 11, 12, 13), tuple(lp), Distribution(np.arange(4), np.ones(4) / 4)
    )
    return TokenEvent(index=i, token=token, text=f"t{i}", sample=rec)


def test_step_records_are_slim_bounded_and_redraw_under_new_sliders():
    store = StepRecords(max_sessions=2)
    recs = store.start("a")
    recs += [StepRecord.of(_event(0, 10, 0.5)), StepRecord.of(_event(1, 12, 0.1))]
    assert not hasattr(recs[0], "kept") and store.get("a")[1].top_ids == (10, 11, 12, 13)
    store.start("b"), store.start("c")
    assert len(store) == 2 and store.get("a") == []  # least recently used session dropped
    assert least_likely(recs) == 1
    fig = step_figure(recs, 1, 1.0, 2, 1.0, 0.0)
    raw, final = fig.data
    np.testing.assert_allclose(final.y, [0.625, 0.375, 0, 0])  # top-k 2 recomputed from the record
    assert final.marker.color[2] == "#D55E00", "the drawn token (id 12) is marked"
    greedy = step_figure(recs, 0, 0.0, 0, 1.0, 0.0).data[1]
    np.testing.assert_allclose(greedy.y, [1, 0, 0, 0])
    assert 'data-i="1"' in tokens_view(recs, 1)
    assert step_figure([], 0, 1, 0, 1, 0).layout.annotations  # a hint, not an error


def test_course_map_names_existing_files_and_marks_unbuilt_days():
    for path in course.course_files():
        assert (ROOT / path).is_file(), path
    html = course.course_table_html()
    assert html.count("<tr") == len(course.COURSE) + 1
    assert "Speculative decoding" in html and "not yet" in html and "KV cache &amp; batching" in html
    assert all(d.tab in (None, *course.TAB_NAMES) for d in course.COURSE)


def test_class_demo_requests_show_up_in_snapshot_views_and_cancel(engine):
    labels: dict[int, str] = {}
    demo = batching.DemoRequests(engine, labels)
    ids = demo.start(4, 200)
    assert len(ids) == 4 and all(labels[i] == "demo" for i in ids)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not {t.id for t in engine.snapshot().timings} >= set(ids):
        time.sleep(0.05)
    snap = engine.snapshot()
    summary, cache_fig, table, timeline, pool_kpis, grid, tables = batching.views(snap, labels)
    assert {t.id for t in snap.timings} >= set(ids)
    assert all(f"#{i} demo" in table for i in ids)
    assert "blocks in use" in pool_kpis and "KV block pool" in grid.layout.title.text
    assert demo.cancel() <= 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and demo.live:
        time.sleep(0.05)
    assert demo.live == 0
    done = {t.id: t for t in engine.snapshot().timings}
    assert all(done[i].status in ("cancelled", "length", "eos", "stop") for i in ids)


def test_page_has_all_tabs_and_every_event_an_api_name(engine):
    demo = build_app(engine)
    names = {f.api_name for f in demo.fns.values()}
    assert {
        "chat",
        "chat_token_click",
        "chat_step_resample",
        "batching_poll",
        "demo_start",
        "demo_shared",
        "demo_cancel",
    } <= names
    assert all(f.api_name for f in demo.fns.values())
    poll = next(f.fn for f in demo.fns.values() if f.api_name == "batching_poll")
    out = poll(None)
    assert len(out) == 8 and out[-1] is not None  # 7 views and the key
    assert poll(out[-1])[0].__class__.__name__ != "str", "an unchanged snapshot is skipped"


def test_request_labels_keep_only_the_newest_ids():
    labels = batching.RequestLabels(max_size=3)
    for rid in range(1, 6):
        labels[rid] = "demo" if rid % 2 else "chat"
    assert len(labels) == 3 and list(labels) == [3, 4, 5]
    assert labels.get(1) is None and labels[4] == "chat" and dict(labels) == {3: "demo", 4: "chat", 5: "demo"}


class _Snapshots:
    """An engine stand-in whose snapshot changes when the test says so."""

    def __init__(self, engine) -> None:
        self.snap = engine.snapshot()

    def snapshot(self):
        return self.snap


def test_shared_views_are_built_once_for_many_sessions_and_rebuilt_only_when_the_snapshot_changes(engine):
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    fake = _Snapshots(engine)
    clock = [100.0]  # virtual seconds, moved on by hand
    shared = batching.SharedViews(fake, batching.RequestLabels(), serialize=lambda fig: ("serialized", fig),
                                  min_age_s=0.2, clock=lambda: clock[0])  # fmt: skip
    with ThreadPoolExecutor(8) as pool:  # 8 sessions polling at once
        results = list(pool.map(lambda _: shared.get(), range(32)))
    assert shared.builds == 1 and len({id(views) for _, views in results}) == 1
    key, (summary, cache_plot, table, timeline, pool_kpis, grid, tables) = results[0]
    assert cache_plot[0] == "serialized" and timeline[0] == "serialized" and "kpis" in summary
    fake.snap = dataclasses.replace(fake.snap, served=fake.snap.served + 1)
    clock[0] += 0.1
    assert shared.get()[0] == key and shared.builds == 1, "younger than min_age_s: the same views"
    clock[0] += 0.15
    assert shared.get()[0] != key and shared.builds == 2, "older and the snapshot changed: rebuilt"
    clock[0] += 0.25
    shared.get()
    assert shared.builds == 2, "older but the snapshot is the same: not rebuilt"
    fake.snap = dataclasses.replace(fake.snap, served=fake.snap.served + 1)
    shared.get(fresh=True)
    assert shared.builds == 3, "fresh (a tab opening) ignores the age"


def test_the_shared_prefix_demo_sends_the_first_alone_then_the_others_which_hit_its_prompt(
    engine, monkeypatch, tmp_path
):
    """The class notes are the system prompt of every request: the first computes them, the others (sent
    when its first token is out) find them in the prefix cache. (Shorter notes and questions here: the tiny
    model's context is 128 byte-level tokens.)"""
    notes = tmp_path / "notes.md"
    notes.write_text("Notes: a KV cache keeps keys and values.")
    monkeypatch.setattr(batching, "CLASS_NOTES", notes)
    monkeypatch.setattr(batching, "DEMO_PROMPTS", ("Why?", "How?", "Who?"))
    labels = batching.RequestLabels()
    demo = batching.DemoRequests(engine, labels)
    first = demo.start(3, 4, shared_prefix=True)
    assert len(first) == 1 and labels[first[0]] == "class"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (demo.live or len([i for i in labels if labels[i] == "class"]) < 3):
        time.sleep(0.05)
    ids = sorted(i for i in labels if labels[i] == "class")
    assert len(ids) == 3 and demo.live == 0
    snap = engine.snapshot()
    assert snap.blocks is not None and snap.blocks.prefix_hit_tokens > 0, "the others did not hit the system prompt"

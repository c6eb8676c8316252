"""viz/batching.py and viz/tokens.py: the figures and HTML hold exactly the values they are given."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from tiny_llm_playground.engine.events import RequestState, RequestTiming, StepEvent
from tiny_llm_playground.viz.batching import (
    cache_occupancy,
    format_bytes,
    request_label,
    requests_table_html,
    step_timeline,
    summary_html,
)
from tiny_llm_playground.viz.layout import BLUE, ORANGE
from tiny_llm_playground.viz.tokens import prob_colour, token_html


def _steps():
    return [
        StepEvent(0, "prefill", (), ((1, 40),), (1,), (), 1, 0.1),
        StepEvent(1, "mixed", (1,), ((2, 256), (3, 12)), (2, 3), (), 2, 0.2),
        StepEvent(2, "decode", (1, 2, 3), (), (), (3,), 3, 0.05),
    ]


def test_cache_occupancy_bars_hold_tokens_and_status_colours():
    per_token = 24 * 2 * 2 * 64 * 4  # layers x (K, V) x kv heads x head dim x float32: Qwen2.5-0.5B
    reqs = [
        RequestState(1, "decoding", 0, 40, 5, 45, 45 * per_token, 256 * per_token),
        RequestState(2, "prefilling", 1, 300, 0, 256, 256 * per_token, 256 * per_token),
    ]
    fig = cache_occupancy(reqs, total_tokens=1000, free_tokens=400, labels={2: "demo"})
    (bar,) = fig.data
    assert list(bar.x) == [45, 256] and list(bar.y) == ["#1", "#2 demo"]
    assert list(bar.marker.color) == [BLUE, ORANGE]
    assert "45 tok · 1.1 MiB" in bar.text[0] and "256 tok · 6.0 MiB" in bar.text[1] and "slot 1" in bar.text[1]
    assert [c[1] for c in bar.customdata] == [1_105_920, 6_291_456] and bar.customdata[0][2] == "6.0 MiB"
    title = fig.layout.title.text
    assert "301 tokens" in title and "7.1 MiB of K/V" in title and "600 of 1,000 tokens reserved" in title
    assert "buffers 12.0 MiB" in title
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"


def test_cache_occupancy_without_requests_is_a_message():
    fig = cache_occupancy([], 1000, 1000)
    assert fig.layout.annotations[0].text.startswith("No request")


def test_step_timeline_marks_decode_rows_and_prefill_chunks_per_step():
    fig = step_timeline(_steps(), labels={3: "chat"})
    decode_bars, prefill_bars, decode, prefill = fig.data
    assert list(decode_bars.y) == [0, 1, 3] and list(prefill_bars.y) == [1, 2, 0]
    assert list(zip(decode.x, decode.y, strict=True)) == [(1, "#1"), (2, "#1"), (2, "#2"), (2, "#3 chat")]
    assert list(zip(prefill.x, prefill.y, prefill.customdata, strict=True)) == [
        (0, "#1", 40),
        (1, "#2", 256),
        (1, "#3 chat", 12),
    ]
    assert decode.marker.symbol == "circle" and prefill.marker.symbol == "square"
    assert "3 requests" in fig.layout.title.text and "2.3 requests per step" in fig.layout.title.text


def test_requests_table_and_summary_show_timings():
    t = [
        RequestTiming(7, "decoding", 41, 12, 0.5, 1.25, 6.54, 3.0),
        RequestTiming(5, "length", 30, 64, None, None, None, 9),
    ]
    out = requests_table_html(t, {7: "demo"})
    assert "#7 demo" in out and "1.25 s" in out and "6.5 tok/s" in out and "—" in out
    assert out.count("<tr") == 3
    snap = NS(running=(1, 2), waiting=(3,), free_slots=14, total_slots=16, served=9, tokens_per_s=12.34, ready=True)
    s = summary_html(snap)
    assert "14 / 16" in s and "12.3" in s and ">9<" in s
    assert request_label(4) == "#4"


def test_token_html_colours_by_probability_and_marks_selection():
    out = token_html(["Hel", "lo", "\n"], [0.0, 1.0, None], selected=1)
    assert out.count("data-i=") == 3 and 'class="tok sel" data-i="1"' in out
    assert prob_colour(0.0) in out and prob_colour(1.0) in out and "#d0d0d0" in out
    assert "↵<br>" in out and "probability of the drawn token" in out
    assert prob_colour(2.0) == prob_colour(1.0)
    with pytest.raises(ValueError):
        token_html(["a"], [])

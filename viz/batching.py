"""Pictures of continuous batching: KV-cache occupancy per request, the step timeline, per-request latency.

Pure functions of the engine's published data (engine.events: RequestState, StepEvent, RequestTiming, or
anything with the same attributes); nothing here touches the engine.
Colours: decode rows blue circles, prefill chunks orange squares (shape and colour both differ, so the
timeline also reads in greyscale and under colour-vision deficiencies).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tiny_llm_playground.viz.layout import BLUE, GREEN, GREY, ORANGE, SKY, VERMILLION, message_figure, style

STATUS_COLOURS = {"waiting": GREY, "prefilling": ORANGE, "decoding": BLUE}
MIB = 1024 * 1024


def request_label(rid: int, labels: Mapping[int, str] | None = None) -> str:
    """Axis label of a request: '#12' or '#12 demo'."""
    tag = (labels or {}).get(rid)
    return f"#{rid} {tag}" if tag else f"#{rid}"


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB', 6291456 -> '6.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < MIB else f"{n / MIB:.1f} MiB"


def _held(r: Any) -> str:
    """What a request holds, for its bar: its blocks (paged), or its slot (dense)."""
    blocks = getattr(r, "blocks", ())
    if blocks:
        cached = getattr(r, "cached_prompt_tokens", 0)
        return f" · {len(blocks)} blocks" + (f" · {cached} prompt tokens cached" if cached else "")
    return f" · slot {r.slot}" if r.slot is not None else " · no cache yet"


def cache_occupancy(
    requests: Sequence[Any],
    total_tokens: int,
    free_tokens: int,
    labels: Mapping[int, str] | None = None,
) -> go.Figure:
    """Horizontal bars: KV-cache tokens each request holds now (colour = status), their K/V bytes in the text.

    `requests`: RequestState-like (id, status, slot, cache_tokens, cache_bytes = K/V bytes of those tokens,
    optional allocated_bytes = the slot's buffers). `free_tokens` is the engine's unreserved capacity
    (requests reserve prompt + max_tokens when admitted)."""
    if not requests:
        return message_figure("No request holds the KV cache right now.", "KV cache per request", height=360)
    ys = [request_label(r.id, labels) for r in requests]
    fig = go.Figure(
        go.Bar(
            x=[r.cache_tokens for r in requests],
            y=ys,
            orientation="h",
            marker={"color": [STATUS_COLOURS.get(r.status, GREEN) for r in requests]},
            text=[f"{r.cache_tokens:,} tok · {format_bytes(r.cache_bytes)}{_held(r)}" for r in requests],
            textposition="auto",
            customdata=[[r.status, r.cache_bytes, format_bytes(getattr(r, "allocated_bytes", 0))] for r in requests],
            hovertemplate="%{y}: %{x:,} tokens · %{customdata[1]:,} bytes of K/V · %{customdata[0]}"
            "<br>storage held: %{customdata[2]}<extra></extra>",
        )
    )
    used = sum(r.cache_tokens for r in requests)
    total_bytes = sum(r.cache_bytes for r in requests)
    allocated = sum(getattr(r, "allocated_bytes", 0) for r in requests)
    paged = any(getattr(r, "blocks", ()) for r in requests)
    held = (
        f"{total_tokens - free_tokens:,} of {total_tokens:,} tokens in blocks (taken as tokens arrive)"
        if paged
        else f"{total_tokens - free_tokens:,} of {total_tokens:,} tokens reserved (prompt + max tokens)"
    )
    title = (
        f"KV cache: {used:,} tokens written ({format_bytes(total_bytes)} of K/V)<br><sup>{held}"
        + (f" · {'blocks' if paged else 'buffers'} {format_bytes(allocated)}" if allocated else "")
        + "</sup>"
    )
    style(fig, title, height=max(300, 110 + 38 * len(requests)), showlegend=False,
          margin={"l": 70, "r": 30, "t": 90, "b": 60})  # fmt: skip
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="cached tokens", rangemode="tozero")
    return fig


def step_timeline(steps: Sequence[Any], labels: Mapping[int, str] | None = None) -> go.Figure:
    """Which requests were in each step's batch: x = step, y = request; circles = decode rows,
    squares = prefill chunks (hover: chunk size). Above it, each step's batch composition."""
    if not steps:
        return message_figure("No steps yet: send a message or start the class demo.", "Batch timeline")
    ids = sorted({rid for s in steps for rid in (*s.decode_ids, *(r for r, _ in s.prefill))})
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.28, 0.72], vertical_spacing=0.04)
    xs = [s.index for s in steps]
    fig.add_trace(go.Bar(x=xs, y=[len(s.decode_ids) for s in steps], name="decode rows", marker_color=BLUE,
                         hovertemplate="step %{x}: %{y} decode rows<extra></extra>"), row=1, col=1)  # fmt: skip
    fig.add_trace(go.Bar(x=xs, y=[len(s.prefill) for s in steps], name="prefill chunks", marker_color=ORANGE,
                         hovertemplate="step %{x}: %{y} prefill chunks<extra></extra>"), row=1, col=1)  # fmt: skip
    dx, dy, px_, py, pn = [], [], [], [], []
    for s in steps:
        for rid in s.decode_ids:
            dx.append(s.index)
            dy.append(request_label(rid, labels))
        for rid, n in s.prefill:
            px_.append(s.index)
            py.append(request_label(rid, labels))
            pn.append(n)
    fig.add_trace(
        go.Scatter(x=dx, y=dy, mode="markers", name="decode row (1 token)", showlegend=False,
                   marker={"color": BLUE, "symbol": "circle", "size": 9},
                   hovertemplate="step %{x} · %{y}: decode<extra></extra>"), row=2, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=px_, y=py, mode="markers", name="prefill chunk", showlegend=False, customdata=pn,
                   marker={"color": ORANGE, "symbol": "square", "size": 13, "line": {"color": "black", "width": 1}},
                   hovertemplate="step %{x} · %{y}: prefill %{customdata} tokens<extra></extra>"), row=2, col=1,
    )  # fmt: skip
    order = [request_label(r, labels) for r in ids]
    n_steps = len(steps)
    avg = sum(len(s.batch) for s in steps) / n_steps
    style(
        fig,
        f"Batch timeline: last {n_steps} steps · {len(ids)} requests · {avg:.1f} requests per step on average",
        height=max(420, 200 + 30 * len(ids)),
        barmode="stack",
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )
    fig.update_yaxes(title="in batch", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], type="category", row=2, col=1)
    fig.update_xaxes(title="engine step", row=2, col=1)
    return fig


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f} {unit}"


def requests_table_html(timings: Sequence[Any], labels: Mapping[int, str] | None = None) -> str:
    """An HTML table: one row per request (live first, then recently finished): status, tokens,
    queue time, time to first token and decode speed."""
    if not timings:
        return '<div class="hint">No requests yet.</div>'
    head = "".join(f"<th>{h}</th>" for h in
                   ("request", "status", "prompt", "new", "queue", "TTFT", "decode"))  # fmt: skip
    rows = []
    for t in timings:
        live = t.status in STATUS_COLOURS
        colour = STATUS_COLOURS.get(t.status, GREEN if t.status in ("eos", "stop", "length") else VERMILLION)
        rows.append(
            f'<tr class="{"live" if live else "done"}" data-rid="{t.id}">'
            f"<td>{html.escape(request_label(t.id, labels))}</td>"
            f'<td><span class="dot" style="background:{colour}"></span>{html.escape(t.status)}</td>'
            f"<td>{t.prompt_tokens}</td><td>{t.generated}</td>"
            f"<td>{_fmt(t.queue_s, 's')}</td><td>{_fmt(t.ttft_s, 's')}</td>"
            f"<td>{_fmt(t.decode_tps, 'tok/s', 1)}</td></tr>"
        )
    return f'<table class="req-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def summary_html(snap: Any) -> str:
    """The headline numbers of a snapshot: slots, queue, served, throughput."""
    items = [
        ("running", len(snap.running), BLUE),
        ("waiting", len(snap.waiting), ORANGE),
        ("free slots", f"{snap.free_slots} / {snap.total_slots}", GREEN),
        ("served", snap.served, SKY),
        ("tok/s (recent)", f"{snap.tokens_per_s:.1f}", VERMILLION),
    ]
    state = "ready" if snap.ready else "loading…"
    return kpi_cards(items, f'data-state="{state}"')


def kpi_cards(items: Sequence[tuple[str, Any, str]], attrs: str = "") -> str:
    """A row of headline numbers: (label, value, colour of its left edge) each, big value over small label."""
    cells = "".join(
        f'<div class="kpi" style="border-color:{c}"><div class="kpi-v">{html.escape(str(v))}</div>'
        f'<div class="kpi-k">{html.escape(k)}</div></div>'
        for k, v, c in items
    )
    return f'<div class="kpis" {attrs}>{cells}</div>'

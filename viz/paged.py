"""Pictures of the paged KV cache: the block pool as a grid, and its numbers.

Pure functions of the engine's published pool (engine.cache.BlockPoolState, in EngineSnapshot.blocks) and
requests (RequestState, whose `blocks` is the request's block table); nothing here touches the engine.
Colours: a block held by one request takes that request's colour (the Okabe-Ito palette, by request id);
a block several requests share (a prefix-cache hit) is black, with its reference count written on it;
a block whose request finished but whose tokens stay cached for later hits is pale blue; a free block is
light grey. Colour and the written count both tell a shared block apart, so the grid also reads in
greyscale.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from tiny_llm_playground.viz.batching import kpi_cards, request_label
from tiny_llm_playground.viz.layout import GREEN, INK, OKABE_ITO, ORANGE, SKY, VERMILLION, message_figure, style

FREE, CACHED, SHARED = "#e6e6e6", "#bcd9ee", INK
COLUMNS = 48  # blocks per row of the grid


def _owners(pool: Any) -> dict[int, list[int]]:
    """Block id -> the requests whose tables hold it, in admission order."""
    owners: dict[int, list[int]] = {}
    for rid, table in pool.tables:
        for blk in table:
            owners.setdefault(blk, []).append(rid)
    return owners


def block_grid(pool: Any, labels: Mapping[int, str] | None = None, columns: int = COLUMNS) -> go.Figure:
    """Every block written so far (and the next free ones to a full row), one cell each, left to right and
    top to bottom by block id: coloured by who holds it, shared blocks black with their reference count."""
    if pool is None:
        return message_figure("The engine runs the dense KV cache: there is no block pool to show.", "KV blocks")
    shown = max(columns * 2, -(-(pool.touched + 1) // columns) * columns)
    shown = min(shown, -(-pool.num_blocks // columns) * columns)
    owners = _owners(pool)
    palette = list(OKABE_ITO[:6])
    colours = [FREE, CACHED, SHARED, *palette]  # z = 0 free, 1 cached, 2 shared, 3.. a request's colour
    z, text, hover = [], [], []
    for blk in range(shown):
        holders = owners.get(blk, [])
        ref = pool.ref_counts[blk] if blk < pool.touched else 0
        cached = blk < pool.touched and pool.cached[blk]
        if blk >= pool.num_blocks:
            z.append(None)
            text.append("")
            hover.append("")
            continue
        if ref >= 2:
            z.append(2)
            text.append(f"{ref}")
            state = f"shared by {ref} requests: " + ", ".join(request_label(r, labels) for r in holders)
        elif ref == 1:
            z.append(3 + holders[0] % len(palette) if holders else 2)
            text.append("")
            state = f"held by {request_label(holders[0], labels)}" if holders else "held (copy source)"
        elif cached:
            z.append(1)
            text.append("")
            state = "cached: its request finished, its tokens wait for a prefix hit"
        else:
            z.append(0)
            text.append("")
            state = "free"
        hover.append(f"block {blk}: {state}" + (" · prefix-cached" if cached and ref else ""))
    rows = -(-shown // columns)

    def grid(values: list) -> list[list]:
        return [values[r * columns : (r + 1) * columns] for r in range(rows)]

    n = len(colours)
    scale = []
    for i, c in enumerate(colours):  # discrete bands: value i -> colour i
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(
        go.Heatmap(
            z=grid(z), text=grid(text), customdata=grid(hover), texttemplate="%{text}",
            textfont={"color": "white", "size": 12}, colorscale=scale, zmin=-0.5, zmax=n - 0.5, showscale=False,
            xgap=2, ygap=2, hovertemplate="%{customdata}<extra></extra>",
        )
    )  # fmt: skip
    shared = sum(1 for r in pool.ref_counts if r >= 2)
    title = f"KV block pool: {pool.in_use} of {pool.num_blocks} blocks in use ({pool.block_size} tokens each)"
    sub = (
        f"{shared} shared by several requests · {pool.cached_free} cached for later hits · {pool.touched} ever written"
    )
    if shown < pool.num_blocks:
        sub += f" · blocks {shown}+ (free, never written) not shown"
    title += f"<br><sup>{sub}</sup>"
    style(fig, title, height=max(260, 130 + 22 * rows), margin={"l": 50, "r": 20, "t": 90, "b": 30})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False, title="row",
                     tickvals=list(range(rows)), ticktext=[str(r * columns) for r in range(rows)])  # fmt: skip
    return fig


def fragmentation(pool: Any) -> float:
    """Share of the slots in used blocks that hold no token (the tails of partly filled blocks)."""
    slots = pool.in_use * pool.block_size
    return 1 - pool.held_tokens / slots if slots else 0.0


def pool_summary_html(pool: Any) -> str:
    """The pool's numbers: blocks in use / cached / free, prefix-cache hit rate, preemptions, fragmentation."""
    if pool is None:
        return ""
    items = [
        ("blocks in use", f"{pool.in_use} / {pool.num_blocks}", OKABE_ITO[0]),
        ("cached (free)", pool.cached_free, SKY),
        ("prefix hit rate", f"{100 * pool.hit_rate:.0f} %", GREEN),
        ("preemptions", pool.preemptions, VERMILLION),
        ("fragmentation", f"{100 * fragmentation(pool):.0f} %", ORANGE),
    ]
    return kpi_cards(items, 'data-pool="1"')


def block_tables_html(requests: Sequence[Any], labels: Mapping[int, str] | None = None, limit: int = 12) -> str:
    """Each live request's block table (the first `limit` ids; shared blocks in bold)."""
    live = [r for r in requests if getattr(r, "blocks", ())]
    if not live:
        return '<div class="hint">No request holds blocks right now.</div>'
    counts: dict[int, int] = {}
    for r in live:
        for b in r.blocks:
            counts[b] = counts.get(b, 0) + 1
    rows = []
    for r in live:
        ids = [f"<b>{b}</b>" if counts[b] > 1 else str(b) for b in r.blocks[:limit]]
        more = f" … +{len(r.blocks) - limit}" if len(r.blocks) > limit else ""
        shared = sum(1 for b in r.blocks if counts[b] > 1)
        rows.append(
            f"<tr><td>{html.escape(request_label(r.id, labels))}</td><td>{len(r.blocks)}</td><td>{shared}</td>"
            f"<td>{r.cached_prompt_tokens}</td><td class='mono'>[{', '.join(ids)}{more}]</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("request", "blocks", "shared", "prompt cached", "block table"))
    return f'<table class="req-table block-tables"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'

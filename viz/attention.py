"""Attention pictures: one head's L x L heatmap, a layers x heads overview (a figure, or a clickable HTML
grid), the GQA grouping.

Readability at 300+ tokens: the heatmap always holds the FULL matrix (no pooling, no smoothing — every cell
is one query/key pair, drawn as a crisp block); zoom with a box drag, double-click to reset. Axis labels are
thinned to ~40 evenly spaced tokens, and the hover names both tokens of every cell. Colour is viridis with
a square-root bend (`gamma`) so weights beside the attention sink on token 0 stay visible; the hover and
the colour bar show the real probabilities.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tiny_llm_playground.viz.layout import (
    FONT_SIZE,
    INK,
    MONO_FAMILY,
    OKABE_ITO,
    VERMILLION,
    cividis,
    power_colorscale,
    short,
    style,
    tick_labels,
)


def _labels(tokens: list[str]) -> list[str]:
    """'position:token' axis labels (unique even when a token repeats)."""
    return [f"{i}:{short(t)}" for i, t in enumerate(tokens)]


def attention_heatmap(probs: np.ndarray, tokens: list[str], layer: int, head: int, *, gamma: float = 0.5) -> go.Figure:
    """Query (rows, top to bottom) x key (columns) attention weights of one head.

    probs: (L, L), row i sums to 1 over keys 0..i. tokens: L display strings. Hover: "query → key: weight".
    """
    probs = np.asarray(probs, dtype=np.float32)
    L = len(tokens)
    if probs.shape != (L, L):
        raise ValueError(f"probs must be ({L}, {L}) for {L} tokens, got {probs.shape}")
    labels = _labels(tokens)  # unique per position, so they can be category names
    z = np.where(np.tril(np.ones((L, L), dtype=bool)), probs, np.nan)  # above the diagonal: blank, not 0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            hovertemplate="%{y} → %{x}: %{z:.4f}<extra></extra>",
            colorscale=power_colorscale(gamma),
            zmin=0.0,
            zmax=float(np.nanmax(z)) if L else 1.0,
            zsmooth=False,
            colorbar={"title": {"text": "weight", "side": "right"}, "thickness": 18},
            xgap=1 if L <= 40 else 0,
            ygap=1 if L <= 40 else 0,
        )
    )
    vals, _ = tick_labels(labels, max_ticks=28)  # ~18 px per label at the figure's height
    ticks = [labels[i] for i in vals]
    title = f"Attention · layer {layer} · head {head} · {L} tokens"
    if L > 40:
        title += " · full matrix, drag a box to zoom"
    style(fig, title, height=680 if L > 40 else 620)
    axis = {"tickmode": "array", "tickvals": ticks, "ticktext": ticks, "showgrid": False,
            "tickfont": {"family": MONO_FAMILY}, "type": "category"}  # fmt: skip
    fig.update_xaxes(title="key (attended to)", tickangle=-60, **axis)
    fig.update_yaxes(title="query (attending)", autorange="reversed", **axis)
    return fig


def head_metrics(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-head summaries of (..., H, L, L) probabilities, each (..., H):

    entropy: mean over queries of the row entropy, in bits (0 = every query looks at one key);
    distance: mean over queries of the expected |query - key| distance, in tokens.
    """
    p = np.asarray(probs, dtype=np.float64)
    L = p.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(-1)  # (..., H, L)
    dist = np.abs(np.arange(L)[:, None] - np.arange(L)[None, :])  # (L, L)
    mean_dist = (p * dist).sum(-1)  # (..., H, L)
    return {"entropy": ent.mean(-1), "distance": mean_dist.mean(-1)}


_METRIC_TEXT = {
    "entropy": ("Entropy per head", "bits", "low = focused on a few tokens"),
    "distance": ("Mean distance per head", "tokens", "low = looks at nearby tokens"),
}


def overview_values(result, metric: str = "entropy") -> tuple[list[int], np.ndarray]:
    """(layer numbers, (n_layers, H) values): one summary per head of an InspectResult's attention."""
    if metric not in _METRIC_TEXT:
        raise ValueError(f"metric must be one of {sorted(_METRIC_TEXT)}, got {metric!r}")
    layers = [a.layer for a in result.attention]
    return layers, np.stack([head_metrics(a.probs)[metric] for a in result.attention])


def attention_overview(result, metric: str = "entropy", selected: tuple[int, int] | None = None) -> go.Figure:
    """Layers (rows) x heads (columns) heatmap of one summary per head of an InspectResult's attention.

    metric: "entropy" or "distance" (see head_metrics). `selected` = (layer, head) gets an outline.
    A plotly figure can't be clicked through Gradio; the Attention tab shows `attention_overview_html`.
    """
    layers, values = overview_values(result, metric)
    title, unit, hint = _METRIC_TEXT[metric]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=list(range(values.shape[1])),
            y=layers,
            colorscale="Cividis",
            zsmooth=False,
            xgap=2,
            ygap=2,
            hovertemplate=f"layer %{{y}} · head %{{x}}: %{{z:.2f}} {unit}<extra></extra>",
            colorbar={"title": {"text": unit, "side": "right"}, "thickness": 18},
        )
    )
    if selected is not None and selected[0] in layers:
        layer, head = selected
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line={"color": VERMILLION, "width": 4})  # fmt: skip
    style(fig, f"{title}<br><sup>{hint}</sup>", height=max(420, 90 + 20 * len(layers)))
    fig.update_xaxes(title="query head", dtick=1, showgrid=False)
    fig.update_yaxes(title="layer", autorange="reversed", dtick=1 if len(layers) <= 12 else 2, showgrid=False)
    return fig


def attention_overview_html(result, metric: str = "entropy", selected: tuple[int, int] | None = None) -> str:
    """The layers x heads overview as an HTML grid of clickable cells (`data-l`, `data-h`): the Attention
    tab's click handler reads them to show that head. Same values as `attention_overview`; cividis from the
    grid's minimum to its maximum (legend below), the exact value in each cell's tooltip, `selected` outlined.
    """
    layers, values = overview_values(result, metric)
    title, unit, hint = _METRIC_TEXT[metric]
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else 1.0
    head = "".join(f"<th>{h}</th>" for h in range(values.shape[1]))
    rows = []
    for layer, row in zip(layers, values, strict=True):
        cells = "".join(
            f'<td data-l="{layer}" data-h="{h}" class="{"sel" if (layer, h) == selected else ""}"'
            f' style="background:{cividis((v - lo) / span)}" title="layer {layer} · head {h}: {v:.2f} {unit}"></td>'
            for h, v in enumerate(row)
        )
        rows.append(f"<tr><th>{layer}</th>{cells}</tr>")
    stops = ", ".join(cividis(i / 10) for i in range(11))
    return (
        f'<div class="ov" data-metric="{metric}"><div class="ov-title">{title}'
        f'<span class="ov-sub">{hint} · click a cell to show that head</span></div>'
        f'<table class="ov-grid"><thead><tr><th class="ov-corner">layer \\ head</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<div class="ov-legend"><span>{lo:.2f}</span><span class="ov-bar" style="background:'
        f'linear-gradient(to right, {stops})"></span><span>{hi:.2f} {unit}</span></div></div>'
    )


def gqa_groups(n_heads: int, n_kv_heads: int) -> go.Figure:
    """Which query heads share each key/value head (grouped-query attention): query heads on top, KV heads
    below, one colour per group, a line from every query head to the KV head it reads."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({n_kv_heads})")
    group = n_heads // n_kv_heads
    fig = go.Figure()
    kv_x = [(g + 0.5) * group - 0.5 for g in range(n_kv_heads)]  # each KV head centred under its group
    for g in range(n_kv_heads):
        color = OKABE_ITO[g % len(OKABE_ITO)]
        heads = list(range(g * group, (g + 1) * group))
        for h in heads:
            fig.add_trace(go.Scatter(x=[h, kv_x[g]], y=[1, 0], mode="lines", hoverinfo="skip",
                                     line={"color": color, "width": 3}, showlegend=False))  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=heads,
                y=[1] * len(heads),
                mode="markers+text",
                marker={"size": 34, "color": color, "symbol": "circle", "line": {"color": INK, "width": 1}},
                text=[f"q{h}" for h in heads],
                textposition="top center",
                textfont={"size": FONT_SIZE - 1},
                name=f"KV head {g}: q{heads[0]}–q{heads[-1]}",
                hovertemplate=f"query head %{{x}} reads KV head {g}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[kv_x[g]],
                y=[0],
                mode="markers+text",
                marker={"size": 46, "color": color, "symbol": "square", "line": {"color": INK, "width": 1}},
                text=[f"kv{g}"],
                textposition="bottom center",
                textfont={"size": FONT_SIZE + 1},
                showlegend=False,
                hovertemplate=f"KV head {g}: shared by query heads {heads[0]}–{heads[-1]}<extra></extra>",
            )
        )
    style(
        fig,
        f"Grouped-query attention: {n_heads} query heads share {n_kv_heads} K/V heads ({group} per group)",
        height=360,
        legend={"orientation": "h", "y": -0.12, "x": 0.0},
    )
    fig.update_xaxes(visible=False, range=[-1, n_heads])
    fig.update_yaxes(visible=False, range=[-0.6, 1.5])
    return fig

"""RoPE pictures: how rotary position embedding turns the query/key pairs, and why scores depend only on
the distance between tokens.

Layout as in engine/layers/rope.py (rotate-half, Qwen2): pair i is dimensions (i, i + D/2) and rotates by
angle pos * base^(-2i/D). Pair 0 turns fastest (one radian per token); the last pairs barely move. The
numpy `rotate()` here is a third, independent spelling of that rule (tests compare it with mx.fast.rope).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tiny_llm_playground.viz.layout import BLUE, FONT_SIZE, GREY, HEATMAP_SCALE, ORANGE, VERMILLION, style


def inv_frequencies(dims: int, base: float) -> np.ndarray:
    """(D/2,) radians per token of each pair: base^(-2i/D)."""
    if dims % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {dims}")
    return base ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)


def rotate(x: np.ndarray, position: int | np.ndarray, base: float) -> np.ndarray:
    """Rotate-half RoPE of x (..., D) at `position` (scalar or broadcastable to x[..., 0])."""
    x = np.asarray(x, dtype=np.float64)
    D = x.shape[-1]
    ang = np.asarray(position, dtype=np.float64)[..., None] * inv_frequencies(D, base)  # (..., D/2)
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def rope_pairs(q_before: np.ndarray, q_after: np.ndarray, position: int) -> go.Figure:
    """The D/2 pairs (x_i, x_{i+D/2}) of one query vector before (hollow) and after (filled) RoPE at
    `position`; a line joins each pair's two points. Rotation keeps each pair's length."""
    b, a = np.asarray(q_before, np.float64), np.asarray(q_after, np.float64)
    if b.shape != a.shape or b.ndim != 1 or b.size % 2:
        raise ValueError(f"q_before and q_after must be equal (D,) vectors, got {b.shape} and {a.shape}")
    h = b.size // 2
    pairs = np.arange(h)
    lx, ly = [], []
    for i in pairs:
        lx += [b[i], a[i], None]
        ly += [b[i + h], a[i + h], None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line={"color": GREY, "width": 1},
                             hoverinfo="skip", showlegend=False))  # fmt: skip
    common = {"colorscale": HEATMAP_SCALE, "cmin": 0, "cmax": h - 1, "size": 12}
    fig.add_trace(
        go.Scatter(
            x=b[:h], y=b[h:], mode="markers", name="before RoPE",
            marker={**common, "color": pairs, "symbol": "circle-open", "line": {"width": 2.5}},
            customdata=pairs, hovertemplate="pair %{customdata} before: (%{x:.2f}, %{y:.2f})<extra></extra>",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=a[:h], y=a[h:], mode="markers", name=f"after RoPE at position {position}",
            marker={**common, "color": pairs, "colorbar": {"title": {"text": "pair i"}, "thickness": 16}},
            customdata=pairs, hovertemplate="pair %{customdata} after: (%{x:.2f}, %{y:.2f})<extra></extra>",
        )
    )  # fmt: skip
    style(fig, f"Query pairs (x<sub>i</sub>, x<sub>i+{h}</sub>) rotated by RoPE at position {position}",
          height=540, legend={"orientation": "h", "y": -0.15})  # fmt: skip
    fig.update_xaxes(title="x<sub>i</sub>", zeroline=True, zerolinecolor=GREY)
    fig.update_yaxes(title=f"x<sub>i+{h}</sub>", zeroline=True, zerolinecolor=GREY, scaleanchor="x")
    return fig


def rope_spectrum(dims: int, base: float, context: int | None = None) -> go.Figure:
    """Wavelength (tokens per full turn, log scale) of each pair; `context` draws the context length."""
    freq = inv_frequencies(dims, base)
    wavelength = 2 * np.pi / freq
    pairs = np.arange(freq.size)
    fig = go.Figure(
        go.Scatter(
            x=pairs, y=wavelength, mode="lines+markers", name="wavelength",
            line={"color": BLUE, "width": 3}, marker={"size": 7},
            customdata=freq,
            hovertemplate="pair %{x}: %{customdata:.3g} rad/token, turn per %{y:,.1f} tokens<extra></extra>",
        )
    )  # fmt: skip
    if context:
        fig.add_hline(y=context, line={"color": VERMILLION, "dash": "dash", "width": 2})
        fig.add_annotation(
            x=0, y=np.log10(context), text=f"context: {context:,} tokens", showarrow=False,
            xanchor="left", yanchor="bottom", font={"size": FONT_SIZE, "color": VERMILLION},
        )  # fmt: skip
    style(fig, f"RoPE spectrum: D = {dims}, base = {base:,.0f}", height=460, showlegend=False)
    fig.update_xaxes(title="pair i (dims i and i + D/2)")
    fig.update_yaxes(title="wavelength (tokens, log)", type="log")
    return fig


def rope_angle_heatmap(positions: np.ndarray | list[int], dims: int, base: float) -> go.Figure:
    """Rotation angle (mod 2π) of every pair at every position: fast pairs left, slow pairs right."""
    pos = np.asarray(positions, dtype=np.float64)
    ang = np.mod(pos[:, None] * inv_frequencies(dims, base)[None, :], 2 * np.pi)  # (P, D/2)
    fig = go.Figure(
        go.Heatmap(
            z=ang, x=np.arange(ang.shape[1]), y=pos, colorscale="Twilight", zmin=0, zmax=2 * np.pi,
            zsmooth=False,
            colorbar={"title": {"text": "angle"}, "tickvals": [0, np.pi, 2 * np.pi],
                      "ticktext": ["0", "π", "2π"]},
            hovertemplate="position %{y}, pair %{x}: %{z:.2f} rad<extra></extra>",
        )
    )  # fmt: skip
    style(fig, "RoPE angle (mod 2π) per position and pair", height=500)
    fig.update_xaxes(title="pair i")
    fig.update_yaxes(title="position", autorange="reversed")
    return fig


def relative_scores(q: np.ndarray, k: np.ndarray, base: float, distances: np.ndarray, offset: int) -> np.ndarray:
    """q·k / sqrt(D) with the query at offset + d and the key at offset, for each distance d."""
    d = np.asarray(distances)
    qr = rotate(np.broadcast_to(q, (d.size, q.shape[-1])), offset + d, base)  # (N, D)
    kr = rotate(k, offset, base)  # (D,)
    return qr @ kr / np.sqrt(q.shape[-1])


def rope_relative_scores(
    q: np.ndarray, k: np.ndarray, base: float, *, max_distance: int = 256, offsets: tuple[int, ...] = (0, 200)
) -> go.Figure:
    """Attention score of one real (pre-RoPE) q and k placed `d` tokens apart, for d = 0..max_distance.

    Drawn once per key position in `offsets`: the curves coincide, because RoPE scores depend only on the
    distance. The dotted line is the score without RoPE.
    """
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    d = np.arange(max_distance + 1)
    fig = go.Figure()
    colors = (BLUE, ORANGE)
    for j, off in enumerate(offsets):
        fig.add_trace(
            go.Scatter(
                x=d, y=relative_scores(q, k, base, d, off), mode="lines", name=f"key at position {off}",
                line={"color": colors[j % 2], "width": 5 - 2 * min(j, 1), "dash": "dash" if j else "solid"},
                hovertemplate="distance %{x}: score %{y:.3f}<extra></extra>",
            )
        )  # fmt: skip
    plain = float(q @ k / np.sqrt(q.size))
    fig.add_hline(y=plain, line={"color": GREY, "dash": "dot", "width": 2},
                  annotation_text="no RoPE", annotation_position="bottom right")  # fmt: skip
    style(fig, "Score q·k/√D vs distance: same curve at any position", height=460,
          legend={"orientation": "h", "y": -0.2})  # fmt: skip
    fig.update_xaxes(title="distance query − key (tokens)")
    fig.update_yaxes(title="score")
    return fig

"""The one look every figure shares: projector-sized fonts, colour-blind-safe colours, white background.

Heatmaps use viridis (sequential, perceptually uniform, readable in greyscale and under every common
colour-vision deficiency); categories use the Okabe–Ito palette. Every figure goes through `style()`.
"""

from __future__ import annotations

import functools

import plotly.express as px
import plotly.graph_objects as go

# Okabe–Ito (https://jfly.uni-koeln.de/color/), black left out (it is the text colour).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, YELLOW = OKABE_ITO
GREY = "#8c8c8c"
INK = "#1a1a1a"
FONT_FAMILY = "IBM Plex Sans, DejaVu Sans, system-ui, sans-serif"
MONO_FAMILY = "IBM Plex Mono, DejaVu Sans Mono, ui-monospace, monospace"
FONT_SIZE = 16  # ticks and legends; titles are larger
TITLE_SIZE = 21
HEATMAP_SCALE = "Viridis"


def style(fig: go.Figure, title: str, *, height: int = 520, **layout) -> go.Figure:
    """Apply the shared template to `fig` (in place) and return it."""
    base = dict(
        template="plotly_white",
        title={"text": title, "font": {"size": TITLE_SIZE, "color": INK}, "x": 0.01, "xanchor": "left"},
        font={"family": FONT_FAMILY, "size": FONT_SIZE, "color": INK},
        hoverlabel={"font": {"size": FONT_SIZE + 1, "family": MONO_FAMILY}, "bgcolor": "white"},
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        height=height,
        colorway=list(OKABE_ITO),
        legend={"font": {"size": FONT_SIZE}},
    )
    base.update(layout)
    fig.update_layout(**base)
    fig.update_xaxes(title_font={"size": FONT_SIZE + 1}, tickfont={"size": FONT_SIZE - 1}, automargin=True)
    fig.update_yaxes(title_font={"size": FONT_SIZE + 1}, tickfont={"size": FONT_SIZE - 1}, automargin=True)
    return fig


def power_colorscale(gamma: float = 0.5, name: str = HEATMAP_SCALE, steps: int = 16) -> list[list]:
    """A colourscale on which value u in [0, 1] gets colour name(u ** gamma).

    The data in the figure stays exact (hover shows the real numbers); only the colour mapping bends, so
    small weights next to a dominant one (e.g. the attention sink on the first token) stay visible.
    """
    colors = px.colors.sample_colorscale(name, [i / (steps - 1) for i in range(steps)])
    return [[(i / (steps - 1)) ** (1.0 / gamma), c] for i, c in enumerate(colors)]


@functools.cache
def _cividis_table() -> tuple[str, ...]:
    return tuple(px.colors.sample_colorscale("Cividis", [i / 255 for i in range(256)]))


def cividis(u: float) -> str:
    """Cividis colour of u in [0, 1] (clipped; 256 steps) as 'rgb(r, g, b)', for HTML views (a table lookup:
    sampling plotly's colourscale costs ~0.4 ms a call)."""
    return _cividis_table()[round(min(max(float(u), 0.0), 1.0) * 255)]


def message_figure(text: str, title: str = "", *, height: int = 320) -> go.Figure:
    """An empty figure carrying a message (nothing inspected yet, bad input)."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": FONT_SIZE + 2}, x=0.5, y=0.5,
                       xref="paper", yref="paper")  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title, height=height)


def tick_labels(labels: list[str], max_ticks: int = 40) -> tuple[list[int], list[str]]:
    """(tickvals, ticktext) showing at most ~max_ticks of `labels` (evenly strided, always the last)."""
    n = len(labels)
    stride = max(1, -(-n // max_ticks))
    vals = list(range(0, n, stride))
    if n and vals[-1] != n - 1 and stride > 1:
        vals[-1] = n - 1
    return vals, [labels[i] for i in vals]


def short(token: str, width: int = 12) -> str:
    """A token for an axis label: visible, at most `width` characters."""
    return token if len(token) <= width else token[: width - 1] + "…"

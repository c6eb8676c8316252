"""The logit lens as a table: what each layer would predict next if the model stopped there.

Rows are layers (first at the top), columns are prompt positions; each cell shows the top-1 token read
from that layer's hidden state (final norm + lm_head applied), its colour the top-1 probability (viridis).
The hover lists the top few tokens with their probabilities. The last row is the model's real prediction.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from tiny_llm_playground.viz.layout import FONT_SIZE, MONO_FAMILY, short, style


def logit_lens_table(
    top_tokens: list[list[list[str]]],
    top_probs: np.ndarray,
    position_labels: list[str],
    layers: list[int] | None = None,
    positions: list[int] | None = None,
) -> go.Figure:
    """top_tokens[layer][col] = the top token strings (most probable first); top_probs (n_layers, P, top).

    position_labels: one label per column (the input token at that position); positions: their indices in
    the prompt (default 0..P-1), shown as "position:token".
    """
    probs = np.asarray(top_probs, dtype=np.float64)
    n_layers, P, top = probs.shape
    if len(top_tokens) != n_layers or any(len(r) != P for r in top_tokens) or len(position_labels) != P:
        raise ValueError("top_tokens, top_probs and position_labels disagree on layers x positions")
    layers = list(range(n_layers)) if layers is None else list(layers)
    cell = [[short(row[c][0], 7) for c in range(P)] for row in top_tokens]
    hover = [
        [
            "<br>".join(f"{html.escape(t)!s:<14} {p:6.1%}" for t, p in zip(row[c], probs[li, c], strict=True))
            for c in range(P)
        ]
        for li, row in enumerate(top_tokens)
    ]
    positions = list(range(P)) if positions is None else list(positions)
    x = [f"{p}:{short(t, 10)}" for p, t in zip(positions, position_labels, strict=True)]
    fig = go.Figure(
        go.Heatmap(
            z=probs[:, :, 0],
            x=x,
            y=[f"L{l}" for l in layers],
            text=cell,
            texttemplate="%{text}",
            textfont={"family": MONO_FAMILY, "size": FONT_SIZE - 3},
            customdata=hover,
            hovertemplate="%{y} at %{x}<br>%{customdata}<extra></extra>",
            colorscale="Viridis",
            zmin=0.0,
            zmax=1.0,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": "top-1 prob"}, "thickness": 18, "tickformat": ".0%"},
        )
    )
    style(fig, "Logit lens: each layer's best guess for the token AFTER each input token",
          height=max(520, 150 + 24 * n_layers))  # fmt: skip
    fig.update_xaxes(title="input token", tickangle=-45, tickfont={"family": MONO_FAMILY}, type="category")
    fig.update_yaxes(title="layer", autorange="reversed", type="category")
    return fig

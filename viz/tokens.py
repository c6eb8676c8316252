"""A generated reply as clickable tokens coloured by the probability the sampler gave each one.

Pure: (token texts, probabilities) -> an HTML string. Colour = the probability of the drawn token under
the distribution it was drawn from, on the cividis scale (sequential, made for colour-vision
deficiencies, readable in greyscale); the text colour flips to stay legible on dark cells. Each token is
a `<span class="tok" data-i="k">`: the Chat tab's click handler reads `data-i` to pick the step to show.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.express as px

SCALE = "Cividis"
_STEPS = 11  # legend swatches: 0 %, 10 %, ... 100 %


def prob_colour(p: float) -> str:
    """Cividis colour of a probability in [0, 1] (clipped), as an 'rgb(r, g, b)' string."""
    p = min(max(float(p), 0.0), 1.0)
    return px.colors.sample_colorscale(SCALE, [p])[0]


def _ink(colour: str) -> str:
    r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1 : -1].split(","))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _visible(text: str) -> str:
    """Whitespace made visible enough to click: newlines as ↵ (followed by a real line break)."""
    if text == "":
        return "∅"
    out = html.escape(text).replace("\n", "↵<br>")
    return out if text.strip() else out.replace(" ", "&nbsp;")


def token_legend() -> str:
    swatches = "".join(
        f'<span class="tok-swatch" style="background:{prob_colour(i / (_STEPS - 1))};'
        f'color:{_ink(prob_colour(i / (_STEPS - 1)))}">{i * 10}</span>'
        for i in range(_STEPS)
    )
    return f'<div class="tok-legend">probability of the drawn token (%): {swatches}</div>'


def token_html(
    texts: Sequence[str], probs: Sequence[float | None], selected: int | None = None, *, note: str = ""
) -> str:
    """The reply as coloured token spans (`probs[k]` None = unknown, drawn grey) with a legend.

    `selected` outlines one token (the step whose distribution is shown)."""
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} token texts for {len(probs)} probabilities")
    spans = []
    for i, (t, p) in enumerate(zip(texts, probs, strict=True)):
        bg = "#d0d0d0" if p is None else prob_colour(p)
        title = f"token {i}: {t!r}" + ("" if p is None else f" · p = {p:.1%}")
        cls = "tok sel" if i == selected else "tok"
        spans.append(
            f'<span class="{cls}" data-i="{i}" style="background:{bg};color:{_ink(bg) if p is not None else "#111"}"'
            f' title="{html.escape(title)}">{_visible(t)}</span>'
        )
    body = "".join(spans) if spans else '<span class="tok-empty">The reply\'s tokens appear here.</span>'
    extra = f'<div class="tok-note">{html.escape(note)}</div>' if note else ""
    return f'<div class="tok-view"><div class="tok-text">{body}</div>{token_legend()}{extra}</div>'

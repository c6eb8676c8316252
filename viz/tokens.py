"""A generated reply as clickable tokens coloured by the probability the sampler gave each one.

Pure: (token texts, probabilities) -> an HTML string. Colour = the probability of the drawn token under
the distribution it was drawn from, on the cividis scale (sequential, made for colour-vision
deficiencies, readable in greyscale); the text colour flips to stay legible on dark cells. Each token is
a `<span class="tok" data-i="k">`: the Chat tab's click handler reads `data-i` to pick the step to show.

Cheap enough to redraw while a reply streams: colours come from a 256-step table (viz.layout.cividis),
and `token_span` / `token_view` let a caller keep the spans it already made and add one per new token
instead of rebuilding the whole reply.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Sequence

from tiny_llm_playground.viz.layout import cividis

_STEPS = 11  # legend swatches: 0 %, 10 %, ... 100 %
UNKNOWN = "#d0d0d0"  # a token whose probability was not recorded


def prob_colour(p: float) -> str:
    """Cividis colour of a probability in [0, 1] (clipped, 256 steps), as an 'rgb(r, g, b)' string."""
    return cividis(p)


@functools.cache
def _ink(colour: str) -> str:
    r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1 : -1].split(","))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _visible(text: str) -> str:
    """Whitespace made visible enough to click: newlines as ↵ (followed by a real line break)."""
    if text == "":
        return "∅"
    out = html.escape(text).replace("\n", "↵<br>")
    return out if text.strip() else out.replace(" ", "&nbsp;")


@functools.cache
def token_legend() -> str:
    swatches = "".join(
        f'<span class="tok-swatch" style="background:{prob_colour(i / (_STEPS - 1))};'
        f'color:{_ink(prob_colour(i / (_STEPS - 1)))}">{i * 10}</span>'
        for i in range(_STEPS)
    )
    return f'<div class="tok-legend">probability of the drawn token (%): {swatches}</div>'


def token_span(i: int, text: str, prob: float | None, selected: bool = False) -> str:
    """Token i of a reply as a coloured, clickable span (`prob` None = unknown, drawn grey)."""
    bg = UNKNOWN if prob is None else prob_colour(prob)
    title = f"token {i}: {text!r}" + ("" if prob is None else f" · p = {prob:.1%}")
    cls = "tok sel" if selected else "tok"
    return (
        f'<span class="{cls}" data-i="{i}" style="background:{bg};color:{_ink(bg) if prob is not None else "#111"}"'
        f' title="{html.escape(title)}">{_visible(text)}</span>'
    )


def token_view(spans: Sequence[str], *, note: str = "") -> str:
    """The whole view around already made `token_span`s: the text, the legend, an optional note."""
    body = "".join(spans) if spans else '<span class="tok-empty">The reply\'s tokens appear here.</span>'
    extra = f'<div class="tok-note">{html.escape(note)}</div>' if note else ""
    return f'<div class="tok-view"><div class="tok-text">{body}</div>{token_legend()}{extra}</div>'


def token_html(
    texts: Sequence[str], probs: Sequence[float | None], selected: int | None = None, *, note: str = ""
) -> str:
    """The reply as coloured token spans (`probs[k]` None = unknown, drawn grey) with a legend.

    `selected` outlines one token (the step whose distribution is shown)."""
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} token texts for {len(probs)} probabilities")
    spans = [token_span(i, t, p, i == selected) for i, (t, p) in enumerate(zip(texts, probs, strict=True))]
    return token_view(spans, note=note)

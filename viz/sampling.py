"""The sampler's picture: the top raw probabilities of one step, where each filter cuts, and the draw.

`filtered(...)` recomputes the kept distribution from stored log-probabilities under new slider values with
the sampler's own filters (`engine.sampling.filter_masks`: temperature -> top-k -> top-p -> min-p, each filter
seeing the renormalized output of the one before). A SampleRecord stores only the top-N raw log-probabilities, so the
picture is exact when N covers the kept set and otherwise treats tokens beyond N as absent (the title
says how much raw probability mass lies outside the N shown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from tiny_llm_playground.engine.sampling import filter_masks
from tiny_llm_playground.viz.layout import BLUE, GREY, INK, MONO_FAMILY, ORANGE, SKY, VERMILLION, short, style


@dataclass(frozen=True)
class Filtered:
    """One step's top tokens under given sampling settings (arrays aligned, most probable first)."""

    raw: np.ndarray  # raw (temperature 1) probabilities of the N tokens
    tempered: np.ndarray  # softmax(logprob / T) over the N tokens
    kept: np.ndarray  # bool: survives top-k, top-p and min-p
    final: np.ndarray  # renormalized probability of the kept tokens (0 where cut)
    cut_by: tuple[str, ...]  # per token: "" (kept) or the first filter that cut it


def filtered(
    top_logprobs: np.ndarray | list[float],
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> Filtered:
    """Apply temperature, top-k, top-p, min-p to the top-N raw log-probabilities (sorted descending)."""
    lp = np.asarray(top_logprobs, dtype=np.float64)
    if lp.ndim != 1 or lp.size == 0:
        raise ValueError("top_logprobs must be a non-empty 1-D list")
    if np.any(np.diff(lp) > 0):
        raise ValueError("top_logprobs must be sorted, most probable first")
    raw = np.exp(lp)
    n = lp.size
    cut = [""] * n
    if temperature == 0:  # greedy: only the argmax survives
        tempered = np.zeros(n)
        tempered[0] = 1.0
        cut = [""] + ["top-k"] * (n - 1)  # greedy keeps one token, like top-k = 1
        keep = np.arange(n) == 0
        return Filtered(raw, tempered, keep, keep.astype(float), tuple(cut))
    x = lp / temperature
    tempered = np.exp(x - x.max())
    tempered /= tempered.sum()
    masks = filter_masks(tempered, top_k, top_p, min_p)  # the sampler's own filters, in its order
    keep = masks[-1]
    for name, mask in zip(("top-k", "top-p", "min-p"), masks, strict=True):
        for i in np.nonzero(~mask)[0]:
            cut[i] = cut[i] or name  # the first filter that cut it
    final = tempered * keep
    final /= final.sum()
    return Filtered(raw, tempered, keep, final, tuple(cut))


def sampling_distribution(
    token_texts: list[str],
    top_logprobs: np.ndarray | list[float],
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    drawn: int | None = None,
    step_label: str = "",
) -> go.Figure:
    """Bars of the top-N tokens: raw probability (grey outline), after temperature and filters (blue = kept,
    light = cut, labelled by the filter that cut it). `drawn` = index of the sampled token (vermillion)."""
    f = filtered(top_logprobs, temperature, top_k, top_p, min_p)
    n = f.raw.size
    labels = [f"{i}:{short(t, 10)}" for i, t in enumerate(token_texts)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} token texts for {n} log-probabilities")
    colors = [BLUE if k else "#d9e6f2" for k in f.kept]
    if drawn is not None:
        colors[drawn] = VERMILLION
    fig = go.Figure()
    fig.add_trace(
        go.Bar(x=labels, y=f.raw, name="raw (T = 1)", marker={"color": "rgba(0,0,0,0)",
               "line": {"color": GREY, "width": 2}}, hovertemplate="%{x}: raw %{y:.2%}<extra></extra>")
    )  # fmt: skip
    fig.add_trace(
        go.Bar(
            x=labels, y=f.final, name="sampled from (renormalized)", marker={"color": colors},
            text=[c or "" for c in f.cut_by], textposition="outside",
            customdata=np.stack([f.tempered, f.final], -1),
            hovertemplate="%{x}: after T %{customdata[0]:.2%} · final %{customdata[1]:.2%}<extra></extra>",
        )
    )  # fmt: skip
    if 0 < top_k < n:
        fig.add_vline(x=top_k - 0.5, line={"color": ORANGE, "dash": "dash", "width": 3},
                      annotation_text=f"top-k = {top_k}", annotation_position="top")  # fmt: skip
    if min_p > 0:
        kept_first = f.tempered[0]
        fig.add_hline(y=min_p * kept_first, line={"color": SKY, "dash": "dot", "width": 3},
                      annotation_text=f"min-p × top = {min_p * kept_first:.1%}")  # fmt: skip
    outside = max(0.0, 1.0 - float(f.raw.sum()))
    title = f"Next-token distribution{' of ' + step_label if step_label else ''}"
    title += f"<br><sup>T={temperature:g} · top-k {top_k} · top-p {top_p:g} · min-p {min_p:g}"
    title += f" · {int(f.kept.sum())} kept · {outside:.1%} of raw mass beyond these {n}</sup>"
    style(fig, title, height=480, barmode="overlay", legend={"orientation": "h", "y": -0.3},
          margin={"l": 70, "r": 30, "t": 95, "b": 60})  # fmt: skip
    fig.update_xaxes(tickangle=-45, tickfont={"family": MONO_FAMILY, "color": INK})
    fig.update_yaxes(title="probability", tickformat=".0%")
    return fig

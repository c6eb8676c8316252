"""The sampler: one request's draws, the probabilities kept apart from the draw.

`Sampler(params)(logits, history)` returns a SampleRecord: the drawn token, its probability under the
distribution it was drawn from, the raw top log-probabilities and the kept set (speculative decoding and
the playground need the probabilities themselves). The draw is `rng.choice` over `distribution()`'s kept
set; without top-k on a large vocabulary it looks at the 256 most probable tokens first and sorts the
whole vocabulary only when the draw lands past them (the same seeded token and probability).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tiny_llm_playground.engine.sampling.filters import Distribution, distribution, logsumexp, top_indices
from tiny_llm_playground.engine.sampling.params import SamplingParams


@dataclass(frozen=True)
class SampleRecord:
    """One sampling step: the drawn token and everything needed to redraw the picture of the step."""

    token: int
    prob: float  # probability of `token` under the distribution it was drawn from
    logprob: float  # log-probability of `token` under the raw (unfiltered, temperature 1) model
    top_ids: tuple[int, ...]  # top raw tokens, most probable first
    top_logprobs: tuple[float, ...]
    # The kept tokens, most probable first, and their probabilities. Without top-k on a large vocabulary
    # (a draw that did not need the whole sorted vocabulary) only the first 256 of them, as fractions of
    # the whole distribution.
    kept: Distribution = field(repr=False)


_PREFIX = 256  # most probable tokens the fast draw looks at before it sorts the whole vocabulary


def _choose(probs: np.ndarray, u: float) -> int:
    """The index `rng.choice(len(probs), p=probs)` draws when its uniform number is u (numpy's rule)."""
    cdf = np.cumsum(probs)
    return int(np.searchsorted(cdf / cdf[-1], u, side="right"))


def _prefix_draw(logits: np.ndarray, params: SamplingParams, u: float) -> tuple[int, float, Distribution] | None:
    """The draw `distribution()` + `rng.choice` would make with uniform number u, from the _PREFIX most
    probable tokens only, or None when the answer needs tokens past them (then the caller sorts all).

    For top_k = 0 on a large vocabulary the full distribution is 152k tokens, and sorting them costs ~18 ms
    a token, but a draw almost always lands among the first few hundred. The probabilities are the same
    numbers (exp((l - max) / T) over the sum of all of them); top-p and min-p keep a prefix, decided inside
    the first _PREFIX tokens when the mass there reaches top_p, or when the last of them falls under
    min_p x the first; the draw is searchsorted(cdf, u) as in numpy's choice, inside the prefix when u is
    below its (renormalized) mass. Returns (token, its probability, the kept tokens looked at)."""
    order = top_indices(logits, _PREFIX)  # most probable first, ties in id order (as descending_order)
    x = logits.astype(np.float64)
    e = np.exp((x - np.max(x)) / params.temperature)
    probs = e[order] / float(np.sum(e))  # (_PREFIX,) of the full distribution
    cum = np.cumsum(probs)
    if params.top_p >= 1.0 and params.min_p <= 0.0:  # nothing filtered: the whole vocabulary is kept
        if u >= cum[-1] * (1 - 1e-9):  # the draw falls (or may fall) past the prefix
            return None
        idx = int(np.searchsorted(cum, u, side="right"))
        return int(order[idx]), float(probs[idx]), Distribution(order.astype(np.int64), probs)
    n = probs.size
    if params.top_p < 1.0:
        if cum[-1] < params.top_p:  # the nucleus reaches past the prefix
            return None
        n = int(np.sum(np.concatenate([[0.0], cum[:-1]]) < params.top_p))
    if params.min_p > 0.0:
        keep = probs[:n] >= params.min_p * probs[0]
        if params.top_p >= 1.0 and keep[-1]:  # tokens past the prefix may pass min-p too
            return None
        n = int(np.sum(keep))
    p = probs[:n] / probs[:n].sum()  # renormalized over the kept prefix, as distribution() does
    idx = _choose(p, u)
    return int(order[idx]), float(p[idx]), Distribution(order[:n].astype(np.int64), p)


class Sampler:
    """Draws tokens for one request; owns the request's random generator (seeded for reproducibility)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Iterable[int] = ()) -> SampleRecord:
        logits = np.asarray(logits).reshape(-1)
        if logits.dtype not in (np.float32, np.float64):
            logits = logits.astype(np.float64)
        params = self.params
        if not params.greedy and params.top_k == 0 and params.repetition_penalty == 1.0 and logits.size > 4 * _PREFIX:
            u = self.rng.random()  # what rng.choice would take (one double), used by either path below
            drawn = _prefix_draw(logits, params, u)
            if drawn is None:  # past the prefix: the whole sorted distribution, the same u
                dist = distribution(logits, params, history)
                idx = _choose(dist.probs, u)
                drawn = int(dist.token_ids[idx]), float(dist.probs[idx]), dist
            token, prob, dist = drawn
        else:
            dist = distribution(logits, params, history)
            idx = 0 if dist.probs.size == 1 else int(self.rng.choice(dist.probs.size, p=dist.probs))
            token, prob = int(dist.token_ids[idx]), float(dist.probs[idx])
        # Raw log-probabilities (unfiltered, temperature 1) of the drawn and the top tokens only: one
        # logsumexp instead of a (V,) log-softmax (the logits' order is the log-probabilities' order).
        lse = logsumexp(logits)
        top = top_indices(logits, params.logprobs)
        return SampleRecord(
            token=token,
            prob=prob,
            logprob=float(logits[token]) - lse,
            top_ids=tuple(int(i) for i in top),
            top_logprobs=tuple(float(logits[i]) - lse for i in top),
            kept=dist,
        )

"""Sampling: small pure functions over one position's logits.

The distribution is computed separately from the draw (speculative decoding and the playground need the
probabilities themselves). Pipeline, in this order:
    repetition penalty -> temperature -> top-k -> top-p -> min-p -> renormalize -> draw
Temperature 0 means greedy: the argmax with probability 1. Every filter keeps at least one token.
Work is done in numpy float64 on the host: one row of logits per step, exact and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; invalid values raise ValueError at construction."""

    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repetition_context: int = 64  # how many recent tokens the penalty looks at (0 = all)
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: int = 10  # how many top raw log-probabilities each token event carries
    ignore_eos: bool = False  # keep generating through EOS tokens until max_tokens (benchmarks)

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                "repetition_penalty must be > 0 (1 = off)",
            ),
            (self.repetition_context >= 0, "repetition_context must be >= 0"),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (self.logprobs >= 0, "logprobs must be >= 0"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (isinstance(self.ignore_eos, bool), "ignore_eos must be true or false"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid sampling parameters: {msg}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Distribution:
    """What the sampler drew from: kept token ids (most probable first) and their renormalized probs."""

    token_ids: np.ndarray  # (n,) int64
    probs: np.ndarray  # (n,) float64, sums to 1


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64) - np.max(logits)
    return x - np.log(np.sum(np.exp(x)))


def logsumexp(logits: np.ndarray) -> float:
    """log(sum(exp(logits))) of a 1-D array, exp in the array's own precision and the sum in float64: the
    raw log-probability of token i is logits[i] - logsumexp(logits), with no (V,) float64 copy."""
    m = np.max(logits)
    if not np.isfinite(m):
        return float(m)
    return float(m) + math.log(float(np.sum(np.exp(logits - m), dtype=np.float64)))


def apply_repetition_penalty(logits: np.ndarray, tokens: Iterable[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty on every token already seen: positive logits / penalty, negative * penalty."""
    ids = np.unique(np.fromiter(tokens, dtype=np.int64))
    if penalty == 1.0 or ids.size == 0:
        return logits
    out = logits.astype(np.float64, copy=True)
    sel = out[ids]
    out[ids] = np.where(sel > 0, sel / penalty, sel * penalty)
    return out


def top_k_mask(probs_sorted: np.ndarray, k: int) -> np.ndarray:
    """Keep the first k of probabilities sorted descending (k = 0: keep all)."""
    keep = np.ones_like(probs_sorted, dtype=bool)
    if 0 < k < probs_sorted.size:
        keep[k:] = False
    return keep


def top_p_mask(probs_sorted: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: the smallest prefix whose mass reaches p (the token crossing p is kept)."""
    if p >= 1.0:
        return np.ones_like(probs_sorted, dtype=bool)
    # Exclusive prefix sum: the mass of the strictly more probable tokens (no subtraction round-off).
    mass_before = np.concatenate([[0.0], np.cumsum(probs_sorted)[:-1]])
    return mass_before < p


def min_p_mask(probs_sorted: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least min_p times the top probability."""
    if min_p <= 0.0:
        return np.ones_like(probs_sorted, dtype=bool)
    return probs_sorted >= min_p * probs_sorted[0]


def descending_order(logits: np.ndarray, k: int = 0) -> np.ndarray:
    """Token ids by logit, largest first, ties in id order: `np.argsort(-logits, kind="stable")`, or its
    first k entries (k = 0: all).

    The stable sort of a 152k vocabulary takes ~20 ms, most of a decode step's sampling time. When the
    values are float32 numbers (the model's logits, unless a repetition penalty rescaled them), each value's
    order-preserving 32-bit key and its id are packed into one int64; these are all distinct, so numpy's
    plain sort (or a partition, for the first k) gives exactly the same order, several times faster.
    Anything else takes the stable sort.
    """
    logits = np.asarray(logits).reshape(-1)
    k = k if 0 < k < logits.size else 0
    v = logits.astype(np.float32)
    if logits.size >= 2**32 or not np.array_equal(v, logits):  # not float32 values, or a NaN
        order = np.argsort(-logits, kind="stable")
        return order[:k] if k else order
    bits = (v + np.float32(0.0)).view(np.int32).astype(np.int64)  # + 0: -0.0 becomes +0.0 (they tie)
    key = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # ascending with the float value (finite or inf)
    packed = (-key << 32) | np.arange(logits.size, dtype=np.int64)  # (-value, id) in one integer
    if k:
        packed = np.partition(packed, k - 1)[:k]
    return np.sort(packed) & 0xFFFFFFFF


def top_indices(values: np.ndarray, n: int, block: int = 256) -> np.ndarray:
    """Indices of the n largest of a 1-D array, largest first, ties in index order.

    `np.argpartition` over a 152k vocabulary costs ~1.7 ms, which a 16-row decode step pays 16 times. So
    first take the maximum of each block of `block` values: the n-th largest of those maxima, t, is at
    most the n-th largest value (the n blocks with the largest maxima each hold a value >= t). Every one
    of the n largest values is therefore >= t, and only the few values >= t need sorting."""
    values = np.asarray(values).reshape(-1)
    n = min(n, values.size)
    if n <= 0:
        return np.array([], dtype=np.int64)
    nb = values.size // block
    if nb <= n:  # small input: sort it all
        return np.argsort(-values, kind="stable")[:n]
    maxima = values[: nb * block].reshape(nb, block).max(axis=1)
    if values.size > nb * block:
        maxima = np.append(maxima, values[nb * block :].max())
    t = np.partition(maxima, maxima.size - n)[maxima.size - n]  # n-th largest block maximum
    cand = np.flatnonzero(values >= t)  # ascending indices, so the stable sort keeps ties in index order
    return cand[np.argsort(-values[cand], kind="stable")[:n]]


def distribution(logits: np.ndarray, params: SamplingParams, history: Iterable[int] = ()) -> Distribution:
    """The filtered, renormalized distribution the draw uses.  logits: (V,) for one position."""
    logits = np.asarray(logits).reshape(-1)
    if params.repetition_penalty != 1.0:
        hist = list(history)
        if params.repetition_context:
            hist = hist[-params.repetition_context :]
        logits = apply_repetition_penalty(logits.astype(np.float64), hist, params.repetition_penalty)
    if params.greedy:  # float32 -> float64 is exact, so the argmax needs no conversion
        return Distribution(np.array([int(np.argmax(logits))]), np.array([1.0]))
    logits = logits.astype(np.float64, copy=False)
    # Most probable first (ties: lower id first). Top-k keeps a prefix of k, and every later filter sees
    # renormalized probabilities, so with top-k on only those k are sorted and normalized.
    order = descending_order(logits, params.top_k)
    probs = np.exp(log_softmax(logits[order] / params.temperature))  # (V,) or (k,), sorted descending
    keep = top_k_mask(probs, params.top_k)
    # Each later filter sees the renormalized output of the earlier ones (HF warper order).
    kept = probs * keep
    keep &= top_p_mask(kept / kept.sum(), params.top_p)
    kept = probs * keep
    keep &= min_p_mask(kept / kept.sum(), params.min_p)
    n = int(keep.sum())  # every mask keeps a prefix, so the kept set is the first n tokens
    p = probs[:n] / probs[:n].sum()
    return Distribution(order[:n].astype(np.int64), p)


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

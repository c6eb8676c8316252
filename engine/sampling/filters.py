"""The sampler's filters as small pure functions over one position's logits, numpy float64 on the host.

Pipeline, in this order:
    repetition penalty -> temperature -> top-k -> top-p -> min-p -> renormalize
Each filter sees the renormalized output of the one before (Hugging Face's warper order) and keeps a prefix
of the tokens sorted by probability, at least one. `distribution()` is the whole pipeline; `filter_masks()`
is its filter part on probabilities already sorted, which the Chat tab's distribution view reuses on a
step's stored top log-probabilities. Every filter has an exact-number test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tiny_llm_playground.engine.sampling.params import SamplingParams


@dataclass(frozen=True)
class Distribution:
    """What the sampler drew from: kept token ids (most probable first) and their renormalized probs."""

    token_ids: np.ndarray  # (n,) int64
    probs: np.ndarray  # (n,) float64, sums to 1


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


def filter_masks(
    probs_sorted: np.ndarray, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept set after top-k, after top-k then top-p, and after all three, as boolean masks over
    probabilities sorted descending (each mask keeps a prefix, at least the first token). Each filter sees
    the renormalized output of the ones before it (Hugging Face's warper order)."""
    keep_k = top_k_mask(probs_sorted, top_k)
    kept = probs_sorted * keep_k
    keep_p = keep_k & top_p_mask(kept / kept.sum(), top_p)
    kept = probs_sorted * keep_p
    return keep_k, keep_p, keep_p & min_p_mask(kept / kept.sum(), min_p)


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
    keep = filter_masks(probs, params.top_k, params.top_p, params.min_p)[-1]
    n = int(keep.sum())  # every mask keeps a prefix, so the kept set is the first n tokens
    p = probs[:n] / probs[:n].sum()
    return Distribution(order[:n].astype(np.int64), p)

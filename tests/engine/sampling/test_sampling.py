"""Sampling filters with exact numbers, parameter validation, and seeded draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_llm_playground.engine.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    descending_order,
    distribution,
    log_softmax,
    min_p_mask,
    top_indices,
    top_k_mask,
    top_p_mask,
)

P = np.array([0.05, 0.5, 0.1, 0.2, 0.15])  # token 1 > 3 > 4 > 2 > 0
LOGITS = np.log(P)


def dist(**kw):
    d = distribution(LOGITS, SamplingParams(**kw))
    return dict(zip(d.token_ids.tolist(), d.probs.tolist(), strict=True))


def approx(d: dict, expected: dict) -> None:
    assert list(d) == list(expected), f"kept {list(d)}, expected {list(expected)}"
    for t, p in expected.items():
        assert d[t] == pytest.approx(p, abs=1e-12), f"token {t}: {d[t]} != {p}"


def test_temperature_one_keeps_the_model_distribution():
    approx(dist(temperature=1.0), {1: 0.5, 3: 0.2, 4: 0.15, 2: 0.1, 0: 0.05})


def test_temperature_two_takes_square_roots():
    r = np.sqrt(P)
    expected = {t: r[t] / r.sum() for t in (1, 3, 4, 2, 0)}
    approx(dist(temperature=2.0), expected)


def test_greedy_is_argmax_with_probability_one():
    approx(dist(temperature=0.0), {1: 1.0})


def test_top_k_two():
    approx(dist(temperature=1.0, top_k=2), {1: 0.5 / 0.7, 3: 0.2 / 0.7})


def test_top_k_larger_than_vocab_keeps_all():
    assert len(dist(temperature=1.0, top_k=99)) == 5


def test_top_p_keeps_the_token_that_crosses_p():
    # mass before: 1 -> 0, 3 -> 0.5, 4 -> 0.7. With p = 0.6 tokens 1 and 3 stay.
    approx(dist(temperature=1.0, top_p=0.6), {1: 0.5 / 0.7, 3: 0.2 / 0.7})


def test_top_p_exactly_at_a_boundary_drops_the_next_token():
    approx(dist(temperature=1.0, top_p=0.5), {1: 1.0})


def test_top_p_tiny_keeps_the_top_token():
    approx(dist(temperature=1.0, top_p=1e-9), {1: 1.0})


def test_min_p_threshold_relative_to_top():
    # min_p 0.3 * 0.5 = 0.15: tokens 1, 3, 4 stay (0.15 >= 0.15).
    approx(dist(temperature=1.0, min_p=0.3), {1: 0.5 / 0.85, 3: 0.2 / 0.85, 4: 0.15 / 0.85})


def test_filters_compose_in_order_top_k_then_top_p_then_min_p():
    # top_k 3 -> {1: .5/.85, 3: .2/.85, 4: .15/.85}; top_p 0.8: mass before 4 = .7/.85 = .8235 >= .8
    approx(dist(temperature=1.0, top_k=3, top_p=0.8), {1: 0.5 / 0.7, 3: 0.2 / 0.7})
    # then min_p 0.5 on {.714, .286}: .286 < .357 -> only token 1
    approx(dist(temperature=1.0, top_k=3, top_p=0.8, min_p=0.5), {1: 1.0})


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    out = apply_repetition_penalty(np.array([2.0, -2.0, 1.0]), [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_repetition_penalty_changes_the_greedy_choice():
    logits = np.array([3.0, 2.0, 0.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert distribution(logits, params, history=[0]).token_ids.tolist() == [1]
    assert distribution(logits, params, history=[2]).token_ids.tolist() == [0]


def test_repetition_context_limits_the_window():
    logits = np.array([3.0, 2.0, 0.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0, repetition_context=2)
    assert distribution(logits, params, history=[0, 2, 2]).token_ids.tolist() == [0]


def test_seeded_sampler_is_reproducible_and_matches_frequencies():
    params = SamplingParams(temperature=1.0, seed=1234)
    a = [Sampler(params)(LOGITS).token for _ in range(1)]
    s1, s2 = Sampler(params), Sampler(params)
    seq1 = [s1(LOGITS).token for _ in range(4000)]
    seq2 = [s2(LOGITS).token for _ in range(4000)]
    assert seq1 == seq2 and a[0] == seq1[0]
    freq = np.bincount(seq1, minlength=5) / len(seq1)
    assert np.abs(freq - P).max() < 0.03, freq


def test_sample_record_reports_raw_logprobs_and_kept_probability():
    rec = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0, logprobs=3))(LOGITS)
    assert rec.token in (1, 3)
    assert rec.top_ids == (1, 3, 4)
    assert rec.top_logprobs == pytest.approx((math.log(0.5), math.log(0.2), math.log(0.15)))
    assert rec.logprob == pytest.approx(math.log(P[rec.token]))
    assert rec.prob == pytest.approx({1: 0.5 / 0.7, 3: 0.2 / 0.7}[rec.token])


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.2}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ("",)}, "stop"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_invalid_sampling_params_are_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingParams(**kw)


def _reference_distribution(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The filters written the slow, obvious way: a full stable sort, softmax over the whole vocabulary."""
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(log_softmax(logits[order] / params.temperature))
    keep = top_k_mask(probs, params.top_k)
    kept = probs * keep
    keep &= top_p_mask(kept / kept.sum(), params.top_p)
    kept = probs * keep
    keep &= min_p_mask(kept / kept.sum(), params.min_p)
    n = int(keep.sum())
    return order[:n], probs[:n] / probs[:n].sum()


def test_descending_order_is_the_stable_argsort_with_ties_zeros_and_infinities():
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, 3.25e-38, -1e-45, 1e30], dtype=np.float32)
    for trial in range(120):
        n = int(rng.integers(1, 2000))
        if trial % 2:
            x = rng.choice(specials, n)  # mostly ties
        else:
            x = (rng.standard_normal(n) * 10).astype(np.float32).round(trial % 3)
        x = x.astype(np.float64)
        expected = np.argsort(-x, kind="stable")
        assert np.array_equal(descending_order(x), expected), trial
        k = int(rng.integers(1, n + 1))
        assert np.array_equal(descending_order(x, k), expected[:k]), (trial, k)
    penalized = np.array([1.0, 1.0 / 1.3, 0.5, 1.0 / 1.3])  # not float32 numbers: the stable sort path
    assert descending_order(penalized).tolist() == [0, 1, 3, 2]


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.7},
        {"temperature": 1.3, "top_k": 40},
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "min_p": 0.05},
        {"temperature": 0.5, "min_p": 0.1},
    ],
)
def test_distribution_matches_the_full_sort_reference_on_a_real_sized_vocabulary(kw):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(151_936) * 3).astype(np.float32)
    logits[:500] = logits[500:1000]  # ties
    params = SamplingParams(**kw)
    d = distribution(logits, params)
    ids, probs = _reference_distribution(logits.astype(np.float64), params)
    assert np.array_equal(d.token_ids, ids)
    np.testing.assert_allclose(d.probs, probs, rtol=1e-12, atol=1e-15)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-4, 4), min_size=1, max_size=700),
    st.integers(0, 40),
    st.integers(1, 64),
    st.booleans(),
)
def test_top_indices_is_a_stable_descending_sort_prefix(ints, n, block, use_floats):
    """top_indices (block maxima, then a threshold) gives exactly the first n of the stable descending
    argsort, ties (many, with small integers) in index order."""
    values = np.array(ints, dtype=np.float64)
    if use_floats:
        values = values + np.random.default_rng(len(ints)).standard_normal(values.size)
    want = np.argsort(-values, kind="stable")[:n]
    np.testing.assert_array_equal(top_indices(values, n, block=block), want)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.7},
        {"temperature": 1.0, "top_p": 0.9},
        {"temperature": 1.3, "min_p": 0.05},
        {"temperature": 0.8, "top_p": 0.95, "min_p": 0.02},
        {"temperature": 2.0, "top_p": 0.5},
    ],
)
def test_large_vocab_draw_equals_full_distribution_draw(kw):
    """On a 152k vocabulary without top-k the sampler looks at the 256 most probable tokens first and
    sorts everything only when the draw (or the top-p / min-p cut) lies past them. Either way the token and
    its probability must be those of distribution() + rng.choice with the same seed: peaked rows (the
    prefix decides) and flat rows (it falls back) both."""
    rng = np.random.default_rng(len(kw))
    for trial in range(16):
        x = (rng.standard_normal(151936) * rng.uniform(1, 6)).astype(np.float32)
        if trial % 2 == 0:
            x[rng.integers(0, x.size, 40)] += 10.0  # peaked: a few tokens hold most of the mass
        params = SamplingParams(seed=trial, **kw)
        got = Sampler(params)(x)
        d = distribution(x, params)
        idx = 0 if d.probs.size == 1 else int(np.random.default_rng(trial).choice(d.probs.size, p=d.probs))
        assert got.token == int(d.token_ids[idx]), (kw, trial)
        assert got.prob == pytest.approx(float(d.probs[idx]), rel=1e-9, abs=1e-12)
        assert got.kept.token_ids[0] == d.token_ids[0]

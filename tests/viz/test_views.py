"""viz/: every figure holds the values it was given (pure functions, no engine, no browser)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import plotly.graph_objects as go
import pytest

from tests.utils import assert_allclose
from tiny_llm_playground.engine.sampling import SamplingParams, distribution, log_softmax
from tiny_llm_playground.viz.attention import (
    attention_heatmap,
    attention_overview,
    attention_overview_html,
    gqa_groups,
    head_metrics,
)
from tiny_llm_playground.viz.layout import OKABE_ITO, power_colorscale, tick_labels
from tiny_llm_playground.viz.lens import logit_lens_table
from tiny_llm_playground.viz.rope import (
    inv_frequencies,
    relative_scores,
    rope_angle_heatmap,
    rope_pairs,
    rope_relative_scores,
    rope_spectrum,
    rotate,
)
from tiny_llm_playground.viz.sampling import filtered, sampling_distribution


def causal_probs(L: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.tril(rng.random((L, L)) + 0.01)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


# ----- attention -----


def test_attention_heatmap_holds_the_matrix_and_names_both_tokens():
    probs = causal_probs(5)
    toks = ["def", "␣f", "(", "x", ")"]
    fig = attention_heatmap(probs, toks, layer=3, head=7)
    hm = fig.data[0]
    z = np.array(hm.z, dtype=float)
    lower = np.tril(np.ones((5, 5), dtype=bool))
    np.testing.assert_array_equal(z[lower], probs[lower])
    assert np.isnan(z[~lower]).all(), "future keys are blank, not zero"
    assert list(hm.y) == list(hm.x) == ["0:def", "1:␣f", "2:(", "3:x", "4:)"]
    assert "→" in hm.hovertemplate and "%{y}" in hm.hovertemplate and "%{x}" in hm.hovertemplate
    assert "layer 3" in fig.layout.title.text and "head 7" in fig.layout.title.text
    assert hm.zsmooth is False


def test_attention_heatmap_keeps_full_matrix_at_400_tokens_with_thinned_ticks():
    probs = causal_probs(400)
    fig = attention_heatmap(probs, [f"t{i}" for i in range(400)], 0, 0)
    assert np.array(fig.data[0].z).shape == (400, 400), "no pooling: every query/key pair is a cell"
    assert len(fig.layout.xaxis.tickvals) <= 29
    assert "zoom" in fig.layout.title.text


def test_attention_heatmap_rejects_mismatched_tokens():
    with pytest.raises(ValueError):
        attention_heatmap(causal_probs(4), ["a", "b"], 0, 0)


def test_head_metrics_exact_values():
    L = 4
    one_hot_prev = np.zeros((1, L, L))
    one_hot_prev[0, 0, 0] = 1
    for i in range(1, L):
        one_hot_prev[0, i, i - 1] = 1  # "previous token" head
    uniform = np.tril(np.ones((L, L)))[None] / np.arange(1, L + 1)[:, None]
    m = head_metrics(np.concatenate([one_hot_prev, uniform]))
    assert_allclose(m["entropy"], [0.0, np.mean(np.log2([1, 2, 3, 4]))], 1e-9, 1e-12, "entropy")
    assert_allclose(m["distance"], [0.75, np.mean([0, 0.5, 1.0, 1.5])], 1e-9, 1e-12, "distance")


class FakeLayer:
    def __init__(self, layer, probs):
        self.layer, self.probs = layer, probs


class FakeResult:
    def __init__(self, attention):
        self.attention = attention


def test_attention_overview_is_layers_by_heads_and_marks_selection():
    probs = np.stack([causal_probs(6, s) for s in range(3)])  # 3 heads
    res = FakeResult([FakeLayer(0, probs), FakeLayer(2, probs[::-1].copy())])
    fig = attention_overview(res, "distance", selected=(2, 1))
    z = np.array(fig.data[0].z)
    assert z.shape == (2, 3) and list(fig.data[0].y) == [0, 2]
    assert_allclose(z[0], head_metrics(probs)["distance"], 1e-9, 1e-12, "overview values")
    (rect,) = fig.layout.shapes
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (0.5, 1.5, 1.5, 2.5)
    with pytest.raises(ValueError):
        attention_overview(res, "nope")


def test_attention_overview_html_is_a_clickable_grid_with_the_same_values():
    probs = np.stack([causal_probs(6, s) for s in range(3)])  # 3 heads
    res = FakeResult([FakeLayer(0, probs), FakeLayer(2, probs[::-1].copy())])
    out = attention_overview_html(res, "distance", selected=(2, 1))
    assert out.count("<td ") == 6 and out.count('class="sel"') == 1
    assert '<td data-l="2" data-h="1" class="sel"' in out
    dist = head_metrics(probs)["distance"]
    for h in range(3):
        assert f'title="layer 0 · head {h}: {dist[h]:.2f} tokens"' in out
    assert f"<span>{dist.min():.2f}</span>" in out and f"<span>{dist.max():.2f} tokens</span>" in out
    with pytest.raises(ValueError):
        attention_overview_html(res, "nope")


def test_gqa_groups_connects_each_query_head_to_its_kv_head():
    fig = gqa_groups(14, 2)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 14
    kv_of = {}
    kv_x = {t.x[0]: int(t.text[0][2:]) for t in fig.data if t.mode == "markers+text" and t.y[0] == 0}
    for t in lines:
        kv_of[t.x[0]] = kv_x[t.x[1]]
    assert kv_of == {h: h // 7 for h in range(14)}
    colors = {t.line.color for t in lines}
    assert colors == set(OKABE_ITO[:2])
    with pytest.raises(ValueError):
        gqa_groups(14, 3)


# ----- RoPE -----


def test_numpy_rotate_equals_mx_fast_rope():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 64)).astype(np.float32)  # (H, L, D)
    ours = rotate(x, np.arange(9)[None, :] + 5, 1e6)
    ref = mx.fast.rope(mx.array(x)[None], 64, traditional=False, base=1e6, scale=1.0, offset=5)[0]
    assert_allclose(ours, ref, 1e-4, 1e-5, "rotate vs mx.fast.rope")


def test_rope_pairs_holds_before_and_after_points():
    rng = np.random.default_rng(1)
    before = rng.standard_normal(8)
    after = rotate(before, 3, 10_000.0)
    fig = rope_pairs(before, after, 3)
    b = next(t for t in fig.data if t.name == "before RoPE")
    a = next(t for t in fig.data if (t.name or "").startswith("after"))
    np.testing.assert_array_equal(b.x, before[:4])
    np.testing.assert_array_equal(b.y, before[4:])
    np.testing.assert_allclose(np.hypot(a.x, a.y), np.hypot(b.x, b.y), rtol=1e-12)  # lengths kept


def test_rope_spectrum_and_angles_hold_the_frequencies():
    fig = rope_spectrum(64, 1e6, context=32768)
    np.testing.assert_allclose(fig.data[0].y, 2 * np.pi / inv_frequencies(64, 1e6))
    assert fig.data[0].y[0] == pytest.approx(2 * np.pi) and fig.layout.yaxis.type == "log"
    heat = rope_angle_heatmap([0, 1, 10], 8, 10_000.0)
    z = np.array(heat.data[0].z)
    np.testing.assert_allclose(z[2], np.mod(10 * inv_frequencies(8, 10_000.0), 2 * np.pi))


def test_rope_relative_scores_depend_only_on_distance():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal(64), rng.standard_normal(64)
    fig = rope_relative_scores(q, k, 1e6, max_distance=50, offsets=(0, 200))
    c0, c1 = fig.data[0].y, fig.data[1].y
    np.testing.assert_allclose(c0, c1, atol=1e-9)
    # distance d: rotate q to position d, k to 0, dot — the definition, spelled out
    d = 17
    expected = rotate(q, d, 1e6) @ rotate(k, 0, 1e6) / 8.0
    assert c0[d] == pytest.approx(expected)
    assert c0[0] == pytest.approx(q @ k / 8.0), "distance 0 equals the score without RoPE"
    assert relative_scores(q, k, 1e6, np.array([3]), 0)[0] == pytest.approx(c0[3])


# ----- logit lens -----


def test_logit_lens_table_cells_are_top_tokens_and_colour_is_prob():
    toks = [[["a", "b"], ["c", "d"], ["e", "f"]], [["g", "h"], ["<i>", "j"], ["k", "l"]]]
    probs = np.array([[[0.5, 0.2], [0.4, 0.1], [0.9, 0.05]], [[0.3, 0.3], [0.8, 0.1], [0.6, 0.2]]])
    fig = logit_lens_table(toks, probs, ["x", "y", "z"], layers=[0, 23])
    hm = fig.data[0]
    np.testing.assert_array_equal(np.array(hm.z), probs[:, :, 0])
    assert [list(r) for r in hm.text] == [["a", "c", "e"], ["g", "<i>", "k"]]
    assert list(hm.y) == ["L0", "L23"] and list(hm.x) == ["0:x", "1:y", "2:z"]
    assert "&lt;i&gt;" in hm.customdata[1][1], "hover text is escaped HTML"
    with pytest.raises(ValueError):
        logit_lens_table(toks, probs, ["x", "y"])


# ----- sampling -----


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=0.9, min_p=0.1),
        SamplingParams(temperature=1.1, top_k=12, top_p=0.9, min_p=0.05),
        SamplingParams(temperature=0.0),
    ],
)
def test_filtered_matches_engine_sampling_on_a_full_vocabulary(params):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(40) * 2
    lp = np.sort(log_softmax(logits))[::-1]  # the whole vocabulary, sorted: the recompute is exact
    ref = distribution(logits, params)
    f = filtered(lp, params.temperature, params.top_k, params.top_p, params.min_p)
    n = int(f.kept.sum())
    assert n == ref.token_ids.size
    assert_allclose(f.final[:n], ref.probs, 1e-9, 1e-12, "kept probabilities")
    assert np.all(f.final[n:] == 0) and all(c for c in f.cut_by[n:]) and not any(f.cut_by[:n])


def test_sampling_distribution_marks_cuts_and_draw():
    lp = np.log(np.array([0.5, 0.2, 0.1, 0.05, 0.05]))
    fig = sampling_distribution(list("abcde"), lp, temperature=1.0, top_k=3, drawn=1)
    raw, final = fig.data
    np.testing.assert_allclose(raw.y, np.exp(lp))
    np.testing.assert_allclose(final.y, [0.625, 0.25, 0.125, 0, 0])
    assert list(final.text) == ["", "", "", "top-k", "top-k"]
    assert final.marker.color[1] == "#D55E00", "the drawn token is vermillion"
    assert any("top-k = 3" in (a.text or "") for a in fig.layout.annotations)


def test_layout_helpers():
    vals, text = tick_labels([str(i) for i in range(100)], max_ticks=10)
    assert len(vals) <= 10 and vals[0] == 0 and vals[-1] == 99 and text[-1] == "99"
    cs = power_colorscale(0.5)
    assert cs[0][0] == 0.0 and cs[-1][0] == pytest.approx(1.0)
    assert isinstance(go.Figure(), go.Figure)

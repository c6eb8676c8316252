"""engine.inspect on a tiny random Qwen2: the recorded attention, q/k and hidden states are the real ones.

References are independent of the inspect path: attention probabilities are recomputed with numpy from the
recorded post-RoPE q/k, RoPE is checked against mx.fast.rope, and the final logits against the model's own
forward (which uses the same weights through Model.__call__).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import TINY_CONFIG, assert_allclose, tiny_weights
from tiny_llm_playground.engine.inspect import InspectResult, inspect_forward, logit_lens
from tiny_llm_playground.engine.models.qwen2 import Model, ModelArgs, sanitize

IDS = [5, 17, 42, 99, 3, 250, 17, 8, 64, 120, 7]


@pytest.fixture(scope="module")
def model() -> Model:
    args = ModelArgs.from_dict(TINY_CONFIG)
    return Model(args, sanitize(tiny_weights(TINY_CONFIG, seed=3), args), backend="ref")


@pytest.fixture(scope="module")
def result(model) -> InspectResult:
    return inspect_forward(model, IDS, lens_positions=None, lens_top=5)


def _ref_probs(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """softmax(q k^T * scale + causal mask) in float64; q (L, D), k (L, D)."""
    s = (q.astype(np.float64) @ k.astype(np.float64).T) * scale
    L = s.shape[0]
    s = np.where(np.tril(np.ones((L, L), dtype=bool)), s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def test_shapes_and_metadata(result, model):
    a = model.args
    L = len(IDS)
    assert result.token_ids == tuple(IDS) and result.length == L
    assert (result.n_layers, result.n_heads, result.n_kv_heads) == (2, 4, 2)
    assert result.layers == (0, 1)
    att = result.layer(1)
    assert att.probs.shape == (a.num_attention_heads, L, L)
    assert att.q_pre.shape == att.q_post.shape == (4, L, a.head_dim)
    assert att.k_pre.shape == att.k_post.shape == (2, L, a.head_dim)
    assert result.hidden.shape == (2, L, a.hidden_size)
    assert result.final_hidden.shape == (L, a.hidden_size)
    assert all(x.dtype == np.float32 for x in (att.probs, att.q_pre, result.hidden, result.final_logits))
    assert not att.probs.flags.writeable, "frozen results hold read-only arrays"


def test_attention_rows_sum_to_one_and_are_causal(result):
    for att in result.attention:
        assert_allclose(att.probs.sum(axis=-1), np.ones(att.probs.shape[:2]), 1e-5, 1e-5, "row sums")
        upper = np.triu(np.ones(att.probs.shape[-2:], dtype=bool), k=1)
        assert np.all(att.probs[:, upper] == 0.0), "a query attended to a later key"
        assert np.all(att.probs[:, 0, 0] == 1.0), "the first token can only attend to itself"


def test_attention_equals_softmax_of_recorded_q_k(result, model):
    scale = model.args.head_dim**-0.5
    for att in result.attention:
        for h in range(result.n_heads):
            kv = att.kv_head(h)
            ref = _ref_probs(att.q_post[h], att.k_post[kv], scale)
            assert_allclose(att.probs[h], ref, 1e-4, 1e-6, f"layer {att.layer} head {h}")


def test_gqa_grouping_is_head_over_group_size(result):
    att = result.layer(0)
    assert [att.kv_head(h) for h in range(4)] == [0, 0, 1, 1]


def test_post_rope_q_and_k_equal_mx_fast_rope(result, model):
    D, base = model.args.head_dim, model.args.rope_theta
    for att in result.attention:
        for pre, post in ((att.q_pre, att.q_post), (att.k_pre, att.k_post)):
            ref = mx.fast.rope(mx.array(pre)[None], D, traditional=False, base=base, scale=1.0, offset=0)
            assert_allclose(post, ref[0], 1e-5, 1e-5, f"layer {att.layer} rope")


def test_final_logits_and_hidden_match_the_model_forward(result, model):
    logits = model(mx.array([IDS]))  # (1, L, V), the normal forward
    assert_allclose(result.final_logits, logits[0, -1], 1e-4, 1e-4, "last-position logits")
    assert_allclose(result.final_hidden, model.hidden_states(mx.array([IDS]))[0], 1e-5, 1e-5, "final hidden")


def test_layer_selection_keeps_only_those_layers(model, result):
    r = inspect_forward(model, IDS, layers=[1])
    assert r.layers == (1,)
    assert_allclose(r.layer(1).probs, result.layer(1).probs, 0, 0, "same attention")
    assert r.hidden.shape[0] == 2 and r.lens is None
    with pytest.raises(KeyError):
        r.layer(0)


def test_logit_lens_last_layer_is_the_models_own_top_tokens(result, model):
    lens = result.lens
    assert lens is not None and lens.positions == tuple(range(len(IDS)))
    assert lens.token_ids.shape == lens.probs.shape == (2, len(IDS), 5)
    logits = np.array(model(mx.array([IDS]))[0], dtype=np.float64)  # (L, V)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, :5]
    np.testing.assert_array_equal(lens.token_ids[-1], top)
    assert_allclose(lens.probs[-1], np.take_along_axis(probs, top, -1), 1e-4, 1e-6, "lens probs")
    assert np.all(np.diff(lens.probs, axis=-1) <= 0), "top tokens come most probable first"


def test_logit_lens_of_some_positions_matches_the_full_lens(result, model):
    lens = logit_lens(result, model, top=3, positions=[0, 7])
    np.testing.assert_array_equal(lens.token_ids, result.lens.token_ids[:, [0, 7], :3])


def test_bad_input_raises_value_error(model, result):
    with pytest.raises(ValueError, match="empty"):
        inspect_forward(model, [])
    with pytest.raises(ValueError, match="out of range"):
        inspect_forward(model, [1, 10_000])
    with pytest.raises(ValueError, match="do not exist"):
        inspect_forward(model, IDS, layers=[5])
    with pytest.raises(ValueError, match="positions"):
        logit_lens(result, model, positions=[len(IDS)])


# ----- Engine.inspect: the same work, done on the engine thread -----


def test_engine_inspect_runs_on_the_engine_thread_and_returns_numpy(tiny_model_dir):
    import threading

    from tiny_llm_playground.engine import Engine
    from tiny_llm_playground.engine.loader import load_model

    eng = Engine(str(tiny_model_dir))
    try:
        eng.wait_ready(60)
        threads = []
        r = eng.inspect([1, 2, 3, 4], layers=[0])
        eng.run_on_engine_thread(lambda lm: threads.append(threading.current_thread().name))
        assert threads == ["engine"]
        assert r.layers == (0,) and r.layer(0).probs.shape == (4, 4, 4)
        direct = inspect_forward(load_model(str(tiny_model_dir)).model, [1, 2, 3, 4], layers=[0])
        assert_allclose(r.layer(0).probs, direct.layer(0).probs, 1e-6, 1e-6, "engine vs direct")
        with pytest.raises(ValueError, match="out of range"):  # the error comes back; the engine survives
            eng.inspect([10_000])
        assert eng.inspect([7]).length == 1
    finally:
        eng.shutdown()

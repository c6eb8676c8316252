"""The whole Qwen2 model (tiny random weights) against mlx-lm's Qwen2 with the same weights."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import TINY_CONFIG, assert_allclose, tiny_weights
from tiny_llm_playground.engine.models.qwen2 import Model, ModelArgs, sanitize


def reference_model(config: dict, weights: dict[str, mx.array]):
    from mlx_lm.models import qwen2 as ref

    model = ref.Model(ref.ModelArgs(**config))
    model.load_weights(list(weights.items()), strict=True)
    return model


def ours(config: dict, weights: dict[str, mx.array], backend: str | None = "ref") -> Model:
    args = ModelArgs.from_dict(config)
    return Model(args, sanitize(weights, args), backend=backend)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_logits_match_mlx_lm(tied, heads):
    cfg = TINY_CONFIG | {
        "tie_word_embeddings": tied, "num_attention_heads": heads[0], "num_key_value_heads": heads[1]
    }  # fmt: skip
    w = tiny_weights(cfg, seed=3)
    ids = mx.array([[5, 17, 299, 0, 42, 42, 7, 128, 3]])
    assert_allclose(ours(cfg, w)(ids), reference_model(cfg, w)(ids), 1e-4, 1e-4, what="logits")


def test_batch_rows_are_independent():
    w = tiny_weights(TINY_CONFIG)
    m = ours(TINY_CONFIG, w)
    ids = mx.array([[1, 2, 3, 4], [9, 8, 7, 6]])
    both = m(ids)
    for b in range(2):
        assert_allclose(both[b], m(ids[b : b + 1])[0], 1e-5, 1e-5, what=f"row {b}")


@pytest.mark.parametrize("chunks", [[9], [1] * 9, [4, 5], [2, 3, 4]])
def test_cached_chunks_match_one_full_forward(chunks):
    w = tiny_weights(TINY_CONFIG)
    m = ours(TINY_CONFIG, w)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    full = m(mx.array([ids]))
    cache = m.make_cache()
    outs, pos = [], 0
    for n in chunks:
        outs.append(m(mx.array([ids[pos : pos + n]]), cache))
        pos += n
    assert cache[0].offset == len(ids)
    assert_allclose(mx.concatenate(outs, axis=1), full, 1e-4, 1e-4, what="chunked")


def test_cache_matches_mlx_lm_cache_step_by_step():
    from mlx_lm.models.cache import make_prompt_cache

    w = tiny_weights(TINY_CONFIG, seed=5)
    m, ref = ours(TINY_CONFIG, w), reference_model(TINY_CONFIG, w)
    cache, ref_cache = m.make_cache(), make_prompt_cache(ref)
    prompt = mx.array([[10, 20, 30]])
    assert_allclose(m(prompt, cache), ref(prompt, cache=ref_cache), 1e-4, 1e-4, what="prefill")
    for t in [7, 8, 9, 250]:
        x = mx.array([[t]])
        assert_allclose(m(x, cache), ref(x, cache=ref_cache), 1e-4, 1e-4, what=f"decode {t}")


def test_last_only_equals_last_row():
    m = ours(TINY_CONFIG, tiny_weights(TINY_CONFIG))
    ids = mx.array([[1, 2, 3, 4, 5]])
    assert_allclose(m(ids, last_only=True)[:, 0], m(ids)[:, -1], 1e-6, 1e-6, what="last")


def test_fast_backend_matches_readable_path():
    from tiny_llm_playground import kernels

    if kernels.backend_for("linear") == "ref":
        pytest.skip("no fast kernel backend built")
    w = tiny_weights(TINY_CONFIG)
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7]])
    assert_allclose(ours(TINY_CONFIG, w, None)(ids), ours(TINY_CONFIG, w)(ids), 1e-4, 1e-4, what="fast")


def test_model_args_validation_and_unknown_fields_ignored():
    args = ModelArgs.from_dict(TINY_CONFIG | {"some_hf_field": 1, "head_dim": None})
    assert args.head_dim == 16
    with pytest.raises(ValueError, match="multiple"):
        ModelArgs.from_dict(TINY_CONFIG | {"num_key_value_heads": 3})
    with pytest.raises(ValueError, match="qwen2"):
        ModelArgs.from_dict(TINY_CONFIG | {"model_type": "llama"})


def test_missing_weight_is_reported():
    w = tiny_weights(TINY_CONFIG)
    del w["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="missing 1 weights"):
        ours(TINY_CONFIG, w)


@pytest.mark.parametrize("backend", ["ref", None])
def test_greedy_tokens_are_finite_and_deterministic(backend):
    """The same weights and prompt give bit-identical logits on every run (two forwards, two freshly built
    models), and so the same greedy tokens, step by step with a cache."""
    w = tiny_weights(TINY_CONFIG)
    a, b = ours(TINY_CONFIG, w, backend), ours(TINY_CONFIG, w, backend)
    ids = mx.array([[1, 2, 3]])
    first = np.array(a(ids))
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(np.array(a(ids)), first)
    np.testing.assert_array_equal(np.array(b(ids)), first)

    def greedy(model) -> list[int]:
        cache, out, x = model.make_cache(), [], ids
        for _ in range(12):
            tok = int(mx.argmax(model(x, cache)[0, -1]))
            out.append(tok)
            x = mx.array([[tok]])
        return out

    runs = [greedy(a), greedy(a), greedy(b)]
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) > 1, "a constant sequence would hide a broken cache"


@pytest.mark.parametrize("backend", ["ref", None])
def test_non_causal_attention_lets_every_token_see_every_token(backend):
    """mask=None: bidirectional attention (an encoder's). It equals the reference attention with no mask,
    and an early token's output then depends on a later token (it does not with the causal default)."""
    from tiny_llm_playground.engine.layers import scaled_dot_product_attention

    w = tiny_weights(TINY_CONFIG)
    m = ours(TINY_CONFIG, w, backend)
    ids, changed = mx.array([[1, 2, 3, 4]]), mx.array([[1, 2, 3, 99]])
    causal_diff = np.abs(np.array(m(ids)[0, 0] - m(changed)[0, 0])).max()
    full_diff = np.abs(np.array(m(ids, mask=None)[0, 0] - m(changed, mask=None)[0, 0])).max()
    assert causal_diff == 0 and full_diff > 1e-4
    attn = m.layers[0].self_attn
    x = mx.random.normal((1, 4, TINY_CONFIG["hidden_size"]), key=mx.random.key(0))
    q, k, v = attn.qkv(x)
    q = attn.rope(q.reshape(1, 4, attn.n_heads, attn.head_dim).transpose(0, 2, 1, 3))
    k = attn.rope(k.reshape(1, 4, attn.n_kv_heads, attn.head_dim).transpose(0, 2, 1, 3))
    v = v.reshape(1, 4, attn.n_kv_heads, attn.head_dim).transpose(0, 2, 1, 3)
    want = scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=None)
    want = attn.o_proj(want.transpose(0, 2, 1, 3).reshape(1, 4, -1))
    assert_allclose(attn(x, mask=None), want, 1e-4, 1e-4, what="non-causal layer")
    with pytest.raises(ValueError, match="causal"):
        m(ids, m.make_cache(), mask=None)


def test_models_are_found_by_model_type():
    from tiny_llm_playground.engine.models import model_module, supported_model_types

    assert "qwen2" in supported_model_types()
    assert model_module("qwen2").Model is Model
    with pytest.raises(ValueError, match="unsupported model type 'llama'.*qwen2"):
        model_module("llama")
    with pytest.raises(ValueError, match="unsupported"):
        model_module("../qwen2")


@pytest.mark.parametrize("backend", ["ref", None])
def test_a_batch_through_one_cache_equals_each_row_alone(backend):
    """model(ids (B, L), model.make_cache()): the course's cache takes B rows; prefill then decode steps
    give each row's own logits."""
    m = ours(TINY_CONFIG, tiny_weights(TINY_CONFIG), backend)
    rows = [[1, 2, 3, 4], [9, 8, 7, 6]]
    both, alone = m.make_cache(), [m.make_cache() for _ in rows]
    out = m(mx.array(rows), both)
    for b, row in enumerate(rows):
        assert_allclose(out[b], m(mx.array([row]), alone[b])[0], 1e-4, 1e-4, what=f"prefill row {b}")
    for t in (5, 11, 42):
        out = m(mx.array([[t], [t + 1]]), both)
        for b in range(2):
            want = m(mx.array([[t + b]]), alone[b])[0]
            assert_allclose(out[b], want, 1e-4, 1e-4, what=f"decode {t} row {b}")

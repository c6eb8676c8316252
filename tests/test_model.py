"""The whole Qwen2 model (tiny random weights) against mlx-lm's Qwen2 with the same weights."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.cache import DenseKVCache
from engine.models.qwen2 import ModelArgs, Qwen2Model, sanitize
from tests.utils import TINY_CONFIG, assert_allclose, tiny_weights


def reference_model(config: dict, weights: dict[str, mx.array]):
    from mlx_lm.models import qwen2 as ref

    model = ref.Model(ref.ModelArgs(**config))
    model.load_weights(list(weights.items()), strict=True)
    return model


def ours(config: dict, weights: dict[str, mx.array], backend: str | None = "ref") -> Qwen2Model:
    args = ModelArgs.from_dict(config)
    return Qwen2Model(args, sanitize(weights, args), backend=backend)


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
    import kernels

    if kernels.backend_for("linear") == "ref":
        pytest.skip("no fast kernel backend built")
    w = tiny_weights(TINY_CONFIG)
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7]])
    assert_allclose(ours(TINY_CONFIG, w, None)(ids), ours(TINY_CONFIG, w)(ids), 1e-4, 1e-4, what="fast")


def test_dense_cache_grows_rewinds_and_releases():
    c = DenseKVCache(step=4)
    k = mx.arange(2 * 3 * 2).reshape(1, 2, 3, 2).astype(mx.float32)
    keys, _ = c.update_and_fetch(k, k)
    assert keys.shape == (1, 2, 3, 2) and c.keys.shape[2] == 4
    keys, values = c.update_and_fetch(k + 100, k + 100)
    assert keys.shape == (1, 2, 6, 2) and c.keys.shape[2] == 8
    assert_allclose(keys[:, :, :3], k, 0, 0, what="kept")
    assert_allclose(values[:, :, 3:], k + 100, 0, 0, what="appended")
    c.rewind(2)
    assert c.offset == 4
    keys, _ = c.update_and_fetch(k[:, :, :1] - 5, k[:, :, :1] - 5)
    assert keys.shape[2] == 5 and float(keys[0, 0, 4, 0]) == -5.0
    with pytest.raises(ValueError):
        c.rewind(6)
    assert c.nbytes > 0
    c.release()
    assert c.offset == 0 and c.nbytes == 0


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


def test_greedy_tokens_are_finite_and_deterministic():
    m = ours(TINY_CONFIG, tiny_weights(TINY_CONFIG))
    logits = m(mx.array([[1, 2, 3]]))
    assert np.isfinite(np.array(logits)).all()

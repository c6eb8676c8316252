"""The dense KV cache: one sequence's buffers per layer, and a layer's view over B of them.

The references: the stored keys themselves (exact), and attention computed row by row with the readable
math on the unpadded keys (so padding, lengths and the fused in-place decode step are all checked).
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.utils import assert_allclose
from tiny_llm_playground.engine.cache import DenseKVBuffer, DenseKVCache
from tiny_llm_playground.engine.layers import scaled_dot_product_attention


def kv(L: int, seed: int, H_kv: int = 2, D: int = 8) -> tuple[mx.array, mx.array]:
    kk, kv_ = mx.random.split(mx.random.key(seed))
    return mx.random.normal((1, H_kv, L, D), key=kk), mx.random.normal((1, H_kv, L, D), key=kv_)


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


def test_a_view_over_ragged_rows_pads_fetches_and_counts_each_row():
    rows = [DenseKVBuffer(step=4) for _ in range(3)]
    stored = [kv(n, seed=n) for n in (2, 5, 1)]
    for buf, (k, v) in zip(rows, stored, strict=True):
        buf.write(0, k, v)
    view = DenseKVCache.over(rows, [2, 5, 1])
    assert view.offset.tolist() == [2, 5, 1]  # per-row RoPE positions
    new_k, new_v = kv(3, seed=9)
    new_k, new_v = mx.concatenate([new_k] * 3), mx.concatenate([new_v] * 3)  # (3, H_kv, 3, D)
    keys, values = view.update_and_fetch(new_k, new_v)
    assert view.lengths == [5, 8, 4] and keys.shape == (3, 2, 8, 8)
    for b, (k, _) in enumerate(stored):
        n = k.shape[2]
        assert_allclose(keys[b : b + 1, :, :n], k, 0, 0, f"row {b}'s old keys")
        assert_allclose(keys[b : b + 1, :, n : n + 3], new_k[b : b + 1], 0, 0, f"row {b}'s new keys")
        assert_allclose(keys[b : b + 1, :, n + 3 :], mx.zeros_like(keys[b : b + 1, :, n + 3 :]), 0, 0, "padding")
    assert DenseKVCache.over(rows[:1], [4]).offset == 4  # one row: an int
    with pytest.raises(ValueError, match="one length per row"):
        DenseKVCache.over(rows, [1, 2])


@pytest.mark.parametrize("backend", ["ref", None])
@pytest.mark.parametrize("L", [1, 3])
def test_attend_over_ragged_rows_equals_each_row_alone(backend, L):
    """`attend` stores and attends; row b's output is the readable attention of its own keys only (the
    fused in-place decode step for L = 1 on the fast backend, padding + lengths otherwise)."""
    H, H_kv, D = 4, 2, 8
    lengths = [3, 9, 1]
    rows = [DenseKVBuffer(step=4) for _ in lengths]
    history = [kv(n, seed=10 + n) for n in lengths]
    for buf, (k, v) in zip(rows, history, strict=True):
        buf.write(0, k, v)
    q = mx.random.normal((3, H, L, D), key=mx.random.key(1))
    k_new = mx.random.normal((3, H_kv, L, D), key=mx.random.key(2))
    v_new = mx.random.normal((3, H_kv, L, D), key=mx.random.key(3))
    view = DenseKVCache.over(rows, lengths)
    out = view.attend(q, k_new, v_new, scale=D**-0.5, backend=backend)
    assert view.lengths == [n + L for n in lengths]
    for b, (k, v) in enumerate(history):
        k_all = mx.concatenate([k, k_new[b : b + 1]], axis=2)
        v_all = mx.concatenate([v, v_new[b : b + 1]], axis=2)
        want = scaled_dot_product_attention(q[b : b + 1], k_all, v_all, scale=D**-0.5, mask="causal")
        assert_allclose(out[b : b + 1], want, 1e-5, 1e-5, f"row {b}")
        keys, _ = rows[b].read(lengths[b] + L)
        assert_allclose(keys, k_all, 0, 0, f"row {b}'s stored keys")


def test_decode_steps_grow_the_buffers_and_keep_every_key():
    """Fused decode steps (writes in place) across capacity boundaries, built lazily and evaluated once."""
    cache = DenseKVCache(step=2)
    k0, v0 = kv(3, seed=4)
    cache.update_and_fetch(k0, v0)
    outs, ks = [], [k0]
    for i in range(5):
        k, v = kv(1, seed=20 + i)
        q = mx.random.normal((1, 4, 1, 8), key=mx.random.key(30 + i))
        outs.append(cache.attend(q, k, v, scale=0.3, backend=None))
        ks.append(k)
    mx.eval(outs)
    assert cache.offset == 8 and cache.rows[0].capacity == 8
    keys, _ = cache.rows[0].read(8)
    assert_allclose(keys, mx.concatenate(ks, axis=2), 0, 0, "keys")
    assert cache.used_nbytes == 8 * cache.rows[0].bytes_per_token and cache.nbytes >= cache.used_nbytes


def test_a_fresh_cache_takes_as_many_rows_as_its_first_keys():
    cache = DenseKVCache(step=4)
    assert cache.offset == 0 and cache.keys is None
    k, v = kv(3, seed=40)
    k2, v2 = mx.concatenate([k, k + 1]), mx.concatenate([v, v + 1])  # (2, H_kv, 3, D)
    keys, _ = cache.update_and_fetch(k2, v2)
    assert len(cache.rows) == 2 and cache.offset == 3 and keys.shape == (2, 2, 3, 8)
    assert_allclose(keys[1:], k + 1, 0, 0, "row 1")
    with pytest.raises(ValueError, match="3 rows of keys for a cache of 2 rows"):
        cache.update_and_fetch(mx.concatenate([k] * 3), mx.concatenate([v] * 3))

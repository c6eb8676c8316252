"""Each layer against an independent MLX reference (mx.fast / mlx.nn / mx.softmax), per dtype."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from tests.utils import assert_allclose, tolerance
from tiny_llm_playground.engine.layers import (
    RoPE,
    attention,
    causal_mask,
    embedding,
    linear,
    rms_norm,
    scaled_dot_product_attention,
    silu,
    softmax,
    swiglu_mlp,
    visibility_mask,
)

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 11), (2, 4, 33)])
def test_softmax_matches_mx_softmax(dtype, shape):
    x = (mx.random.normal(shape, key=mx.random.key(1)) * 4).astype(dtype)
    assert_allclose(softmax(x, -1), mx.softmax(x, axis=-1), *tolerance(dtype), what="softmax")


def test_softmax_large_logits_do_not_overflow():
    x = mx.array([[1000.0, 999.0, -1000.0]])
    out = softmax(x)
    assert_allclose(out, mx.softmax(x, axis=-1), 1e-6, 1e-7, what="softmax")
    assert_allclose(out.sum(-1), mx.array([1.0]), 1e-6, 1e-6, what="sum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_nn_silu(dtype):
    x = (mx.random.normal((5, 17), key=mx.random.key(2)) * 3).astype(dtype)
    assert_allclose(silu(x), nn.silu(x), *tolerance(dtype), what="silu")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_nn_linear(bias):
    layer = nn.Linear(24, 40, bias=bias)
    x = mx.random.normal((3, 5, 24), key=mx.random.key(3))
    got = linear(x, layer.weight, layer.bias if bias else None, backend="ref")
    assert_allclose(got, layer(x), 1e-5, 1e-5, what="linear")


def test_embedding_matches_nn_embedding():
    emb = nn.Embedding(50, 8)
    ids = mx.array([[0, 49, 7, 7]])
    assert_allclose(embedding(ids, emb.weight), emb(ids), 0, 0, what="embedding")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_rms_norm_matches_mx_fast(dtype, eps):
    x = (mx.random.normal((2, 9, 96), key=mx.random.key(4)) * 2).astype(dtype)
    w = (1 + 0.1 * mx.random.normal((96,), key=mx.random.key(5))).astype(dtype)
    assert_allclose(rms_norm(x, w, eps), mx.fast.rms_norm(x, w, eps), *tolerance(dtype), what="rms_norm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 37, 4000])
@pytest.mark.parametrize("base", [10000.0, 1_000_000.0])
def test_rope_matches_mx_fast_rope(dtype, offset, base):
    x = mx.random.normal((2, 3, 13, 64), key=mx.random.key(6)).astype(dtype)
    ref = mx.fast.rope(x, 64, traditional=False, base=base, scale=1.0, offset=offset)
    rtol, atol = tolerance(dtype)
    # At position ~4000 a float32 angle is only good to ~2.4e-4 rad; both sides round differently
    # (test_rope_large_positions_close_to_float64 checks ours against the exact rotation).
    atol = max(atol, 1e-3) if offset > 1000 else atol
    assert_allclose(RoPE(64, base)(x, offset), ref, rtol, atol, what="rope")


@pytest.mark.parametrize("base", [10000.0, 1_000_000.0])
def test_rope_large_positions_close_to_float64(base):
    x = mx.random.normal((1, 2, 9, 64), key=mx.random.key(17))
    off = 30000
    xn = np.array(x, dtype=np.float64)
    ang = (off + np.arange(9))[:, None] * base ** (-np.arange(0, 64, 2) / 64)
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = xn[..., :32], xn[..., 32:]
    exact = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    # float32 angle rounding at 3e4 rad is ~1e-3 rad; |x| <= ~4.
    assert_allclose(RoPE(64, base)(x, off), exact, 0, 8e-3, what="rope vs float64")


def test_rope_per_row_offsets_equal_separate_calls():
    rope = RoPE(32, 10000.0)
    x = mx.random.normal((3, 2, 5, 32), key=mx.random.key(7))
    offsets = [0, 9, 120]
    batched = rope(x, mx.array(offsets))
    for b, off in enumerate(offsets):
        assert_allclose(batched[b], rope(x[b : b + 1], off)[0], 1e-6, 1e-6, what=f"row {b}")


def test_rope_preserves_pair_norms_and_rotates_by_position_difference():
    rope = RoPE(16, 10000.0)
    q = mx.random.normal((1, 1, 1, 16), key=mx.random.key(8))
    k = mx.random.normal((1, 1, 1, 16), key=mx.random.key(9))
    # Rotations preserve length, and q.k after rotation depends only on the position difference.
    assert_allclose(mx.linalg.norm(rope(q, 5)), mx.linalg.norm(q), 1e-5, 1e-5, what="norm")
    d1 = (rope(q, 10) * rope(k, 3)).sum()
    d2 = (rope(q, 107) * rope(k, 100)).sum()
    assert_allclose(d1, d2, 1e-4, 1e-4, what="relative position")


def test_causal_mask_with_cached_prefix():
    m = causal_mask(2, 5)  # two new queries at positions 3 and 4
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("H", "H_kv"), [(4, 4), (4, 2), (14, 2), (7, 1)])
@pytest.mark.parametrize(("L", "S"), [(1, 1), (1, 9), (6, 6), (3, 11)])
def test_attention_matches_mx_fast_sdpa(dtype, H, H_kv, L, S):
    D = 32
    kq, kk, kv = mx.random.split(mx.random.key(10), 3)
    q = mx.random.normal((2, H, L, D), key=kq).astype(dtype)
    k = mx.random.normal((2, H_kv, S, D), key=kk).astype(dtype)
    v = mx.random.normal((2, H_kv, S, D), key=kv).astype(dtype)
    scale = 1 / math.sqrt(D)
    mask = "causal" if L > 1 else None
    ref_mask = causal_mask(L, S) if L > 1 else None
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=ref_mask)
    got = scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    rtol, atol = tolerance(dtype)
    assert_allclose(got, ref, rtol * 2, atol * 2, what="sdpa")


def test_attention_probabilities_rows_sum_to_one_and_respect_causality():
    q = mx.random.normal((1, 4, 6, 16), key=mx.random.key(11))
    k = mx.random.normal((1, 2, 6, 16), key=mx.random.key(12))
    _, probs = scaled_dot_product_attention(q, k, k, mask="causal", return_probs=True)
    assert_allclose(probs.sum(-1), mx.ones((1, 4, 6)), 1e-6, 1e-6, what="row sums")
    upper = mx.triu(mx.ones((6, 6)), k=1).astype(mx.bool_)
    assert float(mx.where(upper, probs, 0).abs().max()) == 0.0


def test_attention_additive_and_per_row_masks():
    q = mx.random.normal((2, 2, 3, 8), key=mx.random.key(13))
    k = mx.random.normal((2, 1, 5, 8), key=mx.random.key(14))
    keep = mx.random.uniform(shape=(2, 3, 5), key=mx.random.key(15)) > 0.3
    keep = mx.logical_or(keep, mx.arange(5)[None, None, :] == 0)  # every row keeps one key
    additive = mx.where(keep, 0.0, -mx.inf)[:, None]  # (B, 1, L, S)
    ref = mx.fast.scaled_dot_product_attention(q, k, k, scale=8**-0.5, mask=keep[:, None])
    assert_allclose(scaled_dot_product_attention(q, k, k, mask=keep), ref, 1e-5, 1e-5, what="bool")
    assert_allclose(scaled_dot_product_attention(q, k, k, mask=additive), ref, 1e-5, 1e-5, what="add")


def test_attention_rejects_bad_head_ratio():
    q = mx.zeros((1, 3, 2, 8))
    k = mx.zeros((1, 2, 2, 8))
    with pytest.raises(ValueError, match="multiple"):
        scaled_dot_product_attention(q, k, k)


def test_swiglu_matches_mlx_lm_mlp():
    from mlx_lm.models.qwen2 import MLP

    ref = MLP(32, 80)
    x = mx.random.normal((2, 3, 32), key=mx.random.key(16))
    got = swiglu_mlp(x, ref.gate_proj.weight, ref.up_proj.weight, ref.down_proj.weight, backend="ref")
    assert_allclose(got, ref(x), 1e-5, 1e-5, what="swiglu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 5, 300])
def test_traditional_rope_matches_mx_fast_rope(dtype, offset):
    """traditional=True rotates adjacent pairs (2i, 2i + 1), mx.fast.rope's traditional layout."""
    x = mx.random.normal((2, 3, 9, 32), key=mx.random.key(21)).astype(dtype)
    ref = mx.fast.rope(x, 32, traditional=True, base=10000.0, scale=1.0, offset=offset)
    got = RoPE(32, 10000.0, traditional=True)(x, offset)
    rtol, atol = tolerance(dtype)
    atol = max(atol, 1e-4) if offset > 100 else atol  # float32 angles at position 300: ~3e-5 rad apart
    assert_allclose(got, ref, rtol, atol, what="traditional rope")
    rotate_half = RoPE(32, 10000.0)(x, offset)
    assert float(mx.abs(got.astype(mx.float32) - rotate_half.astype(mx.float32)).max()) > 0.1, "layouts differ"


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("backend", ["ref", None])
def test_rope_rotate_takes_projection_layout_on_every_backend(traditional, backend):
    """`rotate` (what the model calls): (B, L, H, D) in, the readable rotation in (B, H, L, D) out, on the
    readable path and on the fused kernel alike, with an int or per-row offsets."""
    x = mx.random.normal((3, 5, 4, 16), key=mx.random.key(22))  # (B, L, H, D)
    readable = RoPE(16, 1e4, traditional=traditional)
    layer = RoPE(16, 1e4, traditional=traditional, backend=backend)
    for offset in (7, mx.array([0, 3, 40])):
        want = readable(x.transpose(0, 2, 1, 3), offset)
        assert_allclose(layer.rotate(x, offset), want, 1e-5, 1e-5, what=f"rotate, offset {offset}")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_reductions_in_half_precision_with_large_values_stay_finite_and_right(dtype):
    """Each readable op that reduces keeps its statistics in float32: a float16 sum of squares or of
    products overflows past 65504 (a constant row of 100.0 normalised to 0.0 before the fix)."""
    x = mx.full((2, 896), 100.0, dtype=dtype)
    assert_allclose(rms_norm(x, mx.ones((896,), dtype=dtype), 1e-6), mx.ones((2, 896)), 1e-2, 1e-2, what="rms")
    logits = mx.concatenate([mx.zeros((1, 70000)), mx.full((1, 1), 3.0)], axis=-1).astype(dtype)
    p = softmax(logits)  # 70001 terms: their float16 sum would overflow
    assert_allclose(p.astype(mx.float32).sum(-1), mx.array([1.0]), 1e-2, 1e-2, what="softmax sum")
    q = mx.full((1, 2, 3, 64), 40.0, dtype=dtype)  # q . k = 64 * 1600 > 65504
    k = mx.random.normal((1, 1, 3, 64), key=mx.random.key(23)).astype(dtype) * 40
    v = mx.random.normal((1, 1, 3, 64), key=mx.random.key(24)).astype(dtype)
    f32 = [a.astype(mx.float32) for a in (q, k, v)]
    got = scaled_dot_product_attention(q, k, v, scale=1.0, mask="causal")
    want = scaled_dot_product_attention(*f32, scale=1.0, mask="causal")
    assert got.dtype == dtype and np.isfinite(np.array(got.astype(mx.float32))).all()
    assert_allclose(got, want, 2e-2, 2e-2, what="attention")


@pytest.mark.parametrize("backend", ["ref", None])
def test_the_models_attention_entry_point_agrees_on_every_backend(backend):
    """attention(): causal, non-causal and ragged rows (kv_lengths) and an extra mask array, the readable
    math and the kernel giving the same result as the readable sdpa with the equivalent mask."""
    q = mx.random.normal((2, 4, 3, 16), key=mx.random.key(25))
    k = mx.random.normal((2, 2, 7, 16), key=mx.random.key(26))
    v = mx.random.normal((2, 2, 7, 16), key=mx.random.key(27))
    lengths = mx.array([7, 4], dtype=mx.int32)
    ragged = visibility_mask(3, 7, lengths)  # (B, 1, L, S)
    extra = mx.random.uniform(shape=(2, 1, 3, 7), key=mx.random.key(28)) > 0.2
    extra = mx.logical_or(extra, mx.arange(7)[None, None, None, :] == 0)
    cases = [
        ({"mask": "causal"}, "causal"),
        ({"mask": None}, None),
        ({"mask": "causal", "kv_lengths": lengths}, ragged),
        (
            {"mask": extra, "kv_lengths": lengths},
            extra & (mx.arange(7)[None, None, None, :] < lengths[:, None, None, None]),
        ),
    ]
    for kwargs, ref_mask in cases:
        got = attention(q, k, v, scale=0.25, backend=backend, **kwargs)
        want = scaled_dot_product_attention(q, k, v, scale=0.25, mask=ref_mask)
        assert_allclose(got, want, 1e-5, 1e-5, what=str(list(kwargs)))
    with pytest.raises(ValueError, match="unknown mask"):
        attention(q, k, v, scale=0.25, mask="sliding", backend=backend)

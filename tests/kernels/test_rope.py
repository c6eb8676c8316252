"""Tests for kernels.rope: the cpu kernel against the readable reference, and the reference against
mx.fast.rope and the engine's RoPE layer (engine/layers/rope.py), in both pair layouts (rotate-half and
traditional = adjacent pairs).

Rules they keep:
- A backend that can't run here is skipped with its reason, never faked.
- Positions reach 32k (angles of ~3e4 rad: cos/sin in float32 lose digits there, so the tolerance is
  absolute, scaled by |x|); per-row offsets as continuous batching uses them.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import assert_allclose, require
from tiny_llm_playground import kernels
from tiny_llm_playground.engine.layers.rope import RoPE, rope_frequencies
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels import ref

BASE = 1_000_000.0


def make(B: int, L: int, H: int, D: int, seed: int = 0) -> tuple[mx.array, mx.array]:
    return mx.random.normal((B, L, H, D), key=mx.random.key(seed)), rope_frequencies(D, BASE)


@pytest.mark.parametrize(("B", "L", "H", "D", "offset"), [(1, 1, 14, 64, 0), (1, 1, 2, 64, 517),
                         (1, 37, 3, 16, 5), (2, 9, 7, 128, 0), (1, 300, 2, 64, 31_000)])  # fmt: skip
def test_cpu_matches_reference_int_offset(B, L, H, D, offset):
    require("cpu")
    x, f = make(B, L, H, D, seed=L + H)
    got = kernels.rope(x, f, offset, backend="cpu")
    assert got.shape == (B, H, L, D)
    assert_allclose(got, ref.rope(x, f, offset), rtol=1e-5, atol=2e-5 * max(1, offset // 1000))


def test_cpu_matches_reference_per_row_offsets():
    require("cpu")
    x, f = make(3, 4, 5, 32, seed=1)
    offsets = mx.array([0, 7, 123], dtype=mx.int32)
    assert_allclose(kernels.rope(x, f, offsets, backend="cpu"), ref.rope(x, f, offsets), rtol=1e-5, atol=2e-5)
    # each row equals that row alone at its own int offset
    for b, off in enumerate([0, 7, 123]):
        alone = kernels.rope(x[b : b + 1], f, off, backend="cpu")
        np.testing.assert_array_equal(np.array(kernels.rope(x, f, offsets, backend="cpu")[b : b + 1]), np.array(alone))


@pytest.mark.parametrize("offset", [0, 3, 4000])
def test_reference_matches_mx_fast_rope_and_the_engine_layer(offset):
    x, f = make(2, 6, 3, 64, seed=2)
    want = mx.fast.rope(x.transpose(0, 2, 1, 3), 64, traditional=False, base=BASE, scale=1.0, offset=offset)
    got = ref.rope(x, f, offset)
    assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1, offset / 1000))  # float32 angles: ulp(4000) ~ 2e-4
    assert_allclose(got, RoPE(64, BASE)(x.transpose(0, 2, 1, 3), offset), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, f: kernels.rope(x[0], f), "must be \\(B, L, H, D\\)"),
        (lambda x, f: kernels.rope(x, f[:3]), "inv_freq must be"),
        (lambda x, f: kernels.rope(x, f, mx.array([1, 2, 3])), "per-row offsets"),
        (lambda x, f: kernels.rope(x, f, 1.5), "offset must be an int"),
        (lambda x, f: kernels.rope(x, f, backend="tpu"), "unknown backend"),
        (lambda x, f: kernels.rope(x, f, traditional=1), "traditional must be a bool"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    x, f = make(2, 3, 2, 8)
    with pytest.raises(ValueError, match=message):
        call(x, f)


# --- traditional: adjacent pairs (2i, 2i + 1), as RoFormer / LLaMA-1 and mx.fast.rope(traditional=True)


@pytest.mark.parametrize("offset", [0, 3, 4000])
def test_traditional_reference_matches_mx_fast_rope(offset):
    x, f = make(2, 6, 3, 64, seed=3)
    # mx.fast.rope rotates the last axis with positions along axis -2: hand it (B, H, L, D)
    want = mx.fast.rope(x.transpose(0, 2, 1, 3), 64, traditional=True, base=BASE, scale=1.0, offset=offset)
    got = ref.rope(x, f, offset, traditional=True)
    assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1, offset / 1000))
    assert_allclose(kernels.rope(x, f, offset, traditional=True, backend="ref"), got, rtol=0, atol=0)


def test_traditional_reference_per_row_offsets_match_mx_fast_rope():
    x, f = make(3, 5, 2, 32, seed=4)
    offsets = mx.array([0, 9, 250], dtype=mx.int32)
    want = mx.fast.rope(x.transpose(0, 2, 1, 3), 32, traditional=True, base=BASE, scale=1.0, offset=offsets)
    assert_allclose(ref.rope(x, f, offsets, traditional=True), want, rtol=1e-5, atol=1e-4)


def test_traditional_is_rotate_half_on_permuted_features():
    """The readable math two ways: adjacent pairs are rotate-half pairs after moving the even features to
    the first half and the odd ones to the second."""
    x, f = make(1, 7, 2, 16, seed=5)
    perm = mx.array([*range(0, 16, 2), *range(1, 16, 2)])
    want = ref.rope(x[..., perm], f, 11)  # (B, H, L, D) in the permuted order
    got = ref.rope(x, f, 11, traditional=True)[..., perm]
    assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("B", "L", "H", "D", "offset"), [(1, 1, 14, 64, 0), (1, 1, 2, 64, 517),
                         (1, 37, 3, 16, 5), (2, 9, 7, 128, 0), (1, 300, 2, 64, 31_000), (1, 3, 2, 2, 1)])  # fmt: skip
def test_cpu_traditional_matches_reference_on_every_isa(B, L, H, D, offset):
    require("cpu")
    ext = kcpu.load()
    x, f = make(B, L, H, D, seed=L + H + 1)
    offsets = mx.arange(B, dtype=mx.int32) * 13 + offset
    want = ref.rope(x, f, offset, traditional=True)
    want_rows = ref.rope(x, f, offsets, traditional=True)
    tol = 2e-5 * max(1, offset // 1000)
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            got = kernels.rope(x, f, offset, traditional=True, backend="cpu")
            assert got.shape == (B, H, L, D)
            assert_allclose(got, want, rtol=1e-5, atol=tol, what=f"{isa} int offset")
            got = kernels.rope(x, f, offsets, traditional=True, backend="cpu")
            assert_allclose(got, want_rows, rtol=1e-5, atol=tol, what=f"{isa} per-row offsets")
            # and the default layout is still rotate-half
            assert_allclose(kernels.rope(x, f, offset, backend="cpu"), ref.rope(x, f, offset), 1e-5, tol, isa)
    finally:
        ext.set_isa(before)


def test_half_precision_traditional_goes_to_ref():
    x, f = make(1, 4, 2, 16, seed=6)
    got = kernels.rope(x.astype(mx.float16), f, 3, traditional=True)
    assert got.dtype == mx.float16
    assert_allclose(got, ref.rope(x, f, 3, traditional=True), rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="float32 only"):
        kernels.rope(x.astype(mx.float16), f, 3, traditional=True, backend="cpu")

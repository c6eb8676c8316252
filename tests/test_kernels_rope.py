"""Tests for kernels.rope: the cpu kernel against the readable reference, and the reference against
mx.fast.rope and the engine's RoPE layer (engine/layers/rope.py).

Rules they keep:
- A backend that can't run here is skipped with its reason, never faked.
- Positions reach 32k (angles of ~3e4 rad: cos/sin in float32 lose digits there, so the tolerance is
  absolute, scaled by |x|); per-row offsets as continuous batching uses them.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import kernels
from engine.layers.rope import RoPE, rope_frequencies
from kernels import ref
from tests.test_kernels_attention import require
from tests.utils import assert_allclose

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
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    x, f = make(2, 3, 2, 8)
    with pytest.raises(ValueError, match=message):
        call(x, f)

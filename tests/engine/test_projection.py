"""Linear layers as the model holds them: stacked projections equal one matmul per weight."""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.utils import assert_allclose
from tiny_llm_playground.engine.layers import MergedLinear, linear
from tiny_llm_playground.kernels import quantize


def weights(*rows: int, K: int = 64, seed: int = 0) -> list[mx.array]:
    keys = mx.random.split(mx.random.key(seed), len(rows))
    return [0.1 * mx.random.normal((n, K), key=k) for n, k in zip(rows, keys, strict=True)]


@pytest.mark.parametrize("backend", ["ref", None])
@pytest.mark.parametrize(
    ("formats", "groups"),
    [
        (("q8_0", "q8_0", "q8_0"), [3]),  # q, k, v in one matmul
        (("q5_0", "q5_0", "q8_0"), [2, 1]),  # Qwen2.5's GGUF: q and k stack, v apart
        (("q8_0", "q5_0", "q5_0"), [1, 2]),
        ((None, None), [1, 1]),  # float weights: one matmul each
        (("affine4", "affine4-f32"), [1, 1]),  # scales of two dtypes do not stack
    ],
)
def test_merged_projections_equal_one_matmul_per_weight(backend, formats, groups):
    ws = weights(32, 16, 16)[: len(formats)]
    held = []
    for w, fmt in zip(ws, formats, strict=True):
        if fmt is None:
            held.append(w)
        elif fmt == "affine4-f32":
            held.append(quantize(w, "affine4", scale_dtype=mx.float32))
        else:
            held.append(quantize(w, fmt))
    biases = [mx.random.normal((w.shape[0],), key=mx.random.key(i)) for i, w in enumerate(ws)]
    merged = MergedLinear(held, biases, backend)
    assert [len(splits) + 1 for _, splits in merged.parts] == ([1] * len(ws) if backend == "ref" else groups)
    x = mx.random.normal((2, 3, 64), key=mx.random.key(9))
    for got, w, b in zip(merged(x), held, biases, strict=True):
        assert_allclose(got, linear(x, w, b, "ref"), 1e-4, 1e-4, what=str(formats))

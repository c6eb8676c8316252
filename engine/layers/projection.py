"""Linear layers as the model holds them: a weight in the layout its kernel backend reads fastest, and
several projections of one input run as one matmul.

Rules it keeps:
- The weight's layout is decided here, once, at construction (`kernels.for_backend`: the 16-row panel
  formats where the cpu kernels read them; exact, the same blocks reordered), so the model file never
  sees layouts or backends.
- `MergedLinear` stacks consecutive weights that `kernels.quant.stackable` allows (`concat_rows`): q, k and
  v (or gate and up) become one quantized matmul, so x is rounded and the kernels' thread pool woken once.
  The stacked copy replaces the parts (a slice of it would be copied on every call). Float weights, and
  the readable "ref" backend, keep one matmul per projection.
"""

from __future__ import annotations

from itertools import accumulate

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.engine.layers.basics import linear
from tiny_llm_playground.kernels.quant import QuantizedWeight, concat_rows, stackable

Weight = mx.array | QuantizedWeight


class Linear:
    """y = x @ w.T + b through the kernels; w is (N, K), float or quantized."""

    def __init__(self, weight: Weight, bias: mx.array | None = None, backend: str | None = None) -> None:
        self.weight = weight if backend == "ref" else kernels.for_backend(weight, backend)
        self.bias = bias
        self.backend = backend

    def __call__(self, x: mx.array) -> mx.array:
        """x (..., K) -> (..., N)."""
        return linear(x, self.weight, self.bias, self.backend)


class MergedLinear:
    """Projections of one input (q, k, v; gate, up): `__call__(x)` returns one output per weight, in order."""

    def __init__(
        self, weights: list[Weight], biases: list[mx.array | None] | None = None, backend: str | None = None
    ) -> None:
        biases = biases or [None] * len(weights)
        groups: list[list[int]] = []  # runs of consecutive weights that stack into one matmul
        for i, w in enumerate(weights):
            if groups and backend != "ref" and stackable(weights[groups[-1][-1]], w):
                groups[-1].append(i)
            else:
                groups.append([i])
        self.parts: list[tuple[Linear, list[int]]] = []  # (one matmul, the split points of its output)
        for group in groups:
            sizes = [weights[i].shape[0] for i in group]
            w = weights[group[0]] if len(group) == 1 else concat_rows([weights[i] for i in group])
            bias = self._bias([biases[i] for i in group], sizes)
            self.parts.append((Linear(w, bias, backend), list(accumulate(sizes))[:-1]))

    @staticmethod
    def _bias(biases: list[mx.array | None], sizes: list[int]) -> mx.array | None:
        if all(b is None for b in biases):
            return None
        parts = [mx.zeros((n,)) if b is None else b for b, n in zip(biases, sizes, strict=True)]
        return parts[0] if len(parts) == 1 else mx.concatenate(parts)

    def __call__(self, x: mx.array) -> tuple[mx.array, ...]:
        """x (..., K) -> (..., N_i) for each weight i."""
        out: list[mx.array] = []
        for lin, splits in self.parts:
            y = lin(x)
            out.extend(mx.split(y, splits, axis=-1) if splits else [y])
        return tuple(out)

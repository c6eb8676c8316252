"""Batch invariance of the cpu kernels, bit for bit, on every ISA the extension runs here.

Under `kernels.batch_invariant()` a row of `linear` / `quantized_linear` is the same bits whether x holds
1, 3, 5, 8, 17 or 40 rows (the fast paths switch kernels by M, and those round differently: the test
shows they do, so it can fail). Attention always is: a query's output is the same bits computed alone
(a decode step), in a chunk of queries (prefill), or beside other rows of another length — dense and
paged alike. This is what lets a preempted request, recomputed through prefill, continue exactly.
"""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np
import pytest

from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu

ROWS = (1, 3, 5, 8, 17, 40)


def _rows_alone_and_batched(op, x: mx.array) -> tuple[np.ndarray, np.ndarray]:
    """op(x) for all of x's rows at once, and row by row."""
    together = np.array(op(x))
    alone = np.concatenate([np.array(op(x[i : i + 1])) for i in range(x.shape[0])])
    return together, alone


@pytest.mark.parametrize("fmt", ["q8_0", "q5_0", "affine4", None])
def test_linear_rows_do_not_depend_on_the_batch_when_invariant(fmt, isas):
    K, N = 256, 96
    w = mx.random.normal((N, K), key=mx.random.key(1)) * 0.05
    b = mx.random.normal((N,), key=mx.random.key(2))
    x_all = mx.random.normal((max(ROWS), K), key=mx.random.key(3))
    qw = None if fmt is None else kernels.quantize(w, fmt)

    def op(x):
        if qw is None:
            return kernels.linear(x, w, b, backend="cpu")
        return kernels.quantized_linear(x, qw, b, backend="cpu")

    for isa in isas():
        differs = False
        for M in ROWS:
            x = x_all[:M]
            with kernels.batch_invariant():
                together, alone = _rows_alone_and_batched(op, x)
            assert np.array_equal(together, alone), f"{fmt} on {isa}: M={M} rows differ from the rows alone"
            fast_together, _ = _rows_alone_and_batched(op, x)
            differs |= not np.array_equal(fast_together, alone)
        # Without the mode some M takes another path that rounds otherwise (the affine4 GEMV and GEMM
        # happen to agree on some ISAs, so only the formats known to differ are required to).
        if fmt in ("q8_0", "q5_0") and not kcpu.load().panel_kernels():
            assert differs, f"{fmt} on {isa}: no M took another path: the test would not see a regression"


def test_attention_of_a_query_is_the_same_alone_in_a_chunk_and_in_a_batch(isas):
    H, Hkv, D, S = 14, 2, 64, 150
    ks = mx.random.split(mx.random.key(7), 3)
    q = mx.random.normal((1, H, S, D), key=ks[0])
    k = mx.random.normal((1, Hkv, S, D), key=ks[1])
    v = mx.random.normal((1, Hkv, S, D), key=ks[2])
    scale = D**-0.5
    for isa in isas():
        full = np.array(kernels.flash_attention(q, k, v, scale=scale, causal=True, backend="cpu"))  # (1, H, S, D)
        for p in (0, 63, 64, 100, S - 1):  # each query alone, over its prefix: a decode step
            one = kernels.flash_attention(q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1], scale=scale,
                                          causal=True, backend="cpu")  # fmt: skip
            assert np.array_equal(np.array(one)[0, :, 0], full[0, :, p]), f"{isa}: query {p} alone differs"
        for start, n in ((40, 3), (64, 17), (100, 50)):  # chunks over a cached prefix
            chunk = kernels.flash_attention(q[:, :, start : start + n], k[:, :, : start + n],
                                            v[:, :, : start + n], scale=scale, causal=True, backend="cpu")  # fmt: skip
            assert np.array_equal(np.array(chunk)[0], full[0, :, start : start + n]), f"{isa}: chunk at {start}"


def test_paged_decode_of_a_row_does_not_depend_on_the_other_rows(isas):
    H, Hkv, D, bs = 14, 2, 64, 16
    rnd = random.Random(3)
    lengths = [130, 7, 1000, 64, 333]  # keys each row holds, the new one included
    need = [-(-n // bs) for n in lengths]
    free = list(range(sum(need)))
    rnd.shuffle(free)
    tables = [[free.pop() for _ in range(c)] for c in need]
    ks = mx.random.split(mx.random.key(5), 3)
    q = mx.random.normal((len(lengths), H, 1, D), key=ks[0])
    keys = [mx.random.normal((1, Hkv, n, D), key=mx.random.key(10 + i)) for i, n in enumerate(lengths)]
    vals = [mx.random.normal((1, Hkv, n, D), key=mx.random.key(20 + i)) for i, n in enumerate(lengths)]
    for isa in isas():
        kp = kernels.kv_pool(sum(need), bs, Hkv, D, backend="cpu")
        vp = kernels.kv_pool(sum(need), bs, Hkv, D, backend="cpu")
        for i, n in enumerate(lengths):
            done, (kp, vp) = kernels.paged_write(keys[i], vals[i], kp, vp, mx.array([tables[i]], dtype=mx.int32),
                                                 mx.array([n], dtype=mx.int32), backend="cpu")  # fmt: skip
            mx.eval(done)

        def attend(rows: list[int], kp=kp, vp=vp) -> np.ndarray:
            T = max(need[r] for r in rows)
            tab = mx.array([tables[r] + [-1] * (T - need[r]) for r in rows], dtype=mx.int32)
            lens = mx.array([lengths[r] for r in rows], dtype=mx.int32)
            out, _ = kernels.paged_attention(q[mx.array(rows)], None, None, kp, vp, tab, lens,
                                             scale=D**-0.5, backend="cpu")  # fmt: skip
            return np.array(out)

        batch = attend(list(range(len(lengths))))  # 5 rows: tasks take all of a row's kv heads
        for r in range(len(lengths)):
            alone = attend([r])  # 1 row: a task per kv head
            assert np.array_equal(alone[0], batch[r]), f"{isa}: row {r} alone differs from the batch"

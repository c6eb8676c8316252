"""Tests for kernels.flash_attention, kernels.rms_norm and kernels.swiglu: every available backend
against the readable reference (kernels/ref.py), and the reference against engine/layers' math.

Rules they keep:
- A backend that can't run here is skipped with the reason from `available_backends()`, never faked.
- float32 tolerance; failures print the worst elements (tests/utils.assert_allclose).
- Half-precision inputs (ref) with large values: compared with a float32 computation at half tolerances.
- Masks (boolean and additive, every broadcast shape, with causal / kv_lengths): the reference against
  mx.fast.scaled_dot_product_attention, the cpu backend against the reference on every ISA.
- The cpu extension is checked on every instruction set this CPU can run (avx512 / avx2 / generic).
- Shapes: odd sizes, GQA ratios 1/2/7, one query (decode) to 2048 keys, batches with per-row lengths,
  causal prefill over a cached prefix (L < S). Long cases are few, to keep the suite fast.
"""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from tests.utils import assert_allclose, require
from tiny_llm_playground import kernels
from tiny_llm_playground.engine.layers.attention import scaled_dot_product_attention
from tiny_llm_playground.engine.layers.basics import silu
from tiny_llm_playground.engine.layers.norm import rms_norm as layers_rms_norm
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels import ref

FAST_BACKENDS = ["cpu", "metal", "cuda"]
RTOL, ATOL = 2e-5, 2e-5  # float32: exp and sums in another order


def qkv(B: int, H: int, H_kv: int, L: int, S: int, D: int, seed: int = 0):
    kq, kk, kv = mx.random.split(mx.random.key(seed), 3)
    q = mx.random.normal((B, H, L, D), key=kq)  # (B, H, L, D)
    k = mx.random.normal((B, H_kv, S, D), key=kk)  # (B, H_kv, S, D)
    v = mx.random.normal((B, H_kv, S, D), key=kv)
    return q, k, v


# (B, H, H_kv, L, S, D): GQA ratios 1, 2, 7; decode (L=1), prefill (L=S), cached prefix (L<S).
ATTN_SHAPES = [
    (1, 1, 1, 1, 1, 64),
    (1, 14, 2, 1, 37, 64),  # Qwen2.5-0.5B decode
    (1, 14, 2, 1, 2048, 64),  # long decode
    (1, 14, 2, 17, 17, 64),  # prefill, odd length
    (1, 14, 2, 64, 64, 64),  # exactly one key tile
    (1, 14, 2, 65, 65, 64),  # one key past a tile
    (1, 14, 2, 200, 200, 64),
    (1, 14, 2, 7, 300, 64),  # chunked prefill over a cached prefix
    (2, 4, 2, 3, 129, 64),
    (3, 6, 6, 5, 40, 64),  # MHA
    (2, 8, 4, 9, 33, 128),  # D = 128
    (1, 3, 3, 11, 11, 24),  # D not a multiple of 16 (avx512 sends it to the portable loops)
    (2, 7, 1, 13, 50, 8),
    (1, 2, 1, 512, 512, 64),  # long prefill
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("B,H,H_kv,L,S,D", ATTN_SHAPES)
def test_flash_attention_matches_ref(backend, B, H, H_kv, L, S, D) -> None:
    require(backend)
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=L * 31 + S)
    got = kernels.flash_attention(q, k, v, backend=backend)
    want = ref.flash_attention(q, k, v, 1.0 / math.sqrt(D))
    assert_allclose(got, want, RTOL, ATOL, f"flash_attention {backend} {(B, H, H_kv, L, S, D)}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L", [1, 4])
def test_flash_attention_per_row_lengths_ignore_padding(backend, causal, L) -> None:
    """Rows of different lengths right-padded to S: keys past a row's length must not matter."""
    require(backend)
    B, H, H_kv, S, D = 4, 14, 2, 150, 64
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=7)
    lengths = mx.array([150, 70, 4, 129])
    got = kernels.flash_attention(q, k, v, causal=causal, kv_lengths=lengths, backend=backend)
    want = ref.flash_attention(q, k, v, D**-0.5, causal, lengths)
    assert_allclose(got, want, RTOL, ATOL, f"ragged {backend} causal={causal} L={L}")
    # Garbage in the padding changes nothing.
    junk = mx.where(mx.arange(S)[None, None, :, None] < lengths[:, None, None, None], k, 1e4)
    again = kernels.flash_attention(q, junk, v, causal=causal, kv_lengths=lengths, backend=backend)
    assert_allclose(again, got, 0, 0, "padding leaked into the result")
    # Each row equals attention over that row alone, unpadded.
    for b in range(B):
        n = int(lengths[b])
        one = kernels.flash_attention(
            q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], causal=causal, backend="ref"
        )
        assert_allclose(got[b : b + 1], one, RTOL, ATOL, f"row {b} alone")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_flash_attention_query_that_sees_no_key_gets_zeros(backend) -> None:
    require(backend)
    q, k, v = qkv(2, 4, 2, 3, 10, 64)
    got = kernels.flash_attention(q, k, v, kv_lengths=mx.array([10, 1]), backend=backend)
    assert mx.all(got[1, :, :2] == 0).item(), "row 1 holds 1 key: its first 2 queries see none"
    assert mx.all(mx.isfinite(got)).item()


def test_ref_matches_the_readable_layer_math() -> None:
    """kernels' reference agrees with engine/layers/attention.py (the path inspect shows)."""
    for B, H, H_kv, L, S, D in [(1, 14, 2, 9, 9, 64), (2, 14, 2, 3, 40, 64), (1, 6, 3, 1, 20, 32)]:
        q, k, v = qkv(B, H, H_kv, L, S, D)
        want = scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal" if L > 1 else None)
        got = ref.flash_attention(q, k, v, 0.3)
        assert_allclose(got, want, 1e-5, 1e-5, f"ref vs layers {(B, H, H_kv, L, S, D)}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_flash_attention_noncontiguous_inputs(backend) -> None:
    """A cache buffer sliced to its filled length, a transposed q, even a transposed last axis."""
    require(backend)
    B, H, H_kv, L, S, D = 1, 14, 2, 5, 70, 64
    q, k, v = qkv(B, H, H_kv, L, S + 30, D)
    q_t = q[:, :, :L].transpose(0, 2, 1, 3).reshape(B, L, H, D).transpose(0, 2, 1, 3)
    k_s, v_s = k[:, :, :S], v[:, :, :S]  # strided views, as DenseKVCache returns
    want = ref.flash_attention(q[:, :, :L], k_s, v_s, 0.125)
    got = kernels.flash_attention(q_t, k_s, v_s, scale=0.125, backend=backend)
    assert_allclose(got, want, RTOL, ATOL, "strided")
    k_tt = mx.array(k_s.swapaxes(-1, -2)).swapaxes(-1, -2)  # last axis stride S
    got = kernels.flash_attention(q[:, :, :L], k_tt, v_s, scale=0.125, backend=backend)
    assert_allclose(got, want, RTOL, ATOL, "transposed last axis")


def test_cpu_flash_attention_on_every_isa() -> None:
    ext = kcpu.load()
    if ext is None:
        pytest.skip(f"cpu backend {kernels.available_backends()['cpu']}")
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            for B, H, H_kv, L, S, D in [(1, 14, 2, 1, 100, 64), (1, 14, 2, 40, 90, 64), (2, 4, 4, 3, 20, 24)]:
                q, k, v = qkv(B, H, H_kv, L, S, D)
                lengths = mx.array([S - 7 * b for b in range(B)])
                got = kernels.flash_attention(q, k, v, kv_lengths=lengths, backend="cpu")
                want = ref.flash_attention(q, k, v, D**-0.5, True, lengths)
                assert_allclose(got, want, RTOL, ATOL, f"isa {isa} {(B, H, H_kv, L, S, D)}")
                x = mx.random.normal((3, 1000))
                w = mx.random.normal((1000,))
                assert_allclose(kernels.rms_norm(x, w, 1e-6, backend="cpu"), ref.rms_norm(x, w, 1e-6), RTOL, ATOL, isa)
                assert_allclose(kernels.swiglu(x, w * x, backend="cpu"), ref.swiglu(x, w * x), RTOL, ATOL, isa)
    finally:
        ext.set_isa(before)


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_flash_attention_rejects_bad_shapes(backend) -> None:
    q, k, v = qkv(1, 6, 2, 3, 8, 16)
    bad = [
        ((q[0], k, v), {}),  # 3-D q
        ((q, k[:, :, :, :8], v[:, :, :, :8]), {}),  # D mismatch
        ((q, k, v[:, :, :5]), {}),  # k/v mismatch
        ((q, mx.repeat(k[:, :1], 4, axis=1), mx.repeat(v[:, :1], 4, axis=1)), {}),  # 6 % 4 != 0
        ((q, k[:, :, :2], v[:, :, :2]), {}),  # causal with L > S and no lengths
        ((q, k, v), {"kv_lengths": mx.array([3, 4])}),  # wrong batch
        ((q, k, v), {"kv_lengths": mx.array([3.0])}),  # not integers
        ((q.astype(mx.int32), k, v), {}),
    ]
    for args, kw in bad:
        with pytest.raises(ValueError):
            kernels.flash_attention(*args, backend=backend, **kw)
    with pytest.raises(ValueError):
        kernels.flash_attention(q, k, v, backend="tpu")


def test_cpu_flash_attention_rejects_non_float32() -> None:
    require("cpu")
    q, k, v = qkv(1, 2, 1, 2, 4, 16)
    with pytest.raises(ValueError):
        kernels.flash_attention(q.astype(mx.float16), k, v, backend="cpu")
    out = kernels.flash_attention(q.astype(mx.float16), k.astype(mx.float16), v.astype(mx.float16))
    assert out.dtype == mx.float16  # the default backend sends other dtypes to ref


# ---- rms_norm and swiglu


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 896), (3, 5, 17), (513, 896), (2, 33)])
def test_rms_norm_matches_ref(backend, shape) -> None:
    require(backend)
    x = 3.0 * mx.random.normal(shape, key=mx.random.key(shape[-1]))
    w = mx.random.normal(shape[-1:], key=mx.random.key(1))
    assert_allclose(kernels.rms_norm(x, w, 1e-6, backend=backend), ref.rms_norm(x, w, 1e-6), RTOL, ATOL, str(shape))


def test_rms_norm_ref_matches_the_layer() -> None:
    x = mx.random.normal((4, 96))
    w = mx.random.normal((96,))
    assert_allclose(ref.rms_norm(x, w, 1e-5), layers_rms_norm(x, w, 1e-5), 1e-6, 1e-6, "rms_norm")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (15,), (1, 1, 4864), (512, 4864), (3, 7, 19)])
def test_swiglu_matches_ref(backend, shape) -> None:
    require(backend)
    g = 4.0 * mx.random.normal(shape, key=mx.random.key(2))
    u = mx.random.normal(shape, key=mx.random.key(3))
    assert_allclose(kernels.swiglu(g, u, backend=backend), ref.swiglu(g, u), RTOL, ATOL, str(shape))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_swiglu_extreme_gates(backend) -> None:
    require(backend)
    g = mx.array([-1e4, -200.0, -88.0, -20.0, 0.0, 20.0, 88.0, 200.0, 1e4])
    u = mx.ones_like(g)
    assert_allclose(kernels.swiglu(g, u, backend=backend), silu(g) * u, RTOL, ATOL, "extreme")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_fused_ops_reject_bad_shapes(backend) -> None:
    x = mx.ones((2, 8))
    with pytest.raises(ValueError):
        kernels.rms_norm(x, mx.ones((7,)), 1e-6, backend=backend)
    with pytest.raises(ValueError):
        kernels.rms_norm(x.astype(mx.int32), mx.ones((8,)), 1e-6, backend=backend)
    with pytest.raises(ValueError):
        kernels.swiglu(x, mx.ones((2, 7)), backend=backend)
    with pytest.raises(ValueError):
        kernels.swiglu(x.astype(mx.int32), x.astype(mx.int32), backend=backend)


def test_every_op_has_a_default_backend() -> None:
    for op in ("flash_attention", "rms_norm", "swiglu"):
        assert kernels.backend_for(op) in ("ref", "cpu")


# --- decode_attention_rows: one decode step over per-row cache buffers ----------------------------


def _rows(caps: list[int], H_kv: int, D: int, seed: int):
    keys = mx.random.split(mx.random.key(seed), 2 * len(caps))
    return [
        (mx.random.normal((1, H_kv, c, D), key=keys[2 * i]), mx.random.normal((1, H_kv, c, D), key=keys[2 * i + 1]))
        for i, c in enumerate(caps)
    ]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize(
    "H,H_kv,D,lengths,caps",
    [
        (14, 2, 64, [0, 3, 17, 64, 200], [1, 4, 256, 65, 256]),  # GQA 7, ragged, a row at its first token
        (4, 4, 32, [5, 1000], [6, 1024]),  # GQA 1, long row
        (6, 3, 48, [2047, 9, 31], [2048, 16, 32]),  # GQA 2, D not a multiple of 16, 2048 keys
    ],
)
def test_decode_attention_rows_matches_ref(backend, H, H_kv, D, lengths, caps) -> None:
    """Each row stores its new key/value at its own length and attends over its own buffer; the
    reference pads and concatenates the rows and runs flash_attention with per-row lengths."""
    require(backend)
    B = len(lengths)
    q, k, v = qkv(B, H, H_kv, 1, 1, D, seed=len(lengths) + D)
    want_out, want_rows = ref.decode_attention_rows(q, k, v, _rows(caps, H_kv, D, 1), lengths, 0.2)
    out, rows = kernels.decode_attention_rows(q, k, v, _rows(caps, H_kv, D, 1), lengths, scale=0.2, backend=backend)
    assert_allclose(out, want_out, rtol=RTOL, atol=ATOL)
    for (kc, vc), (kw, vw), n in zip(rows, want_rows, lengths, strict=True):
        # The stored token and everything before it; past it the buffers are free space.
        assert_allclose(kc[:, :, : n + 1], kw[:, :, : n + 1], rtol=0, atol=0)
        assert_allclose(vc[:, :, : n + 1], vw[:, :, : n + 1], rtol=0, atol=0)


def test_decode_attention_rows_on_every_isa() -> None:
    require("cpu")
    ext = kcpu.load()
    q, k, v = qkv(3, 8, 2, 1, 1, 64, seed=5)
    lengths, caps = [4, 70, 0], [8, 128, 3]
    want, _ = ref.decode_attention_rows(q, k, v, _rows(caps, 2, 64, 2), lengths, 0.125)
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            out, _ = kernels.decode_attention_rows(q, k, v, _rows(caps, 2, 64, 2), lengths, scale=0.125, backend="cpu")
            assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    finally:
        ext.set_isa(before)


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_decode_attention_rows_rejects_bad_input(backend) -> None:
    require(backend)
    q, k, v = qkv(2, 4, 2, 1, 1, 16)
    rows = _rows([8, 8], 2, 16, 0)
    with pytest.raises(ValueError, match="no room"):
        kernels.decode_attention_rows(q, k, v, rows, [3, 8], backend=backend)
    with pytest.raises(ValueError, match="need 2 rows"):
        kernels.decode_attention_rows(q, k, v, rows[:1], [3], backend=backend)
    with pytest.raises(ValueError, match="buffers must be"):
        kernels.decode_attention_rows(q, k, v, [rows[0], (rows[1][0][:, :1], rows[1][1])], [1, 1], backend=backend)
    with pytest.raises(ValueError, match=r"\(B, H, 1, D\)"):
        kernels.decode_attention_rows(mx.concatenate([q, q], axis=2), k, v, rows, [1, 1], backend=backend)


# --- half precision: the reference keeps its statistics in float32 -----------------------------------

HALF = [mx.float16, mx.bfloat16]


def _half_tol(dtype) -> tuple[float, float]:
    return {mx.float16: (2e-3, 2e-3), mx.bfloat16: (1.6e-2, 1.6e-2)}[dtype]


@pytest.mark.parametrize("dtype", HALF)
def test_rms_norm_half_precision_large_values(dtype) -> None:
    """A float16 sum of squares overflows past 65504 (a row of 100.0 at D = 896 sums to 8.96e6): the
    statistics must run in float32, the result matches a float32 computation at half tolerances."""
    D = 896
    rows = mx.stack([mx.full((D,), 100.0), 300.0 * mx.random.normal((D,), key=mx.random.key(4)), mx.zeros((D,))])
    x = rows.astype(dtype)
    w = (1.0 + 0.1 * mx.random.normal((D,), key=mx.random.key(5))).astype(dtype)
    want = layers_rms_norm(x.astype(mx.float32), w.astype(mx.float32), 1e-6)  # float32 all through
    rtol, atol = _half_tol(dtype)
    for got in (kernels.rms_norm(x, w, 1e-6), kernels.rms_norm(x, w, 1e-6, backend="ref"), ref.rms_norm(x, w, 1e-6)):
        assert got.dtype == dtype
        assert_allclose(got, want, rtol, atol, f"rms_norm {dtype}")
    assert_allclose(ref.rms_norm(x, mx.ones((D,), dtype=dtype), 1e-6)[0], mx.ones((D,)), 0, 0, "a row of 100.0 -> 1.0")
    assert_allclose(ref.rms_norm(x, w, 1e-6), layers_rms_norm(x, w, 1e-6), 0, 0, "the same math as the layer")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("causal,L,S", [(True, 1, 70), (True, 9, 9), (False, 5, 130)])
def test_flash_attention_ref_half_precision_large_scores(dtype, causal, L, S) -> None:
    """Scores past float16's range (|q . k| * scale ~ 1e5) and sums of many keys: scores, softmax and the
    weighted sum run in float32 and only the output is rounded to q's dtype."""
    B, H, H_kv, D = 2, 4, 2, 64
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=9)
    q, k, v = (300.0 * q).astype(dtype), (300.0 * k).astype(dtype), (100.0 * v).astype(dtype)
    lengths = mx.array([S, S - 3])
    got = kernels.flash_attention(q, k, v, causal=causal, kv_lengths=lengths)  # the default sends halves to ref
    assert got.dtype == dtype
    f32 = [a.astype(mx.float32) for a in (q, k, v)]
    want = ref.flash_attention(*f32, D**-0.5, causal, lengths)
    rtol, atol = _half_tol(dtype)
    assert_allclose(got, want, rtol, 100.0 * atol, f"flash_attention {dtype}")  # |v| ~ 100
    # moderate values against the independent float32 math of engine/layers
    q, k, v = (a.astype(dtype) for a in qkv(1, H, H_kv, L, S, D, seed=10))
    want = scaled_dot_product_attention(*(a.astype(mx.float32) for a in (q, k, v)), scale=0.125,
                                        mask="causal" if causal and L > 1 else None)  # fmt: skip
    got = kernels.flash_attention(q, k, v, scale=0.125, causal=causal, backend="ref")
    assert_allclose(got, want, rtol, atol, f"flash_attention {dtype} vs layers")


@pytest.mark.parametrize("dtype", HALF)
def test_decode_attention_rows_ref_half_precision_large_values(dtype) -> None:
    H, H_kv, D, lengths, caps = 8, 2, 64, [3, 200], [8, 256]
    q, k, v = qkv(2, H, H_kv, 1, 1, D, seed=12)
    q, k, v = (300.0 * q).astype(dtype), (300.0 * k).astype(dtype), (100.0 * v).astype(dtype)
    rows = [(300.0 * kc, 100.0 * vc) for kc, vc in _rows(caps, H_kv, D, 3)]
    out, _ = kernels.decode_attention_rows(
        q, k, v, [(kc.astype(dtype), vc.astype(dtype)) for kc, vc in rows], lengths, scale=D**-0.5
    )  # the default sends halves to ref
    assert out.dtype == dtype
    f32_rows = [(kc.astype(dtype).astype(mx.float32), vc.astype(dtype).astype(mx.float32)) for kc, vc in rows]
    want, _ = ref.decode_attention_rows(*(a.astype(mx.float32) for a in (q, k, v)), f32_rows, lengths, D**-0.5)
    rtol, atol = _half_tol(dtype)
    assert_allclose(out, want, rtol, 100.0 * atol, f"decode_attention_rows {dtype}")


# --- masks: boolean (True = may see) or additive float, broadcast to (B, H, L, S) ------------------------


def _rules(B: int, L: int, S: int, causal: bool, lengths: mx.array | None) -> mx.array:
    """(B, 1, L, S) bool: what kv_lengths and causal leave visible (the docstring's rule, spelled out)."""
    n = mx.full((B,), S) if lengths is None else lengths
    key = mx.arange(S)[None, None, :]
    vis = key < n[:, None, None]
    if causal:
        vis = vis & (key <= (n[:, None] - L + mx.arange(L)[None, :])[:, :, None])
    return mx.broadcast_to(vis, (B, L, S))[:, None]


def _user_mask(shape: tuple[int, ...], kind: str, seed: int) -> mx.array:
    """A random mask of `shape` whose key 0 is always allowed (so no query row ends up empty)."""
    ka, kb = mx.random.split(mx.random.key(seed))
    allow = (mx.random.uniform(shape=shape, key=ka) > 0.4) | (mx.arange(shape[-1]) == 0)
    if kind == "bool":
        return allow
    return mx.where(allow, 2.0 * mx.random.normal(shape, key=kb), -mx.inf)


def _fast(q, k, v, scale, mask, causal, lengths):
    """mx.fast.scaled_dot_product_attention with the rules folded into one mask of the same kind."""
    B, L, S = q.shape[0], q.shape[2], k.shape[2]
    vis = _rules(B, L, S, causal, lengths)
    full = vis & mask if mask.dtype == mx.bool_ else mx.where(vis, mask.astype(mx.float32), -mx.inf)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=full)


# (B, H, H_kv, L, S, D, mask shape): GQA 1/2/7, decode and prefill, S off the 64-key tile, every broadcast.
MASK_CASES = [
    (1, 14, 2, 1, 37, 64, (37,)),
    (2, 14, 2, 1, 130, 64, (2, 1, 1, 130)),
    (1, 4, 2, 9, 65, 64, (9, 65)),
    (2, 6, 3, 7, 100, 32, (6, 7, 100)),
    (2, 4, 4, 5, 70, 64, (2, 1, 5, 70)),
    (2, 4, 2, 3, 129, 64, (2, 4, 3, 129)),
    (1, 7, 1, 20, 200, 24, (1, 7, 1, 200)),
    (2, 8, 2, 65, 65, 64, (1, 65)),
]


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("rules", ["none", "causal", "lengths", "causal+lengths"])
@pytest.mark.parametrize("B,H,H_kv,L,S,D,mshape", MASK_CASES)
def test_mask_ref_matches_mx_fast_and_cpu_matches_ref_on_every_isa(kind, rules, B, H, H_kv, L, S, D, mshape):
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=S + L)
    mask = _user_mask(mshape, kind, seed=L * 7 + S)
    causal = "causal" in rules
    lengths = mx.array([max(L, S - 3 * b) for b in range(B)]) if "lengths" in rules else None  # every query sees a key
    want = _fast(q, k, v, 0.2, mask, causal, lengths)
    got = kernels.flash_attention(q, k, v, scale=0.2, causal=causal, kv_lengths=lengths, mask=mask, backend="ref")
    assert_allclose(got, want, RTOL, ATOL, f"ref vs mx.fast {kind} {rules} {mshape}")
    ext = kcpu.load()
    if ext is None:
        return
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            out = kernels.flash_attention(
                q, k, v, scale=0.2, causal=causal, kv_lengths=lengths, mask=mask, backend="cpu"
            )
            assert_allclose(out, got, RTOL, ATOL, f"cpu {isa} vs ref {kind} {rules} {mshape}")
    finally:
        ext.set_isa(before)


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_fully_masked_query_gets_zeros(backend, kind) -> None:
    """Queries whose every key is masked (False / -inf), also only inside the keys the rules leave visible
    and across several key tiles, get zeros; the other queries are unaffected."""
    require(backend)
    B, H, H_kv, L, S, D = 2, 4, 2, 6, 150, 64
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=21)
    allow = mx.ones((B, 1, L, S), dtype=mx.bool_)
    allow[0, :, 2] = False  # query 2 of row 0: nothing at all
    allow[1, :, 4, :100] = False  # query 4 of row 1 sees keys < 100 only (kv_lengths), all masked
    allow[0, :, 1, :130] = False  # query 1 of row 0: its first two key tiles masked, keys 130.. not
    mask = allow if kind == "bool" else mx.where(allow, 0.0, -mx.inf)
    lengths = mx.array([S, 100])
    got = kernels.flash_attention(q, k, v, causal=False, kv_lengths=lengths, mask=mask, backend=backend)
    assert mx.all(got[0, :, 2] == 0).item() and mx.all(got[1, :, 4] == 0).item()
    assert mx.all(mx.isfinite(got)).item()
    late = ref.flash_attention(q[:1, :, 1:2], k[:1, :, 130:], v[:1, :, 130:], D**-0.5, False)
    assert_allclose(got[:1, :, 1:2], late, RTOL, ATOL, "only the last tile's keys visible")
    want = ref.flash_attention(q, k, v, D**-0.5, False, lengths)  # the unmasked queries: as without a mask
    for b, i in [(0, 0), (0, 5), (1, 0), (1, 3)]:
        assert_allclose(got[b, :, i], want[b, :, i], RTOL, ATOL, f"query {i} of row {b}")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_mask_of_zeros_changes_nothing_and_large_negatives_hide(backend) -> None:
    require(backend)
    q, k, v = qkv(1, 6, 2, 4, 90, 64, seed=22)
    plain = kernels.flash_attention(q, k, v, backend=backend)
    assert_allclose(kernels.flash_attention(q, k, v, mask=mx.zeros((4, 90)), backend=backend), plain, 0, 0, "zeros")
    assert_allclose(kernels.flash_attention(q, k, v, mask=mx.ones((90,), dtype=mx.bool_), backend=backend), plain,
                    0, 0, "all True")  # fmt: skip
    allow = _user_mask((4, 90), "bool", seed=3)
    big = mx.where(allow, 0.0, -1e9)  # finite but far below every score: hidden as surely as -inf
    assert_allclose(kernels.flash_attention(q, k, v, causal=False, mask=big, backend=backend),
                    kernels.flash_attention(q, k, v, causal=False, mask=allow, backend=backend), RTOL, ATOL, "-1e9")  # fmt: skip


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_mask_noncontiguous_and_other_dtypes(backend) -> None:
    """A transposed mask, a slice of a larger one, a float16 additive mask: read through their strides or
    converted, the same result as the reference."""
    require(backend)
    B, H, H_kv, L, S, D = 2, 4, 2, 5, 80, 32
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=23)
    base = _user_mask((S, L), "additive", seed=4)
    for mask in (base.T, _user_mask((B, H, L, 2 * S), "additive", seed=5)[..., ::2], base.T.astype(mx.float16)):
        want = ref.flash_attention(q, k, v, 0.25, False, None, mask)
        got = kernels.flash_attention(q, k, v, scale=0.25, causal=False, mask=mask, backend=backend)
        assert_allclose(got, want, RTOL, ATOL, f"mask {mask.shape} {mask.dtype}")


def test_cpu_broadcast_mask_is_not_expanded() -> None:
    """A (L, S) mask broadcast to (B, H, L, S) reaches the kernel as a view: the call's peak memory stays far
    below what a (B, H, L, S) float32 copy would take."""
    require("cpu")
    B, H, H_kv, L, S, D = 1, 16, 2, 512, 2048, 16
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=24)
    mask = _user_mask((L, S), "bool", seed=6)
    mx.eval(q, k, v, mask)
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(kernels.flash_attention(q, k, v, causal=False, mask=mask, backend="cpu"))
    full = B * H * L * S * 4  # 64 MB
    assert mx.get_peak_memory() - base < full / 4, f"peak {mx.get_peak_memory() - base} bytes"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_ref_half_precision(dtype, kind) -> None:
    """Half-precision q, k, v (large values: scores past float16's range) and mask: float32 statistics,
    the same as the float32 computation at half tolerances."""
    B, H, H_kv, L, S, D = 2, 4, 2, 6, 90, 64
    q, k, v = qkv(B, H, H_kv, L, S, D, seed=25)
    q, k, v = (300.0 * q).astype(dtype), (300.0 * k).astype(dtype), (100.0 * v).astype(dtype)
    mask = _user_mask((B, 1, L, S), kind, seed=7)
    mask = mask if kind == "bool" else mask.astype(dtype)
    got = kernels.flash_attention(q, k, v, mask=mask)  # the default sends halves to ref
    assert got.dtype == dtype
    f32 = [a.astype(mx.float32) for a in (q, k, v)]
    want = _fast(*f32, D**-0.5, mask if kind == "bool" else mask.astype(mx.float32), True, None)
    rtol, atol = _half_tol(dtype)
    assert_allclose(got, want, rtol, 100.0 * atol, f"half mask {dtype} {kind}")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_mask_rejects_bad_masks(backend) -> None:
    require(backend)
    q, k, v = qkv(2, 6, 2, 3, 8, 16)
    for mask in [
        mx.ones((1, 2, 6, 3, 8), dtype=mx.bool_),  # 5-D
        mx.ones((3, 9), dtype=mx.bool_),  # S mismatch
        mx.ones((2, 8), dtype=mx.bool_),  # 2 is neither L = 3 nor 1
        mx.ones((3, 3, 8)),  # 3 is neither H = 6 nor 1
        mx.ones((3, 1, 1, 8)),  # 3 is neither B = 2 nor 1
        mx.ones((3, 8), dtype=mx.int32),  # neither boolean nor floating
        [[True] * 8] * 3,  # not an mx.array
    ]:
        with pytest.raises(ValueError, match="mask"):
            kernels.flash_attention(q, k, v, mask=mask, backend=backend)


def test_extension_validates_the_mask() -> None:
    require("cpu")
    ext = kcpu.load()
    q, k, v = qkv(2, 6, 2, 3, 8, 16)
    with pytest.raises(ValueError, match=r"mask must be \(B, H, L, S\)"):
        ext.flash_attention(q, k, v, 0.25, False, None, mx.zeros((3, 8)))  # not broadcast yet
    with pytest.raises(ValueError, match="mask must be float32"):
        ext.flash_attention(q, k, v, 0.25, False, None, mx.zeros((2, 6, 3, 8), dtype=mx.float16))
    with pytest.raises(ValueError, match="mask must be float32"):
        ext.flash_attention(q, k, v, 0.25, False, None, mx.ones((2, 6, 3, 8), dtype=mx.bool_))

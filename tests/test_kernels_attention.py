"""Tests for kernels.flash_attention, kernels.rms_norm and kernels.swiglu: every available backend
against the readable reference (kernels/ref.py), and the reference against engine/layers' math.

Rules they keep:
- A backend that can't run here is skipped with the reason from `available_backends()`, never faked.
- float32 tolerance; failures print the worst elements (tests/utils.assert_allclose).
- The cpu extension is checked on every instruction set this CPU can run (avx512 / avx2 / generic).
- Shapes: odd sizes, GQA ratios 1/2/7, one query (decode) to 2048 keys, batches with per-row lengths,
  causal prefill over a cached prefix (L < S). Long cases are few, to keep the suite fast.
"""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

import kernels
from engine.layers.attention import scaled_dot_product_attention
from engine.layers.basics import silu
from engine.layers.norm import rms_norm as layers_rms_norm
from kernels import cpu as kcpu
from kernels import ref
from tests.utils import assert_allclose

FAST_BACKENDS = ["cpu", "metal", "cuda"]
RTOL, ATOL = 2e-5, 2e-5  # float32: exp and sums in another order


def require(backend: str) -> None:
    status = kernels.available_backends()[backend]
    if status != "ok":
        pytest.skip(f"backend {backend!r} {status}")


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

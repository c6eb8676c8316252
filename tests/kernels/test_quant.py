"""Tests for kernels.quantized_linear and the formats in kernels/quant.py.

Rules they keep:
- The readable reference (dequantize, then x @ w.T) is checked against independent implementations:
  gguf's Q8_0 quantizer (bit-exact, the ggml reference) and mlx's own mx.quantize / mx.dequantize /
  mx.quantized_matmul for the 4-bit affine format.
- The cpu backend is compared with the reference on odd shapes, on every ISA this CPU can run.
- affine4 runs with float16 and with float32 scales/biases; the float32 ones must be read exactly (a
  kernel that rounded them through half would fail the tolerance, which is checked to be tight enough).
- A backend that can't run here is skipped with its reason, never faked.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import assert_close, require
from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels import ref
from tiny_llm_playground.kernels.quant import BLOCK, QuantizedWeight, dequantize, quantize, round_activations_q8

FORMATS = ("q8_0", "q5_0", "affine4")


def make(M: int | tuple[int, ...], K: int, N: int, bias: bool, seed: int = 0):
    kx, kw, kb = mx.random.split(mx.random.key(seed), 3)
    shape_x = M if isinstance(M, tuple) else (M, K)
    x = mx.random.normal(shape_x, key=kx)  # (..., K)
    w = 0.1 * mx.random.normal((N, K), key=kw)  # (N, K)
    b = mx.random.normal((N,), key=kb) if bias else None
    return x, w, b


# --- the formats against independent references ------------------------------------------------


def test_q8_0_matches_gguf_reference_quantizer_bit_exactly():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from gguf.quants import quantize as gguf_quantize

    _, w, _ = make(1, 256, 37, bias=False, seed=3)
    w = mx.concatenate([w, mx.zeros((1, 256))])  # an all-zero row: d = 0 must not divide by zero
    qw = quantize(w, "q8_0")
    raw = gguf_quantize(np.array(w), GGMLQuantizationType.Q8_0).reshape(38, 256 // 32, 34)
    d = raw[..., :2].copy().view(np.float16)[..., 0]  # (N, K/32)
    qs = raw[..., 2:].copy().view(np.int8).reshape(38, 256)  # (N, K)
    np.testing.assert_array_equal(np.array(qw.scales), d)
    np.testing.assert_array_equal(np.array(qw.q), qs)
    want = gguf_dequantize(raw.reshape(38, -1), GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.array(dequantize(qw)), want)


def test_q5_0_matches_gguf_reference_quantizer_bit_exactly():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from gguf.quants import quantize as gguf_quantize

    _, w, _ = make(1, 256, 37, bias=False, seed=5)
    w = mx.concatenate([w, mx.zeros((1, 256)), -mx.abs(w[:1])])  # a zero row; a row of negatives
    N = w.shape[0]
    qw = quantize(w, "q5_0")
    raw = gguf_quantize(np.array(w), GGMLQuantizationType.Q5_0).reshape(N, 256 // 32, 22)
    np.testing.assert_array_equal(np.array(qw.scales), raw[..., :2].copy().view(np.float16)[..., 0])
    np.testing.assert_array_equal(np.array(qw.high), raw[..., 2:6].copy().view(np.uint32)[..., 0])
    np.testing.assert_array_equal(np.array(qw.q), raw[..., 6:].reshape(N, 128))
    want = gguf_dequantize(raw.reshape(N, -1), GGMLQuantizationType.Q5_0)
    np.testing.assert_array_equal(np.array(dequantize(qw)), want)


def test_activations_are_rounded_to_q8_0_blocks():
    x = 3.0 * mx.random.normal((3, 96), key=mx.random.key(8))
    x = mx.concatenate([x, mx.zeros((1, 96))])  # zero blocks stay zero
    xn = np.array(x, dtype=np.float32).reshape(4, 3, 32)
    d = (np.abs(xn).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d == 0, 0, 1 / np.where(d == 0, 1, d)).astype(np.float32)
    v = (xn * inv).astype(np.float32)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)), -127, 127)  # half away from zero
    np.testing.assert_array_equal(np.array(round_activations_q8(x)), (q * d).reshape(4, 96))
    # the reference multiplies the rounded x, for both integer-dot formats, and float x for affine4
    _, w, _ = make(1, 96, 5, bias=False)
    for fmt in ("q8_0", "q5_0"):
        qw = quantize(w, fmt)
        want = round_activations_q8(x) @ dequantize(qw).T
        np.testing.assert_allclose(np.array(ref.quantized_linear(x, qw)), np.array(want), rtol=1e-5, atol=1e-5)


def test_affine4_is_mlx_quantize_layout():
    _, w, _ = make(1, 192, 21, bias=False, seed=4)
    qw = quantize(w, "affine4")
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    np.testing.assert_array_equal(np.array(qw.q), np.array(q))
    np.testing.assert_array_equal(np.array(qw.scales), np.array(s.astype(mx.float16)))
    np.testing.assert_array_equal(np.array(qw.biases), np.array(b.astype(mx.float16)))
    mine = dequantize(qw)
    # (float32 scales: with float16 ones mx.dequantize computes in float16)
    s32, b32 = qw.scales.astype(mx.float32), qw.biases.astype(mx.float32)
    theirs = mx.dequantize(qw.q, s32, b32, group_size=64, bits=4)
    assert_close(mine, theirs, K=1, rtol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_affine4_reference_matches_mx_quantized_matmul(bias):
    x, w, b = make(5, 256, 33, bias=bias, seed=5)
    qw = quantize(w, "affine4")
    want = mx.quantized_matmul(
        x,
        qw.q,
        qw.scales.astype(mx.float32),
        qw.biases.astype(mx.float32),
        transpose=True,
        group_size=64,
        bits=4,
    )
    if b is not None:
        want = want + b
    assert_close(ref.quantized_linear(x, qw, b), want, K=256)


def test_affine4_float32_is_mlx_quantize_output_exactly():
    _, w, _ = make(1, 192, 21, bias=False, seed=4)
    qw = quantize(w, "affine4", scale_dtype=mx.float32)
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    assert qw.scales.dtype == qw.biases.dtype == mx.float32
    for mine, theirs in ((qw.q, q), (qw.scales, s), (qw.biases, b)):
        np.testing.assert_array_equal(np.array(mine), np.array(theirs))
    assert_close(dequantize(qw), mx.dequantize(q, s, b, group_size=64, bits=4), K=1, rtol=1e-6)


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_affine4_float32_reference_matches_mx_quantized_matmul(M, bias):
    """mlx's own op on the same packed arrays (our affine4 is mx.quantize's layout)."""
    x, w, b = make(M, 320, 33, bias=bias, seed=M + 7)
    qw = quantize(w, "affine4", scale_dtype=mx.float32)
    want = mx.quantized_matmul(x, qw.q, qw.scales, qw.biases, transpose=True, group_size=64, bits=4)
    if b is not None:
        want = want + b
    assert_close(ref.quantized_linear(x, qw, b), want, K=320, rtol=2e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantization_error_is_small(fmt):
    _, w, _ = make(1, 512, 64, bias=False, seed=6)
    err = float(mx.max(mx.abs(dequantize(quantize(w, fmt)) - w)))
    amax = float(mx.max(mx.abs(w)))
    # q8_0: half a step of d = amax_block / 127; q5_0: one step of amax / 16 (ggml clips +16 to 15);
    # affine4: about half a step of (max - min) / 15 <= 2 amax / 15
    # (mlx nudges the bias so that 0 is exact, and the scales are float16)
    assert err <= amax * {"q8_0": 0.5 / 127, "q5_0": 1.0 / 16, "affine4": 1.2 / 15}[fmt]


# --- cpu against the reference -----------------------------------------------------------------

_SHAPES = [(1, 64, 1), (1, 896, 4864), (3, 128, 7), (2, 4864, 129), (7, 192, 33), (8, 64, 5),
           (13, 896, 131), (64, 256, 97), (129, 640, 255)]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("M", "K", "N"), _SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_matches_reference(fmt, M, K, N, bias):
    require("cpu")
    if K % BLOCK[fmt]:
        pytest.skip(f"K={K} is not a multiple of {fmt}'s block")
    x, w, b = make(M, K, N, bias, seed=M + K + N)
    qw = quantize(w, fmt)
    assert_close(kernels.quantized_linear(x, qw, b, backend="cpu"), ref.quantized_linear(x, qw, b), K=K)


@pytest.mark.parametrize("fmt", FORMATS)
# K = 160 and 544: an odd number of 32-blocks (q5_0's GEMV takes blocks in pairs), 544 = 17 blocks across
# the kernels' 16-block scale chunks.
@pytest.mark.parametrize(("M", "K", "N"), [(1, 896, 37), (5, 128, 9), (33, 192, 29), (1, 160, 11), (3, 544, 9)])
def test_cpu_every_isa_matches_reference(fmt, M, K, N):
    require("cpu")
    ext = kcpu.load()
    if K % BLOCK[fmt]:
        pytest.skip("K not a multiple of the block")
    x, w, b = make(M, K, N, bias=True, seed=11)
    qw = quantize(w, fmt)
    want = ref.quantized_linear(x, qw, b)
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            assert_close(kernels.quantized_linear(x, qw, b, backend="cpu"), want, K=K)
    finally:
        ext.set_isa(before)


# GEMV (M < 16: 1..4 rows at a time, M = 5 and 7 leave partial groups of rows) and the dequantize + float
# GEMM (M >= 16); K = 64 (one group), 1088 = 17 groups across the kernels' 16-group scale chunks, 896.
_A4_SHAPES = [(1, 64, 1), (1, 1088, 37), (3, 896, 4864), (5, 128, 9), (7, 192, 33), (16, 1088, 29),
              (33, 192, 29), (129, 640, 255)]  # fmt: skip


@pytest.mark.parametrize(("M", "K", "N"), _A4_SHAPES)
def test_cpu_affine4_float32_scales_match_reference_on_every_isa(M, K, N):
    require("cpu")
    ext = kcpu.load()
    x, w, b = make(M, K, N, bias=M % 2 == 1, seed=M + K + N)
    qw = quantize(w, "affine4", scale_dtype=mx.float32)
    want = ref.quantized_linear(x, qw, b)
    theirs = mx.quantized_matmul(x, qw.q, qw.scales, qw.biases, transpose=True, group_size=64, bits=4)
    theirs = theirs + b if b is not None else theirs
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            got = kernels.quantized_linear(x, qw, b, backend="cpu")
            assert_close(got, want, K=K, rtol=2e-5)
            assert_close(got, theirs, K=K, rtol=2e-5)
    finally:
        ext.set_isa(before)


@pytest.mark.parametrize("M", [2, 20])  # the GEMV and the GEMM path
def test_cpu_affine4_float32_scales_are_not_rounded_through_half(M):
    """Scales and biases far from float16's grid (biases ~ 3 + 1e-3 noise: float16's spacing there is
    2e-3): the kernel must match the float32 reference, and the same weight with float16-rounded
    parameters must NOT (or the check above could not tell)."""
    require("cpu")
    ext = kcpu.load()
    N, K = 24, 256
    kq, ks, kb, kx = mx.random.split(mx.random.key(17), 4)
    q = mx.random.randint(0, 2**31, (N, K // 8), key=kq).astype(mx.uint32)
    scales = 0.01 + 0.01 * mx.random.uniform(shape=(N, K // 64), key=ks)
    biases = 3.0 + 1e-3 * mx.random.uniform(shape=(N, K // 64), key=kb)
    x = mx.random.normal((M, K), key=kx)
    qw = QuantizedWeight("affine4", (N, K), q, scales, biases)
    rounded = QuantizedWeight("affine4", (N, K), q, scales.astype(mx.float16), biases.astype(mx.float16))
    want = ref.quantized_linear(x, qw)
    tol = 2e-5 * (K**0.5 + float(mx.max(mx.abs(want))))  # assert_close's bound below, at its largest
    assert float(mx.max(mx.abs(ref.quantized_linear(x, rounded) - want))) > 5 * tol
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            assert_close(kernels.quantized_linear(x, qw, backend="cpu"), want, K=K, rtol=2e-5)
            assert_close(kernels.quantized_linear(x, rounded, backend="cpu"), ref.quantized_linear(x, rounded), K=K)
    finally:
        ext.set_isa(before)


def test_affine4_scale_dtypes_are_validated():
    w = 0.1 * mx.random.normal((5, 128), key=mx.random.key(3))
    q16, q32 = quantize(w, "affine4"), quantize(w, "affine4", scale_dtype=mx.float32)
    assert q16.scales.dtype == q16.biases.dtype == mx.float16  # the default stays float16
    with pytest.raises(ValueError, match="scales and biases must have one dtype"):
        QuantizedWeight("affine4", (5, 128), q32.q, q32.scales, q16.biases).validate()
    with pytest.raises(ValueError, match="affine4: scales must be"):
        QuantizedWeight("affine4", (5, 128), q32.q, q32.scales.astype(mx.bfloat16), q32.biases).validate()
    with pytest.raises(ValueError, match="scales and biases must have one dtype"):
        kernels.quantized_linear(mx.ones((2, 128)), QuantizedWeight("affine4", (5, 128), q32.q, q16.scales, q32.biases))
    with pytest.raises(ValueError, match="stores its scales as"):
        quantize(w, "q8_0", scale_dtype=mx.float32)
    with pytest.raises(ValueError, match="stores its scales as"):
        quantize(w, "affine4", scale_dtype=mx.bfloat16)
    from tiny_llm_playground.kernels.quant import concat_rows

    assert concat_rows([q16, q32]) is None  # mixed scale dtypes are not one weight
    both = concat_rows([q32, q32])
    assert both.scales.dtype == mx.float32 and both.shape == (10, 128)
    if kcpu.load() is not None:
        ext = kcpu.load()
        with pytest.raises(ValueError, match="biases must have the scales' dtype"):
            ext.quantized_linear(mx.ones((2, 128)), q32.q, q32.scales, q16.biases, None, "affine4")
        s16, b16 = q32.scales.astype(mx.bfloat16), q32.biases.astype(mx.bfloat16)
        with pytest.raises(ValueError, match="float16 or float32"):
            ext.quantized_linear(mx.ones((2, 128)), q32.q, s16, b16, None, "affine4")
        q8 = quantize(w, "q8_0")
        with pytest.raises(ValueError, match="scales must be float16"):
            ext.quantized_linear(mx.ones((2, 128)), q8.q, q8.scales.astype(mx.float32), None, None, "q8_0")


@pytest.mark.parametrize("fmt", ["q8_0", "q5_0"])
def test_integer_dot_extremes_do_not_saturate(fmt):
    """Blocks at the ends of the int8 / 5-bit ranges: the u8 x s8 products must not saturate."""
    require("cpu")
    ext = kcpu.load()
    K = 256
    w = mx.where(mx.arange(K) % 3 == 0, -1.0, 1.0)[None, :] * mx.array([[1.0], [-1.0], [0.5]])  # (3, K)
    x = mx.where(mx.arange(K) % 2 == 0, 1.0, -1.0)[None, :] * mx.array([[100.0], [-7.0]])  # (2, K)
    qw = quantize(w, fmt)
    want = ref.quantized_linear(x, qw)
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            assert_close(kernels.quantized_linear(x, qw, backend="cpu"), want, K=K)
    finally:
        ext.set_isa(before)


def test_leading_dims_are_kept():
    require("cpu")
    x, w, b = make((2, 3, 64), 64, 11, bias=True)
    qw = quantize(w, "q8_0")
    y = kernels.quantized_linear(x, qw, b)
    assert y.shape == (2, 3, 11)
    assert_close(y, ref.quantized_linear(x, qw, b), K=64)


def test_scales_of_exact_zero_blocks_give_zero():
    require("cpu")
    w = mx.zeros((4, 64))
    for fmt in FORMATS:
        y = kernels.quantized_linear(mx.ones((2, 64)), quantize(w, fmt), backend="cpu")
        assert float(mx.max(mx.abs(y))) == 0.0


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda qw: kernels.quantized_linear(mx.ones((2, 32)), qw), "K mismatch"),
        (lambda qw: kernels.quantized_linear(mx.ones((2, 64), dtype=mx.float16), qw), "x must be float32"),
        (lambda qw: kernels.quantized_linear(mx.ones((2, 64)), qw, mx.ones((3,))), "b must have shape"),
        (
            lambda qw: kernels.quantized_linear(mx.ones((2, 64)), mx.ones((5, 64))),
            "must be a kernels.QuantizedWeight",
        ),
        (lambda qw: kernels.quantized_linear(mx.ones((2, 64)), qw, backend="tpu"), "unknown backend"),
        (lambda qw: quantize(mx.ones((5, 48)), "q8_0"), "not a multiple"),
        (lambda qw: quantize(mx.ones((5, 64)), "q3_k"), "unknown quantization format"),
        (
            lambda qw: kernels.quantized_linear(
                mx.ones((2, 64)), QuantizedWeight("q8_0", (5, 64), qw.q.astype(mx.int32), qw.scales)
            ),
            "q8_0: q must be",
        ),
        (
            lambda qw: kernels.quantized_linear(mx.ones((2, 64)), QuantizedWeight("affine4", (5, 64), qw.q, qw.scales)),
            "affine4: q must be",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    qw = quantize(0.1 * mx.random.normal((5, 64), key=mx.random.key(0)), "q8_0")
    with pytest.raises(ValueError, match=message):
        call(qw)


def test_extension_validates_too():
    require("cpu")
    ext = kcpu.load()
    q5 = quantize(mx.ones((5, 64)), "q5_0")
    with pytest.raises(ValueError, match="q5_0 needs high"):
        ext.quantized_linear(mx.ones((2, 64)), q5.q, q5.scales, None, None, "q5_0")
    with pytest.raises(ValueError, match="high must have shape"):
        ext.quantized_linear(mx.ones((2, 64)), q5.q, q5.scales, None, None, "q5_0", q5.high[:, :1])
    qw = quantize(mx.ones((5, 64)), "q8_0")
    with pytest.raises(ValueError, match="unknown format"):
        ext.quantized_linear(mx.ones((2, 64)), qw.q, qw.scales, None, None, "q4_0")
    with pytest.raises(ValueError, match="scales must have shape"):
        ext.quantized_linear(mx.ones((2, 64)), qw.q, qw.scales[:, :1], None, None, "q8_0")


# --- the int8 GEMM (AVX-512 VNNI: from 3 rows of x) --------------------------------------------------


@pytest.mark.parametrize("fmt", ["q8_0", "q5_0"])
# K = 32: rows of a single block (the packing reads their scales one by one).
@pytest.mark.parametrize(
    ("M", "K", "N"), [(3, 64, 16), (8, 96, 17), (9, 896, 40), (16, 4864, 33), (37, 160, 50), (5, 32, 19)]
)
def test_many_rows_match_one_row_at_a_time(fmt, M, K, N):
    """Rows of x as one matmul (the int8 GEMM where the ISA has it, packed 16-row weight panels, x in
    tiles of 8) against each row on its own (the GEMV): both compute the same exact int32 block dot
    products, so they agree to float32 rounding. N not a multiple of 16 checks the last, padded panel."""
    require("cpu")
    x, w, b = make(M, K, N, bias=True, seed=M * K + N)
    qw = quantize(w, fmt)
    many = kernels.quantized_linear(x, qw, b, backend="cpu")
    one = mx.concatenate([kernels.quantized_linear(x[m : m + 1], qw, b, backend="cpu") for m in range(M)])
    assert_close(many, one, K=K, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["q8_0", "q5_0"])
def test_gemm_integer_extremes_do_not_saturate(fmt):
    """The GEMM's u8 x s8 products: Q8_0 puts x + 128 (up to 255) against weights of +-127; Q5_0 puts
    weights up to 31 against x of +-127. Checked against the reference for rows of x at both extremes."""
    require("cpu")
    K = 256
    w = mx.where(mx.arange(K) % 3 == 0, -1.0, 1.0)[None, :] * mx.array([[1.0], [-1.0], [0.5], [0.25]] * 5)  # (20, K)
    x = mx.where(mx.arange(K) % 2 == 0, 1.0, -1.0)[None, :] * mx.array([[100.0], [-7.0], [1.0], [-1.0], [3.0]])
    qw = quantize(w, fmt)
    assert_close(kernels.quantized_linear(x, qw, backend="cpu"), ref.quantized_linear(x, qw), K=K)


def test_gemm_rounds_ties_away_from_zero():
    """The GEMM path rounds x with its own vector code; halves must go away from zero as in
    round_activations_q8 (round-half-even would give 2 for 2.5 and shift every row by whole units)."""
    require("cpu")
    K, M = 64, 4
    row = np.full(K, 2.5, dtype=np.float32)
    row[0] = 127.0  # d = 1: x * (1/d) lands exactly on the halves
    row[1:16] = -0.5
    row[16:24] = 0.5
    row[24:32] = -2.5
    x = mx.array(np.tile(row, (M, 1)) * np.array([[1.0], [-1.0], [1.0], [-1.0]], dtype=np.float32))
    w = mx.ones((16, K)) * 0.01
    for fmt in ("q8_0", "q5_0"):
        qw = quantize(w, fmt)
        got = np.array(kernels.quantized_linear(x, qw, backend="cpu"))
        want = np.array(ref.quantized_linear(x, qw))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- the panel formats (q8_0x16, q5_0x16: the same blocks in 16-row panels) ---------------------------


def _require_panels():
    require("cpu")
    if not kernels.panel_kernels():
        pytest.skip(f"the active ISA ({kcpu.load().cpu_isa()}) has no int8 GEMM to read the panel formats")


@pytest.mark.parametrize("fmt", ["q8_0", "q5_0"])
@pytest.mark.parametrize(("N", "K"), [(16, 64), (48, 128), (32, 896), (16, 4864)])
def test_repack_is_exact_and_unpack_undoes_it(fmt, N, K):
    _, w, _ = make(1, K, N, bias=False, seed=N + K)
    qw = quantize(w, fmt)
    pw = kernels.repack(qw)
    assert pw.format == fmt + "x16" and pw.shape == (N, K) and pw.scales is None and pw.high is None
    assert pw.nbytes == qw.nbytes  # a reordering, not a new format
    back = kernels.unpack(pw)
    assert back.format == fmt
    for a, b in zip(qw.arrays(), back.arrays(), strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    np.testing.assert_array_equal(np.array(dequantize(pw)), np.array(dequantize(qw)))
    np.testing.assert_array_equal(np.array(quantize(w, fmt + "x16").q), np.array(pw.q))


def test_panel_byte_layout_is_the_documented_one():
    """Spot-check the layout of kernels/quant.py's docstring element by element, from the row formats
    (numpy indexing, independent of repack's reshapes)."""
    N, K = 32, 128
    _, w, _ = make(1, K, N, bias=False, seed=9)
    q8 = quantize(w, "q8_0")
    p8 = np.array(kernels.repack(q8).q)
    q = np.array(q8.q).view(np.uint8)
    sc = np.array(q8.scales).view(np.uint8)
    for p, b, k, r, e in [(0, 0, 0, 0, 0), (1, 3, 7, 15, 3), (0, 2, 5, 9, 1)]:
        assert p8[p, b, 64 * k + 4 * r + e] == q[16 * p + r, 32 * b + 4 * k + e] ^ 0x80
        assert p8[p, b, 512 + 2 * r : 514 + 2 * r].tolist() == sc[16 * p + r, 2 * b : 2 * b + 2].tolist()
    q5 = quantize(w, "q5_0")
    p5 = np.array(kernels.repack(q5).q)
    nib, high = np.array(q5.q), np.array(q5.high)
    sc5 = np.array(q5.scales).view(np.uint8)
    for p, t, h, j, r, e in [(0, 0, 0, 0, 0, 0), (1, 1, 1, 3, 15, 3), (0, 1, 0, 2, 7, 2)]:
        b = 2 * t + h
        assert p5[p, t, 256 * h + 64 * j + 4 * r + e] == nib[16 * p + r, 16 * b + 4 * j + e]
        assert (
            p5[p, t, 640 + 32 * h + 2 * r : 642 + 32 * h + 2 * r].tolist()
            == sc5[16 * p + r, 2 * b : 2 * b + 2].tolist()
        )
    for p, t, h, k, r, e in [(0, 0, 0, 0, 0, 0), (1, 1, 1, 7, 15, 3), (0, 0, 1, 4, 6, 1), (1, 0, 0, 3, 11, 2)]:
        b = 2 * t + h
        mask = int.from_bytes(bytes(p5[p, t, 512 + 64 * h + 8 * k : 520 + 64 * h + 8 * k]), "little")
        assert (mask >> (4 * r + e)) & 1 == (int(high[16 * p + r, b]) >> (4 * k + e)) & 1


@pytest.mark.parametrize("fmt", ["q8_0x16", "q5_0x16"])
@pytest.mark.parametrize("M", [1, 2, 3, 8, 9, 16, 17, 129])
@pytest.mark.parametrize(("K", "N"), [(64, 16), (896, 48), (4864, 32), (192, 80)])
def test_cpu_panel_formats_match_reference(fmt, M, K, N):
    """Every path that reads panels: streamed through the registers per tile of 8 rows (M <= 16, a last
    partial tile), unpacked once per task (the prefill sweep, M > 16), with and without bias."""
    _require_panels()
    x, w, b = make(M, K, N, bias=M % 2 == 1, seed=M * 7 + K + N)
    qw = quantize(w, fmt)
    want = ref.quantized_linear(x, qw, b)
    assert_close(kernels.quantized_linear(x, qw, b, backend="cpu"), want, K=K)
    row = kernels.unpack(qw)  # the row format's kernels: the same exact block sums
    assert_close(kernels.quantized_linear(x, qw, b, backend="cpu"), kernels.quantized_linear(x, row, b, backend="cpu"),
                 K=K, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("fmt", ["q8_0x16", "q5_0x16"])
def test_panel_integer_extremes_do_not_saturate(fmt):
    _require_panels()
    K = 256
    w = mx.where(mx.arange(K) % 3 == 0, -1.0, 1.0)[None, :] * mx.array([[1.0], [-1.0], [0.5], [0.25]] * 4)  # (16, K)
    x = mx.where(mx.arange(K) % 2 == 0, 1.0, -1.0)[None, :] * mx.array([[100.0], [-7.0], [1.0]])
    qw = quantize(w, fmt)
    for m in (1, 3):
        assert_close(kernels.quantized_linear(x[:m], qw, backend="cpu"), ref.quantized_linear(x[:m], qw), K=K)


def test_for_backend_repacks_only_where_it_can():
    q8 = quantize(make(1, 64, 32, bias=False)[1], "q8_0")
    assert kernels.for_backend(q8, "ref") is q8
    odd = quantize(make(1, 64, 17, bias=False)[1], "q8_0")
    assert kernels.for_backend(odd, "cpu") is odd  # N not a multiple of 16
    q5 = quantize(make(1, 96, 32, bias=False)[1], "q5_0")
    assert kernels.for_backend(q5, "cpu") is q5  # K not a multiple of 64 (blocks go in pairs)
    a4 = quantize(make(1, 64, 32, bias=False)[1], "affine4")
    assert kernels.for_backend(a4, "cpu") is a4
    if kcpu.load() is not None and kernels.panel_kernels():
        assert kernels.for_backend(q8, "cpu").format == "q8_0x16"


def test_concat_rows_of_panels_is_the_panel_of_the_concat():
    from tiny_llm_playground.kernels.quant import concat_rows

    ws = [quantize(make(1, 128, n, bias=False, seed=n)[1], "q5_0") for n in (16, 32)]
    a = concat_rows([kernels.repack(w) for w in ws])
    b = kernels.repack(concat_rows(ws))
    assert a.format == "q5_0x16" and a.shape == (48, 128)
    np.testing.assert_array_equal(np.array(a.q), np.array(b.q))


def test_panel_formats_are_validated():
    qw = quantize(mx.ones((32, 64)), "q8_0x16")
    with pytest.raises(ValueError, match="N = 20 must be a positive multiple of 16"):
        QuantizedWeight("q8_0x16", (20, 64), qw.q).validate()
    with pytest.raises(ValueError, match="q8_0x16: q must be"):
        QuantizedWeight("q8_0x16", (32, 64), qw.q[:, :1]).validate()
    with pytest.raises(ValueError, match="scales must be None"):
        QuantizedWeight("q8_0x16", (32, 64), qw.q, qw.q).validate()
    with pytest.raises(ValueError, match="repack: q5_0x16 needs"):
        kernels.repack(quantize(mx.ones((32, 96)), "q5_0"))
    with pytest.raises(ValueError, match="has no panel layout"):
        kernels.repack(quantize(mx.ones((32, 64)), "affine4"))


def test_extension_validates_panel_formats():
    require("cpu")
    ext = kcpu.load()
    qw = quantize(mx.ones((32, 64)), "q5_0x16")
    with pytest.raises(ValueError, match=r"q5_0x16 q must be uint8 \(N/16, 1, 704\)"):
        ext.quantized_linear(mx.ones((2, 64)), qw.q[:, :, :700], None, None, None, "q5_0x16")
    with pytest.raises(ValueError, match="takes q only"):
        ext.quantized_linear(mx.ones((2, 64)), qw.q, qw.q, None, None, "q5_0x16")
    with pytest.raises(ValueError, match="multiple of 64"):
        ext.quantized_linear(mx.ones((2, 32)), qw.q, None, None, None, "q5_0x16")


def test_panel_formats_on_an_isa_without_them_say_so():
    require("cpu")
    ext = kcpu.load()
    qw = quantize(0.1 * mx.random.normal((16, 64), key=mx.random.key(1)), "q8_0x16")
    before = ext.cpu_isa()
    others = [i for i in ext.supported_isas() if i != "avx512"]
    if not others:
        pytest.skip("no ISA without the panel kernels to force")
    try:
        ext.set_isa(others[0])
        assert not kernels.panel_kernels()
        with pytest.raises(RuntimeError, match="need the AVX-512 VNNI kernels"):
            mx.eval(kernels.quantized_linear(mx.ones((1, 64)), qw, backend="cpu"))
    finally:
        ext.set_isa(before)


def test_engine_info_names_the_weight_layout(capsys):
    """`python -m engine info` says which layout the quantized weights are kept in, as the loader picks it."""
    from tiny_llm_playground.engine.cli import main
    from tiny_llm_playground.engine.loader.load import _layout

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    want = "16-row panels" if _layout(None) == "panels" else "rows ("
    assert f"quantized weights (q8_0, q5_0) are stored as: {want}" in out

"""Quantized weight formats: the `QuantizedWeight` container, quantize and dequantize in plain mx ops.

Formats (w is a float matrix (N, K), the PyTorch/HF (out, in) layout):
  "q8_0"     GGML's Q8_0 with the two parts stored as separate arrays: per block of 32 along K,
             d = max|w| / 127 (stored float16) and q = round(w / d) in int8 [-127, 127]; w ≈ d * q.
             1.0625 bytes per weight. Rounding is half away from zero, exactly like ggml/gguf.
  "affine4"  MLX's `mx.quantize(w, group_size=64, bits=4)` layout: per group of 64 along K,
             w ≈ scale * q + bias with q in [0, 15]; q packed 8 per uint32 (value i of a word at
             bits 4i..4i+3), scale and bias stored float16. 0.5625 bytes per weight.

Rules it keeps:
- `QuantizedWeight` is frozen and carries its own format and float shape; the kernels validate it.
- `dequantize` is the definition every kernel is tested against (kernels.ref.quantized_linear uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

# format -> number of consecutive K values sharing one scale (and bias)
BLOCK: dict[str, int] = {"q8_0": 32, "affine4": 64}
FORMATS: tuple[str, ...] = tuple(BLOCK)


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized (N, K) weight matrix.

    q8_0:    q int8 (N, K), scales float16 (N, K/32), biases None.
    affine4: q uint32 (N, K/8), scales float16 (N, K/64), biases float16 (N, K/64).
    """

    format: str
    shape: tuple[int, int]  # (N, K) of the float matrix
    q: mx.array
    scales: mx.array
    biases: mx.array | None = None

    def arrays(self) -> list[mx.array]:
        return [self.q, self.scales] + ([] if self.biases is None else [self.biases])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def validate(self) -> None:
        """Raise ValueError unless the arrays match the format and shape."""
        if self.format not in BLOCK:
            raise ValueError(f"unknown quantization format {self.format!r}; known: {', '.join(FORMATS)}")
        if len(self.shape) != 2:
            raise ValueError(f"{self.format}: shape must be (N, K), got {self.shape}")
        N, K = self.shape
        bs = BLOCK[self.format]
        if K <= 0 or K % bs:
            raise ValueError(f"{self.format}: K = {K} must be a positive multiple of {bs}")
        if self.format == "q8_0":
            want = {"q": ((N, K), mx.int8), "scales": ((N, K // bs), mx.float16)}
            if self.biases is not None:
                raise ValueError("q8_0: biases must be None")
        else:
            want = {
                "q": ((N, K // 8), mx.uint32),
                "scales": ((N, K // bs), mx.float16),
                "biases": ((N, K // bs), mx.float16),
            }
        for name, (shape, dtype) in want.items():
            a = getattr(self, name)
            if not isinstance(a, mx.array) or tuple(a.shape) != shape or a.dtype != dtype:
                got = "None" if a is None else f"{getattr(a, 'dtype', type(a).__name__)} {tuple(a.shape)}"
                raise ValueError(f"{self.format}: {name} must be {dtype} {shape}, got {got}")


def _round_half_away(v: mx.array) -> mx.array:
    return mx.sign(v) * mx.floor(mx.abs(v) + 0.5)


def quantize(w: mx.array, fmt: str, *, rows_per_chunk: int = 8192) -> QuantizedWeight:
    """Quantize a float (N, K) matrix into `fmt` (K must be a multiple of the format's block).

    Rows are processed in chunks to bound the temporaries (the 151936-row vocab matrix)."""
    if fmt not in BLOCK:
        raise ValueError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")
    if w.ndim != 2:
        raise ValueError(f"quantize: w must be 2-D (N, K), got shape {w.shape}")
    N, K = w.shape
    bs = BLOCK[fmt]
    if K % bs:
        raise ValueError(f"quantize: K = {K} is not a multiple of {fmt}'s block of {bs}")
    qs, ss, bb = [], [], []
    for r0 in range(0, N, rows_per_chunk):
        chunk = w[r0 : r0 + rows_per_chunk].astype(mx.float32)  # (n, K)
        if fmt == "q8_0":
            blocks = chunk.reshape(-1, K // bs, bs)  # (n, K/32, 32)
            d = mx.max(mx.abs(blocks), axis=-1, keepdims=True) / 127.0  # (n, K/32, 1)
            inv = mx.where(d == 0, 0.0, 1.0 / mx.where(d == 0, 1.0, d))  # as ggml: multiply by 1/d
            q = mx.clip(_round_half_away(blocks * inv), -127, 127).astype(mx.int8)
            qs.append(q.reshape(-1, K))
            ss.append(d.squeeze(-1).astype(mx.float16))
        else:
            q, s, b = mx.quantize(chunk, group_size=bs, bits=4)
            qs.append(q)
            ss.append(s.astype(mx.float16))
            bb.append(b.astype(mx.float16))
        mx.eval(qs[-1], ss[-1], *bb[-1:])
    qw = QuantizedWeight(
        format=fmt,
        shape=(N, K),
        q=mx.concatenate(qs) if len(qs) > 1 else qs[0],
        scales=mx.concatenate(ss) if len(ss) > 1 else ss[0],
        biases=None if not bb else (mx.concatenate(bb) if len(bb) > 1 else bb[0]),
    )
    mx.eval(*qw.arrays())
    return qw


def dequantize(qw: QuantizedWeight) -> mx.array:
    """The float32 (N, K) matrix a QuantizedWeight stands for (plain mx ops)."""
    N, K = qw.shape
    bs = BLOCK[qw.format]
    if qw.format == "q8_0":
        q = qw.q.astype(mx.float32).reshape(N, K // bs, bs)  # (N, K/32, 32)
        d = qw.scales.astype(mx.float32)[..., None]  # (N, K/32, 1)
        return (q * d).reshape(N, K)
    # affine4: unpack 8 nibbles per uint32, lowest bits first
    shifts = mx.arange(0, 32, 4, dtype=mx.uint32)  # (8,)
    q = (qw.q[..., None] >> shifts) & mx.array(0xF, dtype=mx.uint32)  # (N, K/8, 8)
    q = q.astype(mx.float32).reshape(N, K // bs, bs)  # (N, K/64, 64)
    s = qw.scales.astype(mx.float32)[..., None]
    b = qw.biases.astype(mx.float32)[..., None]
    return (q * s + b).reshape(N, K)


__all__ = ["BLOCK", "FORMATS", "QuantizedWeight", "dequantize", "quantize"]

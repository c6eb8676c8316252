"""Quantized weight formats: the `QuantizedWeight` container, quantize and dequantize in plain mx ops.

Formats (w is a float matrix (N, K), the PyTorch/HF (out, in) layout):
  "q8_0"     GGML's Q8_0 with the two parts stored as separate arrays: per block of 32 along K,
             d = max|w| / 127 (stored float16) and q = round(w / d) in int8 [-127, 127]; w ≈ d * q.
             1.0625 bytes per weight. Rounding is half away from zero, exactly like ggml/gguf.
  "q5_0"     GGML's Q5_0 (the format most of the Qwen2.5 GGUFs' matrices ship in), as three arrays:
             per block of 32 along K, d (float16) and 5-bit q in [0, 31], w = d * (q - 16). q's low
             four bits are packed two per byte in `q` (uint8 (N, K/2); byte j of a block holds value j
             in its low nibble and value j + 16 in its high nibble, as in the GGUF), the fifth bits in
             `high` (uint32 (N, K/32), bit i = value i's). 0.6875 bytes per weight. The loader takes
             these blocks straight from the GGUF (exact); `quantize` implements ggml's
             quantize_row_q5_0 for other weights and tests.
  "affine4"  MLX's `mx.quantize(w, group_size=64, bits=4)` layout: per group of 64 along K,
             w ≈ scale * q + bias with q in [0, 15]; q packed 8 per uint32 (value i of a word at
             bits 4i..4i+3), scale and bias stored float16 (0.5625 bytes per weight) or both float32
             (the course's format, exactly mx.quantize's float32 output; 0.625 bytes per weight).
  "q8_0x16", "q5_0x16"
             The same blocks, bytes and bits as q8_0 / q5_0, repacked (`repack`, exact both ways with
             `unpack`) into the order the int8 kernels read: 16 weight rows ("a panel") interleaved
             per block, every array of a panel in one stream. One uint8 array `q`:
             q8_0x16 (N/16, K/32, 544): per block b of panel p, bytes 64k + 4r + e (k < 8, r < 16,
               e < 4) = value 4k + e of row 16p + r, plus 128 (w xor 0x80: the unsigned side of
               vpdpbusd); bytes 512 + 2r = row r's float16 scale.
             q5_0x16 (N/16, K/64, 704), per pair of blocks (2t, 2t + 1), h = 0, 1:
               bytes 256h + 64j + 4r + e (j < 4) = the GGUF's nibble byte 4j + e of row r's block
                 2t + h (value 4j + e low, value 16 + 4j + e high), so the low nibbles of vector j
                 hold values 4j.. and the high nibbles values 16 + 4j.. of 16 rows;
               bytes 512 + 64h + 8k (k < 8): a 64-bit mask, bit 4r + e = the fifth bit of value
                 4k + e of row r (one byte mask per unpacked vector);
               bytes 640 + 32h + 2r: row r's float16 scale.
             N must be a multiple of 16 (and K of 64 for q5_0x16). Decode reads the weights once per
             token, so one sequential stream per thread is what lets it run at memory speed.

Rules it keeps:
- `QuantizedWeight` is frozen and carries its own format and float shape; the kernels validate it.
- `dequantize` is the definition every kernel is tested against (kernels.ref.quantized_linear uses it).
- q8_0 and q5_0 weights multiply activations rounded to Q8_0 blocks (`round_activations_q8`), in
  the reference and in every kernel; affine4 multiplies float32 activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

# format -> number of consecutive K values sharing one scale (and bias); for the panel formats, the unit
# K must be a multiple of (their blocks keep the row format's scale per 32 values)
BLOCK: dict[str, int] = {"q8_0": 32, "q5_0": 32, "affine4": 64, "q8_0x16": 32, "q5_0x16": 64}
FORMATS: tuple[str, ...] = tuple(BLOCK)
# panel format -> (the row format it repacks, bytes per unit of 16 rows x BLOCK values)
PANEL: dict[str, tuple[str, int]] = {"q8_0x16": ("q8_0", 544), "q5_0x16": ("q5_0", 704)}
PANEL_ROWS = 16


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized (N, K) weight matrix.

    q8_0:    q int8 (N, K), scales float16 (N, K/32), biases None.
    q5_0:    q uint8 (N, K/2), scales float16 (N, K/32), high uint32 (N, K/32), biases None.
    affine4: q uint32 (N, K/8), scales and biases (N, K/64), both float16 or both float32.
    q8_0x16: q uint8 (N/16, K/32, 544); q5_0x16: q uint8 (N/16, K/64, 704); nothing else (see the
             module docstring).
    """

    format: str
    shape: tuple[int, int]  # (N, K) of the float matrix
    q: mx.array
    scales: mx.array | None = None
    biases: mx.array | None = None
    high: mx.array | None = None

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.q, self.scales, self.biases, self.high) if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def validate(self) -> None:
        """Raise ValueError unless the arrays match the format and shape. A weight that passed once is
        not checked again (the fields are frozen; every linear layer of every step calls this)."""
        if self.__dict__.get("_valid"):
            return
        self._check()
        object.__setattr__(self, "_valid", True)

    def _check(self) -> None:
        if self.format not in BLOCK:
            raise ValueError(f"unknown quantization format {self.format!r}; known: {', '.join(FORMATS)}")
        if len(self.shape) != 2:
            raise ValueError(f"{self.format}: shape must be (N, K), got {self.shape}")
        N, K = self.shape
        bs = BLOCK[self.format]
        if K <= 0 or K % bs:
            raise ValueError(f"{self.format}: K = {K} must be a positive multiple of {bs}")
        if self.format in PANEL:
            if N <= 0 or N % PANEL_ROWS:
                raise ValueError(f"{self.format}: N = {N} must be a positive multiple of {PANEL_ROWS}")
            want = {"q": ((N // PANEL_ROWS, K // bs, PANEL[self.format][1]), mx.uint8)}
        elif self.format == "q8_0":
            want = {"q": ((N, K), mx.int8), "scales": ((N, K // bs), mx.float16)}
        elif self.format == "q5_0":
            want = {
                "q": ((N, K // 2), mx.uint8),
                "scales": ((N, K // bs), mx.float16),
                "high": ((N, K // bs), mx.uint32),
            }
        else:
            params = (mx.float16, mx.float32)  # affine4's scales and biases: either, both the same
            want = {
                "q": ((N, K // 8), mx.uint32),
                "scales": ((N, K // bs), params),
                "biases": ((N, K // bs), params),
            }
        for name in ("scales", "biases", "high"):
            if name not in want and getattr(self, name) is not None:
                raise ValueError(f"{self.format}: {name} must be None")
        for name, (shape, dtypes) in want.items():
            dtypes = dtypes if isinstance(dtypes, tuple) else (dtypes,)
            a = getattr(self, name)
            if not isinstance(a, mx.array) or tuple(a.shape) != shape or a.dtype not in dtypes:
                got = "None" if a is None else f"{getattr(a, 'dtype', type(a).__name__)} {tuple(a.shape)}"
                kinds = " or ".join(str(d) for d in dtypes)
                raise ValueError(f"{self.format}: {name} must be {kinds} {shape}, got {got}")
        if self.format == "affine4" and self.scales.dtype != self.biases.dtype:
            raise ValueError(
                f"affine4: scales and biases must have one dtype, got {self.scales.dtype} and {self.biases.dtype}"
            )


def _round_half_away(v: mx.array) -> mx.array:
    return mx.sign(v) * mx.floor(mx.abs(v) + 0.5)


def _q8_blocks(blocks: mx.array) -> tuple[mx.array, mx.array]:
    """Q8_0 rounding of float32 blocks (..., 32): q in [-127, 127] (float32) and d (..., 1), x ~ d * q."""
    d = mx.max(mx.abs(blocks), axis=-1, keepdims=True) / 127.0
    inv = mx.where(d == 0, 0.0, 1.0 / mx.where(d == 0, 1.0, d))  # as ggml: multiply by 1/d
    return mx.clip(_round_half_away(blocks * inv), -127, 127), d


def _q5_blocks(blocks: mx.array) -> tuple[mx.array, mx.array]:
    """ggml's quantize_row_q5_0 on float32 blocks (..., 32): q in [0, 31] (int32) and d (..., 1).

    d = (the value of largest magnitude) / -16, q = min(31, trunc(x / d + 16.5)); w ~ d * (q - 16)."""
    idx = mx.argmax(mx.abs(blocks), axis=-1, keepdims=True)  # the first one on ties, as ggml
    d = mx.take_along_axis(blocks, idx, axis=-1) / -16.0
    inv = mx.where(d == 0, 0.0, 1.0 / mx.where(d == 0, 1.0, d))
    q = mx.minimum(31, mx.floor(blocks * inv + 16.5)).astype(mx.int32)
    return q, d


def _bits(words: mx.array, n: int) -> mx.array:
    """Unsigned words (...) -> their n low bits (..., n) as 0/1 of the words' dtype, lowest first."""
    return (words[..., None] >> mx.arange(n, dtype=words.dtype)) & 1


def _word(bits: mx.array) -> mx.array:
    """0/1 bits (..., n), n <= 32 -> uint32 words (...), bit i = bits[..., i] (the inverse of _bits)."""
    return mx.sum(bits.astype(mx.uint32) << mx.arange(bits.shape[-1], dtype=mx.uint32), axis=-1).astype(mx.uint32)


def _pack_bits(bits: mx.array) -> mx.array:
    """0/1 bits (..., 8n) -> bytes (..., n), bit i of byte j = bits[8j + i] (little-endian words)."""
    return _word(bits.reshape(*bits.shape[:-1], -1, 8)).astype(mx.uint8)


def _pack_q5(q: mx.array) -> tuple[mx.array, mx.array]:
    """q (..., 32) int32 in [0, 31] -> (nibbles (..., 16) uint8, fifth bits (...,) uint32)."""
    nib = (q[..., :16] & 0xF) | ((q[..., 16:] & 0xF) << 4)
    return nib.astype(mx.uint8), _word((q >> 4) & 1)


def round_activations_q8(x: mx.array) -> mx.array:
    """x (..., K) float32 rounded to Q8_0 blocks along K, scales kept in float32: d * q per block.

    This is what the q8_0 kernels multiply the weights with (as llama.cpp does): the dot product of a
    weight block and an activation block is then exact in int32, and VNNI computes it in one step."""
    K = x.shape[-1]
    bs = BLOCK["q8_0"]
    if K % bs:
        raise ValueError(f"round_activations_q8: K = {K} is not a multiple of {bs}")
    q, d = _q8_blocks(x.astype(mx.float32).reshape(*x.shape[:-1], K // bs, bs))
    return (q * d).reshape(x.shape)


def quantize(
    w: mx.array, fmt: str, *, rows_per_chunk: int = 8192, scale_dtype: mx.Dtype = mx.float16
) -> QuantizedWeight:
    """Quantize a float (N, K) matrix into `fmt` (K must be a multiple of the format's block).

    scale_dtype: the dtype the scales (and affine4's biases) are stored in: float16, or for affine4
    also float32 (then exactly what mx.quantize computes from float32 w). Rows are processed in chunks
    to bound the temporaries (the 151936-row vocab matrix)."""
    if fmt not in BLOCK:
        raise ValueError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")
    if w.ndim != 2:
        raise ValueError(f"quantize: w must be 2-D (N, K), got shape {w.shape}")
    allowed = (mx.float16, mx.float32) if fmt == "affine4" else (mx.float16,)
    if scale_dtype not in allowed:
        kinds = " or ".join(str(d) for d in allowed)
        raise ValueError(f"quantize: {fmt} stores its scales as {kinds}, got scale_dtype={scale_dtype}")
    if fmt in PANEL:
        return repack(quantize(w, PANEL[fmt][0], rows_per_chunk=rows_per_chunk))
    N, K = w.shape
    bs = BLOCK[fmt]
    if K % bs:
        raise ValueError(f"quantize: K = {K} is not a multiple of {fmt}'s block of {bs}")
    qs, ss, bb = [], [], []
    for r0 in range(0, N, rows_per_chunk):
        chunk = w[r0 : r0 + rows_per_chunk].astype(mx.float32)  # (n, K)
        if fmt == "q8_0":
            q, d = _q8_blocks(chunk.reshape(-1, K // bs, bs))  # (n, K/32, 32), (n, K/32, 1)
            qs.append(q.astype(mx.int8).reshape(-1, K))
            ss.append(d.squeeze(-1).astype(mx.float16))
        elif fmt == "q5_0":
            q, d = _q5_blocks(chunk.reshape(-1, K // bs, bs))
            nib, high = _pack_q5(q)  # (n, K/32, 16), (n, K/32)
            qs.append(nib.reshape(-1, K // 2))
            ss.append(d.squeeze(-1).astype(mx.float16))
            bb.append(high)
        else:
            q, s, b = mx.quantize(chunk, group_size=bs, bits=4)  # s, b float32 (chunk is)
            qs.append(q)
            ss.append(s.astype(scale_dtype))
            bb.append(b.astype(scale_dtype))
        mx.eval(qs[-1], ss[-1], *bb[-1:])
    third = None if not bb else (mx.concatenate(bb) if len(bb) > 1 else bb[0])
    qw = QuantizedWeight(
        format=fmt,
        shape=(N, K),
        q=mx.concatenate(qs) if len(qs) > 1 else qs[0],
        scales=mx.concatenate(ss) if len(ss) > 1 else ss[0],
        biases=third if fmt == "affine4" else None,
        high=third if fmt == "q5_0" else None,
    )
    mx.eval(*qw.arrays())
    return qw


def repack(qw: QuantizedWeight, *, rows_per_chunk: int = 8192) -> QuantizedWeight:
    """q8_0 -> q8_0x16, q5_0 -> q5_0x16 (the module docstring's layout; exact, `unpack` undoes it).

    ValueError unless N is a multiple of 16 (and K of 64 for q5_0). Rows go in chunks (a multiple of 16)
    to bound the temporaries."""
    panel = {"q8_0": "q8_0x16", "q5_0": "q5_0x16"}.get(qw.format)
    if panel is None:
        raise ValueError(f"repack: {qw.format} has no panel layout (q8_0, q5_0 do)")
    qw.validate()
    N, K = qw.shape
    if N % PANEL_ROWS or K % BLOCK[panel]:
        raise ValueError(f"repack: {panel} needs N % {PANEL_ROWS} == 0 and K % {BLOCK[panel]} == 0, got {qw.shape}")
    nb = K // BLOCK["q8_0"]
    chunks = []
    for r0 in range(0, N, rows_per_chunk):  # bounded temporaries (the 151936-row head)
        rows = slice(r0, r0 + rows_per_chunk)
        P = min(rows_per_chunk, N - r0) // PANEL_ROWS
        # row-major (P, r, block, ...) -> panel-major (P, block, ..., r, ...)
        sc = qw.scales[rows].view(mx.uint8).reshape(P, PANEL_ROWS, nb, 2).transpose(0, 2, 1, 3).reshape(P, nb, 32)
        if panel == "q8_0x16":
            u = qw.q[rows].view(mx.uint8) ^ mx.array(0x80, dtype=mx.uint8)
            u = u.reshape(P, PANEL_ROWS, nb, 8, 4).transpose(0, 2, 3, 1, 4).reshape(P, nb, 512)
            out = mx.concatenate([u, sc], axis=-1)
        else:
            nib = qw.q[rows].reshape(P, PANEL_ROWS, nb, 4, 4).transpose(0, 2, 3, 1, 4).reshape(P, nb // 2, 512)
            bits = _bits(qw.high[rows], 32).reshape(P, PANEL_ROWS, nb, 8, 4)
            bits = bits.transpose(0, 2, 3, 1, 4)  # (P, nb, k, r, e)
            masks = _pack_bits(bits.reshape(P, nb, 8, 64)).reshape(P, nb // 2, 128)
            out = mx.concatenate([nib, masks, sc.reshape(P, nb // 2, 64)], axis=-1)
        mx.eval(out)
        chunks.append(out)
    res = QuantizedWeight(panel, (N, K), mx.concatenate(chunks) if len(chunks) > 1 else chunks[0])
    del chunks
    mx.eval(res.q)
    return res


def unpack(qw: QuantizedWeight) -> QuantizedWeight:
    """A panel format back to its row format (q8_0x16 -> q8_0, q5_0x16 -> q5_0); others as they are."""
    if qw.format not in PANEL:
        return qw
    qw.validate()
    N, K = qw.shape
    P, nb = N // PANEL_ROWS, K // BLOCK["q8_0"]
    if qw.format == "q8_0x16":
        units = qw.q  # (P, nb, 544)
        u = units[..., :512].reshape(P, nb, 8, PANEL_ROWS, 4).transpose(0, 3, 1, 2, 4)  # (P, r, nb, k, e)
        q = (u.reshape(N, K) ^ mx.array(0x80, dtype=mx.uint8)).view(mx.int8)
        sc = units[..., 512:]
        high = None
    else:
        units = qw.q  # (P, nb/2, 704)
        nib = units[..., :512].reshape(P, nb, 4, PANEL_ROWS, 4).transpose(0, 3, 1, 2, 4)  # (P, r, nb, j, e)
        q = nib.reshape(N, K // 2)
        bits = _bits(units[..., 512:640].reshape(P, nb, 8, 8), 8).reshape(P, nb, 8, PANEL_ROWS, 4)
        high = _word(bits.transpose(0, 3, 1, 2, 4).reshape(N, nb, 32))  # bit i = value i's fifth bit
        sc = units[..., 640:]
    sc = sc.reshape(P, nb, PANEL_ROWS, 2).transpose(0, 2, 1, 3).reshape(N, nb * 2).view(mx.float16)
    out = QuantizedWeight(PANEL[qw.format][0], (N, K), q, sc, high=high)
    mx.eval(*out.arrays())
    return out


def dequantize(qw: QuantizedWeight) -> mx.array:
    """The float32 (N, K) matrix a QuantizedWeight stands for (plain mx ops)."""
    qw = unpack(qw)
    N, K = qw.shape
    bs = BLOCK[qw.format]
    if qw.format == "q8_0":
        q = qw.q.astype(mx.float32).reshape(N, K // bs, bs)  # (N, K/32, 32)
        d = qw.scales.astype(mx.float32)[..., None]  # (N, K/32, 1)
        return (q * d).reshape(N, K)
    if qw.format == "q5_0":
        nib = qw.q.reshape(N, K // bs, bs // 2)  # (N, K/32, 16)
        low = mx.concatenate([nib & 0xF, nib >> 4], axis=-1).astype(mx.uint32)  # values 0..15, 16..31
        bits = _bits(qw.high, 32)  # (N, K/32, 32)
        q = (low | (bits << 4)).astype(mx.float32) - 16.0
        return (q * qw.scales.astype(mx.float32)[..., None]).reshape(N, K)
    # affine4: unpack 8 nibbles per uint32, lowest bits first
    shifts = mx.arange(0, 32, 4, dtype=mx.uint32)  # (8,)
    q = (qw.q[..., None] >> shifts) & mx.array(0xF, dtype=mx.uint32)  # (N, K/8, 8)
    q = q.astype(mx.float32).reshape(N, K // bs, bs)  # (N, K/64, 64)
    s = qw.scales.astype(mx.float32)[..., None]
    b = qw.biases.astype(mx.float32)[..., None]
    return (q * s + b).reshape(N, K)


def stackable(a: object, b: object) -> bool:
    """Whether two weights can be stacked along N into one QuantizedWeight: both quantized, with one
    format, one K and one dtype of scales."""
    return (
        isinstance(a, QuantizedWeight)
        and isinstance(b, QuantizedWeight)
        and a.format == b.format
        and a.shape[1] == b.shape[1]
        and getattr(a.scales, "dtype", None) == getattr(b.scales, "dtype", None)
    )


def concat_rows(qws: list[QuantizedWeight]) -> QuantizedWeight | None:
    """The weights stacked along N (one matmul instead of several on the same x), or None when they
    are not all `stackable` with the first. The result owns new arrays."""
    if not qws or not all(stackable(qws[0], w) for w in qws):
        return None
    fmt, K = qws[0].format, qws[0].shape[1]

    def cat(name: str) -> mx.array | None:
        parts = [getattr(w, name) for w in qws]
        return None if parts[0] is None else mx.concatenate(parts)

    out = QuantizedWeight(fmt, (sum(w.shape[0] for w in qws), K), cat("q"), cat("scales"), cat("biases"), cat("high"))
    mx.eval(*out.arrays())
    return out


__all__ = [
    "BLOCK",
    "FORMATS",
    "QuantizedWeight",
    "PANEL",
    "PANEL_ROWS",
    "concat_rows",
    "dequantize",
    "quantize",
    "repack",
    "unpack",
    "round_activations_q8",
    "stackable",
]

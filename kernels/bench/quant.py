"""Benchmark kernels.quantized_linear (q8_0, q5_0, their 16-row panel layouts q8_0x16 / q5_0x16 where the
CPU has the kernels for them, affine4) against the float32 kernels.linear, cpu backend.

Run: `python -m kernels.bench.quant [--reps N] [--quick]`.

Per shape, the best wall time (ms) over repeats of a fully evaluated call for float32 / q8_0 / q5_0 /
affine4, the weight-read bandwidth (GB/s of the bytes each format stores: what bounds M=1), GFLOP/s
for M > 1, and each format's speed-up over float32 measured in the same run. Shapes are the
Qwen2.5-0.5B projections (K, N) = (896, 4864), (4864, 896), (896, 896), (896, 128) at
M = 1 (decode), 16, 128, 512 (prefill), plus the 896 -> 151936 lm_head at M = 1. The CPU is shared,
so best-of-N is reported; ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels.bench.linear import LM_HEAD, PROJECTIONS
from tiny_llm_playground.kernels.bench.timing import best_time


def formats() -> tuple[str, ...]:
    panels = ("q8_0x16", "q5_0x16") if kernels.panel_kernels() else ()
    return ("q8_0", "q5_0", *panels, "affine4")


def shapes(quick: bool) -> list[tuple[int, int, int]]:
    ms = (1, 16) if quick else (1, 16, 128, 512)
    out = [(1, *LM_HEAD)]
    out += [(M, K, N) for M in ms for K, N in PROJECTIONS]
    return out


def bench_shape(M: int, K: int, N: int, reps: int) -> str:
    kx, kw = mx.random.split(mx.random.key(M * 7919 + K * 31 + N))
    x = mx.random.normal((M, K), key=kx)  # (M, K)
    w = 0.05 * mx.random.normal((N, K), key=kw)  # (N, K)
    mx.eval(x, w)
    flops = 2.0 * M * N * K
    line = f"{M:>4} {K:>5} {N:>6} |"
    t32 = best_time(lambda: mx.eval(kernels.linear(x, w, backend="cpu")), reps, 2.0)
    line += f" {t32 * 1e3:>8.3f} {4.0 * N * K / t32 / 1e9:>5.1f} {flops / t32 / 1e9:>6.1f} |"
    for fmt in formats():
        qw = kernels.quantize(w, fmt)
        t = best_time(lambda qw=qw: mx.eval(kernels.quantized_linear(x, qw, backend="cpu")), reps, 2.0)
        line += f" {t * 1e3:>8.3f} {qw.nbytes / t / 1e9:>5.1f} {flops / t / 1e9:>6.1f} {t32 / t:>5.2f}x |"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="quantized_linear benchmark (cpu backend)")
    parser.add_argument("--reps", type=int, default=20, help="max repeats per measurement")
    parser.add_argument("--quick", action="store_true", help="only M=1 and M=16")
    args = parser.parse_args(argv)
    ext = kcpu.load()
    if ext is None:
        print(f"cpu backend unavailable: {kernels.available_backends()['cpu']}")
        return 1
    print(f"cpu extension: isa={ext.cpu_isa()} threads={ext.num_threads()}")
    head = f"{'ms':>8} {'GB/s':>5} {'GF/s':>6}"
    print(
        f"{'M':>4} {'K':>5} {'N':>6} | float32: {head} | "
        + " | ".join(f"{fmt}: {head} {'vs f32':>6}" for fmt in formats())
    )
    for M, K, N in shapes(args.quick):
        print(bench_shape(M, K, N, args.reps), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

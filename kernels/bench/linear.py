"""Benchmark kernels.linear: ref (plain mx ops) vs cpu (the C++ extension), float32.

Run: `python -m kernels.bench.linear [--reps N] [--no-numpy] [--quick]`.

Prints, per shape, the best wall time (ms) over repeats of a fully evaluated call, GFLOP/s,
weight-read bandwidth (GB/s, what bounds M=1), and cpu's speed-up over ref. numpy (OpenBLAS,
multi-threaded) is measured in the same run as an outside peer. Shapes are the Qwen2.5-0.5B
projections: M in (1, 16, 128, 512) x (896->4864, 4864->896, 896->896, 896->128), plus the
896->151936 lm_head at M=1. The CPU is shared (web server, other jobs), so best-of-N is reported.
"""

from __future__ import annotations

import argparse

import mlx.core as mx
import numpy as np

from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels.bench.timing import best_time

# (K, N): y (M, N) = x (M, K) @ w (N, K).T
PROJECTIONS: list[tuple[int, int]] = [(896, 4864), (4864, 896), (896, 896), (896, 128)]
LM_HEAD: tuple[int, int] = (896, 151936)


def shapes(quick: bool) -> list[tuple[int, int, int]]:
    ms = (1, 16) if quick else (1, 16, 128, 512)
    out = [(M, K, N) for M in ms for K, N in PROJECTIONS]
    out.append((1, *LM_HEAD))
    return out


def bench_shape(M: int, K: int, N: int, *, reps: int, with_numpy: bool, cpu_ok: bool) -> str:
    """One table row for y (M, N) = x (M, K) @ w (N, K).T + b."""
    kx, kw = mx.random.split(mx.random.key(M * 1000003 + K * 1009 + N))
    x = mx.random.normal((M, K), key=kx)  # (M, K)
    w = mx.random.normal((N, K), key=kw)  # (N, K)
    b = mx.zeros((N,))  # (N,)
    mx.eval(x, w, b)
    flops = 2.0 * M * N * K
    wbytes = 4.0 * N * K

    def run(backend: str) -> None:
        mx.eval(kernels.linear(x, w, b, backend=backend))

    # The reference is slow on CPU (netlib BLAS): few repeats, small budget.
    t_ref = best_time(lambda: run("ref"), reps=3, budget_s=2.0)
    line = f"{M:>4} {K:>5} {N:>6} | {t_ref * 1e3:>9.2f} {flops / t_ref / 1e9:>6.1f} | "
    t_cpu = float("nan")
    if cpu_ok:
        t_cpu = best_time(lambda: run("cpu"), reps=reps, budget_s=2.0)
        line += f"{t_cpu * 1e3:>8.3f} {flops / t_cpu / 1e9:>6.1f} {wbytes / t_cpu / 1e9:>5.1f} | {t_ref / t_cpu:>6.1f}x"
    else:
        line += f"{'n/a':>8} {'':>6} {'':>5} | {'n/a':>7}"
    if with_numpy:
        xn, wn, bn = np.array(x), np.array(w), np.array(b)
        t_np = best_time(lambda: xn @ wn.T + bn, reps=reps, budget_s=2.0)
        line += f" | {t_np * 1e3:>8.3f} {t_np / t_cpu:>5.2f}x"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="linear benchmark: ref vs cpu (float32)")
    parser.add_argument("--reps", type=int, default=20, help="max repeats per measurement")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy/OpenBLAS peer")
    parser.add_argument("--quick", action="store_true", help="only M=1 and M=16")
    args = parser.parse_args(argv)

    status = kernels.available_backends()
    ext = kcpu.load()
    print(f"backends: {status}")
    if ext is not None:
        print(f"cpu extension: isa={ext.cpu_isa()} threads={ext.num_threads()}")
    print(
        f"{'M':>4} {'K':>5} {'N':>6} | {'ref ms':>9} {'GF/s':>6} | {'cpu ms':>8} {'GF/s':>6} {'GB/s':>5}"
        f" | {'cpu/ref':>7}" + ("" if args.no_numpy else f" | {'numpy ms':>8} {'cpu/np':>6}")
    )
    for M, K, N in shapes(args.quick):
        print(
            bench_shape(M, K, N, reps=args.reps, with_numpy=not args.no_numpy, cpu_ok=ext is not None),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

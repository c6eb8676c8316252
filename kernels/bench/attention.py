"""Benchmark kernels.flash_attention, rms_norm and swiglu: ref (plain mx ops) vs cpu, same run.

Run: `python -m kernels.bench.attention [--reps N] [--quick]`.

Attention shapes are the Qwen2.5-0.5B ones (14 query heads, 2 kv heads, head_dim 64): decode (L=1)
over S cached keys, and causal prefill (L = S). rms_norm and swiglu use the model's widths (896, 4864)
at M=1 (decode) and M=512 (prefill). Prints the best wall time (ms) of a fully evaluated call, and
cpu's speed-up over ref. The CPU is shared (web server, other jobs), so best-of-N is reported.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import mlx.core as mx

from tiny_llm_playground import kernels
from tiny_llm_playground.kernels.bench.timing import best_time


def row(label: str, fn_for: Callable[[str], Callable[[], None]], reps: int) -> str:
    t_ref = best_time(fn_for("ref"), reps)
    t_cpu = best_time(fn_for("cpu"), reps)
    times = f"ref {1e3 * t_ref:9.3f} ms   cpu {1e3 * t_cpu:8.3f} ms"
    return f"{label:34s} {times}   cpu/ref speed-up {t_ref / t_cpu:6.1f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if kernels.available_backends()["cpu"] != "ok":
        raise SystemExit(f"cpu backend {kernels.available_backends()['cpu']}")
    H, Hkv, D = 14, 2, 64
    decode_S = (128, 512) if args.quick else (128, 512, 2048)
    prefill_L = (128,) if args.quick else (128, 512, 1024)
    print(f"flash_attention, H={H} H_kv={Hkv} D={D}, float32; best of {args.reps}")
    for L, S in [(1, s) for s in decode_S] + [(n, n) for n in prefill_L]:
        key = mx.random.key(L + S)
        q = mx.random.normal((1, H, L, D), key=key)
        k = mx.random.normal((1, Hkv, S, D), key=mx.random.split(key)[0])
        v = mx.random.normal((1, Hkv, S, D), key=mx.random.split(key)[1])
        mx.eval(q, k, v)

        def fn_for(backend: str, q=q, k=k, v=v) -> Callable[[], None]:
            return lambda: mx.eval(kernels.flash_attention(q, k, v, backend=backend))

        kind = "decode " if L == 1 else "prefill"
        print(row(f"  {kind} L={L:4d} S={S:4d}", fn_for, args.reps if S * L < 500_000 else 3), flush=True)

    print("fused elementwise, float32")
    for M in (1, 512):
        x = mx.random.normal((M, 896))
        w = mx.random.normal((896,))
        g = mx.random.normal((M, 4864))
        u = mx.random.normal((M, 4864))
        mx.eval(x, w, g, u)
        print(
            row(
                f"  rms_norm M={M:3d} D=896",
                lambda b, x=x, w=w: lambda: mx.eval(kernels.rms_norm(x, w, 1e-6, backend=b)),
                args.reps,
            )
        )
        print(
            row(
                f"  swiglu   M={M:3d} F=4864",
                lambda b, g=g, u=u: lambda: mx.eval(kernels.swiglu(g, u, backend=b)),
                args.reps,
            )
        )


if __name__ == "__main__":
    main()

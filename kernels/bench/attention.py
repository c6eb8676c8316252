"""Benchmark kernels.flash_attention, rms_norm and swiglu: ref (plain mx ops) vs cpu, same run; and the
paged cache's decode step against the per-row dense one, both on the cpu kernels.

Run: `python -m kernels.bench.attention [--reps N] [--quick]`.

Attention shapes are the Qwen2.5-0.5B ones (14 query heads, 2 kv heads, head_dim 64): decode (L=1)
over S cached keys, and causal prefill (L = S). rms_norm and swiglu use the model's widths (896, 4864)
at M=1 (decode) and M=512 (prefill). Paged vs dense: one decode step of B = 1 or 16 rows (ragged
lengths in 128..2048), kernels.paged_attention with the new keys (blocks of 16, scattered through the
pool in random order) against kernels.decode_attention_rows (each row's own contiguous buffers) on the
same lengths. Prints the best wall time (ms) of a fully evaluated call, and cpu's speed-up over ref
(paged/dense: the ratio of the two times). The CPU is shared (web server, other jobs), so best-of-N is
reported.
"""

from __future__ import annotations

import argparse
import random
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

    paged_vs_dense(H, Hkv, D, args.reps, args.quick)

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


def decode_steps(
    before: list[int], H: int, Hkv: int, D: int, block_size: int, rnd: random.Random
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(dense, paged): one decode step of rows holding `before` tokens, storing the new keys, evaluated;
    dense = decode_attention_rows over per-row buffers, paged = paged_attention over the same keys in a
    pool whose blocks each row draws at random (out of order, scattered)."""
    B = len(before)
    ks = mx.random.split(mx.random.key(B + before[0]), 5)
    q = mx.random.normal((B, H, 1, D), key=ks[0])
    k = mx.random.normal((B, Hkv, 1, D), key=ks[1])
    v = mx.random.normal((B, Hkv, 1, D), key=ks[2])
    rows = [
        (mx.random.normal((1, Hkv, n + 1, D), key=ks[3]), mx.random.normal((1, Hkv, n + 1, D), key=ks[4]))
        for n in before
    ]
    need = [-(-(n + 1) // block_size) for n in before]
    free = list(range(sum(need)))
    rnd.shuffle(free)
    tables = mx.array([[free.pop() for _ in range(c)] + [-1] * (max(need) - c) for c in need], dtype=mx.int32)
    kp = kernels.kv_pool(sum(need), block_size, Hkv, D, backend="cpu")
    vp = kernels.kv_pool(sum(need), block_size, Hkv, D, backend="cpu")
    for b, n in enumerate(before):
        row_lengths = mx.array([n], dtype=mx.int32)
        done, _ = kernels.paged_write(
            rows[b][0][:, :, :n], rows[b][1][:, :, :n], kp, vp, tables[b : b + 1], row_lengths
        )
        mx.eval(done)
    lengths = mx.array([n + 1 for n in before], dtype=mx.int32)
    mx.eval(q, k, v, rows, tables, lengths)

    def dense() -> None:
        mx.eval(kernels.decode_attention_rows(q, k, v, rows, before, backend="cpu")[0])

    def paged() -> None:
        mx.eval(kernels.paged_attention(q, k, v, kp, vp, tables, lengths, backend="cpu")[0])

    return dense, paged


def paged_vs_dense(H: int, Hkv: int, D: int, reps: int, quick: bool, block_size: int = 16) -> None:
    """One decode step (L = 1) on the cpu kernels, paged vs dense, for B = 1 and B = 16 rows."""
    rnd = random.Random(0)
    batches = [[128], [2048]] if quick else [[128], [512], [2048]]
    batches.append([rnd.randint(128, 2048) for _ in range(16)])
    print(f"decode step, paged (block_size={block_size}) vs dense per-row buffers, cpu; best of {reps}")
    for before in batches:  # tokens each row holds before the step
        dense, paged = decode_steps(before, H, Hkv, D, block_size, rnd)
        t_dense, t_paged = best_time(dense, reps), best_time(paged, reps)
        B = len(before)
        label = f"B={B:2d} S={before[0]:4d}" if B == 1 else f"B={B:2d} S={min(before)}..{max(before)}"
        times = f"dense {1e3 * t_dense:8.3f} ms   paged {1e3 * t_paged:8.3f} ms"
        print(f"  {label:32s} {times}   paged/dense {t_paged / t_dense:5.2f}x", flush=True)


if __name__ == "__main__":
    main()

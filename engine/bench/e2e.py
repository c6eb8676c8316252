"""End-to-end speed of the real model plus a per-op-category profile of one decode step.

Run: `python -m engine.bench.e2e [--quant auto] [--reps 3] [--no-profile] [--layouts]` (from the repo root).

Prints prefill tok/s for 128 and 512 prompt tokens (fresh cache, logits of the last position only, as
`generate` does), decode tok/s over 64 greedy steps after a ~512-token prompt, best of `--reps`.

The profile splits a decode step (B=1, L=1, S cached tokens) into op categories by timing each category
alone with the real shapes and the model's own weights: the 24 layers' linears (+ lm_head), attention
(the core softmax(qk^T)v over the cache), RMSNorm, RoPE and the SwiGLU elementwise product. Each
category is one lazy graph of all its ops in a step, evaluated once, so the times add up to roughly a
step (residual adds, reshapes and the cache append are the rest). The CPU is shared: best-of-N.

`--layouts` times a decode step's linears per matrix kind with the weights as the model holds them (the
16-row panel formats where the cpu kernels read them) against the same blocks in the row formats
(`kernels.unpack`), alternating, with the last-level cache flushed before every run (the weights come
from memory, as in a real step), and prints GB/s and the ratio.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from tiny_llm_playground.engine.loader import load_model
from tiny_llm_playground.kernels.bench.timing import best_time


def prefill_tps(model, L: int, reps: int) -> float:
    ids = mx.array([[(i * 7919) % 20000 + 100 for i in range(L)]])  # (1, L)

    def run() -> None:
        cache = model.make_cache()
        mx.eval(model(ids, cache, last_only=True))

    return L / best_time(run, reps)


def decode_tps(model, prompt: int, steps: int, reps: int) -> float:
    """Greedy decode steps after a `prompt`-token prefill; only the steps are timed, best of reps."""
    ids = mx.array([[(i * 7919) % 20000 + 100 for i in range(prompt)]])
    times = []
    for _ in range(reps):
        cache = model.make_cache()
        tok = mx.argmax(model(ids, cache, last_only=True)[:, -1], axis=-1)
        mx.eval(tok)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = mx.argmax(model(tok[:, None], cache, last_only=True)[:, -1], axis=-1)
            mx.eval(tok)
        times.append(time.perf_counter() - t0)
    return steps / min(times)


def profile_decode(model, S: int, reps: int) -> dict[str, float]:
    """ms per decode step spent in each op category, each timed alone (see module docstring)."""
    from tiny_llm_playground import kernels
    from tiny_llm_playground.engine.layers import scaled_dot_product_attention
    from tiny_llm_playground.engine.layers.mlp import silu

    a = model.args
    H, Hkv, D, F, E = (
        a.num_attention_heads,
        a.num_key_value_heads,
        a.head_dim,
        a.intermediate_size,
        a.hidden_size,
    )
    key = mx.random.key(0)
    x = mx.random.normal((1, 1, E), key=key)
    q = mx.random.normal((1, H, 1, D), key=key)
    k = mx.random.normal((1, Hkv, S, D), key=key)
    v = mx.random.normal((1, Hkv, S, D), key=key)
    g = mx.random.normal((1, 1, F), key=key)
    u = mx.random.normal((1, 1, F), key=key)
    mx.eval(x, q, k, v, g, u)
    layers = model.layers
    fast = model.backend != "ref" and kernels.backend_for("flash_attention") != "ref"

    def linears() -> None:
        outs = []
        for blk in layers:
            outs += [*blk.self_attn.qkv(x), blk.self_attn.o_proj(x), *blk.mlp.gate_up(x), blk.mlp.down_proj(g)]
        outs.append(model.logits(x))
        mx.eval(outs)

    def attention() -> None:
        if fast:
            outs = [kernels.flash_attention(q, k, v, scale=D**-0.5) for _ in layers]
        else:
            outs = [scaled_dot_product_attention(q, k, v, scale=D**-0.5) for _ in layers]
        mx.eval(outs)

    def norms() -> None:
        outs = []
        for blk in layers:
            outs += [blk.input_layernorm(x), blk.post_attention_layernorm(x)]
        outs.append(model.norm(x))
        mx.eval(outs)

    def ropes() -> None:
        kq = q[:, :, :, :]
        kk = k[:, :, :1, :]
        outs = []
        for blk in layers:
            r = blk.self_attn.rope  # the layer the model uses: the fused kernel on a fast backend
            outs += [r.rotate(kq.transpose(0, 2, 1, 3), S), r.rotate(kk.transpose(0, 2, 1, 3), S)]
        mx.eval(outs)

    def swiglus() -> None:
        if fast:
            outs = [kernels.swiglu(g, u) for _ in layers]
        else:
            outs = [silu(g) * u for _ in layers]
        mx.eval(outs)

    return {
        name: 1e3 * best_time(fn, reps)
        for name, fn in (("linear", linears), ("attention", attention), ("rms_norm", norms),
                         ("rope", ropes), ("swiglu", swiglus))
    }  # fmt: skip


def profile_layouts(model, reps: int) -> None:
    """Per matrix kind of a decode step (24 layers each): the model's layout vs the row formats."""
    import numpy as np

    from tiny_llm_playground import kernels
    from tiny_llm_playground.engine.layers import linear

    def calls_of(xi: mx.array, lin) -> list:
        return [(xi, lin.weight, lin.bias)]

    a = model.args
    x = mx.random.normal((1, 1, a.hidden_size))
    g = mx.random.normal((1, 1, a.intermediate_size))
    mx.eval(x, g)
    kinds: dict[str, list] = {"q/k/v": [], "o": [], "gate+up": [], "down": [], "lm_head": calls_of(x, model.lm_head)}
    for blk in model.layers:  # each matmul as the model runs it (q/k/v and gate/up stacked where they stack)
        att, mlp = blk.self_attn, blk.mlp
        kinds["q/k/v"] += [c for lin, _ in att.qkv.parts for c in calls_of(x, lin)]
        kinds["o"] += calls_of(x, att.o_proj)
        kinds["gate+up"] += [c for lin, _ in mlp.gate_up.parts for c in calls_of(x, lin)]
        kinds["down"] += calls_of(g, mlp.down_proj)
    flush = np.ones(96 << 17)  # 96 MB, more than the last-level cache

    def run(calls) -> float:
        nonlocal flush
        out = float("inf")
        for _ in range(reps):
            flush += 1.0
            t0 = time.perf_counter()
            mx.eval([linear(xi, w, b, model.backend) for xi, w, b in calls])
            out = min(out, time.perf_counter() - t0)
        return out

    total = {"model": 0.0, "rows": 0.0}
    print(f"{'decode linears':>14} | {'as loaded':>22} | {'row formats':>22} | ratio")
    for kind, calls in kinds.items():
        rows = [(xi, kernels.unpack(w) if isinstance(w, kernels.QuantizedWeight) else w, b) for xi, w, b in calls]
        nbytes = sum(w.nbytes for _, w, _ in calls)
        fmts = sorted({w.format for _, w, _ in calls if isinstance(w, kernels.QuantizedWeight)})
        t_model, t_rows = run(calls), run(rows)
        t_model = min(t_model, run(calls))  # alternate once more: the machine drifts
        total["model"] += t_model
        total["rows"] += t_rows
        print(f"{kind:>14} | {t_model * 1e3:6.2f} ms {nbytes / t_model / 1e9:5.1f} GB/s {'/'.join(fmts):>8}"
              f" | {t_rows * 1e3:6.2f} ms {nbytes / t_rows / 1e9:5.1f} GB/s | {t_rows / t_model:4.2f}x")  # fmt: skip
    print(f"{'total':>14} | {total['model'] * 1e3:6.2f} ms | {total['rows'] * 1e3:6.2f} ms"
          f" | {total['rows'] / total['model']:4.2f}x")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quant", default="auto")
    p.add_argument("--backend", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-e2e", action="store_true")
    p.add_argument("--layouts", action="store_true", help="decode linears: panel vs row layout")
    args = p.parse_args()
    lm = load_model("qwen2.5-coder-0.5b", quant=args.quant, backend=args.backend, quiet=True)
    model = lm.model
    if args.layouts:
        profile_layouts(model, args.reps * 3)
    if not args.no_profile:
        for S in (64, 512):
            prof = profile_decode(model, S, args.reps * 3)
            total = sum(prof.values())
            row = "  ".join(f"{k} {v:6.2f}" for k, v in prof.items())
            print(f"decode-step profile, S={S:4d} (ms): {row}  | sum {total:.1f}", flush=True)
    if not args.no_e2e:
        for L in (128, 512):
            print(f"prefill {L:4d} tokens: {prefill_tps(model, L, args.reps):7.1f} tok/s", flush=True)
        tps = decode_tps(model, 512, 64, args.reps)
        print(f"decode (512-token prompt, 64 steps): {tps:6.2f} tok/s", flush=True)


if __name__ == "__main__":
    main()

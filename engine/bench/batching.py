"""Throughput of continuous batching vs single-stream decode on the real model (prints, asserts nothing).

For each concurrency N: N requests with distinct 128-token prompts, 64 new greedy tokens each (EOS ignored
so every request makes all 64), submitted together to one EngineCore. Reports the total throughput
(all generated tokens / wall time, prefill included), the decode-only throughput (tokens sampled by
decode steps / time of steps that ran only decode rows) and the mean time of such a step.
The peer, measured in the same run: single-stream `generate()` on the same prompt length.

    python -m engine.bench.batching [--model qwen2.5-coder-0.5b] [--concurrency 1 4 8 16]   (from the repo root)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tiny_llm_playground.engine.generate import generate
from tiny_llm_playground.engine.loader import load_model
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import Sequence


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    engine_dir = Path(__file__).resolve().parents[1]  # the engine's own source as real text
    text = "".join(p.read_text() for p in sorted(engine_dir.rglob("*.py")))
    ids = tokenizer.encode(text)
    return [ids[i * 97 : i * 97 + length] for i in range(n)]


def run_batch(model, tokenizer, batch: list[list[int]], new: int, chunk: int) -> dict:
    cfg = EngineConfig(max_batch=len(batch), prefill_chunk=chunk, max_tokens_per_step=max(512, len(batch)))
    core = EngineCore(model, cfg)
    params = SamplingParams(temperature=0, max_tokens=new, logprobs=0, ignore_eos=True)  # exactly `new` tokens
    for i, ids in enumerate(batch):
        core.add(Sequence(i, ids, params, context=model.args.max_position_embeddings, tokenizer=tokenizer))
    t0 = time.perf_counter()
    steps = core.run()
    wall = time.perf_counter() - t0
    decode = [s for s in steps if s.phase == "decode"]
    dec_time = sum(s.duration_s for s in decode)
    return {
        "tokens": sum(s.new_tokens for s in steps),
        "wall": wall,
        "decode_tps": sum(s.new_tokens for s in decode) / dec_time if dec_time else 0.0,
        "step_ms": 1000 * dec_time / len(decode) if decode else 0.0,
        "steps": len(steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256)
    args = ap.parse_args()
    lm = load_model(args.model, quiet=True)
    all_prompts = prompts(lm.tokenizer, max(args.concurrency), args.prompt_tokens)

    # Peer: single-stream generate() (the week-1 path), same prompt length and token count.
    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, logprobs=0, ignore_eos=True)
    fin = list(generate(lm.model, lm.tokenizer, all_prompts[0], params))[-1]
    single = fin.decode_tps
    print(
        f"single-stream generate(): prefill {fin.prefill_tps:.1f} tok/s, decode {single:.2f} tok/s"
        f" ({len(fin.token_ids)} tokens)"
    )
    print(
        f"{'N':>3} {'tokens':>6} {'wall s':>7} {'total tok/s':>11} {'decode tok/s':>12} {'x single':>8}"
        f" {'decode step ms':>14}"
    )
    for n in args.concurrency:
        r = run_batch(lm.model, lm.tokenizer, all_prompts[:n], args.new_tokens, args.chunk)
        print(
            f"{n:>3} {r['tokens']:>6} {r['wall']:>7.1f} {r['tokens'] / r['wall']:>11.2f}"
            f" {r['decode_tps']:>12.2f} {r['decode_tps'] / single:>8.2f} {r['step_ms']:>14.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

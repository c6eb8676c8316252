"""The paged KV cache's measurements: the shared-prefix workload, a capped pool, paged against dense.

- `shared_prefix`: 16 requests (by default) share a 1,024-token system prompt, each with its own 32-64-token
  question, 64 new tokens each. The first request arrives alone; once its first token is out (its prompt
  is computed, so in the prefix cache), the other 15 arrive together: a class asking under one prompt.
  It runs on an engine with the prefix cache and on one without, and reports TTFT of the first (cold)
  against the others (cached), cached prompt tokens, hit rate, total throughput, preemptions, and the
  pool's peak memory against the tokens it kept.
- `kv_state`: what a paged engine's pool says after a run (peaks, touched blocks, bytes), for the JSON.
Everything goes through the threaded `Engine`, greedy with EOS ignored (engine/bench/measure.py).
"""

from __future__ import annotations

from tiny_llm_playground.engine.bench import measure
from tiny_llm_playground.engine.bench.stats import median

QUESTION_TOKENS = (32, 64)


def kv_state(engine) -> dict | None:
    """The paged pool's figures from the engine's latest snapshot (None for the dense cache)."""
    snap = engine.snapshot()
    b = snap.blocks
    if b is None:
        return None
    block_bytes = snap.kv_block_bytes
    token_bytes = block_bytes // b.block_size if block_bytes else 0
    return {
        "block_size": b.block_size,
        "pool_blocks": b.num_blocks,
        "block_bytes": block_bytes,
        "blocks_touched": b.touched,
        "peak_blocks_in_use": b.peak_in_use,
        "peak_allocated_bytes": b.touched * block_bytes,  # the pool's memory: every block ever written
        "peak_held_tokens": b.peak_held_tokens,
        "peak_cached_tokens": b.peak_cached_tokens,
        "peak_cached_bytes": b.peak_cached_tokens * token_bytes,
        "prefix_query_tokens": b.prefix_query_tokens,
        "prefix_hit_tokens": b.prefix_hit_tokens,
        "hit_rate": b.hit_rate,
        "preemptions": b.preemptions,
        "in_use_after": b.in_use,
    }


def _summary(run: measure.LevelRun) -> dict:
    cached_ttft = list(run.ttft_s[1:])
    return {
        "n": run.n,
        "tokens": run.tokens,
        "wall_s": run.wall_s,
        "total_tps": run.total_tps,
        "cold_ttft_s": run.ttft_s[0],
        "cached_ttft_median_s": median(cached_ttft),
        "ttft_s": list(run.ttft_s),
        "cached_prompt_tokens": list(run.cached_prompt_tokens),
        "preemptions": sum(run.preemptions),
    }


def shared_prefix(engine, engine_off, tokenizer, n: int, gen: int, system_tokens: int, log) -> dict:
    """The workload on `engine` (prefix cache on) and `engine_off` (off), one after the other, the same ids."""
    from tiny_llm_playground.engine.bench.prompts import shared_prefix_prompts

    prompts = shared_prefix_prompts(tokenizer, n, system_tokens, *QUESTION_TOKENS)
    out = {"requests": n, "system_tokens": system_tokens, "question_tokens": list(QUESTION_TOKENS), "gen": gen}
    for key, eng in (("prefix_cache", engine), ("no_prefix_cache", engine_off)):
        log(f"shared prefix, {key.replace('_', ' ')}: 1 request, then {n - 1} at its first token ...")
        run = measure.concurrent(eng, prompts, gen, stagger_first=True)
        out[key] = {**_summary(run), "kv": kv_state(eng)}
        s = out[key]
        log(
            f"  cold TTFT {s['cold_ttft_s']:.2f} s, cached TTFT median {s['cached_ttft_median_s']:.2f} s,"
            f" {s['total_tps']:.1f} tok/s total, cached prompt tokens {min(s['cached_prompt_tokens'][1:])}.."
            f"{max(s['cached_prompt_tokens'][1:])}, preemptions {s['preemptions']}"
        )
        out[key]["token_ids"] = [list(t) for t in run.token_ids]
    on, off = out["prefix_cache"], out["no_prefix_cache"]
    out["same_outputs"] = on["token_ids"] == off["token_ids"]
    for s in (on, off):
        del s["token_ids"]
    return out

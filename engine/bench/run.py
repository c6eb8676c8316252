"""`tinyllm bench`: options, the order the measurements run in, and the result object.

Order (progress lines go to stderr): load the engine (and start the peer in its own process) -> warm both
up -> single stream, alternating engine and peer, `reps` times -> each concurrency level -> the no-cache
path -> with `--contend`, single stream again (engine and peer alternating) while a busy loop holds a core
-> peak RSS. The KV cache's options add, in the same run: `--kv-cache both` a dense-cache engine beside
the paged one, alternating with it in the single-stream reps and the levels; `--kv-pool-tokens` a capped
pool whose outputs are checked against an uncapped engine's; `--workload shared-prefix` the prefix
cache's workload instead of the levels (engine/bench/kv.py). The result is one JSON-able dict;
`format_report` turns it into the table.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tiny_llm_playground.engine.bench import kv, measure
from tiny_llm_playground.engine.bench.peers import (
    BusyCore,
    PeerProcess,
    PeerUnavailable,
    check_installed,
    cpu_cores,
    start_peer,
)
from tiny_llm_playground.engine.bench.prompts import SNIPPET, STRIDE, ids_sha256, token_stream, windows
from tiny_llm_playground.engine.bench.stats import (
    Figures,
    NoCacheEstimate,
    common_prefix,
    compute_ratios,
    extrapolate_no_cache,
    kv_checks,
    median,
    percentile,
    ratio,
    rss_bytes,
    target_checks,
)

MAX_CONCURRENCY = 256
MLX_LM_GEN = 8  # mlx-lm decodes at well under 1 tok/s here: a few tokens give its rate
CONTEND_GEN = 32  # tokens per run under contention (a peer that spins can fall below 1 tok/s)


def parse_requests(text: str) -> tuple[int, ...]:
    """'1,4,8,16' -> (1, 4, 8, 16); ValueError with the reason for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if not text or not all(parts):
        raise ValueError(f"bad --requests list {text!r}: give comma-separated counts like 1,4,8,16")
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad --requests list {text!r}: every entry must be an integer") from None
    if any(not 1 <= n <= MAX_CONCURRENCY for n in out):
        raise ValueError(f"bad --requests list {text!r}: counts must be between 1 and {MAX_CONCURRENCY}")
    if len(set(out)) != len(out):
        raise ValueError(f"bad --requests list {text!r}: a count appears twice")
    return out


@dataclass(frozen=True)
class BenchOptions:
    model: str
    backend: str | None = None
    quant: str | None = None  # None = the loader's default
    prompt_len: int = 128
    gen: int = 128
    requests: tuple[int, ...] = (1, 4, 8, 16)
    peer: str = "none"
    reps: int = 3
    contend: bool = False
    contend_gen: int | None = None  # default min(gen, CONTEND_GEN)
    peer_gen: int | None = None  # default gen (llama.cpp), min(gen, MLX_LM_GEN) (mlx-lm)
    peer_gguf: Path | None = None
    threads: int | None = None  # llama.cpp threads; default: the cores this process may use
    no_cache_tokens: int = 8  # tokens timed per no-cache request (the rest is extrapolated)
    no_cache_requests: int = 1  # requests timed on the no-cache path
    kv_cache: str = "paged"  # paged | dense | both (paged, and a dense engine beside it)
    block_size: int = 16
    prefix_caching: bool = True
    kv_pool_tokens: int | None = None  # cap the cache (None: room for every request)
    workload: str = "default"  # default | shared-prefix
    system_tokens: int = 1024  # shared-prefix: the system prompt every request starts with
    batch_invariant: bool = False  # every engine of the run in batch-invariant mode (EngineConfig)

    def __post_init__(self) -> None:
        checks = [
            (self.prompt_len >= 1, "--prompt-len must be >= 1"),
            (self.gen >= 2, "--gen must be >= 2 (one prefill token plus at least one decode step)"),
            (bool(self.requests), "--requests needs at least one count"),
            (self.reps >= 1, "--reps must be >= 1"),
            (self.no_cache_tokens >= 1, "--no-cache-tokens must be >= 1"),
            (self.no_cache_requests >= 1, "--no-cache-requests must be >= 1"),
            (self.peer_gen is None or self.peer_gen >= 2, "--peer-gen must be >= 2"),
            (self.contend_gen is None or self.contend_gen >= 2, "--contend-gen must be >= 2"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (self.kv_cache in ("paged", "dense", "both"), "--kv-cache must be paged, dense or both"),
            (self.block_size >= 1, "--block-size must be >= 1"),
            (self.kv_pool_tokens is None or self.kv_pool_tokens >= 1, "--kv-pool-tokens must be >= 1"),
            (self.workload in ("default", "shared-prefix"), "--workload must be default or shared-prefix"),
            (self.system_tokens >= 1, "--system-tokens must be >= 1"),
            (
                self.workload == "default" or self.kv_cache == "paged",
                "--workload shared-prefix measures the paged cache's prefix cache: use --kv-cache paged",
            ),
            (
                self.kv_pool_tokens is None or self.kv_cache != "both",
                "--kv-pool-tokens with --kv-cache both: cap one cache at a time (paged or dense)",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.no_cache_requests > max(self.requests):
            raise ValueError(f"--no-cache-requests must be at most the largest --requests count ({max(self.requests)})")

    @property
    def max_n(self) -> int:
        return max(self.requests)

    @property
    def peer_tokens(self) -> int:
        if self.peer_gen is not None:
            return min(self.peer_gen, self.gen)
        return min(self.gen, MLX_LM_GEN) if self.peer == "mlx-lm" else self.gen

    @property
    def contend_tokens(self) -> int:
        return min(self.gen, self.contend_gen or CONTEND_GEN)


def _resolve_peer_files(opts: BenchOptions) -> Path | None:
    """The GGUF llama.cpp runs on; raises PeerUnavailable when there is none."""
    if opts.peer != "llama.cpp":
        return None
    from tiny_llm_playground.engine.loader.manifest import gguf_path

    if opts.peer_gguf is not None:
        if not Path(opts.peer_gguf).is_file():
            raise PeerUnavailable(f"--peer-gguf {opts.peer_gguf} does not exist")
        return Path(opts.peer_gguf)
    folder = Path(opts.model).expanduser()
    if folder.is_dir():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise PeerUnavailable(f"llama.cpp needs a GGUF: none in {folder}; pass --peer-gguf FILE")
        return found[0]
    return gguf_path(opts.model)  # the fetch that loads the engine also joins this file


def _check_model(name: str) -> None:
    """Unknown manifest names and missing folders fail here, before anything starts."""
    from tiny_llm_playground.engine.loader.manifest import get_spec

    p = Path(name).expanduser()
    if p.is_dir():
        return
    if "/" in name or name.startswith("."):
        raise FileNotFoundError(f"model folder {name} does not exist")
    get_spec(name)


def _stream_summary(runs: list[dict]) -> dict:
    return {
        "prefill_tps": median(r["prefill_tps"] for r in runs),
        "decode_tps": median(r["decode_tps"] for r in runs),
        "runs": runs,
    }


def _peer_dict(r) -> dict:
    return {
        "prefill_tps": r.prefill_tps,
        "decode_tps": r.decode_tps,
        "prefill_s": r.prefill_s,
        "decode_s": r.decode_s,
        "tokens": len(r.tokens),
    }


def _config(opts: BenchOptions, **over):
    from tiny_llm_playground.engine.serve.config import EngineConfig

    n_max, P, G = opts.max_n, opts.prompt_len, opts.gen
    batch = max(16, n_max)
    need = n_max * (P + G) if opts.workload == "default" else max(n_max, 16) * (opts.system_tokens + 64 + G)
    fields = {
        "max_batch": batch,
        "max_waiting": max(64, n_max),
        "max_tokens_per_step": max(512, batch),
        "cache_tokens": opts.kv_pool_tokens or max(65536, need),
        "kv_cache": "paged" if opts.kv_cache == "both" else opts.kv_cache,
        "block_size": opts.block_size,
        "prefix_caching": opts.prefix_caching,
        "batch_invariant": opts.batch_invariant,
    }
    return EngineConfig(**{**fields, **over})


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict:
    """Run every measurement and return the result object (see the README's Benchmarks section)."""
    from tiny_llm_playground.engine.serve.engine import Engine

    check_installed(opts.peer)
    _check_model(opts.model)
    gguf = _resolve_peer_files(opts)
    n_max, P, G = opts.max_n, opts.prompt_len, opts.gen
    config = _config(opts)
    log(f"loading {opts.model} ({config.kv_cache} KV cache) ...")
    engine = Engine(opts.model, backend=opts.backend, config=config, quant=opts.quant)
    twins: list = []  # engines measured beside it: dense (--kv-cache both), uncapped, no prefix cache
    peer: PeerProcess | None = None

    def twin(label: str, **over):
        log(f"loading a second engine: {label} ...")
        e = Engine(opts.model, backend=opts.backend, config=_config(opts, **over), quant=opts.quant)
        twins.append(e)
        e.wait_ready()
        measure.single_stream(e, ids0, min(G, 4))  # warm-up
        return e

    try:
        engine.wait_ready()
        lm = engine.loaded
        context = lm.model.args.max_position_embeddings
        if P + G > context and opts.workload == "default":
            raise ValueError(f"--prompt-len {P} + --gen {G} = {P + G} tokens exceed the model's context ({context})")
        stream = token_stream(lm.tokenizer, max((n_max - 1) * STRIDE + P, P + G))
        prompts = windows(stream, n_max, P)
        ids0 = prompts[0]
        if opts.workload == "shared-prefix":  # warm up on other tokens: the system prompt must start cold
            ids0 = stream[::-1][: max(1, min(32, context // 4))]
        if gguf is not None and not gguf.is_file():
            raise PeerUnavailable(f"llama.cpp needs the model's GGUF at {gguf}; it is missing")
        threads = opts.threads or cpu_cores()
        if opts.peer != "none":
            log(f"starting peer {opts.peer} in a child process ...")
            warm = ids0 if opts.peer == "llama.cpp" else ids0[:16]
            peer = start_peer(
                opts.peer,
                gguf=gguf,
                model_dir=lm.path,
                threads=threads,
                n_ctx=P + G + 8,
                warmup_ids=warm,
                warmup_gen=2,
                log=log,
            )
        measure.single_stream(engine, ids0, min(G, 4))  # warm-up

        if opts.workload == "shared-prefix":
            off = twin("the same paged cache without its prefix cache", prefix_caching=False)
            n = n_max if n_max > 1 else 16
            if opts.system_tokens + kv.QUESTION_TOKENS[1] + G > context:
                raise ValueError(f"--system-tokens {opts.system_tokens} + a {kv.QUESTION_TOKENS[1]}-token question"
                                 f" + --gen {G} exceed the model's context ({context})")  # fmt: skip
            shared = kv.shared_prefix(engine, off, lm.tokenizer, n, G, opts.system_tokens, log)
            rss = rss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            return _shared_result(opts, lm, shared, rss, config, engine.snapshot().blocks.num_blocks)

        dense = twin("dense KV cache", kv_cache="dense") if opts.kv_cache == "both" else None
        eng_runs, peer_runs, dense_runs = _single_stream_phase(opts, engine, peer, ids0, log, dense)
        levels, dense_levels = [], [] if dense else None
        for n in opts.requests:  # level by level, the dense engine right after: the machine drifts
            levels.append(_level(engine, prompts[:n], G, log))
            if dense:
                dense_levels.append(_level(dense, prompts[:n], G, log, "dense"))
        capped = None
        if opts.kv_pool_tokens is not None:
            ref = twin("the same cache, uncapped", cache_tokens=max(65536, n_max * (P + G)), kv_pool_blocks=None)
            capped = _capped_phase(engine, ref, prompts, opts, levels, log)
        for lv, dv in zip(levels, dense_levels or [None] * len(levels), strict=True):  # outputs: compared, not kept
            tokens = lv.pop("token_ids", None)
            if dv is not None:
                dv["same_tokens_as_paged"] = dv.pop("token_ids") == tokens
        est = _no_cache_phase(opts, engine, prompts, stream, log)
        contention = _contention_phase(opts, engine, peer, ids0, log) if opts.contend else None

        rss = rss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        peer_info = None
        if peer is not None:
            peer_rss = peer.close()
            peer_info = {
                "name": opts.peer,
                "gen": opts.peer_tokens,
                **peer.info,
                "single": _stream_summary(peer_runs),
                "peak_rss_bytes": peer_rss,
            }
            peer = None
        res = _result(opts, lm, threads, ids0, eng_runs, levels, est, contention, rss, peer_info)
        res["max_batch"] = config.max_batch
        res["engine"]["kv"] = {"cache": config.kv_cache, "prefix_caching": config.prefix_caching,
                               **(kv.kv_state(engine) or {})}  # fmt: skip
        if dense is not None:
            res["dense"] = {"single": _stream_summary(dense_runs), "levels": dense_levels}
        if capped is not None:
            res["capped"] = capped
        res["ratios"].update(_kv_ratios(res))
        res["checks"] += [asdict(c) for c in kv_checks(res)]
        if len(twins) or opts.kv_cache == "both":
            res["notes"].append("peak RSS covers every engine this run loaded (one model copy each)")
        return res
    finally:
        if peer is not None:
            peer.close()
        for e in twins:
            e.shutdown()
        engine.shutdown()


def _kv_ratios(res: dict) -> dict:
    out: dict = {}
    dense = res.get("dense")
    if dense:
        out["paged_vs_dense_decode"] = ratio(res["engine"]["single"]["decode_tps"], dense["single"]["decode_tps"])
        for lv, dv in zip(res["engine"]["levels"], dense["levels"], strict=True):
            out[f"paged_vs_dense_concurrent_{lv['n']}"] = ratio(lv["total_tps"], dv["total_tps"])
    return out


def _capped_phase(engine, ref, prompts, opts: BenchOptions, levels: list[dict], log) -> dict:
    """The capped engine's levels (already run) against an uncapped engine's outputs on the same ids."""
    out = []
    for lv in levels:
        r = measure.concurrent(ref, prompts[: lv["n"]], opts.gen)
        agree = [_agreeing(list(a), b) for a, b in zip(r.token_ids, lv["token_ids"], strict=True)]
        same = all(n == opts.gen for n in agree)
        out.append({"n": lv["n"], "identical_to_uncapped": same, "preemptions": lv["preemptions"],
                    "agreeing_tokens": agree})  # fmt: skip
        log(
            f"  capped pool, {lv['n']} requests: outputs identical to uncapped: {same}, preemptions {lv['preemptions']}"
        )
    state = kv.kv_state(engine)
    return {
        "pool_tokens": opts.kv_pool_tokens,
        "batch_invariant": opts.batch_invariant,
        "gen": opts.gen,
        "levels": out,
        "pool_full_after": state is None or state["in_use_after"] == 0,
    }


def _agreeing(a: list[int], b: list[int]) -> int:
    """How many tokens two outputs agree on before their first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _result_header(command: str) -> dict:
    """What every bench JSON starts with: schema, command, time and the machine."""
    return {
        "schema": 1,
        "command": command,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": cpu_cores(),
            "python": platform.python_version(),
        },
    }


def _shared_result(opts: BenchOptions, lm, shared: dict, rss: int, config, pool_blocks: int) -> dict:
    res = {
        **_result_header("tinyllm bench --workload shared-prefix"),
        "model": lm.name,
        "quant": lm.quant,
        "workload": "shared-prefix",
        "max_batch": config.max_batch,
        "kv": {"cache": config.kv_cache, "block_size": config.block_size, "pool_blocks": pool_blocks},
        "shared_prefix": shared,
        "peak_rss_bytes": rss,
        "notes": [
            "the first request arrives alone; the others arrive together once its first token is out",
            "the same ids run on an engine with the prefix cache and on one without; peak RSS covers both",
        ],
    }
    res["checks"] = [asdict(c) for c in kv_checks(res)]
    return res


def _single_stream_phase(opts: BenchOptions, engine, peer: PeerProcess | None, ids0: list[int], log, dense=None):
    """`reps` single-stream runs on request 0's ids, engine (and the dense twin, and the peer) alternating."""
    others = [n for n, x in (("dense", dense), (opts.peer, peer)) if x is not None]
    log(f"single stream: {opts.reps} reps, engine{''.join(' and ' + n for n in others)} alternating")
    eng_runs: list[dict] = []
    peer_runs: list[dict] = []
    dense_runs: list[dict] = []
    for i in range(opts.reps):
        r = measure.single_stream(engine, ids0, opts.gen)
        eng_runs.append({"prefill_tps": r.prefill_tps, "decode_tps": r.decode_tps, "ttft_s": r.ttft_s})
        msg = f"  rep {i + 1}: engine prefill {r.prefill_tps:.1f} tok/s, decode {r.decode_tps:.2f} tok/s"
        if dense is not None:
            d = measure.single_stream(dense, ids0, opts.gen)
            dense_runs.append({"prefill_tps": d.prefill_tps, "decode_tps": d.decode_tps, "ttft_s": d.ttft_s,
                               "same_tokens": d.tokens == r.tokens})  # fmt: skip
            msg += f"; dense prefill {d.prefill_tps:.1f}, decode {d.decode_tps:.2f}"
        if peer is not None:
            pr = peer.run(ids0, opts.peer_tokens)
            peer_runs.append({**_peer_dict(pr), "agree_prefix": common_prefix(pr.tokens, r.tokens)})
            msg += f"; {opts.peer} prefill {pr.prefill_tps:.1f}, decode {pr.decode_tps:.2f}"
        log(msg)
    return eng_runs, peer_runs, dense_runs


def _level(engine, prompts: list[list[int]], gen: int, log, label: str = "") -> dict:
    """N = len(prompts) requests submitted at once."""
    lv = measure.concurrent(engine, prompts, gen)
    log(f"  {lv.n:3d} concurrent{' ' + label if label else ''}: {lv.total_tps:.1f} tok/s total,"
        f" TTFT median {median(lv.ttft_s):.2f} s, preemptions {sum(lv.preemptions)}")  # fmt: skip
    return {
        "n": lv.n,
        "tokens": lv.tokens,
        "wall_s": lv.wall_s,
        "total_tps": lv.total_tps,
        "ttft_median_s": median(lv.ttft_s),
        "ttft_p90_s": percentile(lv.ttft_s, 90),
        "request_decode_tps_median": median(lv.decode_tps),
        "ttft_s": list(lv.ttft_s),
        "preemptions": sum(lv.preemptions),
        "cached_prompt_tokens": sum(lv.cached_prompt_tokens),
        "token_ids": [list(t) for t in lv.token_ids],
    }


def _no_cache_phase(opts: BenchOptions, engine, prompts: list[list[int]], stream: list[int], log) -> NoCacheEstimate:
    """Time the first tokens of the no-cache path on a few requests (plus one forward at the last step's
    length, the line's other end) and extrapolate to every token of the largest level's requests."""
    P, G, k = opts.prompt_len, opts.gen, min(opts.no_cache_tokens, opts.gen)
    log(f"no-cache path: timing {k} of {G} tokens on {opts.no_cache_requests} of {opts.max_n} requests ...")
    lengths: list[int] = []
    seconds: list[float] = []
    for ids in prompts[: opts.no_cache_requests]:
        ls, ss = measure.no_cache_steps(engine, ids, k)
        lengths += ls
        seconds += ss
    if k < G:
        lengths.append(P + G - 1)
        seconds.append(measure.no_cache_probe(engine, stream[: P + G - 1]))
    est = extrapolate_no_cache(
        lengths, seconds, prompt_len=P, gen=G, requests=opts.max_n, timed_requests=opts.no_cache_requests
    )
    log(f"  {est.total_tps:.3f} tok/s ({est.method})")
    return est


def _contention_phase(opts: BenchOptions, engine, peer: PeerProcess | None, ids0: list[int], log) -> dict:
    """Single-stream decode again (engine and peer alternating) while a busy loop holds one core."""
    cg = opts.contend_tokens
    pg = min(cg, opts.peer_tokens)
    log(f"contention: a busy loop holds one core; {opts.reps} reps of {cg} tokens ...")
    c_eng: list[float] = []
    c_peer: list[float] = []
    with BusyCore():
        for _ in range(opts.reps):
            c_eng.append(measure.single_stream(engine, ids0, cg).decode_tps)
            if peer is not None:
                c_peer.append(peer.run(ids0, pg).decode_tps)
    log(f"  engine decode {median(c_eng):.2f} tok/s" + (f", {opts.peer} {median(c_peer):.2f}" if peer else ""))
    return {
        "gen": cg,
        "decode_tps": median(c_eng),
        "runs": c_eng,
        "peer_gen": pg if peer else None,
        "peer_decode_tps": median(c_peer),
        "peer_runs": c_peer,
    }


def _result(opts, lm, threads, ids0, eng_runs, levels, est, contention, rss, peer_info) -> dict:
    from tiny_llm_playground import kernels

    single = _stream_summary(eng_runs)
    single["ttft_median_s"] = median(r["ttft_s"] for r in eng_runs)
    figures = Figures(
        prefill_tps=single["prefill_tps"],
        decode_tps=single["decode_tps"],
        levels={lv["n"]: lv["total_tps"] for lv in levels},
        peak_rss_bytes=rss,
        prompt_len=opts.prompt_len,
        no_cache_tps=est.total_tps,
        no_cache_requests=est.requests,
        contended_decode_tps=contention["decode_tps"] if contention else None,
        peer=opts.peer,
        peer_prefill_tps=peer_info["single"]["prefill_tps"] if peer_info else None,
        peer_decode_tps=peer_info["single"]["decode_tps"] if peer_info else None,
        peer_contended_decode_tps=contention["peer_decode_tps"] if contention and peer_info else None,
    )
    ratios = compute_ratios(figures)
    notes = [
        "single-stream and concurrent figures go through the threaded Engine (continuous batching), greedy,"
        " EOS ignored, so every request makes exactly `gen` tokens",
        f"no-cache: {est.method}",
    ]
    if peer_info and peer_info["gen"] < opts.gen:
        notes.append(
            f"{opts.peer} decoded {peer_info['gen']} tokens per run (the engine {opts.gen}): its rate"
            " is measured over fewer tokens because it is slow here"
        )
    if contention:
        notes.append(
            f"contention runs decode {contention['gen']} tokens; the ratio is against the quiet"
            f" single-stream median ({opts.gen} tokens)"
        )
    return {
        **_result_header("tinyllm bench"),
        "model": lm.name,
        "model_path": str(lm.path),
        "quant": lm.quant,
        "backend": lm.model.backend or kernels.backend_for("linear"),
        "kernel_threads": int(t) if (t := os.environ.get("TINY_LLM_THREADS", "")).isdigit() else cpu_cores(),
        "prompt_len": opts.prompt_len,
        "gen": opts.gen,
        "reps": opts.reps,
        "requests": list(opts.requests),
        "prompt": {
            "source": f"engine/bench/prompts.py snippet ({len(SNIPPET)} chars) repeated and tokenized;"
            f" request i = ids[{STRIDE}*i : {STRIDE}*i + prompt_len]",
            "request0_sha256": ids_sha256(ids0),
            "request0_ids": ids0,
        },
        "engine": {
            "single": single,
            "levels": levels,
            "no_cache": asdict(est),
            "contention": contention,
            "peak_rss_bytes": rss,
        },
        "peer": peer_info,
        "threads": threads,
        "ratios": ratios,
        "checks": [asdict(c) for c in target_checks(figures, ratios)],
        "notes": notes,
    }


# ----- the human-readable report -----


def _f(x: float | None, fmt: str = ".1f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{unit}"


def _kv_lines(kvs: dict | None) -> list[str]:
    if not kvs or not kvs.get("block_bytes"):
        return []
    mib = 1 << 20
    return [
        f"  pool: {kvs['pool_blocks']} blocks of {kvs['block_size']} tokens; {kvs['blocks_touched']} ever written"
        f" ({kvs['peak_allocated_bytes'] / mib:,.1f} MiB), peak {kvs['peak_blocks_in_use']} in use;"
        f" peak tokens kept {kvs['peak_cached_tokens']} ({kvs['peak_cached_bytes'] / mib:,.1f} MiB)",
        f"  prefix cache: {kvs['prefix_hit_tokens']} of {kvs['prefix_query_tokens']} prompt tokens hit"
        f" ({100 * kvs['hit_rate']:.0f} %), preemptions {kvs['preemptions']}",
    ]


def _checks_lines(res: dict) -> list[str]:
    lines = ["", "targets:"]
    for ch in res["checks"]:
        mark = {True: "yes", False: "no", None: "n/a"}[ch["passed"]]
        value = _f(ch["value"], ".2f")
        lines.append(f"  [{mark:>3}] {ch['name']} {ch['target']}: {value}" + (f" ({ch['note']})" if ch["note"] else ""))
    return lines


def _shared_report(res: dict) -> str:
    sp = res["shared_prefix"]
    lines = [
        f"tinyllm bench --workload shared-prefix: {res['model']} ({res['quant']}), {res['machine']['cores']} cores;"
        f" {sp['requests']} requests under one {sp['system_tokens']}-token system prompt, questions of"
        f" {sp['question_tokens'][0]}-{sp['question_tokens'][1]} tokens, {sp['gen']} new tokens each",
        "the first arrives alone, the others together once its first token is out",
        "",
        f"{'':<22}{'cold TTFT s':>12}{'cached TTFT s':>15}{'total tok/s':>13}{'cached tokens':>15}{'preempted':>11}",
    ]
    for key, label in (("prefix_cache", "prefix cache on"), ("no_prefix_cache", "prefix cache off")):
        s = sp[key]
        lines.append(
            f"  {label:<20}{s['cold_ttft_s']:>12.2f}{s['cached_ttft_median_s']:>15.2f}{s['total_tps']:>13.1f}"
            f"{min(s['cached_prompt_tokens'][1:]):>15}{s['preemptions']:>11}"
        )
        lines += _kv_lines(s.get("kv"))
    lines.append(f"same outputs with and without the prefix cache: {sp['same_outputs']}")
    return "\n".join(lines + [""] + [f"peak RSS: {res['peak_rss_bytes'] / 1e6:,.0f} MB"] + _checks_lines(res))


def format_report(res: dict) -> str:
    if res.get("workload") == "shared-prefix":
        return _shared_report(res)
    eng, peer = res["engine"], res["peer"]
    name = peer["name"] if peer else None
    single = eng["single"]
    lines = [
        f"tinyllm bench: {res['model']} ({res['quant']}, backend {res['backend']}),"
        f" {res['machine']['cores']} cores, prompt {res['prompt_len']} tokens, {res['gen']} new tokens,"
        f" median of {res['reps']}",
        f"prompt ids: request 0 sha256 {res['prompt']['request0_sha256']} (the peer gets the same ids)",
    ]
    if peer:
        if name == "llama.cpp":
            on = f"llama-cpp-python {peer['version']} on the {peer['gguf_file_type']} GGUF, {peer['threads']} threads"
        else:
            on = f"mlx-lm {peer['version']} (mlx {peer['mlx']}) on the float32 folder"
        lines.append(f"peer: {on}, {peer['gen']} new tokens per run, in a child process")
        runs = peer["single"]["runs"]
        if runs:
            lines.append(
                f"  its greedy tokens agree with the engine's for the first {runs[0]['agree_prefix']} of"
                f" {runs[0]['tokens']} (different weight formats drift apart)"
            )
        if peer.get("fallback"):
            lines.append(f"  note: {peer['fallback']}")
    lines += ["", f"{'single stream':<22}{'engine':>10}" + (f"{name:>12}{'ratio':>9}" if peer else "")]
    for key, label in (("prefill_tps", "prefill tok/s"), ("decode_tps", "decode tok/s")):
        row = f"  {label:<20}{_f(single[key]):>10}"
        if peer:
            r = res["ratios"]["prefill_vs_peer" if key == "prefill_tps" else "decode_vs_peer"]
            row += f"{_f(peer['single'][key]):>12}{_f(r, '.2f', 'x'):>9}"
        lines.append(row)
    lines.append(f"  {'TTFT s':<20}{_f(single['ttft_median_s'], '.2f'):>10}")
    lines += [
        "",
        f"concurrent requests ({res['prompt_len']}-token prompts, {res['gen']} new tokens each)",
        f"{'N':>5}{'total tok/s':>13}{'x decode':>10}{'TTFT med s':>12}{'TTFT p90 s':>12}{'wall s':>9}",
    ]
    for lv in eng["levels"]:
        x = res["ratios"].get(f"concurrent_{lv['n']}_vs_single_decode")
        lines.append(
            f"{lv['n']:>5}{lv['total_tps']:>13.1f}{_f(x, '.2f', 'x'):>10}"
            f"{lv['ttft_median_s']:>12.2f}{lv['ttft_p90_s']:>12.2f}{lv['wall_s']:>9.1f}"
        )
    nc = eng["no_cache"]
    tag = "ESTIMATED" if nc["estimated"] else "measured"
    vs = _f(res["ratios"]["concurrent_vs_no_cache"], ".1f", "x")
    lines += [
        "",
        f"no-cache path (week 1), {nc['requests']} requests one by one: {nc['total_tps']:.3f} tok/s [{tag}];"
        f" {nc['requests']} concurrent / no-cache = {vs}",
        f"  {nc['method']}",
    ]
    c = eng["contention"]
    if c:
        row = (
            f"contention (busy loop on one core): engine decode {c['decode_tps']:.2f} tok/s ="
            f" {_f(res['ratios']['contended_vs_quiet_decode'], '.2f', 'x')} quiet"
        )
        if peer:
            row += (
                f"; {name} {c['peer_decode_tps']:.2f} tok/s ="
                f" {_f(res['ratios']['peer_contended_vs_quiet_decode'], '.2f', 'x')} quiet"
            )
        lines += ["", row]
    kvs = eng.get("kv") or {}
    kind = f"KV cache: {kvs.get('cache', '?')}" + ("" if kvs.get("prefix_caching", True) else ", no prefix cache")
    lines += ["", kind, *_kv_lines(kvs)]
    dense = res.get("dense")
    if dense:
        r = res["ratios"]
        levels = []
        for dv in dense["levels"]:
            x = r.get(f"paged_vs_dense_concurrent_{dv['n']}")
            levels.append(f"{dv['n']} concurrent {dv['total_tps']:.1f} tok/s ({_f(x, '.2f', 'x')})")
        lines.append(
            f"  dense beside it: decode {_f(dense['single']['decode_tps'], '.2f')} tok/s (paged/dense"
            f" {_f(r.get('paged_vs_dense_decode'), '.2f', 'x')}); " + ", ".join(levels)
        )
    capped = res.get("capped")
    if capped:
        lines.append(
            f"  capped at {capped['pool_tokens']} tokens: "
            + ", ".join(f"{c['n']} requests {'identical' if c['identical_to_uncapped'] else 'DIFFERENT'},"
                        f" {c['preemptions']} preemptions" for c in capped["levels"])
            + f"; pool whole afterwards: {capped['pool_full_after']}"
        )  # fmt: skip
    rss = f"peak RSS: engine process {eng['peak_rss_bytes'] / 1e6:,.0f} MB"
    if peer and peer.get("peak_rss_bytes"):
        rss += f"; {name} child {peer['peak_rss_bytes'] / 1e6:,.0f} MB"
    lines += ["", rss]
    return "\n".join(lines + _checks_lines(res))

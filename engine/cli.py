"""The `tinyllm` command (`python -m engine` from the repo root): fetch, info, generate, logits, bench (see --help)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_fetch(args: argparse.Namespace) -> int:
    from tiny_llm_playground.engine.loader import fetch

    folder = fetch(args.name)
    print(f"{args.name}: ready in {folder}")
    return 0


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _cmd_info(args: argparse.Namespace) -> int:
    from tiny_llm_playground import kernels
    from tiny_llm_playground.engine.loader.manifest import (
        cache_root,
        converted_dir,
        default_model,
        get_spec,
        gguf_path,
        is_converted,
        known_models,
    )

    names = [args.name] if args.name else known_models()
    print(f"cache: {cache_root()}  (set TINY_LLM_CACHE to move it)")
    for name in names:
        spec = get_spec(name)
        tag = " (default)" if name == default_model() else ""
        print(f"\n{name}{tag}: {spec.display_name}, architecture {spec.architecture}")
        print(f"  source: {spec.part_packages[0]} … {spec.part_packages[-1]} =={spec.version}")
        print(f"  GGUF: {_fmt_size(spec.joined_size)}, sha256 {spec.sha256}")
        g = gguf_path(name)
        print(f"  joined GGUF: {g if g.is_file() else 'not downloaded'}")
        if is_converted(name):
            d = converted_dir(name)
            cfg = json.loads((d / "config.json").read_text())
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            print(f"  converted: {d} ({_fmt_size(size)})")
            print(
                f"  config: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']},"
                f" {cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV heads,"
                f" vocab {cfg['vocab_size']}, context {cfg['max_position_embeddings']}"
            )
        else:
            print(f"  converted: no (run `tinyllm fetch {name}`)")
    print("\nkernel backends:")
    for backend, state in kernels.available_backends().items():
        print(f"  {backend:6s} {state}")
    from tiny_llm_playground.kernels import cpu as kcpu

    ext = kcpu.load()
    isa = f" ({ext.cpu_isa()}, {ext.num_threads()} threads)" if ext is not None else ""
    print("ops (float32 activations, the engine's default):")
    for op in kernels.OPS:
        backend = kernels.backend_for(op)
        print(f"  {op:22s} {backend}{isa if backend == 'cpu' else ''}")
    panels = kernels.reads_panels()
    layout = "16-row panels (q8_0x16, q5_0x16)" if panels else "rows (this ISA's kernels read no panels)"
    print(f"quantized weights (q8_0, q5_0) are stored as: {layout}")
    return 0


def _sampling(args: argparse.Namespace):
    from tiny_llm_playground.engine.sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, max_tokens=args.max_tokens,
        stop=tuple(args.stop or ()),
    )  # fmt: skip


def _prompt_ids(lm, args: argparse.Namespace) -> list[int]:
    if getattr(args, "ids", None):
        return [int(t) for t in args.ids.split(",") if t.strip()]
    if args.prompt is None or not args.prompt.strip():
        raise ValueError("the prompt is empty: pass --prompt TEXT")
    if getattr(args, "chat", False):
        return lm.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    return lm.tokenizer.encode(args.prompt)


def _cmd_generate(args: argparse.Namespace) -> int:
    from tiny_llm_playground.engine.events import FinishEvent
    from tiny_llm_playground.engine.generate import generate
    from tiny_llm_playground.engine.loader import load_model

    params = _sampling(args)  # validate before the (slow) load
    lm = load_model(args.model, backend=args.backend, quant=args.quant)
    ids = _prompt_ids(lm, args)
    finish = None
    kv = {"kv_cache": args.kv_cache, "block_size": args.block_size, "batch_invariant": args.batch_invariant}
    for ev in generate(lm.model, lm.tokenizer, ids, params, use_cache=not args.no_cache, **kv):
        if isinstance(ev, FinishEvent):
            finish = ev
            if not args.json:
                print(ev.tail, end="", flush=True)
        elif not args.json:
            print(ev.text, end="", flush=True)
    assert finish is not None
    if args.json:
        print(json.dumps({
            "model": lm.name, "text": finish.text, "token_ids": list(finish.token_ids),
            "prompt_tokens": finish.prompt_tokens, "generated_tokens": len(finish.token_ids),
            "finish_reason": finish.reason, "prefill_s": round(finish.prefill_s, 4),
            "decode_s": round(finish.decode_s, 4), "prefill_tps": round(finish.prefill_tps, 2),
            "decode_tps": round(finish.decode_tps, 2), "cache": not args.no_cache, "quant": lm.quant,
            "kv_cache": args.kv_cache, "cached_prompt_tokens": finish.cached_prompt_tokens,
        }, ensure_ascii=False))  # fmt: skip
    else:
        print(
            f"\n[{finish.reason}: {finish.prompt_tokens} prompt tokens at {finish.prefill_tps:.1f} tok/s,"
            f" {len(finish.token_ids)} generated at {finish.decode_tps:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def _cmd_logits(args: argparse.Namespace) -> int:
    import numpy as np

    from tiny_llm_playground.engine.generate import last_logits
    from tiny_llm_playground.engine.loader import load_model
    from tiny_llm_playground.engine.serve.sequence import check_prompt

    lm = load_model(args.model, backend=args.backend, quant=args.quant)
    ids = _prompt_ids(lm, args)
    check_prompt(ids, lm.model.args.max_position_embeddings)
    logits = last_logits(lm.model, ids).astype(np.float32)  # (V,)
    np.save(args.out, logits)
    top = np.argsort(-logits)[:5]
    shown = ", ".join(f"{lm.tokenizer.decode([int(t)])!r} {logits[t]:.2f}" for t in top)
    print(f"wrote {args.out}: float32 {logits.shape}; top: {shown}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tiny_llm_playground.engine.bench import BenchOptions, format_report, parse_requests, run_bench

    opts = BenchOptions(
        model=args.model, backend=args.backend, quant=args.quant, prompt_len=args.prompt_len,
        gen=args.gen or (64 if args.workload == "shared-prefix" else 128),
        requests=parse_requests(args.requests), peer=args.peer, reps=args.reps, contend=args.contend,
        contend_gen=args.contend_gen, peer_gen=args.peer_gen, peer_gguf=args.peer_gguf, threads=args.threads,
        no_cache_tokens=args.no_cache_tokens, no_cache_requests=args.no_cache_requests, kv_cache=args.kv_cache,
        block_size=args.block_size, prefix_caching=not args.no_prefix_cache, kv_pool_tokens=args.kv_pool_tokens,
        workload=args.workload, system_tokens=args.system_tokens, batch_invariant=args.batch_invariant,
    )  # fmt: skip
    res = run_bench(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else format_report(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tiny_llm_playground.engine.loader.manifest import default_model
    from tiny_llm_playground.engine.loader.quantize import DEFAULT_QUANT, QUANT_MODES

    p = argparse.ArgumentParser(prog="tinyllm", description="Tiny LLM Playground engine")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch", help="download, verify and convert a model into the cache")
    f.add_argument("name", help="model name from assets/models.json")
    f.set_defaults(func=_cmd_fetch)

    i = sub.add_parser("info", help="where model files are, sizes, architecture, kernel backends")
    i.add_argument("name", nargs="?", help="one model (default: all known)")
    i.set_defaults(func=_cmd_info)

    def kv_args(sp: argparse.ArgumentParser, both: bool) -> None:
        kinds = ["paged", "dense", "both"] if both else ["paged", "dense"]
        sp.add_argument("--kv-cache", default="paged", choices=kinds,
                        help="the KV cache: paged blocks (default), dense per-request buffers"
                        + (", or both (paged, a dense engine measured beside it)" if both else ""))  # fmt: skip
        sp.add_argument("--block-size", type=int, default=16, help="tokens per block of the paged cache (16)")
        sp.add_argument("--no-prefix-cache", action="store_true", help="paged: never share computed blocks")
        sp.add_argument("--batch-invariant", action="store_true",
                        help="one kernel path for any number of rows: a request's tokens do not depend on the"
                        " batch it runs in (slower prefill on CPUs without an int8 GEMM)")  # fmt: skip

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=default_model(), help="manifest name or model folder")
        sp.add_argument("--backend", default=None, help="kernel backend: ref, cpu, ... (default fastest)")
        sp.add_argument(
            "--quant", default=DEFAULT_QUANT, choices=QUANT_MODES,
            help=f"weight format of the linear layers (default {DEFAULT_QUANT}; none = float32)",
        )  # fmt: skip

    g = sub.add_parser("generate", help="stream a completion to the terminal")
    model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--no-cache", action="store_true", help="week-1 path: recompute the sequence each step")
    kv_args(g, both=False)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    g.set_defaults(func=_cmd_generate)

    lg = sub.add_parser("logits", help="write the last position's logits as float32 .npy")
    model_args(lg)
    src = lg.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--ids", help="comma-separated token ids")
    lg.add_argument("--chat", action="store_true")
    lg.add_argument("--out", type=Path, required=True)
    lg.set_defaults(func=_cmd_logits)

    b = sub.add_parser(
        "bench", help="speed figures: single stream, concurrent requests, no-cache path, RSS; optional peer",
        description="Measure the engine (and optionally a peer on the same prompt ids, in the same run) and"
        " print the figures, their ratios and the project's targets.",
    )  # fmt: skip
    b.add_argument("--model", default=default_model(), help="manifest name or model folder")
    b.add_argument("--backend", default=None, help="kernel backend: ref, cpu, ... (default fastest)")
    b.add_argument("--quant", default=None, choices=QUANT_MODES, help=f"weight format (default {DEFAULT_QUANT})")
    b.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per request (default 128)")
    b.add_argument(
        "--gen",
        type=int,
        default=None,
        help="new tokens per request, EOS ignored (default 128; 64 with --workload shared-prefix)",
    )
    b.add_argument("--requests", default="1,4,8,16", help="concurrency levels, comma-separated (default 1,4,8,16)")
    b.add_argument("--peer", default="none", choices=["none", "llama.cpp", "mlx-lm"], help="peer to compare with")
    b.add_argument("--reps", type=int, default=3, help="single-stream runs, engine and peer alternating (median)")
    b.add_argument("--contend", action="store_true", help="also measure decode while a busy loop holds one core")
    b.add_argument("--contend-gen", type=int, default=None, help="tokens per run under contention (default 32)")
    b.add_argument("--peer-gen", type=int, default=None, help="peer's new tokens (default --gen; mlx-lm 8)")
    b.add_argument("--peer-gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the model's)")
    b.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    b.add_argument("--no-cache-tokens", type=int, default=8, help="no-cache tokens timed per request (default 8)")
    b.add_argument("--no-cache-requests", type=int, default=1, help="requests timed on the no-cache path")
    kv_args(b, both=True)
    b.add_argument("--kv-pool-tokens", type=int, default=None,
                   help="cap the KV cache at N tokens (the paged pool preempts; outputs are checked against an"
                   " uncapped engine in the same run)")  # fmt: skip
    b.add_argument(
        "--workload",
        default="default",
        choices=["default", "shared-prefix"],
        help="shared-prefix: 16 requests under one 1,024-token system prompt, prefix cache on and off",
    )
    b.add_argument("--system-tokens", type=int, default=1024, help="shared-prefix: the system prompt's tokens")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

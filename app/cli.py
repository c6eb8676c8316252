"""`tinyllm-playground [--host H] [--port P] [--model NAME|FOLDER] [--backend NAME]` (`python -m app` from the
repo root): serve the playground.

Loads the model first (so a missing or broken model fails here, with a message, not in the page), then
serves the page. Binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tiny_llm_playground.engine.loader.manifest import default_model

    p = argparse.ArgumentParser(prog="tinyllm-playground", description="Tiny LLM Playground: a browser UI.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default %(default)s)")
    p.add_argument("--model", default=default_model(), help="manifest name or model folder (%(default)s)")
    p.add_argument("--backend", default=None, help="kernel backend: ref, cpu, metal, cuda (default: fastest)")
    return p.parse_args(argv)


STEP_TOKENS = 256  # tokens per engine step: one per decode row, the rest prefill


def app_engine_config():
    """The engine's settings for the playground, chosen for responsiveness over raw throughput.

    - Slots: the class demo's largest run plus CHAT_SLOTS. With 16 demo requests in 16 slots, a chat sent
      during the demo would wait for a demo request to finish; a few more slots let chats join the running
      batch at once (decode is bound by reading the weights, so a few more rows per step cost little).
    - STEP_TOKENS: 16 demo prompts prefilled in one 512-token step held everything else (other chats'
      tokens, the batching view's next picture) for ~2 s on an idle 2-core machine and 6 s on a busy one;
      256-token steps halve that wait at about the same prefill rate, and still take a ~100-token chat
      prompt in one step."""
    from tiny_llm_playground.app.tabs.batching import CHAT_SLOTS, MAX_DEMO
    from tiny_llm_playground.engine import EngineConfig

    return EngineConfig(max_batch=MAX_DEMO + CHAT_SLOTS, max_tokens_per_step=STEP_TOKENS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tiny_llm_playground.app.main import build_app, launch
    from tiny_llm_playground.engine import Engine

    t0 = time.perf_counter()
    print(f"loading model {args.model} …", flush=True)
    engine = Engine(args.model, backend=args.backend, config=app_engine_config())
    try:
        engine.wait_ready()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"model ready in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"warmed up in {engine.warm_up():.1f} s (the first request would otherwise pay for it)", flush=True)
    demo = build_app(engine)
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    print(f"Tiny LLM Playground: http://{host}:{args.port}  (Ctrl+C to stop)", flush=True)
    try:
        launch(demo, host=args.host, port=args.port, quiet=True)
    except KeyboardInterrupt:  # Ctrl+C before Gradio's own start-up check returned (it handles later ones)
        demo.close()
        print("stopped", flush=True)
    finally:
        engine.shutdown(timeout=2.0)
    return 0

"""Tiny LLM Playground's web UI: a Gradio app on top of the engine API.

Layout: `app/main.py` builds the page (header + one tab per module in `app/tabs/`), `app/theme.py`
holds the look, `app/cli.py` (`tinyllm-playground`, `python -m app`) starts the engine and serves it. Rules
the app keeps:
  - it talks to the engine only through `Engine.submit()` / event streams / snapshots, never MLX;
  - handlers take plain values and `yield` to stream; heavy objects (engine, handles) never go in gr.State;
  - every event has an api_name, and bad input becomes a readable message in the page, never a traceback;
  - nothing is loaded from a CDN: the page works offline.
"""

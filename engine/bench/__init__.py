"""`tinyllm bench`: the engine's speed figures, with a peer measured in the same run.

- `prompts`     deterministic token ids cut from real text (the engine and the peers get the same ids)
- `measure`     single stream, N concurrent requests, and the week-1 no-cache path, through one `Engine`
- `peers`       llama.cpp / mlx-lm in a child process (`peer_child.py`), the `--contend` busy loop
- `stats`       pure arithmetic: medians, ratios, the no-cache extrapolation, the issue's target checks
- `run`         options, the order of the measurements, the result object and its table
"""

from tiny_llm_playground.engine.bench.run import BenchOptions, format_report, parse_requests, run_bench

__all__ = ["BenchOptions", "format_report", "parse_requests", "run_bench"]

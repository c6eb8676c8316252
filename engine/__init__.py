"""Tiny LLM Playground's inference engine: Qwen2 from scratch on MLX array ops.

Public surface: `load_model`, `generate`, `SamplingParams`, `Engine` (threaded runtime).
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silence the "PyTorch was not found" banner

from engine.config import EngineConfig
from engine.generate import FinishEvent, PromptError, TokenEvent, generate
from engine.loader import load_model
from engine.runtime import Engine, EngineBusyError, ErrorEvent, RequestHandle
from engine.sampling import SamplingParams

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

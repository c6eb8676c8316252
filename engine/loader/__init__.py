"""Model assets: manifest, fetch (download + join + verify), GGUF conversion, loading."""

from tiny_llm_playground.engine.loader.fetch import FetchError, fetch
from tiny_llm_playground.engine.loader.load import LoadedModel, load_model
from tiny_llm_playground.engine.loader.manifest import UnknownModelError, default_model, get_spec, known_models

__all__ = [
    "FetchError",
    "LoadedModel",
    "UnknownModelError",
    "default_model",
    "fetch",
    "get_spec",
    "known_models",
    "load_model",
]

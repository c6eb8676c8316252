"""The app tests' engine: one threaded Engine on the tiny random model per test module."""

from __future__ import annotations

import pytest

from tiny_llm_playground.engine import Engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = Engine(str(tiny_model_dir))
    eng.wait_ready(60)
    yield eng
    eng.shutdown()

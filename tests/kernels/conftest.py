"""Kernel-test fixtures: `isas` runs a test body once per ISA the cpu extension runs on this machine."""

from __future__ import annotations

import pytest

from tests.utils import require
from tiny_llm_playground.kernels import cpu as kcpu


@pytest.fixture
def isas():
    """`for isa in isas():` runs the body once per ISA the extension runs here, set as the active one; the
    one active before is restored when the test ends, passed or failed."""
    require("cpu")
    ext = kcpu.load()
    before = ext.cpu_isa()

    def each():
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            yield isa

    yield each
    ext.set_isa(before)

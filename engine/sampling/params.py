"""Per-request sampling settings: one validated frozen dataclass (separate from the engine's config).

Temperature 0 means greedy. Invalid values raise ValueError at construction, with a message a user can act
on (the playground and the HTTP API show it as it is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; invalid values raise ValueError at construction."""

    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repetition_context: int = 64  # how many recent tokens the penalty looks at (0 = all)
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: int = 10  # how many top raw log-probabilities each token event carries
    ignore_eos: bool = False  # keep generating through EOS tokens until max_tokens (benchmarks)

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                "repetition_penalty must be > 0 (1 = off)",
            ),
            (self.repetition_context >= 0, "repetition_context must be >= 0"),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (self.logprobs >= 0, "logprobs must be >= 0"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (isinstance(self.ignore_eos, bool), "ignore_eos must be true or false"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid sampling parameters: {msg}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

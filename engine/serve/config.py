"""Engine configuration: one validated dataclass, separate from the per-request `SamplingParams`.

The knobs of continuous batching:
- `max_batch`: sequences in flight at once (each holds one KV-cache slot); decode rows per step.
- `max_waiting`: requests queued for a slot before `submit()` says the engine is busy.
- `prefill_chunk`: the most prompt tokens one sequence prefills in one step (long prompts are split so
  decoding sequences keep getting a token every step).
- `max_tokens_per_step`: the step's token budget: one per decode row, the rest goes to prefill chunks.
- `cache_tokens`: KV-cache capacity in tokens over all slots; a request reserves prompt + max new tokens
  when it is admitted, so a running sequence never runs out of cache (no preemption needed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 16
    max_waiting: int = 64
    prefill_chunk: int = 256
    max_tokens_per_step: int = 512
    cache_tokens: int = 65536
    recent_steps: int = 128  # step events kept for the snapshot

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_waiting", "prefill_chunk", "max_tokens_per_step", "cache_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"invalid engine config: {name} must be an integer >= 1, got {value!r}")
        if self.max_tokens_per_step < self.max_batch:
            raise ValueError(
                f"invalid engine config: max_tokens_per_step ({self.max_tokens_per_step}) must be at least"
                f" max_batch ({self.max_batch}), so every decoding sequence gets its token each step"
            )
        if self.recent_steps < 0:
            raise ValueError("invalid engine config: recent_steps must be >= 0")

"""Engine configuration: one validated dataclass, separate from the per-request `SamplingParams`.

The knobs of continuous batching:
- `max_batch`: sequences in flight at once; decode rows per step.
- `max_waiting`: requests queued for admission before `submit()` says the engine is busy.
- `prefill_chunk`: the most prompt tokens one sequence prefills in one step (long prompts are split so
  decoding sequences keep getting a token every step).
- `max_tokens_per_step`: the step's token budget: one per decode row, the rest goes to prefill chunks.
The KV cache:
- `kv_cache`: "paged" (the default: a pool of `block_size`-token blocks taken as tokens arrive, a prefix
  cache, preemption when the pool runs out) or "dense" (the readable week-2 cache: per-sequence buffers,
  prompt + max new tokens reserved at admission, so nothing is ever preempted).
- `cache_tokens`: the cache's capacity in tokens over all sequences (the paged pool holds
  cache_tokens / block_size blocks; `kv_pool_blocks` sets the block count directly instead, or
  `kv_pool_bytes` the bytes its keys and values may take over all layers, rounded down to whole blocks).
- `prefix_caching`: paged only; full computed blocks are shared by later prompts that start the same way.
Numerics:
- `batch_invariant`: every forward runs its linear layers with one kernel path for any number of rows
  (kernels.batch_invariant), so a request's tokens do not depend on what else shares its steps: outputs
  under preemption, a capped pool or another batch mix are the same bits. Off by default: where the
  fastest kernel depends on the rows (prefill on CPUs without an int8 GEMM) it costs speed, and the
  rounding differences it removes only change greedy outputs late in long generations.
"""

from __future__ import annotations

from dataclasses import dataclass

KV_CACHES = ("paged", "dense")


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 16
    max_waiting: int = 64
    prefill_chunk: int = 256
    max_tokens_per_step: int = 512
    cache_tokens: int = 65536
    recent_steps: int = 128  # step events kept for the snapshot
    kv_cache: str = "paged"
    block_size: int = 16
    kv_pool_blocks: int | None = None  # paged: the pool's blocks (None = cache_tokens / block_size)
    kv_pool_bytes: int | None = None  # paged: or the pool's bytes (keys and values, every layer)
    prefix_caching: bool = True
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_waiting", "prefill_chunk", "max_tokens_per_step", "cache_tokens", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"invalid engine config: {name} must be an integer >= 1, got {value!r}")
        if self.max_tokens_per_step < self.max_batch:
            raise ValueError(
                f"invalid engine config: max_tokens_per_step ({self.max_tokens_per_step}) must be at least"
                f" max_batch ({self.max_batch}), so every decoding sequence gets its token each step"
            )
        if not isinstance(self.recent_steps, int) or self.recent_steps < 0:
            raise ValueError("invalid engine config: recent_steps must be >= 0")
        if self.kv_cache not in KV_CACHES:
            raise ValueError(
                f"invalid engine config: kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}"
            )
        for name in ("kv_pool_blocks", "kv_pool_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"invalid engine config: {name} must be an integer >= 1 or None, got {value!r}")
        if self.kv_pool_blocks is not None and self.kv_pool_bytes is not None:
            raise ValueError("invalid engine config: give kv_pool_blocks or kv_pool_bytes, not both")
        for name in ("prefix_caching", "batch_invariant"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"invalid engine config: {name} must be true or false")

    def pool_blocks(self, token_bytes: int) -> int:
        """Blocks of the paged pool, for a model whose keys and values take `token_bytes` per token over
        every layer. ValueError if kv_pool_bytes cannot hold one block."""
        if self.kv_pool_blocks is not None:
            return self.kv_pool_blocks
        if self.kv_pool_bytes is not None:
            block_bytes = token_bytes * self.block_size
            if self.kv_pool_bytes < block_bytes:
                raise ValueError(
                    f"invalid engine config: kv_pool_bytes ({self.kv_pool_bytes}) holds no block of"
                    f" {block_bytes} bytes ({self.block_size} tokens of {token_bytes} bytes)"
                )
            return self.kv_pool_bytes // block_bytes
        return -(-self.cache_tokens // self.block_size)  # whole blocks holding cache_tokens

"""KV caches: the interface the model sees, the dense week-2 cache, and integer-only capacity accounting.

- `base.py`       KVCache: `offset` + `attend` (store and attend), `update_and_fetch`, `rewind`, `release`
- `dense.py`      DenseKVBuffer (one sequence, one layer) and DenseKVCache (a layer's view over B of them)
- `allocator.py`  KVAllocator (the protocol) and SlotPool (dense slots); the paged pool and block manager
                  join here
"""

from tiny_llm_playground.engine.cache.allocator import KVAllocator, SlotPool
from tiny_llm_playground.engine.cache.base import KVCache
from tiny_llm_playground.engine.cache.dense import DenseKVBuffer, DenseKVCache, make_cache

__all__ = ["DenseKVBuffer", "DenseKVCache", "KVAllocator", "KVCache", "SlotPool", "make_cache"]

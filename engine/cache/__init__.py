"""KV caches: the interface the model sees, the dense and paged caches, integer-only capacity accounting.

- `base.py`           KVCache: `offset` + `attend` (store and attend), `update_and_fetch`, `rewind`, `release`
- `dense.py`          DenseKVBuffer (one sequence, one layer) and DenseKVCache (a layer's view over B of them)
- `paged.py`          PagedKVPool (every layer's block arrays) and PagedKVCache (a layer's view: block tables)
- `allocator.py`      KVAllocator (the protocol) and SlotPool (the dense cache's slots)
- `block_manager.py`  BlockManager (the paged cache's blocks, prefix hashes, LRU, preemption counters)
"""

from tiny_llm_playground.engine.cache.allocator import KVAllocator, SlotPool
from tiny_llm_playground.engine.cache.base import KVCache
from tiny_llm_playground.engine.cache.block_manager import BlockManager, BlockPoolState, blocks_for
from tiny_llm_playground.engine.cache.dense import DenseKVBuffer, DenseKVCache, make_cache
from tiny_llm_playground.engine.cache.paged import PagedKVCache, PagedKVPool

__all__ = [
    "BlockManager",
    "BlockPoolState",
    "DenseKVBuffer",
    "DenseKVCache",
    "KVAllocator",
    "KVCache",
    "PagedKVCache",
    "PagedKVPool",
    "SlotPool",
    "blocks_for",
    "make_cache",
]

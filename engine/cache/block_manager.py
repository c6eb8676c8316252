"""The paged cache's block manager: integers only (block ids, ref counts, prefix hashes, free lists, LRU).

The pool has `num_blocks` blocks of `block_size` tokens each; the K/V arrays behind them belong to the
paged pool (engine/cache/paged.py), never to this class. Each sequence (a handle) owns a block table, the
ids of the blocks holding its tokens in order. A full block whose keys and values have been computed
(`commit`) gets a hash chained over its tokens and its prefix's hash; a later sequence whose prompt starts
with the same tokens takes those blocks instead of computing them (prefix caching, vLLM's automatic prefix
caching; SGLang's radix cache does the same with a tree).

Rules it keeps:
- A hit is a full, computed block whose hash AND tokens match (the hash alone is never trusted); hits stop
  at the first miss, and a prompt always recomputes at least its last token (its logits are needed).
- When the last token to recompute falls in a shared block, the sequence gets a private copy of that
  block (`take_copies`: the runner copies the keys/values) instead of recomputing the whole block.
- A block's ref count is the number of tables holding it. A freed block whose hash is registered stays
  cached (reusable by a hit) until a new block is needed and none is free: then the least recently used
  cached block is evicted. Blocks never written are handed out lowest id first, freed ones most
  recently freed first, so the pool's touched memory stays near its peak use.
- Two sequences that compute the same block in one step leave one cached copy (the first to commit).
- Counters: prefix queries and hits in tokens, preemptions, and the peaks of blocks in use and of tokens
  held (a shared block counted once); `full` says every block came back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold `tokens` tokens."""
    return -(-tokens // block_size)


@dataclass(frozen=True)
class BlockPoolState:
    """The pool as the playground draws it (plain values)."""

    block_size: int
    num_blocks: int
    touched: int  # blocks ever handed out (ids 0 .. touched - 1): the memory the pool's arrays hold
    ref_counts: tuple[int, ...]  # per touched block
    cached: tuple[bool, ...]  # per touched block: its hash is registered (reusable by a prefix hit)
    tables: tuple[tuple[int, tuple[int, ...]], ...]  # (handle, its block ids), admission order
    in_use: int
    cached_free: int  # ref count 0 but cached: reusable until evicted
    free: int  # neither used nor cached (never touched ones included)
    prefix_query_tokens: int
    prefix_hit_tokens: int
    preemptions: int
    held_tokens: int = 0  # tokens the live sequences hold, a shared block's counted once
    peak_in_use: int = 0  # the most blocks in use at once
    peak_held_tokens: int = 0  # the most tokens held at once
    peak_cached_tokens: int = 0  # the most tokens whose keys/values were kept at once (held + cached free)

    @property
    def hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, *, prefix_caching: bool = True) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1 or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"a block pool needs >= 1 block of >= 1 token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.capacity_tokens = num_blocks * block_size
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks  # registered hash of a cached block
        self._tokens: list[tuple[int, ...] | None] = [None] * num_blocks  # its tokens, to verify hits
        self._by_hash: dict[int, int] = {}
        self._freed: list[int] = []  # uncached free blocks that were used before (a stack)
        self._fresh = 0  # ids >= this were never handed out
        self._lru: OrderedDict[int, None] = OrderedDict()  # cached blocks with ref 0, least recent first
        self._tables: dict[int, list[int]] = {}
        self._hashes: dict[int, list[int]] = {}  # handle -> chained hashes of its committed full blocks
        self._copies: list[tuple[int, int]] = []  # (src, dst) copy-on-write the runner must do
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.preemptions = 0
        self._computed: dict[int, int] = {}  # handle -> tokens it holds computed
        self._in_use = 0  # blocks with a ref count > 0
        self._shared_tokens = 0  # tokens counted more than once in _computed (extra holders of full blocks)
        self.peak_in_use = 0
        self.peak_held_tokens = 0
        self.peak_cached_tokens = 0

    # ----- capacity -----
    @property
    def free_blocks(self) -> int:
        """Blocks a new allocation can take: never used, freed, or cached but unreferenced (evictable)."""
        return self.num_blocks - self._fresh + len(self._freed) + len(self._lru)

    @property
    def free_tokens(self) -> int:
        return self.free_blocks * self.block_size

    @property
    def full(self) -> bool:
        """True when no table holds a block (every block is free or cached)."""
        return not self._tables and not any(self._ref)

    def check_fits(self, tokens: int) -> None:
        need = blocks_for(tokens, self.block_size)
        if need > self.num_blocks:
            raise ValueError(
                f"the request needs {tokens} cache tokens (prompt + max_tokens: {need} blocks of"
                f" {self.block_size}) but the pool holds {self.num_blocks} blocks ({self.capacity_tokens} tokens);"
                " shorten the prompt or lower max_tokens"
            )

    # ----- prefix cache -----
    @staticmethod
    def _chain(parent: int, tokens: Sequence[int]) -> int:
        return hash((parent, tuple(tokens)))

    def _hits(self, token_ids: Sequence[int]) -> list[int]:
        """Cached blocks matching the first full blocks of `token_ids`, up to the first miss."""
        if not self.prefix_caching:
            return []
        bs, out, parent = self.block_size, [], 0
        for start in range(0, len(token_ids) - bs + 1, bs):
            tokens = tuple(token_ids[start : start + bs])
            h = self._chain(parent, tokens)
            blk = self._by_hash.get(h)
            if blk is None or self._tokens[blk] != tokens:
                break
            out.append(blk)
            parent = h
        return out

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        """Tokens of `token_ids` a new sequence would find computed: whole cached blocks, and never the
        last token (its logits must be computed)."""
        return min(len(self._hits(token_ids)) * self.block_size, max(len(token_ids) - 1, 0))

    # ----- sequences -----
    def _take(self) -> int:
        if self._freed:
            blk = self._freed.pop()
        elif self._fresh < self.num_blocks:
            blk, self._fresh = self._fresh, self._fresh + 1
        elif self._lru:
            blk, _ = self._lru.popitem(last=False)  # evict the least recently used cached block
            del self._by_hash[self._hash[blk]]
            self._hash[blk] = self._tokens[blk] = None
        else:
            raise RuntimeError("no free block (callers check can_admit / can_grow first)")
        self._ref[blk] = 1
        self._in_use += 1
        self.peak_in_use = max(self.peak_in_use, self._in_use)
        return blk

    def _hold(self, blk: int) -> None:
        """One more holder of a cached (full) block: a prefix hit."""
        if self._ref[blk] == 0:
            self._lru.pop(blk)  # a cached block back in use
            self._in_use += 1
            self.peak_in_use = max(self.peak_in_use, self._in_use)
        else:
            self._shared_tokens += self.block_size
        self._ref[blk] += 1

    def _plan(self, token_ids: Sequence[int], upto: int) -> tuple[list[int], int, int]:
        """(hit blocks, cached tokens, new blocks needed) for a sequence admitted to hold `upto` tokens."""
        hits = self._hits(token_ids)
        cached = min(len(hits) * self.block_size, max(len(token_ids) - 1, 0))
        keep = blocks_for(cached, self.block_size) if cached % self.block_size == 0 else len(hits) - 1
        # keep: hit blocks used as they are; a partly reused last hit block is copied (copy-on-write)
        new = max(blocks_for(max(upto, cached), self.block_size) - keep, 0)
        return hits, cached, new

    def can_admit(self, token_ids: Sequence[int], upto: int, reserve: int = 0) -> bool:
        """Whether a sequence with these tokens can be admitted holding blocks for its first `upto` tokens
        (its cached prefix included). `reserve` is not reserved: blocks are taken as tokens arrive."""
        hits, _, new = self._plan(token_ids, upto)
        unreferenced_hits = sum(1 for b in hits if self._ref[b] == 0)
        return new + unreferenced_hits <= self.free_blocks

    def admit(self, handle: int, token_ids: Sequence[int], upto: int, reserve: int = 0) -> int:
        """Give `handle` a table: the cached prefix's blocks, then new blocks up to `upto` tokens. Returns
        the cached tokens (its keys and values need no computing)."""
        if handle in self._tables:
            raise ValueError(f"sequence {handle} already holds blocks")
        hits, cached, new = self._plan(token_ids, upto)
        bs = self.block_size
        table: list[int] = []
        if cached % bs == 0:
            for blk in hits[: cached // bs]:
                self._hold(blk)
                table.append(blk)
        else:  # the last token to recompute lies in the last hit block: share the others, copy that one
            for blk in hits[:-1]:
                self._hold(blk)
                table.append(blk)
            self._pin(hits[-1])  # held until the copy is done, so no eviction takes it
            table.append(self._take())
            self._copies.append((hits[-1], table[-1]))
            new -= 1
        table += [self._take() for _ in range(new)]
        self._tables[handle] = table
        self._hashes[handle] = self._chains(token_ids, cached // bs)
        self.prefix_query_tokens += len(token_ids)
        self.prefix_hit_tokens += cached
        self._computed[handle] = cached
        self._note_held()
        return cached

    @property
    def held_tokens(self) -> int:
        """Tokens the live sequences hold computed, a shared block's counted once."""
        return sum(self._computed.values()) - self._shared_tokens

    def _note_held(self) -> None:
        held = self.held_tokens
        self.peak_held_tokens = max(self.peak_held_tokens, held)
        self.peak_cached_tokens = max(self.peak_cached_tokens, held + len(self._lru) * self.block_size)

    def _chains(self, token_ids: Sequence[int], n_blocks: int) -> list[int]:
        out, parent = [], 0
        for i in range(n_blocks):
            parent = self._chain(parent, token_ids[i * self.block_size : (i + 1) * self.block_size])
            out.append(parent)
        return out

    def take_copies(self) -> list[tuple[int, int]]:
        """The (src, dst) block copies admissions planned since the last call (do them before the next
        forward); the sources are released."""
        copies, self._copies = self._copies, []
        for src, _ in copies:
            self._unpin(src)
        return copies

    def _pin(self, blk: int) -> None:
        """Hold a block as the source of a copy (no sequence's tokens are counted in it)."""
        if self._ref[blk] == 0:
            self._lru.pop(blk)
            self._in_use += 1
        self._ref[blk] += 1

    def _unpin(self, blk: int) -> None:
        self._ref[blk] -= 1
        if self._ref[blk] == 0:
            self._in_use -= 1
            self._lru[blk] = None  # a copy source is a cached block

    def table(self, handle: int) -> list[int]:
        return self._tables[handle]

    def can_grow(self, handle: int, upto: int) -> bool:
        """Whether `handle`'s table can cover its first `upto` tokens."""
        return blocks_for(upto, self.block_size) - len(self._tables[handle]) <= self.free_blocks

    def room(self, handle: int) -> int:
        """How many tokens `handle` can hold with its blocks and every free one."""
        return (len(self._tables[handle]) + self.free_blocks) * self.block_size

    def grow(self, handle: int, upto: int) -> None:
        table = self._tables[handle]
        for _ in range(blocks_for(upto, self.block_size) - len(table)):
            table.append(self._take())

    def commit(self, handle: int, token_ids: Sequence[int], computed: int) -> None:
        """`handle`'s first `computed` tokens (`token_ids`) have their keys and values: register the hashes
        of its full blocks among them, so later prompts can hit them."""
        self._computed[handle] = computed
        self._note_held()
        if not self.prefix_caching:
            return
        table, hashes, bs = self._tables[handle], self._hashes[handle], self.block_size
        parent = hashes[-1] if hashes else 0
        for i in range(len(hashes), computed // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            parent = self._chain(parent, tokens)
            hashes.append(parent)
            blk = table[i]
            if parent not in self._by_hash and self._hash[blk] is None:
                self._by_hash[parent] = blk
                self._hash[blk], self._tokens[blk] = parent, tokens

    def _release(self, blk: int) -> None:
        self._ref[blk] -= 1
        if self._ref[blk] > 0:
            self._shared_tokens -= self.block_size
        else:
            self._in_use -= 1
            if self._hash[blk] is not None:
                self._lru[blk] = None  # most recently used last
            else:
                self._freed.append(blk)

    def free(self, handle: int) -> None:
        """Give back every block of `handle` (cached ones stay reusable until evicted)."""
        table = self._tables.pop(handle, None)
        if table is None:
            raise ValueError(f"sequence {handle} holds no blocks")
        del self._hashes[handle]
        del self._computed[handle]
        for blk in reversed(table):  # the prefix's blocks end up the most recently used: evicted last
            self._release(blk)
        self._note_held()

    def reset_prefix_cache(self) -> int:
        """Forget every cached block no sequence holds (they become plain free blocks), so the next prompts
        start cold; blocks in use keep their hashes. Returns how many were forgotten (vLLM's
        reset_prefix_cache; the bench uses it to time prefill without hits)."""
        n = len(self._lru)
        for blk in self._lru:
            del self._by_hash[self._hash[blk]]
            self._hash[blk] = self._tokens[blk] = None
            self._freed.append(blk)
        self._lru.clear()
        return n

    def preempt(self, handle: int) -> None:
        """Free `handle`'s blocks to make room for older sequences (it will be recomputed)."""
        self.free(handle)
        self.preemptions += 1

    # ----- the picture -----
    def state(self) -> BlockPoolState:
        n = self._fresh
        in_use = sum(1 for r in self._ref[:n] if r > 0)
        return BlockPoolState(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            touched=n,
            ref_counts=tuple(self._ref[:n]),
            cached=tuple(h is not None for h in self._hash[:n]),
            tables=tuple((h, tuple(t)) for h, t in self._tables.items()),
            in_use=in_use,
            cached_free=len(self._lru),
            free=self.num_blocks - in_use - len(self._lru),
            prefix_query_tokens=self.prefix_query_tokens,
            prefix_hit_tokens=self.prefix_hit_tokens,
            preemptions=self.preemptions,
            held_tokens=self.held_tokens,
            peak_in_use=self.peak_in_use,
            peak_held_tokens=self.peak_held_tokens,
            peak_cached_tokens=self.peak_cached_tokens,
        )

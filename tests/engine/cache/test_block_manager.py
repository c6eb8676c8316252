"""The block manager without tensors: exact expectations for prefix caching, copy-on-write, eviction and
preemption, and a hypothesis state machine that checks its invariants after every operation against a
model of what each sequence holds."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tiny_llm_playground.engine.cache import BlockManager, blocks_for


def admit(bm: BlockManager, handle: int, tokens: list[int], upto: int | None = None) -> int:
    upto = len(tokens) if upto is None else upto
    cached = bm.cached_prefix(tokens)
    assert bm.can_admit(tokens, max(upto, cached + 1))
    return bm.admit(handle, tokens, max(upto, cached + 1))


def run(bm: BlockManager, handle: int, tokens: list[int]) -> None:
    """What the engine does for a prompt: admit, compute it all, commit."""
    admit(bm, handle, tokens)
    bm.take_copies()
    bm.commit(handle, tokens, len(tokens))


def test_a_shared_prefix_is_found_by_its_blocks_and_never_its_last_token():
    bm = BlockManager(16, block_size=4)
    system = list(range(100, 112))  # 3 full blocks
    run(bm, 1, system + [1, 2, 3])
    assert bm.cached_prefix(system + [7, 8]) == 12  # the three system blocks
    assert bm.cached_prefix(system[:8] + [0, 0, 0, 0, 5]) == 8  # the third block differs: the hits stop
    assert bm.cached_prefix([100, 101, 102]) == 0  # no full block
    assert bm.admit(2, system + [9], 14) == 12
    assert bm.table(2)[:3] == bm.table(1)[:3]  # the same physical blocks
    assert bm.state().ref_counts[bm.table(1)[0]] == 2
    assert (bm.prefix_query_tokens, bm.prefix_hit_tokens) == (15 + 13, 12)


def test_a_fully_cached_prompt_recomputes_only_its_last_token_in_a_private_copy():
    bm = BlockManager(8, block_size=4)
    prompt = list(range(8))  # exactly two blocks
    run(bm, 1, prompt)
    shared = list(bm.table(1))
    bm.free(1)
    assert bm.cached_prefix(prompt) == 7  # everything but the last token
    assert bm.admit(2, prompt, 8) == 7
    table = bm.table(2)
    assert table[0] == shared[0] and table[1] != shared[1]  # the last block is a copy
    assert bm.take_copies() == [(shared[1], table[1])]
    assert bm.state().ref_counts[shared[1]] == 0 and bm.state().cached[shared[1]]  # still cached
    assert bm.take_copies() == []


def test_freed_cached_blocks_are_reused_until_evicted_least_recently_used_first():
    bm = BlockManager(4, block_size=2)
    run(bm, 1, [1, 1, 2, 2])  # blocks a, b
    run(bm, 2, [3, 3, 4, 4])  # blocks c, d
    bm.free(1)
    bm.free(2)
    state = bm.state()
    assert state.cached_free == 4 and state.in_use == 0 and bm.free_blocks == 4 and bm.full
    assert bm.cached_prefix([1, 1, 2, 2, 9]) == 4
    run(bm, 3, [5, 5, 6])  # needs 2 blocks: the least recently used cached ones go ([1, 1] first)
    assert bm.cached_prefix([1, 1, 2, 2, 9]) == 0  # its first block was evicted
    assert bm.cached_prefix([3, 3, 4, 4, 9]) == 4  # the other prompt survives


def test_reset_forgets_the_cached_free_blocks_only():
    bm = BlockManager(6, block_size=2)
    run(bm, 1, [1, 1, 2, 2])
    run(bm, 2, [3, 3, 4, 4, 5])
    bm.free(1)
    assert bm.state().cached_free == 2
    assert bm.reset_prefix_cache() == 2
    state = bm.state()
    assert state.cached_free == 0 and state.free == 6 - state.in_use and bm.free_blocks == 6 - state.in_use
    assert bm.cached_prefix([1, 1, 2, 2, 9]) == 0, "forgotten"
    assert bm.cached_prefix([3, 3, 4, 4, 9]) == 4, "a live sequence's blocks stay hits"
    bm.free(2)
    assert bm.state().cached_free == 2 and bm.full


def test_a_hash_hit_with_other_tokens_is_not_a_hit(monkeypatch):
    bm = BlockManager(8, block_size=2)
    monkeypatch.setattr(BlockManager, "_chain", staticmethod(lambda parent, tokens: 42))  # every block collides
    run(bm, 1, [1, 2, 3])
    assert bm.cached_prefix([1, 2, 3]) == 2
    assert bm.cached_prefix([7, 8, 9]) == 0, "the hash matched but the tokens differ"


def test_two_sequences_computing_the_same_block_leave_one_cached_copy():
    bm = BlockManager(8, block_size=2)
    for h in (1, 2):
        admit(bm, h, [5, 6, 7])  # admitted in one step: neither has computed yet, so no hit
    for h in (1, 2):
        bm.commit(h, [5, 6, 7], 3)
    assert sum(bm.state().cached) == 1
    assert bm.cached_prefix([5, 6, 8]) == 2


def test_blocks_are_taken_as_tokens_arrive_and_the_size_check_counts_blocks():
    bm = BlockManager(3, block_size=4, prefix_caching=False)
    assert bm.admit(1, list(range(5)), 5) == 0 and len(bm.table(1)) == 2
    assert bm.can_grow(1, 8) and not bm.can_grow(1, 13)
    bm.grow(1, 9)
    assert len(bm.table(1)) == 3 and bm.free_blocks == 0 and bm.room(1) == 12
    bm.check_fits(12)
    with pytest.raises(ValueError, match="needs 13 cache tokens .*4 blocks of 4.* holds 3 blocks"):
        bm.check_fits(13)
    bm.preempt(1)
    assert bm.preemptions == 1 and bm.full and bm.free_blocks == 3
    with pytest.raises(ValueError, match="holds no blocks"):
        bm.free(1)
    assert bm.cached_prefix(list(range(9))) == 0  # prefix caching off


def test_the_pool_hands_out_recently_freed_blocks_before_untouched_ones():
    bm = BlockManager(10, block_size=2, prefix_caching=False)
    bm.admit(1, [1, 2, 3], 3)  # blocks 0, 1
    bm.admit(2, [1, 2, 3], 3)  # blocks 2, 3
    bm.free(1)
    bm.admit(3, [4, 5], 2)
    assert bm.table(3) == [0] and bm.state().touched == 4  # reused, nothing new touched


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admissions (prompts from a small alphabet, so prefixes repeat), growth, commits, frees and
    preemptions; after every step the pool is checked against what each live sequence holds."""

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(24, block_size=3)
        self.live: dict[int, dict] = {}  # handle -> {"tokens", "upto", "computed"}
        self.next = 0

    @rule(prompt=st.lists(st.integers(0, 2), min_size=1, max_size=20), extra=st.integers(0, 5))
    def admit(self, prompt, extra):
        bm = self.bm
        cached = bm.cached_prefix(prompt)
        assert cached < len(prompt) and cached % bm.block_size in (0, bm.block_size - 1)
        upto = min(len(prompt), cached + 1 + extra)
        if not bm.can_admit(prompt, upto):
            return
        handle, self.next = self.next, self.next + 1
        assert bm.admit(handle, prompt, upto) == cached
        bm.take_copies()
        self.live[handle] = {"tokens": list(prompt), "upto": upto, "computed": cached}

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def compute(self, data):
        """The runner computed the tokens the sequence holds room for; it may grow by a few more."""
        handle = data.draw(st.sampled_from(sorted(self.live)))
        seq = self.live[handle]
        seq["computed"] = max(seq["computed"], seq["upto"])
        self.bm.commit(handle, seq["tokens"], seq["computed"])
        more = data.draw(st.integers(0, 4))
        seq["tokens"] += [data.draw(st.integers(0, 2)) for _ in range(more)]
        if self.bm.can_grow(handle, len(seq["tokens"])):
            self.bm.grow(handle, len(seq["tokens"]))
            seq["upto"] = len(seq["tokens"])

    @precondition(lambda self: self.live)
    @rule(data=st.data(), preempt=st.booleans())
    def leave(self, data, preempt):
        handle = data.draw(st.sampled_from(sorted(self.live)))
        (self.bm.preempt if preempt else self.bm.free)(handle)
        del self.live[handle]

    @rule()
    def reset(self):
        self.bm.reset_prefix_cache()
        assert self.bm.state().cached_free == 0

    @invariant()
    def holdings_match_ref_counts(self):
        bm, state = self.bm, self.bm.state()
        counts = [0] * bm.num_blocks
        for handle, seq in self.live.items():
            table = bm.table(handle)
            assert len(table) == blocks_for(max(seq["upto"], seq["computed"]), bm.block_size)
            assert len(set(table)) == len(table), "a table holds a block twice"
            for blk in table:
                counts[blk] += 1
        assert list(state.ref_counts) == counts[: state.touched], "a ref count disagrees with the tables"
        assert all(c == 0 for c in counts[state.touched :])
        assert state.in_use + state.cached_free + state.free == bm.num_blocks
        assert bm.free_blocks == bm.num_blocks - state.in_use
        assert state.prefix_hit_tokens <= state.prefix_query_tokens
        # tokens held, a shared block's once: the union over live sequences of (block, slot) computed
        held = {(blk, i) for h, s in self.live.items() for p, blk in enumerate(bm.table(h))
                for i in range(bm.block_size) if p * bm.block_size + i < s["computed"]}  # fmt: skip
        assert state.held_tokens == len(held), "tokens held, counted once, disagree"
        assert state.peak_held_tokens >= state.held_tokens and state.peak_in_use >= state.in_use

    @invariant()
    def only_computed_full_blocks_are_cached(self):
        """A block a sequence is still computing (or has not filled) is never offered to a prefix hit."""
        bm, state = self.bm, self.bm.state()
        for handle, seq in self.live.items():
            for blk in bm.table(handle)[seq["computed"] // bm.block_size :]:
                assert not state.cached[blk], "a block still being computed is cached"

    def teardown(self):
        for handle in list(self.live):
            self.bm.free(handle)
        assert self.bm.full, "blocks leaked"


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)

"""The slot pool, the dense cache's integer-only allocator: slots, reserved tokens, the one size check."""

from __future__ import annotations

import pytest

from tiny_llm_playground.engine.cache import SlotPool


def test_slot_pool_refuses_double_free_and_over_allocation():
    pool = SlotPool(2, 10)
    a = pool.allocate(6)
    assert not pool.can_allocate(5) and pool.can_allocate(4)
    with pytest.raises(RuntimeError, match="no room"):
        pool.allocate(5)
    pool.free(a)
    with pytest.raises(ValueError, match="not allocated"):
        pool.free(a)
    assert pool.full


def test_the_size_check_names_the_request_and_the_cache():
    pool = SlotPool(4, 100)
    pool.check_fits(100)
    with pytest.raises(ValueError, match="needs 101 cache tokens .* holds 100"):
        pool.check_fits(101)


def test_slots_are_handed_out_lowest_first_and_reused():
    pool = SlotPool(3, 30)
    assert [pool.allocate(5) for _ in range(3)] == [0, 1, 2]
    assert pool.free_slots == 0 and pool.free_tokens == 15 and not pool.can_allocate(1)
    pool.free(1)
    assert pool.allocate(10) == 1 and pool.reserved(1) == 10
    with pytest.raises(ValueError, match="at least one slot"):
        SlotPool(0, 10)

"""The slot pool, the dense cache's integer-only allocator: slots, reserved tokens, the one size check."""

from __future__ import annotations

import pytest

from tiny_llm_playground.engine.cache import SlotPool


def test_slot_pool_refuses_double_free_and_over_reservation():
    pool = SlotPool(2, 10)
    assert pool.admit(1, [1, 2], 2, reserve=6) == 0  # nothing is ever cached
    assert not pool.can_admit([1], 1, 5) and pool.can_admit([1], 1, 4)
    with pytest.raises(RuntimeError, match="no room"):
        pool.admit(2, [1], 1, reserve=5)
    with pytest.raises(ValueError, match="already holds"):
        pool.admit(1, [1], 1, reserve=1)
    pool.free(1)
    with pytest.raises(ValueError, match="holds no slot"):
        pool.free(1)
    assert pool.full


def test_the_size_check_names_the_request_and_the_cache():
    pool = SlotPool(4, 100)
    pool.check_fits(100)
    with pytest.raises(ValueError, match="needs 101 cache tokens .* holds 100"):
        pool.check_fits(101)


def test_slots_are_handed_out_lowest_first_and_reused_and_a_reservation_bounds_growth():
    pool = SlotPool(3, 30)
    for h in (7, 8, 9):
        pool.admit(h, [1], 1, reserve=5)
    assert [pool.slot(h) for h in (7, 8, 9)] == [0, 1, 2]
    assert pool.free_slots == 0 and pool.free_tokens == 15 and not pool.can_admit([1], 1, 1)
    pool.free(8)
    pool.admit(4, [1], 1, reserve=10)
    assert pool.slot(4) == 1 and pool.room(4) == 10 and pool.can_grow(4, 10) and not pool.can_grow(4, 11)
    with pytest.raises(ValueError, match="reserved 10"):
        pool.grow(4, 11)
    assert pool.cached_prefix([1, 2, 3]) == 0
    with pytest.raises(ValueError, match="at least one slot"):
        SlotPool(0, 10)

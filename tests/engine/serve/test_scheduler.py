"""The scheduler's policy and the slot pool, with no model and no tensors: sequences are plain ints."""

from __future__ import annotations

import pytest

from tiny_llm_playground.engine.cache.allocator import SlotPool
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.scheduler import Scheduler
from tiny_llm_playground.engine.serve.sequence import Sequence, Status


def make(max_batch=4, chunk=8, budget=16, cache=1000) -> Scheduler:
    cfg = EngineConfig(max_batch=max_batch, prefill_chunk=chunk, max_tokens_per_step=budget, cache_tokens=cache)
    return Scheduler(cfg, SlotPool(cfg.max_batch, cfg.cache_tokens))


def seq(rid: int, prompt: int, max_new: int = 10) -> Sequence:
    return Sequence(rid, list(range(prompt)), SamplingParams(temperature=0, max_tokens=max_new), context=10_000)


def run_plan(plan) -> None:
    """What the runner does to the integers: chunks fill the cache, finished prompts start decoding."""
    for s in plan.decode:
        s.num_cached += 1
    for s, n in plan.prefill:
        s.num_cached += n
        if s.prefill_left == 0:
            s.status = Status.DECODING


def test_a_long_prompt_is_prefilled_in_chunks_then_decodes():
    sch = make(chunk=8, budget=16)
    s = seq(1, 20)
    sch.add(s)
    chunks = []
    for _ in range(3):
        plan = sch.schedule()
        chunks.append([n for _, n in plan.prefill])
        assert plan.phase == "prefill"
        run_plan(plan)
    assert chunks == [[8], [8], [4]]
    plan = sch.schedule()
    assert plan.phase == "decode" and plan.decode == (s,) and plan.prefill == ()


def test_decode_rows_come_first_and_prefill_spends_the_rest_of_the_budget():
    sch = make(max_batch=4, chunk=8, budget=10)
    a, b = seq(1, 3), seq(2, 3)
    sch.add(a)
    sch.add(b)
    run_plan(sch.schedule())  # both prompts fit one step: 3 + 3 <= 10
    assert a.status is b.status is Status.DECODING
    c, d = seq(3, 30), seq(4, 30)
    sch.add(c)
    sch.add(d)
    plan = sch.schedule()
    assert plan.phase == "mixed"
    assert plan.decode == (a, b)
    assert [(s.id, n) for s, n in plan.prefill] == [(3, 8)]  # budget 10 - 2 decode rows = 8, all to c
    assert plan.num_tokens == 10
    assert d.status is Status.WAITING  # no budget left: d is not given a slot it cannot use yet


def test_admission_is_first_come_first_served_and_bounded_by_slots():
    sch = make(max_batch=2, chunk=4, budget=16)
    seqs = [seq(i, 2) for i in range(5)]
    for s in seqs:
        sch.add(s)
    plan = sch.schedule()
    assert [s.id for s in plan.admitted] == [0, 1]
    assert sch.pool.free_slots == 0 and [s.id for s in sch.waiting] == [2, 3, 4]
    run_plan(plan)
    sch.remove(seqs[1])
    seqs[1].status = Status.FINISHED
    plan = sch.schedule()
    assert [s.id for s in plan.admitted] == [2]
    assert plan.decode == (seqs[0],)


def test_the_head_of_the_queue_is_not_skipped_when_its_cache_reservation_does_not_fit():
    sch = make(max_batch=4, chunk=64, budget=64, cache=100)
    small, big, tiny = seq(1, 10, 20), seq(2, 50, 40), seq(3, 1, 1)  # needs 30, 90, 2
    for s in (small, big, tiny):
        sch.add(s)
    plan = sch.schedule()
    assert [s.id for s in plan.admitted] == [1]  # big needs 90 > 70 free; tiny must wait behind it
    assert sch.pool.free_tokens == 70
    run_plan(plan)
    sch.remove(small)
    plan = sch.schedule()
    assert [s.id for s in plan.admitted] == [2, 3]


def test_a_request_larger_than_the_whole_cache_is_refused():
    sch = make(cache=50)
    with pytest.raises(ValueError, match="cache tokens"):
        sch.add(seq(1, 45, 10))


def test_removing_waiting_and_running_sequences_returns_every_slot():
    sch = make(max_batch=2)
    seqs = [seq(i, 5) for i in range(4)]
    for s in seqs:
        sch.add(s)
    sch.schedule()
    for s in seqs:
        sch.remove(s)
    assert sch.pool.full and not sch.has_work and all(s.slot is None for s in seqs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"prefill_chunk": -1}, "prefill_chunk"),
        ({"max_waiting": 1.5}, "max_waiting"),
        ({"max_batch": 8, "max_tokens_per_step": 4}, "at least max_batch"),
        ({"cache_tokens": True}, "cache_tokens"),
    ],
)
def test_bad_engine_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)

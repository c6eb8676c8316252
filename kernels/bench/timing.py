"""The benchmarks' one timer: the best wall time of a fully evaluated call over repeats (the machines are
shared, so the minimum is the figure least disturbed by other work)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], reps: int, budget_s: float = math.inf) -> float:
    """Best wall time of fn() over up to `reps` runs after one warm-up (allocations, thread start,
    caches); past `budget_s` it stops early, after at least 2 runs."""
    fn()
    best = math.inf
    start = time.perf_counter()
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - start > budget_s:
            break
    return best

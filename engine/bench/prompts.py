"""Benchmark prompts: deterministic token ids cut from real text, identical for the engine and its peers.

A fixed Python snippet (kept here, so the ids do not change when the repository's code does) is repeated
until it is long enough, tokenized once, and request i gets the window ids[i·STRIDE : i·STRIDE + length].
Request 0's window is what single-stream runs and the peers see; the windows differ, so a future prefix
cache cannot make the concurrent requests cheaper than distinct users' prompts would be.
"""

from __future__ import annotations

import hashlib

STRIDE = 13  # tokens between the starts of two requests' windows

SNIPPET = '''"""A small job queue with retries, priorities and a worker pool."""

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field


@dataclass(order=True)
class Job:
    priority: int
    seq: int
    name: str = field(compare=False)
    attempts: int = field(default=0, compare=False)
    max_attempts: int = field(default=3, compare=False)

    def should_retry(self, error: Exception) -> bool:
        """Retry transient errors until the job has used all its attempts."""
        transient = isinstance(error, (TimeoutError, ConnectionError))
        return transient and self.attempts < self.max_attempts


class JobQueue:
    def __init__(self, workers: int = 4) -> None:
        self._heap: list[Job] = []
        self._counter = itertools.count()
        self._lock = threading.Condition()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        self.done: list[str] = []
        self.failed: dict[str, str] = {}

    def submit(self, name: str, priority: int = 10) -> None:
        with self._lock:
            heapq.heappush(self._heap, Job(priority, next(self._counter), name))
            self._lock.notify()

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap:
                    self._lock.wait()
                job = heapq.heappop(self._heap)
            try:
                self.process(job)
                self.done.append(job.name)
            except Exception as e:
                job.attempts += 1
                if job.should_retry(e):
                    time.sleep(0.1 * 2**job.attempts)
                    self.submit(job.name, job.priority + 1)
                else:
                    self.failed[job.name] = repr(e)

    def process(self, job: Job) -> None:
        raise NotImplementedError


'''


def token_stream(tokenizer, length: int) -> list[int]:
    """At least `length` ids of the snippet repeated, tokenized as one text (deterministic)."""
    if length < 1:
        raise ValueError("the token stream needs length >= 1")
    repeats = 1
    while True:
        ids = tokenizer.encode(SNIPPET * repeats)
        if len(ids) >= length:
            return list(ids)
        repeats *= 2


def windows(ids: list[int], n: int, length: int) -> list[list[int]]:
    """n prompts of exactly `length` ids: request i starts STRIDE·i tokens into `ids`."""
    if len(ids) < (n - 1) * STRIDE + length:
        raise ValueError(f"{len(ids)} ids are too few for {n} windows of {length}")
    return [ids[i * STRIDE : i * STRIDE + length] for i in range(n)]


def bench_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """n prompts of exactly `length` ids cut from the snippet's token stream."""
    return windows(token_stream(tokenizer, (n - 1) * STRIDE + length), n, length)


def ids_sha256(ids: list[int]) -> str:
    """A short fingerprint of a prompt's ids, to see at a glance that two runs fed the same tokens."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def shared_prefix_prompts(tokenizer, n: int, system_len: int, q_min: int, q_max: int) -> list[list[int]]:
    """n prompts that share one `system_len`-token system prompt (the stream's first tokens), each followed
    by its own question of q_min..q_max tokens (request i: length q_min + (7i mod (q_max - q_min + 1)),
    starting 97i tokens further into the same stream): a class of students asking under one prompt."""
    span = q_max - q_min + 1
    stream = token_stream(tokenizer, system_len + 97 * n + q_max)
    system = stream[:system_len]
    return [system + stream[system_len + 97 * i : system_len + 97 * i + q_min + (7 * i) % span] for i in range(n)]

"""Bounded concurrency with a bounded queue: past both, a 429 instead of a pile-up."""

from __future__ import annotations

import asyncio

from offline_asr.service.metrics import Metrics


class QueueFullError(Exception):
    """Every slot is busy and the queue is full."""


class Admission:
    """Admits up to `concurrency` requests at a time and lets `queue` more wait.

    `release` is separate from `acquire` because a timed-out request keeps its slot until its
    worker thread really finishes: the bound holds even when clients give up.
    """

    def __init__(self, concurrency: int, queue: int, metrics: Metrics) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self.metrics = metrics
        self.waiting = 0
        self.active = 0
        self._free = asyncio.Semaphore(concurrency)

    async def acquire(self) -> None:
        if self.active + self.waiting >= self.concurrency + self.queue:
            raise QueueFullError
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.active += 1
        self.metrics.in_flight.set(self.active)

    def release(self) -> None:
        self.active -= 1
        self.metrics.in_flight.set(self.active)
        self._free.release()

"""Limits and rates per group: who may start, in priority order (``--limit``, ``--rate``).

Both serve waiters by priority (higher first), then by arrival. They run on the
scheduler's loop only. Queueing, granting and counting waiters cost O(log n) with n
waiting (a heap, and a count kept as waiters come and go): releasing 10,000 queued
tasks one by one stays linear overall.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

__all__ = ("Limiter", "RateLimiter", "parse_rate")


@dataclass(order=True)
class _Waiter:
    sort_key: tuple[int, int]
    future: asyncio.Future[None] = field(compare=False)


class _PriorityQueue:
    """Waiters by priority, then arrival. A cancelled waiter stays in the heap until it
    comes up (removing it from the middle would cost O(n)), but leaves the count at once
    (:meth:`discard`)."""

    def __init__(self) -> None:
        self._heap: list[_Waiter] = []
        self._order = itertools.count()
        self._waiting = 0

    def push(self, priority: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter((-priority, next(self._order)), future))
        self._waiting += 1
        return future

    def pop(self) -> asyncio.Future[None] | None:
        """The best waiter still waiting (cancelled ones are dropped), or ``None``."""
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.future.done():
                self._waiting -= 1
                return waiter.future
        return None

    def discard(self, future: asyncio.Future[None]) -> None:
        """``future``, pushed here, was cancelled before its turn: it waits no more."""
        if future.cancelled():
            self._waiting -= 1

    def __len__(self) -> int:
        return self._waiting


class Limiter:
    """At most ``capacity`` holders at once (a semaphore that honours priorities)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self._waiting = _PriorityQueue()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, priority: int = 0) -> None:
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return
        future = self._waiting.push(priority)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            self._waiting.discard(future)
            raise

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self.running < self.capacity:
            future = self._waiting.pop()
            if future is None:
                return
            self.running += 1
            future.set_result(None)

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()


class RateLimiter:
    """At most ``rate`` starts per second, spaced evenly; waiters in priority order."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next_start = 0.0
        self._waiting = _PriorityQueue()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, priority: int = 0) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._next_start and not self._waiting:
            self._next_start = now + 1 / self.rate
            return
        future = self._waiting.push(priority)
        self._arm(loop)
        try:
            await future
        except asyncio.CancelledError:
            self._waiting.discard(future)
            raise

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_at(self._next_start, self._pump, loop)

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        if now >= self._next_start:
            future = self._waiting.pop()
            if future is None:
                return
            future.set_result(None)
            self._next_start = max(self._next_start, now - 1 / self.rate) + 1 / self.rate
        if self._waiting:
            self._arm(loop)

    def set_rate(self, rate: float) -> None:
        self.rate = rate


def parse_rate(text: str) -> float:
    """``"5/s"``, ``"120/min"``, ``"5"`` → starts per second.

    :raises ValueError: not of that form, or not above zero.
    """
    count, _, unit = str(text).strip().partition("/")
    seconds = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip())
    if seconds is None:
        raise ValueError(f"unknown unit {unit!r}")
    rate = float(count) / seconds
    if not rate > 0 or rate == float("inf"):
        raise ValueError("must be above zero")
    return rate

"""Group limits and rates: capacity, priority order, cancellation, spacing of starts.

Waiters are known to be queued when every task is blocked and the limiter counts them
(``anyio.wait_all_tasks_blocked``), never after a fixed wait.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from ipytasks.limits import Limiter, RateLimiter, parse_rate


@pytest.mark.anyio
async def test_limiter_holds_the_third_until_a_release() -> None:
    """With capacity 2, a third acquirer waits until one of the first two releases."""
    limiter = Limiter(2)
    await limiter.acquire()
    await limiter.acquire()
    third = asyncio.ensure_future(limiter.acquire())
    await anyio.wait_all_tasks_blocked()
    assert not third.done() and limiter.waiting == 1
    limiter.release()
    await asyncio.wait_for(third, 5)
    assert limiter.running == 2 and limiter.waiting == 0


@pytest.mark.anyio
async def test_limiter_serves_higher_priority_first() -> None:
    """Waiters start by priority, then by arrival."""
    limiter = Limiter(1)
    await limiter.acquire()
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await limiter.acquire(priority)
        order.append(name)
        limiter.release()

    tasks = [
        asyncio.ensure_future(waiter(n, p))
        for n, p in [("low", 0), ("high", 5), ("mid", 1), ("low2", 0)]
    ]
    await anyio.wait_all_tasks_blocked()
    assert limiter.waiting == 4 and order == []
    limiter.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["high", "mid", "low", "low2"]


@pytest.mark.anyio
async def test_cancelled_waiter_gives_its_turn_away() -> None:
    """A waiter cancelled before its turn never takes a slot."""
    limiter = Limiter(1)
    await limiter.acquire()
    gone = asyncio.ensure_future(limiter.acquire())
    stays = asyncio.ensure_future(limiter.acquire())
    await anyio.wait_all_tasks_blocked()
    assert limiter.waiting == 2
    gone.cancel()
    limiter.release()
    await asyncio.wait_for(stays, 5)
    assert limiter.running == 1 and gone.cancelled() and limiter.waiting == 0


@pytest.mark.anyio
async def test_rate_spaces_starts() -> None:
    """At 20 starts per second, of five starts asked for at once the k-th (from 0)
    comes at least k × 50 ms after they were asked for.

    Time is what this measures: the rate limiter's own waits, on the loop's clock. It is
    checked from the moment they were asked for, not between neighbours: a start that
    resumed late on a loaded machine may be followed closely by the next (the limiter
    lets a late start catch up within one interval), but none comes before its turn,
    and load only delays.
    """
    rater = RateLimiter(20)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def start() -> None:
        await rater.acquire()
        starts.append(loop.time())

    asked = loop.time()
    await asyncio.wait_for(asyncio.gather(*(start() for _ in range(5))), 5)
    since = [t - asked for t in starts]
    assert len(since) == 5 and all(s >= k * 0.05 - 0.005 for k, s in enumerate(since)), since


@pytest.mark.parametrize(
    ("text", "rate"), [("5/s", 5.0), ("120/min", 2.0), ("3", 3.0), ("0.5/s", 0.5)]
)
def test_parse_rate(text: str, rate: float) -> None:
    """Rates are starts per second or per minute."""
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/s", "-1/s", "5/week", "fast"])
def test_parse_rate_refuses(text: str) -> None:
    """A rate of zero, below zero, or of an unknown unit is refused."""
    with pytest.raises(ValueError):
        parse_rate(text)

"""The refresh throttle, on virtual time only."""

from __future__ import annotations

import itertools

import pytest

from ipytasks.overview.testing import VirtualClock
from ipytasks.throttle import Throttle


def make(interval: float = 0.5) -> tuple[VirtualClock, Throttle, list[float]]:
    clock = VirtualClock(start=100.0)
    flushed: list[float] = []
    throttle = Throttle(lambda: flushed.append(clock.time()), mininterval=interval,
                        call_later=clock.call_later, clock=clock.time)
    return clock, throttle, flushed


def test_nothing_requested_nothing_runs() -> None:
    """Without a request there is no timer at all and no flush, however much time passes."""
    clock, throttle, flushed = make()
    assert clock.advance(60) == 0
    assert flushed == [] and not throttle.armed and clock.pending == []


def test_first_request_flushes_on_the_next_turn() -> None:
    """A first request flushes after a zero delay (the next loop turn), not inside the caller."""
    clock, throttle, flushed = make()
    throttle.request()
    assert flushed == []
    assert clock.pending == [100.0]
    clock.advance(0)
    assert flushed == [100.0]
    assert not throttle.armed


def test_burst_coalesces_into_one_flush_per_interval() -> None:
    """A thousand requests at once give one flush, then one trailing flush per interval."""
    clock, throttle, flushed = make(0.5)
    for _ in range(1000):
        throttle.request()
    clock.advance(0)
    assert flushed == [100.0]
    for _ in range(1000):
        throttle.request()
    assert len(clock.pending) == 1  # one timer, whatever the number of requests
    clock.advance(10)
    assert flushed == [100.0, 100.5]


def test_steady_stream_is_limited_to_one_flush_per_mininterval() -> None:
    """Requests every 10 ms for 5 s flush at most once per 0.5 s, and the last change is shown."""
    clock, throttle, flushed = make(0.5)
    for _ in range(500):
        throttle.request()
        clock.advance(0.01)
    clock.advance(1)
    assert 9 <= len(flushed) <= 11
    gaps = [b - a for a, b in itertools.pairwise(flushed)]
    assert min(gaps) >= 0.5 - 1e-9
    assert flushed[-1] >= 100 + 4.99  # the trailing flush comes after the last request


def test_delayed_request_waits_and_an_earlier_one_moves_it_forward() -> None:
    """request(delay) schedules a later flush; a plain request before it pulls it forward."""
    clock, throttle, flushed = make(0.5)
    throttle.request(2.0)
    assert throttle.due == 102.0
    clock.advance(1.0)
    assert flushed == []
    throttle.request()
    assert throttle.due == 101.0
    assert clock.pending == [101.0]  # the 2 s timer was cancelled, not left to fire
    clock.advance(5)
    assert flushed == [101.0]


def test_later_request_never_delays_a_scheduled_flush() -> None:
    """A request for later than what is scheduled changes nothing."""
    clock, throttle, flushed = make(0.5)
    throttle.request()
    throttle.request(3.0)
    clock.advance(0)
    assert flushed == [100.0]
    assert not throttle.armed  # the delayed request was absorbed by the earlier flush


def test_flush_now_replaces_the_scheduled_flush() -> None:
    """flush_now runs at once and cancels the pending timer; the interval counts from it."""
    clock, throttle, flushed = make(0.5)
    throttle.request(1.0)
    throttle.flush_now()
    assert flushed == [100.0] and clock.pending == []
    throttle.request()
    assert throttle.due == 100.5


def test_a_view_drawn_outside_the_throttle_spaces_the_next_flush() -> None:
    """flushed(): a view drawn whole (a task's first display) counts as a flush, so the
    first change after it waits the interval rather than being sent at once."""
    clock, throttle, flushed = make(0.5)
    clock.advance(1.0)
    throttle.flushed()
    throttle.request()
    assert throttle.due == 101.5
    clock.advance(0.4)
    assert flushed == []
    clock.advance(0.1)
    assert flushed == [101.5]


def test_close_cancels_and_ignores_later_requests() -> None:
    """After close no timer is left and requests do nothing."""
    clock, throttle, flushed = make()
    throttle.request(1.0)
    throttle.close()
    assert clock.pending == []
    throttle.request()
    throttle.flush_now()
    clock.advance(10)
    assert flushed == []


def test_error_in_flush_is_reported_and_does_not_stop_the_throttle() -> None:
    """A flush that raises goes to on_error; the next request still flushes."""
    clock = VirtualClock()
    errors: list[BaseException] = []
    calls = []

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")

    throttle = Throttle(flush, mininterval=0.5, call_later=clock.call_later, clock=clock.time,
                        on_error=errors.append)
    throttle.request()
    clock.advance(0)
    throttle.request()
    clock.advance(1)
    assert len(calls) == 2
    assert [str(e) for e in errors] == ["boom"]


def test_error_without_handler_propagates() -> None:
    """Without on_error a failing flush raises to whoever ran it (never silently lost)."""
    throttle = Throttle(lambda: 1 / 0, mininterval=0.5, call_later=VirtualClock().call_later)
    with pytest.raises(ZeroDivisionError):
        throttle.flush_now()


def test_costly_flushes_are_spaced_out_by_their_cost() -> None:
    """A flush that costs 0.1 s of CPU with max_share 0.02 is followed by none for 5 s."""
    clock = VirtualClock(start=100.0)
    cpu = VirtualClock(start=0.0)
    flushed: list[float] = []
    cost = {"now": 0.1}

    def flush() -> None:
        flushed.append(clock.time())
        cpu.now += cost["now"]

    throttle = Throttle(flush, mininterval=0.5, call_later=clock.call_later, clock=clock.time,
                        max_share=0.02, cpu_clock=cpu.time)
    throttle.request()
    clock.advance(0)
    assert flushed == [100.0] and throttle.gap == pytest.approx(5.0)
    cost["now"] = 0.001  # cheap again: back to the plain interval after the next flush
    throttle.request()
    clock.advance(4.9)
    assert flushed == [100.0]
    clock.advance(0.2)
    assert flushed == [100.0, pytest.approx(105.0)]
    throttle.request()
    clock.advance(0.5)
    assert len(flushed) == 3 and flushed[2] == pytest.approx(105.5)

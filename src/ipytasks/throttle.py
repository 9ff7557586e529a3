"""Coalescing refreshes: many changes in, at most one refresh per ``mininterval`` out.

Every view of tasks (a task's cell, the dashboard, its saved snapshot) is told about
each change (:mod:`ipytasks.changes`). Sending a message for each would flood the
front end with 1,000 tasks, or with a task printing in a loop, so changes only
*request* a refresh; :class:`Throttle` runs the refresh once the minimum interval
since the previous one has passed, on a single timer (tqdm's ``mininterval``, but
with a trailing update so the last change is always shown). A view that shows time
passing requests its next refresh itself, with a delay (``request(delay)``).

Time comes from an injectable clock and timers from an injectable ``call_later``,
so tests drive it with virtual time (:class:`ipytasks.overview.testing.VirtualClock`).
Nothing runs while nothing is requested: there is no periodic timer of its own.

The interval also stretches with the cost of a flush: after one that took ``c`` seconds
of the thread's CPU, the next waits at least ``c / max_share``, so flushing never takes
more than ``max_share`` of the loop however large what it draws grows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ("Throttle", "TimerHandle")


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


#: ``call_later(delay, callback) -> handle``: ``asyncio.AbstractEventLoop.call_later``'s shape.
CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class Throttle:
    """Run ``flush`` at most once per ``mininterval`` seconds, however often it is requested.

    Not thread-safe: call :meth:`request`, :meth:`flush_now` and :meth:`close` from
    the thread that runs the timers (the event loop's).

    :param flush: what to run; its errors go to ``on_error`` and never stop the throttle.
    :param mininterval: the least time between the starts of two flushes.
    :param call_later: schedules ``callback`` after ``delay`` seconds and returns a
        handle with ``cancel()``.
    :param clock: monotonic seconds; the same clock ``call_later`` counts in.
    :param on_error: receives an exception ``flush`` raised.
    :param max_share: the most of the thread's time flushes may take (see the module).
    :param cpu_clock: CPU seconds of the calling thread (``time.thread_time``), which
        measures what a flush cost.
    """

    def __init__(
        self,
        flush: Callable[[], None],
        *,
        mininterval: float,
        call_later: CallLater,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[BaseException], None] | None = None,
        max_share: float = 1.0,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._flush = flush
        self.mininterval = mininterval
        self.max_share = max_share
        self._cpu = cpu_clock
        #: The least time from the start of the last flush to the next one.
        self.gap = mininterval
        self._call_later = call_later
        self._time = clock
        self._on_error = on_error
        self._last = -math.inf
        self._due: float | None = None
        self._handle: TimerHandle | None = None
        # The scheduled flush is as early as the interval allows: plain requests are no-ops.
        self._soonest = False
        self._closed = False
        #: How many times ``flush`` ran (for tests and benchmarks).
        self.flushes = 0

    @property
    def armed(self) -> bool:
        """Whether a flush is scheduled."""
        return self._handle is not None

    @property
    def due(self) -> float | None:
        """The clock time the scheduled flush runs at, if one is scheduled."""
        return self._due

    def request(self, delay: float = 0.0) -> None:
        """Ask for a flush ``delay`` seconds from now, or as soon as ``mininterval`` allows.

        Requests coalesce: while a flush is scheduled no earlier than this one would
        be, nothing more happens. A later request never delays a scheduled flush.
        """
        if self._closed or (self._soonest and delay <= 0):
            return  # the common case of a burst: not even a clock read
        now = self._time()
        due = max(now + delay, self._last + self.gap)
        if self._handle is not None:
            assert self._due is not None
            if self._due <= due:
                return
            self._handle.cancel()
        self._due = due
        self._soonest = delay <= 0
        self._handle = self._call_later(max(0.0, due - now), self._fire)

    def flushed(self) -> None:
        """The view was drawn whole outside the throttle (its first display): the next
        flush comes no sooner than ``mininterval`` from now."""
        self._last = self._time()

    def flush_now(self) -> None:
        """Flush at once (a user's click), taking the place of a scheduled flush."""
        if self._closed:
            return
        self._cancel_timer()
        self._run()

    def close(self) -> None:
        """Cancel the scheduled flush; later requests do nothing."""
        self._closed = True
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._due = None
        self._soonest = False

    def _fire(self) -> None:
        self._handle = None
        self._due = None
        self._soonest = False
        if not self._closed:
            self._run()

    def _run(self) -> None:
        self._last = self._time()
        self.flushes += 1
        cpu = self._cpu()
        try:
            self._flush()
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)
        finally:
            self.gap = max(self.mininterval, (self._cpu() - cpu) / self.max_share)


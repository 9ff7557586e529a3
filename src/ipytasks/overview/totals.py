"""The summary of a registry, kept up to date change by change.

:func:`~ipytasks.overview.render.summarize` walks every task; a live dashboard
refreshes twice a second, so over a long session that walk would dominate its
cost. :class:`RunningTotals` gives the same :class:`Summary` (and the run's time
zero) from what changed: O(changed tasks) per refresh.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import repeat
from operator import attrgetter, sub
from typing import TYPE_CHECKING

from ..tasks import ACTIVE, TaskState
from .render import Summary

if TYPE_CHECKING:
    from ..tasks import TaskRecord

__all__ = ("RunningTotals",)

_STATE = attrgetter("state")
_STARTED = attrgetter("started")
_ENDED = attrgetter("ended")
#: What a record was before a change when its end is news: not counted yet, or active.
_OPEN = ACTIVE | {None}


class RunningTotals:
    """Counts per state, work done and the run's first start and last end, of the latest
    record of each name in ``registry``.

    Call :meth:`update` with the records the scheduler reports changed (a dashboard
    does at each refresh). The work is done a batch at a time with the interpreter's
    built-ins (``map``, ``Counter``, set operations) rather than a Python step per
    record: 1,000 tasks ending between two refreshes cost well under a millisecond.

    Records that reach the registry without a report (a map's items, before they
    start) and names submitted again (their old record replaced) show as a size
    mismatch, which rebuilds from scratch: rare, and O(tasks).
    """

    def __init__(self, registry: Mapping[str, TaskRecord]) -> None:
        self._registry = registry
        self._rebuild()

    def _rebuild(self) -> None:
        #: Every counted record and its state when counted, in registry order.
        self._counted: dict[TaskRecord, TaskState] = {}
        self._counts = dict.fromkeys(TaskState, 0)
        self._ended_work = 0.0
        #: Records that started and have not ended (their work runs up to now), with
        #: their start as seconds after ``_ref``, and the sum of those: the work of all
        #: of them at time ``t`` is ``len(_running) * (t - _ref) - _running_sum``.
        self._running: dict[TaskRecord, float] = {}
        self._running_sum = 0.0
        self._ref: float | None = None
        self._first_submit: float | None = None
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._apply(list(self._registry.values()))

    def update(self, records: Iterable[TaskRecord]) -> None:
        """Account for the new states of ``records`` (each given once)."""
        records = list(records)
        if records:
            self._apply(records)

    def _apply(self, records: list[TaskRecord]) -> None:
        counted = self._counted
        before = list(map(counted.get, records))
        states = list(map(_STATE, records))
        counted.update(zip(records, states))
        if len(counted) != len(self._registry):
            self._rebuild()
            return
        counts = self._counts
        for state, n in Counter(before).items():
            if state is not None:
                counts[state] -= n
        now_in = Counter(states)
        for state, n in now_in.items():
            counts[state] += n
        # A submission and a first start never change and an end is set once, so
        # the extremes only ever extend.
        submitted = [r.submitted for r, b in zip(records, before) if b is None]
        if submitted:
            first = min(submitted)
            if self._first_submit is None or first < self._first_submit:
                self._first_submit = first
        started = list(map(_STARTED, records))
        starts = [t for t in started if t is not None]
        if not starts:
            return
        first = min(starts)
        if self._first_start is None or first < self._first_start:
            self._first_start = first
        if self._ref is None:
            self._ref = first
        ref = self._ref
        active = now_in[TaskState.PENDING] + now_in[TaskState.RUNNING]
        running = self._running
        if active:
            begun = {
                r: t - ref for r, s, t in zip(records, states, started)
                if s in ACTIVE and t is not None
            }
            fresh = begun.keys() - running.keys()
            if fresh:
                self._running_sum += sum(map(begun.__getitem__, fresh))
                running.update(begun)
        if active == len(records):
            return
        # Ended now (not counted as ended before) after having started: their work is done.
        ended = [
            r for r, b, s, t in zip(records, before, states, started)
            if s not in ACTIVE and b in _OPEN and t is not None
        ]
        if ended:
            if running:
                self._running_sum -= sum(map(running.pop, ended, repeat(0.0)))
                if not running:
                    self._running_sum = 0.0  # no rounding left behind
            ends = list(map(_ENDED, ended))
            spans = list(map(sub, ends, map(_STARTED, ended)))
            work = sum(spans)
            if min(spans) < 0:  # a clock set back: such a task counts as no work
                work -= sum(t for t in spans if t < 0)
            self._ended_work += work
            last = max(ends)
            if self._last_end is None or last > self._last_end:
                self._last_end = last

    def _check(self) -> None:
        if len(self._counted) != len(self._registry):
            self._rebuild()

    def summary(self, now: float) -> Summary:
        """What ``summarize(registry, now)`` gives."""
        self._check()
        work = self._ended_work
        last = self._last_end
        if self._running and self._ref is not None:
            work += len(self._running) * (now - self._ref) - self._running_sum
            last = now if last is None or now > last else last
        first = self._first_start
        wall = None if first is None or last is None else max(last - first, 0.0)
        return Summary(
            counts={s: n for s, n in self._counts.items() if n},
            total=len(self._counted),
            wall=wall,
            work=work,
        )

    def run_start(self) -> float | None:
        """What ``run_start(records)`` gives: the first submission (or start, if earlier)."""
        self._check()
        submitted, started = self._first_submit, self._first_start
        if submitted is None:
            return started
        return submitted if started is None or submitted <= started else started

"""The summary of a registry, kept up to date change by change.

:func:`~ipytasks.overview.render.summarize` walks every task; a live dashboard
refreshes twice a second, so over a long session that walk would dominate its
cost. :class:`RunningTotals` gives the same :class:`Summary` (and the run's time
zero) from what changed: O(1) per change, O(running tasks) per refresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..tasks import TaskState
from .render import Summary

if TYPE_CHECKING:
    from ..tasks import TaskRecord

__all__ = ("RunningTotals",)


class RunningTotals:
    """Counts per state, work done and the run's first start and last end, of the latest
    record of each name in ``registry``.

    Call :meth:`update` with every record the scheduler reports. Records that reach the
    registry without a report (a map's items, before they start) are caught by a size
    check, which then rebuilds from scratch.

    The extremes (first submission, first start, last end) are kept as plain minima and
    maxima: a change only ever extends them, except when a record holding one is replaced
    (its name submitted again), which is rare; then they are found again by one walk.
    """

    def __init__(self, registry: Mapping[str, TaskRecord]) -> None:
        self._registry = registry
        self._rebuild()

    def _rebuild(self) -> None:
        self._counted: dict[TaskRecord, tuple[TaskState, float | None, float | None]] = {}
        self._by_name: dict[str, TaskRecord] = {}
        self._counts = dict.fromkeys(TaskState, 0)
        self._ended_work = 0.0
        self._running: set[TaskRecord] = set()
        self._stale = False
        self._first_submit: float | None = None
        self._first_start: float | None = None
        self._last_end: float | None = None
        for record in list(self._registry.values()):
            self._add(record)

    def update(self, record: TaskRecord) -> None:
        """Account for ``record``'s new state (or for it replacing its name's old record)."""
        old = self._by_name.get(record.name)
        if old is not None and old is not record:
            self._remove(old)
        if record in self._counted:
            self._remove(record)
        self._add(record)

    def _add(self, record: TaskRecord) -> None:
        state, started, ended = record.state, record.started, record.ended
        self._counted[record] = (state, started, ended)
        self._by_name[record.name] = record
        self._counts[state] += 1
        submitted = record.submitted
        if self._first_submit is None or submitted < self._first_submit:
            self._first_submit = submitted
        if started is not None:
            if self._first_start is None or started < self._first_start:
                self._first_start = started
            if ended is not None:
                self._ended_work += max(ended - started, 0.0)
            else:
                self._running.add(record)
        if ended is not None and started is not None and (
            self._last_end is None or ended > self._last_end
        ):
            self._last_end = ended

    def _remove(self, record: TaskRecord) -> None:
        state, started, ended = self._counted.pop(record)
        if self._by_name.get(record.name) is record:
            del self._by_name[record.name]
        self._counts[state] -= 1
        self._running.discard(record)
        if started is not None and ended is not None:
            self._ended_work -= max(ended - started, 0.0)
        # Leaving the extremes as they are is only wrong when this record held one.
        if record.submitted == self._first_submit or (
            started is not None and (started == self._first_start or ended == self._last_end)
        ):
            self._stale = True

    def _check(self) -> None:
        if len(self._counted) != len(self._registry):
            self._rebuild()
        elif self._stale:
            self._stale = False
            self._first_submit = min((r.submitted for r in self._counted), default=None)
            starts = [v[1] for v in self._counted.values() if v[1] is not None]
            self._first_start = min(starts, default=None)
            self._last_end = max(
                (v[2] for v in self._counted.values() if v[1] is not None and v[2] is not None),
                default=None,
            )

    def summary(self, now: float) -> Summary:
        """What ``summarize(registry, now)`` gives."""
        self._check()
        work = self._ended_work
        last = self._last_end
        for record in self._running:
            if record.started is not None:
                work += max(now - record.started, 0.0)
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

"""The summary of a registry, kept up to date change by change.

:func:`~ipytasks.overview.render.summarize` walks every task; a live dashboard
refreshes twice a second, so over a long session that walk would dominate its
cost. :class:`RunningTotals` gives the same :class:`Summary` (and the run's time
zero) from what changed: O(log n) per change, O(running tasks) per refresh.
"""

from __future__ import annotations

import heapq
import itertools
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
        # Heaps with lazy deletion: an entry counts while its record is counted with
        # the same value.
        self._starts: list[tuple[float, int, TaskRecord]] = []
        self._ends: list[tuple[float, int, TaskRecord]] = []
        self._submits: list[tuple[float, int, TaskRecord]] = []
        self._order = itertools.count()
        for record in list(self._registry.values()):
            self._add(record)

    def update(self, record: TaskRecord) -> None:
        """Account for ``record``'s new state (or for it replacing its name's old record)."""
        old = self._by_name.get(record.name)
        if old is not None and old is not record:
            self._remove(old)
        before = self._counted.get(record)
        if before is not None:
            self._remove(record)
        self._add(record, before)

    def _add(
        self,
        record: TaskRecord,
        before: tuple[TaskState, float | None, float | None] | None = None,
    ) -> None:
        state, started, ended = record.state, record.started, record.ended
        self._counted[record] = (state, started, ended)
        self._by_name[record.name] = record
        self._counts[state] += 1
        # Heap entries of values that did not change are still valid: push only news.
        if before is None:
            heapq.heappush(self._submits, (record.submitted, next(self._order), record))
        if started is not None:
            if before is None or before[1] != started:
                heapq.heappush(self._starts, (started, next(self._order), record))
            if ended is not None:
                self._ended_work += max(ended - started, 0.0)
                if before is None or before[2] != ended:
                    heapq.heappush(self._ends, (-ended, next(self._order), record))
            else:
                self._running.add(record)

    def _remove(self, record: TaskRecord) -> None:
        state, started, ended = self._counted.pop(record)
        if self._by_name.get(record.name) is record:
            del self._by_name[record.name]
        self._counts[state] -= 1
        self._running.discard(record)
        if started is not None and ended is not None:
            self._ended_work -= max(ended - started, 0.0)

    def _valid_top(self, heap: list[tuple[float, int, TaskRecord]], field: int) -> float | None:
        while heap:
            value, _, record = heap[0]
            counted = self._counted.get(record)
            if counted is not None:
                current = record.submitted if field < 0 else counted[field]
                if current is not None and (current == value or current == -value):
                    return value
            heapq.heappop(heap)
        return None

    def _check(self) -> None:
        if len(self._counted) != len(self._registry):
            self._rebuild()

    def summary(self, now: float) -> Summary:
        """What ``summarize(registry, now)`` gives."""
        self._check()
        work = self._ended_work
        last = self._valid_top(self._ends, 2)
        if last is not None:
            last = -last
        for record in self._running:
            if record.started is not None:
                work += max(now - record.started, 0.0)
                last = now if last is None or now > last else last
        first = self._valid_top(self._starts, 1)
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
        submitted = self._valid_top(self._submits, -1)
        started = self._valid_top(self._starts, 1)
        if submitted is None:
            return started
        return submitted if started is None or submitted <= started else started

"""Every task's numbers, kept up to date change by change: the live dashboard's model.

A live dashboard refreshes twice a second. Walking every task at each refresh
would make its cost grow with the session's history, and reading the same
records twice (once for the summary, once for the timeline) would double it.
:class:`TaskColumns` reads each record the scheduler reports changed once, with
the interpreter's built-ins (``map``, ``Counter``) rather than a Python step per
field, and keeps from it both:

- the summary: counts per state, work done, the run's first start and last end
  (what :func:`~ipytasks.overview.render.summarize` would give, in O(changed));
- the timeline view's data: task names and five float64 columns per task, in
  registry order (what ``dashboard.js`` draws).
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import islice, repeat
from operator import attrgetter, sub
from typing import TYPE_CHECKING, Any, cast

from ..records import ACTIVE, TaskState
from .render import Summary, time_left

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = ("STATE_CODES", "TaskColumns")

#: A state's number in the timeline's rows: its place in ``TaskState``.
STATE_CODES = {state: float(i) for i, state in enumerate(TaskState)}
_ACTIVE_CODES = frozenset(STATE_CODES[s] for s in ACTIVE)
_NAME = attrgetter("name")
_SUBMITTED = attrgetter("submitted")
_STARTED = attrgetter("started")
_ENDED = attrgetter("ended")
_STATE = attrgetter("state")
_MODE = attrgetter("mode")
_NONE_AS_NAN = {None: math.nan}.get  # get(t, t): NaN for None, else t


def _nan_for_none(values: list[float | None]) -> list[float]:
    # dict.get(t, t): its key type (None) is not what it is asked about (any float)
    return list(map(_NONE_AS_NAN, values, values))  # type: ignore[arg-type]


def _numbered(values: list[Any], numbers: Mapping[Any, float]
              ) -> tuple[list[float], Mapping[float, int]]:
    """Each value's number, and how many times each number occurs (the common case of
    a batch of tasks all in one state, or one mode, is one list multiplication)."""
    if len(set(values)) == 1:
        number = numbers[values[0]]
        return [number] * len(values), {number: len(values)}
    numbered = list(map(numbers.__getitem__, values))
    return numbered, Counter(numbered)


def _into(column: array[float], values: list[float | None]) -> tuple[list[float], bool]:
    """Append ``values`` to ``column`` (NaN for ``None``); return them as appended, and
    whether none was ``None``."""
    try:
        column.fromlist(values)  # type: ignore[arg-type]
    except TypeError:  # a None: fromlist appended nothing
        filled = _nan_for_none(values)
        column.fromlist(filled)
        return filled, False
    return values, True  # type: ignore[return-value]


class TaskColumns:
    """The latest record of each name in ``registry``, as a summary and as columns.

    Call :meth:`update` with the records the scheduler reports changed (a dashboard
    does at each refresh); then :meth:`summary`, :meth:`run_start`, :meth:`names`,
    :meth:`rows` and :attr:`modes` describe the registry.

    - :meth:`names`: one task name per line, in registry (submission) order, as UTF-8;
    - :meth:`rows`: five columns of ``len(registry)`` little-endian float64 values:
      submitted, started, ended (epoch seconds, NaN while not yet), the state's
      number (:data:`STATE_CODES`), the mode's number (its place in :attr:`modes`).

    New names are appended: the registry only grows at its end. A record that reaches
    the registry without a report (a map's items, before they start) shows as a
    mismatch of size, a record that leaves it (a name submitted again, a clear) by
    the registry's count of removals; either rebuilds from scratch: rare, and O(tasks).
    """

    def __init__(self, registry: Mapping[str, TaskRecord]) -> None:
        self._registry = registry
        self._rebuild()

    def _rebuild(self) -> None:
        #: Each row's record; and the row of each record of the first ``len(_index)``
        #: rows, extended only when a record is looked up (see :meth:`_are_new`).
        self._records: list[TaskRecord] = []
        self._index: dict[TaskRecord, int] = {}
        self._removals = getattr(self._registry, "_removals", 0)
        self._names: list[str] = []
        self._joined: bytes | None = b""
        self._submitted = array("d")
        self._started = array("d")
        self._ended = array("d")
        self._state = array("d")
        self._mode = array("d")
        #: The run modes met so far; a mode's number is its place here.
        self.modes: list[str] = []
        self._mode_codes: dict[str, float] = {}
        #: Tasks per state number.
        self._counts: Counter[float] = Counter()
        self._ended_work = 0.0
        #: Rows of tasks that started and have not ended (their work runs up to now),
        #: with their start as seconds after ``_ref``, and the sum of those: the work of
        #: all of them at time ``t`` is ``len(_running) * (t - _ref) - _running_sum``.
        self._running: dict[int, float] = {}
        self._running_sum = 0.0
        self._ref: float | None = None
        self._first_submit: float | None = None
        self._first_start: float | None = None
        self._last_end: float | None = None
        #: How long each task that ended took (--map tasks count through their items):
        #: their mean is what a task with nothing to say of itself is expected to take.
        self._took: dict[TaskRecord, float] = {}
        self._took_sum = 0.0
        records = list(self._registry.values())
        self._append(records)
        self._track(records)

    # -- following changes -------------------------------------------------------------

    def update(self, records: Iterable[TaskRecord]) -> None:
        """Account for the new states of ``records`` (each given once)."""
        records = list(records)
        if not records:
            return
        if self._are_new(records):
            self._append(records)
        else:
            rows = list(map(self._indexed().get, records))
            if None not in rows:
                self._modify(records, cast("list[int]", rows))
            else:
                known = [(r, i) for r, i in zip(records, rows) if i is not None]
                if known:
                    self._modify(*zip(*known))
                self._append([r for r, i in zip(records, rows) if i is None])
        self._track(records)
        self._check()

    def _track(self, records: list[TaskRecord]) -> None:
        """Durations of the tasks among ``records`` that have ended (one step per record)."""
        took = self._took
        for r in records:
            start, end = r.started, r.ended
            if start is not None and end is not None and r.options.map is None:
                span = end - start
                self._took_sum += span - took.get(r, 0.0)
                took[r] = span

    def _are_new(self, records: list[TaskRecord]) -> bool:
        """Whether ``records`` are the registry's newest ones, in its order and none
        of them seen yet: the common case (the tasks a cell submitted since the last
        update), told without a lookup per record."""
        registry = self._registry
        count = len(records)
        if len(registry) != len(self._records) + count:
            return False
        try:
            # a dict's values are reversible, a Mapping's need not be (hence the except)
            newest = list(islice(reversed(registry.values()), count))  # type: ignore[call-overload]
        except TypeError:  # a mapping whose values cannot be read backwards
            return False
        newest.reverse()
        return newest == records  # records compare by identity

    def _indexed(self) -> dict[TaskRecord, int]:
        """Each record's row, for every row."""
        index = self._index
        if len(index) < len(self._records):
            start = len(index)
            index.update(zip(self._records[start:], range(start, len(self._records))))
        return index

    def _check(self) -> None:
        registry = self._registry
        if (len(self._records) != len(registry)
                or getattr(registry, "_removals", 0) != self._removals):
            self._rebuild()

    def _append(self, records: list[TaskRecord]) -> None:
        if not records:
            return
        first = len(self._names)
        self._records.extend(records)
        self._names.extend(map(_NAME, records))
        self._joined = None
        submitted = list(map(_SUBMITTED, records))
        started = list(map(_STARTED, records))
        ended = list(map(_ENDED, records))
        states, counts = _numbered(list(map(_STATE, records)), STATE_CODES)
        modes = list(map(_MODE, records))
        codes = self._mode_codes
        for mode in set(modes) - codes.keys():
            codes[mode] = float(len(self.modes))
            self.modes.append(mode)
        self._submitted.fromlist(submitted)
        started, complete = _into(self._started, started)
        ended, ended_complete = _into(self._ended, ended)
        self._state.fromlist(states)
        self._mode.fromlist(_numbered(modes, codes)[0])

        self._counts.update(counts)
        low = min(submitted)
        if self._first_submit is None or low < self._first_submit:
            self._first_submit = low
        self._account(range(first, first + len(records)), started, ended, states, None,
                      complete and ended_complete)

    def _modify(self, records: Iterable[TaskRecord], rows: Iterable[int]) -> None:
        records, rows = list(records), list(rows)
        started = list(map(_STARTED, records))
        ended = list(map(_ENDED, records))
        complete = None not in started and None not in ended
        if not complete:
            started, ended = _nan_for_none(started), _nan_for_none(ended)
        states, counts = _numbered(list(map(_STATE, records)), STATE_CODES)
        before = list(map(self._state.__getitem__, rows))
        started_column, ended_column, state_column = self._started, self._ended, self._state
        for i, start, end, state in zip(rows, started, ended, states):
            started_column[i] = start
            ended_column[i] = end
            state_column[i] = state
        self._counts.subtract(Counter(before))
        self._counts.update(counts)
        self._account(rows, started, ended, states, before, complete)

    def _account(self, rows: Iterable[int], started: list[float], ended: list[float],
                 states: list[float], before: list[float] | None, complete: bool) -> None:
        """Work and extremes of the tasks in ``rows``: their start, end (NaN: not yet;
        ``complete``: there is none) and state number now, and their state number at
        the last update (``before``; ``None``: they are new)."""
        # A first start never changes and an end is set once, so the extremes only
        # ever extend. (NaN compares false: max()/min() cannot be trusted with it.)
        if complete and (before is None or _ACTIVE_CODES.issuperset(before)):
            # Every task of the batch started and has now ended, none before.
            spans = list(map(sub, ended, started))
            work = sum(spans)
            self._add_ended(work if min(spans) >= 0 else sum(t for t in spans if t > 0),
                            min(started), max(ended))
            if before is not None:
                self._forget_running(rows)
            return
        if before is None:
            before = [None] * len(started)  # type: ignore[list-item]
        starts = [t for t in started if t == t]
        if not starts:
            return
        low = min(starts)
        if self._first_start is None or low < self._first_start:
            self._first_start = low
        if self._ref is None:
            self._ref = low
        ref = self._ref
        running = self._running
        rows = list(rows)
        begun = {i: t - ref for i, t, s in zip(rows, started, states)
                 if s in _ACTIVE_CODES and t == t and i not in running}
        if begun:
            self._running_sum += sum(begun.values())
            running.update(begun)
        # Ended now (not counted as ended before) after having started: their work is done.
        done = [(i, t, e) for i, b, s, t, e in zip(rows, before, states, started, ended)
                if s not in _ACTIVE_CODES and (b is None or b in _ACTIVE_CODES) and t == t]
        if done:
            rows_done, starts_done, ends = zip(*done)
            spans = list(map(sub, ends, starts_done))
            self._add_ended(sum(t for t in spans if t > 0), low, max(ends))
            self._forget_running(rows_done)

    def _add_ended(self, work: float, first_start: float, last_end: float) -> None:
        self._ended_work += work
        if self._first_start is None or first_start < self._first_start:
            self._first_start = first_start
        if self._ref is None:
            self._ref = self._first_start
        if self._last_end is None or last_end > self._last_end:
            self._last_end = last_end

    def _forget_running(self, rows: Iterable[int]) -> None:
        running = self._running
        if running:
            self._running_sum -= sum(map(running.pop, rows, repeat(0.0)))
            if not running:
                self._running_sum = 0.0  # no rounding left behind

    # -- what the dashboard shows -----------------------------------------------------

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
        counts = self._counts
        took = self._took
        records = self._records
        return Summary(
            counts={s: n for s, code in STATE_CODES.items() if (n := counts[code])},
            total=len(self._names),
            wall=wall,
            work=work,
            left=time_left([records[i] for i in self._running if records[i].ended is None],
                           int(counts[STATE_CODES[TaskState.PENDING]]),
                           self._took_sum / len(took) if took else None, now),
        )

    def run_start(self) -> float | None:
        """What ``run_start(records)`` gives: the first submission (or start, if earlier)."""
        self._check()
        submitted, started = self._first_submit, self._first_start
        if submitted is None:
            return started
        return submitted if started is None or submitted <= started else started

    def names(self) -> bytes:
        """One task name per line, in registry order, as UTF-8."""
        if self._joined is None:
            self._joined = "\n".join(self._names).encode()
        return self._joined

    def rows(self) -> bytes:
        """The five columns, one after the other, as little-endian float64."""
        columns: tuple[array[float], ...] = (
            self._submitted, self._started, self._ended, self._state, self._mode
        )
        if sys.byteorder == "big":
            swapped = []
            for column in columns:
                column = array("d", column)
                column.byteswap()
                swapped.append(column)
            columns = tuple(swapped)
        return b"".join(column.tobytes() for column in columns)

"""The dashboard's model: its summary equals a full summary, and its columns equal the
records, after any sequence of changes reported in any batches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipytasks.overview._common import run_start
from ipytasks.overview.columns import TaskColumns
from ipytasks.overview.render import Summary, summarize
from ipytasks.overview.testing import timeline_tasks
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry, TaskState

# Steps: submit a new record under a name (replacing a finished one), start it, put it
# back to pending for a retry (it keeps its first start), end it; or hand the changes
# so far to the model (a refresh).
_step = st.tuples(st.sampled_from(["submit", "start", "retry", "end", "refresh"]),
                  st.integers(0, 4), st.integers(0, 50))


class CountedColumns(TaskColumns):
    """Counts its rebuilds from scratch: correct, but meant only for records that left."""

    rebuilds = 0

    def _rebuild(self) -> None:
        self.rebuilds += 1
        super()._rebuild()


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=60), now=st.integers(50, 120))
def test_the_model_matches_the_records(steps: list[tuple[str, int, int]], now: int) -> None:
    """Counts, work, wall, time zero, names and columns agree with the records at every
    refresh, whichever changes each batch holds (new, changed, ended, reported twice);
    and only a record leaving (a name submitted again) makes it start over."""
    registry = TaskRegistry()
    columns = CountedColumns(registry)
    rebuilds, removals = 1, 0
    clock = 0.0
    batch: dict[TaskRecord, None] = {}
    for kind, index, dt in [*steps, ("refresh", 0, 0)]:
        clock += dt / 10
        name = f"t{index}"
        record = registry.get(name)
        if kind == "refresh":
            columns.update(batch)
            batch.clear()
            _assert_matches(columns, registry, clock + now)
            rebuilds += registry._removals != removals
            removals = registry._removals
            assert columns.rebuilds == rebuilds
            continue
        if kind == "submit" and (record is None or record.state.ended):
            record = TaskRecord(name=name, source="", options=TaskOptions(), submitted=clock,
                                mode="thread" if index % 2 else "async")
            registry._add(record)
        elif kind == "start" and record is not None and record.state is TaskState.PENDING:
            record.state = TaskState.RUNNING
            if record.started is None:
                record.started = clock
        elif kind == "retry" and record is not None and record.state is TaskState.RUNNING:
            record.state = TaskState.PENDING
        elif kind == "end" and record is not None:
            if not record.state.ended:
                record.state, record.ended = TaskState.DONE, clock
                if record.started is None:
                    record.state = TaskState.SKIPPED
            # else: an ended task reported again (its parent's "k of n done", say)
        else:
            continue
        batch[record] = None


def test_a_burst_of_ended_tasks_in_one_batch() -> None:
    """The fast path: a batch of new tasks that all ran and ended (a clock set back
    counts as no work, as in summarize)."""
    registry = TaskRegistry()
    columns = CountedColumns(registry)
    records = [TaskRecord(name=f"t{i}", source="", options=TaskOptions(), submitted=float(i),
                          started=i + 1.0, ended=i + (0.5 if i == 3 else 3.0),
                          state=TaskState.DONE) for i in range(10)]
    for r in records:
        registry._add(r)
    columns.update(records)
    _assert_matches(columns, registry, 100.0)
    columns.update(records[:2])  # reported again: counted once
    _assert_matches(columns, registry, 100.0)
    assert columns.rebuilds == 1  # the one of its construction


def test_a_retried_task_counts_its_work_once() -> None:
    """A running task put back to pending for a retry (it keeps its start) and reported
    again is still one running task."""
    registry = TaskRegistry()
    columns = TaskColumns(registry)
    first, retried = (TaskRecord(name=n, source="", options=TaskOptions(), submitted=0.0)
                      for n in "ab")
    for r in (first, retried):
        registry._add(r)
    columns.update([first, retried])
    first.state, first.started = TaskState.RUNNING, 1.0
    retried.state, retried.started = TaskState.RUNNING, 2.0
    columns.update([first, retried])
    retried.state = TaskState.PENDING
    columns.update([retried])
    _assert_matches(columns, registry, 10.0)
    retried.state = TaskState.RUNNING
    columns.update([retried])
    _assert_matches(columns, registry, 11.0)


def test_unreported_resubmitted_and_cleared_records_are_caught() -> None:
    """A record added without a report (a map's item before it starts), a name submitted
    again (its record takes the old one's place) and a cleared registry rebuild the model."""
    registry = TaskRegistry()
    columns = TaskColumns(registry)
    registry._add(TaskRecord(name="quiet", source="", options=TaskOptions(), submitted=1.0))
    _assert_matches(columns, registry, 2.0)
    first = TaskRecord(name="a", source="", options=TaskOptions(), submitted=2.0,
                       started=2.0, ended=3.0, state=TaskState.DONE)
    registry._add(first)
    columns.update([first])
    _assert_matches(columns, registry, 4.0)
    again = TaskRecord(name="quiet", source="", options=TaskOptions(), submitted=5.0,
                       mode="process")
    registry._add(again)
    columns.update([again])
    assert columns.names() == b"quiet\na"
    _assert_matches(columns, registry, 6.0)
    registry._clear()
    _assert_matches(columns, registry, 7.0)
    assert columns.names() == b""
    # A name submitted again while a record arrives unreported: the size still matches.
    b = TaskRecord(name="b", source="", options=TaskOptions(), submitted=8.0)
    registry._add(b)
    columns.update([b])
    registry._add(TaskRecord(name="item", source="", options=TaskOptions(), submitted=9.0))
    b2 = TaskRecord(name="b", source="", options=TaskOptions(), submitted=9.0)
    registry._add(b2)
    columns.update([b2])
    assert columns.names() == b"b\nitem"
    _assert_matches(columns, registry, 10.0)
    # A changed task and a new one reported, as many arrived as were reported, but one
    # unreported: the batch is not the registry's newest.
    b2.state, b2.started = TaskState.RUNNING, 10.0
    registry._add(TaskRecord(name="item2", source="", options=TaskOptions(), submitted=11.0))
    c = TaskRecord(name="c", source="", options=TaskOptions(), submitted=11.0)
    registry._add(c)
    columns.update([b2, c])
    assert columns.names() == b"b\nitem\nitem2\nc"
    _assert_matches(columns, registry, 12.0)


def _assert_matches(columns: TaskColumns, registry: TaskRegistry, now: float) -> None:
    _assert_same(columns.summary(now), summarize(registry, now))
    assert columns.run_start() == run_start(list(registry.values()))
    assert timeline_tasks(columns.names(), columns.rows()) == {
        r.name: (str(r.state), r.submitted, r.started, r.ended) for r in registry.values()
    }
    assert list(timeline_tasks(columns.names(), columns.rows())) == list(registry)
    modes = [columns.modes[int(code)] for code in _mode_codes(columns)]
    assert modes == [r.mode for r in registry.values()]


def _mode_codes(columns: TaskColumns) -> list[float]:
    import struct

    data = columns.rows()
    n = len(data) // 40
    return list(struct.unpack(f"<{n}d", data[32 * n:]))


def _assert_same(running: Summary, full: Summary) -> None:
    # Sums of durations may differ in the last bits: they are added in another order.
    assert (running.counts, running.total) == (full.counts, full.total)
    assert running.work == pytest.approx(full.work, rel=1e-12, abs=1e-9)
    assert (running.wall is None) == (full.wall is None)
    if full.wall is not None:
        assert running.wall == pytest.approx(full.wall, rel=1e-12, abs=1e-9)

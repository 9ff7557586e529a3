"""The dashboard's running totals equal a full summary after any sequence of changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipytasks.overview._common import run_start
from ipytasks.overview.render import Summary, summarize
from ipytasks.overview.totals import RunningTotals
from ipytasks.tasks import TaskOptions, TaskRecord, TaskRegistry, TaskState

# Steps: submit a new record under a name (replacing a finished one), start it, put it
# back to pending for a retry (it keeps its first start), end it.
_step = st.tuples(st.sampled_from(["submit", "start", "retry", "end"]), st.integers(0, 4),
                  st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_step, max_size=60), now=st.integers(50, 120))
def test_running_totals_match_a_full_summary(steps: list[tuple[str, int, int]], now: int) -> None:
    """Counts, work, wall and time zero agree with summarize()/run_start() at every step."""
    registry = TaskRegistry()
    totals = RunningTotals(registry)
    clock = 0.0
    for kind, index, dt in steps:
        clock += dt / 10
        name = f"t{index}"
        record = registry.get(name)
        if kind == "submit" and (record is None or record.state.ended):
            record = TaskRecord(name=name, source="", options=TaskOptions(), submitted=clock)
            registry._add(record)
        elif kind == "start" and record is not None and record.state is TaskState.PENDING:
            record.state = TaskState.RUNNING
            if record.started is None:
                record.started = clock
        elif kind == "retry" and record is not None and record.state is TaskState.RUNNING:
            record.state = TaskState.PENDING
        elif kind == "end" and record is not None and not record.state.ended:
            record.state, record.ended = TaskState.DONE, clock
            if record.started is None:
                record.state = TaskState.SKIPPED
        else:
            continue
        totals.update([record])
        at = clock + now
        _assert_same(totals.summary(at), summarize(registry, at))
        assert totals.run_start() == run_start(list(registry.values()))


def test_unreported_records_are_caught() -> None:
    """A record added without a report (a map's item before it starts) triggers a rebuild."""
    registry = TaskRegistry()
    totals = RunningTotals(registry)
    registry._add(TaskRecord(name="quiet", source="", options=TaskOptions(), submitted=1.0))
    _assert_same(totals.summary(2.0), summarize(registry, 2.0))


def _assert_same(running: Summary, full: Summary) -> None:
    # Sums of durations may differ in the last bits: they are added in another order.
    assert (running.counts, running.total) == (full.counts, full.total)
    assert running.work == pytest.approx(full.work, rel=1e-12, abs=1e-9)
    assert (running.wall is None) == (full.wall is None)
    if full.wall is not None:
        assert running.wall == pytest.approx(full.wall, rel=1e-12, abs=1e-9)

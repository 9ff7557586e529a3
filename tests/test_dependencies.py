"""Inferred dependencies and conflicts: what a new task waits for, and why.

The last test is a property: random straight-line programs, split into cells that
all run as parallel tasks (in threads, with random pauses), end with the same
names as running the cells one by one.
"""

from __future__ import annotations

import random
import time
import warnings
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GatedMode
from ipytasks.errors import TaskConflictWarning
from ipytasks.records import TaskOptions, TaskRegistry
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def sched(scheduler: Scheduler, gated: GatedMode) -> Scheduler:
    scheduler.gated = gated
    return scheduler


def gated(**kwargs: Any) -> TaskOptions:
    return TaskOptions(mode="gated", **kwargs)


def release(sched: Scheduler, *names: str) -> None:
    for name in names:
        sched.gated.gate(name).set()


async def test_reader_waits_for_the_binder(sched: Scheduler) -> None:
    """A cell that reads a name an unfinished task binds waits for it, saying why."""
    load = sched.submit("df = [1, 2]", "load", gated())
    clean = sched.submit("rows = len(df)", "clean", gated())
    await anyio.wait_all_tasks_blocked()
    assert sched.gated.started == ["load"]
    assert clean.waits_for == ("load",) and clean.reasons == {"load": "reads df"}
    release(sched, "load", "clean")
    with anyio.fail_after(5):
        await sched.wait([load, clean])
    assert sched.shell.user_ns["rows"] == 2


async def test_own_binding_is_no_dependency(sched: Scheduler) -> None:
    """A name the cell binds before reading it is its own."""
    sched.submit("x = 1", "a", gated())
    b = sched.submit("x = 2\ny = x + 1", "b", gated(infer=True))
    assert b.reasons == {"a": "rebinds x"}  # ordered for the final value of x, not for reading it
    c = sched.submit("z = 5\nw = z", "c", gated())
    assert c.waits_for == ()


async def test_pure_stores_run_together_reader_waits_for_all(sched: Scheduler) -> None:
    """Cells that only store into a dict run at once; a cell reading it waits for them all."""
    sched.shell.user_ns["results"] = {}
    a = sched.submit("results['a'] = 1", "a", gated())
    b = sched.submit("results['b'] = 2", "b", gated())
    report = sched.submit("total = sum(results.values())", "report", gated())
    await anyio.wait_all_tasks_blocked()
    assert sched.gated.started == ["a", "b"]
    assert set(report.waits_for) == {"a", "b"} and report.reasons["a"] == "reads results"
    release(sched, "a", "b", "report")
    with anyio.fail_after(5):
        await sched.wait([a, b, report])
    assert sched.shell.user_ns["total"] == 3


async def test_in_place_change_orders_against_readers(sched: Scheduler) -> None:
    """Changing df in place waits for a task that reads df; reading waits for the change."""
    sched.shell.user_ns["df"] = {}
    reader = sched.submit("n = len(df)", "reader", gated())
    writer = sched.submit("df['x'] = 1", "writer", gated())
    later = sched.submit("m = len(df)", "later", gated())
    assert writer.reasons == {"reader": "changes df"}
    assert later.reasons == {"writer": "reads df"}
    release(sched, "reader", "writer", "later")
    with anyio.fail_after(5):
        await sched.wait([reader, writer, later])
    assert (sched.shell.user_ns["n"], sched.shell.user_ns["m"]) == (0, 1)


async def test_same_import_is_no_reason_to_wait(sched: Scheduler) -> None:
    """Two cells importing the same module run together."""
    sched.submit("import json", "a", gated())
    b = sched.submit("import json\nj = 1", "b", gated())
    assert b.waits_for == ()


async def test_unknown_names_wait_for_everything(sched: Scheduler) -> None:
    """A cell using exec() waits for every unfinished task, and later cells wait for it."""
    sched.submit("a = 1", "a", gated())
    ex = sched.submit("exec('b = 2')", "ex", gated())
    later = sched.submit("c = 3", "later", gated())
    assert ex.waits_for == ("a",) and "exec()" in ex.reasons["a"]
    assert later.waits_for == ("ex",) and "cannot be known" in later.reasons["ex"]


async def test_no_infer_warns_and_strict_refuses(sched: Scheduler) -> None:
    """--no-infer runs at once and warns of the shared name; --strict makes it an error."""
    sched.submit("x = 1", "a", gated())
    with pytest.warns(
        TaskConflictWarning, match=r"task 'b' rebinds x while task 'a' is (pending|running)"
    ):
        b = sched.submit("x = 2", "b", gated(infer=False))
    assert b.waits_for == ()
    with pytest.raises(ValueError, match=r"conflict \(--strict\).*--after a,b\)"):
        sched.submit("y = x", "c", gated(infer=False, strict=True))
    assert "c" not in sched.tasks


async def test_no_conflict_without_shared_names(sched: Scheduler) -> None:
    """--no-infer on a cell that shares nothing says nothing."""
    sched.submit("x = 1", "a", gated())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.submit("y = 2", "b", gated(infer=False))


async def test_map_waits_for_what_its_expression_reads(sched: Scheduler) -> None:
    """--map EXPR is evaluated once the task binding its names has ended."""
    make = sched.submit("urls = ['a', 'b']", "make", gated())
    fetch = sched.submit("u.upper()", "fetch", TaskOptions(mode="async", map=("u", "urls")))
    assert fetch.reasons == {"make": "reads urls"}
    release(sched, "make")
    with anyio.fail_after(5):
        await sched.wait([make, fetch])
    assert fetch.result == ["A", "B"]


async def test_inferred_cycle_is_impossible(sched: Scheduler) -> None:
    """Edges only point at tasks that exist already, so a new task cannot close a cycle."""
    sched.submit("x = 1", "a", gated())
    b = sched.submit("y = x", "b", gated(after=("a",)))
    assert b.reasons == {"a": "after; reads x"}


# -- the property -------------------------------------------------------------------------

NAMES = ["a", "b", "c"]
_expr = st.one_of(
    st.integers(-3, 9).map(str),
    st.sampled_from(NAMES),
    st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(["+", "-", "*"]),
        st.sampled_from(NAMES + ["1", "2"]),
    ).map(" ".join),
)
# Stores into d use a key of the cell's own (KEY is replaced per cell): two cells storing
# into one container run together by design, so only distinct keys have one in-order value.
_statement = st.one_of(
    st.tuples(st.sampled_from(NAMES), _expr).map(lambda t: f"{t[0]} = {t[1]}"),
    st.tuples(st.sampled_from(NAMES), st.sampled_from(["+=", "-="]), _expr).map(" ".join),
    _expr.map(lambda e: f"d[KEY] = {e}"),
    st.tuples(st.sampled_from(NAMES), _expr).map(lambda t: f"{t[0]} = len(d) + {t[1]}"),
)
_cell = st.lists(_statement, min_size=1, max_size=3).map(
    lambda lines: "_pause()\n" + "\n".join(lines)
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cells=st.lists(_cell, min_size=2, max_size=7))
def test_parallel_cells_give_the_in_order_values(shell: Any, cells: list[str]) -> None:
    """Every cell %%parallel (threads, random pauses) ends with the in-order namespace."""
    cells = [code.replace("KEY", repr(f"k{i}")) for i, code in enumerate(cells)]
    start = "a = 1\nb = 2\nc = 3\nd = {}"
    expected: dict[str, Any] = {"_pause": lambda: None}
    for code in [start, *cells]:
        exec(code, expected)  # noqa: S102

    shell.user_ns.clear()
    shell.user_ns["_pause"] = lambda: time.sleep(random.random() / 500)
    scheduler = Scheduler(shell, TaskRegistry())  # a loop of its own, in a thread
    try:
        records = [scheduler.submit(start, "start", TaskOptions(mode="thread"))]
        records += [
            scheduler.submit(code, f"cell{i}", TaskOptions(mode="thread"))
            for i, code in enumerate(cells)
        ]
        scheduler.run_blocking(scheduler.wait(records, timeout=20))
    finally:
        scheduler.close()
    got = {k: shell.user_ns[k] for k in ["a", "b", "c", "d"]}
    assert got == {k: expected[k] for k in ["a", "b", "c", "d"]}


async def test_a_run_of_binders_makes_a_chain_not_a_clique(sched: Scheduler) -> None:
    """Cells rebinding one name each wait only for the one before (which waits for its own),
    so a long run stays linear; a reader waits for the newest binder only."""
    records = [sched.submit(f"x = {i}", f"b{i}", gated()) for i in range(5)]
    assert [r.waits_for for r in records] == [(), ("b0",), ("b1",), ("b2",), ("b3",)]
    reader = sched.submit("y = x", "reader", gated())
    assert reader.waits_for == ("b4",)
    with pytest.warns(TaskConflictWarning):
        loose = sched.submit("x = 99", "loose", gated(infer=False))
    after_loose = sched.submit("z = x", "after_loose", gated())
    # The newest did not infer: it counts, and so does b4, which stands for those before it.
    assert set(after_loose.waits_for) == {"b4", "loose"}
    assert loose.waits_for == ()
    release(sched, *(r.name for r in records), "reader", "loose", "after_loose")
    with anyio.fail_after(5):
        await sched.wait([*records, reader, loose, after_loose])


async def test_throwaway_names_neither_order_nor_warn(sched: Scheduler) -> None:
    """Cells sharing only loop variables, except-as names or ``_`` run together, with
    --no-infer too without a warning; a reader of the loop variable waits for both."""
    first = sched.submit("for i in range(3):\n    pass\ntry:\n    1 / 0\nexcept ZeroDivisionError"
                         " as e:\n    _ = 1", "first", gated())
    second = sched.submit("for i in range(2):\n    pass\n_ = 2", "second", gated())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskConflictWarning)
        third = sched.submit("for i in 'ab':\n    pass", "third", gated(infer=False))
    reader = sched.submit("j = i", "reader", gated())
    assert first.waits_for == second.waits_for == third.waits_for == ()
    assert set(reader.waits_for) == {"first", "second", "third"}
    release(sched, "first", "second", "third", "reader")
    with anyio.fail_after(5):
        await sched.wait([first, second, third, reader])

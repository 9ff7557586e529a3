"""The scheduler: submission, order, modes, output, closing, following changes.

Task progress is driven by a gated mode whose bodies start only when the test
opens their gate, so order is asserted on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Any

import anyio
import pytest

from conftest import GatedMode
from ipytasks.errors import TaskFailed
from ipytasks.output import OutputCapture
from ipytasks.records import TaskOptions, TaskRegistry, TaskState
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def routed(ip: Any) -> Any:
    """Install ipytasks' output routing for the body of a test.

    Inside the test, not in a fixture: pytest puts its own sys.stdout back at the
    start of each test phase.
    """
    capture = OutputCapture(ip)
    capture.install()
    try:
        yield
    finally:
        capture.uninstall()


def opts(**kwargs: Any) -> TaskOptions:
    kwargs.setdefault("mode", "gated")
    return TaskOptions(**kwargs)


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def test_parallel_tasks_start_together(scheduler: Scheduler, gated: GatedMode) -> None:
    """Two parallel tasks both start before either ends."""
    a = scheduler.submit("x = 1", "a", opts())
    b = scheduler.submit("y = 2", "b", opts())
    await settle()
    assert gated.started == ["a", "b"]
    assert a.state == "running" and b.state == "running"
    gated.gate("a").set()
    gated.gate("b").set()
    with anyio.fail_after(5):
        await scheduler.wait([a, b])
    assert scheduler.shell.user_ns["x"] == 1 and scheduler.shell.user_ns["y"] == 2


async def test_chain_runs_in_submission_order(scheduler: Scheduler, gated: GatedMode) -> None:
    """A sequential task starts only after the previous task of its chain ended."""
    a = scheduler.submit("order = ['a']", "a", opts(chain="main"))
    b = scheduler.submit("order.append('b')", "b", opts(chain="main"))
    other = scheduler.submit("z = 0", "other", opts(chain="side"))
    await settle()
    assert gated.started == ["a", "other"]
    assert b.state == "pending" and b.waits_for == ("a",)
    assert b.reasons == {"a": "chain main; reads order"}
    gated.gate("a").set()
    await settle()
    assert gated.started == ["a", "other", "b"]
    gated.gate("b").set()
    gated.gate("other").set()
    with anyio.fail_after(5):
        await scheduler.wait([a, b, other])
    assert scheduler.shell.user_ns["order"] == ["a", "b"]


async def test_after_names_tasks_and_groups(scheduler: Scheduler, gated: GatedMode) -> None:
    """--after waits for a named task and for every task of a named group."""
    g1 = scheduler.submit("1", "g1", opts(group="fetch"))
    g2 = scheduler.submit("2", "g2", opts(group="fetch"))
    report = scheduler.submit("3", "report", opts(after=("fetch",)))
    await settle()
    assert report.state == "pending" and set(report.waits_for) == {"g1", "g2"}
    gated.gate("g1").set()
    await settle()
    assert report.state == "pending"
    gated.gate("g2").set()
    gated.gate("report").set()
    with anyio.fail_after(5):
        await scheduler.wait([g1, g2, report])
    assert report.result == 3


async def test_busy_name_is_refused_finished_name_replaced(
    scheduler: Scheduler, gated: GatedMode
) -> None:
    """A running NAME cannot be submitted again; a finished one is replaced, history kept."""
    first = scheduler.submit("1", "a", opts())
    await settle()
    with pytest.raises(ValueError, match="'a' is running"):
        scheduler.submit("2", "a", opts())
    gated.gate("a").set()
    with anyio.fail_after(5):
        await scheduler.wait([first])
    second = scheduler.submit("2", "a", opts())
    assert scheduler.tasks["a"] is second
    assert scheduler.tasks.history == [first, second]
    with anyio.fail_after(5):
        await scheduler.wait([second])
    assert second.result == 2


async def test_bad_after_creates_no_task(scheduler: Scheduler) -> None:
    """An unknown --after target or a task waiting for itself is refused; nothing is created."""
    with pytest.raises(ValueError, match="no task or group named 'nope'"):
        scheduler.submit("1", "a", TaskOptions(after=("nope",)))
    with pytest.raises(ValueError, match="cycle"):
        scheduler.submit("1", "a", TaskOptions(after=("a",)))
    with pytest.raises(SyntaxError):
        scheduler.submit("1 +", "a", TaskOptions())
    assert len(scheduler.tasks) == 0


async def test_auto_mode_picks_async_or_thread(scheduler: Scheduler) -> None:
    """auto runs a cell with top-level await on the loop and any other cell in a thread."""
    scheduler.shell.user_ns["asyncio"] = asyncio
    scheduler.shell.user_ns["threading"] = threading
    a = scheduler.submit(
        "await asyncio.sleep(0)\nthreading.current_thread().name", "a", TaskOptions()
    )
    t = scheduler.submit("threading.current_thread().name", "t", TaskOptions())
    with anyio.fail_after(5):
        await scheduler.wait([a, t])
    assert (a.mode, t.mode) == ("async", "thread")
    assert a.result == threading.current_thread().name
    assert t.result.startswith("ipytasks-thread")
    with pytest.raises(ValueError, match="top-level await"):
        scheduler.submit("await asyncio.sleep(0)", "x", TaskOptions(mode="thread"))


async def test_output_is_kept_per_task(
    capsys: pytest.CaptureFixture[str], scheduler: Scheduler
) -> None:
    """Prints of concurrent tasks (loop and thread) land in their own task's output only."""
    scheduler.shell.user_ns["asyncio"] = asyncio
    with routed(scheduler.shell):
        a = scheduler.submit(
            "for i in range(3):\n    print('a', i)\n    await asyncio.sleep(0)", "a", TaskOptions()
        )
        t = scheduler.submit(
            "import sys\nprint('t out')\nprint('t err', file=sys.stderr)", "t", TaskOptions()
        )
        with anyio.fail_after(5):
            await scheduler.wait([a, t])
    assert a.output == "a 0\na 1\na 2\n"
    assert t.output == "t out\nt err\n"
    assert [o["name"] for o in t.sink.notebook_outputs()] == ["stdout", "stderr"]
    captured = capsys.readouterr()
    assert "a 0" not in captured.out and "t out" not in captured.out
    print("outside any task")
    assert "outside any task" in capsys.readouterr().out


async def test_thread_body_is_stopped_at_next_instruction(scheduler: Scheduler) -> None:
    """Cancelling a busy thread body stops it; the pool thread is reused afterwards."""
    started = threading.Event()
    scheduler.shell.user_ns["started"] = started
    t = scheduler.submit("started.set()\nwhile True:\n    pass", "spin", TaskOptions(mode="thread"))
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(started.wait, 5)
        scheduler.cancel([t])
        await scheduler.wait([t])
    assert t.state == "cancelled"
    again = scheduler.submit("'again'", "again", TaskOptions(mode="thread"))
    with anyio.fail_after(5):
        await scheduler.wait([again])
    assert again.result == "again"


async def test_thread_body_begins_at_registration(scheduler: Scheduler) -> None:
    """A thread task that waits for nothing is in its pool thread before the loop turns
    again (no turn of the loop between submitting it and its body); one that waits for
    another task, or for its group's limit, begins on its own turn."""
    began = {name: threading.Event() for name in ("now", "after", "limited")}
    scheduler.shell.user_ns["began"] = began
    now = scheduler.submit("began['now'].set()", "now", TaskOptions(mode="thread"))
    assert now.state == "running"
    # Blocking the loop's thread here: only a body already in its pool thread can run.
    assert began["now"].wait(5)
    gate = threading.Event()
    scheduler.shell.user_ns["gate"] = gate
    first = scheduler.submit("gate.wait(10)", "first", TaskOptions(mode="thread"))
    after = scheduler.submit("began['after'].set()", "after",
                             TaskOptions(mode="thread", after=("first",)))
    limited = scheduler.submit("began['limited'].set()", "limited",
                               TaskOptions(mode="thread", group="g", limit=1))
    assert after.state == limited.state == "pending"
    assert not began["after"].wait(0.2) and not began["limited"].wait(0)
    gate.set()
    with anyio.fail_after(5):
        await scheduler.wait([now, first, after, limited])
    assert began["after"].is_set() and began["limited"].is_set()


async def test_thread_body_cancelled_before_the_loop_turns_is_stopped(
    scheduler: Scheduler,
) -> None:
    """Cancelled in the turn that submitted it, a body begun at registration is stopped
    (it ran, and stops at its next instruction) and the task ends cancelled."""
    started, stopped = threading.Event(), threading.Event()
    scheduler.shell.user_ns.update(started=started, stopped=stopped)
    t = scheduler.submit(
        "try:\n    started.set()\n    while True:\n        pass\nfinally:\n    stopped.set()",
        "spin", TaskOptions(mode="thread"))
    assert started.wait(5)
    scheduler.cancel([t])
    with anyio.fail_after(5):
        await scheduler.wait([t])
        await anyio.to_thread.run_sync(stopped.wait, 5)
    assert t.state == "cancelled"
    assert stopped.is_set()


async def test_blocked_thread_says_it_is_stuck(scheduler: Scheduler) -> None:
    """A body stuck in a C call when cancelled ends cancelled, and its output says so."""
    started = threading.Event()
    release = threading.Event()
    scheduler.shell.user_ns.update(started=started, release=release)
    t = scheduler.submit("started.set()\nrelease.wait(10)", "stuck", TaskOptions(mode="thread"))
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(started.wait, 5)
        scheduler.cancel([t])
        await scheduler.wait([t])
        assert t.state == "cancelled"
        while "cannot interrupt" not in t.output:
            await asyncio.sleep(0.05)
    release.set()


async def test_close_cancels_unfinished(scheduler: Scheduler, gated: GatedMode) -> None:
    """close() marks every unfinished task cancelled at once."""
    a = scheduler.submit("1", "a", opts())
    b = scheduler.submit("2", "b", opts(after=("a",)))
    await settle()
    closed = scheduler.close()
    assert closed == [a, b]
    assert a.state == "cancelled" and b.state == "cancelled"
    with pytest.raises(RuntimeError, match="unloaded"):
        scheduler.submit("3", "c", opts())


def test_registry_iterates_in_submission_order() -> None:
    """Iterating the registry yields names in the order they were first submitted; a name
    submitted again (a retry, a fixed cell) keeps its place."""
    from ipytasks.records import TaskRecord

    reg = TaskRegistry()
    for name in ("a", "b", "a"):
        reg._add(TaskRecord(name=name, source="", options=TaskOptions()))
    assert list(reg) == ["a", "b"]
    assert reg["a"] is reg.history[-1]
    assert len(reg.history) == 3
    assert TaskState.DONE == "done"
    assert sys.version_info >= (3, 11)


async def test_fixed_cell_keeps_its_place_in_chain(scheduler: Scheduler, gated: GatedMode) -> None:
    """A name submitted again in its chain runs after its old predecessor, not the failed tail."""
    for name in ("load", "parse", "save"):
        gated.gate(name).set()
    load = scheduler.submit("raw = ['1', 'x']", "load", opts(chain="etl"))
    parse = scheduler.submit("nums = [int(v) for v in raw]", "parse", opts(chain="etl"))
    save = scheduler.submit("total = sum(nums)", "save", opts(chain="etl"))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([load, parse, save])
    assert (parse.state, save.state) == ("failed", "skipped")
    parse2 = scheduler.submit(
        "nums = [int(v) for v in raw if v.isdigit()]", "parse", opts(chain="etl")
    )
    save2 = scheduler.submit("total = sum(nums)", "save", opts(chain="etl"))
    assert parse2.upstream == (load,) and save2.upstream == (parse2,)
    with anyio.fail_after(5):
        await scheduler.wait([parse2, save2])
    assert scheduler.shell.user_ns["total"] == 1




async def test_a_change_feed_wakes_once_until_taken_and_when_all_have_ended(
    scheduler: Scheduler, gated: GatedMode
) -> None:
    """100 tasks submitted together wake a follower once; it takes each record once.
    The end of the last task wakes it as idle before ``wait`` returns."""
    wakes: list[bool] = []
    feed = scheduler.subscribe(wakes.append)
    records = [scheduler.submit(f"x{i} = {i}", f"t{i}", opts()) for i in range(100)]
    await settle()
    assert wakes == [False]
    assert feed.take() == records  # submitted and started: each once, in order
    assert feed.take() == []
    for i in range(99):
        gated.gate(f"t{i}").set()
    with anyio.fail_after(5):
        await scheduler.wait(records[:99])
    assert wakes == [False, False]
    gated.gate("t99").set()
    with anyio.fail_after(5):
        await scheduler.wait(records)
        idle_at_return = wakes[-1]
    assert idle_at_return is True
    assert feed.take() == records
    scheduler.unsubscribe(feed)
    scheduler.submit("y = 1", "late", opts())
    assert feed.take() == [] and wakes == [False, False, True]


async def test_graph_has_every_edge_with_its_kind_and_names(
    scheduler: Scheduler, gated: GatedMode
) -> None:
    """The scheduler's graph: chains, --after (to a group's members) and inferred edges,
    each inferred one with the names that cause it; a --map task is one node with its
    item count, known at submission when it waits for nothing; an edge caused both ways
    keeps both kinds."""
    sched = scheduler
    sched.submit("rows = [1, 2]\ndf = 0", "load", opts())
    sched.submit("n = len(rows)\ndf += n", "count", opts())
    sched.submit("a = 1", "first", opts(chain="etl"))
    sched.submit("b = 2", "second", opts(chain="etl"))
    sched.submit("c = 3", "g1", opts(group="stats"))
    sched.submit("d = 4", "g2", opts(group="stats"))
    sched.submit("e = rows", "both", opts(after=("g1", "load")))
    calls = sched.submit("u", "calls", TaskOptions(mode="async", map=("u", "[1, 2, 3]"),
                                                   after=("stats",)))
    now = sched.submit("v", "now", TaskOptions(mode="async", map=("v", "'ab'")))
    graph = sched.graph()
    assert [n.name for n in graph.nodes] == [
        "load", "count", "first", "second", "g1", "g2", "both", "calls", "now"]
    nodes = {n.name: n for n in graph.nodes}
    assert nodes["calls"].items is None and nodes["calls"].state == "pending"  # not known yet
    assert nodes["now"].items == 2 and nodes["now"].state == "pending"  # known at submission
    edges = {(e.source, e.target): (e.kinds, e.names) for e in graph.edges}
    assert edges == {
        ("load", "count"): (("data",), ("df", "rows")),
        ("first", "second"): (("chain",), ()),
        ("g1", "both"): (("after",), ()),
        ("load", "both"): (("after", "data"), ("rows",)),
        ("g1", "calls"): (("after",), ()),
        ("g2", "calls"): (("after",), ()),
    }
    (why,) = [e.why for e in graph.edges if e.target == "count"]
    assert why == sched.tasks["count"].reasons["load"]
    for name in ("load", "count", "first", "second", "g1", "g2", "both"):
        gated.gate(name).set()
    with anyio.fail_after(5):
        await sched.wait([calls, now])
    after = sched.graph()
    (node,) = [n for n in after.nodes if n.name == "calls"]
    assert (node.items, node.items_ended, node.state) == (3, 3, "done")
    assert "calls[0]" not in {n.name for n in after.nodes}
    assert after.edges == graph.edges

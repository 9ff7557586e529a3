"""Running one task: failure policy, cancel, timeouts, retries, limits, ``--map``, its end.

Tasks are submitted through a real ``Scheduler`` on the test's loop; progress is driven
by a gated mode whose bodies start only when the test opens their gate, so order is
asserted on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from conftest import GatedMode
from ipytasks.errors import TaskFailed
from ipytasks.records import TaskOptions
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio


def opts(**kwargs: Any) -> TaskOptions:
    kwargs.setdefault("mode", "gated")
    return TaskOptions(**kwargs)


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def test_failure_skips_dependents_under_stop(scheduler: Scheduler, gated: GatedMode) -> None:
    """A failed task makes its chain's later tasks skipped, transitively; they never start."""
    for name in ("a", "b", "c"):
        gated.gate(name).set()
    a = scheduler.submit("1/0", "a", opts(chain="main"))
    b = scheduler.submit("'b'", "b", opts(chain="main"))
    c = scheduler.submit("'c'", "c", opts(chain="main"))
    with anyio.fail_after(5), pytest.raises(TaskFailed) as info:
        await scheduler.wait([a, b, c])
    assert [a.state, b.state, c.state] == ["failed", "skipped", "skipped"]
    assert gated.started == ["a"]
    assert isinstance(a.error, ZeroDivisionError)
    assert "upstream 'a' failed" in str(b.error)
    message = str(info.value)
    assert "a (failed)" in message and "b (skipped)" in message and "ZeroDivisionError" in message


async def test_continue_runs_after_failure(scheduler: Scheduler, gated: GatedMode) -> None:
    """--on-error continue runs a task even though the one it waits for failed."""
    gated.gate("a").set()
    gated.gate("b").set()
    a = scheduler.submit("1/0", "a", opts(chain="main"))
    b = scheduler.submit("'ran'", "b", opts(chain="main", on_error="continue"))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([a, b])
    assert b.state == "done" and b.result == "ran"


async def test_cancel_pending_and_running(scheduler: Scheduler, gated: GatedMode) -> None:
    """Cancelling a running task stops it; a pending one never starts."""
    a = scheduler.submit("1", "a", opts(chain="main"))
    b = scheduler.submit("2", "b", opts(chain="main"))
    await settle()
    cancelled = scheduler.cancel([a, b])
    assert cancelled == [a, b]
    with anyio.fail_after(5):
        await scheduler.wait([a, b])  # cancelled tasks are not failures
    assert a.state == "cancelled"
    assert b.state == "cancelled"
    assert gated.started == ["a"]


async def test_cancel_in_the_turn_of_the_submission(
    scheduler: Scheduler, gated: GatedMode
) -> None:
    """A task cancelled before the loop ever ran it (submitted and cancelled in one go)
    ends as cancelled all the same, and its body never starts."""
    a = scheduler.submit("1", "a", opts())
    assert scheduler.cancel([a]) == [a]
    with anyio.fail_after(5):
        await scheduler.wait([a])
    assert a.state == "cancelled" and gated.started == []


async def test_timeout_ends_as_timed_out(scheduler: Scheduler) -> None:
    """--timeout stops an async body and ends it as timed_out, not failed."""
    scheduler.shell.user_ns["asyncio"] = asyncio
    t = scheduler.submit("await asyncio.sleep(30)", "t", TaskOptions(timeout=0.05))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([t])
    assert t.state == "timed_out"
    assert isinstance(t.error, TimeoutError)


async def test_own_timeout_error_is_a_failure(scheduler: Scheduler) -> None:
    """A body raising TimeoutError itself fails; only --timeout makes timed_out."""
    t = scheduler.submit("raise TimeoutError('mine')", "t", TaskOptions(mode="async", timeout=30))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([t])
    assert t.state == "failed"


@pytest.mark.parametrize("body", ["raise KeyboardInterrupt", "raise SystemExit(3)"])
@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_interrupt_and_exit_become_failures(
    scheduler: Scheduler, body: str, mode: str
) -> None:
    """KeyboardInterrupt and SystemExit from a body fail the task; the loop runs on."""
    t = scheduler.submit(body, "t", TaskOptions(mode=mode))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([t])
    assert t.state == "failed"
    assert isinstance(t.error, KeyboardInterrupt | SystemExit)
    after = scheduler.submit("'still fine'", "after", TaskOptions(mode=mode))
    with anyio.fail_after(5):
        await scheduler.wait([after])
    assert after.result == "still fine"


async def test_wait_timeout_leaves_tasks_running(scheduler: Scheduler, gated: GatedMode) -> None:
    """wait(timeout=) raises TimeoutError naming what is unfinished; the task runs on."""
    a = scheduler.submit("1", "a", opts())
    with pytest.raises(TimeoutError, match=r"a \(running\)"):
        await scheduler.wait([a], timeout=0.05)
    assert a.state == "running"
    gated.gate("a").set()
    with anyio.fail_after(5):
        await scheduler.wait([a])
    assert a.state == "done"


async def test_result_rich_repr_and_traceback_in_output(scheduler: Scheduler) -> None:
    """The result's repr and a failure's traceback (starting at the cell) land in the outputs."""
    ok = scheduler.submit("41 + 1", "ok", TaskOptions(mode="async"))
    bad = scheduler.submit("x = 1\nraise ValueError('boom')", "bad", TaskOptions(mode="async"))
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([ok, bad])
    assert ok.sink.outputs[-1]["data"]["text/plain"] == "42"
    error = bad.sink.outputs[-1]
    assert error["output_type"] == "error" and error["ename"] == "ValueError"
    text = bad.error_text()
    assert "line 2" in text and "ipytasks" not in text.split("\n")[1]


async def test_retries_run_again_until_success(scheduler: Scheduler) -> None:
    """--retries runs a failing body again; each attempt is counted and its failure kept."""
    scheduler.shell.user_ns["tries"] = []
    t = scheduler.submit(
        "tries.append(1)\n"
        "if len(tries) < 3:\n    raise ConnectionError(f'try {len(tries)}')\n"
        "len(tries)",
        "flaky", TaskOptions(mode="async", retries=3, retry_delay=0.01),
    )
    with anyio.fail_after(5):
        await scheduler.wait([t])
    assert (t.state, t.result, t.attempts) == ("done", 3, 3)
    assert [str(e) for e in t.failures] == ["try 1", "try 2"]
    assert "attempt 1/4 failed: ConnectionError: try 1; retry 2/4 in" in t.output


async def test_retries_exhausted_fail(scheduler: Scheduler) -> None:
    """After its last retry a task fails with the last error."""
    t = scheduler.submit(
        "raise OSError('down')", "down", TaskOptions(mode="async", retries=2, retry_delay=0)
    )
    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await scheduler.wait([t])
    assert (t.state, t.attempts, len(t.failures)) == ("failed", 3, 2)


async def test_limit_holds_tasks_of_the_group(scheduler: Scheduler, gated: GatedMode) -> None:
    """--limit 2: only two tasks of the group run; the others wait, saying why."""
    records = [scheduler.submit(str(i), f"l{i}", opts(group="api", limit=2)) for i in range(4)]
    await settle()
    assert gated.started == ["l0", "l1"]
    assert records[2].state == "pending" and "limit 2 in group api" in records[2].pending_reason
    gated.gate("l0").set()
    await settle()
    assert gated.started == ["l0", "l1", "l2"]
    for i in range(1, 4):
        gated.gate(f"l{i}").set()
    with anyio.fail_after(5):
        await scheduler.wait(records)
    assert [r.result for r in records] == [0, 1, 2, 3]


async def test_priority_orders_held_tasks(scheduler: Scheduler, gated: GatedMode) -> None:
    """Among tasks held by a limit, the higher --priority starts first."""
    first = scheduler.submit("1", "first", opts(group="g", limit=1))
    low = scheduler.submit("2", "low", opts(group="g"))
    high = scheduler.submit("3", "high", opts(group="g", priority=5))
    await settle()
    gated.gate("first").set()
    await settle()
    assert gated.started == ["first", "high"]
    gated.gate("high").set()
    gated.gate("low").set()
    with anyio.fail_after(5):
        await scheduler.wait([first, low, high])


async def test_map_fans_out_and_gathers_in_order(scheduler: Scheduler) -> None:
    """--map runs one task per item, each in its own scope; the result lists them in order."""
    scheduler.shell.user_ns.update(asyncio=asyncio, items=[3, 1, 2])
    m = scheduler.submit(
        "await asyncio.sleep(x / 100)\ny = x * 10\ny", "m", TaskOptions(map=("x", "items"))
    )
    with anyio.fail_after(5):
        await scheduler.wait([m])
    assert m.result == [30, 10, 20]
    assert [c.name for c in m.children] == ["m[0]", "m[1]", "m[2]"]
    assert scheduler.tasks["m[1]"].result == 10
    assert "y" not in scheduler.shell.user_ns and "x" not in scheduler.shell.user_ns


async def test_map_items_respect_the_limit(scheduler: Scheduler, gated: GatedMode) -> None:
    """--map with --limit: at most N items run at once (the map's name is their group)."""
    scheduler.shell.user_ns["n"] = 5
    m = scheduler.submit("x", "m", opts(map=("x", "range(n)"), limit=2))
    await settle()
    assert gated.started == ["m[0]", "m[1]"]
    for i in range(5):
        gated.gate(f"m[{i}]").set()
    with anyio.fail_after(5):
        await scheduler.wait([m])
    assert m.result == [0, 1, 2, 3, 4]


async def test_map_failure_and_bad_expression(scheduler: Scheduler) -> None:
    """A failing item fails the map, naming it; a bad EXPR is refused at submission."""
    m = scheduler.submit("10 // x", "m", TaskOptions(mode="async", map=("x", "[1, 0, 2]")))
    with anyio.fail_after(5), pytest.raises(TaskFailed, match=r"m\[1\] \(failed\)"):
        await scheduler.wait([m])
    assert m.state == "failed" and scheduler.tasks["m[2]"].result == 5
    with pytest.raises(ValueError, match="is not iterable"):
        scheduler.submit("1", "bad", TaskOptions(map=("x", "5")))
    with pytest.raises(ValueError, match="not an expression"):
        scheduler.submit("1", "bad", TaskOptions(map=("x", "[1,")))
    assert "bad" not in scheduler.tasks


async def test_cancelling_a_map_cancels_its_items(scheduler: Scheduler, gated: GatedMode) -> None:
    """%cancel on the map stops every unfinished item."""
    m = scheduler.submit("x", "m", opts(map=("x", "range(3)")))
    await settle()
    scheduler.cancel([m])
    with anyio.fail_after(5):
        await scheduler.wait([m])
    assert m.state == "cancelled"
    assert [c.state for c in m.children] == ["cancelled"] * 3



def test_retry_delays_double_up_to_the_cap() -> None:
    """The wait before a retry doubles from --retry-delay, jittered, and stops at
    RETRY_DELAY_MAX: --retries 20 never waits 2**19 s; a base above the cap is kept."""
    from ipytasks.running import RETRY_DELAY_MAX, RETRY_JITTER, retry_delay

    low, high = 1 - RETRY_JITTER, 1 + RETRY_JITTER
    for _ in range(200):
        assert low <= retry_delay(1, 1.0) <= high
        assert 4 * low <= retry_delay(3, 1.0) <= 4 * high
        assert RETRY_DELAY_MAX * low <= retry_delay(20, 1.0) <= RETRY_DELAY_MAX
        assert retry_delay(1000, 0.5) <= RETRY_DELAY_MAX
        assert 300 * low <= retry_delay(5, 300.0) <= 300.0
        assert retry_delay(4, 0.0) == 0.0

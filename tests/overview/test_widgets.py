"""The live dashboard widget: content, throttled updates, actions, lifetime.

Most tests use hand-made task records, a stand-in scheduler and virtual time
(``VirtualClock``): the dashboard refreshes only when the test advances the clock.
The last ones run real tasks through a real ``Scheduler``. Widget state is read
with ``get_state()`` and messages to the front end are counted at ``Widget._send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from ipytasks.changes import Changes
from ipytasks.errors import TaskFailed
from ipytasks.output import TaskOutput
from ipytasks.overview import open_dashboard, summarize, text_table
from ipytasks.overview.render import time_left
from ipytasks.overview.testing import VirtualClock, WidgetMessages, timeline_tasks
from ipytasks.overview.widgets import Dashboard
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry, TaskState
from ipytasks.reports import Progress
from ipytasks.scheduler import Scheduler

T0 = 1_700_000_000.0

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(name: str, state: TaskState = TaskState.PENDING, submitted: float = 0.0,
           started: float | None = None, ended: float | None = None,
           **options: Any) -> TaskRecord:
    return TaskRecord(
        name=name, source="pass", options=TaskOptions(**options), mode="thread", state=state,
        submitted=T0 + submitted,
        started=None if started is None else T0 + started,
        ended=None if ended is None else T0 + ended,
        attempts=1 if started is not None else 0,
    )


class FakeScheduler:
    """What the dashboard uses of a Scheduler; the test plays the scheduler's part.

    Following changes is the Scheduler's own code (its :class:`Changes`).
    """

    subscribe = Scheduler.subscribe
    unsubscribe = Scheduler.unsubscribe

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tasks = TaskRegistry()
        self.loop = loop
        self.changes = Changes()
        self.cancelled: list[tuple[str, int]] = []
        self.loop_thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def cancel(self, records: list[TaskRecord]) -> list[TaskRecord]:
        open_ = [r for r in records if not r.state.ended]
        self.cancelled += [(r.name, threading.get_ident()) for r in open_]
        return open_

    # the scheduler's side
    def add(self, rec: TaskRecord) -> TaskRecord:
        self.tasks._add(rec)
        self.changed(rec)
        return rec

    def changed(self, rec: TaskRecord) -> None:
        self.changes.changed(rec)
        if rec.state.ended and all(r.state.ended for r in self.tasks.values()):
            self.changes.idle()


class Board:
    """A fake scheduler, a virtual clock, and the dashboards opened on them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.clock = VirtualClock(start=T0)
        self.sched = FakeScheduler(loop)
        self.opened: list[Dashboard] = []

    def open(self, **options: Any) -> Dashboard:
        options.setdefault("retry", None)
        dash = open_dashboard(self.sched, self.sched.tasks, clock=self.clock.time,
                              wall=self.clock.time, call_later=self.clock.call_later, **options)
        self.opened.append(dash)
        return dash

    def at(self, seconds: float) -> None:
        """Move virtual time to T0 + seconds, running the refreshes due on the way."""
        self.clock.advance(T0 + seconds - self.clock.now)


@pytest.fixture
async def board() -> AsyncIterator[Board]:
    b = Board(asyncio.get_running_loop())
    yield b
    for dash in b.opened:
        dash.close()


async def settle() -> None:
    """Let callbacks posted to the loop (button clicks, picks) run."""
    for _ in range(3):
        await asyncio.sleep(0)


def table(dash: Dashboard) -> str:
    """The table's rows, as the front end is sent them."""
    return dash.view.get_state()["table"]["html"]


def summary(dash: Dashboard) -> str:
    """The summary line, as the front end is sent it."""
    return dash.view.get_state()["summary"]


def from_front_end(widget: Any, **events: Any) -> None:
    """Send ``widget`` the events the browser sends (``dashboard.js``): for each
    keyword, the custom message ``{"event": name, "value": value}``."""
    for event, value in events.items():
        widget._handle_msg({"content": {"data": {"method": "custom", "content": {
            "event": event, "value": value}}}, "buffers": []})


def pick(dash: Dashboard, name: str) -> None:
    """Click the row of task ``name``, in the browser."""
    from_front_end(dash.view, selected=name)


def turn_page(dash: Dashboard, step: int = 1) -> None:
    """Click the table's next (or previous) page button, in the browser."""
    from_front_end(dash.view, page=dash.view.page + step)


def rows(dash: Dashboard) -> list[str]:
    """The tasks of the table's rows, in order (what a click on each would pick)."""
    return re.findall(r'<tr data-task="([^"]*)"', table(dash))


def timeline(dash: Dashboard) -> dict[str, tuple[str, float, float | None, float | None]]:
    """The tasks the dashboard's timeline view holds, as the front end reads them."""
    return timeline_tasks(dash.view.timeline["names"], dash.view.timeline["rows"])


# -- content ----------------------------------------------------------------------------


def test_summary_counts_wall_work_and_speedup() -> None:
    """Three 2 s tasks run side by side: 6.0 s of work in 2.0 s, a 3.0× speedup."""
    records = [record(n, TaskState.DONE, 0, 0, 2) for n in "abc"]
    records.append(record("d", TaskState.FAILED, 0, 1, 1.5))
    records.append(record("e", TaskState.SKIPPED, 0, None, 2))
    s = summarize(records, now=T0 + 10)
    assert s.counts == {TaskState.DONE: 3, TaskState.FAILED: 1, TaskState.SKIPPED: 1}
    assert s.wall == 2.0 and s.work == 6.5
    assert summarize(records[:3], now=T0 + 10).text() == "6.0 s of work in 2.0 s: 3.0×"


def test_summary_runs_to_now_while_a_task_runs() -> None:
    """A running task counts up to now, in the wall time and in the work."""
    s = summarize([record("a", TaskState.RUNNING, 0, 1)], now=T0 + 4)
    assert s.wall == 3.0 and s.work == 3.0
    assert summarize([record("a")], now=T0).text() == "nothing has run yet"


async def test_rows_show_every_column(board: Board) -> None:
    """A row per task: state with icon, name, chain/group, mode, start, duration, tries, waits."""
    sched = board.sched
    sched.add(record("load", TaskState.DONE, 0, 0, 2, group="io"))
    sched.add(record("fit", TaskState.RUNNING, 0, 2.5, chain="main"))
    plot = record("plot", TaskState.PENDING, 0.1, chain="main")
    plot.waits_for, plot.reasons = ("fit", "load"), {"fit": "chain main", "load": "after"}
    sched.add(plot)
    board.at(3.0)
    dash = board.open()
    shown = table(dash)
    assert shown.count("<tr") == 4
    assert "✔ done" in shown and "▶ running" in shown and "○ pending" in shown
    assert "#1a7f37" in shown  # done's colour, beside its icon
    assert "<b>load</b>" in shown and ">io<" in shown and ">main<" in shown and ">thread<" in shown
    assert "+2.50 s" in shown  # fit started 2.5 s after the first submission
    assert "0.50 s" in shown  # and has run for 0.5 s
    assert "fit: chain main, load: after" in shown
    assert "3 tasks" in summary(dash)
    drawn = timeline(dash)
    assert list(drawn) == ["load", "fit", "plot"]  # in submission order
    assert drawn["fit"] == ("running", T0, T0 + 2.5, None)
    assert drawn["load"][0] == "done" and drawn["plot"][0] == "pending"
    assert dash.view.timeline["modes"] == ["thread"]
    assert dash.view.table["label"] == "1–3 of 3"
    assert 'data-task="load"' in shown  # a click on the row picks the task


async def test_rows_show_progress_costs_and_where(board: Board) -> None:
    """Progress (bar and words), CPU time, peak memory, where a running body is; a --map task's
    items; the header says what each means."""
    sched = board.sched
    fit = record("fit", TaskState.RUNNING, 0, 0)
    fit.progress = Progress(done=37, total=100, rate=12.3, elapsed=3, note="epochs")
    fit.cpu_time, fit.where = 2.5, "line 3 of the cell › linalg.py:120 in solve"
    sched.add(fit)
    big = record("big", TaskState.DONE, 0, 0, 1)
    big.cpu_time, big.peak_rss = 0.75, 512_300_000
    big.progress = Progress(done=50, total=50)
    sched.add(big)
    items = record("items", TaskState.RUNNING, 0, 0, map=("x", "range(4)"))
    items.children = [record(f"items[{i}]", s) for i, s in enumerate(
        (TaskState.DONE, TaskState.FAILED, TaskState.RUNNING, TaskState.PENDING))]
    sched.add(items)
    board.at(3.0)
    dash = board.open()
    shown = table(dash)
    assert "37/100 (37%) · 12.3 it/s · 6 s left · epochs" in shown and "width:37%" in shown
    assert "2.5 s" in shown and "line 3 of the cell › linalg.py:120 in solve" in shown
    assert "512 MB" in shown and "0.75 s" in shown and ">50/50<" in shown.replace("</span>", "")
    assert "1/4 done, 1 failed" in shown
    assert 'data-sort="cpu"' in shown and "the most memory" in shown


async def test_sort_by_a_column_and_back(board: Board) -> None:
    """A click on a header sorts by it (costs: most first), again turns the order round;
    tasks without a value stay last."""
    sched = board.sched
    for name, cpu in (("a", 1.0), ("b", None), ("c", 3.0), ("d", 2.0)):
        r = record(name, TaskState.DONE, 0, 0, 1)
        r.cpu_time = cpu
        sched.add(r)
    dash = board.open()
    assert rows(dash) == ["a", "b", "c", "d"]
    from_front_end(dash.view, sort="cpu")
    await settle()
    assert rows(dash) == ["c", "d", "a", "b"] and "CPU ▼" in table(dash)
    from_front_end(dash.view, sort="cpu")
    await settle()
    assert rows(dash) == ["a", "d", "c", "b"] and "CPU ▲" in table(dash)
    from_front_end(dash.view, sort="task")
    await settle()
    assert rows(dash) == ["a", "b", "c", "d"]
    from_front_end(dash.view, sort="nonsense")  # not a column: the order stays
    await settle()
    assert rows(dash) == ["a", "b", "c", "d"]


def test_time_left_from_progress_and_durations() -> None:
    """Running tasks end when their progress says, or like the tasks that ended; pending ones
    take as long as those; the work is shared by the tasks running now."""
    now = T0 + 10
    told = record("told", TaskState.RUNNING, 0, 8)
    told.progress = Progress(done=20, total=100, rate=10)  # 8 s left
    quiet = record("quiet", TaskState.RUNNING, 0, 9)  # like the ended ones (4 s): 3 s left
    assert time_left([told, quiet], pending=0, typical=4.0, now=now) == 8.0
    # 8 + 3 + 4 pending * 4 s = 27 s of work for 2 running at once: 13.5 s.
    assert time_left([told, quiet], pending=4, typical=4.0, now=now) == 13.5
    assert time_left([quiet], pending=0, typical=None, now=now) is None  # nothing to go by
    late = record("late", TaskState.RUNNING, 0, 0)  # ran 10 s, longer than the typical 4 s
    assert time_left([late], pending=0, typical=4.0, now=now) is None
    ended = [record(f"e{i}", TaskState.DONE, 0, 0, 4) for i in range(3)]
    summary = summarize([*ended, told, quiet], now=now)
    assert summary.left == 8.0 and "about 8.0 s left" in summary.line()


async def test_duration_ticks_while_running_and_stops_after(board: Board) -> None:
    """While a task runs one timer refreshes its duration; once it ends no timer is left."""
    sched = board.sched
    fit = sched.add(record("fit", TaskState.RUNNING, 0, 0))
    dash = board.open()
    assert "0.00 s" in table(dash)
    board.at(1.0)
    assert "1.0 s" in table(dash)
    board.at(2.0)
    assert "2.0 s" in table(dash)
    assert len(board.clock.pending) == 1  # exactly one timer: the next tick
    fit.state, fit.ended = TaskState.DONE, T0 + 2.2
    sched.changed(fit)
    board.at(3.0)
    assert "✔ done" in table(dash) and "2.2 s" in table(dash)
    assert board.clock.pending == []


async def test_no_work_at_all_when_nothing_changes(board: Board) -> None:
    """With no task running and no change: no timer, no refresh, no message, for a minute."""
    board.sched.add(record("a", TaskState.DONE, 0, 0, 1))
    dash = board.open()
    board.at(1.0)
    flushes = dash._throttle.flushes
    with WidgetMessages() as sent:
        board.at(61.0)
    assert board.clock.pending == [] and dash._throttle.flushes == flushes and len(sent) == 0


async def test_burst_of_1000_changes_sends_a_bounded_number_of_messages(board: Board) -> None:
    """1,000 tasks submitted, started and ended within 3 s: few messages per simulated second.

    Each refresh sends at most one message per part that changed (the summary with the
    timeline, the table with its pager), and refreshes come at most every 0.5 s.
    """
    sched = board.sched
    dash = board.open()
    with WidgetMessages(only=dash.all_widgets, clock=board.clock.time) as sent:
        records = [sched.add(record(f"t{i}", TaskState.PENDING, 0)) for i in range(1000)]
        for i, rec in enumerate(records):  # each starts and ends, a 3 ms step apart
            board.at(i * 0.003)
            rec.state, rec.started, rec.attempts = TaskState.RUNNING, board.clock.now, 1
            sched.changed(rec)
            board.at(i * 0.003 + 0.002)
            rec.state, rec.ended = TaskState.DONE, board.clock.now
            sched.changed(rec)
        board.at(10.0)
    assert dash._throttle.flushes <= 2 * 3 + 2
    assert sent.max_in_window(1.0) <= 12
    assert len(sent) <= 30
    assert "1000 tasks" in summary(dash) and "✔ 1000 done" in summary(dash)
    assert board.clock.pending == []


async def test_a_packed_timeline_holds_every_task(board: Board) -> None:
    """Past 40 tasks the timeline is packed; every task is sent (the view draws a bar
    for each that started and counts the others), and a waiting one gets its start."""
    sched = board.sched
    for i in range(45):
        sched.add(record(f"s{i}", TaskState.DONE, 0, i, i + 0.5))
    waiting = [sched.add(record(f"w{i}", TaskState.PENDING, 0)) for i in range(5)]
    dash = board.open()
    drawn = timeline(dash)
    assert list(drawn) == [f"s{i}" for i in range(45)] + [f"w{i}" for i in range(5)]
    assert drawn["w0"] == ("pending", T0, None, None)
    assert dash.view.timeline["total"] == 50
    board.at(50)
    waiting[0].state, waiting[0].started = TaskState.RUNNING, T0 + 50
    sched.changed(waiting[0])
    board.at(52)
    assert timeline(dash)["w0"] == ("running", T0, T0 + 50, None)


async def test_only_changed_parts_are_sent(board: Board) -> None:
    """A change to a task on another page sends the summary and the timeline, not the table."""
    sched = board.sched
    for i in range(29):
        sched.add(record(f"t{i}", TaskState.DONE, 0, i, i + 0.5))
    last = sched.add(record("t29", TaskState.PENDING, 0))  # on page 3
    dash = board.open(page_size=10)
    board.at(100)
    last.state, last.ended = TaskState.SKIPPED, T0 + 100
    with WidgetMessages(only=dash.all_widgets) as sent:
        sched.changed(last)
        board.at(101)
    assert [(model, keys) for model, keys, _ in sent.sent] == [
        (dash.view.model_id, ("summary", "timeline"))]
    assert timeline(dash)["t29"] == ("skipped", T0, None, T0 + 100)


# -- paging, filtering, picking --------------------------------------------------------


async def test_pages_and_filter(board: Board) -> None:
    """45 tasks in pages of 20; the filter keeps the chosen states and goes back to page 1."""
    sched = board.sched
    for i in range(45):
        state = TaskState.FAILED if i % 10 == 0 else TaskState.DONE
        sched.add(record(f"t{i}", state, 0, 0, 1))
    dash = board.open()
    view = dash.view

    def where() -> tuple[str, int, int]:
        return view.table["label"], view.page, view.table["pages"]

    assert where() == ("1–20 of 45", 0, 3)
    turn_page(dash)
    await settle()
    turn_page(dash)
    await settle()
    assert where() == ("41–45 of 45", 2, 3)
    assert table(dash).count("<tr") == 1 + 5
    assert rows(dash) == ["t40", "t41", "t42", "t43", "t44"]
    turn_page(dash)  # past the last page: the table stays on it
    await settle()
    assert where() == ("41–45 of 45", 2, 3)
    from_front_end(view, show="unsuccessful")
    await settle()
    assert where() == ("1–5 of 5", 0, 1) and view.show == "unsuccessful"
    assert rows(dash) == ["t0", "t10", "t20", "t30", "t40"]
    from_front_end(view, show="timed_out")
    await settle()
    assert where()[0] == "no timed out tasks" and rows(dash) == []
    from_front_end(view, show="nonsense")  # not a choice: the filter in use stays
    await settle()
    assert view.show == "timed_out" and where()[0] == "no timed out tasks"


async def test_pick_then_cancel_calls_the_scheduler_on_the_loop(board: Board) -> None:
    """Cancel applies to the picked task, and runs on the loop even when clicked from a thread."""
    sched = board.sched
    sched.add(record("a", TaskState.DONE, 0, 0, 1))
    sched.add(record("b", TaskState.RUNNING, 0, 0))
    dash = board.open()
    assert dash.cancel_button.disabled  # nothing picked yet
    picker = threading.Thread(target=pick, args=(dash, "b"))  # a subshell thread
    picker.start()
    picker.join(10)
    await settle()
    assert dash._selected == "b" and not dash.cancel_button.disabled
    assert "background:#ddf4ff" in table(dash)  # the picked row is highlighted
    clicker = threading.Thread(target=dash.cancel_button.click)  # a subshell thread
    clicker.start()
    clicker.join(10)
    await settle()
    assert sched.cancelled == [("b", sched.loop_thread)]
    assert "cancelling <b>b</b>" in dash.message.value
    pick(dash, "a")
    await settle()
    assert dash.cancel_button.disabled  # a has ended


async def test_picked_task_stays_picked_when_the_page_changes(board: Board) -> None:
    """The picked task stays picked (the actions apply to it) after turning the page."""
    for i in range(25):
        board.sched.add(record(f"t{i}", TaskState.DONE if i != 3 else TaskState.RUNNING, 0, 0,
                               None if i == 3 else 1))
    dash = board.open()
    pick(dash, "t3")
    await settle()
    turn_page(dash)
    await settle()
    assert rows(dash) == [f"t{i}" for i in range(20, 25)]
    assert dash.view.selected == "t3" and not dash.cancel_button.disabled
    dash.cancel_button.click()
    await settle()
    assert [name for name, _ in board.sched.cancelled] == ["t3"]


async def test_retry_hidden_without_api_retry(board: Board) -> None:
    """Without a retry function the Retry button is hidden."""
    board.sched.add(record("a", TaskState.FAILED, 0, 0, 1))
    dash = board.open(retry=None)
    assert dash.retry_button.layout.display == "none"


async def test_retry_button_calls_retry_for_unsuccessful_tasks(board: Board) -> None:
    """Retry is enabled only for a task that did not succeed, and calls retry(name)."""
    calls: list[str] = []

    def retry(name: str) -> None:
        calls.append(name)
        if name == "c":
            raise RuntimeError("task 'c' is <busy>")

    sched = board.sched
    sched.add(record("a", TaskState.DONE, 0, 0, 1))
    sched.add(record("b", TaskState.FAILED, 0, 0, 1))
    sched.add(record("c", TaskState.TIMED_OUT, 0, 0, 1))
    dash = board.open(retry=retry)
    assert dash.retry_button.layout.display != "none"
    pick(dash, "a")
    await settle()
    assert dash.retry_button.disabled
    pick(dash, "b")
    await settle()
    assert not dash.retry_button.disabled
    dash.retry_button.click()
    await settle()
    assert calls == ["b"] and "retrying <b>b</b>" in dash.message.value
    pick(dash, "c")
    await settle()
    dash.retry_button.click()
    await settle()
    assert "is &lt;busy&gt;" in dash.message.value  # the error is shown, escaped


async def test_output_of_the_picked_task_is_shown_and_follows_it(board: Board) -> None:
    """Output shows the picked task's outputs, updates as it prints, and detaches on close."""
    loop = asyncio.get_running_loop()
    rec = record("talk", TaskState.RUNNING, 0, 0)
    rec.sink = TaskOutput(loop)
    rec.sink.write("stdout", "hello\n")
    board.sched.add(rec)
    dash = board.open()
    pick(dash, "talk")
    dash.output_button.click()
    await settle()
    assert dash.output.layout.display is None and dash.output_button.description == "Hide output"
    assert list(dash.output.get_state()["outputs"]) == [
        {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    ]
    assert len(rec.sink.views) == 1
    rec.sink.write("stdout", "world\n")
    rec.sink.flush()  # what the sink's own timer does
    board.at(5)
    assert dash.output.outputs[0]["text"] == "hello\nworld\n"
    dash.output_button.click()
    await settle()
    assert rec.sink.views == [] and dash.output.layout.display == "none"
    dash.output_button.click()
    await settle()
    dash.close()
    assert rec.sink.views == []


# -- several dashboards, closing -------------------------------------------------------


async def test_two_dashboards_stay_in_sync_and_closing_one_stops_it(board: Board) -> None:
    """Both show every change; a closed one is unsubscribed, has no timer and sends nothing."""
    sched = board.sched
    a, b = board.open(), board.open()
    rec = sched.add(record("x", TaskState.RUNNING, 0, 0))
    board.at(1)
    assert table(a) == table(b) and "▶ running" in table(a)
    a.close()
    assert a.comm is None and all(w.comm is None for w in [a.view, a.cancel_button, a.output])
    assert len(sched.changes.feeds) == 1
    rec.state, rec.ended = TaskState.DONE, T0 + 1.5
    with WidgetMessages() as sent:
        sched.changed(rec)
        board.at(3)
    assert {m for m, _, _ in sent.sent} <= {w.model_id for w in b.all_widgets()}
    assert "✔ done" in table(b)
    assert not a._throttle.armed
    assert board.clock.pending == []
    a.close()  # closing twice is harmless


async def test_closed_dashboard_leaves_no_widget_behind(board: Board) -> None:
    """close() closes every model the dashboard made (layouts and styles too), and
    leaves nothing behind that keeps them alive."""
    from ipywidgets.widgets.widget import _instances

    before = set(_instances)
    dash = board.open()
    made = set(_instances) - before
    assert len(made) > 10
    dash.close()
    assert not (made & set(_instances))
    # Nothing holds on to it once closed: its widgets (the timeline view and the data it
    # was sent included) can be freed.
    gone = [weakref.ref(dash), weakref.ref(dash.view), weakref.ref(dash.output)]
    board.opened.remove(dash)
    del dash
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


async def test_repr_is_the_text_table(board: Board) -> None:
    """Front ends without widgets show the text table with its summary line."""
    board.sched.add(record("load", TaskState.DONE, 0, 0, 2))
    dash = board.open()
    text = repr(dash)
    assert text.startswith("task") and "load" in text and "1 task: 1 done" in text
    assert text == text_table(board.sched.tasks)


async def test_repr_of_a_long_dashboard_is_its_summary_line(board: Board) -> None:
    """With many tasks the plain-text form is one summary line, not hundreds of rows."""
    for i in range(60):
        board.sched.add(record(f"t{i}", TaskState.DONE, 0, 0, 2))
    dash = board.open()
    assert repr(dash) == "60 tasks: 60 done; 2 min 00 s of work in 2.0 s: 60.0×"


def test_text_table_is_the_views_table_with_a_summary_line() -> None:
    """text_table takes a registry or records: views.table's rows, then the summary line."""
    from ipytasks.views import table

    registry = TaskRegistry()
    for r in (record("a", TaskState.DONE, 0, 0, 2), record("b", TaskState.RUNNING, 0, 1)):
        registry._add(r)
    text = text_table(registry, now=T0 + 3)
    assert text.startswith(table(registry.values()).split("\n")[0])
    assert text.endswith("\n\n2 tasks: 1 running, 1 done; 4.0 s of work in 3.0 s: 1.3×")
    assert text_table([]) == "no tasks yet"


def test_importing_the_package_does_not_import_ipywidgets() -> None:
    """ipywidgets is imported when a live dashboard is opened, not on import (fast %load_ext)."""
    import subprocess
    import sys

    code = "import sys, ipytasks.overview; print('ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.stdout.strip() == "False", out.stderr


# -- with a real scheduler ---------------------------------------------------------------


@pytest.fixture
def shell() -> Any:
    ip = InteractiveShell.instance()
    ip.user_ns["asyncio"] = asyncio
    return ip


async def test_live_run_through_a_real_scheduler(shell: Any) -> None:
    """Real tasks (done, failed, pending, cancelled from the dashboard) show their final states."""
    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    clock = VirtualClock(start=0.0)
    dash = open_dashboard(sched, sched.tasks, clock=clock.time, call_later=clock.call_later,
                          retry=None)
    try:
        ok = sched.submit("await asyncio.sleep(0.01)\n1 + 1", "ok", TaskOptions())
        bad = sched.submit("await asyncio.sleep(0)\nraise ValueError('nope')", "bad",
                           TaskOptions())
        slow = sched.submit("await asyncio.sleep(30)", "slow", TaskOptions(group="g"))
        after = sched.submit("1", "after", TaskOptions(after=("slow",), on_error="continue"))
        with contextlib.suppress(TaskFailed):
            await asyncio.wait_for(sched.wait([ok, bad]), 10)
        clock.advance(1)
        shown = table(dash)
        assert "✔ done" in shown and "✖ failed" in shown and "▶ running" in shown
        assert "slow: after" in shown  # 'after' waits for slow
        pick(dash, "slow")
        await settle()
        dash.cancel_button.click()
        await asyncio.wait_for(sched.wait([slow, after]), 10)
        clock.advance(2)
        assert slow.state is TaskState.CANCELLED and after.state is TaskState.DONE
        shown = table(dash)
        assert "⊘ cancelled" in shown and shown.count("✔ done") == 2
        assert "4 tasks" in summary(dash)
        assert clock.pending == []  # nothing runs: no tick timer left
    finally:
        dash.close()
        sched.close()
    assert dash._feed not in sched.changes.feeds


async def test_default_timer_runs_on_the_scheduler_loop_in_an_empty_context(shell: Any) -> None:
    """Without injected timers, refreshes run on the scheduler's loop outside any task's context."""
    from ipytasks.output import current_output

    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    dash = open_dashboard(sched, sched.tasks, mininterval=0.01, retry=None)
    seen: list[Any] = []
    render = dash._render

    def spy() -> None:
        seen.append(current_output.get())
        render()

    dash._render = spy  # type: ignore[method-assign]
    try:
        rec = sched.submit("await asyncio.sleep(0)", "t", TaskOptions())
        await sched.wait([rec])
        for _ in range(100):
            if seen and "✔ done" in table(dash):
                break
            await asyncio.sleep(0.01)
        assert "✔ done" in table(dash)
        assert seen and all(value is None for value in seen)
    finally:
        dash.close()
        sched.close()


async def test_last_task_ending_refreshes_at_once(board: Board) -> None:
    """When the last unfinished task ends, the dashboard shows it without waiting for the
    throttle, timeline included, so a `%wait` that returns finds the final state sent."""
    running = board.sched.add(record("a", TaskState.RUNNING, 0, 0))
    other = board.sched.add(record("b", TaskState.RUNNING, 0, 0))
    dash = board.open()
    board.at(1.0)
    other.state, other.ended = TaskState.DONE, T0 + 1.1
    board.sched.changed(other)
    assert "running" in summary(dash)
    running.state, running.ended = TaskState.DONE, T0 + 1.2
    board.sched.changed(running)  # no clock advance: the refresh must happen now
    assert "running" not in summary(dash) and "2 done" in summary(dash)
    assert timeline(dash) == {"a": ("done", T0, T0, T0 + 1.2), "b": ("done", T0, T0, T0 + 1.1)}


async def test_a_costly_timeline_is_redrawn_less_often(board: Board,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeline redraw that takes 0.1 s keeps the next one away for 5 s (MAX_SHARE 2%),
    while the summary keeps following every change."""
    from ipytasks.overview import widgets as dashboard_widgets

    rows = dashboard_widgets.TaskColumns.rows

    def slow_rows(*args: Any, **kwargs: Any) -> bytes:
        board.clock.now += 0.1  # the virtual clock also measures what refreshes cost
        return rows(*args, **kwargs)

    monkeypatch.setattr(dashboard_widgets.TaskColumns, "rows", slow_rows)
    sched = board.sched
    sched.add(record("a", TaskState.DONE, 0, 0, 1))
    dash = board.open()
    drawn = timeline(dash)
    assert list(drawn) == ["a"]
    for i, at in enumerate((2, 3, 4)):
        sched.add(record(f"b{i}", TaskState.DONE, at, at, at + 0.5))
        board.at(at + 0.6)
        assert f"{i + 1 + 1} tasks" in summary(dash)
        assert timeline(dash) == drawn, f"redrawn {at} s after a 0.1 s redraw"
    board.at(6)
    assert timeline(dash)["b2"][0] == "done"


async def test_timeline_shows_what_the_table_shows(board: Board) -> None:
    """The refresh that shows a change in the table carries the timeline's numbers too (it
    used to wait up to a second for its own interval); while tasks run, every refresh
    moves the time running bars reach."""
    a = board.sched.add(record("a", TaskState.RUNNING, 0, 0))
    board.sched.add(record("b", TaskState.RUNNING, 0, 0))
    dash = board.open()
    board.at(0.6)
    a.state, a.ended = TaskState.DONE, T0 + 0.6
    board.sched.changed(a)
    board.at(0.75)  # the refresh that follows the change
    assert "✔ done" in table(dash)
    assert timeline(dash)["a"][0] == "done"
    reached = dash.view.now
    board.at(1.9)  # a tick: no task changed
    assert dash.view.now > reached

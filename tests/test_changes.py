"""The change notification on its own: who hears of a change, and how often.

No loop runs here: a task's output is made with a loop it never uses (its views are
told synchronously by ``Changes``; only output written from other threads goes through
the loop). How the scheduler tells changes, and the idle wake before ``wait`` returns,
are tested in ``test_scheduler.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator

import pytest

from ipytasks.changes import Changes
from ipytasks.output import TaskOutput
from ipytasks.records import TaskOptions, TaskRecord

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="empty")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def task(name: str, loop: asyncio.AbstractEventLoop | None = None) -> TaskRecord:
    record = TaskRecord(name=name, source="pass", options=TaskOptions())
    if loop is not None:
        record.sink = TaskOutput(loop)
        record.sink.owner = record
    return record


class View:
    """A task view that notes each update, and the context it ran in."""

    def __init__(self) -> None:
        self.updates: list[str] = []

    def update(self, output: TaskOutput) -> None:
        self.updates.append(marker.get())


class AmendingView(View):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def amend(self, output: TaskOutput, note: str) -> None:
        self.notes.append(note)


def test_a_follower_is_woken_once_until_it_takes_the_changes() -> None:
    """Many changes wake a follower once; it takes each changed task once, in the order
    of their first change; the next change wakes it again; idle wakes it as such."""
    changes = Changes()
    wakes: list[bool] = []
    feed = changes.follow(wakes.append)
    a, b = task("a"), task("b")
    for record in (a, b, a, b, a):
        changes.changed(record)
    assert wakes == [False]
    assert feed.take() == [a, b] and feed.take() == []
    changes.changed(b)
    assert wakes == [False, False]
    changes.idle()
    assert wakes == [False, False, True]
    changes.unfollow(feed)
    changes.changed(a)
    assert feed.take() == [b] and changes.feeds == ()


def test_a_tasks_views_are_told_in_an_empty_context(loop: asyncio.AbstractEventLoop) -> None:
    """A change of status reaches the task's own views at once, outside the context of
    whoever changed it (so what a view sends is not parented to a task's cell)."""
    changes = Changes()
    record, other = task("a", loop), task("b", loop)
    view = View()
    assert record.sink is not None
    record.sink.attach(view)
    token = marker.set("the changer's")
    try:
        changes.changed(record)
        changes.changed(other)
    finally:
        marker.reset(token)
    assert view.updates == ["empty"]


def test_a_broken_follower_breaks_neither_the_change_nor_other_followers(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A follower whose wake raises is reported on the process's stderr; the others are
    still told."""
    changes = Changes()
    changes.follow(lambda idle: 1 / 0)
    wakes: list[bool] = []
    changes.follow(wakes.append)
    changes.changed(task("a"))
    changes.idle()
    assert wakes == [False, True]
    assert "error while telling a follower about tasks: ZeroDivisionError" in capfd.readouterr().err


def test_an_amended_task_is_said_again_by_views_that_can(loop: asyncio.AbstractEventLoop) -> None:
    """A note found after a task's end (its outcome not stored) goes to each view's amend,
    or its update when it has none; followers take the task again."""
    changes = Changes()
    wakes: list[bool] = []
    feed = changes.follow(wakes.append)
    record = task("a", loop)
    amending, plain = AmendingView(), View()
    assert record.sink is not None
    record.sink.attach(amending)
    record.sink.attach(plain)
    changes.amended(record, "not stored: disk full")
    assert amending.notes == ["not stored: disk full"] and amending.updates == []
    assert len(plain.updates) == 1
    assert wakes == [False] and feed.take() == [record]

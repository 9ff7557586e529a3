"""How a change of a task reaches what users see: one notification, each view at its own pace.

Whatever changes a task's status (its state, why it waits, its attempts, the note
``--cache`` adds after its end) is told to :class:`Changes`, on the loop, by whoever
changed it. Two kinds of consumers hear of it:

- a task's own views (its cell's display, the terminal's line, a dashboard's output
  area), attached to the task's :class:`~ipytasks.output.TaskOutput`: they are asked to
  update, as they are when the task prints (the output batches writes from any
  thread into one call on the loop, so it never hops once per ``print``);
- followers of every task (a live dashboard, its saved snapshot), each with a
  :class:`ChangeFeed`: woken when their feed gets its first change, they take the
  changed records when they next refresh, one call however many tasks changed.

Nothing here waits or keeps time. Each consumer spaces its own refreshes with a
:class:`~ipytasks.throttle.Throttle`, and one that shows time passing (a running
task's elapsed time, the dashboard's durations) asks its throttle to come back later
by itself; when nothing runs, no timer does.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING

from .output import _report_internal_error

if TYPE_CHECKING:
    from .records import TaskRecord

__all__ = ("ChangeFeed", "Changes")


class ChangeFeed:
    """The tasks changed since a follower (a dashboard) last took them.

    ``wake(False)`` is called when the feed goes from empty to not empty, and
    ``wake(True)`` when the last unfinished task has ended (before anything awaiting
    that task resumes). The follower takes the records when it is ready, e.g. at its
    next refresh.
    """

    __slots__ = ("_records", "_wake")

    def __init__(self, wake: Callable[[bool], None]) -> None:
        self._wake = wake
        # A dict as an ordered set: each record once, in the order of its first change.
        self._records: dict[TaskRecord, None] = {}

    def add(self, record: TaskRecord) -> None:
        """Keep ``record`` until taken; wake the follower if it is the first since."""
        records = self._records
        woken = bool(records)
        records[record] = None
        if not woken:
            self._call(False)

    def idle(self) -> None:
        """Every task has ended: wake the follower to show it."""
        self._call(True)

    def take(self) -> list[TaskRecord]:
        """The changed records, each once, in the order of their first change; empties the feed."""
        records = list(self._records)
        self._records.clear()
        return records

    def _call(self, idle: bool) -> None:
        try:
            self._wake(idle)
        except Exception as exc:  # noqa: BLE001 - a broken follower must not break tasks
            _report_internal_error("telling a follower about tasks", exc)


class Changes:
    """Where every change of a task's status is told, and who hears of it (see the module).

    Call it on the loop's thread only.
    """

    __slots__ = ("_feeds",)

    def __init__(self) -> None:
        self._feeds: list[ChangeFeed] = []

    @property
    def feeds(self) -> tuple[ChangeFeed, ...]:
        """The followers' feeds, in the order they started following."""
        return tuple(self._feeds)

    def follow(self, wake: Callable[[bool], None]) -> ChangeFeed:
        """Follow every task's changes (a dashboard does): see :class:`ChangeFeed`."""
        feed = ChangeFeed(wake)
        self._feeds.append(feed)
        return feed

    def unfollow(self, feed: ChangeFeed) -> None:
        if feed in self._feeds:
            self._feeds.remove(feed)

    def changed(self, record: TaskRecord) -> None:
        """``record``'s status changed: tell the followers and the task's views."""
        for feed in self._feeds:
            feed.add(record)
        sink = record.sink
        if sink is not None and sink.views:
            # An empty context: what the views send then carries the kernel's latest
            # request as its parent, never the cell of the task that changed.
            contextvars.Context().run(sink.flush)

    def amended(self, record: TaskRecord, note: str) -> None:
        """An ended task's status changed (``note``: its outcome could not be stored).

        Its views are final already, so each that can is asked to say it once more.
        """
        for feed in self._feeds:
            feed.add(record)
        sink = record.sink
        if sink is None:
            return
        for view in list(sink.views):
            amend = getattr(view, "amend", None)
            try:
                if amend is not None:
                    amend(sink, note)
                else:
                    view.update(sink)
            except Exception as exc:  # noqa: BLE001 - a broken view must not break the loop
                _report_internal_error("refreshing a task's view", exc)

    def idle(self) -> None:
        """The last unfinished task has ended: wake every follower to show it."""
        for feed in list(self._feeds):
            feed.idle()

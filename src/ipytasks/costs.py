"""What a task costs, and where its body is now.

- **CPU time** (:attr:`TaskRecord.cpu_time <ipytasks.records.TaskRecord.cpu_time>`,
  seconds): of a thread task, the CPU time of its thread while the body ran
  (``time.thread_time``); of a process or dask task, the CPU time (user and system) of
  its worker process during the job, threads included, measured there. An async task
  shares the loop's thread with everything else: ``None``.
- **Peak memory** (:attr:`~ipytasks.records.TaskRecord.peak_rss`, bytes): the most
  resident memory the worker process held during the job (on Linux the peak is reset
  when a job starts, so a warm worker's earlier jobs do not count); ``None`` for thread
  and async tasks, which share the kernel's memory.
- **Where it is** (:attr:`~ipytasks.records.TaskRecord.where`): the line of the cell
  its body is executing and the innermost function it is in. Looked at only for rows a
  dashboard shows, at most once a second per task: thread tasks from their thread's
  frame (``sys._current_frames``), async tasks from their coroutine chain; worker
  processes look by themselves once a second while they run a job that started while a
  dashboard was open.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from .workers.watch import where_text, where_words

if TYPE_CHECKING:
    import asyncio

    from .records import TaskRecord

__all__ = ("from_worker", "look", "thread_where", "coroutine_where", "watching")

#: Least seconds between two looks at where one task is.
LOOK_INTERVAL = 1.0

_watchers = 0


def watch(delta: int) -> None:
    """A dashboard opens (``+1``) or closes (``-1``)."""
    global _watchers
    _watchers = max(_watchers + delta, 0)


def watching() -> bool:
    """Whether a dashboard is open (so worker processes should say where they are)."""
    return _watchers > 0


def from_worker(record: TaskRecord | None, cost: dict[str, Any] | None) -> None:
    """What a worker process measured for ``record``'s job: ``{"cpu": s, "rss": bytes}``."""
    if record is None or not cost:
        return
    if cost.get("cpu") is not None:
        record.cpu_time = float(cost["cpu"])
    if cost.get("rss"):
        record.peak_rss = int(cost["rss"])


def look(record: TaskRecord, now: float | None = None) -> str | None:
    """Where ``record``'s body is, looked at again if the last look is a second old."""
    sampler = record._sampler
    if sampler is not None:
        now = time.monotonic() if now is None else now
        if now - record._looked >= LOOK_INTERVAL:
            record._looked = now
            try:
                record.where = sampler()
            except Exception:  # noqa: BLE001 - a frame that went away meanwhile
                record.where = None
    return record.where


def thread_where(ident: int, filename: str) -> str | None:
    """Where the body running in thread ``ident`` is."""
    frame = sys._current_frames().get(ident)
    try:
        return where_text(frame, filename) if frame is not None else None
    finally:
        del frame


def coroutine_where(task: asyncio.Task[Any], filename: str) -> str | None:
    """Where an async body is: the cell's line in the chain of coroutines ``task``
    awaits, and the innermost of them when it is not the cell."""
    coro: Any = task.get_coro()
    cell = inner = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            inner = frame
            if frame.f_code.co_filename == filename:
                cell = frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    try:
        return where_words(cell.f_lineno if cell is not None else None,
                                   inner if inner is not cell else None)
    finally:
        del cell, inner

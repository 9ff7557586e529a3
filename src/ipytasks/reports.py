"""What a running task reports of how far it is: its tqdm bars and ``ipytasks.progress``.

A task's progress is :attr:`TaskRecord.progress <ipytasks.records.TaskRecord.progress>`,
a :class:`Progress`; its status line and its dashboard row show it. It comes from:

- a ``tqdm`` bar (``tqdm``, ``tqdm.auto``, ``tqdm.notebook``) made by the task's code:
  the bar draws nothing (no ``\\r`` frames in the task's output, no widget) and tells
  its state each time it would redraw, which tqdm already spaces out;
- :func:`progress`, for code without tqdm;
- a worker process (process and dask modes), where the same happens and the state
  travels to the kernel as a small note (:class:`ipytasks.workers.child.JobTalk`).

A task with several bars (nested loops) shows the first one still open, so the outer
loop; once all are closed, the last one that closed.

Which task a bar belongs to is the task whose code runs where the bar is made (the
context variable the scheduler sets for it, as output capture uses); the bar keeps it,
so a redraw from tqdm's monitor thread is still its own.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .output import current_output
from .workers.child import WORKER_MODULE
from .workers.watch import TqdmWatch

if TYPE_CHECKING:
    from .records import TaskRecord

__all__ = ("Progress", "install", "progress", "uninstall", "worker_note")


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a task is: ``done`` of ``total`` (``None``: unknown) ``unit``s, at ``rate``
    per second (``None``: unknown), ``elapsed`` seconds since it started counting;
    ``note`` is the bar's description or what :func:`progress` was told."""

    done: float
    total: float | None = None
    rate: float | None = None
    elapsed: float = 0.0
    note: str = ""
    unit: str = "it"

    @property
    def fraction(self) -> float | None:
        """``done / total`` between 0 and 1, or ``None`` without a total."""
        if not self.total or self.total <= 0:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    @property
    def left(self) -> float | None:
        """Seconds to go at the current rate, or ``None`` when that is unknown."""
        if self.total is None or not self.rate or self.rate <= 0:
            return None
        return max(self.total - self.done, 0.0) / self.rate

    def count(self) -> str:
        """``37/100``, or ``37 it`` without a total."""
        if self.total is None:
            return f"{_count(self.done)} {self.unit}"
        return f"{_count(self.done)}/{_count(self.total)}"

    def text(self) -> str:
        """``37/100 (37%) · 12.3 it/s · 5 s left · fitting``."""
        parts = [f"{_count(self.done)}/{_count(self.total)} ({self.fraction:.0%})"
                 if self.fraction is not None else f"{_count(self.done)} {self.unit}"]
        if self.rate:
            parts.append(f"{_rate(self.rate)} {self.unit}/s")
        left = self.left
        if left is not None and self.fraction is not None and self.fraction < 1:
            parts.append(f"{_duration(left)} left")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


class _Bars:
    """The bars of one task (by key, in the order they started) and whether each is open."""

    __slots__ = ("states", "open", "last")

    def __init__(self) -> None:
        self.states: dict[Any, Progress] = {}
        self.open: dict[Any, bool] = {}
        self.last: Any = None

    def shown(self) -> Progress | None:
        for key, is_open in self.open.items():
            if is_open:
                return self.states[key]
        return self.states.get(self.last)


#: Called with a record whose progress changed (on any thread); set by :func:`install`.
_announce: Callable[[TaskRecord], None] | None = None
_bars_lock = threading.Lock()
_watch: TqdmWatch | None = None


def _owner() -> TaskRecord | None:
    sink = current_output.get()
    return sink.owner if sink is not None else None


def _set(record: TaskRecord, key: Any, state: dict[str, Any], closed: bool) -> None:
    """A bar (or :func:`progress`) of ``record`` says ``state``; any thread."""
    value = Progress(done=state.get("n") or 0, total=state.get("total"), rate=state.get("rate"),
                     elapsed=state.get("elapsed") or 0.0, note=state.get("note") or "",
                     unit=state.get("unit") or "it")
    with _bars_lock:
        bars = record._bars
        if bars is None:
            bars = record._bars = _Bars()
        bars.states[key] = value
        bars.open[key] = not closed
        if closed:
            bars.last = key
        shown = bars.shown()
    if shown is not record.progress:
        record.progress = shown
        announce = _announce
        if announce is not None:
            announce(record)


def progress(done: float, total: float | None = None, note: str = "") -> None:
    """Say how far the running task is, as a tqdm bar would: ``done`` of ``total``.

    Its status line and dashboard row show ``done/total``, the percentage, the rate and
    the time left (``37/100 (37%) · 12.3 it/s · 5 s left``), and ``note`` after them.
    In any mode, worker processes included; outside a task it does nothing, so code that
    calls it runs in an ordinary cell too.

    :param done: how much is done (items, bytes, …), counted from 0 when the task started.
    :param total: how much there is in all; ``None`` when that is not known.
    :param note: a few words on what it is doing.
    """
    worker = sys.modules.get(WORKER_MODULE)
    talk = getattr(worker, "_talk", None) if worker is not None else None
    if talk is not None:  # in a worker process: a note to the kernel
        talk.progress(done, total, note)
        return
    record = _owner()
    if record is None:
        return
    started = record.started or time.time()
    elapsed = max(time.time() - started, 0.0)
    rate = done / elapsed if elapsed > 0 and done else None
    _set(record, "api", {"n": done, "total": total, "rate": rate, "elapsed": elapsed,
                         "note": note}, total is not None and done >= total)


def worker_note(record: TaskRecord | None, note: dict[str, Any]) -> None:
    """A note a worker process sent while it runs ``record``'s body: progress or where."""
    if record is None:
        return
    if "progress" in note:
        _set(record, ("worker", note.get("key")), note["progress"], bool(note.get("closed")))
    elif "where" in note:
        record.where = note["where"]


def reset(record: TaskRecord) -> None:
    """A new attempt starts: it counts from nothing again."""
    with _bars_lock:
        record._bars = None
    record.progress = None


def install(announce: Callable[[TaskRecord], None]) -> None:
    """From now on tasks' tqdm bars are told; ``announce(record)`` hears of each change."""
    global _announce, _watch
    _announce = announce
    if _watch is None:
        _watch = TqdmWatch(_owner, _set)
    _watch.install()


def uninstall() -> None:
    """tqdm draws as usual again (bars made meanwhile keep telling, to nobody)."""
    global _announce, _watch
    _announce = None
    watch, _watch = _watch, None
    if watch is not None:
        with contextlib.suppress(Exception):
            watch.uninstall()

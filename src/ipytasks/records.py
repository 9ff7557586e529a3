"""Task records: what a task is, what state it is in, and how it ended.

A :class:`TaskRecord` is created by the scheduler for every submission and kept
for the whole session; ``ipytasks.tasks`` is the :class:`TaskRegistry` of them.
Nothing here runs code or knows about event loops.
"""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RemoteError, TaskError
from .options import TaskOptions

if TYPE_CHECKING:
    from .cells import CompiledCell, MapItemCell
    from .output import TaskOutput
    from .reports import Progress

__all__ = ("TaskOptions", "TaskRecord", "TaskRegistry", "TaskState")


class TaskState(enum.StrEnum):
    """The state of a task. Members compare equal to their lower-case names."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    #: Ended at once with the stored outcome of an earlier run (``--cache``).
    CACHED = "cached"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"

    # str's own hash, in C, and equal to the hash of the value it equals: Enum's is a
    # Python call hashing the member's name, and states are hashed on every change of
    # every task (sets, counters, lookups).
    __hash__ = str.__hash__

    @property
    def ended(self) -> bool:
        return self not in ACTIVE

    def __repr__(self) -> str:
        return repr(self.value)


#: States of a task that has not ended. (A set of the members, not a tuple of class
#: attributes: ``ended`` is asked on every change of every task.)
ACTIVE = frozenset({TaskState.PENDING, TaskState.RUNNING})

#: States of a task that ended with its work done: run now, or taken from the cache.
SUCCESSFUL = frozenset({TaskState.DONE, TaskState.CACHED})

#: States a task can end in without having done its work.
UNSUCCESSFUL = frozenset(
    {TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT, TaskState.SKIPPED}
)


@dataclass(eq=False, slots=True)
class TaskRecord:
    """One submission of one cell: its options, its state, its timings and its outcome.

    ``waits_for`` names the tasks this one waits on; ``reasons`` says why, per name
    (``"after"``, ``"chain main"``).
    """

    name: str
    source: str
    options: TaskOptions
    cell: CompiledCell | MapItemCell | None = field(default=None, repr=False)
    mode: str = "async"
    state: TaskState = TaskState.PENDING
    result: Any = field(default=None, repr=False)
    error: BaseException | None = field(default=None, repr=False)
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    attempts: int = 0
    waits_for: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict, repr=False)
    #: Why a pending task is not running yet, when it is not the tasks it waits for.
    pending_reason: str | None = None
    #: The errors of earlier attempts, when ``--retries`` ran it again.
    failures: tuple[BaseException, ...] = field(default=(), repr=False)
    #: For a ``--map`` task: its item tasks, and how many of them have ended.
    children: tuple[TaskRecord, ...] = field(default=(), repr=False)
    parent: TaskRecord | None = field(default=None, repr=False)
    #: For a ``--map`` task: how many items it has, once its EXPR is evaluated (at
    #: submission when it waits for nothing unfinished, else when it starts).
    item_count: int | None = field(default=None, repr=False)
    sink: TaskOutput | None = field(default=None, repr=False)
    upstream: tuple[TaskRecord, ...] = field(default=(), repr=False)
    #: ``--cache``: the key of this run's outcome (``None`` when it cannot be cached),
    #: and what the status line adds: why it ran, where its outcome came from, or why
    #: it was not stored.
    cache_key: str | None = field(default=None, repr=False)
    cache_note: str | None = field(default=None, repr=False)
    #: How far the running body says it is (a tqdm bar, ``ipytasks.progress``), or
    #: ``None``: a :class:`~ipytasks.reports.Progress`, kept after the end.
    progress: Progress | None = field(default=None, repr=False)
    #: CPU seconds the body used: its thread's (thread mode), its worker process's
    #: (process, dask); ``None`` where it is not measured (async mode).
    cpu_time: float | None = None
    #: The most resident memory, in bytes, its worker process held while it ran
    #: (process, dask); ``None`` in the kernel's own threads.
    peak_rss: int | None = None
    #: Where the running body is (``line 3 of the cell › linalg.py:120 in solve``), as
    #: last looked at while a dashboard showed it.
    where: str | None = field(default=None, repr=False)
    # A worker process's rendering of a Figure result: (data, metadata) to show for it.
    _result_display: Any = field(default=None, repr=False)
    # The bars a running body told of (reports._Bars), and how to look where it is now.
    _bars: Any = field(default=None, repr=False)
    _sampler: Any = field(default=None, repr=False)
    _looked: float = field(default=-1e9, repr=False)

    @property
    def group(self) -> str | None:
        return self.options.group

    @property
    def chain(self) -> str | None:
        return self.options.chain

    @property
    def output(self) -> str:
        """The text the task printed so far (stdout and stderr, in order)."""
        return self.sink.text if self.sink is not None else ""

    @property
    def duration(self) -> float | None:
        """Seconds spent running: until now while running, ``None`` before it starts."""
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else time.time()) - self.started

    def error_text(self) -> str:
        """The error with its traceback, as plain text (empty when there is none)."""
        if self.error is None:
            return ""
        error = self.error
        if (
            isinstance(error, TaskError | TimeoutError)
            and not isinstance(error, RemoteError)  # a worker's exception: shown in full
            and error.__traceback__ is None
        ):
            return f"{type(error).__name__}: {error}"
        text = "".join(traceback.format_exception(error)).rstrip()
        if self.cell is not None and self.cell.number:
            # Name the cell as IPython does, rather than by its cache file.
            text = text.replace(f'File "{self.cell.filename}"', f"Cell In[{self.cell.number}]")
        return text

    def __repr__(self) -> str:
        return f"<Task {self.name!r} {self.state} ({self.mode})>"


class TaskRegistry(Mapping[str, TaskRecord]):
    """Every task of the session by name, in the order names were first submitted.

    A name that is submitted again after its task ended maps to the new record, in
    the old one's place; the old one stays in :attr:`history`.
    """

    def __init__(self) -> None:
        self._latest: dict[str, TaskRecord] = {}
        self.history: list[TaskRecord] = []
        # Counts the times records left (a name submitted again, a clear): a follower
        # that appends new records (the dashboard's model) rebuilds when it changes.
        self._removals = 0

    def __getitem__(self, name: str) -> TaskRecord:
        return self._latest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)

    # The dict's own views and lookups: Mapping's generic ones call __getitem__ per key,
    # and its get() catches a KeyError for every name not taken (most of them).
    def get(self, name: str, default: Any = None) -> Any:
        return self._latest.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._latest

    def keys(self):
        return self._latest.keys()

    def values(self):
        return self._latest.values()

    def items(self):
        return self._latest.items()

    def __repr__(self) -> str:
        states = ", ".join(f"{r.name}: {r.state}" for r in self._latest.values())
        return f"<tasks {{{states}}}>"

    def _add(self, record: TaskRecord) -> None:
        # A name submitted again (a retry, a fixed cell) keeps its place: iteration
        # follows the first submission of each name, so the dashboard's row of a
        # retried task stays where the user was looking.
        if record.name in self._latest:
            self._removals += 1
        self._latest[record.name] = record
        self.history.append(record)

    def _clear(self) -> None:
        self._latest.clear()
        self.history.clear()
        self._removals += 1

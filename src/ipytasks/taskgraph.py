"""The task graph: every task of the session, and what each new one waits for and why.

A new task waits for (its *upstream*, each with a reason):

- the tasks and groups ``--after`` names (``"after"``);
- the task before it in its ``%%sequential`` chain (``"chain main"``);
- unfinished tasks it shares names with in a way whose order matters, found by
  :class:`~ipytasks.dependencies.DependencyIndex` (``"reads df, rebinds x"``), unless
  ``--no-infer``: then sharing is a conflict, a warning (an error with ``--strict``).

Reasons for one upstream task are joined with ``"; "`` (``"chain main; reads df"``) in
:attr:`TaskRecord.reasons <ipytasks.records.TaskRecord.reasons>`. :func:`task_graph` reads
them back from the records, for pictures: every task, and every edge with its kind
(chain, ``--after``, data) and the names that cause it.

A task can only wait for tasks submitted before it, so the only cycle possible is a
task waiting for itself, which is refused. Everything here is synchronous and needs
no event loop: it runs on the loop's thread as part of a submission, and tests drive
it alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .dependencies import DependencyIndex, TaskNames
from .errors import BadArgument, TaskConflictWarning
from .records import TaskOptions, TaskRecord, TaskRegistry

if TYPE_CHECKING:
    from .cells import CompiledCell
    from .records import TaskState

__all__ = (
    "GraphEdge",
    "GraphNode",
    "GraphSnapshot",
    "TaskGraph",
    "reason_names",
    "task_graph",
)

TASK_BUSY = "task {name!r} is {state}: %cancel {name} first, or give this cell another NAME"
UNKNOWN_TARGET = "{option}: no task or group named {target!r}{hint} (known: {known})"
SELF_CYCLE = "cycle: task {name!r} cannot wait for itself ({option} {name})"
#: How many known names an unknown-target error lists (the rest are counted).
KNOWN_NAMED = 8
#: How many conflicting tasks a conflict warning names (the rest are counted).
CONFLICTS_NAMED = 3

#: The kinds of edge: a ``%%sequential`` chain, ``--after``, a name both tasks use. The
#: first two are also the words their reasons start with (``"chain main"``, ``"after"``).
CHAIN, AFTER, DATA = "chain", "after", "data"
#: What an edge whose cause is a cell whose names cannot be known is labelled with.
ANY_NAME = "any name"
# One inferred reason, as :meth:`DependencyIndex.shared` words it: ``reads df``.
_NAMED_REASON = re.compile(r"(?:^|, )(?:reads|changes|rebinds) ([^\W\d]\w*)(?=, |$)")


class TaskGraph:
    """The session's tasks (``registry``, name → latest record) and their order.

    A submission is :meth:`new_task` (checks the name and targets and finds what the
    task waits for; nothing changes yet), then :meth:`add` once the caller has
    accepted it. :meth:`ended` takes an ended task out of the inference, which only
    orders new tasks after unfinished ones.
    """

    def __init__(self, registry: TaskRegistry) -> None:
        self.tasks = registry
        # Per chain, its names in order: a name submitted again keeps its place.
        self._chains: dict[str, list[str]] = {}
        self._numbers = itertools.count(1)
        self._index = DependencyIndex()
        self._unfinished: set[TaskRecord] = set()

    def next_default_name(self) -> str:
        """A fresh ``taskN`` name for a submission that gave none."""
        while True:
            name = f"task{next(self._numbers)}"
            if name not in self.tasks:
                return name

    def new_task(
        self,
        source: str,
        name: str,
        options: TaskOptions,
        cell: CompiledCell,
        mode: str,
        names: TaskNames,
    ) -> TaskRecord:
        """The record of a new task ``name``: what it waits for, and why. It is not part
        of the graph until :meth:`add`.

        :raises ValueError: the name belongs to an unfinished task, an ``--after``
            target is unknown or the task itself, or (``--strict``) a conflict.
        :warns TaskConflictWarning: ``--no-infer`` and names shared with unfinished tasks.
        """
        existing = self.tasks.get(name)
        if existing is not None and not existing.state.ended:
            raise BadArgument(TASK_BUSY.format(name=name, state=existing.state))
        if options.map is not None and options.group is None:
            # The items form a group under the map's name: --limit, %wait and --after see it.
            options = dataclasses.replace(options, group=name)
        upstream: dict[TaskRecord, str] = {}
        for target in options.after:
            if target == name:
                raise BadArgument(SELF_CYCLE.format(name=name, option="--after"))
            for record in self._resolve(target, "--after"):
                upstream.setdefault(record, AFTER)
        if options.chain is not None:
            previous = self._chain_predecessor(options.chain, name)
            if previous is not None:
                upstream.setdefault(previous, f"{CHAIN} {options.chain}")
        shared = self._index.shared(names)
        if options.infer:
            for other, why in shared.items():
                reason = ", ".join(why)
                upstream[other] = f"{upstream[other]}; {reason}" if other in upstream else reason
        else:
            _report_conflicts(name, options, {r: w for r, w in shared.items() if r not in upstream})
        return TaskRecord(
            name=name,
            source=source,
            options=options,
            cell=cell,
            mode=mode,
            waits_for=tuple(r.name for r in upstream),
            reasons={r.name: why for r, why in upstream.items()},
            upstream=tuple(upstream),
        )

    def add(self, record: TaskRecord, names: TaskNames) -> None:
        """Make ``record`` (from :meth:`new_task`) a task of the session: by its name,
        in its chain, and as a holder of ``names`` for the tasks after it."""
        self.tasks._add(record)
        self._unfinished.add(record)
        self._index.add(record, names)
        chain = record.options.chain
        if chain is not None:
            names_in_chain = self._chains.setdefault(chain, [])
            if record.name not in names_in_chain:
                names_in_chain.append(record.name)

    def add_item(self, item: TaskRecord) -> None:
        """Make a ``--map`` item a task of the session; it orders no other task (its
        map stands for it)."""
        self.tasks._add(item)
        self._unfinished.add(item)

    def ended(self, record: TaskRecord) -> bool:
        """``record`` ended: new tasks no longer wait for it. Returns whether it was the
        last unfinished task."""
        self._index.remove(record)
        unfinished = self._unfinished
        unfinished.discard(record)
        return not unfinished

    def snapshot(self) -> GraphSnapshot:
        """The graph now, read back from the records: see :func:`task_graph`."""
        return task_graph(self.tasks.values())

    def resolve(self, targets: Iterable[str], option: str) -> list[TaskRecord]:
        """Records for names and groups, each once, in the order named (a group's in
        submission order); every task, in submission order, if ``targets`` is empty.

        :raises ValueError: a target names no task or group (``option`` says where it
            was given); the message suggests close names.
        """
        targets = list(targets)
        if not targets:
            return list(self.tasks.values())
        found: dict[TaskRecord, None] = {}
        for target in targets:
            for record in self._resolve(target, option):
                found[record] = None
        return list(found)

    def _resolve(self, target: str, option: str) -> list[TaskRecord]:
        """The records a name or group stands for (the latest record of each name)."""
        record = self.tasks.get(target)
        if record is not None:
            return [record]
        members = [r for r in self.tasks.values() if r.options.group == target]
        if members:
            return members
        raise BadArgument(UNKNOWN_TARGET.format(option=option, target=target,
                                               **self._known_targets(target)))

    def _known_targets(self, target: str) -> dict[str, str]:
        """What an unknown-target error suggests: close names, and a few of those known
        (groups, and tasks other than a map's items, which their map's name stands for)."""
        names = dict.fromkeys(n for n, r in self.tasks.items() if r.parent is None)
        names.update(dict.fromkeys(r.options.group for r in self.tasks.values()
                                   if r.options.group is not None))
        close = difflib.get_close_matches(target, list(names), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        shown = list(names)[-KNOWN_NAMED:]  # the newest: the likeliest to be meant
        rest = len(names) - len(shown)
        known = ", ".join(shown) + (f" and {rest:,} more" if rest else "")
        return {"hint": hint, "known": known or "none yet"}

    def _chain_predecessor(self, chain: str, name: str) -> TaskRecord | None:
        """The task a sequential task of ``chain`` named ``name`` runs after.

        A chain is a sequence of names. A new name goes at the end, after the
        latest task of the name before it; a name submitted again (a fixed cell)
        keeps its place, so it runs after its old predecessor rather than after
        whatever failed or was skipped further down the chain.
        """
        names = self._chains.get(chain, [])
        position = names.index(name) if name in names else len(names)
        if position == 0:
            return None
        return self.tasks.get(names[position - 1])


def _report_conflicts(
    name: str, options: TaskOptions, conflicts: dict[TaskRecord, list[str]]
) -> None:
    """A task that does not wait (``--no-infer``) but shares names: warn, or refuse
    (``--strict``)."""
    if not conflicts:
        return
    named = list(conflicts.items())[:CONFLICTS_NAMED]
    lines = [
        f"task {name!r} {', '.join(why)} while task {other.name!r} is {other.state}; "
        f"the order they end in decides the value"
        for other, why in named
    ]
    if len(conflicts) > len(named):
        lines.append(f"and {len(conflicts) - len(named)} more unfinished tasks")
    others = ",".join(other.name for other, _ in named)
    message = "; ".join(lines) + f" (drop --no-infer, or add --after {others})"
    if options.strict:
        raise BadArgument(f"conflict (--strict): {message}")
    warnings.warn(TaskConflictWarning(message), stacklevel=1)


# -- the graph, read back for pictures ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class GraphNode:
    """A task as the graph shows it: a ``--map`` task (``is_map``) is one node, with its
    item count (``None`` until its items are known)."""

    name: str
    state: TaskState
    mode: str
    is_map: bool = False
    items: int | None = None
    #: How many of a map's items have ended.
    items_ended: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class GraphEdge:
    """``target`` waits for ``source``: by its chain, by ``--after``, and/or because of
    ``names`` they share (``kinds`` says which, in that order); ``why`` is the reason as
    ``task.reasons`` words it."""

    source: str
    target: str
    kinds: tuple[str, ...]
    names: tuple[str, ...]
    why: str


@dataclasses.dataclass(frozen=True, slots=True)
class GraphSnapshot:
    """The task graph at one moment: nodes in submission order, edges by target."""

    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]


def reason_names(inferred: str) -> tuple[str, ...]:
    """The names in an inferred reason (``reads rows, changes df`` → ``rows, df``); a cell
    whose names cannot be known counts as :data:`ANY_NAME`."""
    names = dict.fromkeys(_NAMED_REASON.findall(inferred))
    if "names cannot be known" in inferred:
        names[ANY_NAME] = None
    return tuple(names)


def task_graph(records: Iterable[TaskRecord]) -> GraphSnapshot:
    """The graph of ``records`` (the latest record of each name, in submission order).

    Edges join names: a task submitted again under its name takes its place, also for
    the tasks that waited for the one it replaced. A ``--map`` task's items are not
    nodes of their own. Edges come from each record's ``upstream`` and ``reasons``, as
    :meth:`TaskGraph.new_task` words them: ``after``, ``chain C``, the inferred reasons
    (:meth:`DependencyIndex.shared`), joined by ``; ``.
    """
    nodes: list[GraphNode] = []
    edges: list[GraphEdge] = []
    records = [r for r in records if r.parent is None]
    known = {r.name for r in records}
    for record in records:
        is_map = record.options.map is not None
        items = (len(record.children) or record.item_count) if is_map else None
        ended = sum(1 for c in record.children if c.state.ended) if record.children else 0
        nodes.append(GraphNode(record.name, record.state, record.mode, is_map, items, ended))
        chain = record.options.chain
        for upstream in record.upstream:
            source = upstream.parent.name if upstream.parent is not None else upstream.name
            if source == record.name or source not in known:
                continue
            why = record.reasons.get(upstream.name, "")
            kinds: list[str] = []
            inferred = why
            for kind, head in ((AFTER, AFTER), (CHAIN, f"{CHAIN} {chain}")):
                if why == head or why.startswith(head + "; "):
                    kinds.append(kind)
                    inferred = why[len(head):].removeprefix("; ")
                    break
            names = reason_names(inferred) if inferred else ()
            if names:
                kinds.append(DATA)
            edges.append(GraphEdge(source, record.name, tuple(kinds), names, why))
    return GraphSnapshot(tuple(nodes), tuple(edges))

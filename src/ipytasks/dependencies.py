"""Inferred data dependencies between tasks, and conflicts.

A new task waits for every unfinished task it shares a name with in a way whose
order matters, so each name ends with the value an in-order run would give:

- it *reads* a name the other binds or changes in place (``reads df``);
- it *changes* in place (``df['x'] = …``) a name the other binds or reads;
- it *rebinds* a name the other reads, binds or changes (``rebinds x``).

Throwaway names are the exception: a name that both tasks bind only as a ``for``
target, an ``except … as`` name, or ``_`` (:attr:`CompiledCell.private
<ipytasks.cells.CompiledCell.private>`) orders nothing between them, since each
task keeps its own while it runs. A task that reads such a name still waits for
every unfinished task that binds it.

Two tasks that only store into the same object (``results['a'] = …`` and
``results['b'] = …``) run together, and a later task that reads ``results``
waits for both. Importing the same module in two cells is no reason to wait. A
cell whose names cannot be known (``exec``, a star import) waits for every
unfinished task, and every later task waits for it.

The index holds the names of unfinished tasks only, so finding what a new task
waits for costs the size of its own name sets, not the number of tasks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .namespace.analysis import CellNames, analyze

if TYPE_CHECKING:
    from .cells import CompiledCell
    from .records import TaskOptions, TaskRecord

__all__ = ("DependencyIndex", "TaskNames", "task_names")


@dataclass(frozen=True, slots=True)
class TaskNames:
    """The names a task uses at notebook level, as scheduling sees them."""

    reads: frozenset[str]
    binds: frozenset[str]
    mutates: frozenset[str]
    imports: frozenset[str]
    unknown: str | None = None
    #: Names in ``binds`` that are throwaway and private to the task while it runs.
    loose: frozenset[str] = frozenset()


def task_names(cell: CompiledCell, options: TaskOptions) -> TaskNames:
    """What a task reads, binds and changes, from its cell (and its ``--map`` EXPR)."""
    key = (cell, options.map)
    found = _analysed.get(key)
    if found is None:
        found = _task_names(cell, options)
        if len(_analysed) >= _ANALYSED_MAX:
            _analysed.pop(next(iter(_analysed)), None)
        _analysed[key] = found
    return found


#: The names of recently analysed cells (compiled cells are reused for the same text).
_analysed: dict[tuple[CompiledCell, tuple[str, str] | None], TaskNames] = {}
_ANALYSED_MAX = 256


def _task_names(cell: CompiledCell, options: TaskOptions) -> TaskNames:
    names: CellNames = cell.names
    if options.map is None:
        return TaskNames(names.reads, names.binds, names.mutates, names.imports, names.unknown,
                         loose=cell.private)
    # A map's items run in scopes of their own: they bind nothing in the notebook
    # (``global`` aside), and read EXPR's names besides their own free names.
    var, expr = options.map
    expr_names = analyze(_expression_module(expr))
    return TaskNames(
        reads=(names.reads - {var}) | expr_names.reads,
        binds=frozenset(),
        mutates=names.mutates,
        imports=frozenset(),
        unknown=names.unknown or expr_names.unknown,
    )


def _expression_module(expr: str):  # -> ast.Module
    import ast

    return ast.parse(expr, mode="exec")


class DependencyIndex:
    """For each name, the unfinished tasks that read, bind or change it."""

    def __init__(self) -> None:
        # Dicts used as ordered sets: insertion is submission order, so the newest
        # holder of a name is the last key.
        self._readers: defaultdict[str, dict[TaskRecord, None]] = defaultdict(dict)
        self._binders: defaultdict[str, dict[TaskRecord, None]] = defaultdict(dict)
        self._mutators: defaultdict[str, dict[TaskRecord, None]] = defaultdict(dict)
        self._names: dict[TaskRecord, TaskNames] = {}
        self._unknown: set[TaskRecord] = set()

    def add(self, record: TaskRecord, names: TaskNames) -> None:
        self._names[record] = names
        for table, group in (
            (self._readers, names.reads),
            (self._binders, names.binds),
            (self._mutators, names.mutates),
        ):
            for name in group:
                table[name][record] = None
        if names.unknown:
            self._unknown.add(record)

    def remove(self, record: TaskRecord) -> None:
        names = self._names.pop(record, None)
        if names is None:
            return
        for table, group in (
            (self._readers, names.reads),
            (self._binders, names.binds),
            (self._mutators, names.mutates),
        ):
            for name in group:
                holders = table.get(name)
                if holders is not None:
                    holders.pop(record, None)
                    if not holders:
                        del table[name]
        self._unknown.discard(record)

    def _latest_binders(self, name: str) -> list[TaskRecord]:
        """The unfinished binders of ``name`` a new task must come after.

        A binder that binds ``name`` as an ordinary name and inferred its order came
        after every binder before it, so it stands for them all: this keeps a long run
        of cells binding the same name linear rather than quadratic. Binders after it
        that bind it as a throwaway name, or did not infer (``--no-infer``), are not
        ordered among themselves, so each of them counts.
        """
        holders = self._binders.get(name)
        if not holders:
            return []
        found = []
        for holder in reversed(holders):
            found.append(holder)
            if holder.options.infer and name not in self._names[holder].loose:
                break
        return found

    def shared(self, names: TaskNames) -> dict[TaskRecord, list[str]]:
        """The unfinished tasks that a task with ``names`` must come after, with why."""
        if not (names.reads or names.mutates or names.binds or names.unknown or self._unknown):
            return {}  # a cell of literals (``1 + 1``) shares nothing with anyone
        why: dict[TaskRecord, list[str]] = {}

        def note(records: Iterable[TaskRecord] | None, verb: str, name: str) -> None:
            for record in records or ():
                why.setdefault(record, []).append(f"{verb} {name}")

        for name in sorted(names.reads):
            note(self._latest_binders(name), "reads", name)
            note(self._mutators.get(name), "reads", name)
        for name in sorted(names.mutates):
            note(self._latest_binders(name), "changes", name)
            note(self._readers.get(name), "changes", name)
        for name in sorted(names.binds):
            note(self._readers.get(name), "rebinds", name)
            note(self._mutators.get(name), "rebinds", name)
            binders = self._latest_binders(name)
            if binders and name in names.imports:
                # The same import in two cells binds the same module: no order needed.
                binders = [r for r in binders if name not in self._names[r].imports]
            if binders and name in names.loose:
                # Two loops over `i` each keep their own `i` while they run.
                binders = [r for r in binders if name not in self._names[r].loose]
            note(binders, "rebinds", name)
        for record in self._unknown:
            why.setdefault(record, []).append(
                f"its names cannot be known ({self._names[record].unknown})"
            )
        if names.unknown:
            for record in self._names:
                why.setdefault(record, []).append(
                    f"this cell's names cannot be known ({names.unknown})"
                )
        ordered = sorted(why, key=lambda record: record.submitted)
        return {record: _dedupe(why[record]) for record in ordered}


def _dedupe(reasons: list[str]) -> list[str]:
    return list(dict.fromkeys(reasons))

"""The task graph on its own: no event loop, no kernel, no task runs.

Tasks are registered as a submission does (``new_task`` then ``add``) and ended by
setting their state and telling the graph (``ended``), as the scheduler does.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from ipytasks.cells import compile_cell
from ipytasks.dependencies import task_names
from ipytasks.errors import TaskConflictWarning
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry, TaskState
from ipytasks.taskgraph import ANY_NAME, TaskGraph, reason_names


class Graph:
    """A task graph and a shell to compile cells with."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.graph = TaskGraph(TaskRegistry())

    def new(self, source: str, name: str, **options: Any) -> TaskRecord:
        opts = TaskOptions(**options)
        cell = compile_cell(self.shell, source, 0)
        return self.graph.new_task(source, name, opts, cell, "thread", task_names(cell, opts))

    def add(self, source: str, name: str, **options: Any) -> TaskRecord:
        record = self.new(source, name, **options)
        assert record.cell is not None
        self.graph.add(record, task_names(record.cell, record.options))
        return record

    def end(self, record: TaskRecord, state: TaskState = TaskState.DONE) -> bool:
        record.state = state
        return self.graph.ended(record)


@pytest.fixture
def g(shell: Any) -> Graph:
    return Graph(shell)


def test_a_new_task_is_not_in_the_graph_until_added(g: Graph) -> None:
    """new_task checks and finds the upstream, and changes nothing: a refused or
    abandoned submission leaves no trace; add makes it a task."""
    record = g.new("x = 1", "a")
    assert record.upstream == () and len(g.graph.tasks) == 0
    assert g.new("y = x", "b").upstream == ()  # 'a' binds nothing yet
    g.graph.add(record, task_names(record.cell, record.options))
    assert g.graph.tasks["a"] is record
    assert g.new("y = x", "b").upstream == (record,)


def test_a_chain_orders_its_tasks_and_a_fixed_cell_keeps_its_place(g: Graph) -> None:
    """Each task of a chain waits for the one before it; a name submitted again after it
    ended waits for its old predecessor, and a new name for the chain's last."""
    load = g.add("1", "load", chain="etl")
    parse = g.add("2", "parse", chain="etl")
    save = g.add("3", "save", chain="etl")
    assert parse.upstream == (load,) and parse.reasons == {"load": "chain etl"}
    assert save.upstream == (parse,)
    other = g.add("4", "other", chain="side")
    assert other.upstream == ()
    for record in (load, parse, save):
        g.end(record, TaskState.FAILED if record is parse else TaskState.DONE)
    parse2 = g.add("2", "parse", chain="etl")
    assert parse2.upstream == (load,)
    g.end(parse2)
    report = g.add("5", "report", chain="etl")  # a new name: after the chain's last
    assert report.upstream == (save,)


def test_after_names_tasks_and_groups(g: Graph) -> None:
    """--after waits for a named task, or every task of a named group, each once."""
    a = g.add("1", "a", group="fetch")
    b = g.add("2", "b", group="fetch")
    c = g.add("3", "c")
    report = g.add("4", "report", after=("fetch", "c", "a"))
    assert report.upstream == (a, b, c)
    assert set(report.reasons.values()) == {"after"}


def test_unknown_targets_and_a_task_waiting_for_itself_are_refused(g: Graph) -> None:
    """An unknown --after target names close names and a few known ones; waiting for
    oneself is the only cycle possible, and is refused."""
    g.add("1", "fetch_users")
    hint = r"\(did you mean 'fetch_users'\?\) \(known: fetch_users\)"
    with pytest.raises(ValueError, match=r"no task or group named 'fetch_user' " + hint):
        g.new("2", "report", after=("fetch_user",))
    with pytest.raises(ValueError, match="cycle: task 'report' cannot wait for itself"):
        g.new("2", "report", after=("report",))
    assert list(g.graph.tasks) == ["fetch_users"]


def test_inferred_edges_say_why_and_join_other_reasons(g: Graph) -> None:
    """A reader waits for the unfinished binder, saying which name; reasons of one
    upstream task join with '; '."""
    load = g.add("df = [1]", "load", chain="main")
    clean = g.add("rows = len(df)", "clean", chain="main")
    assert clean.upstream == (load,) and clean.reasons == {"load": "chain main; reads df"}
    rebind = g.add("rows = 0", "reset")
    assert rebind.reasons == {"clean": "rebinds rows"}


def test_an_ended_task_orders_no_new_task(g: Graph) -> None:
    """Inference orders new tasks after unfinished ones only; ended() reports whether
    the last unfinished task ended."""
    load = g.add("df = [1]", "load")
    other = g.add("z = 0", "other")
    assert not g.end(load)
    assert g.new("rows = len(df)", "clean").upstream == ()
    assert g.end(other)


def test_a_busy_name_is_refused_and_an_ended_one_replaced(g: Graph) -> None:
    """A name whose task has not ended cannot be submitted again; once ended, the new
    record takes its place, and the old one stays in the history."""
    first = g.add("1", "a")
    with pytest.raises(ValueError, match="task 'a' is pending: %cancel a first"):
        g.new("2", "a")
    g.end(first)
    second = g.add("2", "a")
    assert g.graph.tasks["a"] is second and g.graph.tasks.history == [first, second]


def test_no_infer_warns_of_a_conflict_and_strict_refuses_it(g: Graph) -> None:
    """--no-infer does not wait for a task it shares names with: it warns, naming both
    and what to do; --strict makes that an error. Without sharing, nothing is said."""
    g.add("df = [1]", "load")
    with pytest.warns(TaskConflictWarning, match=r"task 'peek' reads df while task 'load' "
                                                 r"is pending.*add --after load"):
        peek = g.new("n = len(df)", "peek", infer=False)
    assert peek.upstream == ()
    with pytest.raises(ValueError, match=r"conflict \(--strict\)"):
        g.new("n = len(df)", "peek", infer=False, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g.new("z = 2", "alone", infer=False)


def test_a_maps_items_are_tasks_under_the_maps_group(g: Graph) -> None:
    """A --map task's group defaults to its name, so its items (add_item) are found by
    it; unknown-target hints list the map, not its items."""
    m = g.add("x", "m", map=("x", "range(3)"))
    assert m.options.group == "m"
    items = [TaskRecord(name=f"m[{i}]", source="x", options=m.options, parent=m) for i in range(3)]
    for item in items:
        g.graph.add_item(item)
    assert g.graph.resolve(["m"], "wait") == [m]  # the name first
    assert g.graph.resolve(["m[1]"], "wait") == [items[1]]
    with pytest.raises(ValueError, match=r"\(known: m\)$"):
        g.graph.resolve(["nope"], "wait")
    for record in (*items, m):
        last = g.end(record)
    assert last


def test_resolve_gives_each_record_once_and_no_target_means_every_task(g: Graph) -> None:
    """resolve() gives each record once, in the order the targets name them (a group's
    in submission order); no target means every task, in submission order."""
    a, b, c = g.add("1", "a", group="g"), g.add("2", "b"), g.add("3", "c", group="g")
    assert g.graph.resolve([], "wait") == [a, b, c]
    assert g.graph.resolve(["b", "g", "a"], "wait") == [b, a, c]


def test_default_names_skip_names_in_use(g: Graph) -> None:
    """taskN names count up and never take a name already given."""
    g.add("1", "task2")
    assert [g.graph.next_default_name() for _ in range(3)] == ["task1", "task3", "task4"]


def test_reason_names_reads_the_graphs_words() -> None:
    """The names of inferred reasons as the dependency index words them; a cell whose
    names cannot be known counts as any name."""
    assert reason_names("reads rows, changes df, rebinds x_1") == ("rows", "df", "x_1")
    assert reason_names("its names cannot be known (line 1: exec, eval)") == (ANY_NAME,)
    assert reason_names("reads rows, this cell's names cannot be known (line 2: exec)") == (
        "rows", ANY_NAME)


def test_the_snapshot_reads_back_what_new_task_wrote(g: Graph) -> None:
    """Each edge's kinds and names come from the reasons new_task gave: a snapshot made
    without any loop or runner shows the chain, --after and data edges of the graph."""
    load = g.add("df = [1]", "load", chain="main")
    g.add("rows = len(df)", "clean", chain="main")
    g.add("z = 1", "other", after=("load",))
    g.end(load)
    snapshot = g.graph.snapshot()
    assert [(n.name, n.state) for n in snapshot.nodes] == [
        ("load", "done"), ("clean", "pending"), ("other", "pending")]
    assert [(e.source, e.target, e.kinds, e.names) for e in snapshot.edges] == [
        ("load", "clean", ("chain", "data"), ("df",)),
        ("load", "other", ("after",), ()),
    ]

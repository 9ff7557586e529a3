"""The public surface: what `import ipytasks` offers, and nothing by accident."""

from __future__ import annotations

import ipytasks

#: The public surface: the API and the magics' functions, the task record and its states,
#: and the errors a user catches. A name added or lost is a decision, made here too.
PUBLIC = {
    "cancel", "dashboard", "graph", "progress", "result", "results", "retry", "submit",
    "tasks", "timeline", "use", "wait", "load_ipython_extension", "unload_ipython_extension",
    "TaskRecord", "TaskState",
    "BrokenWorker", "RemoteError", "ShippingError", "TaskCancelled", "TaskConflictWarning",
    "TaskFailed", "TaskSkipped",
}


def test_the_public_names_are_these_and_nothing_else() -> None:
    """__all__ is exactly PUBLIC, each name exists, and every other public attribute is a
    submodule: a name that disappears or appears by accident fails here."""
    import types

    assert set(ipytasks.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(ipytasks, name), name
    public = {n for n in vars(ipytasks) if not n.startswith("_")}
    modules = {n for n in public if isinstance(getattr(ipytasks, n), types.ModuleType)}
    assert public - modules - {"annotations"} == PUBLIC


def test_state_compares_to_strings() -> None:
    """Task states compare equal to their names and print as them."""
    assert ipytasks.TaskState.TIMED_OUT == "timed_out"
    assert str(ipytasks.TaskState.DONE) == "done"
    assert repr(ipytasks.TaskState.DONE) == "'done'"


def test_magic_help_names_every_option() -> None:
    """%%parallel? shows a usage line and every option."""
    from ipytasks.magics import TaskMagics

    doc = TaskMagics.parallel.__doc__
    assert doc.startswith("::\n\n  %parallel") or "%parallel" in doc.splitlines()[2]
    for option in ("--after", "--group", "--on-error", "--mode", "--thread", "--timeout",
                   "--wait", "--quiet", "Examples"):
        assert option in doc, option
    assert "--chain" in TaskMagics.sequential.__doc__


def test_dashboard_stays_a_function_after_the_overview_loads() -> None:
    """Importing the overview package does not shadow ipytasks.dashboard() (nor graph())."""
    import ipytasks.overview  # noqa: F401
    import ipytasks.overview.graph  # noqa: F401

    assert callable(ipytasks.dashboard) and callable(ipytasks.timeline)
    assert callable(ipytasks.graph)


def test_tasks_is_the_registry_and_no_module_shadows_it() -> None:
    """``ipytasks.tasks`` is the registry, whatever was imported before: the module of task
    records is ``ipytasks.records``, and ``import ipytasks.tasks`` names no module."""
    import importlib.util
    import subprocess
    import sys

    import ipytasks.records

    assert isinstance(ipytasks.tasks, ipytasks.records.TaskRegistry)
    assert ipytasks.records.TaskRecord is ipytasks.TaskRecord
    assert importlib.util.find_spec("ipytasks.tasks") is None
    # In a fresh interpreter, as a user would type it.
    done = subprocess.run(
        [sys.executable, "-c", "import ipytasks.tasks"], capture_output=True, text=True,
        check=False)
    assert done.returncode == 1 and "No module named 'ipytasks.tasks'" in done.stderr

"""The public surface: what `import ipytasks` offers, and nothing by accident."""

from __future__ import annotations

import ipytasks


def test_all_names_exist_and_nothing_else_is_public() -> None:
    """Every name in __all__ exists; every public attribute is in __all__ or a submodule."""
    import types

    for name in ipytasks.__all__:
        assert hasattr(ipytasks, name), name
    public = {n for n in vars(ipytasks) if not n.startswith("_")}
    modules = {n for n in public if isinstance(getattr(ipytasks, n), types.ModuleType)}
    assert public - modules - {"annotations"} == set(ipytasks.__all__)


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
    """Importing the overview package does not shadow ipytasks.dashboard()."""
    import ipytasks.overview  # noqa: F401

    assert callable(ipytasks.dashboard) and callable(ipytasks.timeline)


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

"""ipytasks: run notebook cells as background tasks.

``%load_ext ipytasks``, then mark cells ``%%parallel`` or ``%%sequential``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any as _Any

from . import api as _api
from .api import cancel as cancel
from .api import dashboard as dashboard
from .api import graph as graph
from .api import result as result
from .api import results as results
from .api import retry as retry
from .api import submit as submit
from .api import tasks as tasks
from .api import timeline as timeline
from .api import use as use
from .api import wait as wait
from .errors import BrokenWorker as BrokenWorker
from .errors import RemoteError as RemoteError
from .errors import ShippingError as ShippingError
from .errors import TaskCancelled as TaskCancelled
from .errors import TaskConflictWarning as TaskConflictWarning
from .errors import TaskFailed as TaskFailed
from .errors import TaskSkipped as TaskSkipped
from .records import TaskRecord as TaskRecord
from .records import TaskState as TaskState
from .reports import progress as progress

try:
    __version__ = _version("ipytasks")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = (
    "cancel",
    "dashboard",
    "graph",
    "load_ipython_extension",
    "progress",
    "result",
    "results",
    "retry",
    "submit",
    "tasks",
    "timeline",
    "unload_ipython_extension",
    "use",
    "wait",
    "BrokenWorker",
    "RemoteError",
    "ShippingError",
    "TaskCancelled",
    "TaskConflictWarning",
    "TaskFailed",
    "TaskRecord",
    "TaskSkipped",
    "TaskState",
)


def load_ipython_extension(ip: _Any) -> None:
    """Install the magics (``%load_ext ipytasks``). Starts nothing until the first task."""
    from .magics import TaskMagics, await_wait_lines, await_waiting_cells, mode_settings

    if _api._session is not None:
        return
    magics = TaskMagics(shell=ip)
    ip.register_magics(magics)
    session = _api._Session(ip, mode_settings(magics))
    if session.in_kernel:
        ip.input_transformers_cleanup.append(await_waiting_cells)
        ip.input_transformers_post.append(await_wait_lines)
    _api._session = session


def unload_ipython_extension(ip: _Any) -> None:
    """Cancel every task, stop ipytasks' threads, and restore what loading changed."""
    from .magics import TaskMagics, await_wait_lines, await_waiting_cells

    session = _api._session
    if session is None:
        return
    _api._session = None
    cancelled = session.close()
    for hooks, hook in (
        (ip.input_transformers_cleanup, await_waiting_cells),
        (ip.input_transformers_post, await_wait_lines),
    ):
        while hook in hooks:
            hooks.remove(hook)
    manager = ip.magics_manager
    for kind in ("line", "cell"):
        for name in [n for n, f in manager.magics[kind].items()
                     if getattr(f, "__self__", None).__class__ is TaskMagics]:
            del manager.magics[kind][name]
    manager.registry.pop("TaskMagics", None)
    if cancelled:
        print("ipytasks: cancelled " + ", ".join(r.name for r in cancelled))

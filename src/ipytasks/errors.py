"""Every error and warning ipytasks raises, in one module: what a task's outcome raises,
and what the Python API raises for a call it cannot take.

::

    TaskError                 ipytasks' errors about tasks (``except TaskError`` catches them all)
    ├── TaskFailed            a wait ended with tasks that did not succeed; names each one
    ├── TaskCancelled         cancelled before it could finish
    ├── TaskSkipped           never ran: a task it waits for did not succeed
    ├── BrokenWorker          the worker process running it died
    ├── ShippingError         a value could not travel to a worker process or back
    └── RemoteError           a worker's exception that could not be re-created in the kernel
    TaskConflictWarning       two tasks that may run at once share a name

    BadArgument (ValueError), BadArgumentType (TypeError), NotLoaded (RuntimeError)
                              refusals of a call (REFUSALS)

A task's own exception (``ValueError`` in the cell) is raised as itself, in every mode,
workers included; only when it cannot be re-created in the kernel does it become a
:class:`RemoteError`.

A refused call raises what Python's own functions do: a bad argument is a ``ValueError``
(a value of the wrong kind a ``TypeError``), and a call before ``%load_ext ipytasks`` a
``RuntimeError``. Their subclasses here let the magics tell a refusal of theirs from an
error a task raised (``%result`` re-raises those) and show it as a one-line usage error.

Nothing here imports the rest of ipytasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import TaskRecord

__all__ = (
    "REFUSALS",
    "BadArgument",
    "BadArgumentType",
    "BrokenWorker",
    "NotLoaded",
    "RemoteError",
    "ShippingError",
    "TaskCancelled",
    "TaskConflictWarning",
    "TaskError",
    "TaskFailed",
    "TaskSkipped",
)


# -- a task's outcome ------------------------------------------------------------------


class TaskError(Exception):
    """Base class of the errors ipytasks raises about tasks."""


class TaskCancelled(TaskError):
    """The task was cancelled before it could finish (``%cancel``, unload, shutdown)."""


class TaskSkipped(TaskError):
    """The task never ran: a task it waits for did not succeed (``--on-error stop``)."""


class BrokenWorker(TaskError):
    """The worker process running the task died: a crash, ``os._exit``, a kill, no memory."""


class ShippingError(TaskError):
    """A value could not be sent to a worker process or back; the message names it."""


class RemoteError(TaskError):
    """An exception of a worker that could not be re-created in the kernel.

    Its message is the original exception's last line (``MyError: ...``); its
    traceback shows the cell's lines. ``remote_traceback`` is the text the worker
    printed; ``type_name`` the original type.
    """

    def __init__(self, message: str, remote_traceback: str = "", type_name: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.type_name = type_name


class TaskFailed(TaskError):
    """One or more awaited tasks failed, timed out or were skipped.

    ``failures`` holds their records; the message names every one of them, then
    gives each one's traceback.
    """

    def __init__(self, failures: list[TaskRecord]) -> None:
        self.failures = list(failures)
        names = ", ".join(f"{r.name} ({r.state})" for r in self.failures)
        n = len(self.failures)
        parts = [f"{n} task{'s' if n != 1 else ''} did not succeed: {names}"]
        for record in self.failures:
            parts.append(f"\n--- {record.name}: {record.state} ---\n{record.error_text()}")
        super().__init__("".join(parts).rstrip())

    def _render_traceback_(self) -> list[str]:
        # What IPython shows when a cell raises this: the failed tasks' own tracebacks (in
        # the message), not the frames of the wait that raised it.
        return f"{type(self).__name__}: {self}".splitlines()


class TaskConflictWarning(UserWarning):
    """Two tasks that may run at the same time share a name, so their order decides its value."""


# -- a refused call ----------------------------------------------------------------------


class BadArgument(ValueError):
    """An option, name or target that cannot be taken; the message names it."""


class BadArgumentType(TypeError):
    """A value of the wrong kind for an option, or an unknown option."""


class NotLoaded(RuntimeError):
    """ipytasks is not loaded in this shell (or was unloaded)."""


#: What the magics show as a usage error.
REFUSALS = (BadArgument, BadArgumentType, NotLoaded)

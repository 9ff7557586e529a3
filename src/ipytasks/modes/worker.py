"""The base of the modes whose bodies run in a worker process: process and dask.

Both run a cell in a worker process (:class:`ipytasks.workers.local.Child`), on this
machine or next to a Dask worker; each mode keeps only where that process lives and
how its reply comes home. What a task is to them is :class:`WorkerMode`'s:

* :meth:`WorkerMode.prepare` refuses (``ValueError``), at submission, a cell that cannot
  run in a worker whatever happens: magics, shell commands, ``get_ipython()`` (no IPython
  there), names that cannot be known statically (``exec``, a star import…);
* :meth:`WorkerMode.job` takes the inputs from the namespace when the task starts (a
  ``--map`` item gets its item), and says in the task's output which changes in place
  stay in the worker;
* :meth:`WorkerMode.finish` ends the task with the worker's reply: records what the job
  cost, says which names stayed behind (closed files), shows what the worker displayed,
  and raises the cell's error or merges the names it bound.

The payload itself (:class:`~ipytasks.namespace.shipping.Job`, the reply, the merge) is
:mod:`ipytasks.namespace.shipping`'s.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import costs
from ..cells import MapItemCell
from ..errors import BadArgument, RemoteError, TaskError
from ..namespace.shipping import Job, Reply, merge
from .abc import Mode

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = ("WorkerMode", "cpu_count")

UNKNOWN_NAMES = (
    "task {name!r}: cannot run in a worker process: {reason}, so the names it reads "
    "and binds cannot be known. Use --thread, or make that part of the cell explicit"
)
NEEDS_IPYTHON = (
    "task {name!r}: {what} cannot run in a worker process: magics, shell commands and "
    "get_ipython() need IPython, which exists only in the kernel. Use --thread, or move "
    "{it} to a cell of its own{hint}"
)
SHELL_HINT = " (subprocess.run works in a worker)"
CHANGED_IN_PLACE = (
    "ipytasks: {names} {verb} changed in place in the worker process; that change stays "
    "there (process mode brings back only the names the cell assigns).\n"
)
CLOSED_FILES = "ipytasks: {names} (a closed file) stays in the worker process.\n"


def cpu_count() -> int:
    """The cores this process may use (its affinity), at least 1."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerMode(Mode):
    """A mode whose bodies run in a worker process: shipped inputs, merged outputs."""

    def prepare(self, task: TaskRecord) -> None:
        """Refuse, at submission, a cell that cannot run in a worker whatever happens."""
        # prepared at submission: the task's own cell, never a --map item's
        assert task.cell is not None and not isinstance(task.cell, MapItemCell)
        names = task.cell.names
        if names.unknown:
            raise BadArgument(UNKNOWN_NAMES.format(name=task.name, reason=names.unknown))
        magics = sorted(getattr(names, "magics", ()))
        if magics or "get_ipython" in names.reads:
            parts = [f"%{m}" for m in magics if m != "!"]
            if "!" in magics:
                parts.append("shell commands (!cmd)")
            if not parts:
                parts.append("get_ipython()")
            what = ", ".join(parts)
            it = "them" if len(parts) > 1 else "it"
            hint = SHELL_HINT if "!" in magics else ""
            raise BadArgument(NEEDS_IPYTHON.format(name=task.name, what=what, it=it, hint=hint))

    def job(self, task: TaskRecord) -> Job:
        """The task's job, its inputs taken from the namespace now; its output says which
        in-place changes stay in the worker."""
        cell = task.cell
        assert cell is not None
        if isinstance(cell, MapItemCell):
            # One item of --map: the cell with VAR bound to the item. What an item
            # binds stays in its own scope, so only its result comes back.
            var = cell.function.__code__.co_varnames[0]
            names = cell.cell.names
            job = Job.take(self.shell, cell.cell, names)
            job.inputs.pop(var, None)
            job.inputs[var] = cell.item
            job.binds = job.deletes = frozenset()
            job.placeholders = []
        else:
            names = cell.names
            job = Job.take(self.shell, cell, names)
        job.sample = costs.watching()  # say where the body is while a dashboard shows it
        changed = sorted(set(job.inputs) & (names.mutates - names.binds))
        if changed and task.sink is not None:
            listed = ", ".join(repr(n) for n in changed)
            verb = "is" if len(changed) == 1 else "are"
            task.sink.write("stderr", CHANGED_IN_PLACE.format(names=listed, verb=verb))
        return job

    def finish(self, task: TaskRecord, reply: Reply) -> Any:
        """End the task with the worker's reply: its result, or its error raised."""
        costs.from_worker(task, reply.cost)
        if reply.left and task.sink is not None:
            names = ", ".join(repr(n) for n in reply.left)
            task.sink.write("stderr", CLOSED_FILES.format(names=names))
        if task.sink is not None:  # figures, rendered in the worker
            for data, metadata in reply.displays:
                task.sink.display(data, metadata)
        task._result_display = reply.result_display  # a rendered Figure result
        if reply.error is not None:
            error = reply.error
            del reply
            if isinstance(error, TaskError) and not isinstance(error, RemoteError):
                error = error.with_traceback(None)  # ours: no kernel frames to show
            raise error
        return merge(self.shell.user_ns, reply)

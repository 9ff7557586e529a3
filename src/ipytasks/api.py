"""The Python API: what the magics call, and what a user can call directly."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import BadArgument, BadArgumentType, NotLoaded
from .modes import NEEDS_DASK, dask_available
from .options import Caller, TaskOptions, api_help, checked, identifier, signature
from .output import OutputCapture
from .records import SUCCESSFUL, UNSUCCESSFUL, TaskRecord, TaskRegistry
from .scheduler import Scheduler
from .views import CellDisplays, CellView, TextView

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = (
    "submit", "wait", "cancel", "retry", "result", "results", "tasks", "dashboard", "timeline",
    "graph", "use",
)

#: Every task of the session, by name, in submission order.
tasks = TaskRegistry()

NOT_LOADED = "ipytasks is not loaded: run %load_ext ipytasks first"
NOT_ENDED = "task {name!r} is {state}: %wait {name} first"
UNKNOWN_TASK = "no task named {name!r} (known: {known})"
BAD_USE = (
    "ipytasks.use() takes a distributed.Client, a scheduler address, 'dask' (the cluster in "
    "use, else a LocalCluster started with the first task) or 'local', not {value!r}"
)
CANNOT_CONNECT = "cannot connect to the Dask scheduler at {address!r}: {error}"


class _Session:
    """What a loaded extension holds for one shell; the scheduler starts on first use."""

    def __init__(self, shell: InteractiveShell, mode_settings: dict[str, dict[str, Any]]) -> None:
        self.shell = shell
        self.mode_settings = mode_settings
        self.in_kernel = getattr(shell, "kernel", None) is not None
        self.capture = OutputCapture(shell)
        self.displays = CellDisplays(shell) if self.in_kernel else None
        self._scheduler: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self.capture.install()
            if self.displays is not None:
                self.displays.install()
            echo = None if self.in_kernel else self._echo
            self._scheduler = Scheduler(
                self.shell, tasks, mode_settings=self.mode_settings, echo=echo
            )
        return self._scheduler

    def _echo(self, name: str, text: str) -> None:
        stream = self.capture._streams.get(name)
        target = stream._ipytasks_original if stream is not None else None
        if target is not None:
            target.write(text)
            target.flush()

    def attach_view(self, record: TaskRecord) -> CellView | None:
        """Give a non-quiet task its view; return the one to show in the cell (or ``None``)."""
        if record.options.quiet or record.sink is None:
            return None
        if self.displays is not None:
            view = self.displays.view(record)
            record.sink.attach(view)
            return view
        record.sink.attach(TextView(record, lambda text: self._echo("stdout", text)))
        return None

    def close(self) -> list[TaskRecord]:
        cancelled: list[TaskRecord] = []
        if self._scheduler is not None:
            cancelled = self._scheduler.close()
            self._scheduler = None
        self.capture.uninstall()
        if self.displays is not None:
            self.displays.uninstall()
        tasks._clear()
        return cancelled


_session: _Session | None = None


def _current() -> _Session:
    if _session is None:
        raise NotLoaded(NOT_LOADED)
    return _session


def _check_name(value: Any, what: str) -> str:
    return identifier(value, what)


def submit(code: str, name: str | None = None, **options: Any) -> TaskRecord:
    """Run ``code`` as a background task and return its record at once.

    Takes the options of ``%%parallel`` as keyword arguments, listed below; a ``chain``
    makes it a ``%%sequential`` task of that chain. The task is shown in the current
    cell unless ``quiet``. With ``wait=True`` it blocks until the task ends, which is
    only possible off the event loop: in a notebook cell, use
    ``await ipytasks.wait(name)`` instead.

    :param code: the cell's code.
    :param name: the task's name, a Python identifier (default: ``task1``, ``task2``...).
    {options}

    :raises ValueError: a bad option value (the message names the option), a busy name,
        an unknown ``after`` target, a cycle.
    :raises TypeError: an unknown option, a value of the wrong kind, ``code`` not a str.
    :raises SyntaxError: ``code`` does not parse; no task is created.
    :raises RuntimeError: ipytasks is not loaded.
    """
    if not isinstance(code, str):
        raise BadArgumentType(f"submit() takes the code as a str, not {type(code).__name__}")
    return _submit(code, name, options, "api", number=0)


submit.__signature__ = signature(submit)  # type: ignore[attr-defined]
submit.__doc__ = (submit.__doc__ or "").replace(
    "{options}", api_help().replace("\n", "\n    "))


def _submit(
    code: str, name: str | None, options: dict[str, Any] | TaskOptions, caller: Caller, *,
    number: int, display: bool = True,
) -> TaskRecord:
    """Check ``options`` (as ``caller`` wrote them; checked already when given as
    :class:`TaskOptions`) and submit ``code`` as task ``name``."""
    session = _current()
    opts = options if isinstance(options, TaskOptions) else checked(options, caller)
    scheduler = session.scheduler
    name = _check_name(name, "NAME") if name is not None else scheduler.next_default_name()
    if opts.wait and scheduler.on_loop_thread():
        raise BadArgument(
            "wait=True would block the event loop the task runs on: "
            f"submit it, then `await ipytasks.wait({name!r})`"
        )
    busy = tasks.get(name)
    if display and busy is not None and not busy.state.ended and session.displays is not None:
        view = session.displays.shown_again(busy, code)
        if view is not None:  # the cell that runs it, run again: show it, do not refuse
            return busy
    shown: list[CellView | None] = []
    record = scheduler.submit(
        code, name, opts, number=number, attach=lambda r: shown.append(session.attach_view(r))
    )
    if display and shown and shown[0] is not None:
        shown[0].show()
    if opts.wait:
        scheduler.run_blocking(scheduler.wait([record]))
    return record


async def wait(*targets: str, timeout: float | None = None) -> None:
    """Wait until the named tasks or groups (default: all) have ended.

    Other tasks keep running meanwhile, and cancelling the wait (the kernel's
    interrupt) ends only the wait.

    :raises TaskFailed: listing every awaited task that failed, timed out or was
        skipped, each with its traceback.
    :raises TimeoutError: ``timeout`` seconds passed first; the tasks keep running.
    """
    scheduler = _current().scheduler
    records = scheduler.resolve(targets, "wait")
    await scheduler.await_on_loop(scheduler.wait(records, timeout))


def wait_blocking(*targets: str, timeout: float | None = None) -> None:
    """:func:`wait`, blocking this thread; only off the scheduler's loop thread."""
    scheduler = _current().scheduler
    records = scheduler.resolve(targets, "wait")
    scheduler.run_blocking(scheduler.wait(records, timeout))


def cancel(*targets: str, all: bool = False) -> list[str]:  # noqa: A002 - mirrors %cancel --all
    """Cancel the named tasks or groups (or every task with ``all=True``).

    A pending task never starts; a running body is stopped. Returns
    the names of the tasks that were cancelled.
    """
    if not targets and not all:
        raise BadArgument("name the tasks or groups to cancel, or use --all")
    scheduler = _current().scheduler
    records = scheduler.resolve(() if all else targets, "cancel")
    return [r.name for r in scheduler.cancel(records)]


def retry(name: str | None = None, *, failed: bool = False) -> TaskRecord | list[TaskRecord]:
    """Run a failed, timed-out, cancelled or skipped task's cell again, with its options.

    The new task replaces the old one under the same name (which stays in the history).
    With ``failed=True`` (``%retry --failed``): every task that failed, timed out or
    was cancelled, and every task skipped because of one, again, in the order they
    were submitted (a task before the tasks that wait for it); tasks that succeeded
    are left alone, so a ``--cache`` task they wait for is not run again either.

    :returns: the new record; with ``failed=True``, the list of new records.
    :raises ValueError: no such task, it succeeded or has not ended; both or neither
        of ``name`` and ``failed``.
    """
    if failed:
        if name is not None:
            raise BadArgument("retry: give a NAME or failed=True (--failed), not both")
        _current()
        # The registry is in submission order, and a task only ever waits for tasks
        # submitted before it: resubmitted in this order, each finds the new runs of
        # what it waits for (by chain, --after, or the names it reads) and waits again.
        again = [r for r in tasks.values() if r.parent is None and r.state in UNSUCCESSFUL]
        return [_resubmit(record) for record in again]
    if name is None:
        raise BadArgument("retry: name the task to run again, or use --failed (failed=True)")
    record = _record(name)
    if record.state not in UNSUCCESSFUL:
        hint = "%wait it first" if not record.state.ended else "submit its cell again to rerun it"
        raise BadArgument(
            f"task {name!r} is {record.state}: only a task that did not succeed can be retried "
            f"({hint})"
        )
    return _resubmit(record)


def _resubmit(record: TaskRecord) -> TaskRecord:
    session = _current()
    scheduler = session.scheduler
    number = record.cell.number if record.cell is not None else 0
    shown: list[CellView | None] = []
    new = scheduler.submit(
        record.source, record.name, record.options, number=number,
        attach=lambda r: shown.append(session.attach_view(r)),
    )
    if shown and shown[0] is not None:
        shown[0].show()
    return new


def use(client: Any) -> None:
    """Make a Dask cluster the default for process-mode bodies.

    Afterwards a ``--process`` cell runs on the cluster, as an ``--on dask`` cell
    always does; ``--on local`` keeps one on this machine. ``%tasks_backend`` is the
    magic for it.

    :param client: a ``distributed.Client`` (ipytasks uses it and never closes it);
        a scheduler address such as ``"tcp://10.0.0.5:8786"`` (ipytasks connects now
        and disconnects on unload); ``"dask"`` for the cluster ipytasks already uses,
        else a ``LocalCluster`` that starts with the first task; or ``"local"`` to go
        back to worker processes on this machine.
        A cluster ipytasks used before is let go (closed if ipytasks made it, which
        stops its running tasks).
    :raises ValueError: ``distributed`` is not installed, the address cannot be
        reached, or ``client`` is none of these.
    """
    session = _current()
    scheduler = session.scheduler
    if isinstance(client, str) and client == "local":
        scheduler.backend = "local"
        return
    if not dask_available():
        raise BadArgument(NEEDS_DASK.format(what="ipytasks.use()"))
    from .modes._dask import DaskMode

    current = scheduler.installed_mode("dask")
    if isinstance(client, str) and client == "dask":
        if not isinstance(current, DaskMode):
            scheduler.install_mode(DaskMode(session.shell, **session.mode_settings.get("dask", {})))
    elif isinstance(client, str):
        scheduler.install_mode(DaskMode(session.shell, _connect(client), own_client=True))
    else:
        from distributed import Client

        if not isinstance(client, Client) or client.asynchronous:
            raise BadArgumentType(BAD_USE.format(value=client))
        if not isinstance(current, DaskMode) or current.given_client is not client:
            scheduler.install_mode(DaskMode(session.shell, client))
    scheduler.backend = "dask"


def _connect(address: str) -> Any:
    """A synchronous client of the scheduler at ``address`` (not the session's default client)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BadArgument(CANNOT_CONNECT.format(address=address, error=exc)) from None


def dashboard() -> Any:
    """The live dashboard of every task: a widget in a notebook, a text table elsewhere.

    In a notebook, display the returned widget (or end a cell with it); it follows
    the tasks until it is closed. Outside a kernel, the table is printed instead and
    ``None`` is returned.
    """
    session = _current()
    from .overview import open_dashboard, text_table

    if not session.in_kernel:
        print(text_table(tasks))
        return None
    return open_dashboard(session.scheduler, tasks, displays=session.displays, retry=retry)


def timeline(path: str) -> Any:
    """Write the timeline of every task to ``path`` (``.svg``, or ``.png`` with matplotlib).

    :returns: the path written, as a ``pathlib.Path``.
    :raises ValueError: another suffix, or ``.png`` without matplotlib installed.
    """
    from .overview import write_timeline

    try:
        return write_timeline(tasks, path)
    except (ImportError, ValueError) as exc:
        raise BadArgument(str(exc)) from None


def graph(path: str | os.PathLike[str] | None = None, *, format: str | None = None) -> Any:
    """The task graph: a box per task in its state's colour (a ``--map`` as one box with its
    item count), an arrow per edge: chains thick, ``--after`` dashed, and an edge that
    ipytasks inferred labelled with the names that cause it.

    - ``graph()``: the picture, an ``IPython.display.SVG`` (its ``.data`` is the SVG text);
    - ``graph(format="mermaid")``: Mermaid text, for a README or a code host that draws it;
    - ``graph("pipeline.svg")``, ``graph("pipeline.mmd")``: written to the file (the
      format by its suffix, or by ``format``); returns the path, as a ``pathlib.Path``.

    :raises ValueError: an unknown format or suffix.
    """
    from .overview.graph import (
        graph_format,
        graph_geometry,
        graph_mermaid,
        render_svg,
        states_of,
        write_graph,
    )
    from .taskgraph import task_graph

    session = _session
    if session is not None and session._scheduler is not None:
        snapshot = session._scheduler.graph()
    else:
        snapshot = task_graph(list(tasks.values()))  # nothing runs: the records are still
    try:
        kind = graph_format(path, format)
        if path is not None:
            return write_graph(snapshot, path, kind)
    except ValueError as exc:
        raise BadArgument(str(exc)) from None
    if kind == "mermaid":
        return graph_mermaid(snapshot)
    from IPython.display import SVG

    return SVG(data=render_svg(graph_geometry(snapshot), states_of(snapshot)))


def _record(name: str) -> TaskRecord:
    record = tasks.get(name)
    if record is None:
        raise BadArgument(UNKNOWN_TASK.format(name=name, known=", ".join(tasks) or "none yet"))
    return record


def result(name: str) -> Any:
    """The value of the task's last expression; or its error, raised.

    :raises ValueError: no such task, or it has not ended yet.
    """
    record = _record(name)
    if not record.state.ended:
        raise BadArgument(NOT_ENDED.format(name=name, state=record.state))
    if record.state in SUCCESSFUL:
        return record.result
    assert record.error is not None
    raise record.error


def results(group: str | None = None) -> dict[str, Any]:
    """Results of the tasks that are done (or cached), by name (of ``group`` only, if given)."""
    return {
        name: record.result
        for name, record in tasks.items()
        if record.state in SUCCESSFUL and (group is None or record.options.group == group)
    }

"""The Python API: what the magics call, and what a user can call directly."""

from __future__ import annotations

import inspect
import keyword
import math
import os
from collections.abc import Iterable
from typing import Any

from IPython.core.error import UsageError

from .limits import parse_rate
from .modes import BACKENDS, MODES, NEEDS_DASK, dask_available
from .output import OutputCapture
from .records import SUCCESSFUL, UNSUCCESSFUL, TaskOptions, TaskRecord, TaskRegistry
from .scheduler import Scheduler
from .views import CellDisplays, CellView, TextView

__all__ = (
    "submit", "wait", "cancel", "retry", "result", "results", "tasks", "dashboard", "timeline",
    "graph", "use",
)

#: Every task of the session, by name, in submission order.
tasks = TaskRegistry()

NOT_LOADED = "ipytasks is not loaded: run %load_ext ipytasks first"
BAD_NAME = "{what} must be a Python identifier, not {value!r}"
BAD_CHOICE = "{option} must be one of {choices}, not {value!r}"
BAD_TIMEOUT = "{option} must be a number of seconds greater than 0, not {value!r}"
BAD_RATE = (
    "--rate must be a number of starts above 0, per second or minute (5/s, 120/min), "
    "not {value!r}"
)
NOT_ENDED = "task {name!r} is {state}: %wait {name} first"
UNKNOWN_TASK = "no task named {name!r} (known: {known})"
ON_ERROR_CHOICES = ("stop", "continue")
ON_DASK_MODE = "--on dask runs process-mode bodies on the cluster; drop --mode {mode}"
BAD_USE = (
    "ipytasks.use() takes a distributed.Client, a scheduler address, 'dask' (the cluster in "
    "use, else a LocalCluster started with the first task) or 'local', not {value!r}"
)
CANNOT_CONNECT = "cannot connect to the Dask scheduler at {address!r}: {error}"
CACHE_MAP = (
    "--cache does not combine with --map: a map's items are not stored one by one (each "
    "would need a key of its own, made of the item's value too, and the map's result is "
    "gathered from them). Cache the cell that computes what the map reads, or the cell "
    "that uses the map's result; or, for items that are slow one by one, submit each as "
    "a --cache task of its own (ipytasks.submit(code, name, cache=True) in a loop)"
)
SUBMIT_UNKNOWN = "submit: unknown option {option!r} (options: {known})"
SUBMIT_TYPE = "submit: {error}"


class _Session:
    """What a loaded extension holds for one shell; the scheduler starts on first use."""

    def __init__(self, shell: Any, mode_settings: dict[str, dict[str, Any]]) -> None:
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
        raise UsageError(NOT_LOADED)
    return _session


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise UsageError(BAD_NAME.format(what=what, value=value))
    return value


def _names(value: str | Iterable[str] | None, option: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(
        _check_name(item.strip(), f"each {option} target") for item in items if item.strip()
    )


def make_options(
    *,
    mode: str = "auto",
    after: str | Iterable[str] | None = (),
    group: str | None = None,
    chain: str | None = None,
    on_error: str = "stop",
    timeout: float | None = None,
    wait: bool = False,
    quiet: bool = False,
    retries: int = 0,
    retry_delay: float = 1.0,
    limit: int | None = None,
    rate: float | str | None = None,
    priority: int = 0,
    map: str | tuple[str, str] | None = None,  # noqa: A002 - the option's name
    infer: bool = True,
    strict: bool = False,
    on: str | None = None,
    cache: bool = False,
    cache_key: str | None = None,
) -> TaskOptions:
    """Check options as the magic line or ``submit`` gave them; raise ``UsageError`` naming
    the bad one."""
    if mode not in MODES:
        raise UsageError(BAD_CHOICE.format(option="--mode", choices="|".join(MODES), value=mode))
    if on is not None:
        if on not in BACKENDS:
            raise UsageError(BAD_CHOICE.format(option="--on", choices="|".join(BACKENDS), value=on))
        if on == "dask":
            if mode not in ("auto", "process"):
                raise UsageError(ON_DASK_MODE.format(mode=mode))
            if not dask_available():
                raise UsageError(NEEDS_DASK.format(what="--on dask"))
    if on_error not in ON_ERROR_CHOICES:
        raise UsageError(
            BAD_CHOICE.format(
                option="--on-error", choices="|".join(ON_ERROR_CHOICES), value=on_error
            )
        )
    if timeout is not None:
        try:
            ok = float(timeout) > 0 and math.isfinite(float(timeout))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(BAD_TIMEOUT.format(option="--timeout", value=timeout))
        timeout = float(timeout)
    retries = _whole(retries, "--retries", minimum=0)
    if not _is_number(retry_delay) or float(retry_delay) < 0:
        raise UsageError(
            f"--retry-delay must be a number of seconds, 0 or more, not {retry_delay!r}"
        )
    if limit is not None:
        limit = _whole(limit, "--limit", minimum=1)
    if rate is not None:
        try:
            rate = parse_rate(rate) if isinstance(rate, str) else float(rate)
            if not rate > 0 or not math.isfinite(rate):
                raise ValueError("must be above zero")
        except (TypeError, ValueError):
            raise UsageError(BAD_RATE.format(value=rate)) from None
    priority = _whole(priority, "--priority")
    if map is not None:
        map = _map_spec(map)
    if not isinstance(cache, bool):
        raise UsageError(f"--cache is on or off (True or False), not {cache!r}")
    if cache_key is not None:
        if not isinstance(cache_key, str):
            raise UsageError(f"--cache-key takes an expression as text, not {cache_key!r}")
        try:
            compile(cache_key, "<--cache-key>", "eval")
        except SyntaxError as exc:
            raise UsageError(
                f"--cache-key: {cache_key!r} is not an expression: {exc.msg}"
            ) from None
        cache = True
    if cache and map is not None:
        raise UsageError(CACHE_MAP)
    if (limit is not None or rate is not None) and group is None and map is None:
        option = "--limit" if limit is not None else "--rate"
        raise UsageError(f"{option} applies to a group of tasks: add -g GROUP")
    return TaskOptions(
        mode=mode,
        retries=retries,
        retry_delay=float(retry_delay),
        limit=limit,
        rate=rate,
        priority=priority,
        map=map,
        infer=bool(infer),
        strict=bool(strict),
        after=_names(after, "--after"),
        group=_check_name(group, "--group") if group is not None else None,
        chain=_check_name(chain, "--chain") if chain is not None else None,
        on_error=on_error,
        timeout=timeout,
        wait=bool(wait),
        quiet=bool(quiet),
        on=on,
        cache=cache,
        cache_key=cache_key,
    )


def _map_spec(value: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(value, str):
        var, sep, expr = value.strip().partition(" in ")
    else:
        (var, expr), sep = value, " in "
    var, expr = var.strip(), expr.strip()
    if not sep or not expr:
        raise UsageError(f"--map needs VAR in EXPR (e.g. --map url in urls), not {value!r}")
    _check_name(var, "--map VAR")
    return var, expr


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _whole(value: Any, option: str, minimum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | str)
        or not str(value).lstrip("-").isdigit()
    ):
        raise UsageError(f"{option} must be a whole number, not {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise UsageError(f"{option} must be {minimum} or more, not {number}")
    return number


def submit(code: str, name: str | None = None, **options: Any) -> TaskRecord:
    """Run ``code`` as a background task and return its record at once.

    Takes the options of ``%%parallel`` as keyword arguments (``mode``, ``on``, ``after``,
    ``group``, ``chain``, ``on_error``, ``timeout``, ``wait``, ``quiet``, ``retries``,
    ``retry_delay``, ``limit``, ``rate``, ``priority``, ``map``, ``infer``, ``strict``,
    ``cache``, ``cache_key``); a
    ``chain`` makes it a ``%%sequential`` task of that chain. The task is shown in
    the current cell unless ``quiet``. With ``wait=True`` it blocks until the task
    ends, which is only possible off the event loop: in a notebook cell, use
    ``await ipytasks.wait(name)`` instead.

    :raises UsageError: an unknown or ill-typed option (the message names ``submit``
        and the option), a busy name, an unknown ``after`` target.
    :raises SyntaxError: ``code`` does not parse; no task is created.
    """
    known = [p for p in inspect.signature(make_options).parameters]
    for option in options:
        if option not in known:
            raise UsageError(SUBMIT_UNKNOWN.format(option=option, known=", ".join(known)))
    if not isinstance(code, str):
        raise UsageError(SUBMIT_TYPE.format(error=f"code must be a str, not {type(code).__name__}"))
    try:
        return _submit(code, name, options, number=0)
    except UsageError as exc:
        text = str(exc)
        if text.startswith(("--", "NAME", "each --", "wait=True")):
            raise UsageError(SUBMIT_TYPE.format(error=text)) from None
        raise


def _submit(
    code: str, name: str | None, options: dict[str, Any], *, number: int, display: bool = True
) -> TaskRecord:
    session = _current()
    opts = make_options(**options)
    scheduler = session.scheduler
    name = _check_name(name, "NAME") if name is not None else scheduler.next_default_name()
    if opts.wait and scheduler.on_loop_thread():
        raise UsageError(
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
        raise UsageError("name the tasks or groups to cancel, or use --all")
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
    :raises UsageError: no such task, it succeeded or has not ended; both or neither
        of ``name`` and ``failed``.
    """
    if failed:
        if name is not None:
            raise UsageError("retry: give a NAME or failed=True (--failed), not both")
        _current()
        # The registry is in submission order, and a task only ever waits for tasks
        # submitted before it: resubmitted in this order, each finds the new runs of
        # what it waits for (by chain, --after, or the names it reads) and waits again.
        again = [r for r in tasks.values() if r.parent is None and r.state in UNSUCCESSFUL]
        return [_resubmit(record) for record in again]
    if name is None:
        raise UsageError("retry: name the task to run again, or use --failed (failed=True)")
    record = _record(name)
    if record.state not in UNSUCCESSFUL:
        hint = "%wait it first" if not record.state.ended else "submit its cell again to rerun it"
        raise UsageError(
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
    :raises UsageError: ``distributed`` is not installed, the address cannot be
        reached, or ``client`` is none of these.
    """
    session = _current()
    scheduler = session.scheduler
    if isinstance(client, str) and client == "local":
        scheduler.backend = "local"
        return
    if not dask_available():
        raise UsageError(NEEDS_DASK.format(what="ipytasks.use()"))
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
            raise UsageError(BAD_USE.format(value=client))
        if not isinstance(current, DaskMode) or current.given_client is not client:
            scheduler.install_mode(DaskMode(session.shell, client))
    scheduler.backend = "dask"


def _connect(address: str) -> Any:
    """A synchronous client of the scheduler at ``address`` (not the session's default client)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(CANNOT_CONNECT.format(address=address, error=exc)) from None


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
    return open_dashboard(session.scheduler, tasks, displays=session.displays)


def timeline(path: str) -> Any:
    """Write the timeline of every task to ``path`` (``.svg``, or ``.png`` with matplotlib).

    :returns: the path written, as a ``pathlib.Path``.
    :raises UsageError: another suffix, or ``.png`` without matplotlib installed.
    """
    from .overview import write_timeline

    try:
        return write_timeline(tasks, path)
    except (ImportError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def graph(path: str | os.PathLike[str] | None = None, *, format: str | None = None) -> Any:
    """The task graph: a box per task in its state's colour (a ``--map`` as one box with its
    item count), an arrow per edge: chains thick, ``--after`` dashed, and an edge that
    ipytasks inferred labelled with the names that cause it.

    - ``graph()``: the picture, an ``IPython.display.SVG`` (its ``.data`` is the SVG text);
    - ``graph(format="mermaid")``: Mermaid text, for a README or a code host that draws it;
    - ``graph("pipeline.svg")``, ``graph("pipeline.mmd")``: written to the file (the
      format by its suffix, or by ``format``); returns the path, as a ``pathlib.Path``.

    :raises UsageError: an unknown format or suffix.
    """
    from .dependencies import task_graph
    from .overview.taskgraph import (
        graph_format,
        graph_geometry,
        graph_mermaid,
        render_svg,
        states_of,
        write_graph,
    )

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
        raise UsageError(str(exc)) from None
    if kind == "mermaid":
        return graph_mermaid(snapshot)
    from IPython.display import SVG

    return SVG(data=render_svg(graph_geometry(snapshot), states_of(snapshot)))


def _record(name: str) -> TaskRecord:
    record = tasks.get(name)
    if record is None:
        raise UsageError(UNKNOWN_TASK.format(name=name, known=", ".join(tasks) or "none yet"))
    return record


def result(name: str) -> Any:
    """The value of the task's last expression; or its error, raised.

    :raises UsageError: no such task, or it has not ended yet.
    """
    record = _record(name)
    if not record.state.ended:
        raise UsageError(NOT_ENDED.format(name=name, state=record.state))
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

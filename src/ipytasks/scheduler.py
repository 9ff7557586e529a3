"""The scheduler: the one object a session holds, tying the parts of running tasks together.

- :class:`~ipytasks.taskgraph.TaskGraph`: the tasks and what each waits for
  (synchronous: registration, chains, ``--after``, inferred edges, conflicts);
- :class:`~ipytasks.running.TaskRunner`: the life of each task, from waiting for its
  upstream to its end (limits, attempts through its mode, retries, timeouts);
- :class:`~ipytasks.loop.LoopHost`: the event loop all of it runs on, and how other
  threads reach it;
- :class:`~ipytasks.changes.Changes`: where every change of a task is told, for its
  views and the dashboards.

A submission compiles and checks the cell on the submitting thread, then hops onto the
loop, where the graph makes the task's record, the runner prepares it, the graph adds it,
its views are attached and the runner starts it. The scheduler also owns the run modes
(made on first use) and the ``--cache`` store.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from . import plots, reports
from .cache.outcome import FLUSH_TIMEOUT, ResultCache
from .cells import CompiledCell, compile_cell
from .changes import ChangeFeed, Changes
from .dependencies import TaskNames, task_names
from .errors import BadArgument, NotLoaded
from .loop import LoopHost
from .modes import Mode, get_mode_class
from .records import TaskOptions, TaskRecord, TaskRegistry
from .running import TaskRunner
from .taskgraph import GraphSnapshot, TaskGraph

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ("Scheduler",)

T = TypeVar("T")

ASYNC_IN_THREAD = (
    "task {name!r}: the cell uses top-level await, which runs only on the event loop; "
    "use --mode async (or auto) instead of --mode thread"
)
UNLOADED = "ipytasks is unloaded: %load_ext ipytasks to submit tasks again"
UNLOAD_WRITING = (
    "ipytasks: {n} --cache entr{s} still being written; the kernel finishes them unless "
    "it is killed (then they are not stored, and the tasks run again)"
)
SHUTDOWN_NOTICE = "ipytasks: the kernel is shutting down; cancelled {n} unfinished task{s}: {names}"


class Scheduler:
    """Owns every task of a session: registration, order, running and ending (see the module).

    :param shell: the IPython shell whose namespace the tasks use.
    :param loop: the running loop to use; ``None`` picks the kernel's running loop
        when there is a kernel, and otherwise starts a loop of its own in a thread.
    :param mode_settings: keyword arguments for each mode's constructor, by mode name.
    :param echo: receives every task's stream text as it comes (a terminal).
    """

    def __init__(
        self,
        shell: InteractiveShell,
        registry: TaskRegistry,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        mode_settings: dict[str, dict[str, Any]] | None = None,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.shell = shell
        self.tasks = registry
        self._mode_settings = mode_settings or {}
        self._host = LoopHost.for_shell(shell, loop, at_exit=self._at_exit)
        self._modes: dict[str, Mode] = {}
        #: Where process-mode bodies run unless ``--on`` says: "local" or "dask".
        self.backend = "local"
        # The tasks and what each waits for.
        self._graph = TaskGraph(registry)
        #: Where every change of a task's status is told (its views and followers hear it).
        self.changes = Changes()
        self._result_cache: ResultCache | None = None
        self._runner = TaskRunner(shell, self._host.loop, self._graph, self.changes,
                                  mode=self._mode, result_cache=self.result_cache, echo=echo)
        self._closed = False
        plots.install()  # pyplot's figures per task, from now until close()
        # Tasks whose progress changed, told at the loop's next turn.
        self._progressing: set[TaskRecord] = set()
        reports.install(self._progressed)  # tasks' tqdm bars are told, not drawn

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._host.loop

    # -- submitting -------------------------------------------------------------------

    def next_default_name(self) -> str:
        """A fresh ``taskN`` name for a submission that gave none."""
        return self._graph.next_default_name()

    def submit(
        self,
        source: str,
        name: str,
        options: TaskOptions,
        *,
        number: int = 0,
        attach: Callable[[TaskRecord], None] | None = None,
    ) -> TaskRecord:
        """Register ``source`` as task ``name`` and start driving it; return its record.

        ``attach`` is called with the record on the loop thread before the task can
        start, to give it views.

        :raises SyntaxError: the cell does not parse (no task is created).
        :raises ValueError: a name that is busy, an unknown ``--after`` target, a cycle.
        """
        if self._closed:
            raise NotLoaded(UNLOADED)
        cell = compile_cell(self.shell, source, number)
        mode = options.mode
        if options.on == "dask" and mode == "auto":
            mode = "process"
        if mode == "auto":
            mode = "async" if cell.is_async else "thread"
        elif mode == "thread" and cell.is_async:
            raise BadArgument(ASYNC_IN_THREAD.format(name=name))
        elif mode == "process" and (options.on or self.backend) == "dask":
            mode = "dask"  # the process-mode payload, on a Dask cluster
        if options.map is not None:
            _check_map_expression(options.map)
        names = task_names(cell, options)
        if options.map is None:
            runner = self._mode(mode)
            if getattr(type(runner), "prepare", None) is not Mode.prepare:  # it may refuse
                probe = TaskRecord(name=name, source=source, options=options, cell=cell,
                                   mode=mode)
                runner.prepare(probe)
        return self._host.call(self._register, source, name, options, cell, mode, names, attach)

    def _register(
        self,
        source: str,
        name: str,
        options: TaskOptions,
        cell: CompiledCell,
        mode: str,
        names: TaskNames,
        attach: Callable[[TaskRecord], None] | None,
    ) -> TaskRecord:
        if self._closed:
            raise NotLoaded(UNLOADED)
        record = self._graph.new_task(source, name, options, cell, mode, names)
        runner = self._runner
        runner.prepare(record)
        self._graph.add(record, names)
        if attach is not None:
            attach(record)
        runner.start(record)
        self.changes.changed(record)
        return record

    def resolve(self, targets: Iterable[str], option: str) -> list[TaskRecord]:
        """Records for names and groups (see :meth:`TaskGraph.resolve`)."""
        return self._graph.resolve(targets, option)

    def graph(self) -> GraphSnapshot:
        """The task graph now, read-only: every task (a ``--map`` as one node) and every
        edge with its kind and the names that cause it (:func:`~ipytasks.taskgraph.task_graph`).
        Read on the loop thread, so no task changes while it is read."""
        return self._host.call(self._graph.snapshot)

    # -- modes and the cache -------------------------------------------------------------

    def result_cache(self) -> ResultCache:
        """The store of ``--cache`` outcomes (its folder is found on first use)."""
        if self._result_cache is None:
            self._result_cache = ResultCache(self.shell)
        return self._result_cache

    def install_mode(self, mode: Mode) -> None:
        """Make ``mode`` the instance used for tasks of mode ``mode.name``."""
        old = self._modes.get(mode.name)
        if old is not None and old is not mode:
            old.close()
        self._modes[mode.name] = mode

    def configure(self, settings: dict[str, dict[str, Any]]) -> list[str]:
        """Apply changed mode settings (``%config TaskMagics…`` after loading): modes not
        made yet are made with them, the thread pool and the local worker pool resize.
        Returns what keeps its old value, and why."""
        for name, values in settings.items():
            self._mode_settings.setdefault(name, {}).update(values)
        return self._host.call(self._configure_modes, settings)

    def _configure_modes(self, settings: dict[str, dict[str, Any]]) -> list[str]:
        thread, process = self._modes.get("thread"), self._modes.get("process")
        if thread is not None:
            thread.resize(settings["thread"]["max_threads"])  # type: ignore[attr-defined]
        if process is not None:
            process.resize(settings["process"]["max_workers"])  # type: ignore[attr-defined]
        dask = self._modes.get("dask")
        n_workers = settings["dask"]["n_workers"]
        cluster = getattr(dask, "cluster", None)
        if cluster is not None and n_workers is not None and n_workers != dask.n_workers:  # type: ignore[union-attr]
            return [f"the Dask LocalCluster already running keeps its {dask.n_workers} "  # type: ignore[union-attr]
                    "workers (a new one, after %unload_ext and %load_ext, starts with "
                    f"{n_workers})"]
        return []

    def installed_mode(self, name: str) -> Mode | None:
        """The instance of mode ``name`` in use, if one was made or installed."""
        return self._modes.get(name)

    def _mode(self, name: str) -> Mode:
        mode = self._modes.get(name)
        if mode is None:
            cls = get_mode_class(name)
            mode = self._modes[name] = cls(self.shell, **self._mode_settings.get(name, {}))
        return mode

    # -- following, waiting and cancelling ---------------------------------------------

    def subscribe(self, wake: Callable[[bool], None]) -> ChangeFeed:
        """Follow the tasks' changes (a dashboard does): see :class:`ChangeFeed`."""
        return self.changes.follow(wake)

    def unsubscribe(self, feed: ChangeFeed) -> None:
        self.changes.unfollow(feed)

    def _progressed(self, record: TaskRecord) -> None:
        """A task's progress changed (any thread): it is told on the loop, once for the
        changes made until then; each view then throttles its refresh as for any change."""
        if record in self._progressing:
            return
        self._progressing.add(record)
        try:
            self.loop.call_soon_threadsafe(
                self._show_progress, record, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: ipytasks was unloaded
            pass

    def _show_progress(self, record: TaskRecord) -> None:
        self._progressing.discard(record)
        self.changes.changed(record)

    async def wait(self, records: list[TaskRecord], timeout: float | None = None) -> None:
        """Wait until every record has ended; raise :class:`TaskFailed` for the failures.

        Cancelling the wait (an interrupt) leaves the tasks running.
        """
        await self._runner.wait(records, timeout)

    def cancel(self, records: Iterable[TaskRecord]) -> list[TaskRecord]:
        """Cancel the records that have not ended; return those."""
        return self._host.call(self._runner.cancel, list(records))

    def run_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block this thread until it ends (not the loop thread)."""
        return self._host.run_blocking(coro)

    def on_loop_thread(self) -> bool:
        return self._host.on_loop_thread()

    async def await_on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the scheduler's loop, from a coroutine on any loop."""
        return await self._host.await_on_loop(coro)

    # -- closing ----------------------------------------------------------------------

    def close(self) -> list[TaskRecord]:
        """Cancel every unfinished task, release the modes, stop an own loop."""
        if self._closed:
            return []
        self._closed = True
        unfinished = [r for r in self.tasks.values() if not r.state.ended]
        try:
            # Ended at once: the loop may not run again before the caller looks.
            self._host.call(self._runner.cancel_now, unfinished, "ipytasks was unloaded")
            if self._result_cache is not None:
                # Entries of tasks that ended are still being written: not lost silently.
                left = self._result_cache.flush(FLUSH_TIMEOUT)
                if left:
                    print(UNLOAD_WRITING.format(n=left, s="y" if left == 1 else "ies"))
        finally:
            for mode in self._modes.values():
                mode.close()
            self._modes.clear()
            self._host.close()
            plots.uninstall()
            reports.uninstall()
        return unfinished

    def _at_exit(self) -> None:
        unfinished = [r for r in self.tasks.values() if not r.state.ended]
        if unfinished:
            names = ", ".join(r.name for r in unfinished)
            s = "s" if len(unfinished) != 1 else ""
            stream = sys.__stderr__
            if stream is not None:
                print(SHUTDOWN_NOTICE.format(n=len(unfinished), s=s, names=names), file=stream)
        for mode in self._modes.values():
            mode.close()


def _check_map_expression(spec: tuple[str, str]) -> None:
    var, expr = spec
    if not var.isidentifier():
        raise BadArgument(f"--map: {var!r} is not a name to bind each item to (--map VAR in EXPR)")
    try:
        compile(expr, "<--map>", "eval")
    except SyntaxError as exc:
        raise BadArgument(f"--map: {expr!r} is not an expression: {exc.msg}") from None

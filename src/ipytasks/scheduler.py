"""The scheduler: registers tasks, orders them, runs each through its mode, ends it.

All of the scheduler's state changes on one event loop thread: the kernel's own
loop in a kernel (where the magics already run), or a loop of ipytasks' own in a
daemon thread where no loop runs between cells (terminal IPython, a script).
Calls from other threads hop onto the loop (:meth:`_LoopHost.call`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from IPython.core.error import UsageError

from . import plots
from .cache.outcome import FLUSH_TIMEOUT, Plan, ResultCache
from .cells import CompiledCell, MapItemCell, compile_cell, compile_map_function
from .changes import ChangeFeed, Changes
from .dependencies import TaskNames, task_names
from .limits import Limiter, RateLimiter
from .loop import LoopHost
from .modes import Mode, get_mode_class
from .output import TaskOutput, current_output
from .records import (
    SUCCESSFUL,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskOptions,
    TaskRecord,
    TaskRegistry,
    TaskSkipped,
    TaskState,
)
from .taskgraph import TaskGraph

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
FIGURE_FAILED = "ipytasks: could not show a figure of this task: {error}\n"
SHUTDOWN_NOTICE = "ipytasks: the kernel is shutting down; cancelled {n} unfinished task{s}: {names}"

#: Upstream states that let a task run under --on-error stop.
_SUCCESS = SUCCESSFUL
#: Outcomes of an attempt that --retries runs again.
_RETRYABLE = (TaskState.FAILED, TaskState.TIMED_OUT)
#: The longest wait before a retry, in seconds: the doubling stops there (as tenacity's
#: ``wait_exponential(max=…)`` and the capped backoff of cloud SDKs do), so ``--retries 20``
#: retries every minute or so at the end rather than after 2**19 times the first delay. A
#: ``--retry-delay`` above it is used as it is, without doubling.
RETRY_DELAY_MAX = 60.0
#: The spread of a retry's delay around its nominal value (a fraction either way), so that
#: tasks failing together do not retry in lockstep.
RETRY_JITTER = 0.2


class Scheduler:
    """Owns every task of a session: registration, order, running and ending.

    :param shell: the IPython shell whose namespace the tasks use.
    :param loop: the running loop to use; ``None`` picks the kernel's running loop
        when there is a kernel, and otherwise starts a loop of its own in a thread.
    :param mode_settings: keyword arguments for each mode's constructor, by mode name.
    :param echo: receives every task's stream text as it comes (a terminal).
    """

    def __init__(
        self,
        shell: Any,
        registry: TaskRegistry,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        mode_settings: dict[str, dict[str, Any]] | None = None,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.shell = shell
        self.tasks = registry
        self._mode_settings = mode_settings or {}
        self._echo = echo
        self._host = LoopHost.for_shell(shell, loop, at_exit=self._at_exit)
        self._modes: dict[str, Mode] = {}
        #: Where process-mode bodies run unless ``--on`` says: "local" or "dask".
        self.backend = "local"
        #: The tasks and what each waits for.
        self.graph = TaskGraph(registry)
        #: Where every change of a task's status is told (its views and followers hear it).
        self.changes = Changes()
        self._limiters: dict[str, Limiter] = {}
        self._rates: dict[str, RateLimiter] = {}
        self._result_cache: ResultCache | None = None
        self._closed = False
        plots.install()  # pyplot's figures per task, from now until close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._host.loop

    # -- submitting -------------------------------------------------------------------

    def next_default_name(self) -> str:
        """A fresh ``taskN`` name for a submission that gave none."""
        return self.graph.next_default_name()

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
        :raises UsageError: a name that is busy, an unknown ``--after`` target, a cycle.
        """
        if self._closed:
            raise UsageError(UNLOADED)
        cell = compile_cell(self.shell, source, number)
        mode = options.mode
        if options.on == "dask" and mode == "auto":
            mode = "process"
        if mode == "auto":
            mode = "async" if cell.is_async else "thread"
        elif mode == "thread" and cell.is_async:
            raise UsageError(ASYNC_IN_THREAD.format(name=name))
        elif mode == "process" and (options.on or self.backend) == "dask":
            mode = "dask"  # the process-mode payload, on a Dask cluster
        if options.map is not None:
            _check_map_expression(options.map)
        names = task_names(cell, options)
        if options.map is None:
            probe = TaskRecord(name=name, source=source, options=options, cell=cell, mode=mode)
            self._mode(mode).prepare(probe)
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
            raise UsageError(UNLOADED)
        record = self.graph.new_task(source, name, options, cell, mode, names)
        options = record.options
        if options.map is not None and all(u.state.ended for u in record.upstream):
            # Nothing it waits for is unfinished: evaluate EXPR now, so a bad one is a
            # usage error in the submitting cell rather than a failed task.
            try:
                record._map_items = self._map_items(options.map[1])
            except Exception as exc:  # noqa: BLE001 - whatever EXPR raises, said plainly
                text = str(exc)
                if not text.startswith("--map"):
                    text = f"--map: {type(exc).__name__}: {text}"
                raise UsageError(text) from None
        record.sink = TaskOutput(self.loop, self._echo)
        record.sink.owner = record
        record._ended_event = asyncio.Event()
        self.graph.add(record, names)
        self._set_group_limits(options)
        if attach is not None:
            attach(record)
        # A fresh context per task: the output variable set inside it stays its own.
        record._runner = self.loop.create_task(
            self._drive(record), name=f"ipytasks:{name}", context=contextvars.copy_context()
        )
        self.changes.changed(record)
        return record

    def _set_group_limits(self, options: TaskOptions) -> None:
        """``--limit``/``--rate`` set the group's limit and rate (the latest given wins)."""
        group = options.group
        if group is None:
            return
        if options.limit is not None:
            limiter = self._limiters.get(group)
            if limiter is None:
                self._limiters[group] = Limiter(options.limit)
            else:
                limiter.set_capacity(options.limit)
        if options.rate is not None:
            rater = self._rates.get(group)
            if rater is None:
                self._rates[group] = RateLimiter(options.rate)
            else:
                rater.set_rate(options.rate)

    def resolve(self, targets: Iterable[str], option: str) -> list[TaskRecord]:
        """Records for names and groups (see :meth:`TaskGraph.resolve`)."""
        return self.graph.resolve(targets, option)

    # -- running ----------------------------------------------------------------------

    async def _drive(self, record: TaskRecord) -> None:
        """The life of one task. Nothing may escape: an error here would reach the loop."""
        current_output.set(record.sink)
        try:
            for upstream in record.upstream:
                await upstream._ended_event.wait()
            if record.options.on_error == "stop":
                bad = [u for u in record.upstream if u.state not in _SUCCESS]
                if bad:
                    why = ", ".join(f"{u.name!r} {u.state}" for u in bad)
                    self._end(record, TaskState.SKIPPED, error=TaskSkipped(f"upstream {why}"))
                    return
            options = record.options
            if options.map is not None:
                await self._drive_map(record)
                return
            plan = None
            if options.cache:
                plan = await self._cache_lookup(record)
                if record.state.ended:  # taken from the cache
                    return
            while True:
                state, result, error = await self._gated_attempt(record)
                if state in _RETRYABLE and record.attempts <= options.retries:
                    await self._back_off(record, error)
                    continue
                writing = None
                if state is TaskState.DONE and plan is not None:
                    # Before the end: nothing that waits for it changes its values meanwhile.
                    writing = await self.result_cache().keep(record, plan, result)
                self._end(record, state, result=result, error=error)
                if writing is not None:  # its entry is written after the end
                    writing.add_done_callback(functools.partial(self._written, record))
                return
        except asyncio.CancelledError:
            self._end(
                record,
                TaskState.CANCELLED,
                error=TaskCancelled(f"task {record.name!r} was cancelled"),
            )
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt/SystemExit included
            self._end(record, TaskState.FAILED, error=exc)

    def result_cache(self) -> ResultCache:
        """The store of ``--cache`` outcomes (its folder is found on first use)."""
        if self._result_cache is None:
            self._result_cache = ResultCache(self.shell)
        return self._result_cache

    def _written(self, record: TaskRecord, writing: concurrent.futures.Future[str | None]) -> None:
        """On the cache's writer thread: a write that failed has changed the task's
        note; show it in the task's views."""
        if writing.cancelled() or writing.exception() is not None:
            return
        why = writing.result()
        if why is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: ipytasks was unloaded
            self.loop.call_soon_threadsafe(
                self.changes.amended, record, f"not stored: {why}", context=contextvars.Context()
            )

    async def _cache_lookup(self, record: TaskRecord) -> Plan | None:
        """End ``record`` as cached when its outcome is stored; else the plan to store it."""
        cache = self.result_cache()
        plan = cache.plan(record)
        if plan.key is None:
            record.cache_note = f"not cached: {plan.refused}"
            return None
        record.cache_key = plan.key
        try:
            hit, result = await cache.replay(record, plan)
        except OSError as exc:  # the folder cannot be read: run, and try to store
            record.cache_note = f"cache unreadable ({exc.strerror or exc})"
            return plan
        if hit:
            record.started = time.time()
            record.attempts = 1
            self._end(record, TaskState.CACHED, result=result)
        return plan

    async def _drive_map(self, record: TaskRecord) -> None:
        """Evaluate the map's EXPR, run one item task per value, gather their results."""
        assert record.options.map is not None  # only --map tasks are driven here
        cell = record.cell
        assert isinstance(cell, CompiledCell)  # a --map task's own cell, not an item's
        var, expr = record.options.map
        record.state = TaskState.RUNNING
        record.started = time.time()
        record.attempts = 1
        items = record._map_items
        if items is None:
            items = self._map_items(expr)
        function = compile_map_function(cell, var, self.shell.user_ns)
        child_options = dataclasses.replace(
            record.options, map=None, chain=None, after=(), quiet=True, wait=False, mode=record.mode
        )
        for index, item in enumerate(items):
            child = TaskRecord(
                name=f"{record.name}[{index}]",
                source=record.source,
                options=child_options,
                cell=MapItemCell(cell, function, item),
                mode=record.mode,
                parent=record,
            )
            child.sink = TaskOutput(self.loop, _prefixed(record.sink, f"[{index}] "))
            child.sink.owner = child
            child._ended_event = asyncio.Event()
            record.children.append(child)
            self.graph.add_item(child)
            child._runner = self.loop.create_task(
                self._drive(child),
                name=f"ipytasks:{child.name}",
                context=contextvars.copy_context(),
            )
        self.changes.changed(record)
        try:
            for child in record.children:
                await child._ended_event.wait()
        except asyncio.CancelledError:
            for child in record.children:
                if child._runner is not None and not child.state.ended:
                    child._runner.cancel()
            raise
        failures = [
            c for c in record.children
            if c.state in (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.SKIPPED)
        ]
        if failures:
            self._end(record, TaskState.FAILED, error=TaskFailed(failures))
        elif any(c.state is TaskState.CANCELLED for c in record.children):
            self._end(record, TaskState.CANCELLED, error=TaskCancelled("items were cancelled"))
        else:
            self._end(record, TaskState.DONE, result=[c.result for c in record.children])

    def _map_items(self, expr: str) -> list[Any]:
        """The items of a map: EXPR evaluated in the notebook's namespace, as a list."""
        values = eval(compile(expr, "<--map>", "eval"), self.shell.user_ns)  # noqa: S307
        try:
            return list(values)
        except TypeError:
            error = TypeError(f"--map: {expr!r} is not iterable (it is a {type(values).__name__})")
        raise error

    async def _gated_attempt(
        self, record: TaskRecord
    ) -> tuple[TaskState, Any, BaseException | None]:
        """One attempt, once the group's limit and rate let it start."""
        options = record.options
        limiter = self._limiters.get(options.group) if options.group is not None else None
        rater = self._rates.get(options.group) if options.group is not None else None
        if limiter is not None:
            if limiter.running >= limiter.capacity or limiter.waiting:
                record.pending_reason = (
                    f"limit {limiter.capacity} in group {options.group} "
                    f"({limiter.running} running, {limiter.waiting + 1} waiting)"
                )
                self.changes.changed(record)
            await limiter.acquire(options.priority)
        try:
            if rater is not None:
                record.pending_reason = f"rate {rater.rate:g}/s in group {options.group}"
                await rater.acquire(options.priority)
            record.pending_reason = None
            return await self._attempt(record)
        finally:
            if limiter is not None:
                limiter.release()

    async def _back_off(self, record: TaskRecord, error: BaseException | None) -> None:
        options = record.options
        done, total = record.attempts, options.retries + 1
        delay = retry_delay(done, options.retry_delay)
        if error is not None:
            assert record.sink is not None  # set at registration
            record.failures.append(error)
            record.sink.write(
                "stderr",
                f"attempt {done}/{total} failed: {type(error).__name__}: {error}; "
                f"retry {done + 1}/{total} in {delay:.1f}s\n",
            )
        record.state = TaskState.PENDING
        record.pending_reason = f"retry {done + 1}/{total} in {delay:.1f}s"
        self.changes.changed(record)
        await asyncio.sleep(delay)
        record.pending_reason = None

    async def _attempt(self, record: TaskRecord) -> tuple[TaskState, Any, BaseException | None]:
        """Run the body once through its mode; return how it ended (never raises but cancel)."""
        assert record.sink is not None  # set at registration
        record.state = TaskState.RUNNING
        if record.started is None:
            record.started = time.time()
        record.attempts += 1
        self.changes.changed(record)
        mode = self._mode(record.mode)
        timeout = record.options.timeout
        deadline = asyncio.timeout(timeout)
        record._result_display = None
        # pyplot's current figure is this attempt's own; what it leaves open is shown below.
        figures = plots.open_task_figures()
        try:
            async with deadline:
                result = await mode.run(record)
        except TimeoutError as exc:
            if deadline.expired():
                plots.show_figures(figures, self.shell, record.sink, name=record.name, show=False)
                message = f"task {record.name!r} timed out after {timeout:g} s"
                return TaskState.TIMED_OUT, None, TimeoutError(message)
            await self._show_figures(record, figures)
            return TaskState.FAILED, None, exc
        except asyncio.CancelledError:
            plots.show_figures(figures, self.shell, record.sink, name=record.name, show=False)
            raise
        except BaseException as exc:  # noqa: BLE001 - a task's failure, whatever it raised
            await self._show_figures(record, figures)
            return TaskState.FAILED, None, exc
        await self._show_figures(record, figures, result)
        return TaskState.DONE, result, None

    async def _show_figures(self, record: TaskRecord, figures: Any, result: Any = None) -> None:
        """Show the figures the body left open in its output, rendered off the loop."""
        if not figures:
            return
        if record.cell is not None and record.cell.quiet_result:
            result = None  # a cell ending in `fig;` still shows its open figures
        assert record.sink is not None  # set at registration
        try:
            await asyncio.to_thread(
                plots.show_figures, figures, self.shell, record.sink,
                result=result, name=record.name,
            )
        except Exception as exc:  # noqa: BLE001 - a figure that cannot render is said, not fatal
            record.sink.write("stderr", FIGURE_FAILED.format(error=f"{type(exc).__name__}: {exc}"))

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

    def _end(
        self,
        record: TaskRecord,
        state: TaskState,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if record.state.ended:
            return
        last = self.graph.ended(record)
        record.state = state
        record.ended = time.time()
        record.result = result
        record.error = error
        sink = record.sink
        assert sink is not None
        assert record.cell is not None  # both set at registration
        if error is not None and state in (TaskState.FAILED,):
            _trim_traceback(error, record.cell)
            self._show_error(record, error)
        elif state in SUCCESSFUL and result is not None and not record.cell.quiet_result:
            self._show_result(record, result)
        self.changes.changed(record)
        if last:
            # Before the end event is set: whoever awaits it finds the followers told.
            self.changes.idle()
        record._ended_event.set()
        if record.parent is not None and not record.parent.state.ended:
            self.changes.changed(record.parent)  # "k of n done"

    def _show_result(self, record: TaskRecord, result: Any) -> None:
        assert record.sink is not None  # set at registration
        rendered = record._result_display  # a figure a worker process rendered for it
        if rendered is not None:
            record.sink.display(*rendered)
            return
        try:
            data, metadata = self.shell.display_formatter.format(result)
        except Exception:  # noqa: BLE001 - a broken repr must not fail a finished task
            data, metadata = {"text/plain": object.__repr__(result)}, {}
        if data:
            record.sink.display(data, metadata)

    def _show_error(self, record: TaskRecord, error: BaseException) -> None:
        try:
            # tb_offset=0: the traceback already starts at the cell (the shell's own
            # offset of 1 would hide the cell's only frame on IPython 8).
            lines = self.shell.InteractiveTB.structured_traceback(
                type(error), error, error.__traceback__, tb_offset=0
            )
        except Exception:  # noqa: BLE001
            import traceback

            lines = traceback.format_exception(error)
        assert record.sink is not None  # set at registration
        record.sink.error(type(error).__name__, str(error), list(lines))

    def subscribe(self, wake: Callable[[bool], None]) -> ChangeFeed:
        """Follow the tasks' changes (a dashboard does): see :class:`ChangeFeed`."""
        return self.changes.follow(wake)

    def unsubscribe(self, feed: ChangeFeed) -> None:
        self.changes.unfollow(feed)

    # -- waiting and cancelling ---------------------------------------------------------

    async def wait(self, records: list[TaskRecord], timeout: float | None = None) -> None:
        """Wait until every record has ended; raise :class:`TaskFailed` for the failures.

        Cancelling the wait (an interrupt) leaves the tasks running.
        """
        try:
            async with asyncio.timeout(timeout):
                for record in records:
                    await record._ended_event.wait()
        except TimeoutError:
            open_ = ", ".join(f"{r.name} ({r.state})" for r in records if not r.state.ended)
            raise TimeoutError(f"still unfinished after {timeout:g} s: {open_}") from None
        failures = [
            r
            for r in records
            if r.state in (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.SKIPPED)
        ]
        if failures:
            raise TaskFailed(failures)

    def cancel(self, records: Iterable[TaskRecord]) -> list[TaskRecord]:
        """Cancel the records that have not ended; return those."""
        return self._host.call(self._cancel, list(records))

    def _cancel(self, records: list[TaskRecord]) -> list[TaskRecord]:
        cancelled = []
        for record in records:
            if not record.state.ended and record._runner is not None:
                record._runner.cancel()
                cancelled.append(record)
        return cancelled

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

        def finish() -> None:
            for record in unfinished:
                if record._runner is not None:
                    record._runner.cancel()
                # Mark it now: the loop may not run again before the caller looks.
                self._end(record, TaskState.CANCELLED, error=TaskCancelled("ipytasks was unloaded"))

        try:
            self._host.call(finish)
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


def retry_delay(failed: int, base: float, *, cap: float = RETRY_DELAY_MAX) -> float:
    """Seconds to wait after attempt ``failed`` (1, 2, …) failed: ``base`` doubling with
    each attempt, jittered by :data:`RETRY_JITTER`, and never more than ``max(cap, base)``."""
    cap = max(cap, base)
    nominal = base * 2.0 ** min(failed - 1, 64)  # past 2**64 the cap has long applied
    return min(nominal * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER), cap)


def _check_map_expression(spec: tuple[str, str]) -> None:
    var, expr = spec
    if not var.isidentifier():
        raise UsageError(f"--map: {var!r} is not a name to bind each item to (--map VAR in EXPR)")
    try:
        compile(expr, "<--map>", "eval")
    except SyntaxError as exc:
        raise UsageError(f"--map: {expr!r} is not an expression: {exc.msg}") from None


def _prefixed(sink: TaskOutput | None, prefix: str) -> Callable[[str, str], None]:
    """Forward an item's stream text to the map's output, each line marked with its index."""
    at_line_start = {"stdout": True, "stderr": True}

    def forward(name: str, text: str) -> None:
        if sink is None:
            return
        out = []
        for piece in text.splitlines(keepends=True):
            if at_line_start.get(name, True):
                out.append(prefix)
            out.append(piece)
            at_line_start[name] = piece.endswith("\n")
        sink.write(name, "".join(out))

    return forward


def _trim_traceback(error: BaseException, cell: CompiledCell | MapItemCell | None) -> None:
    """Drop ipytasks' own frames, so the traceback starts in the user's cell."""
    if cell is None:
        return
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != cell.filename:
        tb = tb.tb_next
    if tb is not None:
        error.__traceback__ = tb
    elif isinstance(error, TaskError):
        error.__traceback__ = None  # ipytasks' own error: its frames say nothing to the user

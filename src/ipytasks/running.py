"""Running one task, from its registration to its end.

The life of a task, one asyncio task on the scheduler's loop (:meth:`TaskRunner.start`)::

    wait for its upstream ──(one did not succeed, --on-error stop)──► skipped
      │
    --cache: its outcome is stored ─────────────────────────────────► cached
      │
    ┌► wait for its group's --limit and --rate (in --priority order)
    │  one attempt through its mode, under --timeout ─► done | failed | timed out
    └─ failed or timed out, attempts left (--retries): back off, run again
      │
    its end: state, result or traceback shown in its output, whoever waits woken

A task that waits for nothing (no upstream, group, cache or map) and is not shown (its
submission has no display to send) in a mode that can begin a body at once (thread mode)
begins its first attempt at registration, so its body does not wait for the loop to turn;
its driver then awaits that attempt. When that body returns, the task ends in the turn its
value arrives (unless it left figures to show), and its driver finds it ended.

A ``--map`` task runs one item task per value instead, and ends with their results.
Cancelling the asyncio task (``%cancel``, unload) ends the task as cancelled at any
step. Each change of status is told to :class:`~ipytasks.changes.Changes`; an ended
task is told to the :class:`~ipytasks.taskgraph.TaskGraph`, which then orders no new
task after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import gc
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import plots, reports
from .cells import CompiledCell, MapItemCell, compile_map_function
from .errors import BadArgument, RemoteError, TaskCancelled, TaskError, TaskFailed, TaskSkipped
from .limits import Limiter, RateLimiter
from .modes.abc import Begun
from .output import TaskOutput, current_output
from .records import SUCCESSFUL, TaskOptions, TaskRecord, TaskState

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .cache.outcome import Plan, ResultCache
    from .changes import Changes
    from .modes import Mode
    from .taskgraph import TaskGraph

__all__ = ("RETRY_DELAY_MAX", "RETRY_JITTER", "TaskRunner", "retry_delay")

FIGURE_FAILED = "ipytasks: could not show a figure of this task: {error}\n"

#: Outcomes of an attempt that --retries runs again.
_RETRYABLE = (TaskState.FAILED, TaskState.TIMED_OUT)
#: Outcomes ``wait`` reports as failures (a cancelled task is not one).
_FAILURES = (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.SKIPPED)
#: The longest wait before a retry, in seconds: the doubling stops there (as tenacity's
#: ``wait_exponential(max=…)`` and the capped backoff of cloud SDKs do), so ``--retries 20``
#: retries every minute or so at the end rather than after 2**19 times the first delay. A
#: ``--retry-delay`` above it is used as it is, without doubling.
RETRY_DELAY_MAX = 60.0
#: The spread of a retry's delay around its nominal value (a fraction either way), so that
#: tasks failing together do not retry in lockstep.
RETRY_JITTER = 0.2

Outcome = tuple[TaskState, Any, BaseException | None]


@dataclasses.dataclass(eq=False, slots=True)
class _Run:
    """What the runner holds for a task until it ends (then it is dropped)."""

    #: Set when the task ends: its downstream and its waiters await it (made when one
    #: first does: most items of a large map end before anyone waits for them).
    ended: asyncio.Event | None = None
    #: The asyncio task driving it, once started.
    driver: asyncio.Task[None] | None = None
    #: A --map task's items, when they could be evaluated at submission.
    items: list[Any] | None = None
    #: The first attempt, begun at registration (:meth:`Mode.begin`) and not awaited yet:
    #: the figures it opens, and its body.
    early: tuple[Any, Begun] | None = None


class TaskRunner:
    """Runs tasks on ``loop``: each through its mode, within its group's limits, until
    its end. Call it on the loop's thread.

    :param shell: the IPython shell: its namespace (``--map`` items), its formatters
        (a result, a traceback).
    :param graph: told of ``--map`` items and of every task that ends.
    :param changes: told of every change of a task's status.
    :param mode: ``mode(name)``: the mode instance that runs tasks of mode ``name``.
    :param result_cache: ``result_cache()``: the store of ``--cache`` outcomes.
    :param echo: receives every task's stream text as it comes (a terminal).
    """

    def __init__(
        self,
        shell: InteractiveShell,
        loop: asyncio.AbstractEventLoop,
        graph: TaskGraph,
        changes: Changes,
        *,
        mode: Callable[[str], Mode],
        result_cache: Callable[[], ResultCache],
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.shell = shell
        self.loop = loop
        self._graph = graph
        self._changes = changes
        self._mode = mode
        self._result_cache = result_cache
        self._echo = echo
        self._limiters: dict[str, Limiter] = {}
        self._rates: dict[str, RateLimiter] = {}
        # The tasks that have not ended: ended ones keep nothing of the runner's.
        self._runs: dict[TaskRecord, _Run] = {}

    # -- starting -----------------------------------------------------------------------

    def prepare(self, record: TaskRecord) -> None:
        """Get a new task (from :meth:`TaskGraph.new_task`) ready to start: its output.

        :raises ValueError: a ``--map`` task whose upstream has ended: its EXPR is
            evaluated now, so that a bad one is said in the submitting cell.
        """
        run = _Run()
        options = record.options
        if options.map is not None and all(u.state.ended for u in record.upstream):
            try:
                run.items = self._map_items(options.map[1])
                record.item_count = len(run.items)
            except Exception as exc:  # noqa: BLE001 - whatever EXPR raises, said plainly
                text = str(exc)
                if not text.startswith("--map"):
                    text = f"--map: {type(exc).__name__}: {text}"
                raise BadArgument(text) from None
        record.sink = TaskOutput(self.loop, self._echo)
        record.sink.owner = record
        self._runs[record] = run

    def start(self, record: TaskRecord) -> None:
        """Start the life of a prepared task (it begins once the loop runs again)."""
        self._set_group_limits(record.options)
        self._start(record, self._runs[record])

    def _start(self, record: TaskRecord, run: _Run) -> None:
        # A fresh context per task: the output variable set inside it stays its own.
        context = contextvars.copy_context()
        run.driver = self.loop.create_task(
            self._drive(record), name=f"ipytasks:{record.name}", context=context
        )
        run.driver.add_done_callback(functools.partial(self._driven, record, run))
        options = record.options
        if (not record.upstream and options.map is None and not options.cache
                and options.group is None and not _shown(record)
                and _on_running(self.loop)):
            mode = self._mode(record.mode)
            if mode.begins_at_once:
                # Nothing to wait for: the body starts now, not on the driver's first turn.
                # (After the driver is made: its first step comes before the body's outcome.)
                context.run(self._begin, record, run, mode, context)

    def _begin(
        self, record: TaskRecord, run: _Run, mode: Mode, context: contextvars.Context
    ) -> None:
        """Begin the first attempt (in the task's ``context``)."""
        current_output.set(record.sink)
        self._enter_attempt(record)
        figures = plots.open_task_figures()
        returned = functools.partial(self._returned, record, figures, context)
        try:
            begun = mode.begin(record, returned)
        except Exception as exc:  # noqa: BLE001 - e.g. the pool closed: the attempt's error
            begun = Begun(_raise(exc), lambda: None)
        run.early = (figures, begun)

    def _returned(
        self, record: TaskRecord, figures: Any, context: contextvars.Context, value: Any
    ) -> None:
        """A body begun at registration returned ``value`` (on the loop, in the turn it
        arrived): the task ends now, in its own context as its driver would end it, unless
        its attempt has more to do (figures to show); its driver, resuming next, finds it
        ended."""
        if not figures and not record.state.ended:
            context.run(self.end, record, TaskState.DONE, result=value)

    def _driven(self, record: TaskRecord, run: _Run, driver: asyncio.Task[None]) -> None:
        """The driver is done: the task has ended, unless the driver was cancelled before
        it ever ran (a cancel in the loop turn that started it), which ends it here (and
        stops a body begun at registration)."""
        if run.early is not None:
            (_figures, begun), run.early = run.early, None
            begun.outcome.close()
            begun.stop()
        if not record.state.ended:
            self.end(record, TaskState.CANCELLED,
                     error=TaskCancelled(f"task {record.name!r} was cancelled"))

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

    # -- waiting and cancelling ---------------------------------------------------------

    async def wait(self, records: list[TaskRecord], timeout: float | None = None) -> None:
        """Wait until every record has ended; raise :class:`TaskFailed` for the failures.

        Cancelling the wait (an interrupt) leaves the tasks running.
        """
        try:
            if timeout is None:
                for record in records:
                    await self._until_ended(record)
            else:
                async with asyncio.timeout(timeout):
                    for record in records:
                        await self._until_ended(record)
        except TimeoutError:
            open_ = ", ".join(f"{r.name} ({r.state})" for r in records if not r.state.ended)
            raise TimeoutError(f"still unfinished after {timeout:g} s: {open_}") from None
        failures = [r for r in records if r.state in _FAILURES]
        if failures:
            raise TaskFailed(failures)

    async def _until_ended(self, record: TaskRecord) -> None:
        if not record.state.ended:
            run = self._runs[record]
            if run.ended is None:
                run.ended = asyncio.Event()
            await run.ended.wait()

    def cancel(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Cancel the records that have not ended (they end as the loop runs); return those."""
        cancelled = []
        for record in records:
            if self._cancel(record):
                cancelled.append(record)
        return cancelled

    def _cancel(self, record: TaskRecord) -> bool:
        run = self._runs.get(record)
        if record.state.ended or run is None or run.driver is None:
            return False
        run.driver.cancel()
        return True

    def cancel_now(self, records: list[TaskRecord], why: str) -> None:
        """Cancel ``records`` and end them at once, saying ``why``: the loop may not run
        again before the caller looks (unload)."""
        for record in records:
            self._cancel(record)
            self.end(record, TaskState.CANCELLED, error=TaskCancelled(why))

    # -- a task's life ------------------------------------------------------------------

    async def _drive(self, record: TaskRecord) -> None:
        """The life of one task. Nothing may escape: an error here would reach the loop."""
        current_output.set(record.sink)
        try:
            for upstream in record.upstream:
                await self._until_ended(upstream)
            if record.options.on_error == "stop":
                bad = [u for u in record.upstream if u.state not in SUCCESSFUL]
                if bad:
                    why = ", ".join(f"{u.name!r} {u.state}" for u in bad)
                    self.end(record, TaskState.SKIPPED, error=TaskSkipped(f"upstream {why}"))
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
                    writing = await self._result_cache().keep(record, plan, result)
                self.end(record, state, result=result, error=error)
                if writing is not None:  # its entry is written after the end
                    writing.add_done_callback(functools.partial(self._written, record))
                return
        except asyncio.CancelledError:
            self.end(
                record,
                TaskState.CANCELLED,
                error=TaskCancelled(f"task {record.name!r} was cancelled"),
            )
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt/SystemExit included
            self.end(record, TaskState.FAILED, error=exc)

    async def _cache_lookup(self, record: TaskRecord) -> Plan | None:
        """End ``record`` as cached when its outcome is stored; else the plan to store it."""
        cache = self._result_cache()
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
            self.end(record, TaskState.CACHED, result=result)
        return plan

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
                self._changes.amended, record, f"not stored: {why}", context=contextvars.Context()
            )

    async def _drive_map(self, record: TaskRecord) -> None:
        """Evaluate the map's EXPR, run one item task per value, gather their results."""
        assert record.options.map is not None  # only --map tasks are driven here
        cell = record.cell
        assert isinstance(cell, CompiledCell)  # a --map task's own cell, not an item's
        var, expr = record.options.map
        record.state = TaskState.RUNNING
        record.started = time.time()
        record.attempts = 1
        items = self._runs[record].items
        if items is None:
            items = self._map_items(expr)
            record.item_count = len(items)
        function = compile_map_function(cell, var, self.shell.user_ns)
        child_options = dataclasses.replace(
            record.options, map=None, chain=None, after=(), quiet=True, wait=False, mode=record.mode
        )
        # Thousands of objects that all live on, made in one go: a garbage collection
        # meanwhile would look through the whole heap again and again (each costs as much
        # as the items themselves) and free none of them; one afterwards does it once.
        collecting = gc.isenabled()
        gc.disable()
        children: list[TaskRecord] = []
        try:
            for index, item in enumerate(items):
                child = TaskRecord(
                    name=f"{record.name}[{index}]",
                    source=record.source,
                    options=child_options,
                    cell=MapItemCell(cell, function, item),
                    mode=record.mode,
                    parent=record,
                )
                child.sink = TaskOutput(self.loop, _Prefixed(record.sink, f"[{index}] "))
                child.sink.owner = child
                children.append(child)
                self._graph.add_item(child)
                run = self._runs[child] = _Run()
                self._start(child, run)
        finally:
            record.children = tuple(children)
            if collecting:
                gc.enable()
        self._changes.changed(record)
        try:
            for child in record.children:
                await self._until_ended(child)
        except asyncio.CancelledError:
            for child in record.children:
                self._cancel(child)
            raise
        failures = [c for c in record.children if c.state in _FAILURES]
        if failures:
            self.end(record, TaskState.FAILED, error=TaskFailed(failures))
        elif any(c.state is TaskState.CANCELLED for c in record.children):
            self.end(record, TaskState.CANCELLED, error=TaskCancelled("items were cancelled"))
        else:
            self.end(record, TaskState.DONE, result=[c.result for c in record.children])

    def _map_items(self, expr: str) -> list[Any]:
        """The items of a map: EXPR evaluated in the notebook's namespace, as a list."""
        values = eval(compile(expr, "<--map>", "eval"), self.shell.user_ns)  # noqa: S307
        try:
            return list(values)
        except TypeError:
            error = TypeError(f"--map: {expr!r} is not iterable (it is a {type(values).__name__})")
        raise error

    async def _gated_attempt(self, record: TaskRecord) -> Outcome:
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
                self._changes.changed(record)
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
            record.failures = (*record.failures, error)
            record.sink.write(
                "stderr",
                f"attempt {done}/{total} failed: {type(error).__name__}: {error}; "
                f"retry {done + 1}/{total} in {delay:.1f}s\n",
            )
        record.state = TaskState.PENDING
        record.pending_reason = f"retry {done + 1}/{total} in {delay:.1f}s"
        self._changes.changed(record)
        await asyncio.sleep(delay)
        record.pending_reason = None

    def _enter_attempt(self, record: TaskRecord) -> None:
        """An attempt starts: the task is running (once more)."""
        record.state = TaskState.RUNNING
        if record.started is None:
            record.started = time.time()
        record.attempts += 1
        reports.reset(record)
        record._result_display = None
        self._changes.changed(record)

    async def _attempt(self, record: TaskRecord) -> Outcome:
        """Run the body once through its mode; return how it ended (never raises but cancel)."""
        assert record.sink is not None  # set at registration
        run = self._runs[record]
        body: Coroutine[Any, Any, Any]
        if run.early is not None:  # begun at registration
            (figures, begun), run.early = run.early, None
            body = begun.outcome
        else:
            self._enter_attempt(record)
            # pyplot's current figure is this attempt's own; what it leaves open is shown
            # below.
            figures = plots.open_task_figures()
            body = self._mode(record.mode).run(record)
        timeout = record.options.timeout
        deadline = asyncio.timeout(timeout) if timeout is not None else None
        try:
            if deadline is None:
                result = await body
            else:
                async with deadline:
                    result = await body
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
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

    # -- the end ------------------------------------------------------------------------

    def end(
        self,
        record: TaskRecord,
        state: TaskState,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        """End ``record`` in ``state`` (once: a task that ended stays as it ended): show
        its result or traceback, tell who follows, wake whoever waits for it."""
        if record.state.ended:
            return
        last = self._graph.ended(record)
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
        changes = self._changes
        changes.changed(record)
        if last:
            # Before the end event is set: whoever awaits it finds the followers told.
            changes.idle()
        run = self._runs.pop(record, None)
        if run is not None:
            if run.ended is not None:
                run.ended.set()
        if record.parent is not None and not record.parent.state.ended:
            changes.changed(record.parent)  # "k of n done"

    def _show_result(self, record: TaskRecord, result: Any) -> None:
        assert record.sink is not None  # set at registration
        rendered = record._result_display  # a figure a worker process rendered for it
        if rendered is not None:
            record.sink.display(*rendered)
            return
        formatter = self.shell.display_formatter
        assert formatter is not None  # an initialised shell has one
        try:
            data, metadata = formatter.format(result)
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


def _shown(record: TaskRecord) -> bool:
    """Whether the task has a view to show it (a cell's display, a terminal's line): its
    body then begins on the loop's next turn, once the submission has shown it, rather
    than contend with showing it for the interpreter."""
    return record.sink is not None and bool(record.sink.views)


def _on_running(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` runs this code (a cell IPython runs without its loop does not)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _raise(error: BaseException) -> Any:
    raise error


def retry_delay(failed: int, base: float, *, cap: float = RETRY_DELAY_MAX) -> float:
    """Seconds to wait after attempt ``failed`` (1, 2, …) failed: ``base`` doubling with
    each attempt, jittered by :data:`RETRY_JITTER`, and never more than ``max(cap, base)``."""
    cap = max(cap, base)
    nominal = base * 2.0 ** min(failed - 1, 64)  # past 2**64 the cap has long applied
    return min(nominal * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER), cap)


class _Prefixed:
    """Forwards an item's stream text to the map's output, each line marked with its
    index. (An object of its own, not a closure: a map makes one per item.)"""

    __slots__ = ("_at_line_start", "_prefix", "_sink")

    def __init__(self, sink: TaskOutput | None, prefix: str) -> None:
        self._sink = sink
        self._prefix = prefix
        self._at_line_start: dict[str, bool] | None = None

    def __call__(self, name: str, text: str) -> None:
        if self._sink is None:
            return
        at_line_start = self._at_line_start
        if at_line_start is None:
            at_line_start = self._at_line_start = {"stdout": True, "stderr": True}
        out = []
        for piece in text.splitlines(keepends=True):
            if at_line_start.get(name, True):
                out.append(self._prefix)
            out.append(piece)
            at_line_start[name] = piece.endswith("\n")
        self._sink.write(name, "".join(out))


def _trim_traceback(error: BaseException, cell: CompiledCell | MapItemCell | None) -> None:
    """Drop ipytasks' own frames, so the traceback starts in the user's cell."""
    if cell is None:
        return
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != cell.filename:
        tb = tb.tb_next
    if tb is not None:
        error.__traceback__ = tb
    elif isinstance(error, TaskError) and not isinstance(error, RemoteError):
        error.__traceback__ = None  # ipytasks' own error: its frames say nothing to the user

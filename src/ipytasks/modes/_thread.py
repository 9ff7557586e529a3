"""thread mode: blocking bodies in a bounded pool of worker threads.

The pool is ipytasks' own, with daemon threads: a body stuck in a long C call
must never keep the kernel from exiting (``concurrent.futures`` joins its
threads at exit). Cancel and timeout stop a body by raising an asynchronous
exception in its thread, which Python delivers at the thread's next Python
instruction; a C call that blocks (``time.sleep``, a socket read) finishes first.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import costs
from ..output import _report_internal_error
from .abc import Begun, Mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from IPython.core.interactiveshell import InteractiveShell

    from ..cells import CompiledCell, MapItemCell
    from ..records import TaskRecord

#: Enough for the usual fan-out of blocking I/O (anyio's default limiter is 40 too).
DEFAULT_MAX_THREADS = 40
#: How long a stopped body may take before the user is told it is stuck in a C call.
STUCK_NOTICE_DELAY = 0.5
STUCK_NOTICE = (
    "ipytasks: task {name!r} was stopped, but its thread is still inside a call Python "
    "cannot interrupt (a C call such as time.sleep or a blocking read). It stops at its "
    "next Python instruction; until then it may still change the notebook's variables.\n"
)


class BodyStopped(BaseException):
    """Raised inside a worker thread to stop a cancelled or timed-out body.

    A ``BaseException`` so that the body's own ``except Exception`` does not swallow it.
    """


class _TakenBack(BaseException):
    """Sent by a worker thread to itself, in place of a stop it may not have received."""


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


def _take_back_stop() -> None:
    """Cancel a stop sent to this thread and not delivered yet, leaving nothing raised.

    Withdrawing it with NULL would leave CPython's "asynchronous exception pending"
    flag raised for good: every thread of the kernel would then stop at each check to
    look for one (slower), and starting a thread while another is profiled (``%prun``)
    spins forever. So the stop is replaced by :class:`_TakenBack` and received here,
    which lowers the flag; CPython delivers it at the loop's first backward jump.
    """
    ident = threading.get_ident()
    _set_async_exc(ident, _TakenBack)
    try:
        for _ in range(1000):
            pass
    except _TakenBack:
        return
    _set_async_exc(ident, None)  # not delivered (another interpreter): withdraw it at least


class _Job:
    """One body running in a worker thread, which the loop side can stop."""

    def __init__(self, cell: CompiledCell | MapItemCell, namespace: dict[str, Any]) -> None:
        self.cell = cell
        self.namespace = namespace
        self.context = contextvars.copy_context()
        #: Set by the worker thread when the body has returned or raised (a plain flag:
        #: only read, later, by the stuck notice).
        self.finished = False
        self._lock = threading.Lock()
        self._ident: int | None = None
        self._stop_requested = False
        #: CPU seconds the body's thread used while it ran (set when it ends).
        self.cpu_time: float | None = None

    def __call__(self) -> Any:
        try:
            with self._lock:
                if self._stop_requested:
                    raise BodyStopped
                self._ident = threading.get_ident()
            cpu = time.thread_time()
            try:
                return self.context.run(self.cell.run_sync, self.namespace)
            finally:
                self.cpu_time = time.thread_time() - cpu
                # After this block no stop can be injected, and one injected but not
                # yet delivered is taken back, so it cannot hit the pool's own code.
                with self._lock:
                    try:
                        if self._stop_requested:
                            _take_back_stop()
                    finally:
                        self._ident = None
        finally:
            self.finished = True

    def where(self) -> str | None:
        """Where the body is now (``None`` before it starts and after it ends)."""
        ident = self._ident
        return costs.thread_where(ident, self.cell.filename) if ident is not None else None

    def stop(self) -> None:
        """Ask the body to stop at its next Python instruction."""
        with self._lock:
            self._stop_requested = True
            if self._ident is not None:
                _set_async_exc(self._ident, BodyStopped)


class _ThreadPool:
    """A bounded pool of daemon threads; a thread lives until the pool is closed or
    shrunk.

    Every item put in the queue is taken care of once: by an idle thread that it
    reserves (``_idle``), by a thread started for it, or else it waits in
    ``_backlog`` for the next thread that finishes a body. So the pool knows, without
    racing its threads, whether a new body needs a new thread.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for an item that no item has reserved yet
        self._backlog = 0  # queued items no thread has been counted for
        self._closed = False

    def submit(self, fn: Callable[[], Any], done: Callable[[tuple[bool, Any]], None]) -> None:
        """Run ``fn()`` in a pool thread, then ``done((True, value))`` or ``done((False,
        error))`` in that thread."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is closed")
            self._queue.put((fn, done))
            thread = self._care_for_one()
        if thread is not None:
            # Outside the lock: start() waits for the new thread to run, and a worker
            # that just finished a body needs the lock to say it is idle.
            thread.start()

    def _care_for_one(self) -> threading.Thread | None:
        """Count a thread for one more queued item (under the lock): an idle one, a new
        one (returned, to start), or the next one to finish."""
        if self._idle > 0:
            self._idle -= 1
            return None
        if len(self._threads) < self.max_workers:
            thread = threading.Thread(
                target=self._work, name=f"ipytasks-thread-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            return thread
        self._backlog += 1
        return None

    def resize(self, max_workers: int) -> None:
        """Let up to ``max_workers`` bodies run at once from now on: bodies queued beyond
        the old size start at once; threads beyond the new size end after their body."""
        threads = []
        with self._lock:
            self.max_workers = max_workers
            if self._closed:
                return
            while self._backlog and len(self._threads) < max_workers:
                self._backlog -= 1  # counted again: now a new thread can take it
                thread = self._care_for_one()
                if thread is not None:
                    threads.append(thread)
            for _ in range(len(self._threads) - max_workers):
                # Behind the queued bodies: the thread that takes it ends.
                self._queue.put(None)
                self._care_for_one()
        for thread in threads:
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    if threading.current_thread() in self._threads:  # shrunk, not closed
                        self._threads.remove(threading.current_thread())
                return
            fn, done = item
            # Outcomes travel as values: a KeyboardInterrupt or SystemExit from a
            # body must reach the scheduler as data, never be re-raised on the way.
            try:
                outcome = (True, fn())
            except BaseException as exc:  # noqa: BLE001
                outcome = (False, exc)
                del exc
            done(outcome)
            del fn, done, item, outcome
            with self._lock:
                if self._backlog:
                    self._backlog -= 1  # this thread takes the next waiting item
                else:
                    self._idle += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
            self._threads.clear()


class _Handback:
    """Brings outcomes from pool threads to the loop: one wake-up of the loop for all
    the outcomes that arrive before it runs, not one per body."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[
            tuple[asyncio.Future[Any], Callable[[Any], None] | None, tuple[bool, Any]]
        ] = []
        self._woken = False

    def put(
        self,
        future: asyncio.Future[Any],
        returned: Callable[[Any], None] | None,
        outcome: tuple[bool, Any],
    ) -> None:
        """From a pool thread: ``future`` gets ``outcome`` on the loop, after
        ``returned(value)`` if the body returned one."""
        with self._lock:
            self._ready.append((future, returned, outcome))
            if self._woken:
                return
            self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._deliver, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._woken = False
        for future, returned, outcome in ready:
            if future.done():  # cancelled meanwhile
                continue
            if returned is not None and outcome[0]:
                try:
                    returned(outcome[1])
                except Exception as exc:  # noqa: BLE001 - the outcome still goes on
                    _report_internal_error("ending a thread task", exc)
            future.set_result(outcome)


class ThreadMode(Mode):
    """Run a synchronous cell in a worker thread, in the notebook's namespace."""

    name = "thread"

    def __init__(self, shell: InteractiveShell, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        super().__init__(shell)
        self._pool = _ThreadPool(max_threads)
        self._handback: _Handback | None = None

    begins_at_once = True

    async def run(self, task: TaskRecord) -> Any:
        return await self.begin(task).outcome

    def begin(
        self, task: TaskRecord, returned: Callable[[Any], None] | None = None
    ) -> Begun:
        """Hand the body to a pool thread now."""
        assert task.cell is not None
        loop = asyncio.get_running_loop()
        handback = self._handback
        if handback is None or handback.loop is not loop:
            handback = self._handback = _Handback(loop)
        job = _Job(task.cell, self.shell.user_ns)
        future: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        if returned is not None:
            returned = functools.partial(self._returned, task, job, returned)
        self._pool.submit(job, functools.partial(handback.put, future, returned))
        task._sampler = job.where
        return Begun(self._outcome(task, job, future), job.stop)

    async def _outcome(
        self, task: TaskRecord, job: _Job, future: asyncio.Future[tuple[bool, Any]]
    ) -> Any:
        try:
            ok, value = await future
        except asyncio.CancelledError:
            job.stop()
            asyncio.get_running_loop().call_later(
                STUCK_NOTICE_DELAY, self._notice_if_stuck, job, task)
            raise
        finally:
            task._sampler = None
            task.cpu_time = job.cpu_time
        if ok:
            return value
        try:
            raise value
        finally:
            del value

    @staticmethod
    def _returned(
        task: TaskRecord, job: _Job, returned: Callable[[Any], None], value: Any
    ) -> None:
        task._sampler = None
        task.cpu_time = job.cpu_time  # before the task ends: its end shows it
        returned(value)

    @staticmethod
    def _notice_if_stuck(job: _Job, task: TaskRecord) -> None:
        if not job.finished and task.sink is not None:
            task.sink.write("stderr", STUCK_NOTICE.format(name=task.name))

    def resize(self, max_threads: int) -> None:
        """Let up to ``max_threads`` bodies run at once from now on."""
        self._pool.resize(max_threads)

    def close(self) -> None:
        self._pool.close()


mode_class = ThreadMode

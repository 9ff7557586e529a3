"""thread mode: blocking bodies in a bounded pool of worker threads (DESIGN §5.2).

The pool is ipytasks' own, with daemon threads: a body stuck in a long C call
must never keep the kernel from exiting (``concurrent.futures`` joins its
threads at exit). Cancel and timeout stop a body by raising an asynchronous
exception in its thread, which Python delivers at the thread's next Python
instruction; a C call that blocks (``time.sleep``, a socket read) finishes first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import queue
import threading
from typing import TYPE_CHECKING, Any

from .abc import Mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..cells import CompiledCell
    from ..tasks import TaskRecord

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


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


class _Job:
    """One body running in a worker thread, which the loop side can stop."""

    def __init__(self, cell: CompiledCell, namespace: dict[str, Any]) -> None:
        self.cell = cell
        self.namespace = namespace
        self.context = contextvars.copy_context()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._ident: int | None = None
        self._stop_requested = False

    def __call__(self) -> Any:
        try:
            with self._lock:
                if self._stop_requested:
                    raise BodyStopped
                self._ident = threading.get_ident()
            try:
                return self.context.run(self.cell.run_sync, self.namespace)
            finally:
                # After this block no stop can be injected, and one injected but not
                # yet delivered is withdrawn, so it cannot hit the pool's own code.
                # Only when a stop was asked for: withdrawing leaves CPython's
                # "asynchronous exception pending" flag raised, which slows every
                # thread down afterwards (and can stall thread start under a profiler).
                with self._lock:
                    try:
                        if self._stop_requested:
                            _set_async_exc(threading.get_ident(), None)
                    finally:
                        self._ident = None
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Ask the body to stop at its next Python instruction."""
        with self._lock:
            self._stop_requested = True
            if self._ident is not None:
                _set_async_exc(self._ident, BodyStopped)


class _ThreadPool:
    """A bounded pool of daemon threads; a thread lives until the pool is closed."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[tuple[bool, Any]]:
        future: concurrent.futures.Future[tuple[bool, Any]] = concurrent.futures.Future()
        thread = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is closed")
            self._queue.put((future, fn))
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"ipytasks-thread-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
        if thread is not None:
            # Outside the lock: start() waits for the new thread to run, and a worker
            # that just finished a body needs the lock to say it is idle.
            thread.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn = item
            if future.set_running_or_notify_cancel():
                # Outcomes travel as values: a KeyboardInterrupt or SystemExit from a
                # body must reach the scheduler as data, never be re-raised on the way.
                try:
                    outcome = (True, fn())
                except BaseException as exc:  # noqa: BLE001
                    outcome = (False, exc)
                    del exc
                future.set_result(outcome)
                del future, fn, item, outcome
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
            self._threads.clear()


class ThreadMode(Mode):
    """Run a synchronous cell in a worker thread, in the notebook's namespace."""

    name = "thread"

    def __init__(self, shell: Any, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        super().__init__(shell)
        self._pool = _ThreadPool(max_threads)

    async def run(self, task: TaskRecord) -> Any:
        assert task.cell is not None
        job = _Job(task.cell, self.shell.user_ns)
        future = self._pool.submit(job)
        try:
            ok, value = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            job.stop()
            loop = asyncio.get_running_loop()
            loop.call_later(STUCK_NOTICE_DELAY, self._notice_if_stuck, job, task)
            raise
        if ok:
            return value
        try:
            raise value
        finally:
            del value

    @staticmethod
    def _notice_if_stuck(job: _Job, task: TaskRecord) -> None:
        if not job.finished.is_set() and task.sink is not None:
            task.sink.write("stderr", STUCK_NOTICE.format(name=task.name))

    def close(self) -> None:
        self._pool.close()


mode_class = ThreadMode

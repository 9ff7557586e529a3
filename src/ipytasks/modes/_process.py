"""process mode: CPU-bound cells in a warm pool of worker processes.

The machinery, and why
----------------------
Each worker is a :class:`ipytasks.workers.local.Child`: a fresh interpreter that
ipytasks starts itself with ``subprocess.Popen`` and talks to over pipes (one for
jobs, one for replies, and the worker's own fd 1 and fd 2, read by two threads of
the kernel as the bytes arrive); :mod:`ipytasks.workers` describes the runtime,
which dask mode runs too. The alternatives each miss something this mode must do:

* ``fork`` (a raw fork pool, or multiprocessing's default on Linux) copies the
  kernel: its zmq sockets, its I/O threads' locks in whatever state they were.
  Not safe in a kernel.
* ``multiprocessing`` with 'spawn'/'forkserver', and ``ProcessPoolExecutor`` on
  top: a running job cannot be stopped — ``Future.cancel()`` is refused once it
  runs, and killing a worker marks the whole executor broken; prints are not tied
  to a job; spawn re-imports the parent's ``__main__``.
* loky: forwards stdout and survives a crash, but cannot stop a
  running job either.
* ``anyio.to_process``: kills the worker on cancel, but throws its
  stdout away, and its pool is killed when the first task that used it on a loop
  anyio did not start ends.

Owning the subprocess gives all of it. Cancel and ``--timeout`` send SIGKILL to
the worker of that task only (to its process group: what the cell started dies
with it), and the pool starts a replacement; every other worker keeps running.
A worker that dies on its own fails its task with :class:`~ipytasks.errors.BrokenWorker`
naming the exit code or the signal. Output reaches the task's output area while the
task runs, C extensions' writes and a segfault's faulthandler dump included, and all
of it is in before the task ends. The worker imports nothing from the kernel side,
so it starts in well under 0.1 s — the cold start of the first task.

This module holds what is process mode's own: the pool, on the kernel's event loop.
Workers are started on the event loop's thread, which lives as long as the
scheduler (``PR_SET_PDEATHSIG`` is tied to the thread that started a worker), and
die with the kernel. :meth:`ProcessMode.close` kills every worker and reaps it.
Per worker, the kernel runs three daemon threads: the job thread, and one reader
per output stream. A small job (inputs that cost next to nothing to pickle: none,
or a few numbers and short strings), the common trivial task, never leaves the
loop: the loop pickles it, writes it (the pipe takes it at once) and reads the
reply as it comes (it watches the reply pipe), so no thread is woken for it. Any
other job goes to the job thread, which pickles the inputs, writes the job, blocks
reading the reply and unpickles it; so does a small job's reply that turns out
large, whose output is not all in yet, or whose worker died. Nothing blocks the
loop, and ``run()`` can be cancelled at every ``await``. A worker that replies is
handed at once, on that turn of the loop, to the next job waiting for one (its
inputs were taken when it started), before the task it ran goes on. What a task
is to a worker (the refusals at submission, the job, the end) is
:class:`~ipytasks.modes.worker.WorkerMode`'s, shared with dask mode.

Choices, as a user sees them
----------------------------
* **Inputs are taken when the task starts**, not at submission: a
  ``%%sequential --process`` cell may read what the task before it binds. An input
  that cannot be pickled therefore fails the task when it starts, naming the
  variable and its type.
* **Refused at submission** (``ValueError``, no task created), because the
  answer cannot change: a cell whose names cannot be known statically (``exec``,
  ``eval``, ``globals()``, a star import…), and a cell that uses a magic, a shell
  command (``!cmd``) or ``get_ipython()``: there is no IPython in a worker. Both
  messages suggest ``--thread``.
* **Top-level ``await``** works: the worker runs such a cell with ``asyncio.run``.
  Objects of the kernel's loop (a session, a pool) cannot be shipped, of course.
* **Changes in place** (``results['a'] = …``, ``df.x = …``) happen to the
  worker's copy and do not come back; the task's output says so when it starts.
  Sending the copy back would let the order in which tasks finish decide the
  value. Assign to a name instead.
* **While all workers are busy**, a task waits for one; it is ``running`` (its
  ``--timeout`` counts) from the moment the scheduler starts it.
* Functions defined in a process cell come back bound to the notebook's
  namespace; methods of classes defined there keep the globals they had in the
  worker. A worker keeps no names between tasks, only imported modules.
* A name left holding a closed file (``with open(...) as f``) is not brought back
  (the output says so); any other value that cannot be pickled fails the task.
* A ``--map`` item (when the scheduler allows ``--map`` with ``--process``) gets
  its item as an input under VAR; only its result comes back.
* Output order between stdout and stderr is kept within each stream, not across
  the two. Text a cell's own background thread prints after the task ended shows
  in that task's output area until the worker starts another task.

Limits
------
* POSIX only (process groups, ``pass_fds``, ``poll``); ``PR_SET_PDEATHSIG`` is
  Linux only (elsewhere the pipe watch alone ends an orphaned worker).
* Inputs are pickled on the job thread, just after the task gets a worker: a cell of
  the notebook that changes one of them in place at that very moment may send a mix.
  (Those the loop pickles itself cannot change in place: numbers and strings.)
* ``display()`` in a worker prints the plain-text form (there is no kernel there);
  the cell's result is shown richly, in the kernel, like any task's. matplotlib
  figures are the exception: the worker renders them with the notebook's inline
  backend settings and they are shown richly, after the body's prints.
* IPython's history names (``_``, ``_3``, ``Out``…) are not shipped.
* A value that needs cloudpickle is pickled twice in the worker (the standard
  pickler is tried first: it is faster and spares the import of cloudpickle).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import reports
from ..errors import BrokenWorker
from ..namespace.shipping import Job, Reply, decode_reply
from ..output import _report_internal_error
from ..workers import local, wire
from .worker import WorkerMode, cpu_count

if TYPE_CHECKING:
    from collections.abc import Callable

    from IPython.core.interactiveshell import InteractiveShell

    from ..output import TaskOutput
    from ..records import TaskRecord

__all__ = ("ProcessMode",)

CLOSED = "process mode was closed (ipytasks unloaded)"
STOPPED = "its worker process was stopped (process mode closed)"


def _forwarding_failed(exc: BaseException) -> None:
    _report_internal_error("forwarding a worker's output", exc)


class _Outcome:
    """What a job thread hands the loop: a reply, a death, or nothing (the worker was killed).

    A reply the loop read itself comes as read (``raw``) and is decoded by :meth:`decoded`,
    once the worker went on to its next job.
    """

    __slots__ = ("died", "raw", "reply")

    def __init__(
        self,
        reply: Reply | None = None,
        died: BrokenWorker | None = None,
        raw: tuple[dict[str, Any], Any, list[Any]] | None = None,
    ) -> None:
        self.reply = reply
        self.died = died
        self.raw = raw

    @property
    def replied(self) -> bool:
        return self.reply is not None or self.raw is not None

    def decoded(self) -> Reply | None:
        raw, self.raw = self.raw, None
        if raw is not None:
            try:
                self.reply = decode_reply(*raw)
            except Exception as exc:  # noqa: BLE001 - a reply that cannot be read: the task's error
                self.reply = Reply(error=exc)
        return self.reply


class _OnLoop(NamedTuple):
    """A job the loop sent: where its notes and outcome go, and the environment it sent."""

    on_note: Callable[[Any], None]
    settle: Callable[[_Outcome], None]  # on the loop
    deliver: Callable[[_Outcome], None]  # on the job thread
    environ: dict[bytes, bytes] | None


class _Worker:
    """One worker process of the pool, and the job thread that talks to it.

    A small job (inputs that cost nothing to pickle) is sent by the event loop itself,
    which reads the reply as it comes (:meth:`start`): no thread is woken for it. Any
    other job, and whatever would block (a large reply, the output still coming, a death
    to look into), goes to the job thread.
    """

    def __init__(self) -> None:
        self.child = local.Child(on_error=_forwarding_failed)
        self.pid = self.child.pid
        self._environ: dict[bytes, bytes] | None = None  # as last sent to the worker
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The loop that watches the reply pipe (see start()), and the job it sent.
        self._watched: asyncio.AbstractEventLoop | None = None
        self._thread_id = threading.get_ident()  # the loop's: workers start there
        self._on_loop: _OnLoop | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"ipytasks-worker-{self.pid}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<worker {self.pid}>"

    def alive(self) -> bool:
        return self.child.alive()

    def reaped(self) -> bool:
        return self.child.proc.poll() is not None

    def submit(
        self, job: Job, sink: TaskOutput | None, deliver: Callable[[_Outcome], None]
    ) -> None:
        """Run ``job`` on the job thread, which calls ``deliver(outcome)``."""
        self._jobs.put((job, sink, deliver, None))

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        job: Job,
        sink: TaskOutput | None,
        settle: Callable[[_Outcome], None],
        deliver: Callable[[_Outcome], None],
    ) -> None:
        """Run ``job``, from the loop's thread: its outcome to ``settle`` (on the loop) when
        the loop could see it through, else to ``deliver`` (on the job thread)."""
        ship_environ = job.environ != self._environ
        message = None
        if job.cheap() and not self.child.unsent:
            try:
                meta, values, buffers = job.encode(environ=ship_environ)
            except Exception:  # noqa: BLE001 - the job thread tries again, and says why
                pass
            else:
                if not buffers and len(meta) + len(values) <= wire.CHUNK:
                    message = meta, values
                del meta, values, buffers
        if message is None:
            self._unwatch()  # the job thread reads the replies now
            self.submit(job, sink, deliver)
            return
        on_note = functools.partial(
            reports.worker_note, sink.owner if sink is not None else None)
        environ = job.environ if ship_environ else None
        if not self.child.start(message, sink.write if sink is not None else None):
            self._unwatch()  # the job thread says why
            self._jobs.put((None, None, deliver, (on_note, environ)))
            return
        if not self._watched:
            loop.add_reader(self.child.reply_fd, self._readable)
            self.child.hold(True)
            self._watched = loop
        self._on_loop = _OnLoop(on_note, settle, deliver, environ)

    def _readable(self) -> None:
        """On the loop: the reply pipe has something (of the job the loop sent, or its end)."""
        job = self._on_loop
        if job is None:  # idle: only its end comes (it died; the next acquire sees it)
            self._unwatch()
            return
        child = self.child
        got = child.take_reply(job.on_note)
        if got == child.WAIT:
            return
        self._on_loop = None
        if not isinstance(got, str):
            if job.environ is not None:
                self._environ = job.environ
            job.settle(_Outcome(raw=got))  # decoded once the next job started
            return
        self._unwatch()  # RECEIVE: the rest is the job thread's
        if child.killed:  # nobody waits for it any more
            child.abandon()
            job.settle(_Outcome())
        else:
            self._jobs.put((None, None, job.deliver, (job.on_note, job.environ)))

    def _unwatch(self) -> None:
        loop = self._watched
        if loop is not None:
            self._watched = None
            loop.remove_reader(self.child.reply_fd)
            self.child.hold(False)

    def _off_loop(self) -> None:
        """The worker is stopped: the loop stops reading its replies (on the loop's thread;
        on another, the loop sees the pipe closed), and the job it sent ends."""
        if self._watched is None or self._thread_id != threading.get_ident():
            return
        job, self._on_loop = self._on_loop, None
        self._unwatch()
        if job is not None:
            self.child.abandon()
            job.settle(_Outcome())

    def kill(self) -> None:
        """SIGKILL the worker and its process group (what the cell started), now."""
        self.child.kill()
        self._off_loop()

    def stop(self) -> None:
        """Kill the worker and end its job thread (without waiting)."""
        self.child.kill()
        self._off_loop()
        self._jobs.put(None)

    def close(self, timeout: float) -> None:
        """Kill the worker, reap it, and end its threads (waits at most ``timeout`` each)."""
        self.stop()
        self.child.close(timeout)
        for thread in (self._thread, *self.child.threads):
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- the job thread --------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                job, sink, deliver, begun = item
                del item
                try:
                    if begun is None:
                        outcome = self._run(job, sink)
                    else:  # the loop sent it, and leaves the rest to this thread
                        outcome = self._receive(*begun)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not hang the task
                    outcome = _Outcome(Reply(error=exc))
                del job
                over = outcome.reply is None
                deliver(outcome)
                del outcome  # the values it carries belong to the notebook now
                if over:  # the worker died or was killed
                    return
        finally:
            self.child.close()  # reaped, its pipes closed

    def _run(self, job: Job, sink: TaskOutput | None) -> _Outcome:
        # The environment goes only when it changed since the last job (it is large).
        ship_environ = job.environ != self._environ
        owner = sink.owner if sink is not None else None
        try:
            reply = self.child.run(
                lambda: job.encode(environ=ship_environ),
                sink.write if sink is not None else None,
                on_note=functools.partial(reports.worker_note, owner),
            )
        except local.Died as died:
            return _Outcome(died=BrokenWorker(str(died)))
        except Exception as exc:  # noqa: BLE001 - ShippingError, or a bug: the task's error
            return _Outcome(Reply(error=exc))
        if reply is None:  # killed: nobody waits for it any more
            return _Outcome()
        return self._outcome(reply, job.environ if ship_environ else None)

    def _receive(
        self, on_note: Callable[[Any], None], environ: dict[bytes, bytes] | None
    ) -> _Outcome:
        try:
            reply = self.child.receive(on_note)
        except local.Died as died:
            return _Outcome(died=BrokenWorker(str(died)))
        except Exception as exc:  # noqa: BLE001 - a bug: the task's error
            return _Outcome(Reply(error=exc))
        if reply is None:  # killed: nobody waits for it any more
            return _Outcome()
        return self._outcome(reply, environ)

    def _outcome(
        self, reply: tuple[dict[str, Any], Any, list[Any]], environ: dict[bytes, bytes] | None
    ) -> _Outcome:
        """A reply came: the outcome it makes. ``environ``: the environment the job sent."""
        if environ is not None:
            self._environ = environ
        try:
            return _Outcome(decode_reply(*reply))
        except Exception as exc:  # noqa: BLE001 - a reply that cannot be read is the task's error
            return _Outcome(Reply(error=exc))


class _Pool:
    """Up to ``size`` workers, started on first use and replaced when one dies.

    Lives on one event loop: all its methods but :meth:`close` run on that loop's
    thread. :meth:`close` may run on any thread (unload from the terminal, atexit):
    the lock makes sure a worker started meanwhile is killed too.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self._lock = threading.Lock()
        self._idle: collections.deque[_Worker] = collections.deque()
        self._busy: set[_Worker] = set()
        self._started: set[_Worker] = set()  # every worker not yet reaped
        # Jobs waiting for a worker: each gets one through its future, its begin() called
        # with it first (a released worker starts the next job at once, on the same turn).
        self._waiters: collections.deque[
            tuple[asyncio.Future[_Worker | None], Callable[[_Worker], None]]
        ] = collections.deque()
        self._filling = False
        self.closed = False

    @property
    def workers(self) -> list[_Worker]:
        with self._lock:
            return [*self._idle, *self._busy]

    def _count(self) -> int:
        return len(self._idle) + len(self._busy)

    def _spawn(self) -> _Worker:
        """Start a worker (on the loop thread: see the module's notes on PDEATHSIG)."""
        worker = _Worker()
        with self._lock:
            if not self.closed:
                self._started.add(worker)
                return worker
        worker.close(local.DEATH_GRACE)
        raise RuntimeError(CLOSED)

    def _fill(self) -> None:
        """Start one more idle worker, up to ``size``; then again on the next loop turn."""
        if self.closed or self._count() >= self.size:
            self._filling = False
            return
        try:
            worker = self._spawn()
        except Exception:  # noqa: BLE001 - the next acquire tries again, and reports
            self._filling = False
            return
        self._idle.append(worker)
        self._wake()
        self.loop.call_soon(self._fill)

    def _start_filling(self) -> None:
        if not self._filling and not self.closed:
            self._filling = True
            self.loop.call_soon(self._fill)

    async def acquire(self, begin: Callable[[_Worker], None]) -> _Worker:
        """A worker for one job: an idle one, a new one, or the next one released;
        ``begin(worker)`` is called with it (on the loop) before it is returned."""
        while True:
            if self.closed:
                raise RuntimeError(CLOSED)
            while self._idle:
                worker = self._idle.pop()  # the most recently used: warmest
                if worker.alive():
                    self._begin(worker, begin)
                    return worker
                self._forget(worker)
            if self._count() < self.size:
                worker = self._spawn()
                self._start_filling()  # the rest of the pool, one per loop turn
                self._begin(worker, begin)
                return worker
            waiter: asyncio.Future[_Worker | None] = self.loop.create_future()
            entry = (waiter, begin)
            self._waiters.append(entry)
            try:
                given = await waiter
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is not None:
                        self.kill(handed)  # its job started already: stop it
                    else:
                        self._wake()  # it was our turn: hand it on
                raise
            if given is not None:
                return given

    def _wake(self, worker: _Worker | None = None) -> None:
        """The next waiting job: hand it ``worker`` (started with its job), or let it look."""
        while self._waiters:
            waiter, begin = self._waiters.popleft()
            if waiter.done():
                continue
            if worker is not None:
                try:
                    self._begin(worker, begin)
                except BaseException as exc:  # noqa: BLE001 - that job fails, not the loop
                    waiter.set_exception(exc)
                    return
            waiter.set_result(worker)
            return
        if worker is not None:
            self._idle.append(worker)

    def _begin(self, worker: _Worker, begin: Callable[[_Worker], None]) -> None:
        """``worker`` is busy with the job ``begin`` starts on it (dropped if that fails)."""
        self._busy.add(worker)
        try:
            begin(worker)
        except BaseException:
            self.discard(worker)
            raise

    def resize(self, size: int) -> None:
        """Keep up to ``size`` workers from now on: more start as jobs need them; idle
        ones beyond it stop now, busy ones when their job ends."""
        self.size = size
        while self._count() > size and self._idle:
            self._forget(self._idle.popleft())
        self._wake()  # a job waiting for a worker may start one now

    def release(self, worker: _Worker) -> None:
        """Take back a worker whose job ended normally."""
        self._busy.discard(worker)
        # It just replied: alive, unless killed meanwhile (acquire() looks again).
        if self.closed or worker.child.killed or self._count() >= self.size:
            self._forget(worker)
            self._start_filling()
            return
        self._wake(worker)

    def kill(self, worker: _Worker) -> None:
        """Stop a worker in the middle of its job (cancel, timeout); a new one replaces it."""
        worker.kill()
        self.discard(worker)

    def discard(self, worker: _Worker) -> None:
        """Drop a dead or killed worker; a new one replaces it."""
        self._busy.discard(worker)
        self._forget(worker)
        self._start_filling()
        self._wake()  # a waiter may start one itself now

    def _forget(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            # Keep it until reaped (a later _forget, or close() at the latest).
            self._started = {w for w in self._started if not w.reaped()}

    def close(self, timeout: float = local.DEATH_GRACE) -> None:
        """Kill every worker and reap it. Any thread."""
        with self._lock:
            self.closed = True
            workers = list(self._started)
            self._started.clear()
        self._idle.clear()
        self._busy.clear()
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.close(timeout)
        waiters = list(self._waiters)
        self._waiters.clear()
        if waiters:

            def fail() -> None:
                for waiter, _ in waiters:
                    if not waiter.done():
                        waiter.set_exception(RuntimeError(CLOSED))

            try:
                self.loop.call_soon_threadsafe(fail)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


class _Attempt:
    """One job through the pool: the worker it gets, and its outcome. (One object, not
    closures: a task waiting for a worker holds few objects for the garbage collector.)"""

    __slots__ = ("future", "job", "pool", "released", "sink", "worker")

    def __init__(self, pool: _Pool, job: Job, sink: TaskOutput | None) -> None:
        self.pool = pool
        self.job: Job | None = job  # let go once sent: the pickles, not the loop, keep its inputs
        self.sink = sink
        self.future: asyncio.Future[_Outcome] = pool.loop.create_future()
        self.worker: _Worker | None = None
        self.released = False

    def begin(self, worker: _Worker) -> None:
        """On the loop: the worker is ours; the job starts on it."""
        job, self.job = self.job, None
        assert job is not None
        self.worker = worker
        worker.start(self.pool.loop, job, self.sink, self.settle, self.deliver)

    def settle(self, outcome: _Outcome) -> None:
        """On the loop: how the job ended."""
        if outcome.replied and self.worker is not None and not self.released:
            # Before this task goes on: the next job starts on the worker now.
            self.released = True
            self.pool.release(self.worker)
        if not self.future.done():
            self.future.set_result(outcome)

    def deliver(self, outcome: _Outcome) -> None:
        """On the worker's job thread: how the job ended."""
        try:
            self.pool.loop.call_soon_threadsafe(self.settle, outcome)
        except RuntimeError:  # the loop is closed; nobody waits any more
            pass


class ProcessMode(WorkerMode):
    """Run a cell in a worker process: inputs shipped in, bound names merged back.

    :param max_workers: how many worker processes to keep; ``None``: one per core
        this process may use.
    """

    name = "process"

    def __init__(self, shell: InteractiveShell, max_workers: int | None = None) -> None:
        super().__init__(shell)
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")
        self.max_workers = max_workers or cpu_count()
        self._pool: _Pool | None = None
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (idle or busy)."""
        if self._pool is None:
            return []
        return [w.pid for w in self._pool.workers if w.alive()]

    def resize(self, max_workers: int | None) -> None:
        """Keep up to ``max_workers`` worker processes (``None``: one per core) from now on."""
        self.max_workers = max_workers or cpu_count()
        if self._pool is not None:
            self._pool.resize(self.max_workers)

    def _get_pool(self) -> _Pool:
        if self._closed:
            raise RuntimeError(CLOSED)
        if self._pool is None:
            self._pool = _Pool(asyncio.get_running_loop(), self.max_workers)
        return self._pool

    async def run(self, task: TaskRecord) -> Any:
        pool = self._get_pool()
        attempt = _Attempt(pool, self.job(task), task.sink)
        worker = await pool.acquire(attempt.begin)
        try:
            outcome = await attempt.future
        except BaseException:
            if not attempt.released:  # else it runs the next job already
                pool.kill(worker)
            raise
        reply = outcome.decoded()
        if reply is None:
            pool.discard(worker)
            died = outcome.died or BrokenWorker(STOPPED)
            raise died.with_traceback(None)
        del outcome, attempt
        return self.finish(task, reply)

    def close(self) -> None:
        """Kill and reap every worker; the mode cannot be used again."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


mode_class = ProcessMode

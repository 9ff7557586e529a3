"""process mode: CPU-bound cells in a warm pool of worker processes.

The machinery, and why
----------------------
Each worker is a fresh interpreter that ipytasks starts itself with
``subprocess.Popen`` (``python -P -u -c <run this file> .../ipytasks/_worker.py``) and
talks to over pipes: one pipe for jobs, one for replies, and the worker's own
fd 1 and fd 2 as two more pipes, read by two threads of the kernel as the bytes
arrive. The alternatives each miss something this mode must do:

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
A worker that dies on its own is seen as end-of-file on the reply pipe, and
``Popen.returncode`` names the exit code or the signal. Output is read at the
file-descriptor level, so C extensions' writes, ``warnings`` and the
faulthandler's dump on a segfault reach the task's output area while the task
runs; each job ends with a random marker on both streams, so output is never
given to the wrong task and all of it is in before the task ends. The worker is
started by path and imports nothing from the kernel side (not even the
``ipytasks`` package, which would load IPython), so it starts in about 0.1 s —
the cold start of the first task. Its startup flags: ``-P`` (no current
directory in ``sys.path``; each job brings the kernel's ``sys.path``, current
directory and environment), ``-u`` (unbuffered, so prints arrive as made).

Workers never see the kernel's interrupt: they run in a process group of their
own and ignore SIGINT. They die with the kernel: they watch the job pipe for
hang-up, and on Linux ask for ``PR_SET_PDEATHSIG``. (That signal is tied to the
thread that started the worker, so workers are only ever started on the event
loop's thread, which lives as long as the scheduler.) :meth:`ProcessMode.close`
kills every worker and reaps it.

Per worker, the kernel runs three daemon threads: the job thread, which pickles
the inputs, writes the job, blocks reading the reply and unpickles it, and one
reader per output stream. The event loop only takes the inputs (by reference),
waits on a future and merges the outputs: nothing blocks it, and ``run()`` can be
cancelled at every ``await``.

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
* Inputs are pickled on the job thread, just after the task starts: a cell of the
  notebook that changes one of them in place at that very moment may send a mix.
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
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from .. import _worker, costs, reports
from ..cells import MapItemCell
from ..errors import BadArgument
from ..namespace.analysis import CellNames, analyze
from ..namespace.shipping import Job, Reply, decode_reply, merge
from ..output import _report_internal_error
from ..records import BrokenWorker, TaskError
from .abc import Mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..output import TaskOutput
    from ..records import TaskRecord

__all__ = ("BrokenWorker", "ProcessMode")

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
DIED = "worker process died ({how})"
LOST = "lost track of the worker process ({error}); it was stopped"
SIGKILL_HINT = "; the system may have run out of memory, or it was killed from outside"
CLOSED = "process mode was closed (ipytasks unloaded)"

#: How long a finished job's output may lag behind its reply.
OUTPUT_GRACE = 5.0
#: How long a dead worker may take to be reaped, and its last words to arrive.
DEATH_GRACE = 5.0
#: Pipe capacity asked for the job and reply pipes (Linux; 1 MiB is the default limit).
PIPE_SIZE = 1 << 20

#: Runs _worker.py as __main__ without runpy (which imports typing: 15 ms more per start).
_BOOTSTRAP = (
    "import sys\n"
    "path = sys.argv.pop(1)\n"
    "with open(path, 'rb') as file:\n"
    "    source = file.read()\n"
    "exec(compile(source, path, 'exec'))\n"
)


def _cpu_count() -> int:
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _how_it_died(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    how = f"killed by signal {name}"
    return how + SIGKILL_HINT if -returncode == signal.SIGKILL else how


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass


def _worker_environ() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("MPLBACKEND", "").startswith("module://"):  # inline backends need a kernel
        del env["MPLBACKEND"]  # the worker puts its own (Agg, showing into the task's output)
    return env


def show_displays(task: TaskRecord, reply: Reply) -> None:
    """Show in the task's output what its worker displayed (figures, rendered there);
    a rendered Figure result is shown as the result."""
    if task.sink is not None:
        for data, metadata in reply.displays:
            task.sink.display(data, metadata)
    task._result_display = reply.result_display


def _forwarding_failed(exc: BaseException) -> None:
    _report_internal_error("forwarding a worker's output", exc)


class _Outcome:
    __slots__ = ("died", "reply")

    def __init__(self, reply: Reply | None = None, died: BrokenWorker | None = None) -> None:
        self.reply = reply
        self.died = died


class _Worker:
    """One worker process, its job thread and its two output readers."""

    def __init__(self) -> None:
        marker = b"\0ipytasks-end-" + secrets.token_hex(8).encode() + b"\0"
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_ends = (cmd_r, rep_w, out_w, err_w)
        try:
            _grow_pipe(cmd_w)
            _grow_pipe(rep_r)
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-u",
                    "-c",
                    _BOOTSTRAP,
                    _worker.__file__,
                    str(cmd_r),
                    str(rep_w),
                    str(os.getpid()),
                    marker.hex(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(cmd_r, rep_w),
                env=_worker_environ(),
                process_group=0,
            )
        except BaseException:
            for fd in (cmd_w, rep_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self.pid = self.proc.pid
        self._cmd = cmd_w
        self._rep = rep_r
        self._marks = [0, 0]
        self._environ: dict[bytes, bytes] | None = None  # as last sent to the worker
        self.killed = False
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stdout = _worker.StreamPump(
            out_r, "stdout", marker, f"ipytasks-{self.pid}-stdout", on_error=_forwarding_failed
        )
        self._stderr = _worker.StreamPump(
            err_r, "stderr", marker, f"ipytasks-{self.pid}-stderr", on_error=_forwarding_failed
        )
        self._thread = threading.Thread(
            target=self._serve, name=f"ipytasks-worker-{self.pid}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<worker {self.pid}>"

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None

    def submit(
        self, job: Job, sink: TaskOutput | None, deliver: Callable[[_Outcome], None]
    ) -> None:
        self._jobs.put((job, sink, deliver))

    def kill(self) -> None:
        """SIGKILL the worker and its process group (what the cell started), now."""
        self.killed = True
        if self.proc.returncode is not None:  # reaped: its pid may belong to another now
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            try:
                self.proc.kill()
            except OSError:
                pass

    def close(self, timeout: float) -> None:
        """Kill the worker, reap it, and end its threads (waits at most ``timeout`` each)."""
        self.kill()
        self._jobs.put(None)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        for thread in (self._thread, self._stdout.thread, self._stderr.thread):
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- the job thread --------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                job, sink, deliver = item
                del item
                try:
                    outcome = self._run(job, sink)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not hang the task
                    outcome = _Outcome(Reply(error=exc))
                del job
                died = outcome.died is not None
                deliver(outcome)
                del outcome  # the values it carries belong to the notebook now
                if died:
                    return
        finally:
            for fd in (self._cmd, self._rep):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _run(self, job: Job, sink: TaskOutput | None) -> _Outcome:
        emit = sink.write if sink is not None else None
        self._stdout.begin(emit)
        self._stderr.begin(emit)
        ship_environ = job.environ != self._environ
        try:
            meta, values, buffers = job.encode(environ=ship_environ)
        except Exception as exc:  # noqa: BLE001 - ShippingError, or a bug: the task's error
            return _Outcome(Reply(error=exc))
        try:
            _worker.write_message(self._cmd, meta, values, buffers)
            del meta, values, buffers
            if ship_environ:
                self._environ = job.environ
            owner = sink.owner if sink is not None else None
            reply_meta, reply_values, reply_buffers = _worker.read_reply(
                self._rep, functools.partial(reports.worker_note, owner))
        except (OSError, EOFError):
            return _Outcome(died=self._death())
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError: the pipe is out of step
            self.kill()
            self._death()
            return _Outcome(died=BrokenWorker(LOST.format(error=f"{type(exc).__name__}: {exc}")))
        try:
            import pickle

            info = pickle.loads(reply_meta)
            costs.from_worker(owner, info.get("cost"))
            for i, pump in enumerate((self._stdout, self._stderr)):
                if info.get("marked", (True, True))[i]:
                    self._marks[i] += 1
                pump.wait_marks(self._marks[i], OUTPUT_GRACE)
            left = info.get("left")
            if left and sink is not None:
                names = ", ".join(repr(n) for n in left)
                sink.write("stderr", CLOSED_FILES.format(names=names))
            reply = decode_reply(info, reply_values, reply_buffers)
        except Exception as exc:  # noqa: BLE001 - a reply that cannot be read is the task's error
            reply = Reply(error=exc)
        return _Outcome(reply)

    def _death(self) -> BrokenWorker:
        try:
            returncode = self.proc.wait(DEATH_GRACE)
        except subprocess.TimeoutExpired:  # it closed the pipe but lives on
            self.kill()
            returncode = self.proc.wait()
        # Its last words (a faulthandler dump, a C library's message) come first.
        self._stdout.wait_eof(1.0)
        self._stderr.wait_eof(1.0)
        return BrokenWorker(DIED.format(how=_how_it_died(returncode)))


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
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
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
        worker.close(DEATH_GRACE)
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

    async def acquire(self) -> _Worker:
        """A worker for one job: an idle one, a new one, or the next one released."""
        while True:
            if self.closed:
                raise RuntimeError(CLOSED)
            while self._idle:
                worker = self._idle.pop()  # the most recently used: warmest
                if worker.alive():
                    self._busy.add(worker)
                    return worker
                self._forget(worker)
            if self._count() < self.size:
                worker = self._spawn()
                self._busy.add(worker)
                self._start_filling()  # the rest of the pool, one per loop turn
                return worker
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # it was our turn: hand it on
                raise

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

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
        if self.closed or not worker.alive() or self._count() >= self.size:
            self._forget(worker)
            self._start_filling()
            return
        self._idle.append(worker)
        self._wake()

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
        worker.kill()
        worker._jobs.put(None)  # ends its job thread
        with self._lock:
            # Keep it until reaped (by its job thread, or close() at the latest).
            self._started = {w for w in self._started if w.proc.poll() is None}

    def close(self, timeout: float = DEATH_GRACE) -> None:
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
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(RuntimeError(CLOSED))

            try:
                self.loop.call_soon_threadsafe(fail)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


class ProcessMode(Mode):
    """Run a cell in a worker process: inputs shipped in, bound names merged back.

    :param max_workers: how many worker processes to keep; ``None``: one per core
        this process may use.
    """

    name = "process"

    def __init__(self, shell: Any, max_workers: int | None = None) -> None:
        super().__init__(shell)
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")
        self.max_workers = max_workers or _cpu_count()
        self._pool: _Pool | None = None
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (idle or busy)."""
        if self._pool is None:
            return []
        return [w.pid for w in self._pool.workers if w.alive()]

    def prepare(self, task: TaskRecord) -> None:
        """Refuse, at submission, a cell that cannot run in a worker whatever happens."""
        # prepared at submission: the task's own cell, never a --map item's
        assert task.cell is not None and not isinstance(task.cell, MapItemCell)
        names = analyze(task.cell.tree)
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

    def resize(self, max_workers: int | None) -> None:
        """Keep up to ``max_workers`` worker processes (``None``: one per core) from now on."""
        self.max_workers = max_workers or _cpu_count()
        if self._pool is not None:
            self._pool.resize(self.max_workers)

    def _get_pool(self) -> _Pool:
        if self._closed:
            raise RuntimeError(CLOSED)
        if self._pool is None:
            self._pool = _Pool(asyncio.get_running_loop(), self.max_workers)
        return self._pool

    def _job(self, task: TaskRecord) -> tuple[Job, CellNames]:
        """The job for a task, with its inputs taken from the namespace now."""
        cell = task.cell
        assert cell is not None
        if isinstance(cell, MapItemCell):
            # One item of --map: the cell with VAR bound to the item. What an item
            # binds stays in its own scope, so only its result comes back.
            var = cell.function.__code__.co_varnames[0]
            names = analyze(cell.cell.tree)
            job = Job.take(self.shell, cell.cell, names)
            job.sample = costs.watching()
            job.inputs.pop(var, None)
            job.inputs[var] = cell.item
            job.binds = job.deletes = frozenset()
            job.placeholders = []
            return job, names
        names = analyze(cell.tree)
        job = Job.take(self.shell, cell, names)
        job.sample = costs.watching()
        return job, names

    def _job_told(self, task: TaskRecord) -> Job:
        """The task's job; its output says which in-place changes stay in the worker."""
        job, names = self._job(task)
        changed = sorted(set(job.inputs) & (names.mutates - names.binds))
        if changed and task.sink is not None:
            listed = ", ".join(repr(n) for n in changed)
            verb = "is" if len(changed) == 1 else "are"
            task.sink.write("stderr", CHANGED_IN_PLACE.format(names=listed, verb=verb))
        return job

    async def run(self, task: TaskRecord) -> Any:
        job = self._job_told(task)
        pool = self._get_pool()
        worker = await pool.acquire()
        loop = pool.loop
        future: asyncio.Future[_Outcome] = loop.create_future()

        def settle(outcome: _Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def deliver(outcome: _Outcome) -> None:  # on the worker's job thread
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # the loop is closed; nobody waits any more
                pass

        worker.submit(job, task.sink, deliver)
        del job
        try:
            outcome = await future
        except BaseException:
            pool.kill(worker)
            raise
        if outcome.died is not None:
            pool.discard(worker)
            raise outcome.died.with_traceback(None)
        pool.release(worker)
        reply = outcome.reply
        assert reply is not None
        show_displays(task, reply)
        if reply.error is not None:
            error = reply.error
            del reply, outcome
            if isinstance(error, TaskError):
                error = error.with_traceback(None)
            raise error
        return merge(self.shell.user_ns, reply)

    def close(self) -> None:
        """Kill and reap every worker; the mode cannot be used again."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


mode_class = ProcessMode

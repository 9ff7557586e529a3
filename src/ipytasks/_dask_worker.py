"""What runs on a Dask worker for dask mode: warm ``_worker.py`` processes.

Nothing here imports ipytasks, IPython or Dask at import time: the kernel does not
ask the cluster to have ipytasks installed. It sends the source of this file and of
``_worker.py`` once per cluster, inside a Dask worker plugin
(:mod:`ipytasks.modes._dask`); each Dask worker process runs them as two private
modules named after a hash of both sources (so two kernels with different ipytasks
versions can share a cluster). What a Dask worker needs is Python with
``distributed`` (and so cloudpickle) and the libraries the cells import.

How a task runs
---------------
The kernel submits one Dask task per attempt; it calls :func:`run_job` in a thread
of the Dask worker with the job exactly as process mode sends it (meta, values,
out-of-band buffers). :func:`run_job` hands it to a ``_worker.py`` process of its own
— the same worker process mode uses, started the same way (``python -P -u``, a
process group of its own, SIGINT ignored, dies with its parent) — and blocks until
the reply comes back. So the body never runs inside the Dask worker:

* **Output**: the child's fd 1 and fd 2 are pipes read by two threads here, and
  every chunk goes to the kernel at once as a Dask structured event
  (``worker.log_event(topic, [tag, stream, text])``); C extensions' writes and a
  segfault's faulthandler dump included. Each job ends with a random marker on both
  streams, so all of a job's output is sent before its result, and the result says
  how many chunks there were (the kernel waits for them all).
* **Cancel and timeout**: the kernel cancels the Dask future. While it waits for
  the reply, :func:`run_job` checks every 0.1 s whether its task is still wanted on
  this worker (the scheduler tells the worker at once when a future is cancelled,
  or its client went away); if not, it SIGKILLs the child's process group (what the
  cell started dies with it), reaps it and returns. The body stops even inside a C
  call that blocks, and the Dask worker thread is free for the next task. It says
  so with an ``end`` event, which the kernel waits for before it marks the task
  cancelled.
* **A body that kills its process** (segfault, ``os._exit``, out of memory) ends
  the child only: the task fails with ``worker process died (exit code 3)`` and the
  Dask worker, and every other task on it, carry on. A new child is started for
  the next job.
* The child gets the kernel's environment, import path and working directory when
  the kernel sends them (a cluster on the kernel's machine); a remote cluster's
  workers keep their own.

One process per job that runs at once (per thread of the Dask worker) is kept warm
between jobs; an idle one ends after :data:`IDLE_TIMEOUT` seconds, and all of a
kernel's end when it unloads ipytasks (the plugin's teardown) or the Dask worker
exits.
"""

from __future__ import annotations

import os
import pickle
import queue
import secrets
import select
import signal
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: The ``_worker`` module of this runtime (set by :func:`install`).
_worker: Any = None
#: The source of ``_worker.py``, sent to each child it starts.
_worker_source = b""

DIED = "worker process died ({how})"
SIGKILL_HINT = "; the system may have run out of memory, or it was killed from outside"
#: How long a finished job's output may lag behind its reply.
OUTPUT_GRACE = 5.0
#: How long a dead child may take to be reaped, and its last words to arrive.
DEATH_GRACE = 5.0
#: How often a running job checks that its Dask task is still wanted.
CHECK_INTERVAL = 0.1
#: An idle child older than this (seconds since its last job) is ended.
IDLE_TIMEOUT = 300.0
#: Text chunks sent as one event at most (a long burst of output is split).
CHUNK = 32 * 1024

#: Runs the _worker.py source read from an inherited pipe as __main__.
_BOOTSTRAP = (
    "import os, sys\n"
    "fd = int(sys.argv.pop(1))\n"
    "parts = []\n"
    "while True:\n"
    "    part = os.read(fd, 1 << 16)\n"
    "    if not part:\n"
    "        break\n"
    "    parts.append(part)\n"
    "os.close(fd)\n"
    "exec(compile(b''.join(parts), 'ipytasks/_worker.py', 'exec'))\n"
)

#: Running states of a Dask task on its worker: anything else means nobody wants it.
_WANTED = frozenset({"executing", "long-running", "resumed"})


def install(worker_module: Any, worker_source: bytes) -> None:
    """Give this runtime its ``_worker`` module (called once, by the plugin)."""
    global _worker, _worker_source
    _worker = worker_module
    _worker_source = worker_source


def _how_it_died(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    how = f"killed by signal {name}"
    return how + SIGKILL_HINT if -returncode == signal.SIGKILL else how


def _child_environ() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("MPLBACKEND", "").startswith("module://"):  # inline backends need a kernel
        del env["MPLBACKEND"]  # the worker puts its own (Agg, showing into the task's output)
    return env


# -- starting children on one long-lived thread ------------------------------------------

_spawn_lock = threading.Lock()
_spawn_queue: queue.SimpleQueue[Any] | None = None


def _spawner() -> None:
    # PR_SET_PDEATHSIG fires when the *thread* that started a child ends: children
    # are started here, on a thread that lives as long as the Dask worker process.
    assert _spawn_queue is not None
    while True:
        make, reply = _spawn_queue.get()
        try:
            reply.put((True, make()))
        except BaseException as exc:  # noqa: BLE001 - handed to the job that asked
            reply.put((False, exc))


def _spawn() -> _Child:
    global _spawn_queue
    with _spawn_lock:
        if _spawn_queue is None:
            _spawn_queue = queue.SimpleQueue()
            threading.Thread(target=_spawner, name="ipytasks-dask-spawner", daemon=True).start()
    reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _spawn_queue.put((_Child, reply))
    ok, value = reply.get()
    if not ok:
        raise value
    return value


# -- one child process --------------------------------------------------------------------


def _chunked(emit: Callable[[str, str], None]) -> Callable[[str, str], None]:
    """``emit`` in pieces of at most CHUNK characters (one event message each)."""

    def send(name: str, text: str) -> None:
        for at in range(0, len(text), CHUNK):
            emit(name, text[at : at + CHUNK])

    return send


class _Died(Exception):
    """The child ended before it replied; the message says how."""


class _Child:
    """One ``_worker.py`` process, its pipes and its two output readers."""

    def __init__(self) -> None:
        marker = b"\0ipytasks-end-" + secrets.token_hex(8).encode() + b"\0"
        src_r, src_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_ends = (src_r, cmd_r, rep_w, out_w, err_w)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-u",
                    "-c",
                    _BOOTSTRAP,
                    str(src_r),
                    str(cmd_r),
                    str(rep_w),
                    str(os.getpid()),
                    marker.hex(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(src_r, cmd_r, rep_w),
                env=_child_environ(),
                process_group=0,
            )
        except BaseException:
            for fd in (src_w, cmd_w, rep_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self.pid = self.proc.pid
        self._cmd = cmd_w
        self._rep = rep_r
        self._marks = [0, 0]
        self.killed = False
        self.last_used = time.monotonic()
        self._pumps = (
            _worker.StreamPump(out_r, "stdout", marker, f"ipytasks-dask-{self.pid}-stdout"),
            _worker.StreamPump(err_r, "stderr", marker, f"ipytasks-dask-{self.pid}-stderr"),
        )
        try:
            view = memoryview(_worker_source)
            while view:
                view = view[os.write(src_w, view) :]
        except OSError:
            pass  # it died at once: the first job says how
        finally:
            os.close(src_w)

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the child and its process group (what the cell started), now."""
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

    def close(self) -> None:
        """Kill the child, reap it and close its pipes."""
        self.kill()
        try:
            self.proc.wait(DEATH_GRACE)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self._cmd, self._rep):
            try:
                os.close(fd)
            except OSError:
                pass

    def run(
        self,
        payload: tuple[bytes, bytes, list[Any], list[bool]],
        emit: Callable[[str, str], None],
        wanted: Callable[[], bool],
    ) -> tuple[Any, Any, list[Any]] | None:
        """Run one job: its reply ``(meta, values, buffers)``, or ``None`` if it was stopped.

        :raises _Died: the child ended first (not killed by us).
        """
        for pump in self._pumps:
            pump.begin(_chunked(emit))
        meta, values, buffers, readonly = payload
        try:
            _worker.write_message(
                self._cmd, meta, values, [pickle.PickleBuffer(b) for b in buffers], readonly
            )
            poller = select.poll()
            poller.register(self._rep, select.POLLIN)
            check = time.monotonic() + CHECK_INTERVAL
            while True:
                # The job's notes (progress, where it is) come ahead of its reply; the
                # task is checked as often while they come as while nothing does.
                ready = poller.poll(CHECK_INTERVAL * 1000)
                if not ready or time.monotonic() >= check:
                    check = time.monotonic() + CHECK_INTERVAL
                    if not wanted():
                        self.kill()
                        return None
                if not ready:
                    continue
                reply = _worker.read_message(self._rep)
                note = _worker.note_of(reply[0])
                if note is None:
                    break
                emit("note", note)
        except (OSError, EOFError):
            if self.killed:
                return None
            raise _Died(self._death()) from None
        info = pickle.loads(reply[0])
        for i, pump in enumerate(self._pumps):
            if info.get("marked", (True, True))[i]:
                self._marks[i] += 1
            pump.wait_marks(self._marks[i], OUTPUT_GRACE)
        self.last_used = time.monotonic()
        return info, reply[1], reply[2]

    def _death(self) -> str:
        try:
            returncode = self.proc.wait(DEATH_GRACE)
        except subprocess.TimeoutExpired:  # it closed the pipe but lives on
            self.kill()
            returncode = self.proc.wait()
        for pump in self._pumps:  # its last words (a faulthandler dump) come first
            pump.wait_eof(1.0)
        return DIED.format(how=_how_it_died(returncode))


# -- the children of one kernel (session) on this Dask worker ---------------------------


class _Session:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Child] = []
        self.busy: set[_Child] = set()
        self.closed = False

    def acquire(self) -> _Child:
        with self.lock:
            if self.closed:
                raise RuntimeError("ipytasks' session on this Dask worker was closed")
            while self.idle:
                child = self.idle.pop()  # the most recently used: warmest
                if child.alive():
                    self.busy.add(child)
                    return child
                child.close()
        child = _spawn()
        with self.lock:
            if self.closed:
                child.close()
                raise RuntimeError("ipytasks' session on this Dask worker was closed")
            self.busy.add(child)
        return child

    def release(self, child: _Child) -> None:
        with self.lock:
            self.busy.discard(child)
            if not self.closed and child.alive():
                self.idle.append(child)
                return
        child.close()

    def expire(self, now: float) -> None:
        with self.lock:
            old = [c for c in self.idle if now - c.last_used > IDLE_TIMEOUT]
            self.idle = [c for c in self.idle if c not in old]
        for child in old:
            child.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            children = [*self.idle, *self.busy]
            self.idle.clear()
        for child in children:
            child.kill()
        for child in children:
            child.close()


_sessions: dict[str, _Session] = {}
_sessions_lock = threading.Lock()
_janitor: threading.Thread | None = None


def _janitor_loop() -> None:
    while True:
        time.sleep(IDLE_TIMEOUT / 10)
        now = time.monotonic()
        with _sessions_lock:
            sessions = list(_sessions.values())
        for session in sessions:
            session.expire(now)


def open_session(name: str) -> _Session:
    """The children of kernel session ``name`` on this worker (made on first use)."""
    global _janitor
    with _sessions_lock:
        session = _sessions.get(name)
        if session is None:
            session = _sessions[name] = _Session()
        if _janitor is None:
            _janitor = threading.Thread(
                target=_janitor_loop, name="ipytasks-dask-janitor", daemon=True
            )
            _janitor.start()
        return session


def close_session(name: str) -> None:
    """End every child of kernel session ``name`` on this worker, running or idle."""
    with _sessions_lock:
        session = _sessions.pop(name, None)
    if session is not None:
        session.close()


def _wanted_check() -> Callable[[], bool]:
    """Whether the Dask task running on this thread is still wanted (not cancelled)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    if key is None:
        return lambda: True

    def wanted() -> bool:
        state = worker.state.tasks.get(key)
        return state is not None and state.state in _WANTED

    return wanted


def run_job(
    session_name: str, tag: str, topic: str, payload: tuple[bytes, bytes, list[Any], list[bool]]
) -> dict[str, Any]:
    """Run one process-mode job in a child process; what the kernel gets back.

    ``payload`` is the job as process mode writes it: ``(meta, values, buffers,
    readonly)``, each buffer's read-only flag apart (Dask may deliver a buffer that
    was writable in the kernel as read-only bytes).

    Returns ``{"meta": ..., "values": ..., "buffers": [...], "chunks": n}`` for a
    reply, ``{"died": message, "chunks": n}`` when the child died, and ``{"stopped":
    True, "chunks": n}`` when the task was cancelled meanwhile (the child is killed
    and reaped by then). Events on ``topic``: ``[tag, "start", address, pid]``, then
    the output as ``[tag, "stdout"|"stderr", text]`` and the job's notes as ``[tag,
    "note", note]`` (``n`` of them in all), then ``[tag, "end", stopped]`` once the
    child is done with (or gone).
    """
    from distributed import get_worker

    worker = get_worker()
    wanted = _wanted_check()
    if not wanted():
        return {"stopped": True, "chunks": 0}
    session = open_session(session_name)
    child = session.acquire()
    lock = threading.Lock()  # the two readers emit at once
    sent = [0]

    def emit(stream: str, text: str) -> None:
        with lock:
            sent[0] += 1
            worker.log_event(topic, [tag, stream, text])

    worker.log_event(topic, [tag, "start", worker.address, child.pid])
    stopped = False
    try:
        try:
            reply = child.run(payload, emit, wanted)
        except _Died as died:
            return {"died": str(died), "chunks": sent[0]}
        finally:
            for pump in child._pumps:
                pump.begin(None)
            session.release(child)  # a killed or dead child is reaped here
        if reply is None:
            stopped = True
            return {"stopped": True, "chunks": sent[0]}
        info, values, buffers = reply
        # bytes and bytearray (read-only or not, as the worker process sent them):
        # Dask sends them as frames of their own.
        return {"meta": info, "values": values, "buffers": buffers, "chunks": sent[0]}
    finally:
        worker.log_event(topic, [tag, "end", stopped])

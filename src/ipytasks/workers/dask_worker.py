"""What runs on a Dask worker for dask mode: warm worker processes, one kernel session each.

Nothing here imports ipytasks, IPython or Dask at import time: the kernel does not
ask the cluster to have ipytasks installed. It sends the source of this module and
of :data:`MODULES` once per cluster, inside a Dask worker plugin
(:mod:`ipytasks.modes._dask`); each Dask worker process runs them as a private
package named after a hash of the sources (so two kernels with different ipytasks
versions can share a cluster). What a Dask worker needs is Python with
``distributed`` (and so cloudpickle) and the libraries the cells import.

How a task runs
---------------
The kernel submits one Dask task per attempt; it calls :func:`run_job` in a thread
of the Dask worker with the job exactly as process mode sends it (meta, values,
out-of-band buffers). :func:`run_job` hands it to a worker process of its own — a
:class:`.local.Child`, the very worker process mode uses, started the same way —
and blocks until the reply comes back. So the body never runs inside the Dask worker:

* **Output**: each chunk the child prints goes to the kernel at once as a Dask
  structured event (``worker.log_event(topic, [tag, stream, text])``); C
  extensions' writes and a segfault's faulthandler dump included. All of a job's
  output is sent before its result, and the result says how many chunks there
  were (the kernel waits for them all).
* **Cancel and timeout**: the kernel cancels the Dask future. While it waits for
  the reply, the child's job checks every 0.1 s whether its task is still wanted on
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

import pickle
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from . import local

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("MODULES", "close_session", "open_session", "run_job")

#: The modules of the runtime the kernel sends, in import order (this one last).
MODULES = ("wire", "watch", "child", "local", "dask_worker")

#: An idle child older than this (seconds since its last job) is ended.
IDLE_TIMEOUT = 300.0
#: Text chunks sent as one event at most (a long burst of output is split).
CHUNK = 32 * 1024

#: Running states of a Dask task on its worker: anything else means nobody wants it.
_WANTED = frozenset({"executing", "long-running", "resumed"})


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


def _spawn() -> local.Child:
    global _spawn_queue
    with _spawn_lock:
        if _spawn_queue is None:
            _spawn_queue = queue.SimpleQueue()
            threading.Thread(target=_spawner, name="ipytasks-dask-spawner", daemon=True).start()
    reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _spawn_queue.put((local.Child, reply))
    ok, value = reply.get()
    if not ok:
        raise value
    return value


def _chunked(emit: Callable[[str, str], None]) -> Callable[[str, str], None]:
    """``emit`` in pieces of at most CHUNK characters (one event message each)."""

    def send(name: str, text: str) -> None:
        for at in range(0, len(text), CHUNK):
            emit(name, text[at : at + CHUNK])

    return send


# -- the children of one kernel (session) on this Dask worker ---------------------------


class _Session:
    """The warm children of one kernel on this Dask worker: idle ones, and busy ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[local.Child] = []
        self.busy: set[local.Child] = set()
        self.closed = False

    def acquire(self) -> local.Child:
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

    def release(self, child: local.Child) -> None:
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

    def emit(stream: str, text: Any) -> None:
        with lock:
            sent[0] += 1
            worker.log_event(topic, [tag, stream, text])

    worker.log_event(topic, [tag, "start", worker.address, child.pid])
    stopped = False
    try:
        meta, values, buffers, readonly = payload
        try:
            reply = child.run(
                lambda: (meta, values, [pickle.PickleBuffer(b) for b in buffers]),
                _chunked(emit),
                readonly=readonly,
                wanted=wanted,
                on_note=lambda note: emit("note", note),
            )
        except local.Died as died:
            return {"died": str(died), "chunks": sent[0]}
        finally:
            child.mute()
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

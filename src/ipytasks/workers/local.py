"""A worker process seen from its parent: start it, give it a job, hear its output, end it.

The parent is the kernel (process mode keeps a warm pool of these) or a Dask worker (dask
mode's runtime, :mod:`.dask_worker`, keeps its own). Both use :class:`Child`, so a worker
starts, talks, streams and dies the same way wherever it lives. This module needs the
standard library only: on a Dask worker it runs from source the kernel sent.

Starting
--------
``python -P -u -c <bootstrap> ipytasks-worker CMD_FD REPLY_FD PARENT_PID MARKER SHM`` in a
process group of its own, stdin from ``/dev/null``, fd 1 and fd 2 as two pipes. The
first thing on the job pipe is the compiled code of :data:`CHILD_MODULES` (marshal:
the child is the parent's own interpreter); the bootstrap makes them a private package
and calls :func:`.child.main`. So the child imports nothing of the kernel side and needs
no ipytasks installed, and no source is compiled per start. ``-P``: no current directory
in ``sys.path`` (each job brings the kernel's); ``-u``: unbuffered, so prints arrive as
made. ``PR_SET_PDEATHSIG`` (in the child) is tied to the *thread* that started it:
start children on a thread that lives as long as they should.

Talking
-------
One job at a time (:meth:`Child.run`): the job as one :mod:`.wire` message, the reply as
another; their buffers of a megabyte and more through shared memory (:mod:`.segments`,
over a Unix socket passed as one more descriptor; Linux), whose warm segments each side
gives up after :data:`.segments.IDLE` seconds without a job. Meanwhile two
:class:`StreamPump` threads read fd 1 and fd 2 as the bytes arrive (C extensions' writes
and a segfault's faulthandler dump included) and hand the text on; the notes the job
sends ahead of its reply (progress, where it is) are handed on as they come. Each job
that wrote anything ends with a random marker on both streams, so the reply is returned
only once all the job's output is in, and output is never given to the next job.

A caller that must not block (process mode's event loop) runs a small job in halves:
:meth:`Child.start` writes it, :meth:`Child.take_reply` reads what has come each time the
reply pipe is readable, and says when the rest (a large reply, output still coming, a
death) is for :meth:`Child.receive`, on a thread.

Ending
------
:meth:`Child.kill` sends SIGKILL to its process group (what the cell started dies with
it), even in the middle of a C call. A child that dies on its own is seen as end-of-file
on the reply pipe; :class:`Died` says how, from the exit code or the signal.
"""

from __future__ import annotations

import codecs
import importlib.util
import marshal
import os
import pickle
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import child, segments, wire

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "CHILD_MODULES",
    "DEATH_GRACE",
    "OUTPUT_GRACE",
    "PIPE_SIZE",
    "TAG",
    "Child",
    "Died",
    "StreamPump",
    "use_sources",
)

#: The child's first argument: how to recognise a worker process in ``ps``.
TAG = "ipytasks-worker"
#: The modules the child runs, in import order, and the private package they form there.
CHILD_MODULES = ("segments", "wire", "watch", "child")
PACKAGE = child.PACKAGE

DIED = "worker process died ({how})"
SIGKILL_HINT = "; the system may have run out of memory, or it was killed from outside"
LOST = "lost track of the worker process ({error}); it was stopped"

#: How long a finished job's output may lag behind its reply.
OUTPUT_GRACE = 5.0
#: How long a dead child may take to be reaped, and its last words to arrive.
DEATH_GRACE = 5.0
#: Pipe capacity asked for the job and reply pipes (Linux; 1 MiB is the default limit).
PIPE_SIZE = 1 << 20
#: How often a job checks that it is still wanted, when its caller asks (dask mode).
CHECK_INTERVAL = 0.1

#: Reads the child's code from the job pipe, makes it package PACKAGE, runs child.main.
#: (Not runpy, which imports typing: 15 ms more per start.)
_BOOTSTRAP = f"""\
import marshal, os, sys, types
def _boot(fd):
    def read(size):
        parts = []
        while size:
            part = os.read(fd, size)
            if not part:
                os._exit(0)  # the parent went away before it sent the code
            parts.append(part)
            size -= len(part)
        return b''.join(parts)
    package = types.ModuleType({PACKAGE!r})
    package.__path__ = []
    sys.modules[package.__name__] = package
    for name, code in marshal.loads(read(int.from_bytes(read(8), 'little'))):
        module = types.ModuleType(package.__name__ + '.' + name)
        module.__package__ = package.__name__
        sys.modules[module.__name__] = module
        setattr(package, name, module)
        exec(code, module.__dict__)
    return package.child
_boot(int(sys.argv[2])).main(sys.argv[2:])
"""

_sources: dict[str, bytes] = {}
_code: bytes | None = None


def use_sources(sources: dict[str, bytes]) -> None:
    """Start children from these sources of :data:`CHILD_MODULES` rather than from the
    files next to this module (a Dask worker has the sources the kernel sent, no files)."""
    global _code
    _sources.update(sources)
    _code = None


def child_code() -> bytes:
    """What the bootstrap reads first: the length, then the marshalled ``(name, code)``
    of each of :data:`CHILD_MODULES` (compiled once per process)."""
    global _code
    if _code is None:
        modules = []
        for name in CHILD_MODULES:
            source = _sources.get(name)
            if source is not None:
                code = compile(source, f"ipytasks/workers/{name}.py", "exec", dont_inherit=True)
            else:  # the installed module's own code (its cached bytecode)
                spec = importlib.util.find_spec(f"{__package__}.{name}")
                get_code = getattr(spec.loader if spec else None, "get_code", None)
                if spec is None or get_code is None:
                    raise RuntimeError(f"cannot find the code of the worker's module {name!r}")
                code = get_code(spec.name)
            modules.append((name, code))
        blob = marshal.dumps(modules)
        _code = len(blob).to_bytes(8, "little") + blob
    return _code


def how_it_died(returncode: int) -> str:
    """``exit code 3`` or ``killed by signal SIGSEGV`` (with a hint for SIGKILL)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    how = f"killed by signal {name}"
    return how + SIGKILL_HINT if -returncode == signal.SIGKILL else how


def child_environ() -> dict[str, str]:
    """The parent's environment, for a child: without an inline backend, which needs a kernel
    (the child puts its own: Agg, showing into the task's output)."""
    env = dict(os.environ)
    if env.get("MPLBACKEND", "").startswith("module://"):
        del env["MPLBACKEND"]
    return env


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass


class Died(Exception):
    """The child ended before it replied; the message says how (``worker process died (…)``)."""


class StreamPump:
    """Reads one output stream of a child and hands its text on, job by job.

    ``emit(name, text)`` receives the text of the current job (set by :meth:`begin`).
    Counts the end-of-job markers it strips, so the job's owner can wait until the
    output of a job is all in. Text read before the first job is kept for it (a
    child that fails to start says why there).
    """

    def __init__(
        self,
        fd: int,
        name: str,
        marker: bytes,
        thread_name: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._fd = fd
        self._marker = marker
        self._cond = threading.Condition()
        self._emit: Callable[[str, str], None] | None = None
        self._on_error = on_error
        self._started = False
        self._early: list[str] = []
        self.marks = 0
        self.eof = False
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()

    def begin(self, emit: Callable[[str, str], None] | None) -> None:
        """Send what comes from now on to ``emit(name, text)`` (``None``: nowhere)."""
        with self._cond:
            self._emit = emit
            early, self._early = self._early, []
            self._started = True
            for text in early:
                self._write(text)

    def _write(self, text: str) -> None:
        if self._emit is None:
            return
        try:
            self._emit(self.name, text)
        except Exception as exc:  # noqa: BLE001 - the reader must go on (markers)
            if self._on_error is not None:
                self._on_error(exc)

    def wait_marks(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.marks >= count or self.eof, timeout)

    def wait_eof(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.eof, timeout)

    def _deliver(self, text: str) -> None:
        if not text:
            return
        with self._cond:
            if not self._started:
                self._early.append(text)
            else:
                self._write(text)

    def _run(self) -> None:
        marker = self._marker
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        carry = b""
        try:
            while True:
                try:
                    chunk = os.read(self._fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                data = carry + chunk if carry else chunk
                carry = b""
                while True:
                    at = data.find(marker)
                    if at < 0:
                        break
                    self._deliver(decoder.decode(data[:at], final=True))
                    decoder.reset()
                    data = data[at + len(marker) :]
                    with self._cond:
                        self.marks += 1
                        self._cond.notify_all()
                keep = _partial_marker(data, marker)
                if keep:
                    data, carry = data[:-keep], data[-keep:]
                self._deliver(decoder.decode(data))
        finally:
            self._deliver(decoder.decode(carry, final=True))
            try:
                os.close(self._fd)
            except OSError:
                pass
            with self._cond:
                self.eof = True
                self._cond.notify_all()


def _partial_marker(data: bytes, marker: bytes) -> int:
    """How many bytes at the end of ``data`` could be the start of ``marker``."""
    tail = data[-(len(marker) - 1) :]
    if marker[:1] not in tail:
        return 0
    for size in range(len(tail), 0, -1):
        if data.endswith(marker[:size]):
            return size
    return 0


class _IdleKeeper:
    """Gives up the warm segments of children that have not run a job for a while: one
    daemon thread for all of them, running only while some child holds one."""

    def __init__(self) -> None:
        import weakref

        self._children: weakref.WeakSet[Child] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, child: Child) -> None:
        with self._lock:
            self._children.add(child)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ipytasks-shm-idle", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(segments.IDLE / 4)
            now = time.monotonic()
            with self._lock:
                children = list(self._children)
                if not children:
                    self._thread = None
                    return
            for one in children:
                one.release_idle(now)
            del children


_idle_keeper = _IdleKeeper()


class Child:
    """One worker process, its two pipes and its two output readers.

    Started by the constructor (see the module's notes on the starting thread). Any
    thread may :meth:`run` a job, one job at a time; any thread may :meth:`kill` it.

    :param on_error: called with an exception that handing output on raised.
    """

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        marker = b"\0ipytasks-end-" + secrets.token_hex(8).encode() + b"\0"
        code = child_code()
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_ends: tuple[int, ...] = (cmd_r, rep_w, out_w, err_w)
        ours: socket.socket | None = None
        theirs: socket.socket | None = None
        if segments.supported():
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            except OSError:  # without it, everything goes through the pipes
                ours = theirs = None
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
                    TAG,
                    str(cmd_r),
                    str(rep_w),
                    str(os.getpid()),
                    marker.hex(),
                    f"{theirs.fileno()}:{segments.IDLE!r}" if theirs is not None else "-",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(cmd_r, rep_w) + ((theirs.fileno(),) if theirs is not None else ()),
                env=child_environ(),
                process_group=0,
            )
        except BaseException:
            for fd in (cmd_w, rep_r, out_r, err_r):
                os.close(fd)
            if ours is not None:
                ours.close()
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
            if theirs is not None:
                theirs.close()
        self.pid = self.proc.pid
        self._shared = segments.SharedMemory(ours, in_place=False) if ours is not None else None
        self._cmd = cmd_w
        self._rep = rep_r
        self._replies = wire.MessageReader(rep_r)
        self._marks = [0, 0]
        self._lock = threading.Lock()
        self._busy = False
        self._held = False  # see hold()
        self._closed = False
        self._on_error = on_error
        self.killed = False
        self.last_used = time.monotonic()
        self._failure: BaseException | None = None  # of start(), for receive()
        self._late: tuple[dict[str, Any], Any, list[Any]] | None = None  # its output is not in
        self._unsent = self._send_code(code)
        if self._shared is not None:
            _idle_keeper.watch(self)
        self._pumps = (
            StreamPump(out_r, "stdout", marker, f"ipytasks-{self.pid}-stdout", on_error),
            StreamPump(err_r, "stderr", marker, f"ipytasks-{self.pid}-stderr", on_error),
        )

    def __repr__(self) -> str:
        return f"<worker process {self.pid}>"

    def _send_code(self, code: bytes) -> memoryview:
        """Write what the pipe takes now, without blocking; :meth:`run` writes the rest."""
        view = memoryview(code)
        os.set_blocking(self._cmd, False)
        try:
            view = view[os.write(self._cmd, view) :]
        except BlockingIOError:
            pass
        except OSError:  # it died at once: its first job says how
            view = view[:0]
        finally:
            os.set_blocking(self._cmd, True)
        return view

    @property
    def threads(self) -> list[threading.Thread]:
        """The threads reading its output (they end once it and its process group are gone)."""
        return [pump.thread for pump in self._pumps]

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None

    def run(
        self,
        encode: Callable[[], tuple[bytes, bytes, list[pickle.PickleBuffer]]],
        emit: Callable[[str, str], None] | None,
        *,
        readonly: list[bool] | None = None,
        wanted: Callable[[], bool] | None = None,
        on_note: Callable[[Any], None] | None = None,
    ) -> tuple[dict[str, Any], Any, list[Any]] | None:
        """Run one job: the reply ``(meta, values, buffers)``, meta unpickled, once all the
        job's output went to ``emit(stream, text)``; ``None`` if it was killed meanwhile.

        :param encode: makes the job's message ``(meta, values, buffers)``. It is called
            here, so that nothing holds the message (large pickles) once it is written and
            the job runs; what it raises propagates, and nothing was sent.
        :param readonly: each buffer's read-only flag, when not the buffer's own.
        :param wanted: asked every :data:`CHECK_INTERVAL` seconds while the job runs; once
            it says no, the child is killed and ``None`` returned.
        :param on_note: receives each note the job sends before its reply (its progress,
            where it is: see :class:`.child.JobTalk`).
        :raises Died: the child ended first (not killed by :meth:`kill`), or the pipes
            went out of step (it is killed then).
        """
        meta, values, buffers = encode()
        self._begin(emit)
        try:
            try:
                self._write(meta, values, buffers, readonly)
                del meta, values, buffers
                reply = self._reply(wanted, on_note)
            except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError: out of step now
                self._failed(exc)  # raises Died, unless it was killed
                return None
            if reply is None:
                return None
            return self._output_in(self._finish(reply), wait=True)
        finally:
            self._end()

    # A job in two halves, for a caller that must not block (process mode's event loop):
    # start() sends a small job; take_reply() reads its reply as it comes, without
    # blocking; what cannot be done without blocking is left to receive(), on a thread.

    #: :meth:`take_reply`: the reply is not all here yet.
    WAIT = "wait"
    #: :meth:`take_reply`: the rest is :meth:`receive`'s (on a thread that may block).
    RECEIVE = "receive"

    @property
    def unsent(self) -> bool:
        """Whether part of the child's code is still to be written (by the first job)."""
        return bool(self._unsent)

    @property
    def reply_fd(self) -> int:
        """The pipe the replies come on (watch it for :meth:`take_reply`)."""
        return self._rep

    def start(self, message: tuple[bytes, bytes], emit: Callable[[str, str], None] | None) -> bool:
        """Begin a job with a small message ``(meta, values)`` (no buffers: the pipe takes
        it at once). Then :meth:`take_reply` each time :attr:`reply_fd` is readable, and
        :meth:`receive` when it says so; or :meth:`abandon` once the child was killed.
        ``False``: it could not be written; :meth:`receive` says why."""
        self._begin(emit)
        try:
            self._write(message[0], message[1], [], None)
        except BaseException as exc:  # noqa: BLE001 - receive() says what it means
            self._failure = exc
            return False
        return True

    def take_reply(
        self, on_note: Callable[[Any], None] | None = None
    ) -> tuple[dict[str, Any], Any, list[Any]] | str:
        """Once :attr:`reply_fd` is readable after :meth:`start`: read what is there, never
        blocking. The reply (as :meth:`run` returns it) when it is all here, small, and the
        job's output is all in; :data:`WAIT`: more is to come; :data:`RECEIVE`: call
        :meth:`receive` (the reply is large, the child ended, the output is late)."""
        replies = self._replies
        try:
            if replies.complete() is False and not replies.fill():
                return self.RECEIVE  # the child ended: receive() says how
            while True:
                whole = replies.complete()
                if whole is None:
                    return self.RECEIVE
                if not whole:
                    return self.WAIT
                message = replies.read()
                note = wire.note_of(message[0])
                if note is None:
                    break
                self._tell(on_note, note)
            reply = self._finish(message)
        except BaseException as exc:  # noqa: BLE001 - receive() says what it means
            self._failure = exc
            return self.RECEIVE
        if self._output_in(reply, wait=False) is None:
            self._late = reply
            return self.RECEIVE
        self._end()
        return reply

    def receive(
        self, on_note: Callable[[Any], None] | None = None
    ) -> tuple[dict[str, Any], Any, list[Any]] | None:
        """The end of a job begun with :meth:`start`, as :meth:`run` ends it (blocks)."""
        try:
            failure, self._failure = self._failure, None
            reply, self._late = self._late, None
            if reply is None:
                try:
                    if failure is not None:
                        raise failure
                    message = self._reply(None, on_note)
                except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError: out of step now
                    self._failed(exc)  # raises Died, unless it was killed
                    return None
                finally:
                    del failure
                if message is None:
                    return None
                reply = self._finish(message)
            return self._output_in(reply, wait=True)
        finally:
            self._end()

    def abandon(self) -> None:
        """Give up the job begun with :meth:`start` (the child was killed meanwhile)."""
        self._failure = self._late = None
        self._end()

    # -- the parts of a job --------------------------------------------------------------

    def _begin(self, emit: Callable[[str, str], None] | None) -> None:
        with self._lock:
            self._busy = True
        for pump in self._pumps:
            pump.begin(emit)

    def _end(self) -> None:
        with self._lock:
            self._busy = False
            if self._closed and not self._held:
                self._close_pipes()

    def hold(self, held: bool) -> None:
        """Keep the pipes open while ``held`` (an event loop watches :attr:`reply_fd`), even
        once closed; they close when let go."""
        with self._lock:
            self._held = held
            if not held and self._closed and not self._busy:
                self._close_pipes()

    def _write(
        self,
        meta: bytes,
        values: bytes,
        buffers: list[pickle.PickleBuffer],
        readonly: list[bool] | None,
    ) -> None:
        while self._unsent:
            self._unsent = self._unsent[os.write(self._cmd, self._unsent) :]
        wire.write_message(self._cmd, meta, values, buffers, readonly, self._shared)

    def _failed(self, exc: BaseException) -> None:
        """What went wrong talking to it: ``None`` when it was killed; else raises Died."""
        if isinstance(exc, (OSError, EOFError)):
            if self.killed:
                return None
            raise Died(self._death()) from None
        self.kill()
        self._death()
        raise Died(LOST.format(error=wire.error_text(exc))) from None

    def _finish(self, message: tuple[Any, Any, list[Any]]) -> tuple[dict[str, Any], Any, list[Any]]:
        """The reply read: its meta unpickled, the shared memory settled, the markers counted."""
        reply_meta, reply_values, reply_buffers = message
        info = pickle.loads(reply_meta)
        if self._shared is not None:
            self._shared.end_message()
            # Views of the kernel's segment the job left behind in the child.
            self._shared.retire(info.get("kept") or [])
        marked = info.get("marked", (True, True))
        for i in (0, 1):
            if marked[i]:
                self._marks[i] += 1
        self.last_used = time.monotonic()
        return info, reply_values, reply_buffers

    def _output_in(
        self, reply: tuple[dict[str, Any], Any, list[Any]], wait: bool
    ) -> tuple[dict[str, Any], Any, list[Any]] | None:
        """The reply once the job's output is all in (waiting for it at most
        :data:`OUTPUT_GRACE`); without ``wait``, ``None`` when some is still coming."""
        for i, pump in enumerate(self._pumps):
            if pump.marks < self._marks[i] and not pump.eof:
                if not wait:
                    return None
                pump.wait_marks(self._marks[i], OUTPUT_GRACE)
        return reply

    def _tell(self, on_note: Callable[[Any], None] | None, note: Any) -> None:
        if on_note is not None:
            try:
                on_note(note)
            except Exception as exc:  # noqa: BLE001 - a note lost, never the job
                if self._on_error is not None:
                    self._on_error(exc)

    def _reply(
        self, wanted: Callable[[], bool] | None, on_note: Callable[[Any], None] | None
    ) -> tuple[Any, Any, list[Any]] | None:
        """Read until the job's reply, handing on its notes; ``None``: killed, unwanted."""
        replies = self._replies
        if wanted is not None:
            poller = select.poll()
            poller.register(self._rep, select.POLLIN)
            check = time.monotonic() + CHECK_INTERVAL
        while True:
            if wanted is not None:
                # Asked as often while notes come as while nothing does.
                ready = replies.pending or poller.poll(CHECK_INTERVAL * 1000)
                if not ready or time.monotonic() >= check:
                    check = time.monotonic() + CHECK_INTERVAL
                    if not wanted():
                        self.kill()
                        return None
                if not ready:
                    continue
            message = replies.read(self._shared)
            note = wire.note_of(message[0])
            if note is None:
                return message
            self._tell(on_note, note)

    def mute(self) -> None:
        """Send its output nowhere from now on (until the next job)."""
        for pump in self._pumps:
            pump.begin(None)

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

    def close(self, timeout: float = DEATH_GRACE) -> None:
        """Kill the child, reap it (waiting at most ``timeout``) and close its pipes (at
        once, or when the job running now returns)."""
        self.kill()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        with self._lock:
            self._closed = True
            if not self._busy and not self._held:
                self._close_pipes()

    def release_idle(self, now: float) -> None:
        """Give up the warm shared-memory segment if no job ran for :data:`.segments.IDLE`
        seconds (the child gives up its own likewise)."""
        with self._lock:
            shared = self._shared
            if shared is not None and not self._busy and now - self.last_used >= segments.IDLE:
                shared.release()

    def holds_memory(self) -> bool:
        return self._shared is not None and self._shared.holding()

    def _close_pipes(self) -> None:
        for fd in (self._cmd, self._rep):
            try:
                os.close(fd)
            except OSError:
                pass
        self._cmd = self._rep = self._replies.fd = -1
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.close()
            shared.sock.close()

    def _death(self) -> str:
        try:
            returncode = self.proc.wait(DEATH_GRACE)
        except subprocess.TimeoutExpired:  # it closed the pipe but lives on
            self.kill()
            returncode = self.proc.wait()
        for pump in self._pumps:  # its last words (a faulthandler dump) come first
            pump.wait_eof(1.0)
        return DIED.format(how=how_it_died(returncode))

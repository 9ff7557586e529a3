"""What runs inside a worker process: its loop, and one cell run as a job.

The parent (:mod:`.local`: the kernel for process mode, a Dask worker for dask mode)
starts a fresh interpreter that loads this module, :mod:`.wire` and :mod:`.watch` from code the
parent sends, as a private package, and calls :func:`main`. So it imports nothing
from the kernel side: not IPython, not ipykernel, not the rest of ipytasks
(``import ipytasks`` would load IPython), and nothing of ipytasks needs to be
installed where it runs. It uses the standard library, and cloudpickle when a value
needs it.

The loop (:func:`main`), one job at a time::

    job pipe  --MessageReader--> run_job: inputs unpickled into a fresh namespace,
                                 the cell compiled (or the kernel's code objects),
                                 run (asyncio.run for top-level await), figures
                                 rendered, bound names pickled
    fd 1, 2   <-- the cell's output, as it prints; then an end-of-job marker on each
    reply pipe <--notes--         while it runs: its tqdm bars' progress, where it is
    reply pipe <--write_message-- {ok, names, deleted, result, displays, cost} and
                                 values, or {error: described} or {shipping: message}

* It ignores SIGINT (the kernel's interrupt goes to its whole process group; the
  worker also runs in a process group of its own), and dies with its parent: a
  thread watches the job pipe for hang-up, and on Linux ``PR_SET_PDEATHSIG`` asks
  the OS to kill it when the parent dies.
* Each job runs in a fresh namespace holding only the shipped inputs; nothing is
  kept between jobs but imported modules.
* After each job it flushes its streams and writes a marker to fd 1 and fd 2, so
  the parent knows it has seen all the output of the job before it ends the task.
* A job's exception is described (type, message, frames of the cell, the chain, a
  pickle of it when it pickles) for the kernel to raise it again with the cell's
  lines (:func:`ipytasks.namespace.shipping.rebuild_error`).
* While a job runs, :class:`JobTalk` sends notes on the reply pipe ahead of the
  reply: its tqdm bars' progress (:class:`.watch.TqdmWatch`; ``ipytasks.progress``
  too), and where its body is once a second when the kernel asks; the reply says
  what the job cost (CPU time, peak memory).
* It renders the figures a job leaves open (and one that is its result) as the
  notebook's inline backend would, with the formats and ``print_figure`` options
  the kernel sends, and sends them back with the reply; matplotlib's backend here
  is Agg with a ``show()`` that does the same at that point (:data:`BACKEND`).
  matplotlib is never imported unless the cell imported it.
"""

from __future__ import annotations

import builtins
import faulthandler
import io
import marshal
import os
import pickle
import signal
import struct
import sys
import threading

from . import segments, watch, wire

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the worker 15 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ("BACKEND", "end_figures", "main", "render_figure", "run_job", "split_compile")

_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect
_MAX_CHAIN = 8  # how many chained exceptions (cause/context) are described

CANNOT_SEND_BACK = "cannot send {what} ({type}) back from the worker process: {error}"
CANNOT_RECEIVE = "cannot receive {name!r} ({type}) in the worker process: {error}"


class Unshippable(Exception):
    """A value cannot be pickled or unpickled; the message names it."""


# -- figures ------------------------------------------------------------------------

#: matplotlib's backend in a worker (``MPLBACKEND=module://...``): Agg, with a ``show()``
#: that renders the open figures into the job's displays, as the inline backend would.
BACKEND = "_ipytasks_worker_backend"

#: The displays of the job running now: ``(data, metadata)`` pairs, in order.
_displays: list[Any] = []
#: How the kernel's inline backend renders: ``{"formats": [...], "kwargs": {...}}``.
_figure_settings: dict[str, Any] = {}

_MIME = {"png": "image/png", "retina": "image/png", "png2x": "image/png",
         "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml",
         "pdf": "application/pdf"}


def render_figure(fig: Any, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The display data of ``fig`` as IPython's inline figure formatters make it.

    Same rules as ``IPython.core.pylabtools.print_figure``/``retina_figure``: the
    figure's own face and edge colours and dpi (doubled for retina, with the logical
    size in the metadata), ``bbox_inches='tight'`` unless the settings say otherwise,
    nothing but text for a figure with no axes.
    """
    import base64

    data: dict[str, Any] = {"text/plain": repr(fig)}
    metadata: dict[str, Any] = {}
    if not fig.axes and not fig.lines:
        return data, metadata
    extra = dict(settings.get("kwargs", {"bbox_inches": "tight"}))
    # The order IPython registers them in: a later png-like format replaces png.
    order = ["png", "retina", "png2x", "jpg", "jpeg", "svg", "pdf"]
    formats = [f for f in order if f in set(settings.get("formats") or ["png"])]
    for fmt in formats:
        dpi = fig.dpi * (2 if fmt in ("retina", "png2x") else 1)
        kw = {
            "format": "png" if fmt in ("retina", "png2x") else fmt,
            "facecolor": fig.get_facecolor(),
            "edgecolor": fig.get_edgecolor(),
            "dpi": dpi,
            "bbox_inches": "tight",
        }
        kw.update(extra)
        buffer = io.BytesIO()
        fig.canvas.print_figure(buffer, **kw)
        raw = buffer.getvalue()
        mime = _MIME[fmt]
        if fmt == "svg":
            data[mime] = raw.decode("utf-8")
            continue
        data[mime] = base64.b64encode(raw).decode("ascii")
        if fmt in ("retina", "png2x"):
            width, height = struct.unpack(">ii", raw[16:24])  # the PNG's IHDR chunk
            metadata[mime] = {"width": width // 2, "height": height // 2}
        else:
            metadata.pop(mime, None)
    return data, metadata


def _open_figures() -> list[Any]:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    return [pyplot.figure(num) for num in pyplot.get_fignums()]


def _show(*args: Any, **kwargs: Any) -> None:
    """``plt.show()`` in a worker: render the open figures into the job's displays, close them."""
    for fig in _open_figures():
        _displays.append(render_figure(fig, _figure_settings))
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def end_figures(result: Any) -> tuple[list[Any], Any]:
    """After a job: its displays, the open figures rendered, and ``result`` rendered when
    it is a Figure (else ``None``). Closes every figure, so none outlives its job and
    figures sent back as values do not reopen in the kernel's pyplot."""
    figure_module = sys.modules.get("matplotlib.figure")
    is_figure = figure_module is not None and isinstance(result, figure_module.Figure)
    displays = _displays[:]
    del _displays[:]
    result_display = None
    try:
        for fig in _open_figures():
            if fig is not result:
                displays.append(render_figure(fig, _figure_settings))
        if is_figure:
            result_display = render_figure(result, _figure_settings)
    except Exception as exc:  # noqa: BLE001 - the job's values still go back
        print(f"ipytasks: could not render a figure: {wire.error_text(exc)}", file=sys.stderr)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close("all")
    return displays, result_display


class _BackendLoader:
    """Makes the module :data:`BACKEND` when matplotlib asks for it (never before)."""

    @staticmethod
    def find_spec(name: str, path: Any, target: Any = None) -> Any:
        if name != BACKEND:
            return None
        import importlib.machinery

        # the class itself, with its static methods, is the loader (duck-typed, not a Loader)
        return importlib.machinery.ModuleSpec(name, _BackendLoader)  # type: ignore[arg-type]

    @staticmethod
    def create_module(spec: Any) -> Any:
        return None

    @staticmethod
    def exec_module(module: Any) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg
        module.show = _show


def _worker_backend(value: bytes | None) -> bytes | None:
    """The worker's MPLBACKEND for the kernel's: ours where the kernel's needs a kernel."""
    if value is None or value.startswith(b"module://"):
        return b"module://" + BACKEND.encode()
    return value


# -- running a job ------------------------------------------------------------------


def _apply_environment(job: dict[str, Any]) -> None:
    """Make imports, relative paths and os.environ match the kernel's."""
    path = job.get("sys_path")
    if path is not None and sys.path != path:
        sys.path[:] = path
    cwd = job.get("cwd")
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:
            pass
    environ = job.get("environ")  # bytes to bytes; None: unchanged since the last job
    if environ is not None:
        environ = dict(environ)
        environ[b"MPLBACKEND"] = _worker_backend(environ.get(b"MPLBACKEND"))  # not the kernel's
        if environ != dict(os.environb):
            os.environb.clear()
            os.environb.update(environ)


def _compile_cell(job: dict[str, Any]) -> tuple[Any, Any]:
    """The cell's code: statements, last expression (like ipytasks.cells splits it).

    The kernel's own code objects when this is the same Python (marshal), else the
    transformed source compiled here with the cell's file name.
    """
    if job.get("hexversion") == sys.hexversion and "code" in job:
        body, last = job["code"]
        return (
            marshal.loads(body) if body is not None else None,
            marshal.loads(last) if last is not None else None,
        )
    flags = job.get("flags", 0)
    _tree, body, last = split_compile(job["transformed"], job["filename"], flags)
    return body, last


def split_compile(source: str, filename: str, flags: int) -> tuple[Any, Any, Any]:
    """Split a cell as IPython does and compile both parts, top-level ``await`` allowed.

    Returns ``(tree, body, last)``: the cell's AST, the code of its statements and the
    code of its last expression (each ``None`` when absent). The kernel side compiles
    its cells with this too, so a cell means the same in the kernel and in a worker.
    """
    import ast

    flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(source, filename, "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    nodes = list(tree.body)
    last_node = nodes.pop() if nodes and isinstance(nodes[-1], ast.Expr) else None
    body = None
    if nodes:
        body = compile(
            ast.Module(body=nodes, type_ignores=[]), filename, "exec", flags, dont_inherit=True
        )
    last = None
    if last_node is not None:
        last = compile(
            ast.Expression(body=last_node.value), filename, "eval", flags, dont_inherit=True
        )
    return tree, body, last


def _run_cell(body: Any, last: Any, namespace: dict[str, Any]) -> Any:
    codes = [code for code in (body, last) if code is not None]
    if not any(code.co_flags & _CO_COROUTINE for code in codes):
        value = None
        for code in codes:
            value = eval(code, namespace)
        return value if last is not None else None

    import asyncio

    async def run() -> Any:
        value = None
        for code in codes:
            value = eval(code, namespace)
            if code.co_flags & _CO_COROUTINE:
                value = await value
        return value if last is not None else None

    return asyncio.run(run())


def _trim(tb: Any, filename: str) -> Any:
    """Drop the worker's own frames: start at the first frame of the cell, if any."""
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return tb if tb is not None else first


def _describe_error(
    exc: BaseException, filename: str, seen: set[int] | None = None
) -> dict[str, Any]:
    """What the kernel needs to raise ``exc`` again: the exception, its frames, its chain."""
    import traceback

    seen = set() if seen is None else seen
    seen.add(id(exc))
    tb = _trim(exc.__traceback__, filename)
    frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(tb)]
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the error
        text = f"{wire.type_name(exc)} (its message could not be formatted)\n"
    try:
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except Exception:  # noqa: BLE001
        message = wire.type_name(exc)
    pickled = None
    for cloud in (False, True):
        try:
            packer = wire.ValuePacker(cloud=cloud)
            packer.add(exc)
            if not packer.buffers:
                pickled = packer.getvalue()
                break
        except BaseException:  # noqa: BLE001 - then the kernel shows it as a RemoteError
            pass
    described: dict[str, Any] = {
        "type": wire.type_name(exc),
        "message": message,
        "text": text,
        "frames": frames,
        "pickled": pickled,
        "suppress_context": exc.__suppress_context__,
        "cause": None,
        "context": None,
    }
    if len(seen) < _MAX_CHAIN:
        for key in ("cause", "context"):
            linked = getattr(exc, f"__{key}__")
            if linked is not None and id(linked) not in seen:
                described[key] = _describe_error(linked, filename, seen)
    return described


def _is_closed_file(value: Any) -> bool:
    try:
        return isinstance(value, io.IOBase) and bool(value.closed)
    except Exception:  # noqa: BLE001 - a broken property: not a closed file then
        return False


def _pack_outputs(
    names: list[str], namespace: dict[str, Any], has_result: bool, result: Any, cloud: bool
) -> wire.ValuePacker:
    packer = wire.ValuePacker(cloud=cloud)
    for name in names:
        value = namespace[name]
        try:
            packer.add(value)
        except BaseException as exc:  # noqa: BLE001 - named and sent back as the error
            raise Unshippable(
                CANNOT_SEND_BACK.format(
                    what=repr(name), type=wire.type_name(value), error=wire.error_text(exc)
                )
            ) from None
    if has_result:
        try:
            packer.add(result)
        except BaseException as exc:  # noqa: BLE001
            raise Unshippable(
                CANNOT_SEND_BACK.format(
                    what=wire.RESULT, type=wire.type_name(result), error=wire.error_text(exc)
                )
            ) from None
    return packer


def run_job(
    job: dict[str, Any], values: bytes | bytearray, buffers: list[Any]
) -> tuple[dict[str, Any], bytes, list[Any]]:
    """Run one cell; return the reply ``(meta, values, buffers)``.

    Reply meta: ``{"ok": True, "names": [...], "deleted": [...], "result": bool}``
    with the values in that order (then the result), or ``{"ok": False, "error":
    description}`` for an exception of the cell, or ``{"ok": False, "shipping":
    message}`` for a value that cannot travel.
    """
    import linecache

    _apply_environment(job)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    names = job["names"]
    loader = wire.load_values(values, buffers, len(names))
    for name in names:
        try:
            namespace[name] = next(loader)
        except BaseException as exc:  # noqa: BLE001
            message = CANNOT_RECEIVE.format(
                name=name, type=job["types"].get(name, "?"), error=wire.error_text(exc)
            )
            return {"ok": False, "shipping": message}, b"", []
    del loader, values, buffers
    for name in job.get("placeholders", ()):
        namespace[name] = None

    _figure_settings.clear()
    _figure_settings.update(job.get("figures") or {})
    del _displays[:]
    filename = job["filename"]
    source = job.get("source") or job["transformed"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        try:
            body, last = _compile_cell(job)
            result = _run_cell(body, last, namespace)
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt included
            described = _describe_error(exc, filename)
            del exc
            displays, _ = end_figures(None)  # what it drew before failing, as a cell shows it
            return {"ok": False, "error": described, "displays": displays}, b"", []

        # Before the values are packed: closed figures travel without their pyplot state.
        shown = result if last is not None and not job.get("quiet") else None
        displays, result_display = end_figures(shown)

        out_names = sorted(n for n in job["binds"] if n in namespace)
        # `with open(...) as f` leaves a closed file in f: useless, and unpicklable.
        left = [n for n in out_names if _is_closed_file(namespace[n])]
        out_names = [n for n in out_names if n not in left]
        deleted = sorted(n for n in job["deletes"] if n not in namespace)
        has_result = last is not None
        try:
            try:
                # The standard pickler is much faster on plain data and needs no
                # cloudpickle; it refuses anything defined in the cell (its __main__
                # is not this one), and then cloudpickle does it all again.
                packer = _pack_outputs(out_names, namespace, has_result, result, cloud=False)
            except Unshippable:
                packer = _pack_outputs(out_names, namespace, has_result, result, cloud=True)
        except Unshippable as exc:
            return {"ok": False, "shipping": str(exc), "displays": displays}, b"", []
        meta = {
            "ok": True,
            "names": out_names,
            "types": {n: wire.type_name(namespace[n]) for n in out_names},
            "deleted": deleted,
            "left": left,
            "result": has_result,
            "result_type": wire.type_name(result),
            "displays": displays,
            "result_display": result_display,
        }
        return meta, packer.getvalue(), packer.buffers
    finally:
        linecache.cache.pop(filename, None)
        # Functions defined in the cell hold the namespace: break the cycle now,
        # so large inputs are freed before the next job, not at the next GC.
        namespace.clear()


# -- what a job tells while it runs: its bars' progress, where it is, what it cost ------


#: The private package the worker process runs this module in (made by :mod:`.local`'s
#: bootstrap), and this module's name there: ``ipytasks.progress`` in a cell (which
#: imports ipytasks) finds the running job's :class:`JobTalk` by it.
PACKAGE = "_ipytasks_worker"
WORKER_MODULE = PACKAGE + ".child"
#: The running worker process's notes (``None`` in the kernel).
_talk: JobTalk | None = None
#: Least seconds between two progress notes of one bar (its end is always sent).
NOTE_INTERVAL = 0.2
#: Seconds between two looks at where a job's body is (when the kernel asked for them).
SAMPLE_INTERVAL = 1.0


class JobTalk:
    """The worker process's side of a job's notes: its bars' progress, where its body is,
    and what it cost. Notes go on the reply pipe ahead of the reply, one whole message
    each, under one lock with the reply; a note from a thread the job left behind is
    dropped once the job has replied."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.job = 0
        self._count = 0
        self._last: dict[Any, float] = {}
        self._cost: tuple[float, float] = (0.0, 0.0)
        self.watch = watch.TqdmWatch(self.owner, self.bar)

    def owner(self) -> int | None:
        return self.job or None

    def begin(self, job: dict[str, Any]) -> None:
        import time

        self._count += 1
        self._last.clear()
        _reset_peak()
        self._cost = (_usage()[0], time.monotonic())
        with self.lock:
            self.job = self._count
        if job.get("sample"):
            threading.Thread(target=self._sample, args=(self.job, threading.get_ident(),
                                                       job["filename"]),
                             name="ipytasks-sample", daemon=True).start()

    def end(self) -> dict[str, Any]:
        """Stop the notes; what the job cost: ``{"cpu": seconds, "rss": peak bytes}``."""
        with self.lock:
            self.job = 0
        cpu, peak = _usage()
        return {"cpu": cpu - self._cost[0], "rss": peak}

    def send(self, job: int, note: dict[str, Any]) -> None:
        data = wire.NOTE + pickle.dumps(note, protocol=5)
        with self.lock:
            if job != self.job:
                return
            try:
                wire.write_message(self.fd, data, b"", [])
            except OSError:
                pass

    def bar(self, job: int, key: Any, state: dict[str, Any], closed: bool) -> None:
        import time

        now = time.monotonic()
        if not closed and now - self._last.get(key, -NOTE_INTERVAL) < NOTE_INTERVAL:
            return
        self._last[key] = now
        self.send(job, {"progress": state, "key": key, "closed": closed})

    def progress(self, done: float, total: float | None, note: str) -> None:
        """``ipytasks.progress`` in a worker process."""
        import time

        job = self.job
        if job:
            elapsed = time.monotonic() - self._cost[1]
            self.bar(job, "api", {"n": done, "total": total, "rate": None,
                                  "elapsed": elapsed, "note": note, "unit": "it"},
                     total is not None and done >= total)

    def _sample(self, job: int, ident: int, filename: str) -> None:
        import time

        said = None
        while self.job == job:
            frame = sys._current_frames().get(ident)
            where = watch.where_text(frame, filename) if frame is not None else None
            del frame
            if where != said:
                said = where
                self.send(job, {"where": where})
            time.sleep(SAMPLE_INTERVAL)


def _usage() -> tuple[float, int]:
    """CPU seconds (user and system) this process has used, and the most resident memory
    it held since the last :func:`_reset_peak`, in bytes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return usage.ru_utime + usage.ru_stime, peak


_clear_refs_fd: int | None = None


def _reset_peak() -> None:
    """Start the peak of resident memory again from now (Linux ``clear_refs``; the file
    stays open: a reset is then one system call)."""
    global _clear_refs_fd
    try:
        if _clear_refs_fd is None:
            _clear_refs_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        os.write(_clear_refs_fd, b"5")
    except OSError:
        pass  # not Linux: the peak counts from the process's start


# -- the process --------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the pipe watch below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _watch_pipe(fd: int) -> None:
    """Exit as soon as the parent's end of the job pipe is closed (the parent is gone)."""
    import select

    poller = select.poll()
    poller.register(fd, 0)  # hang-up and errors are always reported
    while True:
        for _, event in poller.poll():
            if event & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(0)


def _warm_cloudpickle() -> None:
    try:
        import cloudpickle  # noqa: F401 - imported ahead of the first job that needs it
    except Exception:  # noqa: BLE001
        pass


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_io_fd: int | None = None


def bytes_written() -> int | None:
    """How many bytes this process has written so far, to anything (``/proc/self/io``'s
    ``wchar``: every thread, every descriptor, every ``write`` call); ``None`` where the
    platform does not say. (The file stays open: reading it is then one system call.)"""
    global _io_fd
    try:
        if _io_fd is None:
            _io_fd = os.open("/proc/self/io", os.O_RDONLY | os.O_CLOEXEC)
        text = os.pread(_io_fd, 512, 0)
        at = text.index(b"wchar:")
        return int(text[at + 6 : text.index(b"\n", at)])
    except (OSError, ValueError):
        return None


def _end_of_output(
    stdout: Any,
    stderr: Any,
    marker: bytes,
    pipes: dict[int, tuple[int, tuple[int, int] | None]],
    written: int | None = None,
) -> list[bool]:
    """Flush the streams and mark the end of a job's output on fd 1 and fd 2.

    A cell that closed or redirected fd 1 or fd 2 (``os.dup2``) gets them back on
    the parent's pipes first (``pipes``: fd -> (a duplicate, its identity)).
    Returns which of the two got their marker. ``written``: :func:`bytes_written` when
    the job started; a job that wrote nothing at all, anywhere, gets no marker (its
    parent then waits for no output: the common trivial job costs two reads less).
    """
    for stream in (sys.stdout, sys.stderr, stdout, stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a stream the cell broke
            pass
    sys.stdout, sys.stderr = stdout, stderr
    silent = written is not None and bytes_written() == written
    marked = []
    for fd in (1, 2):
        copy, identity = pipes[fd]
        try:
            if _identity(fd) != identity:
                os.dup2(copy, fd)
            marked.append(not silent and os.write(fd, marker) == len(marker))
        except OSError:
            marked.append(False)
    return marked


def _set_up(cmd_fd: int, reply_fd: int, parent_pid: int) -> tuple[Any, Any, dict[int, Any]]:
    """Make this process a worker: deaf to SIGINT, dying with its parent, matplotlib's
    backend ours, UTF-8 streams; returns them and fd 1 and fd 2 as they are now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    sys.meta_path.insert(0, _BackendLoader)
    backend = _worker_backend(os.environb.get(b"MPLBACKEND"))
    if backend is not None:
        os.environb[b"MPLBACKEND"] = backend
    for fd in (cmd_fd, reply_fd):
        os.set_inheritable(fd, False)  # the cell's own subprocesses must not hold them
    for stream in (sys.stdout, sys.stderr):
        try:
            # a stream without reconfigure (not a TextIOWrapper) is left as it is, below
            stream.reconfigure(  # type: ignore[union-attr]
                encoding="utf-8", errors="backslashreplace"
            )
        except Exception:  # noqa: BLE001
            pass
    pipes = {fd: (os.dup(fd), _identity(fd)) for fd in (1, 2)}
    faulthandler.enable(file=sys.stderr)  # a segfault prints the Python traceback first
    threading.Thread(target=_watch_pipe, args=(cmd_fd,), name="ipytasks-watch", daemon=True).start()
    return sys.stdout, sys.stderr, pipes


def _shared_memory(arg: str) -> segments.SharedMemory | None:
    """The shared memory with the parent: ``arg`` is ``FD:IDLE``, the descriptor of the
    socket and the parent's :data:`.segments.IDLE`, or ``-`` (none: the platform has none)."""
    if arg == "-":
        return None
    import socket

    fd, _, idle = arg.partition(":")
    segments.IDLE = float(idle)
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)  # the cell's own subprocesses must not hold it
    return segments.SharedMemory(sock, in_place=True)


def main(argv: list[str]) -> None:
    """The worker process: one job after another, until the parent closes the job pipe.

    ``argv``: the job pipe's fd, the reply pipe's fd, the parent's pid, the end-of-job
    marker (hex), and ``FD:IDLE`` for shared memory (``-``: none; see :func:`_shared_memory`).
    """
    import select

    cmd_fd, reply_fd, parent_pid = int(argv[0]), int(argv[1]), int(argv[2])
    marker = bytes.fromhex(argv[3])
    stdout, stderr, pipes = _set_up(cmd_fd, reply_fd, parent_pid)
    shared = _shared_memory(argv[4])
    poller = select.poll()
    poller.register(cmd_fd, select.POLLIN)
    jobs = wire.MessageReader(cmd_fd)
    global _talk
    _talk = talk = JobTalk(reply_fd)
    talk.watch.install()
    warming = False
    while True:
        if not warming and not jobs.pending and not poller.poll(0):
            # Idle: import cloudpickle now, in the background, for the jobs that
            # need it. Not while a job waits: that one would share the GIL with it.
            warming = True
            threading.Thread(target=_warm_cloudpickle, name="ipytasks-warm", daemon=True).start()
        if (shared is not None and shared.holding() and not jobs.pending
                and not poller.poll(segments.IDLE * 1000)):
            shared.release()  # a while without a job: the warm segment goes
        try:
            meta, values, buffers = jobs.read(shared)
        except EOFError:
            break
        except (OSError, ValueError) as exc:  # the pipe's part was read: the job fails
            error = f"cannot read the job's values from shared memory: {wire.error_text(exc)}"
            meta, values, buffers, job = b"", b"", [], {}
            reply: tuple[dict[str, Any], bytes, list[Any]] | None = (
                {"ok": False, "shipping": error}, b"", [])
        else:
            job, reply = pickle.loads(meta), None
        talk.begin(job)
        written = bytes_written() if reply is None else None
        if reply is None:
            try:
                reply = run_job(job, values, buffers)
            except BaseException as exc:  # noqa: BLE001 - a bug here, not in the cell
                error = f"internal error in the worker process: {wire.error_text(exc)}"
                reply = ({"ok": False, "shipping": error}, b"", [])
        del meta, values, buffers, job
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # the cell changed it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        reply_meta, reply_values, reply_buffers = reply
        del reply
        reply_meta["cost"] = talk.end()
        if shared is not None:
            # Placed now, while the job's views of the kernel's segment are mapped; then
            # they go, and the kernel hears of any the job left behind.
            reply_buffers = shared.settle(reply_buffers)
            reply_meta["kept"] = shared.end_message()
        reply_meta["marked"] = _end_of_output(stdout, stderr, marker, pipes, written)
        try:
            with talk.lock:  # after a note being written, never inside it
                wire.write_message(
                    reply_fd, pickle.dumps(reply_meta, protocol=5), reply_values, reply_buffers,
                    shared=shared,
                )
        except OSError:
            break
        del reply_meta, reply_values, reply_buffers
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    # Not sys.exit: threads the cells started must not keep the process alive.
    os._exit(0)

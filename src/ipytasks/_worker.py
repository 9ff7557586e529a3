"""What runs inside a worker process of process mode, and the wire format.

This file is the whole worker. The kernel starts it by path, as
``python -P -u -c <bootstrap> .../_worker.py CMD_FD REPLY_FD PARENT_PID MARKER``,
so that it imports nothing from the kernel side: not IPython, not ipykernel, not
the rest of ipytasks (``import ipytasks._worker`` would run the package's
``__init__``, which loads IPython). It uses the standard library, and cloudpickle
when a value needs it. The kernel imports this module too, for the wire format
and the picklers, so both ends encode values the same way.

Wire format
-----------
One message, either way, over a pipe::

    header   <Q meta length> <Q values length> <I number of buffers>
    table    per buffer: <Q length> <B read-only flag>
    meta     a plain pickle of builtins (dicts, lists, str, int, bytes)
    values   named values, each one pickle, one after the other, from ONE pickler
             (so objects shared between names stay shared and each is sent once)
    buffers  the raw bytes of each out-of-band buffer (pickle protocol 5)

Buffers of 64 KiB and more (NumPy arrays, ``bytes``, ``bytearray``) leave the
pickle: they are written straight from the object's memory and read straight into
the memory of the object that is rebuilt, so a 200 MB array is never copied into
a pickle on either side. Large ``bytes`` are read into a fresh ``bytes`` object
(CPython), so even they are not copied after the read.

The worker
----------
* ignores SIGINT (the kernel's interrupt goes to its whole process group; the
  worker also runs in a process group of its own), and dies with the kernel: a
  thread watches the command pipe for hang-up, and on Linux ``PR_SET_PDEATHSIG``
  asks the OS to kill it when the kernel dies;
* runs one job at a time, each in a fresh namespace holding only the shipped
  inputs; nothing is kept between jobs but imported modules;
* after each job flushes its streams and writes a marker to fd 1 and fd 2, so the
  kernel knows it has seen all the output of the job before it ends the task;
* renders the figures a job leaves open (and one that is its result) as the
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
import types

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the worker 15 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = (
    "INLINE_LIMIT",
    "Unshippable",
    "ValuePacker",
    "load_values",
    "read_message",
    "run_job",
    "write_message",
)

#: Buffers smaller than this travel inside the pickle; larger ones out of band.
INLINE_LIMIT = 64 * 1024

_HEAD = struct.Struct("<QQI")
_ENTRY = struct.Struct("<QB")
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect
_MAX_CHAIN = 8  # how many chained exceptions (cause/context) are described

CANNOT_SEND_BACK = "cannot send {what} ({type}) back from the worker process: {error}"
CANNOT_RECEIVE = "cannot receive {name!r} ({type}) in the worker process: {error}"
RESULT = "the cell's result (its last expression)"


class Unshippable(Exception):
    """A value cannot be pickled or unpickled; the message names it."""


def type_name(value: Any) -> str:
    """``module.Qualname`` of the value's type, without ``builtins.``."""
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


# -- reading and writing messages ---------------------------------------------------


def _write_views(fd: int, views: list[memoryview]) -> None:
    views = [v for v in views if v.nbytes]
    while views:
        written = os.writev(fd, views[:64])
        while written:
            head = views[0]
            if written >= head.nbytes:
                written -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


def write_message(
    fd: int,
    meta: bytes,
    values: bytes,
    buffers: list[pickle.PickleBuffer],
    readonly: list[bool] | None = None,
) -> None:
    """Write one message; blocks until the pipe has taken all of it.

    ``readonly`` gives each buffer's read-only flag when it is not the buffer's own
    (dask mode: a buffer that was writable in the kernel may arrive read-only).
    """
    raws = [b.raw() for b in buffers]
    try:
        flags = [m.readonly for m in raws] if readonly is None else readonly
        table = b"".join(
            _ENTRY.pack(m.nbytes, flag) for m, flag in zip(raws, flags, strict=True)
        )
        head = _HEAD.pack(len(meta), len(values), len(raws)) + table
        _write_views(fd, [memoryview(head), memoryview(meta), memoryview(values)])
        for m in raws:
            _write_views(fd, [m])
    finally:
        for m in raws:
            m.release()


def _read_into(fd: int, view: memoryview) -> None:
    pos, size = 0, view.nbytes
    while pos < size:
        n = os.readv(fd, [view[pos:]])
        if n == 0:
            raise EOFError("the pipe was closed")
        pos += n


def _read_exactly(fd: int, size: int) -> bytearray:
    buf = bytearray(size)
    if size:
        with memoryview(buf) as view:
            _read_into(fd, view)
    return buf


_fresh_bytes_api: Any = None


def _fresh_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``size`` (not yet seen by anyone) and a writable view of it.

    CPython only: this is what ``os.read`` does internally. Returns ``None`` elsewhere.
    """
    global _fresh_bytes_api
    if sys.implementation.name != "cpython" or size < 2:
        return None
    if _fresh_bytes_api is None:
        import ctypes

        make = ctypes.pythonapi.PyBytes_FromStringAndSize
        make.restype = ctypes.py_object
        make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        _fresh_bytes_api = (ctypes, make, bytes.__basicsize__ - 1)
    ctypes, make, offset = _fresh_bytes_api
    data = make(None, size)
    view = memoryview((ctypes.c_char * size).from_address(id(data) + offset)).cast("B")
    return data, view


def _read_buffer(fd: int, size: int, readonly: bool) -> bytes | bytearray:
    if readonly and size >= INLINE_LIMIT:
        fresh = _fresh_bytes(size)
        if fresh is not None:
            data, view = fresh
            with view:
                _read_into(fd, view)
            return data
    return _read_exactly(fd, size)


def read_message(fd: int) -> tuple[bytes | bytearray, bytes | bytearray, list[Any]]:
    """Read one message: ``(meta, values, buffers)``.

    :raises EOFError: the other end closed the pipe (before or during the message).
    """
    meta_len, values_len, count = _HEAD.unpack(_read_exactly(fd, _HEAD.size))
    table = _read_exactly(fd, _ENTRY.size * count)
    entries = [_ENTRY.unpack_from(table, i * _ENTRY.size) for i in range(count)]
    meta = _read_exactly(fd, meta_len)
    values = _read_exactly(fd, values_len)
    buffers = [_read_buffer(fd, size, bool(readonly)) for size, readonly in entries]
    return meta, values, buffers


# -- pickling values ----------------------------------------------------------------


def _out_of_band(obj: Any) -> Any:
    """The reduction that sends a large ``bytes``/``bytearray`` out of band, or NotImplemented."""
    cls = type(obj)
    if cls is bytes and len(obj) >= INLINE_LIMIT:
        # bytes(b) of a bytes object is that object: no copy when the buffer read
        # on the other side is itself a bytes (see _read_buffer).
        return bytes, (pickle.PickleBuffer(obj),)
    if cls is bytearray and len(obj) >= INLINE_LIMIT:
        # A writable buffer comes back as the bytearray it was read into.
        import operator

        return operator.getitem, ([pickle.PickleBuffer(obj)], 0)
    if isinstance(obj, types.ModuleType):
        name = getattr(obj, "__name__", None)
        if name and name != "__main__" and sys.modules.get(name) is obj:
            by_value = sys.modules.get("cloudpickle.cloudpickle")
            check = getattr(by_value, "_is_registered_pickle_by_value", None)
            if check is None or not check(obj):
                import importlib

                return importlib.import_module, (name,)
    return NotImplemented


class _PlainPickler(pickle.Pickler):
    """The standard pickler, with large buffers out of band and modules by name."""

    def reducer_override(self, obj: Any) -> Any:
        return _out_of_band(obj)


class _Reduced:
    """Pickles as the reduction it holds (this class itself never travels)."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: Any) -> None:
        self.reduced = reduced

    def __reduce__(self) -> Any:
        return self.reduced


_cloud_pickler_class: Any = None


def _cloud_pickler() -> type:
    """cloudpickle's pickler with the same extras (imported on first use)."""
    global _cloud_pickler_class
    if _cloud_pickler_class is None:
        import operator

        import cloudpickle

        cloud_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

        def code_with_its_name(code: types.CodeType) -> Any:
            rename = operator.methodcaller("replace", co_filename=code.co_filename)
            return rename, (_Reduced(cloud_code(code)),)

        class CloudPickler(cloudpickle.Pickler):
            # Code objects keep their file name, which cloudpickle >= 3.1.3 replaces by
            # "<dynamic-code>": the kernel shows a worker's traceback through a notebook
            # function with that cell's lines, found by that name. The code travels as
            # cloudpickle sends it and is renamed on arrival by the standard library alone
            # (a Dask worker has no ipytasks to import).
            dispatch_table = cloudpickle.Pickler.dispatch_table.new_child(
                {types.CodeType: code_with_its_name}
            )

            def reducer_override(self, obj: Any) -> Any:
                reduced = _out_of_band(obj)
                if reduced is NotImplemented:
                    return super().reducer_override(obj)
                return reduced

        _cloud_pickler_class = CloudPickler
    return _cloud_pickler_class


class ValuePacker:
    """Pickles values one after the other into one stream, sharing one memo.

    :param cloud: use cloudpickle (functions, lambdas and classes by value); else the
        standard pickler, which refuses anything defined in ``__main__``.
    """

    def __init__(self, cloud: bool = True) -> None:
        self.file = io.BytesIO()
        self.buffers: list[pickle.PickleBuffer] = []
        cls = _cloud_pickler() if cloud else _PlainPickler
        self._pickler = cls(self.file, protocol=5, buffer_callback=self._take)

    def _take(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            with buffer.raw() as m:
                size = m.nbytes
        except BufferError:  # not contiguous: let pickle write it in band
            return True
        if size < INLINE_LIMIT:
            return True
        self.buffers.append(buffer)
        return False

    def add(self, value: Any) -> None:
        self._pickler.dump(value)

    def getvalue(self) -> bytes:
        return self.file.getvalue()


def load_values(values: bytes | bytearray | memoryview, buffers: list[Any], count: int) -> Any:
    """Yield ``count`` values from a stream written by :class:`ValuePacker`."""
    unpickler = pickle.Unpickler(io.BytesIO(values), buffers=buffers)
    for _ in range(count):
        yield unpickler.load()


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text


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
        print(f"ipytasks: could not render a figure: {_error_text(exc)}", file=sys.stderr)
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
        text = f"{type_name(exc)} (its message could not be formatted)\n"
    try:
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except Exception:  # noqa: BLE001
        message = type_name(exc)
    pickled = None
    for cloud in (False, True):
        try:
            packer = ValuePacker(cloud=cloud)
            packer.add(exc)
            if not packer.buffers:
                pickled = packer.getvalue()
                break
        except BaseException:  # noqa: BLE001 - then the kernel shows it as a RemoteError
            pass
    described: dict[str, Any] = {
        "type": type_name(exc),
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
) -> ValuePacker:
    packer = ValuePacker(cloud=cloud)
    for name in names:
        value = namespace[name]
        try:
            packer.add(value)
        except BaseException as exc:  # noqa: BLE001 - named and sent back as the error
            raise Unshippable(
                CANNOT_SEND_BACK.format(
                    what=repr(name), type=type_name(value), error=_error_text(exc)
                )
            ) from None
    if has_result:
        try:
            packer.add(result)
        except BaseException as exc:  # noqa: BLE001
            raise Unshippable(
                CANNOT_SEND_BACK.format(what=RESULT, type=type_name(result), error=_error_text(exc))
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
    loader = load_values(values, buffers, len(names))
    for name in names:
        try:
            namespace[name] = next(loader)
        except BaseException as exc:  # noqa: BLE001
            message = CANNOT_RECEIVE.format(
                name=name, type=job["types"].get(name, "?"), error=_error_text(exc)
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
            "types": {n: type_name(namespace[n]) for n in out_names},
            "deleted": deleted,
            "left": left,
            "result": has_result,
            "result_type": type_name(result),
            "displays": displays,
            "result_display": result_display,
        }
        return meta, packer.getvalue(), packer.buffers
    finally:
        linecache.cache.pop(filename, None)
        # Functions defined in the cell hold the namespace: break the cycle now,
        # so large inputs are freed before the next job, not at the next GC.
        namespace.clear()


# -- what a task says while it runs: tqdm bars, where it is, what it cost -------------------
#
# Shared by the kernel (thread and async tasks) and the worker process (process and dask
# tasks), so it needs nothing but the standard library; tqdm is patched only once it is
# imported, by whoever imports it.


class _Discard:
    """The stream a task's tqdm bar writes to: nothing is shown, it is told instead.

    It says it is a terminal, so that ``disable=None`` (off when not a terminal) counts.
    """

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _NoWidget:
    """Stands in for ``tqdm.notebook``'s widgets in a task: takes every change, shows none."""

    children = property(lambda self: (self, self, self))

    def __getattr__(self, name: str) -> Any:
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


_DISCARD = _Discard()
_NO_WIDGET = _NoWidget()


def bar_state(bar: Any) -> dict[str, Any]:
    """A tqdm bar as plain data: ``n``, ``total``, ``rate`` (per second or ``None``),
    ``elapsed``, ``note`` (its description and postfix), ``unit``."""
    d = bar.format_dict
    n, total, rate = d.get("n") or 0, d.get("total"), d.get("rate")
    scale = d.get("unit_scale")
    if scale and scale is not True:  # a factor: the bar shows n * scale
        n, total = n * scale, total * scale if total is not None else None
        rate = rate * scale if rate is not None else None
    elapsed = d.get("elapsed") or 0.0
    if rate is None and elapsed > 0:
        rate = (n - (d.get("initial") or 0)) / elapsed
    note = " ".join(str(x) for x in (d.get("prefix"), d.get("postfix")) if x)
    return {"n": n, "total": total, "rate": rate, "elapsed": elapsed, "note": note,
            "unit": str(d.get("unit") or "it")}


class TqdmWatch:
    """Every tqdm bar made where ``owner()`` returns something is told, not drawn.

    ``report(owner, key, state, closed)`` receives the bar's :func:`bar_state` each time
    the bar would redraw (tqdm spaces those out by ``mininterval``) and when it closes;
    ``key`` tells the bars of one owner apart. A bar made elsewhere is left alone.

    How: ``tqdm.std.tqdm.__new__`` (every bar class passes there) makes such a bar an
    instance of a subclass of its own class whose ``display`` reports; a
    ``tqdm.notebook`` bar gets no widgets (``status_printer``) and is not displayed.
    Every ``__init__`` of the bar's classes runs as usual (``tqdm.auto``'s asyncio part
    included). tqdm is patched when it is imported, or at once if it is already.
    """

    _HOOKED = "tqdm.std"

    def __init__(self, owner: Any, report: Any) -> None:
        self.owner = owner
        self.report = report
        self._classes: dict[type, type] = {}
        self._original: Any = None
        self._base: Any = None
        self._hooked = False

    # -- installing ---------------------------------------------------------------------

    def install(self) -> None:
        std = sys.modules.get(self._HOOKED)
        if std is not None:
            self._patch(std)
        elif not self._hooked:
            self._hooked = True
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self._hooked = False
        base = self._base
        if base is not None and base.__dict__.get("__new__") is not self._original:
            base.__new__ = self._original
        self._base = self._original = None

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self._HOOKED:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self._patch)
                return spec
        return None

    def _patch(self, std: Any) -> None:
        base = std.tqdm
        if self._base is base:
            return
        self._base = base
        self._original = original = base.__dict__["__new__"]
        new = original.__func__ if isinstance(original, staticmethod) else original
        owner_of, class_for = self.owner, self._class_for

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            owner = owner_of()
            if owner is None or "_ipytasks_told" in cls.__dict__:
                return new(cls, *args, **kwargs)
            bar = new(class_for(cls), *args, **kwargs)
            bar._ipytasks_owner = owner
            return bar

        base.__new__ = staticmethod(__new__)

    # -- a bar that tells ---------------------------------------------------------------

    def _class_for(self, cls: type) -> type:
        made = self._classes.get(cls)
        if made is not None:
            return made
        notebook = any(k.__name__ == "tqdm_notebook" for k in cls.__mro__)
        tell = self._tell

        def __init__(bar: Any, *args: Any, **kwargs: Any) -> None:
            if notebook:
                kwargs["display"] = False
            else:
                kwargs["file"] = _DISCARD
            cls.__init__(bar, *args, **kwargs)  # type: ignore[misc]

        def display(bar: Any, *args: Any, close: bool = False, **kwargs: Any) -> bool:
            tell(bar, close)
            return True

        def close(bar: Any) -> None:
            was_on = not getattr(bar, "disable", True)
            try:
                cls.close(bar)  # type: ignore[attr-defined]
            finally:
                if was_on:
                    tell(bar, True)

        def status_printer(*args: Any, **kwargs: Any) -> Any:
            return _NO_WIDGET if notebook else _DISCARD.write

        made = type(cls.__name__, (cls,), {
            "__init__": __init__, "display": display, "close": close,
            "status_printer": staticmethod(status_printer),
            "clear": lambda bar, *a, **k: None, "moveto": lambda bar, *a, **k: None,
            "_ipytasks_told": True, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        })
        self._classes[cls] = made
        return made

    def _tell(self, bar: Any, closed: bool) -> None:
        owner = getattr(bar, "_ipytasks_owner", None)
        if owner is None:
            return
        try:
            self.report(owner, id(bar), bar_state(bar), closed)
        except Exception:  # noqa: BLE001 - a progress report must never break the loop it counts
            pass


class _PatchingLoader:
    """Loads a module as usual, then hands it to ``patch``."""

    def __init__(self, loader: Any, patch: Any) -> None:
        self.loader = loader
        self.patch = patch

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def where_text(frame: Any, cell_filename: str) -> str | None:
    """Where a body is: ``line 3 of the cell``, and the innermost frame below the cell's
    when the body is in a function it called (``line 3 of the cell › linalg.py:120 in solve``)."""
    innermost = frame
    while frame is not None and frame.f_code.co_filename != cell_filename:
        frame = frame.f_back
    return where_words(frame.f_lineno if frame is not None else None,
                       innermost if innermost is not frame else None)


def where_words(cell_line: int | None, inner: Any) -> str | None:
    """``line 3 of the cell › linalg.py:120 in solve`` (either part may be missing)."""
    parts = []
    if cell_line is not None:
        parts.append(f"line {cell_line} of the cell")
    if inner is not None:
        code = inner.f_code
        path = code.co_filename.replace("\\", "/").rsplit("/", 2)
        parts.append(f"{'/'.join(path[-2:])}:{inner.f_lineno} in {code.co_name}")
    return " › ".join(parts) or None


#: The first byte of a note's meta (a reply's meta is a pickle, which starts with 0x80).
NOTE = b"N"


def note_of(meta: bytes | bytearray) -> Any:
    """The note a message carries, or ``None`` when it is a job's reply."""
    if meta[:1] != NOTE:
        return None
    return pickle.loads(meta[1:])


def read_reply(fd: int, on_note: Any) -> tuple[bytes | bytearray, bytes | bytearray, list[Any]]:
    """The reply to a job, handing each note sent before it to ``on_note(note)``."""
    while True:
        message = read_message(fd)
        note = note_of(message[0])
        if note is None:
            return message
        on_note(note)


#: The name the worker process's own module has in ``sys.modules`` (see :func:`main`).
WORKER_MODULE = "_ipytasks_worker"
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
        self.watch = TqdmWatch(self.owner, self.bar)

    def owner(self) -> int | None:
        return self.job or None

    def begin(self, job: dict[str, Any]) -> None:
        import time

        self._count += 1
        self._last.clear()
        _reset_peak()
        usage = _usage()
        self._cost = (usage, time.monotonic())
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
        return {"cpu": _usage() - self._cost[0], "rss": _peak_rss()}

    def send(self, job: int, note: dict[str, Any]) -> None:
        data = NOTE + pickle.dumps(note, protocol=5)
        with self.lock:
            if job != self.job:
                return
            try:
                write_message(self.fd, data, b"", [])
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
            where = where_text(frame, filename) if frame is not None else None
            del frame
            if where != said:
                said = where
                self.send(job, {"where": where})
            time.sleep(SAMPLE_INTERVAL)


def _usage() -> float:
    """CPU seconds (user and system) this process has used."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak() -> None:
    """Start the peak of resident memory again from now (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass  # not Linux: the peak counts from the process's start


def _peak_rss() -> int:
    """The most resident memory this process held since the last reset, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- the process --------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the pipe watch below still works
            pass
    if os.getppid() != parent_pid:  # the kernel died before prctl took effect
        os._exit(0)


def _watch_pipe(fd: int) -> None:
    """Exit as soon as the kernel's end of the command pipe is closed (kernel gone)."""
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


def _end_of_output(
    stdout: Any, stderr: Any, marker: bytes, pipes: dict[int, tuple[int, tuple[int, int] | None]]
) -> list[bool]:
    """Flush the streams and mark the end of a job's output on fd 1 and fd 2.

    A cell that closed or redirected fd 1 or fd 2 (``os.dup2``) gets them back on
    the kernel's pipes first (``pipes``: fd -> (a duplicate, its identity)).
    Returns which of the two got their marker.
    """
    for stream in (sys.stdout, sys.stderr, stdout, stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a stream the cell broke
            pass
    sys.stdout, sys.stderr = stdout, stderr
    marked = []
    for fd in (1, 2):
        copy, identity = pipes[fd]
        try:
            if _identity(fd) != identity:
                os.dup2(copy, fd)
            marked.append(os.write(fd, marker) == len(marker))
        except OSError:
            marked.append(False)
    return marked


class StreamPump:
    """Reads one output stream of a worker process and hands its text on, job by job.

    ``emit(name, text)`` receives the text of the current job (set by :meth:`begin`).
    Counts the end-of-job markers it strips, so the job's owner can wait until the
    output of a job is all in. Text read before the first job is kept for it (a
    worker that fails to start says why there). Used by process mode in the kernel
    and by dask mode on a Dask worker, so it needs nothing but the standard library.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        marker: bytes,
        thread_name: str,
        on_error: Any = None,
    ) -> None:
        import threading

        self.name = name
        self._fd = fd
        self._marker = marker
        self._cond = threading.Condition()
        self._emit: Any = None
        self._on_error = on_error
        self._started = False
        self._early: list[str] = []
        self.marks = 0
        self.eof = False
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()

    def begin(self, emit: Any) -> None:
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
        import codecs

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


def main(argv: list[str]) -> None:
    cmd_fd, reply_fd, parent_pid = int(argv[0]), int(argv[1]), int(argv[2])
    marker = bytes.fromhex(argv[3])
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
    stdout, stderr = sys.stdout, sys.stderr
    pipes = {fd: (os.dup(fd), _identity(fd)) for fd in (1, 2)}
    faulthandler.enable(file=stderr)  # a segfault prints the Python traceback first
    threading.Thread(target=_watch_pipe, args=(cmd_fd,), name="ipytasks-watch", daemon=True).start()
    import select

    poller = select.poll()
    poller.register(cmd_fd, select.POLLIN)
    global _talk
    _talk = talk = JobTalk(reply_fd)
    talk.watch.install()
    # ``ipytasks.progress`` looks for this module by this name (a cell imports ipytasks).
    sys.modules[WORKER_MODULE] = sys.modules[__name__]
    warming = False
    while True:
        if not warming and not poller.poll(0):
            # Idle: import cloudpickle now, in the background, for the jobs that
            # need it. Not while a job waits: that one would share the GIL with it.
            warming = True
            threading.Thread(target=_warm_cloudpickle, name="ipytasks-warm", daemon=True).start()
        try:
            meta, values, buffers = read_message(cmd_fd)
        except EOFError:
            break
        job = pickle.loads(meta)
        talk.begin(job)
        try:
            reply = run_job(job, values, buffers)
        except BaseException as exc:  # noqa: BLE001 - a bug here, not in the cell
            reply = (
                {
                    "ok": False,
                    "shipping": f"internal error in the worker process: {_error_text(exc)}",
                },
                b"",
                [],
            )
        del meta, values, buffers, job
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # in case the cell changed it
        reply_meta, reply_values, reply_buffers = reply
        del reply
        reply_meta["cost"] = talk.end()
        reply_meta["marked"] = _end_of_output(stdout, stderr, marker, pipes)
        try:
            with talk.lock:  # after a note being written, never inside it
                write_message(
                    reply_fd, pickle.dumps(reply_meta, protocol=5), reply_values, reply_buffers
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


if __name__ == "__main__":
    main(sys.argv[1:])

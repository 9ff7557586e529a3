"""The wire format: one message over a pipe, and the picklers of the values it carries.

Both ends use this module: the kernel (process mode), a Dask worker (dask mode) and the
worker process itself (:mod:`.child`), so values are encoded alike everywhere. It needs
the standard library only, and cloudpickle when a value needs it (imported then).

One message, either way::

    header   <Q meta length> <Q values length> <I number of buffers>
    table    per buffer: <Q length> <B read-only flag>
    meta     a plain pickle of builtins (dicts, lists, str, int, bytes)
    values   named values, each one pickle, one after the other, from ONE pickler
             (so objects shared between names stay shared and each is sent once)
    buffers  the raw bytes of each out-of-band buffer (pickle protocol 5)

A *note* is a message whose meta starts with :data:`NOTE` (a pickle starts with 0x80)
and carries no values: what a job tells while it runs (its progress, where it is),
sent on the reply pipe ahead of the job's reply.

Buffers of 64 KiB and more (NumPy arrays, ``bytes``, ``bytearray``) leave the
pickle: they are written straight from the object's memory and read straight into
the memory of the object that is rebuilt, so a 200 MB array is never copied into
a pickle on either side. Large ``bytes`` are read into a fresh ``bytes`` object
(CPython), so even they are not copied after the read. Modules travel by name.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a worker 15 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = (
    "INLINE_LIMIT",
    "NOTE",
    "RESULT",
    "ValuePacker",
    "error_text",
    "load_values",
    "note_of",
    "read_message",
    "type_name",
    "write_message",
)

#: Buffers smaller than this travel inside the pickle; larger ones out of band.
INLINE_LIMIT = 64 * 1024
#: How messages name the value of a cell's last expression.
RESULT = "the cell's result (its last expression)"
#: The first byte of a note's meta.
NOTE = b"N"

_HEAD = struct.Struct("<QQI")
_ENTRY = struct.Struct("<QB")


def type_name(value: Any) -> str:
    """``module.Qualname`` of the value's type, without ``builtins.``."""
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


def error_text(exc: BaseException) -> str:
    """``Type: message``, or ``Type`` alone when the message is empty."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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


def note_of(meta: bytes | bytearray) -> Any:
    """The note a message carries, or ``None`` when it is a job's reply."""
    if meta[:1] != NOTE:
        return None
    return pickle.loads(meta[1:])


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

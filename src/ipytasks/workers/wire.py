"""The wire format: one message over a pipe, and the picklers of the values it carries.

Both ends use this module: the kernel (process mode), a Dask worker (dask mode) and the
worker process itself (:mod:`.child`), so values are encoded alike everywhere. It needs
the standard library only, and cloudpickle when a value needs it (imported then).

One message, either way::

    header   <Q meta length> <Q values length> <I number of buffers> <I table length>
    table    per buffer: <Q length> <B flags: 1 read-only, 2 in shared memory>
             and, in shared memory, where: <B whose segment> <Q its serial> <Q offset>
    meta     a plain pickle of builtins (dicts, lists, str, int, bytes)
    values   named values, each one pickle, one after the other, from ONE pickler
             (so objects shared between names stay shared and each is sent once)
    buffers  the raw bytes of each out-of-band buffer not in shared memory
             (pickle protocol 5)

A *note* is a message whose meta starts with :data:`NOTE` (a pickle starts with 0x80)
and carries no values: what a job tells while it runs (its progress, where it is),
sent on the reply pipe ahead of the job's reply.

Buffers of 64 KiB and more (NumPy arrays, ``bytes``, ``bytearray``) leave the
pickle: they are written straight from the object's memory and read straight into
the memory of the object that is rebuilt, so a 200 MB array is never copied into
a pickle on either side. Large ``bytes`` are read into a fresh ``bytes`` object
(CPython), so even they are not copied after the read. Where the two ends share
memory (:mod:`.segments`: a kernel and its worker process), buffers of a megabyte and
more do not go through the pipe at all. Modules travel by name.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types

from . import segments
from .segments import Placement

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a worker 15 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = (
    "CHUNK",
    "INLINE_LIMIT",
    "NOTE",
    "MessageReader",
    "RESULT",
    "ValuePacker",
    "error_text",
    "load_values",
    "note_of",
    "type_name",
    "write_message",
)

#: Buffers smaller than this travel inside the pickle; larger ones out of band.
INLINE_LIMIT = 64 * 1024
#: How messages name the value of a cell's last expression.
RESULT = "the cell's result (its last expression)"
#: The first byte of a note's meta.
NOTE = b"N"

_HEAD = struct.Struct("<QQII")
_ENTRY = struct.Struct("<QB")
_READONLY, _SHARED = 1, 2


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
    buffers: Sequence[pickle.PickleBuffer | Placement],
    readonly: list[bool] | None = None,
    shared: segments.SharedMemory | None = None,
) -> None:
    """Write one message; blocks until the pipe has taken all of it.

    ``readonly`` gives each buffer's read-only flag when it is not the buffer's own
    (dask mode: a buffer that was writable in the kernel may arrive read-only).
    ``shared``: the shared memory with the reader, where the large buffers go (see
    :meth:`.segments.SharedMemory.place`); a :class:`.segments.Placement` among
    ``buffers`` is one placed already.
    """
    if not buffers:  # the common small message: one write, nothing to place
        data = _HEAD.pack(len(meta), len(values), 0, 0) + meta + values
        _write_views(fd, [memoryview(data)])
        return
    raws = [b if isinstance(b, Placement) else b.raw() for b in buffers]
    try:
        placed: list[Placement | None] = [m if isinstance(m, Placement) else None for m in raws]
        if shared is not None:
            views = [m for m in raws if not isinstance(m, Placement)]
            where = iter(shared.place(views))
            placed = [p if p is not None else next(where) for p in placed]
            shared.pass_segments(placed)
        flags = [m.readonly for m in raws] if readonly is None else readonly
        entries = []
        for m, flag, p in zip(raws, flags, placed, strict=True):
            code = (_READONLY if flag else 0) | (_SHARED if p is not None else 0)
            size = m.size if isinstance(m, Placement) else m.nbytes
            entries.append(_ENTRY.pack(size, code) + (p.pack() if p is not None else b""))
        table = b"".join(entries)
        head = _HEAD.pack(len(meta), len(values), len(raws), len(table)) + table
        _write_views(fd, [memoryview(head), memoryview(meta), memoryview(values)])
        for m, p in zip(raws, placed):
            if p is None:
                _write_views(fd, [m])  # type: ignore[list-item]  # a memoryview
    finally:
        for m in raws:
            if not isinstance(m, Placement):
                m.release()


def _read_into(fd: int, view: memoryview) -> None:
    pos, size = 0, view.nbytes
    while pos < size:
        n = os.readv(fd, [view[pos:]])
        if n == 0:
            raise EOFError("the pipe was closed")
        pos += n


#: How much a :class:`MessageReader` asks the pipe for at a time.
CHUNK = 64 * 1024


class MessageReader:
    """Reads messages from one pipe, one after the other.

    It asks the pipe for up to :data:`CHUNK` bytes at a time, so a small message (and
    any that follows it closely) costs one system call; what it read ahead is kept for
    the next message: :attr:`pending` says whether some is there (then polling the pipe
    does not tell whether a message waits). Large parts are read straight into their
    own memory. Only this reader may read the pipe.
    """

    __slots__ = ("_at", "_data", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._data = b""
        self._at = 0

    @property
    def pending(self) -> bool:
        """Whether bytes read ahead wait here (part of the next message at least)."""
        return self._at < len(self._data)

    def fill(self) -> bool:
        """Read once what the pipe holds (blocks only when it holds nothing); ``False``: the
        pipe was closed."""
        chunk = os.read(self.fd, CHUNK)
        if not chunk:
            return False
        self._data = self._data[self._at :] + chunk if self.pending else chunk
        self._at = 0
        return True

    def complete(self) -> bool | None:
        """Whether the next message is all here: ``True`` when it is, and small, with no
        buffers out of band; ``False`` when such a one is still coming; ``None`` when it is
        large or has buffers (:meth:`read` it where blocking is fine)."""
        data, at = self._data, self._at
        if len(data) - at < _HEAD.size:
            return False
        meta_len, values_len, count, table_len = _HEAD.unpack_from(data, at)
        size = _HEAD.size + table_len + meta_len + values_len
        if count or size > CHUNK:
            return None
        return len(data) - at >= size

    def _take(self, size: int) -> bytes | bytearray:
        """The next ``size`` bytes (blocks until they came)."""
        data, at = self._data, self._at
        end = at + size
        if end <= len(data):
            self._at = end
            return data[at:end]
        have = data[at:]
        self._data, self._at = b"", 0
        if size - len(have) > CHUNK:  # a large part: straight into its own memory
            out = bytearray(size)
            out[: len(have)] = have
            with memoryview(out) as view:
                _read_into(self.fd, view[len(have) :])
            return out
        parts = [have]
        missing = size - len(have)
        while True:
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                raise EOFError("the pipe was closed")
            if len(chunk) >= missing:
                parts.append(chunk[:missing])
                self._data, self._at = chunk, missing
                return b"".join(parts)
            parts.append(chunk)
            missing -= len(chunk)

    def _buffer(self, size: int, readonly: bool) -> bytes | bytearray:
        if size >= INLINE_LIMIT and sys.implementation.name == "cpython":
            # Not zeroed first, its pages asked to be huge: a fresh bytearray of 200 MB
            # costs more to zero page by page than to fill.
            data, view = segments.fresh_buffer(size, readonly)
            with view:
                have = len(self._data) - self._at
                if have:
                    have = min(have, size)
                    view[:have] = self._data[self._at : self._at + have]
                    self._at += have
                _read_into(self.fd, view[have:])
            return data
        return self._take(size)

    def read(
        self, shared: segments.SharedMemory | None = None
    ) -> tuple[bytes | bytearray, bytes | bytearray, list[Any]]:
        """Read one message: ``(meta, values, buffers)``; its buffers in shared memory
        through ``shared`` (views where they are, or copies: see
        :meth:`.segments.SharedMemory.receive`).

        :raises EOFError: the other end closed the pipe (before or during the message).
        """
        head = self._take(_HEAD.size)
        meta_len, values_len, count, table_len = _HEAD.unpack(head)
        table = self._take(table_len) if table_len else b""
        entries: list[tuple[int, bool, Placement | None]] = []
        at = 0
        for _ in range(count):
            size, code = _ENTRY.unpack_from(table, at)
            at += _ENTRY.size
            placement = None
            if code & _SHARED:
                placement = Placement.unpack(table, at, size, bool(code & _READONLY))
                at += segments.PLACEMENT_SIZE
            entries.append((size, bool(code & _READONLY), placement))
        meta = self._take(meta_len)
        values = self._take(values_len) if values_len else b""
        buffers: list[Any] = [
            None if p is not None else self._buffer(size, readonly)
            for size, readonly, p in entries
        ]
        placements = [p for _, _, p in entries if p is not None]
        if placements:
            if shared is None:
                raise ValueError("the message has buffers in shared memory, and no way to them")
            received = iter(shared.receive(placements))
            buffers = [next(received) if b is None else b for b in buffers]
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
        # The callback holds the list, not this packer: no cycle through the pickler, whose
        # memo holds every value packed. So they go with the packer, not at the next
        # garbage collection (a worker's inputs read in place must go before its reply).
        self._pickler = cls(self.file, protocol=5, buffer_callback=_taker(self.buffers))

    def add(self, value: Any) -> None:
        self._pickler.dump(value)

    def getvalue(self) -> bytes:
        """The stream; the values are let go of (the memo), the buffers kept."""
        self._pickler.clear_memo()
        return self.file.getvalue()


def _taker(buffers: list[pickle.PickleBuffer]) -> Any:
    def take(buffer: pickle.PickleBuffer) -> bool:
        try:
            with buffer.raw() as m:
                size = m.nbytes
        except BufferError:  # not contiguous: let pickle write it in band
            return True
        if size < INLINE_LIMIT:
            return True
        buffers.append(buffer)
        return False

    return take


def load_values(values: bytes | bytearray | memoryview, buffers: list[Any], count: int) -> Any:
    """Yield ``count`` values from a stream written by :class:`ValuePacker`."""
    unpickler = pickle.Unpickler(io.BytesIO(values), buffers=buffers)
    for _ in range(count):
        yield unpickler.load()

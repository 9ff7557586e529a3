"""Large buffers between a process and its worker, through shared memory (Linux).

What goes where
---------------
A buffer of :data:`SHM_LIMIT` bytes and more (a NumPy array's data, a large ``bytes``)
does not go through the pipe: the sender copies it into a segment of shared memory of
its own, and the message says where in which segment it is. A segment is an anonymous
memory file (``memfd_create``): it has no name anywhere, so nothing of it is ever in
``/dev/shm``, and it is freed when the last descriptor and the last mapping of it are
gone. So it cannot outlive the two processes, however they end (a killed worker, a
killed kernel). With each message the sender passes the receiver a descriptor of each
segment the message uses (``SCM_RIGHTS``, over a Unix socket beside the pipes); the
receiver closes it once it has read the message.

Warm, not fresh
---------------
On some machines fresh memory is slow to touch the first time (pages allocated and
zeroed one by one: 0.2 to 1 GB/s), and a copy into memory already touched is fast
(10 GB/s). So each side keeps its segment for its next message, grows it when a message
needs more (allocating the pages at once, ``posix_fallocate``), and gives it up when
told (:meth:`SharedMemory.release`: after a while without messages).

Once, and in place
------------------
The receiver that reads in place (the worker) gets its buffers as views of the sender's
segment, mapped for the message; a buffer it sends back that lies in one of them
(``out = arr``) is not copied but named where it is, in the receiver's own segment. The
other (the kernel) copies what it receives into new memory of its own, and writes what
it sends, through a window of the segment mapped at a time: its memory grows by the
value that comes back and a window, not by segments. A view the worker's job leaves
behind (stashed in a module) keeps the part of the kernel's segment it sees mapped in
the worker: the worker says so (:meth:`SharedMemory.end_message` returns it), and the
kernel never writes that segment again (:meth:`SharedMemory.retire`); it is freed when
the view goes.

Standard library only: the worker process runs this module from the code its parent
sends (:mod:`.local`).
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
import struct
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a worker 15 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = (
    "IDLE", "PLACEMENT_SIZE", "RECEIVER", "SENDER", "SHM_LIMIT", "Placement", "SharedMemory",
    "fresh_buffer", "supported",
)

#: Buffers of this size and more go through shared memory.
SHM_LIMIT = 1 << 20
#: Offsets of buffers in a segment are multiples of this (pages: windows map from them).
_ALIGN = max(mmap.ALLOCATIONGRANULARITY, 4096)
#: The most the kernel maps of a segment at a time (an eighth of the buffer, at least a
#: megabyte, below that): the window adds to its memory while a value is copied.
WINDOW = 16 << 20
#: Seconds without a message after which a side gives up its warm segment.
IDLE = 30.0
#: Segments grow in steps of this (2 MiB: a huge page).
_STEP = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h

#: Whose segment a buffer is in: the one who sent the message, or the one who reads it.
SENDER, RECEIVER = 0, 1
#: One placed buffer on the wire: whose segment, its serial number there, the offset.
_PLACEMENT = struct.Struct("<BQQ")


class Placement:
    """Where one buffer is: in whose segment (:data:`SENDER`/:data:`RECEIVER`), which
    one (the serial number its owner gave it), at what offset, how long, and whether
    the buffer was read-only."""

    __slots__ = ("whose", "serial", "offset", "size", "readonly")

    def __init__(self, whose: int, serial: int, offset: int, size: int, readonly: bool) -> None:
        self.whose = whose
        self.serial = serial
        self.offset = offset
        self.size = size
        self.readonly = readonly

    def pack(self) -> bytes:
        return _PLACEMENT.pack(self.whose, self.serial, self.offset)

    @classmethod
    def unpack(cls, data: bytes | bytearray, at: int, size: int, readonly: bool) -> Placement:
        whose, serial, offset = _PLACEMENT.unpack_from(data, at)
        return cls(whose, serial, offset, size, readonly)

    def __repr__(self) -> str:
        who = "sender" if self.whose == SENDER else "receiver"
        return f"<Placement {who} #{self.serial} @{self.offset} {self.size} B>"


PLACEMENT_SIZE = _PLACEMENT.size


def supported() -> bool:
    """Whether this platform has what it takes: ``memfd_create`` and passing descriptors."""
    return (sys.platform.startswith("linux") and hasattr(os, "memfd_create")
            and hasattr(socket, "send_fds"))


# -- raw memory ------------------------------------------------------------------------

_api: Any = None


def _c() -> Any:
    """ctypes, and what this module calls through it (loaded on first use)."""
    global _api
    if _api is None:
        import ctypes

        class PyBuffer(ctypes.Structure):
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                        ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                        ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int)
        get.restype = ctypes.c_int
        release = ctypes.pythonapi.PyBuffer_Release
        release.argtypes = (ctypes.POINTER(PyBuffer),)
        release.restype = None
        fresh = {}
        for kind, name in ((bytes, "PyBytes"), (bytearray, "PyByteArray")):
            make = getattr(ctypes.pythonapi, f"{name}_FromStringAndSize")
            make.restype = ctypes.py_object
            make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
            fresh[kind] = make
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _api = (ctypes, PyBuffer, get, release, fresh, libc)
    return _api


def address(view: Any) -> int:
    """The address of the first byte of a buffer (read-only ones too)."""
    ctypes, PyBuffer, get, release, _, _ = _c()
    info = PyBuffer()
    if get(view, ctypes.byref(info), 0) != 0:  # PyBUF_SIMPLE
        raise BufferError("cannot take the address of this buffer")
    try:
        return int(info.buf or 0)
    finally:
        release(ctypes.byref(info))


def fresh_buffer(size: int, readonly: bool) -> tuple[Any, memoryview]:
    """A new ``bytes`` (read-only) or ``bytearray`` of ``size``, not zeroed, its pages
    asked to be huge (fewer, faster first touches), and a writable view to fill it.

    ``bytes``: a large ``bytes`` comes back as itself (``bytes(b)`` is ``b``);
    ``bytearray``: a writable buffer comes back as the object it was read into.
    """
    ctypes, _, _, _, fresh, libc = _c()
    data = fresh[bytes if readonly else bytearray](None, size)
    if readonly:
        start = id(data) + bytes.__basicsize__ - 1  # ob_sval
    else:
        start = address(data)
    view = memoryview((ctypes.c_char * size).from_address(start)).cast("B")
    first = (start + _STEP - 1) // _STEP * _STEP
    last = (start + size) // _STEP * _STEP
    if last > first:
        libc.madvise(first, last - first, _MADV_HUGEPAGE)  # a hint: its failure is fine
    return data, view


def _copy_through_windows(fd: int, offset: int, view: memoryview, into_segment: bool) -> None:
    """Copy between ``view`` and the segment ``fd`` at ``offset``, mapping a window at a
    time (each mapped whole at once: faster than faulting its pages in one by one)."""
    done, size = 0, view.nbytes
    window_size = min(WINDOW, max(1 << 20, size // 8))
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if into_segment else 0)
    while done < size:
        start = offset + done
        base = start - start % _ALIGN
        length = min(window_size, size - done + (start - base))
        window = mmap.mmap(fd, length, flags=flags, prot=prot, offset=base)
        try:
            with memoryview(window) as mapped:
                part = mapped[start - base:]
                n = min(part.nbytes, size - done)
                if into_segment:
                    part[:n] = view[done:done + n]
                else:
                    view[done:done + n] = part[:n]
                part.release()
        finally:
            window.close()
        done += n


# -- one side --------------------------------------------------------------------------


class _Segment:
    """A segment of this side: its descriptor, size, serial number; its mapping if kept."""

    __slots__ = ("fd", "mapping", "serial", "size")

    def __init__(self, serial: int, size: int, mapped: bool) -> None:
        self.serial = serial
        self.size = size
        self.mapping: mmap.mmap | None = None
        self.fd = os.memfd_create("ipytasks", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            # The pages, now and at once: a first write through a mapping would fault
            # them in one by one, three times slower.
            os.posix_fallocate(self.fd, 0, size)
            if mapped:
                self.mapping = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:  # a view of it is still alive: it goes when the view goes
                pass
            self.mapping = None
        try:
            os.close(self.fd)
        except OSError:
            pass


class SharedMemory:
    """One side's shared memory with one peer: its own segment (what it sends goes
    there) and the descriptors of the peer's it is reading.

    :param sock: the Unix socket to the peer, for descriptors.
    :param in_place: read received buffers in place (the worker); else copy them out
        (the kernel). The side that reads in place also keeps its own segment mapped,
        the other writes through windows.
    """

    def __init__(self, sock: socket.socket, in_place: bool) -> None:
        self.sock = sock
        self.in_place = in_place
        self._serials = iter(range(1, 1 << 62))
        self._own: _Segment | None = None
        #: The peer's segments of the message being read, by serial: (fd, mapping).
        self._peer: dict[int, tuple[int, mmap.mmap | None]] = {}
        #: This side's segments the peer keeps views of: never written again.
        self._retired: list[_Segment] = []

    # -- sending ---------------------------------------------------------------------

    def place(self, raws: list[memoryview]) -> list[Placement | None]:
        """Where each buffer goes: ``None`` through the pipe (small, or no shared memory
        to be had), else a :class:`Placement`, after copying the buffer into this side's
        segment or finding it in a segment of the peer's mapped here. The message that
        carries them is to be preceded by :meth:`pass_segments`."""
        placed: list[Placement | None] = [None] * len(raws)
        copies: list[tuple[int, memoryview]] = []
        total = 0
        for i, raw in enumerate(raws):
            if raw.nbytes < SHM_LIMIT:
                continue
            found = self._in_peer_segment(raw) if self._peer else None
            if found is not None:
                serial, offset = found
                placed[i] = Placement(RECEIVER, serial, offset, raw.nbytes, raw.readonly)
                continue
            copies.append((i, raw))
            total += -(-raw.nbytes // _ALIGN) * _ALIGN
        if not copies:
            return placed
        segment = self._segment(total)
        if segment is None:
            return placed
        offset = 0
        for i, raw in copies:
            if segment.mapping is not None:
                with memoryview(segment.mapping) as mapped:
                    mapped[offset:offset + raw.nbytes] = raw.cast("B")
            else:
                _copy_through_windows(segment.fd, offset, raw.cast("B"), into_segment=True)
            placed[i] = Placement(SENDER, segment.serial, offset, raw.nbytes, raw.readonly)
            offset += -(-raw.nbytes // _ALIGN) * _ALIGN
        return placed

    def pass_segments(self, placed: list[Placement | None]) -> None:
        """Pass the peer a descriptor of each segment of this side that ``placed`` uses:
        just before writing the message they are in."""
        own = self._own
        serials = sorted({p.serial for p in placed if p is not None and p.whose == SENDER})
        for serial in serials:
            if own is None or own.serial != serial:
                raise ValueError(f"a placement names a segment this side no longer has (#{serial})")
            socket.send_fds(self.sock, [struct.pack("<Q", serial)], [own.fd])

    def _segment(self, size: int) -> _Segment | None:
        """This side's segment, at least ``size`` long: the warm one, or a new one."""
        own = self._own
        if own is not None and own.size >= size:
            return own
        size = -(-size // _STEP) * _STEP
        try:
            new = _Segment(next(self._serials), size, mapped=self.in_place)
        except OSError:  # no memory for it (ENOMEM, ENOSPC): through the pipe
            return None
        if own is not None:
            own.close()
        self._own = new
        return new

    def _in_peer_segment(self, raw: memoryview) -> tuple[int, int] | None:
        """(serial, offset) of the peer's segment mapped here that holds ``raw``."""
        try:
            start = address(raw)
        except BufferError:
            return None
        for serial, (_, mapping) in self._peer.items():
            if mapping is None:
                continue
            base = address(mapping)
            if base <= start and start + raw.nbytes <= base + len(mapping):
                return serial, start - base
        return None

    def settle(self, buffers: list[pickle.PickleBuffer]) -> list[Any]:
        """A reply's buffers, placed now, while the views of the message it answers are
        still mapped: large ones as :class:`Placement` (pointing into those views where
        they lie there), small ones that lie there as copies (the views can then go),
        the others as they are. What is placed is let go of here."""
        raws = [b.raw() for b in buffers]
        try:
            where = self.place(raws)
            out: list[Any] = []
            for buffer, raw, placement in zip(buffers, raws, where, strict=True):
                if placement is not None:
                    out.append(placement)
                elif self._peer and self._in_peer_segment(raw) is not None:
                    copy = bytes(raw) if raw.readonly else bytearray(raw)
                    out.append(pickle.PickleBuffer(copy))
                else:
                    out.append(buffer)
            return out
        finally:
            for raw in raws:
                raw.release()

    def holding(self) -> bool:
        """Whether this side keeps a segment (to be released after a while without use)."""
        return self._own is not None

    def retire(self, serials: list[int]) -> None:
        """The peer keeps views of these segments of this side: never write them again
        (they are freed when the peer lets go of them)."""
        own = self._own
        if own is not None and own.serial in serials:
            own.close()  # this side's descriptor and mapping; the peer's mapping stays
            self._own = None

    def release(self) -> None:
        """Give up this side's warm segment (a while without messages)."""
        own, self._own = self._own, None
        if own is not None:
            own.close()

    # -- receiving -------------------------------------------------------------------

    def receive(self, placements: list[Placement]) -> list[Any]:
        """The buffers of a message's placements: views of the segments where they are
        (in place), else new ``bytes``/``bytearray`` holding a copy. Takes the
        descriptors the sender passed for them from the socket first."""
        wanted = sorted({p.serial for p in placements if p.whose == SENDER})
        for _ in wanted:
            data, fds, _, _ = socket.recv_fds(self.sock, 8, 1)
            if not fds:
                raise EOFError("the peer closed its socket")
            (serial,) = struct.unpack("<Q", data)
            old = self._peer.pop(serial, None)
            if old is not None:
                os.close(old[0])
            self._peer[serial] = (fds[0], None)
        out = []
        for p in placements:
            if p.whose == RECEIVER:
                fd = self._own_fd(p.serial)
            else:
                fd = self._peer[p.serial][0]
            if self.in_place:
                out.append(self._view(p, fd))
            else:
                data, view = fresh_buffer(p.size, p.readonly)
                with view:
                    _copy_through_windows(fd, p.offset, view, into_segment=False)
                out.append(data)
        return out

    def _own_fd(self, serial: int) -> int:
        own = self._own
        if own is None or own.serial != serial:
            raise ValueError(f"the peer names a segment this side no longer has (#{serial})")
        return own.fd

    def _view(self, p: Placement, fd: int) -> memoryview:
        if p.whose == RECEIVER:
            mapping = self._own.mapping if self._own is not None else None
            if mapping is None:
                raise ValueError(f"the peer names a segment this side no longer has (#{p.serial})")
        else:
            mapping = self._peer[p.serial][1]
            if mapping is None:
                mapping = mmap.mmap(fd, os.fstat(fd).st_size)
                self._peer[p.serial] = (fd, mapping)
        view = memoryview(mapping)[p.offset:p.offset + p.size]
        return view.toreadonly() if p.readonly else view

    def end_message(self) -> list[int]:
        """Done with the message received last (and with the reply that may point into
        it): close the peer's descriptors and unmap its segments. Returns the serials of
        those a view still holds (the peer must not write them again)."""
        kept = []
        for serial, (fd, mapping) in self._peer.items():
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:  # a view of it lives on: it stays mapped for that view
                    kept.append(serial)
            try:
                os.close(fd)
            except OSError:
                pass
        self._peer.clear()
        return kept

    def close(self) -> None:
        self.end_message()
        self.release()

"""Large buffers through shared memory: both sides of a pair of sockets in one process.

What crosses processes for real (a kernel, its worker killed mid-transfer, the kernel
killed) is tested through a kernel in tests/modes/test_process.py; here, what each side
does with its segments.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterator

import pytest

from ipytasks.workers import segments
from ipytasks.workers.segments import RECEIVER, SENDER, SHM_LIMIT, SharedMemory

pytestmark = pytest.mark.skipif(not segments.supported(), reason="Linux memfd and SCM_RIGHTS")
np = pytest.importorskip("numpy")


def memfds() -> int:
    """How many descriptors of this process are shared-memory segments of ours."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ipytasks")
        except OSError:
            pass
    return count


def ours_in_dev_shm() -> list[str]:
    return [name for name in os.listdir("/dev/shm") if "ipytasks" in name]


@pytest.fixture
def pair() -> Iterator[tuple[SharedMemory, SharedMemory]]:
    """(kernel, worker): the kernel copies what it receives, the worker reads in place."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel, worker = SharedMemory(a, in_place=False), SharedMemory(b, in_place=True)
    yield kernel, worker
    kernel.close()
    worker.close()
    a.close()
    b.close()


def raw(array: object) -> memoryview:
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def send(side: SharedMemory, raws: list[memoryview]) -> list:
    """What writing a message does: place its buffers, pass the segments they are in."""
    placed = side.place(raws)
    side.pass_segments(placed)
    return placed


def test_large_buffers_go_through_a_segment_small_ones_through_the_pipe(pair) -> None:
    kernel, worker = pair
    big = np.arange(SHM_LIMIT // 8 * 3, dtype=np.float64)
    small = np.arange(100, dtype=np.float64)
    placed = send(kernel, [raw(small), raw(big)])
    assert placed[0] is None
    assert placed[1] is not None and placed[1].whose == SENDER and placed[1].size == big.nbytes
    (view,) = worker.receive([placed[1]])
    seen = np.frombuffer(view, dtype=np.float64)
    assert (seen == big).all() and seen.flags.writeable
    del seen, view
    assert worker.end_message() == []
    assert ours_in_dev_shm() == []


def test_a_buffer_sent_back_unchanged_is_named_where_it_is(pair) -> None:
    """out = arr: the worker does not copy it; the kernel reads it from its own segment."""
    kernel, worker = pair
    arr = np.arange(SHM_LIMIT // 8 * 2, dtype=np.float64)
    (view,) = worker.receive(send(kernel, [raw(arr)]))
    seen = np.frombuffer(view, dtype=np.float64)
    doubled = seen * 2
    back = send(worker, [raw(seen), raw(doubled)])
    assert [p.whose for p in back] == [RECEIVER, SENDER]
    del seen, view, doubled
    gc.collect()
    assert worker.end_message() == []
    same, twice = kernel.receive(back)
    kernel.end_message()
    assert type(same) is bytearray and type(twice) is bytearray
    assert (np.frombuffer(same, dtype=np.float64) == arr).all()
    assert (np.frombuffer(twice, dtype=np.float64) == 2 * arr).all()


def test_read_only_buffers_come_back_as_bytes(pair) -> None:
    kernel, worker = pair
    data = bytes(range(256)) * (SHM_LIMIT // 256 + 1)
    (view,) = worker.receive(send(kernel, [memoryview(data)]))
    assert view.readonly
    back = send(worker, [view])
    del view
    worker.end_message()
    (copy,) = kernel.receive(back)
    kernel.end_message()
    assert type(copy) is bytes and copy == data


def test_the_segment_stays_warm_and_grows_when_needed(pair) -> None:
    kernel, worker = pair
    serials = []
    for n in (2, 1, 3):
        placed = send(kernel, [raw(np.ones(SHM_LIMIT // 8 * n))])
        worker.receive(placed)
        worker.end_message()
        serials.append(placed[0].serial)
    assert serials[0] == serials[1] != serials[2]
    assert memfds() == 1  # the kernel's one segment; the worker closed what it was passed
    kernel.release()
    assert memfds() == 0


def test_a_view_the_job_keeps_retires_the_segment(pair) -> None:
    """A view left behind in the worker: the kernel never writes that segment again."""
    kernel, worker = pair
    first = np.full(SHM_LIMIT // 8 * 2, 7.0)
    placed = send(kernel, [raw(first)])
    (view,) = worker.receive(placed)
    stash = np.frombuffer(view, dtype=np.float64)
    del view
    kept = worker.end_message()
    assert kept == [placed[0].serial]
    kernel.retire(kept)
    again = send(kernel, [raw(np.zeros(SHM_LIMIT // 8 * 2))])
    assert again[0].serial != placed[0].serial
    worker.receive(again)
    worker.end_message()
    assert (stash == 7.0).all()  # not overwritten by the next message
    del stash

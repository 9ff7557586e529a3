"""The wire format over a real pipe: messages read back whole, however the pipe cuts them."""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterator

import pytest

from ipytasks.workers import wire


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _write_in_pieces(fd: int, data: bytes, sizes: list[int]) -> None:
    """Write ``data`` in pieces of these sizes (the last takes the rest), each its own write."""
    at = 0
    for size in [*sizes, len(data)]:
        piece = data[at : at + size]
        while piece:
            piece = piece[os.write(fd, piece) :]
        at += size
        if at >= len(data):
            return


def _message(meta: bytes, values: bytes = b"") -> bytes:
    """One message as the pipe carries it."""
    r, w = os.pipe()
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(_drain(r)))
    reader.start()
    wire.write_message(w, meta, values, [])
    os.close(w)
    reader.join()
    os.close(r)
    return out[0]


def _drain(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def test_small_messages_following_each_other_in_one_read_are_read_one_by_one(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    data = b"".join(_message(b"meta%d" % i, b"values%d" % i) for i in range(3))
    os.write(w, data)  # all three in the pipe before the first read
    reader = wire.MessageReader(r)
    for i in range(3):
        meta, values, buffers = reader.read()
        assert (bytes(meta), bytes(values), buffers) == (b"meta%d" % i, b"values%d" % i, [])
        assert reader.pending == (i < 2)


def test_a_message_cut_anywhere_is_read_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    meta = pickle.dumps({"k": "x" * 300})
    data = _message(meta, b"v" * 1000) + _message(b"second")
    for cut in (1, 5, 23, 24, 30, 400, 1300):
        writer = threading.Thread(target=_write_in_pieces, args=(w, data, [cut, 7]))
        writer.start()
        reader = wire.MessageReader(r)
        first = reader.read()
        second = reader.read()
        writer.join()
        assert (bytes(first[0]), bytes(first[1])) == (meta, b"v" * 1000)
        assert bytes(second[0]) == b"second"
        assert not reader.pending


def test_large_parts_and_out_of_band_buffers_arrive_intact(pipe: tuple[int, int]) -> None:
    r, w = pipe
    big_values = os.urandom(3 * wire.CHUNK + 17)
    payload = os.urandom(5 * wire.CHUNK + 3)
    packer = wire.ValuePacker(cloud=False)
    packer.add(pickle.PickleBuffer(payload))  # read-only
    packer.add(pickle.PickleBuffer(bytearray(payload)))  # writable
    stream = packer.getvalue()
    assert len(packer.buffers) == 2  # both out of band
    writer = threading.Thread(
        target=lambda: (
            wire.write_message(w, b"one", big_values, []),
            wire.write_message(w, b"two", stream, packer.buffers),
            wire.write_message(w, b"three", b"", []),
        )
    )
    writer.start()
    reader = wire.MessageReader(r)
    one = reader.read()
    two = reader.read()
    three = reader.read()
    writer.join()
    assert (bytes(one[0]), bytes(one[1])) == (b"one", big_values)
    values = list(wire.load_values(two[1], two[2], 2))
    assert bytes(values[0]) == payload and memoryview(values[0]).readonly
    assert bytes(values[1]) == payload and not memoryview(values[1]).readonly
    assert bytes(three[0]) == b"three"


def test_the_pipe_closed_in_the_middle_of_a_message_is_end_of_file(pipe: tuple[int, int]) -> None:
    r, w = pipe
    data = _message(b"meta", b"values")
    os.write(w, data[:-3])
    os.close(w)
    reader = wire.MessageReader(r)
    with pytest.raises(EOFError):
        reader.read()
    with pytest.raises(EOFError):  # and again: nothing more will come
        reader.read()

"""What the tests of worker modes share: waiting for a task's output or end, gates a cell
blocks on, and the processes a test looks at (from ``/proc``: Linux).

Waits are bounded by :data:`WAIT` only to fail a hung test, never to make one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from ipytasks.errors import TaskFailed
from ipytasks.records import TaskOptions, TaskRecord
from ipytasks.scheduler import Scheduler
from ipytasks.workers.local import TAG

WAIT = 60  # seconds: only to fail a hung test, never to make one pass
#: A worker process's first argument: how a test recognises one.
WORKER_TAG = TAG.encode()


def needs_distributed() -> None:
    """Skip the test without ``distributed`` — but fail it under ``CI=true``, where
    ``make test`` installs the ``[dask]`` extra."""
    import importlib.util

    import pytest

    from kernel_driver import ci_mode

    if importlib.util.find_spec("distributed") is None:
        message = "dask mode needs distributed (pip install 'ipytasks[dask]')"
        if ci_mode():
            pytest.fail(f"{message} (CI=true: make test installs the [dask] extra)")
        pytest.skip(message)


# -- processes ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_exists(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (zombies count as exited)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children_of(pids: set[int]) -> set[int]:
    """Live processes whose parent is one of ``pids``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[1]) in pids:
                found.add(int(entry))
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    layer = {pid}
    while layer:
        layer = children_of(layer) - found
        found |= layer
    return found


def worker_processes(parents: set[int]) -> set[int]:
    """The live worker processes whose parent is one of ``parents`` (this process for
    process mode, the Dask workers for dask mode)."""
    return {p for p in children_of(parents) if WORKER_TAG in cmdline(p).split(b"\0")}


def worker_threads() -> list[str]:
    """Threads of process mode (job threads, output readers) still running in this process."""
    return [
        t.name
        for t in threading.enumerate()
        if re.fullmatch(r"ipytasks-\d+-\w+|ipytasks-worker-\d+", t.name)
    ]


def wait_gone(pids: set[int], timeout: float = WAIT) -> set[int]:
    """Wait (bounded) until none of ``pids`` lives; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if process_exists(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


async def exited(pid: int) -> None:
    """Wait until process ``pid`` has exited (a pidfd becomes readable then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # exited and reaped already
        return
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        with anyio.fail_after(WAIT):
            await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


# -- tasks ---------------------------------------------------------------------------------


async def run(sched: Scheduler, source: str, name: str, options: TaskOptions) -> TaskRecord:
    """Submit a task and wait until it ends (raising TaskFailed if it did not succeed)."""
    record = sched.submit(source, name, options)
    with anyio.fail_after(WAIT):
        await sched.wait([record])
    return record


async def end_of(sched: Scheduler, record: TaskRecord) -> TaskRecord:
    """Wait until ``record`` ends, whatever its end."""
    with anyio.fail_after(WAIT), contextlib.suppress(TaskFailed):
        await sched.wait([record])
    return record


class _Watch:
    """A view of a task's output that sets an event once some text has appeared."""

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)
        self.event = asyncio.Event()
        self.match: re.Match[str] | None = None

    def update(self, output: Any) -> None:
        self.check(output.text)

    def check(self, text: str) -> None:
        if self.match is None:
            self.match = self.pattern.search(text)
            if self.match is not None:
                self.event.set()


async def output_shows(record: TaskRecord, pattern: str) -> re.Match[str]:
    """Wait until the task's output matches ``pattern`` (while the task still runs)."""
    watch = _Watch(pattern)
    assert record.sink is not None
    record.sink.attach(watch)
    watch.check(record.output)
    with anyio.fail_after(WAIT):
        await watch.event.wait()
    assert watch.match is not None
    return watch.match


@contextlib.contextmanager
def gate(tmp_path: Path, name: str = "gate") -> Iterator[tuple[str, Any]]:
    """A FIFO a cell can block on (``open(path).read()``) until ``release()`` is called."""
    path = tmp_path / name
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)  # a writer: the cell's read blocks until we close it
    closed = False

    def release() -> None:
        nonlocal closed
        if not closed:
            closed = True
            os.close(fd)

    try:
        yield str(path), release
    finally:
        release()


def stream_texts(record: TaskRecord) -> dict[str, str]:
    """The task's output per stream (the order across the two streams is not kept)."""
    texts: dict[str, str] = {}
    assert record.sink is not None
    for output in record.sink.notebook_outputs():
        if output["output_type"] == "stream":
            texts[output["name"]] = texts.get(output["name"], "") + output["text"]
    return texts

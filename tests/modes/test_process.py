"""Process mode (DESIGN §5.3): what is its own — the pool in the kernel — with real worker
processes, through the real scheduler.

What a worker does in any mode (inputs, outputs, output streaming, errors, cancel, timeouts,
crashes) is tested once per mode in ``tests/workers/test_contract.py``. Here: a ``--map``
item, the pool's size at work, closing it, workers dying with the kernel, and a real kernel's
interrupts. No mocks: every test starts worker processes; progress is synchronised on what
the worker prints. After each test the scheduler is closed and no worker process may be left.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import (
    WAIT,
    end_of,
    gate,
    output_shows,
    process_exists,
    run,
    worker_processes,
    worker_threads,
)
from ipytasks.modes._process import ProcessMode
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry, TaskState
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sched(ip: Any) -> AsyncIterator[Scheduler]:
    """A scheduler on the test's loop with a process pool of two workers."""
    scheduler = Scheduler(
        ip,
        TaskRegistry(),
        loop=asyncio.get_running_loop(),
        mode_settings={"process": {"max_workers": 2}},
    )
    try:
        yield scheduler
    finally:
        scheduler.close()
        assert worker_processes({os.getpid()}) == set()
        assert worker_threads() == []


def process(**kwargs: Any) -> TaskOptions:
    return TaskOptions(mode="process", **kwargs)


async def test_a_process_cell_is_analysed_once(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submitting, refusing-or-not, taking the inputs, inferring edges and merging the
    names back all read the one analysis made when the cell was compiled."""
    from ipytasks.namespace import analysis

    analysed: list[int] = []
    real = analysis._Analyzer.run

    def counted(self: Any, body: Any) -> None:
        analysed.append(len(body))
        real(self, body)

    monkeypatch.setattr(analysis._Analyzer, "run", counted)
    sched.shell.user_ns["data"] = [1, 2, 3]
    record = await run(sched, "total = sum(data)\ntotal * 2", "once", process())
    assert record.result == 12 and sched.shell.user_ns["total"] == 6
    assert analysed == [2]


async def test_a_map_item_runs_with_its_item(ip: Any) -> None:
    """A --map item runs in a worker with VAR bound to its item; only its result comes back."""
    from ipytasks.cells import MapItemCell, compile_cell, compile_map_function

    ip.user_ns.update(offset=1, n="the notebook's n")
    cell = compile_cell(ip, "square = n * n\nsquare + offset")
    item = MapItemCell(cell, compile_map_function(cell, "n", ip.user_ns), 7)
    mode = ProcessMode(ip, max_workers=1)
    try:
        record = TaskRecord(
            name="m[0]", source=cell.source, options=process(), cell=item, mode="process"
        )
        with anyio.fail_after(WAIT):
            assert await mode.run(record) == 50
    finally:
        mode.close()
    assert "square" not in ip.user_ns and ip.user_ns["n"] == "the notebook's n"
    assert worker_processes({os.getpid()}) == set()


async def test_two_cpu_bound_cells_overlap(ip: Any, sched: Scheduler) -> None:
    """Two 1 s CPU-bound cells run at the same time on two workers.

    The cells spin for 1 s of wall time, so the check holds on a machine other
    work keeps busy too; one after the other they would take 2 s. (The benchmark
    measures CPU-time cells.)
    """
    ip.run_cell(
        "def burn(seconds):\n"
        "    import time\n"
        "    t0 = time.perf_counter()\n"
        "    while time.perf_counter() - t0 < seconds:\n"
        "        pass"
    )
    await run(sched, "0", "warm", process())  # start the pool: measure the overlap, not the start
    start = time.perf_counter()
    # The cells bind nothing, so the scheduler infers no order between them.
    a = sched.submit("burn(1.0)", "cpu_a", process())
    b = sched.submit("burn(1.0)", "cpu_b", process())
    assert a.waits_for == () and b.waits_for == ()
    with anyio.fail_after(WAIT):
        await sched.wait([a, b])
    wall = time.perf_counter() - start
    assert wall < 1.8, f"two 1 s CPU-bound cells took {wall:.2f} s"


# -- lifetime -----------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["cancelled", "died"])
async def test_a_dropped_worker_is_reaped_and_its_pipes_closed(
    sched: Scheduler, tmp_path: Path, end: str
) -> None:
    """A worker the pool drops (killed on cancel, or dead) is reaped and its pipes in the
    kernel closed once its threads end: nothing piles up over a session's tasks."""
    with gate(tmp_path) as (path, release):
        record = sched.submit(
            f"import os\nprint('pid', os.getpid(), flush=True)\nopen({path!r}).read()\n"
            "os._exit(1)",
            "dropped",
            process(),
        )
        pid = int((await output_shows(record, r"pid (\d+)")).group(1))
        mode = sched.installed_mode("process")
        assert isinstance(mode, ProcessMode) and mode._pool is not None
        (worker,) = [w for w in mode._pool.workers if w.pid == pid]
        if end == "cancelled":
            sched.cancel([record])
        else:
            release()
        await end_of(sched, record)
    assert record.state == end.replace("died", "failed")
    for thread in (worker._thread, *worker.child.threads):
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive(), thread
    assert worker.child.proc.returncode is not None  # reaped: no zombie
    assert (worker.child._cmd, worker.child._rep) == (-1, -1)  # closed


async def test_close_leaves_no_worker_process(ip: Any) -> None:
    """Closing the scheduler (unload, shutdown) kills and reaps every worker, busy or idle."""
    scheduler = Scheduler(
        ip,
        TaskRegistry(),
        loop=asyncio.get_running_loop(),
        mode_settings={"process": {"max_workers": 2}},
    )
    try:
        busy = scheduler.submit(
            "import os\nprint('pid', os.getpid(), flush=True)\nwhile True:\n    pass",
            "busy",
            process(),
        )
        pid = int((await output_shows(busy, r"pid (\d+)")).group(1))
        mode = scheduler._modes["process"]
        assert isinstance(mode, ProcessMode)
        pids = set(mode.worker_pids)
        assert pid in pids
    finally:
        scheduler.close()
    assert worker_processes({os.getpid()}) == set() and worker_threads() == []
    assert not any(process_exists(p) for p in pids)
    assert busy.state == TaskState.CANCELLED


def test_workers_exit_when_the_kernel_dies(tmp_path: Path) -> None:
    """A worker exits by itself when the kernel process is killed (no close, no atexit)."""
    script = tmp_path / "kernel.py"
    script.write_text(
        textwrap.dedent(
            """\
            import asyncio
            from IPython.core.interactiveshell import InteractiveShell
            from ipytasks.scheduler import Scheduler
            from ipytasks.records import TaskOptions, TaskRegistry

            async def main():
                ip = InteractiveShell.instance()
                sched = Scheduler(ip, TaskRegistry(), loop=asyncio.get_running_loop(),
                                  mode_settings={"process": {"max_workers": 2}})
                rec = sched.submit("import time\\nwhile True:\\n    time.sleep(0.05)", "t",
                                   TaskOptions(mode="process"))
                while not sched._modes["process"].worker_pids:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0)  # let the pool start its second worker
                print(*sched._modes["process"].worker_pids, flush=True)
                await asyncio.Event().wait()

            asyncio.run(main())
            """
        )
    )
    kernel = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert kernel.stdout is not None
        line = kernel.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert pids and all(process_exists(p) for p in pids)
        handles = [os.pidfd_open(p) for p in pids]
        try:
            kernel.kill()
            kernel.wait(WAIT)
            for handle in handles:
                ready, _, _ = select.select([handle], [], [], WAIT)
                assert ready, "a worker outlived its kernel"
        finally:
            for handle in handles:
                os.close(handle)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()
        if kernel.stdout is not None:
            kernel.stdout.close()


def test_in_a_kernel_interrupts_spare_process_tasks(fresh_kernel: Any, tmp_path: Path) -> None:
    """In a real kernel, interrupting (idle or mid-cell) never fails a running process task,
    its names merge when it ends, a failure shows the cell's line, and shutting the kernel
    down leaves no worker behind."""
    k = fresh_kernel
    held_gate, cell_gate = tmp_path / "held", tmp_path / "cell"
    pid_file, entered = tmp_path / "pid", tmp_path / "entered"
    os.mkfifo(held_gate)
    os.mkfifo(cell_gate)
    held_fd = os.open(held_gate, os.O_RDWR)
    cell_fd = os.open(cell_gate, os.O_RDWR)
    try:
        k.execute("%load_ext ipytasks")
        k.execute(
            "%%parallel held --process --quiet\n"
            "import os\n"
            f"with open({str(pid_file)!r}, 'w') as f:\n"
            "    f.write(str(os.getpid()))\n"
            f"open({str(held_gate)!r}).read()\n"
            "held_value = 42"
        )
        k.wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", what="the worker")
        pid = int(pid_file.read_text())
        k.interrupt()  # the kernel is idle
        blocked = k.submit(f"open({str(entered)!r}, 'w').close()\nopen({str(cell_gate)!r}).read()")
        k.wait_until(entered.exists, what="the blocking cell to start")
        k.interrupt_cell(blocked, WAIT)  # KeyboardInterrupt in the blocking cell
        assert blocked.status == "error" and "KeyboardInterrupt" in blocked.error_text
        assert process_exists(pid)
        os.close(held_fd)
        held_fd = -1
        k.execute("%wait held", timeout=WAIT)
        shown = k.execute("import ipytasks\nprint(held_value, ipytasks.tasks['held'].state)")
        assert shown.stdout.strip() == "42 done"
        k.execute("%%parallel bad --process --quiet\nx = 1\ny = 0\nz = x / y")
        failed = k.execute("%wait bad", allow_errors=True, timeout=WAIT)
        text = failed.error_text
        assert "ZeroDivisionError" in text and "z = x / y" in text
        assert re.search(r"Cell In\[\d+\], line 3", text), text
        handle = os.pidfd_open(pid)
    finally:
        for fd in (held_fd, cell_fd):
            if fd >= 0:
                os.close(fd)
    try:
        k.shutdown()
        ready, _, _ = select.select([handle], [], [], WAIT)
        assert ready, "a worker outlived its kernel's shutdown"
    finally:
        os.close(handle)


async def test_a_job_that_writes_nothing_is_not_waited_on_for_output(ip: Any) -> None:
    """A job that wrote nothing at all sends no end-of-output markers (nothing to wait
    for); one that prints, or writes from C, still does, and its output is all in."""
    sched = Scheduler(ip, TaskRegistry(), loop=asyncio.get_running_loop(),
                      mode_settings={"process": {"max_workers": 1}})
    try:
        await run(sched, "1 + 1;", "silent0", process())
        mode = sched.installed_mode("process")
        assert isinstance(mode, ProcessMode) and mode._pool is not None
        (worker,) = mode._pool.workers
        before = list(worker.child._marks)
        await run(sched, "1 + 1;", "silent1", process())
        assert worker.child._marks == before
        loud = await run(sched, "import os\nos.write(1, b'from C\\n')\nprint('from Python')",
                         "loud", process())
        assert worker.child._marks == [before[0] + 1, before[1] + 1]
        assert "from C" in loud.output and "from Python" in loud.output
    finally:
        sched.close()


async def test_a_worker_that_dies_while_idle_is_let_go_and_replaced(ip: Any) -> None:
    """The loop watches an idle worker's reply pipe: a worker killed while idle is let go
    (its pipe no longer watched), and the next task runs on a new worker."""
    sched = Scheduler(ip, TaskRegistry(), loop=asyncio.get_running_loop(),
                      mode_settings={"process": {"max_workers": 1}})
    try:
        await run(sched, "import os\npid = os.getpid()", "first", process())
        mode = sched.installed_mode("process")
        assert isinstance(mode, ProcessMode) and mode._pool is not None
        (worker,) = mode._pool.workers
        assert worker.pid == ip.user_ns["pid"] and worker._watched is not None
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while worker._watched is not None:  # the loop sees the end of the pipe
            assert time.monotonic() < deadline, "the loop still watches a dead worker"
            await asyncio.sleep(0.01)
        await run(sched, "import os\npid = os.getpid()", "second", process())
        assert ip.user_ns["pid"] != worker.pid
        for thread in (worker._thread, *worker.child.threads):
            await asyncio.to_thread(thread.join, WAIT)
            assert not thread.is_alive(), thread
        assert (worker.child._cmd, worker.child._rep) == (-1, -1)  # closed
    finally:
        sched.close()

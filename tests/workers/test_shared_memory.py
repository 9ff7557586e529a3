"""Large values through shared memory, with real worker processes and a real kernel.

Nothing of a segment is ever in ``/dev/shm``, and no segment outlives the processes that
use it: after a task (once the worker and the kernel give up their warm segments), after
the worker is killed while it holds the task's values, after the kernel is killed. A
segment is found by its inode in ``/proc/<pid>/fd`` and ``/proc/<pid>/maps`` of every
process, so "no process holds it" is checked, not assumed. Linux only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import WAIT, end_of, exited, gate, output_shows, run, worker_processes
from ipytasks.records import TaskOptions, TaskRegistry
from ipytasks.scheduler import Scheduler
from ipytasks.workers import segments

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not segments.supported(), reason="Linux: memfd and SCM_RIGHTS"),
]
np = pytest.importorskip("numpy")

MEMFD = "/memfd:ipytasks"
#: Large enough for shared memory (several of its size limit).
ELEMENTS = 4 * segments.SHM_LIMIT // 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def segments_of(pids: set[int]) -> set[int]:
    """The inodes of the shared-memory segments of ours these processes hold open or mapped."""
    found: set[int] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD):
                    found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith(MEMFD):
                    found.add(int(fields[4]))
        except OSError:  # gone meanwhile
            continue
    return found


def holders(inodes: set[int]) -> set[int]:
    """Every process, anywhere, that holds one of these segments open or mapped."""
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and segments_of({int(p)}) & inodes}


def ours_in_dev_shm() -> list[str]:
    return [name for name in os.listdir("/dev/shm") if "ipytasks" in name]


async def until(condition: Any) -> None:
    """Wait (bounded) until ``condition()`` holds: a state that other threads reach."""
    with anyio.fail_after(WAIT):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
async def sched(ip: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Scheduler]:
    """One worker; warm segments given up after 0.3 s without a job (both sides)."""
    monkeypatch.setattr(segments, "IDLE", 0.3)
    scheduler = Scheduler(ip, TaskRegistry(), loop=asyncio.get_running_loop(),
                          mode_settings={"process": {"max_workers": 1}})
    try:
        yield scheduler
    finally:
        scheduler.close()
    assert worker_processes({os.getpid()}) == set()


async def test_values_travel_in_shared_memory_which_goes_after_the_task(
    ip: Any, sched: Scheduler
) -> None:
    """An array goes to the worker and back through segments (the kernel's, the worker's);
    both sides keep theirs warm for the next task, then give them up; nothing in /dev/shm."""
    ip.user_ns["arr"] = np.arange(ELEMENTS, dtype=np.float64)
    ip.user_ns["data"] = bytes(range(256)) * (segments.SHM_LIMIT // 128)
    record = await run(sched, "same = arr\ntwice = arr * 2\nback = data", "ship",
                       TaskOptions(mode="process"))
    assert record.state == "done"
    assert (ip.user_ns["same"] == ip.user_ns["arr"]).all() and ip.user_ns["same"].flags.writeable
    assert (ip.user_ns["twice"] == 2 * ip.user_ns["arr"]).all()
    assert ip.user_ns["back"] == ip.user_ns["data"] and type(ip.user_ns["back"]) is bytes
    (worker,) = worker_processes({os.getpid()})
    kernel_side, worker_side = segments_of({os.getpid()}), segments_of({worker})
    assert len(kernel_side) == 1 and len(worker_side) == 1  # the warm one each: used
    assert ours_in_dev_shm() == []
    await run(sched, "again = arr", "again", TaskOptions(mode="process"))
    assert segments_of({os.getpid()}) == kernel_side  # the same segment, warm
    await until(lambda: not holders(kernel_side | worker_side))
    assert ours_in_dev_shm() == []


async def test_a_worker_killed_holding_its_values_leaves_no_segment(
    ip: Any, sched: Scheduler, tmp_path: Path
) -> None:
    """SIGKILL to the worker while its job reads its values in place from the kernel's
    segment: the task fails, the kernel lets go of that segment, nobody holds it."""
    ip.user_ns["arr"] = np.ones(ELEMENTS)
    with gate(tmp_path) as (path, _release):
        record = sched.submit(
            f"import os\ntotal = arr.sum()\nprint('pid', os.getpid(), flush=True)\n"
            f"open({path!r}).read()\nout = arr",
            "held", TaskOptions(mode="process"),
        )
        pid = int((await output_shows(record, r"pid (\d+)")).group(1))
        held = segments_of({pid})
        assert held and held <= segments_of({os.getpid()})  # the kernel's, mapped there
        os.kill(pid, signal.SIGKILL)
        await end_of(sched, record)
    assert record.state == "failed" and "SIGKILL" in str(record.error)
    await until(lambda: not holders(held))
    assert ours_in_dev_shm() == []


def test_a_killed_kernel_leaves_no_segment(fresh_kernel: Any, tmp_path: Path) -> None:
    """SIGKILL to a real kernel while its worker holds a task's values: the worker dies
    with it, and no process anywhere holds their segments."""
    k = fresh_kernel
    pid_file = tmp_path / "pid"
    k.execute("%load_ext ipytasks")
    k.execute(f"import numpy as np\narr = np.ones({ELEMENTS})")
    k.execute("%%parallel first --process\nout = arr")  # both sides' segments, warm
    k.execute("%wait first")
    with gate(tmp_path) as (path, _release):
        k.execute(
            "%%parallel held --process\n"
            + textwrap.dedent(f"""\
                import os
                total = arr.sum()
                open({str(pid_file)!r}, 'w').write(str(os.getpid()))
                open({path!r}).read()
                out = arr
            """)
        )
        deadline = time.monotonic() + WAIT
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the worker never started its job"
            time.sleep(0.02)
        worker = int(pid_file.read_text())
        held = segments_of({k.pid, worker})
        assert held, "no segment in the kernel or its worker"
        os.kill(k.pid, signal.SIGKILL)
        asyncio.run(exited(worker))
    assert holders(held) == set()
    assert ours_in_dev_shm() == []

"""What a worker does, whichever mode runs it: each test runs once in process mode and once
in dask mode.

Both modes run a cell in the same worker process (``ipytasks.workers``); only where it lives
differs (a child of the kernel, or of a Dask worker of a ``LocalCluster`` on loopback). No
mocks: real worker processes, a real cluster. Progress is synchronised on what the body
prints (a view attached to the task's output) and on FIFOs the test holds open. After each
test the scheduler is closed, and no worker process may be left (nor, in process mode, a
thread of one). What only one mode does is tested in ``tests/modes/test_<mode>.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import (
    WAIT,
    end_of,
    exited,
    gate,
    output_shows,
    process_exists,
    run,
    stream_texts,
    worker_processes,
    worker_threads,
)
from ipytasks.errors import BrokenWorker, RemoteError, ShippingError
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio

MODES = ("process", "dask")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Worker:
    """A mode as the contract tests drive it: its scheduler, its options, where it runs."""

    mode: str
    sched: Scheduler
    client: Any = None  # dask mode's

    def options(self, **kwargs: Any) -> TaskOptions:
        if self.mode == "dask":
            return TaskOptions(on="dask", **kwargs)
        return TaskOptions(mode="process", **kwargs)

    def submit(self, source: str, name: str, **kwargs: Any) -> TaskRecord:
        return self.sched.submit(source, name, self.options(**kwargs))

    async def run(self, source: str, name: str, **kwargs: Any) -> TaskRecord:
        """Submit a task and wait until it ends (raising TaskFailed if it failed)."""
        return await run(self.sched, source, name, self.options(**kwargs))

    async def end_of(self, record: TaskRecord) -> TaskRecord:
        return await end_of(self.sched, record)

    async def parents(self) -> set[int]:
        """The processes a worker process of this mode is a child of."""
        if self.client is None:
            return {os.getpid()}
        return set((await asyncio.to_thread(self.client.run, os.getpid)).values())

    def died(self, how: str) -> str:
        """The pattern of the message of a task whose worker process died ``how``."""
        where = r" on Dask worker tcp://127\.0\.0\.1:\d+" if self.client is not None else ""
        return rf"worker process died \({how}\){where}"


@pytest.fixture(params=MODES)
def cluster(request: pytest.FixtureRequest) -> Any:
    """``(mode, its Dask client or None)``: the module's LocalCluster for dask mode."""
    if request.param == "dask":
        return request.param, request.getfixturevalue("dask_client")
    return request.param, None


@pytest.fixture
async def worker(ip: Any, cluster: Any) -> AsyncIterator[Worker]:
    """The mode under test on a scheduler of the test's loop (two worker processes)."""
    mode, client = cluster
    loop = asyncio.get_running_loop()
    if client is None:
        sched = Scheduler(
            ip, TaskRegistry(), loop=loop, mode_settings={"process": {"max_workers": 2}}
        )
    else:
        from ipytasks.modes._dask import DaskMode

        sched = Scheduler(ip, TaskRegistry(), loop=loop)
        sched.install_mode(DaskMode(ip, client))
    harness = Worker(mode, sched, client)
    try:
        yield harness
    finally:
        sched.close()
        # Every worker process is gone: closing the mode ends them (on every Dask worker,
        # its plugin's teardown), busy or idle.
        assert worker_processes(await harness.parents()) == set()
        assert worker_threads() == []


# -- inputs and outputs -------------------------------------------------------------------


async def test_inputs_are_shipped_and_bound_names_merged(ip: Any, worker: Worker) -> None:
    """Names the cell reads are shipped (notebook functions, classes and lambdas by value,
    modules by name); the names it binds merge, ``del`` deletes, functions it defines see the
    notebook's names; its result comes back. The body ran in a worker process, which
    imported nothing of ipytasks."""
    ip.run_cell(
        textwrap.dedent(
            """\
            import math
            OFFSET = 10
            def add_offset(v):
                return v + OFFSET
            class Point:
                def __init__(self, x):
                    self.x = x
                def norm(self):
                    return math.sqrt(self.x * self.x)
            triple = lambda v: v * 3
            x = 21
            gone = 'deleted by the cell'
            """
        )
    )
    record = await worker.run(
        "import os, json\ny = add_offset(x)\np = Point(-4)\nz = triple(p.norm())\n"
        "pid = os.getpid()\nparent = os.getppid()\ndel gone\nfactor = 5\n"
        "def scale(v):\n    return v * factor\n"
        "import sys\nloaded = [m for m in sys.modules if m.partition('.')[0] == 'ipytasks']\ny",
        "inputs",
    )
    ns = ip.user_ns
    assert record.state == "done" and record.mode == worker.mode and record.attempts == 1
    assert record.result == 31 and ns["y"] == 31 and ns["z"] == 12
    assert type(ns["p"]) is ns["Point"] and ns["p"].x == -4
    assert "gone" not in ns and ns["json"] is sys.modules["json"]
    assert ns["scale"](2) == 10 and ns["scale"].__globals__ is ns
    ns["factor"] = 7  # a function defined in the cell reads the notebook's names
    assert ns["scale"](2) == 14
    assert ns["parent"] in await worker.parents() and ns["pid"] != os.getpid()
    assert ns["loaded"] == []  # the worker process runs nothing of the ipytasks package


async def test_a_chained_cell_reads_what_the_task_before_it_bound(
    ip: Any, worker: Worker
) -> None:
    """Inputs are taken when a task starts: a chained cell reads its predecessor's output."""
    first = worker.submit("base = 40", "first", chain="main")
    second = worker.submit("total = base + 2", "second", chain="main")
    with anyio.fail_after(WAIT):
        await worker.sched.wait([first, second])
    assert ip.user_ns["total"] == 42 and second.waits_for == ("first",)


async def test_top_level_await_runs_in_the_worker(ip: Any, worker: Worker) -> None:
    """A cell with top-level await runs in the worker under asyncio.run."""
    record = await worker.run("import asyncio\nawait asyncio.sleep(0)\nawaited = 'yes'\nawaited",
                              "awaits")
    assert record.result == "yes" and ip.user_ns["awaited"] == "yes"


async def test_numpy_arrays_round_trip(ip: Any, worker: Worker) -> None:
    """NumPy arrays (contiguous, strided, Fortran, read-only) go in and come back intact, a
    writable one writable."""
    np = pytest.importorskip("numpy")
    arr = np.arange(2_000_000, dtype=np.float64)
    frozen = np.arange(100_000, dtype=np.int32)
    frozen.flags.writeable = False
    ip.user_ns.update(
        arr=arr, strided=arr[::3], fortran=np.asfortranarray(arr[:90_000].reshape(300, 300)),
        frozen=frozen,
    )
    await worker.run(
        "doubled = arr * 2\ns = strided.copy()\nf_sum = float(fortran.sum())\n"
        "f_order = fortran.flags.f_contiguous\nfrozen_writeable = frozen.flags.writeable\n"
        "same_frozen = frozen",
        "numpy",
    )
    ns = ip.user_ns
    assert ns["doubled"].dtype == np.float64 and np.array_equal(ns["doubled"], arr * 2)
    assert ns["doubled"].flags.writeable
    assert np.array_equal(ns["s"], arr[::3])
    assert ns["f_sum"] == float(arr[:90_000].sum()) and ns["f_order"]
    assert ns["frozen_writeable"] is False and np.array_equal(ns["same_frozen"], frozen)


async def test_large_bytes_round_trip(ip: Any, worker: Worker) -> None:
    """Large bytes and bytearray travel out of band and keep their types and contents."""
    blob = os.urandom(3 << 20)
    ip.user_ns.update(blob=blob, mutable=bytearray(blob[: 1 << 20]))
    await worker.run("back = blob[::-1]\nmutable[0:3] = b'abc'\nmutable2 = mutable", "bytes")
    ns = ip.user_ns
    assert type(ns["back"]) is bytes and ns["back"] == blob[::-1]
    assert type(ns["mutable2"]) is bytearray and ns["mutable2"][:3] == b"abc"
    assert ns["mutable2"][3:] == blob[3 : 1 << 20]


async def test_unpicklable_input_names_the_variable(ip: Any, worker: Worker) -> None:
    """An input that cannot be pickled fails the task, naming the variable and its type; the
    worker is not touched, the next task runs."""
    ip.run_cell("import threading\nmy_lock = threading.Lock()")
    record = worker.submit("with my_lock:\n    done = True", "lock")
    await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, ShippingError)
    assert "cannot send 'my_lock' (_thread.lock) to a worker process" in str(record.error)
    assert "done" not in ip.user_ns
    assert (await worker.run("1 + 1", "after_lock")).result == 2


async def test_unpicklable_output_names_the_variable(ip: Any, worker: Worker) -> None:
    """An output that cannot be pickled fails the task, naming it; nothing is merged."""
    record = worker.submit("ok = 1\ngen = (i for i in range(3))", "gen")
    await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, ShippingError)
    assert "cannot send 'gen' (generator) back from the worker process" in str(record.error)
    assert "ok" not in ip.user_ns and "gen" not in ip.user_ns


async def test_closed_file_is_left_in_the_worker(ip: Any, worker: Worker, tmp_path: Path) -> None:
    """A name holding a closed file (`with open() as f`) is not brought back, and that is said."""
    (tmp_path / "in.txt").write_text("content")
    record = await worker.run(
        f"with open({str(tmp_path / 'in.txt')!r}) as f:\n    text = f.read()", "files"
    )
    assert ip.user_ns["text"] == "content" and "f" not in ip.user_ns
    assert "'f' (a closed file) stays in the worker process" in stream_texts(record)["stderr"]


async def test_changed_in_place_is_reported_and_not_merged(ip: Any, worker: Worker) -> None:
    """A change in place happens to the worker's copy only, and the task's output says so."""
    ip.user_ns["results"] = {}
    record = await worker.run("results['a'] = 1\nn = len(results)", "inplace")
    assert ip.user_ns["results"] == {} and ip.user_ns["n"] == 1
    assert "'results' is changed in place in the worker process" in record.output


async def test_kernel_path_directory_and_environment_are_shipped(
    ip: Any, worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker (on this machine) imports from the kernel's sys.path, in its directory,
    with its environment."""
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "ipytasks_probe_mod.py").write_text("VALUE = 'from the kernel path'\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IPYTASKS_PROBE", "set in the kernel")
    (tmp_path / "data.txt").write_text("relative file")
    await worker.run(
        "import os, ipytasks_probe_mod\nv = ipytasks_probe_mod.VALUE\n"
        "text = open('data.txt').read()\nenv = os.environ['IPYTASKS_PROBE']",
        "environment",
    )
    ns = ip.user_ns
    assert (ns["v"], ns["text"], ns["env"]) == (
        "from the kernel path", "relative file", "set in the kernel"
    )


# -- refused at submission ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("%time x = 1", "%time cannot run in a worker process"),
        ("!echo hi", "shell commands (!cmd) cannot run in a worker process"),
        ("get_ipython().user_ns", "cannot run in a worker process"),
        ("exec('a = 1')", "exec() can read and bind any name"),
        ("from os.path import *", "cannot run in a worker process"),
    ],
)
async def test_cells_a_worker_cannot_run_are_refused(
    worker: Worker, source: str, message: str
) -> None:
    """Magics, shell commands, get_ipython() and unknowable names are refused at submission."""
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        worker.submit(source, "refused")
    assert "--thread" in str(info.value)
    assert "refused" not in worker.sched.tasks


# -- output ---------------------------------------------------------------------------------


async def test_prints_show_while_the_task_runs(worker: Worker, tmp_path: Path) -> None:
    """Worker output (print, stderr, warnings, C-level writes) reaches the task while it runs,
    each stream in its order."""
    with gate(tmp_path) as (path, release):
        record = worker.submit(
            "import os, sys, warnings\n"
            "print('hello from the worker', flush=True)\n"
            "print('to stderr', file=sys.stderr)\n"
            "warnings.warn('careful')\n"
            "os.write(1, b'written at fd level\\n')\n"
            f"open({path!r}).read()\n"
            "print('after the gate')",
            "live",
        )
        # Each stream keeps its order; the two are read apart, so wait for both.
        await output_shows(record, "written at fd level")
        await output_shows(record, "UserWarning: careful")
        assert record.state == "running"
        texts = stream_texts(record)
        assert texts["stdout"] == "hello from the worker\nwritten at fd level\n"
        assert texts["stderr"].startswith("to stderr\n")
        release()
        await worker.end_of(record)
    assert record.state == "done"
    assert stream_texts(record)["stdout"].endswith("written at fd level\nafter the gate\n")


async def test_all_output_is_in_when_the_task_ends(worker: Worker) -> None:
    """A task ends only once all its output arrived; the next task starts clean."""
    first = await worker.run("for i in range(3000):\n    print('first', i)", "first_out")
    assert first.output.count("\n") == 3000 and first.output.endswith("first 2999\n")
    second = await worker.run("print('second')", "second_out")
    assert second.output == "second\n"


async def test_a_cell_that_redirects_its_streams_does_not_break_the_worker(
    worker: Worker,
) -> None:
    """A cell that points fd 1 elsewhere or closes fd 2: the next task's output still arrives."""
    await worker.run(
        "import os\nnull = os.open(os.devnull, os.O_WRONLY)\nos.dup2(null, 1)\nos.close(2)",
        "redirects",
    )
    after = await worker.run("import sys\nprint('out')\nprint('err', file=sys.stderr)", "after")
    assert stream_texts(after) == {"stdout": "out\n", "stderr": "err\n"}


async def test_tqdm_progress_and_costs_come_from_the_worker(worker: Worker) -> None:
    """A tqdm loop over 50 items in the worker: the task's progress moves (two values at
    least between 0 and 50, then 50/50) as the scheduler tells its followers, the bar writes
    nothing into the output, and the worker process's CPU time and peak memory come back."""
    pytest.importorskip("tqdm")
    seen: list[float] = []
    record: TaskRecord | None = None

    def wake(_idle: bool) -> None:
        for changed in feed.take():
            if changed is record and changed.progress is not None:
                seen.append(changed.progress.done)

    feed = worker.sched.subscribe(wake)
    try:
        record = worker.submit(
            "import time\nfrom tqdm.auto import tqdm\nfor i in tqdm(range(50)):\n"
            "    time.sleep(0.04)\nprint('loop over')", "bar")
        await worker.end_of(record)
    finally:
        worker.sched.unsubscribe(feed)
    assert record.state == "done", record.error_text()
    assert len({n for n in seen if 0 < n < 50}) >= 2 and seen[-1] == 50, seen
    assert record.progress is not None and record.progress.count() == "50/50"
    assert record.output == "loop over\n"
    assert record.cpu_time is not None and record.cpu_time > 0
    assert record.peak_rss is not None and record.peak_rss > 10 * 2**20


# -- errors ---------------------------------------------------------------------------------


async def test_a_failing_cell_merges_nothing_and_shows_its_own_lines(
    ip: Any, worker: Worker
) -> None:
    """A failing cell merges none of what it bound; its error is the cell's own, its traceback
    goes through the cell's lines and notebook functions, and has none of ipytasks' frames."""
    ip.run_cell(
        "def check(v):\n    if v > 1:\n        raise ValueError(f'too big: {v}')\n    return v"
    )
    ip.user_ns["a"] = "before"
    record = worker.submit("a = 1\nb = 2\nc = check(a + b)\n", "trace")
    await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, ValueError)
    assert str(record.error) == "too big: 3"
    assert ip.user_ns["a"] == "before" and "b" not in ip.user_ns
    text = record.error_text()
    assert "line 3" in text and "c = check(a + b)" in text
    assert "raise ValueError(f'too big: {v}')" in text
    assert text.rstrip().endswith("ValueError: too big: 3")
    assert "ipytasks" not in text, text  # no frame of the runtime
    shown = [o for o in record.sink.notebook_outputs() if o["output_type"] == "error"]
    assert shown and shown[0]["ename"] == "ValueError"


async def test_exception_chains_and_unrebuildable_exceptions(worker: Worker) -> None:
    """A cause survives the trip; an exception that cannot be re-created is a RemoteError,
    a TaskError with the cell's lines."""
    chained = worker.submit(
        "try:\n    {}['missing']\n"
        "except KeyError as e:\n    raise RuntimeError('lookup failed') from e",
        "chained",
    )
    odd = worker.submit(
        "class Odd(Exception):\n"
        "    def __init__(self, a, b):\n"
        "        super().__init__(f'{a}-{b}')\n"
        "x = 0\n"
        "raise Odd(1, 2)",
        "odd",
    )
    await worker.end_of(chained)
    await worker.end_of(odd)
    assert isinstance(chained.error, RuntimeError) and isinstance(chained.error.__cause__, KeyError)
    assert isinstance(odd.error, RemoteError)
    assert "Odd: 1-2" in str(odd.error)
    assert "line 5" in odd.error_text() and "raise Odd(1, 2)" in odd.error_text()


async def test_system_exit_fails_only_the_task(worker: Worker) -> None:
    """SystemExit and KeyboardInterrupt raised by a cell fail that task; the worker lives on."""
    exits = worker.submit("raise SystemExit(3)", "exits")
    interrupts = worker.submit("raise KeyboardInterrupt", "interrupts")
    await worker.end_of(exits)
    await worker.end_of(interrupts)
    assert exits.state == "failed" and isinstance(exits.error, SystemExit)
    assert interrupts.state == "failed" and isinstance(interrupts.error, KeyboardInterrupt)
    assert (await worker.run("'still here'", "after_exit")).result == "still here"


# -- stopping and dying ---------------------------------------------------------------------


async def test_cancel_stops_the_body_and_the_next_task_runs(
    ip: Any, worker: Worker, tmp_path: Path
) -> None:
    """Cancelling a running task kills its worker process, nothing is merged, and the next
    task runs in another process."""
    record = worker.submit(
        "import os\nprint('pid', os.getpid(), flush=True)\nspun = True\nwhile True:\n    pass",
        "spin",
    )
    pid = int((await output_shows(record, r"pid (\d+)")).group(1))
    worker.sched.cancel([record])
    await worker.end_of(record)
    assert record.state == "cancelled" and "spun" not in ip.user_ns
    await exited(pid)  # SIGKILL was sent; the OS ends it when it next schedules it
    assert (await worker.run("import os\nos.getpid()", "after_cancel")).result != pid


async def test_timeout_stops_a_body_blocked_in_c(ip: Any, worker: Worker) -> None:
    """--timeout stops a body even inside a blocking C call: timed_out, nothing merged."""
    record = worker.submit(
        "import os, time\nprint('pid', os.getpid(), flush=True)\nlate = 1\ntime.sleep(600)",
        "slow",
        timeout=1.0,
    )
    pid = int((await output_shows(record, r"pid (\d+)")).group(1))
    await worker.end_of(record)
    assert record.state == "timed_out" and "late" not in ip.user_ns
    await exited(pid)
    assert (await worker.run("2 * 21", "after_timeout")).result == 42


async def test_a_body_that_exits_fails_its_task_only(ip: Any, worker: Worker) -> None:
    """os._exit(3) in the body fails the task naming the exit code; nothing is merged; what
    hosts the worker process lives on, and the next task runs."""
    parents = await worker.parents()
    record = worker.submit("import os\nbefore = 1\nos._exit(3)", "exits_hard")
    await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    assert re.fullmatch(worker.died("exit code 3"), str(record.error)), str(record.error)
    assert "before" not in ip.user_ns
    assert (await worker.run("'fine'", "after_exit")).result == "fine"
    assert await worker.parents() == parents


async def test_segfault_names_the_signal_and_shows_the_python_traceback(worker: Worker) -> None:
    """A crashing worker fails its task with SIGSEGV; its faulthandler dump is in the output."""
    record = worker.submit("import ctypes\nctypes.string_at(0)", "segfault")
    await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    assert re.fullmatch(worker.died("killed by signal SIGSEGV"), str(record.error))
    assert "Fatal Python error: Segmentation fault" in record.output
    assert (await worker.run("'next'", "after_segfault")).result == "next"


async def test_a_worker_killed_from_outside_fails_its_task_naming_the_signal(
    worker: Worker, tmp_path: Path
) -> None:
    """A worker process killed from outside (SIGKILL, as the OOM killer does) fails its task
    naming the signal and what it may mean."""
    with gate(tmp_path) as (path, _release):
        record = worker.submit(
            f"import os\nprint('pid', os.getpid(), flush=True)\nopen({path!r}).read()", "killed"
        )
        pid = int((await output_shows(record, r"pid (\d+)")).group(1))
        os.kill(pid, signal.SIGKILL)
        await worker.end_of(record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    message = str(record.error)
    assert message.startswith("worker process died (killed by signal SIGKILL; the system may "
                              "have run out of memory"), message
    assert (await worker.run("'next'", "after_kill")).result == "next"


async def test_sigint_to_a_worker_is_ignored(ip: Any, worker: Worker, tmp_path: Path) -> None:
    """SIGINT to a worker process (or its process group, as a kernel interrupt) does not fail
    its task: it runs in a process group of its own and ignores it."""
    with gate(tmp_path) as (path, release):
        record = worker.submit(
            f"import os\nprint('pid', os.getpid(), flush=True)\n"
            f"open({path!r}).read()\nsurvived = True",
            "interrupted",
        )
        pid = int((await output_shows(record, r"pid (\d+)")).group(1))
        assert os.getpgid(pid) == pid != os.getpgid(0)
        os.kill(pid, signal.SIGINT)
        os.killpg(pid, signal.SIGINT)
        # An ignored signal is discarded when sent: nothing is pending by now.
        release()
        await worker.end_of(record)
    assert record.state == "done" and ip.user_ns["survived"] is True
    assert process_exists(pid)  # kept warm for the next task

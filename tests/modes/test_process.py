"""Process mode (DESIGN §5.3) with real worker processes, through the real scheduler.

No mocks: every test starts worker processes. Progress is synchronised on what
the worker prints (a view attached to the task's output) and on FIFOs the test
holds open: a cell blocks reading one until the test closes its end. After each
test the scheduler is closed and no worker process may be left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ipytasks.modes._process import BrokenWorker, ProcessMode
from ipytasks.namespace.shipping import RemoteError, ShippingError
from ipytasks.records import TaskFailed, TaskOptions, TaskRecord, TaskRegistry, TaskState
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio

WAIT = 60  # seconds: only to fail a hung test, never to make one pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def worker_children() -> list[int]:
    """Live (or unreaped) ipytasks worker processes whose parent is this process."""
    found = []
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"_worker.py" in cmdline:
            found.append(int(entry))
    return found


def process_exists(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (zombies count as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


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
        assert worker_children() == []
        assert worker_threads() == []


def worker_threads() -> list[str]:
    """Threads of process mode still running in this process."""
    return [
        t.name
        for t in threading.enumerate()
        if re.fullmatch(r"ipytasks-\d+-\w+|ipytasks-worker-\d+", t.name)
    ]


def process(**kwargs: Any) -> TaskOptions:
    return TaskOptions(mode="process", **kwargs)


async def run(sched: Scheduler, source: str, name: str, **kwargs: Any) -> TaskRecord:
    """Submit a process task and wait until it ends (raising TaskFailed if it failed)."""
    record = sched.submit(source, name, process(**kwargs))
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


def worker_pid(match: re.Match[str]) -> int:
    return int(match.group(1))


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


# -- inputs and outputs -----------------------------------------------------------------


async def test_inputs_include_notebook_functions_classes_and_lambdas(
    ip: Any, sched: Scheduler
) -> None:
    """Names the cell reads are shipped, functions, classes and lambdas of the notebook included."""
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
            unrelated = object()
            """
        )
    )
    record = await run(
        sched,
        "import os\ny = add_offset(x)\np = Point(-4)\nz = triple(p.norm())\npid = os.getpid()\ny",
        "inputs",
    )
    ns = ip.user_ns
    assert record.state == "done" and record.mode == "process"
    assert record.result == 31 and ns["y"] == 31 and ns["z"] == 12
    assert ns["pid"] != os.getpid()
    # An instance of a notebook class comes back as an instance of that same class.
    assert type(ns["p"]) is ns["Point"] and ns["p"].x == -4
    assert ns["os"] is os


async def test_outputs_merged_deleted_and_functions_rebound(ip: Any, sched: Scheduler) -> None:
    """Bound names are merged, `del`eted names removed, and cell functions see the notebook."""
    ip.user_ns.update(gone=123, keep=1)
    await run(
        sched,
        "a = 1\nb, c = 2, 3\ndel gone\nfactor = 5\n"
        "def scale(v):\n    return v * factor\nimport json",
        "outputs",
    )
    ns = ip.user_ns
    assert (ns["a"], ns["b"], ns["c"], ns["keep"]) == (1, 2, 3, 1)
    assert "gone" not in ns
    assert ns["json"] is sys.modules["json"]
    assert ns["scale"](2) == 10
    ns["factor"] = 7  # a function defined in the process cell reads the notebook's names
    assert ns["scale"](2) == 14
    assert ns["scale"].__globals__ is ns


async def test_nothing_is_merged_on_failure(ip: Any, sched: Scheduler) -> None:
    """A cell that fails after binding names merges none of them."""
    ip.user_ns["a"] = "before"
    record = sched.submit("a = 1\nb = 2\nraise ValueError('boom')", "fails", process())
    await end_of(sched, record)
    assert record.state == "failed"
    assert isinstance(record.error, ValueError) and str(record.error) == "boom"
    assert ip.user_ns["a"] == "before" and "b" not in ip.user_ns


async def test_sequential_cell_reads_what_the_previous_task_bound(
    ip: Any, sched: Scheduler
) -> None:
    """Inputs are taken when a task starts: a chained cell reads its predecessor's output."""
    first = sched.submit("base = 40", "first", process(chain="main"))
    second = sched.submit("total = base + 2", "second", process(chain="main"))
    with anyio.fail_after(WAIT):
        await sched.wait([first, second])
    assert ip.user_ns["total"] == 42


async def test_unpicklable_input_names_the_variable(ip: Any, sched: Scheduler) -> None:
    """An input that cannot be pickled fails the task, naming the variable and its type."""
    ip.run_cell("import threading\nmy_lock = threading.Lock()")
    record = sched.submit("with my_lock:\n    done = True", "lock", process())
    await end_of(sched, record)
    assert record.state == "failed"
    assert isinstance(record.error, ShippingError)
    assert "cannot send 'my_lock' (_thread.lock) to a worker process" in str(record.error)
    assert "done" not in ip.user_ns
    # The worker was not touched: the next task runs on the same pool.
    assert (await run(sched, "1 + 1", "after_lock")).result == 2


async def test_unpicklable_output_names_the_variable(ip: Any, sched: Scheduler) -> None:
    """An output that cannot be pickled fails the task, naming it; nothing is merged."""
    record = sched.submit("ok = 1\ngen = (i for i in range(3))", "gen", process())
    await end_of(sched, record)
    assert record.state == "failed"
    assert isinstance(record.error, ShippingError)
    assert "cannot send 'gen' (generator) back from the worker process" in str(record.error)
    assert "ok" not in ip.user_ns and "gen" not in ip.user_ns


async def test_closed_file_is_left_in_the_worker(ip: Any, sched: Scheduler, tmp_path: Path) -> None:
    """A name holding a closed file (`with open() as f`) is not brought back, and that is said."""
    (tmp_path / "in.txt").write_text("content")
    record = await run(
        sched, f"with open({str(tmp_path / 'in.txt')!r}) as f:\n    text = f.read()", "files"
    )
    assert ip.user_ns["text"] == "content" and "f" not in ip.user_ns
    assert "'f' (a closed file) stays in the worker process" in record.output


async def test_changed_in_place_is_reported_and_not_merged(ip: Any, sched: Scheduler) -> None:
    """A change in place happens to the worker's copy only, and the task's output says so."""
    ip.user_ns["results"] = {}
    record = await run(sched, "results['a'] = 1\nn = len(results)", "inplace")
    assert ip.user_ns["results"] == {} and ip.user_ns["n"] == 1
    assert "'results' is changed in place in the worker process" in record.output


async def test_kernel_path_directory_and_environment_are_shipped(
    ip: Any, sched: Scheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker imports from the kernel's sys.path, in its directory, with its environment."""
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "ipytasks_probe_mod.py").write_text("VALUE = 'from the kernel path'\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IPYTASKS_PROBE", "set in the kernel")
    (tmp_path / "data.txt").write_text("relative file")
    await run(
        sched,
        "import os, ipytasks_probe_mod\n"
        "v = ipytasks_probe_mod.VALUE\n"
        "text = open('data.txt').read()\n"
        "env = os.environ['IPYTASKS_PROBE']",
        "environment",
    )
    ns = ip.user_ns
    assert (ns["v"], ns["text"], ns["env"]) == (
        "from the kernel path",
        "relative file",
        "set in the kernel",
    )


async def test_top_level_await_runs_in_the_worker(ip: Any, sched: Scheduler) -> None:
    """A cell with top-level await runs in the worker under asyncio.run."""
    record = await run(
        sched, "import asyncio\nawait asyncio.sleep(0)\nawaited = 'yes'\nawaited", "awaits"
    )
    assert record.result == "yes" and ip.user_ns["awaited"] == "yes"


async def test_numpy_arrays_round_trip(ip: Any, sched: Scheduler) -> None:
    """NumPy arrays (contiguous, strided, Fortran, read-only) go in and come back intact."""
    np = pytest.importorskip("numpy")
    arr = np.arange(2_000_000, dtype=np.float64)
    frozen = np.arange(100_000, dtype=np.int32)
    frozen.flags.writeable = False
    ip.user_ns.update(
        arr=arr,
        strided=arr[::3],
        fortran=np.asfortranarray(arr[:90_000].reshape(300, 300)),
        frozen=frozen,
    )
    await run(
        sched,
        "doubled = arr * 2\n"
        "s = strided.copy()\n"
        "f_sum = float(fortran.sum())\n"
        "f_order = fortran.flags.f_contiguous\n"
        "frozen_writeable = frozen.flags.writeable\n"
        "same_frozen = frozen",
        "numpy",
    )
    ns = ip.user_ns
    assert ns["doubled"].dtype == np.float64 and np.array_equal(ns["doubled"], arr * 2)
    assert ns["doubled"].flags.writeable
    assert np.array_equal(ns["s"], arr[::3])
    assert ns["f_sum"] == float(arr[:90_000].sum()) and ns["f_order"]
    assert ns["frozen_writeable"] is False and np.array_equal(ns["same_frozen"], frozen)


async def test_large_bytes_round_trip(ip: Any, sched: Scheduler) -> None:
    """Large bytes and bytearray travel out of band and keep their types and contents."""
    blob = os.urandom(3 << 20)
    ip.user_ns.update(blob=blob, mutable=bytearray(blob[: 1 << 20]))
    await run(sched, "back = blob[::-1]\nmutable[0:3] = b'abc'\nmutable2 = mutable", "bytes")
    ns = ip.user_ns
    assert type(ns["back"]) is bytes and ns["back"] == blob[::-1]
    assert type(ns["mutable2"]) is bytearray and ns["mutable2"][:3] == b"abc"
    assert ns["mutable2"][3:] == blob[3 : 1 << 20]


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
    assert worker_children() == []


# -- output and errors ------------------------------------------------------------------


async def test_prints_show_while_the_task_runs(sched: Scheduler, tmp_path: Path) -> None:
    """Worker output (print, stderr, warnings, C-level writes) reaches the task while it runs."""
    with gate(tmp_path) as (path, release):
        record = sched.submit(
            "import os, sys, warnings\n"
            "print('hello from the worker', flush=True)\n"
            "print('to stderr', file=sys.stderr)\n"
            "warnings.warn('careful')\n"
            "os.write(1, b'written at fd level\\n')\n"
            f"open({path!r}).read()\n"
            "print('after the gate')",
            "live",
            process(),
        )
        # Each stream keeps its order; the two are read apart, so wait for both.
        await output_shows(record, "written at fd level")
        await output_shows(record, "UserWarning: careful")
        assert record.state == "running"
        texts = stream_texts(record)
        assert texts["stdout"] == "hello from the worker\nwritten at fd level\n"
        assert texts["stderr"].startswith("to stderr\n")
        release()
        await end_of(sched, record)
    assert record.state == "done"
    assert stream_texts(record)["stdout"].endswith("written at fd level\nafter the gate\n")
    streams = {o["name"] for o in record.sink.notebook_outputs() if o["output_type"] == "stream"}
    assert streams == {"stdout", "stderr"}


async def test_output_is_never_given_to_the_next_task(sched: Scheduler) -> None:
    """All of a task's output is in when it ends, and the next task on the worker starts clean."""
    first = await run(sched, "for i in range(2000):\n    print('first', i)", "first_out")
    assert first.output.count("\n") == 2000 and first.output.endswith("first 1999\n")
    second = await run(sched, "print('second')", "second_out")
    assert second.output == "second\n"


async def test_a_cell_that_redirects_its_streams_does_not_break_the_worker(
    sched: Scheduler,
) -> None:
    """A cell that points fd 1 elsewhere or closes fd 2: the next task's output still arrives."""
    await run(
        sched,
        "import os\nnull = os.open(os.devnull, os.O_WRONLY)\nos.dup2(null, 1)\nos.close(2)",
        "redirects",
    )
    after = await run(sched, "import sys\nprint('out')\nprint('err', file=sys.stderr)", "after")
    assert stream_texts(after) == {"stdout": "out\n", "stderr": "err\n"}


async def test_traceback_shows_the_cells_lines(ip: Any, sched: Scheduler) -> None:
    """The re-created exception's traceback names the cell's lines, through notebook functions."""
    ip.run_cell(
        "def check(v):\n    if v > 1:\n        raise ValueError(f'too big: {v}')\n    return v"
    )
    record = sched.submit("a = 1\nb = 2\nc = check(a + b)\n", "trace", process())
    await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, ValueError)
    text = record.error_text()
    assert "line 3" in text and "c = check(a + b)" in text
    assert "raise ValueError(f'too big: {v}')" in text
    assert text.rstrip().endswith("ValueError: too big: 3")
    assert "_worker.py" not in text and "_process.py" not in text


async def test_exception_chains_and_unrebuildable_exceptions(sched: Scheduler) -> None:
    """A cause survives the trip; an exception that cannot be re-created is a RemoteError."""
    chained = sched.submit(
        "try:\n    {}['missing']\n"
        "except KeyError as e:\n    raise RuntimeError('lookup failed') from e",
        "chained",
        process(),
    )
    odd = sched.submit(
        "class Odd(Exception):\n"
        "    def __init__(self, a, b):\n"
        "        super().__init__(f'{a}-{b}')\n"
        "x = 0\n"
        "raise Odd(1, 2)",
        "odd",
        process(),
    )
    await end_of(sched, chained)
    await end_of(sched, odd)
    assert isinstance(chained.error, RuntimeError) and isinstance(chained.error.__cause__, KeyError)
    assert isinstance(odd.error, RemoteError)
    assert "Odd: 1-2" in str(odd.error)
    assert "line 5" in odd.error_text() and "raise Odd(1, 2)" in odd.error_text()


async def test_system_exit_fails_only_the_task(sched: Scheduler) -> None:
    """SystemExit and KeyboardInterrupt raised by a cell fail that task; the worker lives on."""
    exits = sched.submit("raise SystemExit(3)", "exits", process())
    interrupts = sched.submit("raise KeyboardInterrupt", "interrupts", process())
    await end_of(sched, exits)
    await end_of(sched, interrupts)
    assert exits.state == "failed" and isinstance(exits.error, SystemExit)
    assert interrupts.state == "failed" and isinstance(interrupts.error, KeyboardInterrupt)
    assert (await run(sched, "'still here'", "after_exit")).result == "still here"


# -- refused at submission ----------------------------------------------------------------


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
    sched: Scheduler, source: str, message: str
) -> None:
    """Magics, shell commands, get_ipython() and unknowable names are refused at submission."""
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        sched.submit(source, "refused", process())
    assert "--thread" in str(info.value)
    assert "refused" not in sched.tasks


# -- stopping and dying -------------------------------------------------------------------


async def test_cancel_kills_the_worker_and_the_pool_goes_on(ip: Any, sched: Scheduler) -> None:
    """Cancelling a running process task kills its worker at once; the next task runs."""
    record = sched.submit(
        "import os\nprint('pid', os.getpid(), flush=True)\nspun = True\nwhile True:\n    pass",
        "spin",
        process(),
    )
    pid = worker_pid(await output_shows(record, r"pid (\d+)"))
    sched.cancel([record])
    await end_of(sched, record)
    assert record.state == "cancelled" and "spun" not in ip.user_ns
    await exited(pid)  # SIGKILL was sent; the OS ends it when it next schedules it
    assert (await run(sched, "import os\nos.getpid()", "after_cancel")).result != pid


async def test_timeout_kills_the_worker(ip: Any, sched: Scheduler) -> None:
    """--timeout stops a process body: state timed_out, nothing merged, the worker gone."""
    record = sched.submit(
        "import os\nprint('pid', os.getpid(), flush=True)\nlate = 1\nwhile True:\n    pass",
        "slow",
        process(timeout=0.5),
    )
    pid = worker_pid(await output_shows(record, r"pid (\d+)"))
    await end_of(sched, record)
    assert record.state == "timed_out" and "late" not in ip.user_ns
    await exited(pid)
    assert (await run(sched, "2 * 21", "after_timeout")).result == 42


async def test_worker_exit_fails_the_task_with_its_exit_code(ip: Any, sched: Scheduler) -> None:
    """A worker that exits (os._exit(3)) fails its task naming the exit code; the next one runs."""
    record = sched.submit("import os\nbefore = 1\nos._exit(3)", "exits_hard", process())
    await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    assert "worker process died (exit code 3)" in str(record.error)
    assert "before" not in ip.user_ns
    assert (await run(sched, "'fine'", "after_exit_code")).result == "fine"


async def test_killed_worker_fails_the_task_naming_the_signal(
    sched: Scheduler, tmp_path: Path
) -> None:
    """A worker killed from outside (SIGKILL, as the OOM killer does) fails its task naming it."""
    with gate(tmp_path) as (path, _release):
        record = sched.submit(
            f"import os\nprint('pid', os.getpid(), flush=True)\nopen({path!r}).read()",
            "killed",
            process(),
        )
        pid = worker_pid(await output_shows(record, r"pid (\d+)"))
        os.kill(pid, signal.SIGKILL)
        await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    assert "worker process died (killed by signal SIGKILL" in str(record.error)
    assert (await run(sched, "'next'", "after_kill")).result == "next"


async def test_segfault_names_the_signal_and_shows_the_python_traceback(sched: Scheduler) -> None:
    """A crashing worker fails its task with SIGSEGV; its faulthandler dump is in the output."""
    record = sched.submit("import ctypes\nctypes.string_at(0)", "segfault", process())
    await end_of(sched, record)
    assert record.state == "failed"
    assert "worker process died (killed by signal SIGSEGV)" in str(record.error)
    assert "Fatal Python error: Segmentation fault" in record.output
    assert (await run(sched, "'next'", "after_segfault")).result == "next"


async def test_sigint_to_a_worker_is_ignored(ip: Any, sched: Scheduler, tmp_path: Path) -> None:
    """SIGINT to a worker (or its process group, as a kernel interrupt) does not fail the task."""
    with gate(tmp_path) as (path, release):
        record = sched.submit(
            f"import os\nprint('pid', os.getpid(), flush=True)\n"
            f"open({path!r}).read()\nsurvived = True",
            "interrupted",
            process(),
        )
        pid = worker_pid(await output_shows(record, r"pid (\d+)"))
        os.kill(pid, signal.SIGINT)
        os.killpg(os.getpgid(pid), signal.SIGINT)
        # An ignored signal is discarded when sent: nothing is pending by now.
        assert os.getpgid(pid) != os.getpgid(0)
        release()
        await end_of(sched, record)
    assert record.state == "done" and ip.user_ns["survived"] is True


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
    await run(sched, "0", "warm")  # start the pool: measure the overlap, not the start
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
        pid = worker_pid(await output_shows(busy, r"pid (\d+)"))
        mode = scheduler._modes["process"]
        assert isinstance(mode, ProcessMode)
        pids = set(mode.worker_pids)
        assert pid in pids
    finally:
        scheduler.close()
    assert worker_children() == [] and worker_threads() == []
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

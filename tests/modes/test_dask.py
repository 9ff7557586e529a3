"""dask mode (DESIGN §5.4): process-mode cells on a real Dask cluster, through the scheduler.

No mocks of Dask: a ``LocalCluster`` on loopback (worker processes, two workers of one
thread) is shared by the tests of this module, one test connects by address to a
scheduler and a worker started as separate processes (as a user with a real cluster
would), and one drives a real kernel. Progress is synchronised on what the body
prints and on FIFOs the test holds open. After each test the scheduler is closed and
no ``_worker.py`` process may be left next to the Dask workers; after the module, no
Dask process may be left at all.

The tests of the usage errors (no ``distributed``) need no cluster and run even
without the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from IPython.core.error import UsageError

from ipytasks.namespace.shipping import ShippingError
from ipytasks.options import checked
from ipytasks.records import BrokenWorker, TaskFailed, TaskOptions, TaskRecord, TaskRegistry
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio

WAIT = 60  # seconds: only to fail a hung test, never to make one pass
NEEDS_DASK = "--on dask needs distributed: pip install 'ipytasks[dask]'"
#: What the runtime's worker processes have on their command line (their bootstrap).
RUNTIME_CHILD = b"ipytasks/_worker.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def runtime_children(worker_pids: set[int]) -> set[int]:
    """The runtime's ``_worker.py`` processes living next to these Dask workers."""
    return {p for p in children_of(worker_pids) if RUNTIME_CHILD in cmdline(p)}


def wait_gone(pids: set[int], timeout: float = WAIT) -> set[int]:
    """Wait (bounded) until none of ``pids`` lives; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if process_exists(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


# -- the cluster and the scheduler --------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A LocalCluster on loopback (processes, two workers of one thread) and its client."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from ipytasks.modes._dask import IGNORE_SIGINT, give_main_a_spec

    give_main_a_spec()  # an earlier module's ip fixture may have reset the namespace
    before = descendants(os.getpid())
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
        scheduler_kwargs={"allowed_failures": 0},
        preload=[IGNORE_SIGINT],
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        left = wait_gone(descendants(os.getpid()) - before, timeout=10)
        assert not {p for p in left if b"resource_tracker" not in cmdline(p)}, left


def worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


@pytest.fixture
async def sched(ip: Any, dask_client: Any) -> AsyncIterator[Scheduler]:
    """A scheduler on the test's loop whose dask mode uses the module's cluster."""
    from ipytasks.modes._dask import DaskMode

    scheduler = Scheduler(ip, TaskRegistry(), loop=asyncio.get_running_loop())
    scheduler.install_mode(DaskMode(ip, dask_client))
    try:
        yield scheduler
    finally:
        scheduler.close()
        # The plugin's teardown ended this kernel's worker processes on every Dask worker.
        pids = await asyncio.to_thread(worker_pids, dask_client)
        assert runtime_children(pids) == set()


def dask(**kwargs: Any) -> TaskOptions:
    return TaskOptions(on="dask", **kwargs)


async def run(sched: Scheduler, source: str, name: str, **kwargs: Any) -> TaskRecord:
    """Submit a dask task and wait until it ends (raising TaskFailed if it failed)."""
    record = sched.submit(source, name, dask(**kwargs))
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
    """Wait until the task's output matches ``pattern``."""
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
    fd = os.open(path, os.O_RDWR)
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
    texts: dict[str, str] = {}
    assert record.sink is not None
    for output in record.sink.notebook_outputs():
        if output["output_type"] == "stream":
            texts[output["name"]] = texts.get(output["name"], "") + output["text"]
    return texts


# -- inputs, outputs, result ----------------------------------------------------------------


async def test_inputs_outputs_and_result(ip: Any, sched: Scheduler) -> None:
    """Inputs (notebook functions, classes, lambdas) are shipped; bound names merge; result."""
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
    record = await run(
        sched,
        "import os, json\ny = add_offset(x)\np = Point(-4)\nz = triple(p.norm())\n"
        "pid = os.getpid()\nparent = os.getppid()\ndel gone\n"
        "def scale(v):\n    return v * OFFSET\ny",
        "inputs",
    )
    ns = ip.user_ns
    assert record.state == "done" and record.mode == "dask" and record.attempts == 1
    assert record.result == 31 and ns["y"] == 31 and ns["z"] == 12
    assert type(ns["p"]) is ns["Point"] and ns["p"].x == -4
    assert "gone" not in ns and ns["json"] is sys.modules["json"]
    assert ns["scale"](2) == 20 and ns["scale"].__globals__ is ns
    # The body ran in a worker process next to a Dask worker, neither here nor in the Dask worker.
    workers = await asyncio.to_thread(worker_pids, sched.installed_mode("dask").client)
    assert ns["parent"] in workers and ns["pid"] not in workers | {os.getpid()}


async def test_figures_come_back_rendered(ip: Any, sched: Scheduler) -> None:
    """A dask body's figures come back rendered (PNG, as the inline backend's defaults make
    them) with no plt.show() or backend call needed: one shown midway by plt.show(), one left
    open, and a Figure as the last expression, shown as the result; nothing warns."""
    pytest.importorskip("matplotlib")
    record = await run(
        sched,
        "import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()\n"
        "plt.plot([1, 0])\nfig = plt.figure()\nfig.add_subplot().plot([0, 2])\nfig",
        "dask_plots",
    )
    images = [o for o in record.sink.notebook_outputs() if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the shown one, the one left open, then the result
    assert record._result_display is not None and images[-1]["data"] == record._result_display[0]
    assert type(record.result).__name__ == "Figure" and type(ip.user_ns["fig"]).__name__ == "Figure"
    assert record.output == ""  # no "non-interactive backend" warning, no error


async def test_nothing_is_merged_on_failure_and_the_traceback_shows_the_cell(
    ip: Any, sched: Scheduler
) -> None:
    """A failing cell merges nothing; its error is the cell's own, with the cell's lines."""
    ip.run_cell(
        "def check(v):\n    if v > 1:\n        raise ValueError(f'too big: {v}')\n    return v"
    )
    ip.user_ns["a"] = "before"
    record = sched.submit("a = 1\nb = 2\nc = check(a + b)\n", "trace", dask())
    await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, ValueError)
    assert str(record.error) == "too big: 3"
    assert ip.user_ns["a"] == "before" and "b" not in ip.user_ns
    text = record.error_text()
    assert "line 3" in text and "c = check(a + b)" in text
    assert "raise ValueError(f'too big: {v}')" in text
    shown = [o for o in record.sink.notebook_outputs() if o["output_type"] == "error"]
    assert shown and shown[0]["ename"] == "ValueError"


async def test_unpicklable_input_names_the_variable(ip: Any, sched: Scheduler) -> None:
    """An input that cannot be pickled fails the task, naming the variable and its type."""
    ip.run_cell("import threading\nmy_lock = threading.Lock()")
    record = sched.submit("with my_lock:\n    done = True", "lock", dask())
    await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, ShippingError)
    assert "cannot send 'my_lock' (_thread.lock) to a worker process" in str(record.error)
    assert (await run(sched, "1 + 1", "after_lock")).result == 2


async def test_large_inputs_round_trip(ip: Any, sched: Scheduler) -> None:
    """Inputs above the scatter threshold go to the cluster first and come back intact."""
    blob = os.urandom(3 << 20)
    ip.user_ns.update(blob=blob)
    await run(sched, "back = blob[::-1]\nsize = len(blob)", "large")
    assert ip.user_ns["size"] == len(blob) and ip.user_ns["back"] == blob[::-1]
    np = pytest.importorskip("numpy")
    ip.user_ns["arr"] = np.arange(500_000, dtype=np.float64)
    await run(sched, "doubled = arr * 2", "array")
    assert np.array_equal(ip.user_ns["doubled"], ip.user_ns["arr"] * 2)


async def test_kernel_path_directory_and_environment_are_shipped(
    ip: Any, sched: Scheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers on this machine import from the kernel's sys.path, in its directory, with its env."""
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "ipytasks_dask_probe.py").write_text("VALUE = 'from the kernel path'\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IPYTASKS_PROBE", "set in the kernel")
    (tmp_path / "data.txt").write_text("relative file")
    await run(
        sched,
        "import os, ipytasks_dask_probe\nv = ipytasks_dask_probe.VALUE\n"
        "text = open('data.txt').read()\nenv = os.environ['IPYTASKS_PROBE']",
        "environment",
    )
    ns = ip.user_ns
    assert (ns["v"], ns["text"], ns["env"]) == (
        "from the kernel path", "relative file", "set in the kernel"
    )


# -- order, retries, fan-out -----------------------------------------------------------------


async def test_chains_retries_and_map(ip: Any, sched: Scheduler, tmp_path: Path) -> None:
    """A chained cell reads its predecessor's output; --retries runs a new attempt; --map
    fans out."""
    first = sched.submit("base = 40", "first", dask(chain="main"))
    second = sched.submit("total = base + 2", "second", dask(chain="main"))
    with anyio.fail_after(WAIT):
        await sched.wait([first, second])
    assert ip.user_ns["total"] == 42 and second.waits_for == ("first",)

    counter = tmp_path / "attempts"
    flaky = await run(
        sched,
        f"from pathlib import Path\np = Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\n"
        "if n == 0:\n    raise RuntimeError('first attempt fails')\n'second worked'",
        "flaky",
        retries=1,
        retry_delay=0.0,
    )
    assert flaky.state == "done" and flaky.attempts == 2 and flaky.result == "second worked"
    assert isinstance(flaky.failures[0], RuntimeError)

    squares = await run(sched, "n * n", "squares", map=("n", "[1, 2, 3]"))
    assert squares.result == [1, 4, 9]
    assert {c.mode for c in squares.children} == {"dask"}


# -- output ----------------------------------------------------------------------------------


async def test_prints_show_while_the_task_runs(sched: Scheduler, tmp_path: Path) -> None:
    """Worker output (print, stderr, C-level writes) reaches the task's output while it runs."""
    with gate(tmp_path) as (path, release):
        record = sched.submit(
            "import os, sys\n"
            "print('hello from the worker', flush=True)\n"
            "print('to stderr', file=sys.stderr)\n"
            "os.write(1, b'written at fd level\\n')\n"
            f"open({path!r}).read()\n"
            "print('after the gate')",
            "live",
            dask(),
        )
        await output_shows(record, "written at fd level")
        await output_shows(record, "to stderr")
        assert record.state == "running"
        release()
        await end_of(sched, record)
    assert record.state == "done"
    assert stream_texts(record) == {
        "stdout": "hello from the worker\nwritten at fd level\nafter the gate\n",
        "stderr": "to stderr\n",
    }


async def test_all_output_is_in_when_the_task_ends(sched: Scheduler) -> None:
    """A task ends only once all its output arrived; the next task starts clean."""
    first = await run(sched, "for i in range(3000):\n    print('first', i)", "first_out")
    assert first.output.count("\n") == 3000 and first.output.endswith("first 2999\n")
    second = await run(sched, "print('second')", "second_out")
    assert second.output == "second\n"


async def test_tqdm_progress_and_costs_come_from_the_dask_worker(sched: Scheduler) -> None:
    """A tqdm loop over 50 items on a Dask worker: the task's progress moves (two values at
    least between 0 and 50, then 50/50) as the scheduler tells its followers, the bar writes
    nothing into the output, and the worker process's CPU time and peak memory come back."""
    pytest.importorskip("tqdm")
    seen: list[float] = []
    record: TaskRecord | None = None

    def wake(_idle: bool) -> None:
        for changed in feed.take():
            if changed is record and changed.progress is not None:
                seen.append(changed.progress.done)

    feed = sched.subscribe(wake)
    try:
        record = sched.submit(
            "import time\nfrom tqdm.auto import tqdm\nfor i in tqdm(range(50)):\n"
            "    time.sleep(0.04)\nprint('loop over')", "dask_bar", dask())
        await end_of(sched, record)
    finally:
        sched.unsubscribe(feed)
    assert record.state == "done", record.error_text()
    assert len({n for n in seen if 0 < n < 50}) >= 2 and seen[-1] == 50, seen
    assert record.progress is not None and record.progress.count() == "50/50"
    assert record.output == "loop over\n"
    assert record.cpu_time is not None and record.cpu_time > 0
    assert record.peak_rss is not None and record.peak_rss > 10 * 2**20


# -- stopping and dying ----------------------------------------------------------------------


async def test_cancel_stops_the_body_and_the_next_task_runs(
    ip: Any, sched: Scheduler, tmp_path: Path
) -> None:
    """Cancel stops a running body: its process is gone when the task ends, nothing merged."""
    beat = tmp_path / "beat"
    record = sched.submit(
        "import os, time\nprint('pid', os.getpid(), flush=True)\nspun = True\nn = 0\n"
        "while True:\n    n += 1\n"
        f"    open({str(beat)!r}, 'w').write(str(n))\n    time.sleep(0.01)",
        "spin",
        dask(),
    )
    pid = int((await output_shows(record, r"pid (\d+)")).group(1))
    sched.cancel([record])
    await end_of(sched, record)
    assert record.state == "cancelled" and "spun" not in ip.user_ns
    assert not process_exists(pid)  # stopped before the task ended, not some time later
    last = beat.read_text()
    await anyio.sleep(0.2)
    assert beat.read_text() == last
    assert (await run(sched, "import os\nos.getpid()", "after_cancel")).result != pid


async def test_timeout_stops_a_body_blocked_in_c(ip: Any, sched: Scheduler) -> None:
    """--timeout stops a body even inside a blocking C call: timed_out, nothing merged."""
    record = sched.submit(
        "import os, time\nprint('pid', os.getpid(), flush=True)\nlate = 1\ntime.sleep(600)",
        "slow",
        dask(timeout=1.0),
    )
    pid = int((await output_shows(record, r"pid (\d+)")).group(1))
    await end_of(sched, record)
    assert record.state == "timed_out" and "late" not in ip.user_ns
    assert not process_exists(pid)
    assert (await run(sched, "2 * 21", "after_timeout")).result == 42


async def test_a_body_that_exits_fails_its_task_only(ip: Any, sched: Scheduler) -> None:
    """os._exit(3) in the body fails the task with the exit code; the Dask worker lives on."""
    client = sched.installed_mode("dask").client
    workers = await asyncio.to_thread(worker_pids, client)
    record = sched.submit("import os\nbefore = 1\nos._exit(3)", "exits_hard", dask())
    await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    assert re.fullmatch(
        r"worker process died \(exit code 3\) on Dask worker tcp://127\.0\.0\.1:\d+",
        str(record.error),
    )
    assert "before" not in ip.user_ns
    assert (await run(sched, "'fine'", "after_exit")).result == "fine"
    assert await asyncio.to_thread(worker_pids, client) == workers


async def test_a_dask_worker_that_dies_fails_its_task(
    ip: Any, sched: Scheduler, tmp_path: Path
) -> None:
    """A Dask worker killed under a task fails it at once (KilledWorker, no silent rerun)."""
    # IPython's reset (after each test) drops __spec__ from __main__, which multiprocessing
    # needs when the nanny starts the replacement worker.
    ip.user_ns.setdefault("__spec__", None)
    with gate(tmp_path) as (path, release):
        record = sched.submit(
            "import os, signal, time\nprint('pid', os.getpid(), flush=True)\n"
            f"open({path!r}).read()\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(600)",
            "kills_its_worker",
            dask(),
        )
        pid = int((await output_shows(record, r"pid (\d+)")).group(1))
        release()
        await end_of(sched, record)
    assert record.state == "failed" and isinstance(record.error, BrokenWorker)
    message = str(record.error)
    assert message.startswith("the Dask worker running it died (tcp://127.0.0.1:"), message
    assert "KilledWorker" in message and record.attempts == 1
    assert await asyncio.to_thread(wait_gone, {pid}) == set()  # it died with its parent
    assert (await run(sched, "'next'", "after_worker_death")).result == "next"


async def test_cells_a_worker_cannot_run_are_refused(sched: Scheduler) -> None:
    """As in process mode, magics and shell commands are refused at submission."""
    with pytest.raises(ValueError, match="cannot run in a worker process"):
        sched.submit("!ls", "shell_cmd", dask())
    assert "shell_cmd" not in sched.tasks


# -- the cluster ipytasks starts -------------------------------------------------------------


async def test_own_local_cluster_shows_its_dashboard_once_and_closes(ip: Any) -> None:
    """Without a client, a LocalCluster starts with the first task (saying so once, with
    Dask's dashboard when bokeh is there, with no warning when not) and closing the mode
    leaves none of its processes."""
    pytest.importorskip("distributed")
    before = descendants(os.getpid())
    scheduler = Scheduler(
        ip,
        TaskRegistry(),
        loop=asyncio.get_running_loop(),
        mode_settings={"dask": {"n_workers": 1}},
    )
    try:
        first = await run(scheduler, "import os\nos.getppid()", "own_first")
        second = await run(scheduler, "2", "own_second")
        mode = scheduler.installed_mode("dask")
        # Dask's dashboard when bokeh is installed (the [dask] extra), else none, quietly:
        # the line is news on stdout, never a warning on stderr.
        dashboard = (r"; dashboard: http://127\.0\.0\.1:\d+/status"
                     if importlib.util.find_spec("bokeh") else "")
        assert re.fullmatch(
            r"ipytasks: started a Dask LocalCluster for --on dask tasks \(1 worker, 1 thread "
            rf"each\){dashboard}\n",
            stream_texts(first).get("stdout", ""),
        ), first.output
        assert "stderr" not in stream_texts(first) and "bokeh" not in first.output
        assert "LocalCluster" not in second.output
        assert first.result in descendants(os.getpid())  # its Dask worker is ours
        assert mode.cluster is not None and mode.client.status == "running"
    finally:
        scheduler.close()
    left = await asyncio.to_thread(wait_gone, descendants(os.getpid()) - before, 10)
    assert not {p for p in left if b"resource_tracker" not in cmdline(p)}, left


def test_nothing_of_dask_is_imported_until_used() -> None:
    """Loading ipytasks and running process tasks imports no Dask; a usage error neither."""
    code = textwrap.dedent(
        """\
        import sys
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "ipytasks")
        ip.run_cell("%%parallel p --process --quiet\\n1")
        ip.run_cell("%%parallel q --on local --process --quiet\\n2")
        ip.run_line_magic("wait", "")
        import ipytasks.modes._dask
        print(sorted(m for m in ("dask", "distributed") if m in sys.modules))
        ip.run_line_magic("unload_ext", "ipytasks")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_use_a_client_of_ones_own(ip: Any, dask_client: Any) -> None:
    """ipytasks.use(client) makes --process cells run on that cluster; use('local') and
    %tasks_backend local go back; unloading leaves the client open (it is the user's)."""
    import ipytasks
    from ipytasks import api

    ip.run_line_magic("load_ext", "ipytasks")
    ipytasks.use(dask_client)
    ip.run_line_magic("tasks_backend", "")  # prints the current backend
    ip.run_cell("%%parallel mine --process --quiet\nimport os\nmine_parent = os.getppid()")
    ip.run_line_magic("wait", "mine")
    assert api.tasks["mine"].mode == "dask"
    assert ip.user_ns["mine_parent"] in worker_pids(dask_client)
    ipytasks.use(dask_client)  # the same client again: nothing changes
    assert api._current().scheduler.installed_mode("dask").given_client is dask_client
    ipytasks.use("local")
    ip.run_cell("%%parallel back --process --quiet\n1")
    ip.run_cell("%%parallel still --on dask --quiet\n2")  # --on dask needs no default
    ip.run_line_magic("wait", "")
    assert (api.tasks["back"].mode, api.tasks["still"].mode) == ("process", "dask")
    assert api.tasks["still"].result == 2
    ip.run_line_magic("tasks_backend", "dask")  # back to the cluster in use
    ip.run_line_magic("tasks_backend", "")
    assert api._current().scheduler.installed_mode("dask").given_client is dask_client
    ip.run_line_magic("tasks_backend", "local")
    with pytest.raises(TypeError, match="takes a distributed.Client"):
        ipytasks.use(42)
    ip.run_line_magic("unload_ext", "ipytasks")
    assert dask_client.status == "running"
    assert dask_client.submit(sum, [1, 2], pure=False).result() == 3


# -- without the extra -----------------------------------------------------------------------


@pytest.fixture
def no_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``distributed`` look not installed (as find_spec sees it)."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "distributed" or name.startswith("distributed."):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_the_extra_on_dask_is_a_usage_error(ip: Any, no_distributed: None) -> None:
    """Without distributed, --on dask, %tasks_backend dask and use() say what to install."""
    from ipytasks import api

    with pytest.raises(ValueError) as raised:
        checked({"on": "dask"}, "magic")
    assert str(raised.value) == NEEDS_DASK
    ip.run_line_magic("load_ext", "ipytasks")
    result = ip.run_cell("%%parallel nodask --on dask\n1")
    assert type(result.error_in_exec) is UsageError
    assert str(result.error_in_exec) == NEEDS_DASK
    assert "nodask" not in api.tasks
    result = ip.run_cell("%tasks_backend dask")
    assert type(result.error_in_exec) is UsageError
    assert str(result.error_in_exec) == (
        "%tasks_backend dask needs distributed: pip install 'ipytasks[dask]'"
    )
    with pytest.raises(ValueError, match=r"pip install 'ipytasks\[dask\]'"):
        api.use("dask")
    # --on local and ordinary process cells are not affected.
    assert checked({"on": "local", "mode": "process"}, "api").on == "local"


def test_on_dask_with_another_mode_is_a_usage_error() -> None:
    """--on dask runs process-mode bodies: --thread or --mode async with it is refused."""
    for mode in ("thread", "async"):
        with pytest.raises(ValueError, match=f"drop --mode {mode}"):
            checked({"on": "dask", "mode": mode}, "magic")
    with pytest.raises(ValueError, match="--on must be one of local|dask"):
        checked({"on": "cloud"}, "magic")


# -- a cluster of one's own, by address -----------------------------------------------------


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def test_connects_by_address_to_a_scheduler_of_its_own(ip: Any, tmp_path: Path) -> None:
    """%tasks_backend dask ADDRESS: --process cells run on that cluster's worker; unloading
    disconnects, ends the runtime's processes there, and leaves the cluster running."""
    pytest.importorskip("distributed")
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _start(
        ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
        tmp_path / "scheduler.log",
    )
    worker = None
    try:
        deadline = time.monotonic() + WAIT
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        import json

        address = json.loads(scheduler_file.read_text())["address"]
        worker = _start(
            ["distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
             "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
            tmp_path / "worker.log",
        )
        ip.run_line_magic("load_ext", "ipytasks")
        from ipytasks import api

        api.use(address)
        client = api._current().scheduler.installed_mode("dask").client
        client.wait_for_workers(1, timeout=WAIT)
        ip.run_cell(
            "%%parallel remote --process\nimport os\nprint('running remotely')\n"
            "where = os.getppid()\nme = os.getpid()"
        )
        ip.run_line_magic("wait", "remote")
        record = api.tasks["remote"]
        assert record.mode == "dask" and record.output.endswith("running remotely\n")
        dask_worker = ip.user_ns["where"]
        assert dask_worker in descendants(worker.pid)  # the worker process of that `dask worker`
        assert process_exists(ip.user_ns["me"])  # kept warm for the next task
        # --on local keeps a cell on this machine.
        ip.run_cell("%%parallel here --process --on local\nimport os\nhere_parent = os.getppid()")
        ip.run_line_magic("wait", "here")
        assert api.tasks["here"].mode == "process" and ip.user_ns["here_parent"] == os.getpid()
        ip.run_line_magic("unload_ext", "ipytasks")
        assert client.status == "closed"
        assert wait_gone({ip.user_ns["me"]}) == set()
        assert scheduler.poll() is None and worker.poll() is None  # not ours to stop
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                _stop(proc)


# -- in a kernel ------------------------------------------------------------------------------


@pytest.fixture
def dask_kernel(kernel_env: str, tmp_path: Path) -> Iterator[Any]:
    """A kernel of its own (extension not loaded), in an environment that has ``distributed``."""
    from kernel_driver import Kernel, python_or_skip

    python = python_or_skip(kernel_env)
    probe = "import importlib.util as u; print(u.find_spec('distributed') is not None)"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=WAIT)
    if found.stdout.strip() != "True":
        pytest.skip(f"the dask extra is not installed in the {kernel_env} kernel environment")
    k = Kernel(kernel_env, python=python, workdir=tmp_path / "kernel")
    try:
        yield k
    finally:
        k.shutdown()
        k.kill_leftovers()


@pytest.mark.kernel
def test_in_a_kernel_tasks_backend_dask_and_interrupts(dask_kernel: Any) -> None:
    """In a real kernel: %tasks_backend dask, a --process cell runs on a LocalCluster with its
    output in its own area; an interrupt spares the cluster; unloading, and shutting the
    kernel down, leave no process."""
    k = dask_kernel
    k.execute("%load_ext ipytasks\nimport ipytasks")
    said = k.execute("%tasks_backend dask")
    assert "now run on Dask" in said.stdout
    submitted = k.execute(
        "%%parallel kd --process\nimport os\nprint('hello from', os.getpid())\n"
        "kd_value = 6 * 7\nkd_value"
    )
    k.execute("%wait kd", timeout=WAIT)
    shown = k.execute("t = ipytasks.tasks['kd']\nprint(kd_value, t.mode, t.state)")
    assert shown.stdout.strip() == "42 dask done"
    area = task_area_text(k, submitted)
    assert "started a Dask LocalCluster" in area and "hello from" in area and "bokeh" not in area
    # SIGINT to the kernel's process group, the Dask workers included; a blocking cell shows
    # that it arrived.
    # Interrupted once it runs its own code: an interrupt that lands in the kernel's
    # machinery before that ends the request without a reply.
    blocked = k.submit("import time\nprint('blocking', flush=True)\ntime.sleep(120)")
    k.wait_until(lambda: "blocking" in blocked.stdout, what="the blocking cell runs")
    k.interrupt_cell(blocked)
    assert "KeyboardInterrupt" in blocked.error_text
    k.execute("%tasks_backend local")
    k.execute("%%parallel kd2 --on dask --quiet\n'still there'")
    k.execute("%%parallel kd3 --process --quiet\n'here'")
    k.execute("%wait kd2 kd3", timeout=WAIT)
    shown = k.execute("print(ipytasks.result('kd2'), ipytasks.tasks['kd3'].mode)")
    assert shown.stdout.strip() == "still there process"
    workers = k.execute(
        "import os\nmode = ipytasks.api._current().scheduler.installed_mode('dask')\n"
        "print(*sorted(mode.client.run(os.getpid).values()))"
    ).stdout.split()
    k.execute("%unload_ext ipytasks")
    assert wait_gone({int(p) for p in workers}) == set()
    # A kernel shut down with a cluster running leaves nothing behind either.
    k.execute("%load_ext ipytasks")
    k.execute("%%parallel kd4 --on dask --quiet\nimport os\nprint(os.getppid())")
    k.execute("%wait kd4", timeout=WAIT)
    worker = int(k.execute("print(ipytasks.tasks['kd4'].output)").stdout.split()[-1])
    k.shutdown()
    assert wait_gone({worker}) == set()
    assert wait_gone(set(k.processes_left())) == set()


def task_area_text(k: Any, execution: Any) -> str:
    """What the submitting cell's task display shows under its status line, as text."""
    ids = [i for i in execution.display_ids if i.startswith("ipytasks-")]
    assert len(ids) == 1, execution.displays
    return k.display(ids[0])["text/plain"].partition("\n")[2]

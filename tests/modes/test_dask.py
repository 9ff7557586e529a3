"""dask mode (DESIGN §5.4): what is its own — the cluster, the plugin, a Dask worker that
dies, the Dask client in the API — on real Dask clusters, through the scheduler.

What a worker does in any mode (inputs, outputs, output streaming, errors, cancel, timeouts,
crashes; large inputs, which dask mode scatters first) is tested once per mode in
``tests/workers/test_contract.py``. No mocks of Dask: a ``LocalCluster`` on loopback
(``dask_client``: worker processes, two workers of one thread) is shared by the tests of this
module, one test connects by address to a scheduler and a worker started as separate
processes (as a user with a real cluster would), and one drives a real kernel. Progress is
synchronised on what the body prints and on FIFOs the test holds open. After each test the
scheduler is closed and no worker process may be left next to the Dask workers; after the
module, no Dask process may be left at all.

The tests of the usage errors (no ``distributed``) need no cluster and run even
without the extra.
"""

from __future__ import annotations

import asyncio
import importlib.util
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

import pytest
from IPython.core.error import UsageError

from helpers import (
    WAIT,
    cmdline,
    descendants,
    end_of,
    gate,
    needs_distributed,
    output_shows,
    process_exists,
    stream_texts,
    wait_gone,
    worker_processes,
)
from helpers import run as run_task
from ipytasks.errors import BrokenWorker
from ipytasks.options import checked
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry
from ipytasks.scheduler import Scheduler

pytestmark = pytest.mark.anyio

NEEDS_DASK = "--on dask needs distributed: pip install 'ipytasks[dask]'"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
        assert worker_processes(pids) == set()


def dask(**kwargs: Any) -> TaskOptions:
    return TaskOptions(on="dask", **kwargs)


async def run(sched: Scheduler, source: str, name: str, **kwargs: Any) -> TaskRecord:
    """Submit a dask task and wait until it ends (raising TaskFailed if it failed)."""
    return await run_task(sched, source, name, dask(**kwargs))


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


async def test_retries_and_map(sched: Scheduler, tmp_path: Path) -> None:
    """--retries runs a new Dask task for the new attempt; --map fans out, each item a dask
    task."""
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


async def test_own_local_cluster_shows_its_dashboard_once_and_closes(ip: Any) -> None:
    """Without a client, a LocalCluster starts with the first task (saying so once, with
    Dask's dashboard when bokeh is there, with no warning when not) and closing the mode
    leaves none of its processes."""
    needs_distributed()
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




#: ``dask worker`` (no nanny: the worker is this very process) where ipytasks cannot be
#: imported, as on a cluster where it is not installed.
WORKER_WITHOUT_IPYTASKS = """\
import sys

class NoIpytasks:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] == "ipytasks":
            raise ImportError(f"ipytasks is not installed on this Dask worker ({name})")

sys.meta_path.insert(0, NoIpytasks)
from distributed.cli.dask_worker import main
main()
"""


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
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
    """%tasks_backend dask ADDRESS: --process cells run on that cluster's worker, where
    ipytasks cannot be imported (the runtime travels as source); unloading disconnects, ends
    the runtime's processes there, and leaves the cluster running."""
    needs_distributed()
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _start(
        ["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
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
            ["-c", WORKER_WITHOUT_IPYTASKS, address, "--nthreads", "1", "--no-nanny",
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
        assert record.state == "done", (record.error_text(), (tmp_path / "worker.log").read_text())
        assert record.mode == "dask" and record.output.endswith("running remotely\n")
        assert ip.user_ns["where"] == worker.pid  # that `dask worker`, which has no ipytasks
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

"""Shared fixtures.

- ``kernel_env``: "ik7" (the Python running pytest, ipykernel 7) and "ik6"
  (``$IPYTASKS_IK6_PYTHON``, ipykernel 6.29 / IPython 8). Without the ik6 interpreter its
  tests are skipped — except under ``CI=true``, where they fail.
- ``kernel``: one kernel per (test module, env) with ``%load_ext ipytasks`` done; tests share it,
  so use unique task names.
- ``fresh_kernel``: a kernel of its own for one test, extension not loaded (interrupt, kill,
  unload, restart...).
- ``ip``: the ``InteractiveShell`` singleton for unit tests, namespace reset after each test.
- ``shell``, ``scheduler``, ``gated``: a fresh-namespace shell, a ``Scheduler`` on the test's
  own event loop, and a :class:`GatedMode` installed in it, whose bodies start only when the
  test opens their gate (``gated.gate(name).set()``), recording the order they started in.
- ``dask_client``: a ``LocalCluster`` on loopback (two worker processes of one thread) and its
  client, one per test module. Without ``distributed`` its tests are skipped — except under
  ``CI=true``, where ``make test`` installs the ``[dask]`` extra and they fail.

Tests using ``kernel`` or ``fresh_kernel`` get the ``kernel`` marker automatically
(``pytest -m "not kernel"`` runs the fast unit tests only). ``kernel_driver`` is importable
from test modules (``from kernel_driver import Kernel``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# jupyter_core warns about its coming platformdirs move unless this is set; opt in quietly.
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

from ipytasks.modes import Mode
from kernel_driver import ENVS, Kernel, python_or_skip  # noqa: E402

KERNEL_FIXTURES = {"kernel", "fresh_kernel"}


def pytest_configure(config: pytest.Config) -> None:
    declared = " ".join(config.getini("markers"))
    if "kernel:" not in declared:
        config.addinivalue_line("markers", "kernel: drives a real ipykernel through jupyter_client")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)


def _start(env: str, tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    python = python_or_skip(env)
    return Kernel(env, python=python, workdir=tmp_path_factory.mktemp(f"kernel-{env}"))


def _stop(kernel: Kernel) -> None:
    kernel.shutdown()
    kernel.kill_leftovers()  # never leak a worker process into the rest of the run


@pytest.fixture(scope="module", params=ENVS, ids=ENVS)
def kernel_env(request: pytest.FixtureRequest) -> str:
    """The kernel environment: "ik7" or "ik6"."""
    return request.param


@pytest.fixture(scope="module")
def kernel(kernel_env: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel shared by the tests of one module (per env), with ipytasks loaded."""
    k = _start(kernel_env, tmp_path_factory)
    try:
        k.execute("%load_ext ipytasks")
        yield k
    finally:
        _stop(k)


@pytest.fixture
def fresh_kernel(kernel_env: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel for this test alone, without ipytasks loaded."""
    k = _start(kernel_env, tmp_path_factory)
    try:
        yield k
    finally:
        _stop(k)


@pytest.fixture
def ip() -> Iterator[object]:
    """The ``InteractiveShell`` singleton (history in memory); ipytasks unloaded and the
    namespace reset after the test."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if InteractiveShell.initialized():
        shell = InteractiveShell.instance()
    else:
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        if "ipytasks" in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", "ipytasks")
        shell.reset(new_session=False)


# -- the scheduler on the test's loop, with a mode whose progress the test controls --------


class GatedMode(Mode):
    """A run mode whose bodies wait for the test to open their gate; records start order."""

    name = "gated"

    def __init__(self, shell: object) -> None:
        import asyncio

        super().__init__(shell)  # type: ignore[arg-type]
        self.started: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str):  # -> asyncio.Event
        import asyncio

        return self._gates.setdefault(name, asyncio.Event())

    def prepare(self, task: object) -> None:
        pass

    async def run(self, task) -> object:
        self.started.append(task.name)
        await self.gate(task.name).wait()
        return await task.cell.run_async(self.shell.user_ns)

    def close(self) -> None:
        pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def shell() -> object:
    """The InteractiveShell singleton with a fresh user namespace."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.user_ns.clear()
    ip.init_user_ns()
    return ip


@pytest.fixture
async def scheduler(shell: object) -> Iterator[object]:
    """A Scheduler running on the test's own event loop; closed after the test."""
    import asyncio

    from ipytasks.records import TaskRegistry
    from ipytasks.scheduler import Scheduler

    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    yield sched
    sched.close()


@pytest.fixture
def gated(scheduler: object) -> GatedMode:
    mode = GatedMode(scheduler.shell)
    scheduler.install_mode(mode)
    return mode


# -- a Dask cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client() -> Iterator[object]:
    """A LocalCluster on loopback (processes, two workers of one thread) and its client; no
    process of it is left after the module."""
    import logging

    from helpers import cmdline, descendants, needs_distributed, wait_gone

    needs_distributed()
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

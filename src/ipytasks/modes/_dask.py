"""dask mode: process-mode cells on a Dask ``distributed`` cluster.

``%%parallel NAME --on dask`` (or ``--process`` once ``%tasks_backend dask`` /
``ipytasks.use(client)`` made Dask the default) runs the same payload as process
mode: the inputs the cell reads are shipped, the names it binds come back and are
merged into the notebook when it succeeds, and its result, states, timeouts,
cancel, retries and dependencies are those of any task. Only where the worker
process runs changes.

The cluster
-----------
The one given with ``ipytasks.use(client)`` (ipytasks never closes it) or
``%tasks_backend dask ADDRESS`` (ipytasks connects, and disconnects on unload),
else a ``LocalCluster`` started with the first task — one Dask worker per core,
one thread each, on loopback — whose dashboard link is shown once in that task's
output. It is closed on ``%unload_ext`` (and at exit) and leaves no process behind.
Its worker processes ignore SIGINT, so the kernel's interrupt spares them.
``distributed`` is imported only then, never at submission.

What runs on the workers
------------------------
Nothing of ipytasks has to be installed on the workers: Python with ``distributed``
(so cloudpickle) and the libraries the cells import are enough. On first use ipytasks
registers a worker plugin for this kernel (name ``ipytasks-<session>``, sent by value
with cloudpickle) that carries the source of the worker runtime
(:data:`ipytasks.workers.dask_worker.MODULES`: the wire format, the worker process's
code, the local child, and :mod:`ipytasks.workers.dask_worker`); each Dask worker,
including one that joins or restarts later, runs them as a private package named after
a hash of the sources. Each task's function is a five-line trampoline into that
package, cloudpickled once per session (:class:`_PickledOnce`), so a task costs Dask
no pickling of code. The runtime hands the job to a warm worker process it keeps next
to the Dask worker — the very worker process mode uses, started the same way — so:

* **Output** the worker prints reaches the task's own output area while it runs:
  the runtime reads the process's stdout and stderr (file descriptors, so C
  extensions' writes too) and sends each chunk to the kernel as a Dask structured
  event on this kernel's topic (``worker.log_event``; ``client.subscribe_topic``
  here hands it to ``task.sink.write``). The task ends only once all its output is in.
* **Cancel and timeout stop the body**: the kernel cancels the Dask future; the
  runtime sees within 0.1 s that its task is no longer wanted on the worker and
  SIGKILLs the worker process (and its process group), even in the middle of a C
  call, reaps it, and frees the Dask worker thread for the next task. The kernel
  waits for the runtime to say so (at most :data:`STOP_GRACE` seconds) before the
  task ends as ``cancelled``/``timed_out``. The next job gets a fresh process. A
  task cancelled before it started never starts.
* **A body that kills its process** (``os._exit``, a segfault, out of memory)
  fails its task with :class:`~ipytasks.errors.BrokenWorker` ("worker process died
  (exit code 3) on Dask worker tcp://…"); the Dask worker, and any other task on it,
  carry on. A **Dask worker that dies** (killed from outside, or by its nanny's
  memory limit) fails the task it ran with ``BrokenWorker`` too, from Dask's
  ``KilledWorker``. The ``LocalCluster`` is made with ``allowed_failures=0`` so
  that this happens at once: Dask would otherwise run the task again on up to
  three more workers. A cluster of your own keeps its setting
  (``distributed.scheduler.allowed-failures``).
* The job carries the kernel's working directory; its import path and environment
  too when every worker runs on this machine (a ``LocalCluster``, or addresses on
  loopback or of this host), as process mode does. Remote workers keep their own.
* Dask's own ``retries`` stay 0: ``--retries`` is ipytasks' (a new Dask task per
  attempt, keyed ``NAME-<random>``), so a body never runs again behind your back.
* Inputs of more than :data:`SCATTER_ABOVE` bytes are scattered to the cluster
  first rather than put in the task graph (Dask warns about graphs over 10 MB).
* On unload the plugin is removed: its teardown ends this kernel's worker
  processes on every Dask worker (an idle one also ends by itself after five
  minutes, should the kernel die without unloading).

Limits
------
* A remote worker must unpickle what the cell reads (same versions of the libraries
  the values come from); a worker with another Python version compiles the cell
  from its source rather than using the kernel's code objects.
* The scheduler keeps the latest events of each topic (1000 by default,
  ``distributed.admin.low-level-log-length``): the last output chunks of this
  kernel's tasks stay in the scheduler's memory until newer ones replace them.
* IPython's ``%reset`` removes ``__spec__`` from ``__main__``, which
  multiprocessing needs to start a ``LocalCluster`` worker; ipytasks puts it back
  when it starts the cluster, but a nanny that restarts a dead worker after a
  ``%reset`` fails to (Dask logs it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import ipaddress
import logging
import pickle
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import reports, workers
from ..errors import BrokenWorker
from ..namespace.shipping import decode_reply
from ..output import _report_internal_error
from ..workers.dask_worker import MODULES
from .worker import WorkerMode, cpu_count

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..namespace.shipping import Job
    from ..output import TaskOutput
    from ..records import TaskRecord

__all__ = ("DaskMode",)

STARTED = (
    "ipytasks: started a Dask LocalCluster for --on dask tasks ({workers} worker{s}, "
    "{threads} thread{ts} each){dashboard}\n"
)
#: Dask's own dashboard, when bokeh is there to serve it (``pip install 'ipytasks[dask]'``).
DASHBOARD = "; dashboard: {link}"
DIED_ON = "{died} on Dask worker {worker}"
WORKER_DIED = (
    "the Dask worker running it died ({address}): Dask's KilledWorker, after {deaths} "
    "worker death{s} (its scheduler's allowed-failures is {allowed})"
)
DASK_CANCELLED = "the Dask cluster cancelled the task ({reason})"
NOT_THERE = (
    "the Dask cluster stopped the task before it could finish "
    "(its scheduler or worker went away)"
)
CLOSED = "dask mode was closed (ipytasks unloaded)"
ASYNC_CLIENT = (
    "ipytasks.use() needs a synchronous distributed.Client (not asynchronous=True)"
)

#: How long a cancelled task may take to confirm that its body stopped.
STOP_GRACE = 5.0
#: How long a finished job's output may lag behind its result.
OUTPUT_GRACE = 5.0
#: Inputs larger than this (bytes, pickled) are scattered to the cluster first.
SCATTER_ABOVE = 1 << 20
#: How long closing the client and cluster may take.
CLOSE_TIMEOUT = 10.0
#: A worker preload (the text of a script) for the LocalCluster: its worker processes
#: share the kernel's process group, so the kernel's interrupt (SIGINT to the group)
#: would kill them; like process mode's workers, they ignore it.
IGNORE_SIGINT = (
    "import signal, threading\n"
    "if threading.current_thread() is threading.main_thread():\n"
    "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
)


def give_main_a_spec() -> None:
    """Give ``__main__`` back the ``__spec__`` that IPython's ``%reset`` drops:
    multiprocessing needs it to start a ``LocalCluster``'s workers."""
    main = sys.modules.get("__main__")
    if main is not None and not hasattr(main, "__spec__"):
        main.__spec__ = None


@functools.cache
def _sources() -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """The runtime sent to the workers: ``(key, ((module name, its source), ...))``, in
    import order; ``key`` names the package it becomes there (a hash of the sources)."""
    folder = Path(workers.__file__).parent
    sources = tuple((name, (folder / f"{name}.py").read_bytes()) for name in MODULES)
    digest = hashlib.sha256(b"\0".join(source for _, source in sources)).hexdigest()[:16]
    return f"_ipytasks_dask_{digest}", sources


class _PickledOnce:
    """A function that pickles as ``pickle.loads(<its cloudpickle>)``, made once.

    Dask pickles a task's function with each task (and the scheduler unpickles it);
    this costs a few hundred bytes and no cloudpickle run per task, and the scheduler
    and the workers rebuild the function without ipytasks (cloudpickle comes with
    ``distributed``).
    """

    def __init__(self, function: Any) -> None:
        import cloudpickle

        self.function = function
        self._pickled = cloudpickle.dumps(function)

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self._pickled,)


@functools.cache
def _task_function() -> _PickledOnce:
    """The function each Dask task calls: ``run_job`` of the runtime the plugin installed."""

    def run_on_worker(key: str, session: str, tag: str, topic: str, payload: Any) -> Any:
        import sys

        module = sys.modules.get(key + ".dask_worker")
        if module is None:
            raise RuntimeError(
                "ipytasks' runtime is not set up on this Dask worker (its worker plugin "
                "did not run here)"
            )
        return module.run_job(session, tag, topic, payload)

    return _PickledOnce(run_on_worker)


@functools.cache
def _plugin_class() -> type:
    """The worker plugin that installs the runtime on each Dask worker.

    Made in this function so that cloudpickle sends it by value: the workers need
    not have ipytasks installed. It refers to nothing of ipytasks.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class IpytasksRuntime(WorkerPlugin):
        """Installs ipytasks' Dask runtime on a worker; its teardown ends a kernel's processes."""

        def __init__(self, key: str, session: str, sources: Any) -> None:
            self.key = key
            self.session = session
            self.sources = sources  # ((module name, source), ...) in import order

        def setup(self, worker: Any) -> None:
            import sys
            import types

            package = sys.modules.get(self.key)
            if package is None:
                # The modules become the package `key`, so their relative imports work.
                package = types.ModuleType(self.key)
                package.__path__ = []
                sys.modules[self.key] = package
                try:
                    for name, source in self.sources:
                        module = types.ModuleType(f"{self.key}.{name}")
                        module.__package__ = self.key
                        sys.modules[module.__name__] = module
                        setattr(package, name, module)
                        filename = f"ipytasks/workers/{name}.py"
                        code = compile(source, filename, "exec", dont_inherit=True)
                        exec(code, module.__dict__)  # noqa: S102
                except BaseException:
                    for name in [self.key, *(f"{self.key}.{n}" for n, _ in self.sources)]:
                        sys.modules.pop(name, None)
                    raise
                # The worker processes it starts run these sources too (no files here).
                package.local.use_sources(dict(self.sources))
            package.dask_worker.open_session(self.session)

        def teardown(self, worker: Any) -> None:
            import sys

            module = sys.modules.get(self.key + ".dask_worker")
            if module is not None:
                module.close_session(self.session)

    return IpytasksRuntime


def _is_this_machine(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    try:
        names = {socket.gethostname(), socket.getfqdn()}
        addresses = set()
        for name in names:
            addresses.update(socket.gethostbyname_ex(name)[2])
    except OSError:
        return False
    return host in names or host in addresses


class _Route:
    """Where the events of one attempt go: its output, and what the runtime says of it."""

    def __init__(self, sink: TaskOutput | None, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.loop = loop
        self.cond = threading.Condition()
        self.chunks = 0
        self.worker: str | None = None
        self.pid: int | None = None
        self.ended = asyncio.Event()  # the runtime is done with the job (or stopped it)

    def write(self, stream: str, text: str) -> None:
        if self.sink is not None:
            self.sink.write(stream, text)
        with self.cond:
            self.chunks += 1
            self.cond.notify_all()

    def note(self, note: dict[str, Any]) -> None:
        """A note of the job (its progress, where it is), counted as output is."""
        reports.worker_note(self.sink.owner if self.sink is not None else None, note)
        with self.cond:
            self.chunks += 1
            self.cond.notify_all()

    def wait_chunks(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.chunks >= count, timeout)


class _Link:
    """One connection to a cluster: the client, this kernel's topic and plugin, the routes."""

    def __init__(self, client: Any, local: bool) -> None:
        self.client = client
        self.local = local
        self.session = secrets.token_hex(8)
        self.topic = f"ipytasks-{self.session}"
        self.plugin = f"ipytasks-{self.session}"
        self.key, self._sources = _sources()
        self.plugin_class = _plugin_class()
        self.run_on_worker = _task_function()
        self.routes: dict[str, _Route] = {}

    def start(self) -> None:
        """Subscribe to this kernel's topic and install the runtime on every worker (blocks)."""
        self.client.subscribe_topic(self.topic, self.on_event)
        plugin = self.plugin_class(self.key, self.session, self._sources)
        self.client.register_plugin(plugin, name=self.plugin)

    def on_event(self, event: Any) -> None:
        """An event of this kernel's topic (on the client's thread)."""
        try:
            _, message = event
            tag, kind = message[0], message[1]
            route = self.routes.get(tag)
            if route is None:
                return
            if kind in ("stdout", "stderr"):
                route.write(kind, message[2])
            elif kind == "note":
                route.note(message[2])
            elif kind == "start":
                route.worker, route.pid = message[2], message[3]
            elif kind == "end":
                route.loop.call_soon_threadsafe(route.ended.set)
        except Exception as exc:  # noqa: BLE001 - never break the client's event handling
            _report_internal_error("forwarding a Dask worker's output", exc)

    def stop(self, owned: bool) -> None:
        """Remove the runtime from the workers and unsubscribe; close the client if ``owned``."""
        client = self.client
        try:
            if client.status == "running":
                client.unregister_worker_plugin(self.plugin)
                client.unsubscribe_topic(self.topic)
        except Exception:  # noqa: BLE001, S110 - a cluster that went away already
            pass
        if owned:
            try:
                client.close(timeout=CLOSE_TIMEOUT)
            except Exception:  # noqa: BLE001, S110
                pass


class _Attempt:
    """One Dask task of a task: its future, and whether the kernel gave up on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.future: Any = None
        self.abandoned = False
        self.finished = False  # the Dask task ended (set on the event loop)

    def set_future(self, future: Any) -> bool:
        with self.lock:
            self.future = future
            return not self.abandoned

    def abandon(self) -> Any:
        with self.lock:
            self.abandoned = True
            return self.future


class DaskMode(WorkerMode):
    """Run a cell as process mode does, in a worker process on a Dask cluster.

    :param client: a ``distributed.Client`` to use; ``None``: a ``LocalCluster``
        started with the first task.
    :param own_client: close ``client`` on :meth:`close` (a client ipytasks made
        from an address).
    :param n_workers: Dask workers of the ``LocalCluster``; ``None``: one per core.
    :param threads_per_worker: threads (so jobs at once) per Dask worker of the
        ``LocalCluster``.
    """

    name = "dask"

    def __init__(
        self,
        shell: InteractiveShell,
        client: Any = None,
        *,
        own_client: bool = False,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
    ) -> None:
        super().__init__(shell)
        if client is not None and getattr(client, "asynchronous", False):
            raise ValueError(ASYNC_CLIENT)
        self._client = client
        self._own_client = own_client
        self.n_workers = n_workers or cpu_count()
        self.threads_per_worker = threads_per_worker
        self.cluster: Any = None  # the LocalCluster ipytasks started, if any
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="ipytasks-dask"
        )
        self._closed = False

    @property
    def given_client(self) -> Any:
        """The client this mode was made with (``None``: its own ``LocalCluster``)."""
        return self._client

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (``None`` until the first task connects)."""
        return self._link.client if self._link is not None else self._client

    # -- connecting -----------------------------------------------------------------

    async def _connect(self, task: TaskRecord) -> _Link:
        if self._link is not None:
            return self._link
        if self._closed:
            raise RuntimeError(CLOSED)
        loop = asyncio.get_running_loop()
        connecting = self._connecting
        if connecting is None or (
            connecting.done() and (connecting.cancelled() or connecting.exception() is not None)
        ):
            sink = task.sink
            connecting = self._connecting = loop.run_in_executor(
                self._executor, self._connect_blocking, sink
            )
        return await asyncio.shield(connecting)

    def _connect_blocking(self, sink: TaskOutput | None) -> _Link:
        client, local, cluster = self._client, False, None
        if client is None:
            client, cluster = self._start_cluster(sink)
            local = True
        else:
            local = self._all_on_this_machine(client)
        link = _Link(client, local)
        try:
            link.start()
        except BaseException:
            link.stop(owned=cluster is not None or self._own_client)
            if cluster is not None:
                cluster.close(timeout=CLOSE_TIMEOUT)
            raise
        with self._lock:
            if not self._closed:
                self.cluster = cluster
                self._link = link
                return link
        # Closed while connecting: undo it all.
        link.stop(owned=cluster is not None or self._own_client)
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT)
        raise RuntimeError(CLOSED)

    def _start_cluster(self, sink: TaskOutput | None) -> tuple[Any, Any]:
        import importlib.util

        from distributed import Client, LocalCluster

        give_main_a_spec()
        # Dask's dashboard needs bokeh (the [dask] extra brings it); without it the
        # cluster starts without one rather than warn in the first task's output.
        has_dashboard = importlib.util.find_spec("bokeh") is not None
        cluster = LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0" if has_dashboard else None,
            silence_logs=logging.ERROR,
            scheduler_kwargs={"allowed_failures": 0},
            preload=[IGNORE_SIGINT],
        )
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close(timeout=CLOSE_TIMEOUT)
            raise
        if sink is not None:
            dashboard = DASHBOARD.format(link=cluster.dashboard_link) if has_dashboard else ""
            sink.write(
                "stdout",  # news, not a warning
                STARTED.format(
                    workers=self.n_workers,
                    s="s" if self.n_workers != 1 else "",
                    threads=self.threads_per_worker,
                    ts="s" if self.threads_per_worker != 1 else "",
                    dashboard=dashboard,
                ),
            )
        return client, cluster

    @staticmethod
    def _all_on_this_machine(client: Any) -> bool:
        from distributed.comm import get_address_host

        try:
            info = client.scheduler_info()
            addresses = list(info.get("workers", {})) or [info["address"]]
            return all(_is_this_machine(get_address_host(a)) for a in addresses)
        except Exception:  # noqa: BLE001 - when in doubt, the workers keep their own
            return False

    # -- running ----------------------------------------------------------------------

    async def run(self, task: TaskRecord) -> Any:
        job = self.job(task)
        link = await self._connect(task)
        if not link.local:
            job.sys_path = None  # the workers keep their own
        loop = asyncio.get_running_loop()
        tag = secrets.token_hex(8)
        route = _Route(task.sink, loop)
        attempt = _Attempt()
        ended = loop.create_future()

        def settle(_: Any) -> None:  # on a Dask callback thread
            def done() -> None:
                attempt.finished = True
                if not ended.done():
                    ended.set_result(None)

            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        def submit(job: Job) -> None:  # on an executor thread: pickling may take a while
            meta, values, buffers = job.encode(environ=link.local)
            views = [b.raw() for b in buffers]  # Dask sends memoryviews as frames, no copy
            payload: Any = (meta, values, views, [v.readonly for v in views])
            if len(values) + sum(v.nbytes for v in views) > SCATTER_ABOVE:
                # Large inputs go to a worker directly, not inside the task (via the scheduler).
                [payload] = link.client.scatter([payload], hash=False)
            future = link.client.submit(
                link.run_on_worker,
                link.key,
                link.session,
                tag,
                link.topic,
                payload,
                key=f"{task.name}-{tag}",
                pure=False,
                retries=0,
            )
            if not attempt.set_future(future):
                future.cancel()
                return
            future.add_done_callback(settle)

        link.routes[tag] = route
        try:
            await loop.run_in_executor(self._executor, submit, job)
            del job
            await ended
            reply = await loop.run_in_executor(self._executor, self._collect, attempt, route)
        except BaseException:
            future = attempt.abandon()
            if future is not None:
                self._executor.submit(_quietly, future.cancel)
                if route.pid is not None and not attempt.finished:
                    # The body runs: wait until the runtime says it stopped it.
                    try:
                        async with asyncio.timeout(STOP_GRACE):
                            await route.ended.wait()
                    except TimeoutError:
                        pass
            raise
        finally:
            link.routes.pop(tag, None)
        return self.finish(task, reply)

    def _collect(self, attempt: _Attempt, route: _Route) -> Any:
        """The reply of a finished Dask task (on an executor thread); errors as the task's."""
        from distributed import KilledWorker

        future = attempt.future
        try:
            outcome = future.result()
        except KilledWorker as exc:
            allowed = exc.allowed_failures
            raise BrokenWorker(
                WORKER_DIED.format(
                    address=exc.last_worker.address,
                    deaths=allowed + 1,
                    s="s" if allowed else "",
                    allowed=allowed,
                )
            ) from None
        except (asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
            # Not ours (ours cancel the awaiting task first): the cluster's doing.
            raise BrokenWorker(DASK_CANCELLED.format(reason=exc)) from None
        finally:
            future.release()
        route.wait_chunks(outcome.get("chunks", 0), OUTPUT_GRACE)
        if "died" in outcome:
            worker = route.worker or "?"
            raise BrokenWorker(DIED_ON.format(died=outcome["died"], worker=worker))
        if "stopped" in outcome:
            raise BrokenWorker(NOT_THERE)
        return decode_reply(outcome["meta"], outcome["values"], outcome["buffers"])

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect: remove the runtime from the workers, close what ipytasks started."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            link, self._link = self._link, None
            cluster, self.cluster = self.cluster, None
        if link is not None:
            link.stop(owned=cluster is not None or self._own_client)
        elif self._own_client and self._client is not None:
            _quietly(self._client.close, timeout=CLOSE_TIMEOUT)
        if cluster is not None:
            _quietly(cluster.close, timeout=CLOSE_TIMEOUT)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001, S110 - closing what may be gone already
        pass


mode_class = DaskMode

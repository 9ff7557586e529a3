"""Benchmark dask mode (DESIGN §5.4) against a raw ``client.submit`` on the same cluster.

    python bench/bench_dask.py [--quick]

Per-task overhead of a trivial ``--on dask`` cell (``1``) against a raw
``client.submit`` of a cloudpickled function (``lambda: 1``) whose ``.result()`` is
awaited, on one ``LocalCluster`` (two workers, one thread each, processes, loopback),
measured in one run with the rounds interleaved: raw, ipytasks, raw, ipytasks...
Two ipytasks figures: the whole path (``Scheduler.submit`` + ``wait``: IPython's
transformation, analysis, states, the reply merged) and the mode alone
(``await DaskMode.run(record)``). Goal: the whole path within 2x of raw.

Then the same with eight tasks at once (throughput per task), which is what a fan-out
sees. ``--quick`` uses few repetitions (a smoke run, not figures).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from typing import Any

import cloudpickle
from distributed import Client, LocalCluster
from IPython.core.interactiveshell import InteractiveShell

from ipytasks.modes._dask import DaskMode
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry
from ipytasks.scheduler import Scheduler

DASK = TaskOptions(on="dask", quiet=True)


def _call_pickled(payload: bytes) -> Any:
    return cloudpickle.loads(payload)()


def raw_once(client: Client) -> float:
    t = time.perf_counter()
    client.submit(_call_pickled, cloudpickle.dumps(lambda: 1), pure=False).result()
    return time.perf_counter() - t


def raw_batch(client: Client, width: int) -> float:
    t = time.perf_counter()
    futures = [
        client.submit(_call_pickled, cloudpickle.dumps(lambda: 1), pure=False)
        for _ in range(width)
    ]
    client.gather(futures)
    return (time.perf_counter() - t) / width


async def ipytasks_once(sched: Scheduler, name: str) -> float:
    t = time.perf_counter()
    record = sched.submit("1", name, DASK)
    await sched.wait([record])
    return time.perf_counter() - t


async def mode_once(mode: DaskMode, record: TaskRecord) -> float:
    t = time.perf_counter()
    await mode.run(record)
    return time.perf_counter() - t


async def ipytasks_batch(sched: Scheduler, prefix: str, width: int) -> float:
    t = time.perf_counter()
    records = [sched.submit("1", f"{prefix}_{i}", DASK) for i in range(width)]
    await sched.wait(records)
    return (time.perf_counter() - t) / width


async def main(quick: bool) -> None:
    repeat = 10 if quick else 60
    rounds = 2 if quick else 5
    width = 8
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    shell = InteractiveShell.instance()
    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    mode = DaskMode(shell, client)
    sched.install_mode(mode)
    raw: list[float] = []
    full: list[float] = []
    alone: list[float] = []
    raw_b: list[float] = []
    full_b: list[float] = []
    try:
        # Warm both paths: the runtime's worker processes, imports, connections.
        for i in range(10):
            raw_once(client)
            await ipytasks_once(sched, f"warm{i}")
        record = sched.tasks["warm0"]
        n = 0
        for _ in range(rounds):
            for _ in range(repeat // rounds):
                # Raw blocks the loop, as it would in a notebook cell; nothing else runs meanwhile.
                raw.append(raw_once(client))
                full.append(await ipytasks_once(sched, f"rt{n}"))
                alone.append(await mode_once(mode, record))
                n += 1
            raw_b.append(raw_batch(client, width))
            full_b.append(await ipytasks_batch(sched, f"batch{n}", width))
    finally:
        sched.close()
        client.close()
        cluster.close()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:7.2f} ms"

    base = statistics.median(raw)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"dask mode vs raw client.submit (LocalCluster: 2 workers x 1 thread); load {load}")
    print(f"{'':44} {'median':>10} {'vs raw':>8}")
    print(f"{'raw client.submit(cloudpickled fn).result()':44} {ms(raw):>10} {'1.00x':>8}")
    print(f"{'--on dask cell: submit + wait (whole path)':44} {ms(full):>10} "
          f"{statistics.median(full) / base:7.2f}x")
    print(f"{'--on dask: DaskMode.run alone':44} {ms(alone):>10} "
          f"{statistics.median(alone) / base:7.2f}x")
    base_b = statistics.median(raw_b)
    print(f"{f'raw, {width} at once (per task)':44} {ms(raw_b):>10} {'1.00x':>8}")
    print(f"{f'--on dask, {width} at once (per task)':44} {ms(full_b):>10} "
          f"{statistics.median(full_b) / base_b:7.2f}x")
    ratio = statistics.median(full) / base
    print(f"goal: whole path within 2x of raw: {'met' if ratio <= 2 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    asyncio.run(main(parser.parse_args().quick))

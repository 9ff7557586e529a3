"""Benchmark process mode (DESIGN §5.3) against raw baselines measured in the same run.

    python bench/bench_process.py [--quick]

1. Warm round trip of a trivial process cell (``1``) against a raw
   ``concurrent.futures.ProcessPoolExecutor.submit`` of a cloudpickled function.
   Two ipytasks figures: the whole path (``Scheduler.submit`` + ``wait``: IPython's
   transformation, analysis, states, result display) and the mode alone
   (``await ProcessMode.run(record)``). Goal: within 3x.
2. Cold start of the first task (a fresh pool each time; goal < 0.3 s) and four
   CPU-bound cells of 1 s each on two workers (goal < 2.4 s wall), next to the
   same four jobs on a raw ``ProcessPoolExecutor(2)`` (what the machine gives).
3. A 200 MB float64 array in and a 200 MB array out (``out = arr``) against a raw
   protocol-5 round trip of the same array over pipes to an echoing child process
   (same pipe size). Goal: at least half the throughput. Also the peak RSS of this
   process (the "kernel") during the transfer, above what it used before the
   input array existed, in units of the array size (goal < 2.5).

4. A figure made in a process task and shown in its output (the worker renders it with
   the inline backend's settings; the kernel only receives the PNG) against making and
   rendering the same figure in this process, through IPython's display formatter set up
   as the inline backend sets it. The two alternate, run after run; medians and the
   spread (lowest-highest) of each. Goal: at most 1.5x.

``--quick`` uses small sizes and few repetitions (a smoke run, not figures).
The CPU-bound figure needs two idle cores: the load average is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import pickle
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any

import cloudpickle
from IPython.core.interactiveshell import InteractiveShell

from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry
from ipytasks.scheduler import Scheduler
from ipytasks.workers.local import PIPE_SIZE

PROCESS = TaskOptions(mode="process", quiet=True)


def _call_pickled(payload: bytes) -> Any:
    return cloudpickle.loads(payload)()


def _burn(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def new_scheduler(shell: Any, workers: int) -> Scheduler:
    return Scheduler(
        shell,
        TaskRegistry(),
        loop=asyncio.get_running_loop(),
        mode_settings={"process": {"max_workers": workers}},
    )


async def run_cell(sched: Scheduler, source: str, name: str) -> TaskRecord:
    record = sched.submit(source, name, PROCESS)
    await sched.wait([record])
    return record


# -- 1. round trip ------------------------------------------------------------------------


def raw_round_trip(repeat: int) -> float:
    payload = cloudpickle.dumps(lambda: 1)
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        for _ in range(20):
            pool.submit(_call_pickled, payload).result()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            pool.submit(_call_pickled, cloudpickle.dumps(lambda: 1)).result()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


async def ipytasks_round_trip(shell: Any, repeat: int) -> tuple[float, float]:
    sched = new_scheduler(shell, 1)
    try:
        for i in range(20):
            await run_cell(sched, "1", f"warm{i}")
        full = []
        for i in range(repeat):
            t = time.perf_counter()
            await run_cell(sched, "1", f"rt{i}")
            full.append(time.perf_counter() - t)
        mode = sched._modes["process"]
        record = sched.tasks["rt0"]
        alone = []
        for _ in range(repeat):
            t = time.perf_counter()
            await mode.run(record)
            alone.append(time.perf_counter() - t)
    finally:
        sched.close()
    return statistics.median(full), statistics.median(alone)


# -- 2. cold start and CPU-bound overlap --------------------------------------------------


def raw_four_cpu_jobs(seconds: float) -> float:
    """The same four CPU-bound jobs on a warm ProcessPoolExecutor(2): what the machine gives."""
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        list(pool.map(_burn, [0.0, 0.0]))
        t = time.perf_counter()
        list(pool.map(_burn, [seconds] * 4))
        return time.perf_counter() - t


async def cold_starts(shell: Any, repeat: int) -> list[float]:
    times = []
    for i in range(repeat):
        sched = new_scheduler(shell, 2)
        try:
            t = time.perf_counter()
            await run_cell(sched, "x = 1", f"cold{i}")
            times.append(time.perf_counter() - t)
        finally:
            sched.close()
    return times


async def four_cpu_cells(shell: Any, seconds: float) -> float:
    sched = new_scheduler(shell, 2)
    shell.run_cell(
        "def burn(seconds):\n"
        "    import time\n"
        "    t0 = time.process_time()\n"
        "    while time.process_time() - t0 < seconds:\n"
        "        pass"
    )
    try:
        await run_cell(sched, "0", "start_pool")
        t = time.perf_counter()
        # The cells bind nothing: no inferred order between them.
        records = [sched.submit(f"burn({seconds})", f"cpu{i}", PROCESS) for i in range(4)]
        await sched.wait(records)
        return time.perf_counter() - t
    finally:
        sched.close()


# -- 3. large arrays ----------------------------------------------------------------------

_ECHO = textwrap.dedent(
    """\
    import os, pickle, struct, sys
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    def read_exactly(fd, n):
        buf = bytearray(n); view = memoryview(buf); pos = 0
        while pos < n:
            got = os.readv(fd, [view[pos:]])
            if not got: raise EOFError
            pos += got
        return buf
    def write_all(fd, data):
        view = memoryview(data).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view):]
    while True:
        try:
            head = read_exactly(rfd, 16)
        except EOFError:
            break
        plen, blen = struct.unpack("<QQ", head)
        obj = pickle.loads(read_exactly(rfd, plen), buffers=[read_exactly(rfd, blen)])
        bufs = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
        raw = bufs[0].raw()
        write_all(wfd, struct.pack("<QQ", len(data), raw.nbytes) + data)
        write_all(wfd, raw)
        del obj, raw, bufs
    """
)


def _grow(fd: int) -> None:
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def _read_exactly(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if not got:
            raise EOFError
        pos += got
    return buf


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]


def raw_array_round_trip(arr: Any, repeat: int) -> float:
    """Best time of a protocol-5 round trip of ``arr`` through an echoing child."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    for fd in (to_w, from_r):
        _grow(fd)
    child = subprocess.Popen(
        [sys.executable, "-c", _ECHO, str(to_r), str(from_w)], pass_fds=(to_r, from_w)
    )
    os.close(to_r)
    os.close(from_w)
    best = float("inf")
    try:
        for _ in range(repeat):
            t = time.perf_counter()
            bufs: list[pickle.PickleBuffer] = []
            data = pickle.dumps(arr, protocol=5, buffer_callback=bufs.append)
            raw = bufs[0].raw()
            _write_all(to_w, struct.pack("<QQ", len(data), raw.nbytes) + data)
            _write_all(to_w, raw)
            del raw, bufs
            plen, blen = struct.unpack("<QQ", _read_exactly(from_r, 16))
            back = pickle.loads(_read_exactly(from_r, plen), buffers=[_read_exactly(from_r, blen)])
            best = min(best, time.perf_counter() - t)
            assert back.shape == arr.shape
            del back
    finally:
        os.close(to_w)
        child.wait(30)
        os.close(from_r)
    return best


async def ipytasks_array_round_trip(shell: Any, arr: Any, repeat: int) -> tuple[float, float]:
    """Best time of ``out = arr`` in a process cell, and the peak RSS meanwhile (KiB)."""
    sched = new_scheduler(shell, 1)
    best = float("inf")
    peak = 0
    try:
        await run_cell(sched, "0", "start_pool")
        for i in range(repeat):
            shell.user_ns.pop("out", None)
            shell.user_ns["arr"] = arr
            reset_peak_rss()
            t = time.perf_counter()
            await run_cell(sched, "out = arr", f"array{i}")
            best = min(best, time.perf_counter() - t)
            peak = max(peak, rss_kib("VmHWM"))
            assert shell.user_ns["out"].shape == arr.shape
    finally:
        shell.user_ns.pop("out", None)
        shell.user_ns.pop("arr", None)
        sched.close()
    return best, peak


# -- 4. a figure from a process task ------------------------------------------------------

FIGURE_CELL = (
    "import matplotlib.pyplot as plt\n"
    "plt.figure()\n"
    "plt.plot(range(2000), [(i * i) % 997 for i in range(2000)])\n"
    "plt.title('a figure from a task');"
)


async def figure_interleaved(shell: Any, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds per figure, alternately: rendered in this process, and from a process task."""
    from IPython.core.pylabtools import select_figure_formats

    select_figure_formats(shell, {"png"}, bbox_inches="tight")  # what the inline backend does
    namespace: dict[str, Any] = {}

    def in_kernel() -> None:
        exec(compile(FIGURE_CELL, "<figure>", "exec"), namespace)  # noqa: S102
        plt = namespace["plt"]
        data, _ = shell.display_formatter.format(plt.gcf())
        plt.close("all")
        assert "image/png" in data

    sched = new_scheduler(shell, 1)
    local: list[float] = []
    remote: list[float] = []
    try:
        in_kernel()  # imports and first draws, uncounted on both sides
        await run_cell(sched, FIGURE_CELL, "figure_warm")
        for i in range(repeat):
            t = time.perf_counter()
            in_kernel()
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            record = await run_cell(sched, FIGURE_CELL, f"figure{i}")
            remote.append(time.perf_counter() - t)
            shown = record.sink.notebook_outputs()
            assert any("image/png" in o.get("data", {}) for o in shown), record.output
    finally:
        sched.close()
    return local, remote


# -- main ---------------------------------------------------------------------------------


async def main(quick: bool) -> None:
    import numpy as np

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    repeat = 30 if quick else 300
    cpu_seconds = 0.25 if quick else 1.0
    mb = 20 if quick else 200

    rows: list[tuple[str, str, str, str, str]] = []

    # Before the shell exists: IPython replaces sys.modules["__main__"], and the raw
    # executor pickles _call_pickled by reference to it.
    raw_rt = raw_round_trip(repeat)
    cpu_tries = 1 if quick else 3  # best of: other work on the machine only slows a run
    raw_cpu = min(raw_four_cpu_jobs(cpu_seconds) for _ in range(cpu_tries))
    shell = InteractiveShell.instance()
    full_rt, alone_rt = await ipytasks_round_trip(shell, repeat)
    rows.append(
        (
            "warm round trip: whole task",
            f"{full_rt * 1e3:.2f} ms",
            f"{raw_rt * 1e3:.2f} ms",
            f"{full_rt / raw_rt:.1f}x",
            "<= 3x",
        )
    )
    rows.append(
        (
            "warm round trip: mode alone",
            f"{alone_rt * 1e3:.2f} ms",
            f"{raw_rt * 1e3:.2f} ms",
            f"{alone_rt / raw_rt:.1f}x",
            "<= 3x",
        )
    )

    colds = await cold_starts(shell, 3 if quick else 7)
    rows.append(
        ("cold start, first task (median)", f"{statistics.median(colds):.3f} s", "", "", "< 0.3 s")
    )
    rows.append(("cold start, first task (worst)", f"{max(colds):.3f} s", "", "", "< 0.3 s"))

    wall = min([await four_cpu_cells(shell, cpu_seconds) for _ in range(cpu_tries)])
    rows.append(
        (
            f"4 x {cpu_seconds:g} s CPU cells, 2 workers",
            f"{wall:.2f} s",
            f"{raw_cpu:.2f} s (pool)",
            f"{wall / cpu_seconds:.2f} units",
            "< 2.4 units",
        )
    )

    # Ours first, so that nothing the raw baseline leaves in the heap counts against it.
    before_array = rss_kib("VmRSS")
    arr = np.ones(mb * 1024 * 1024 // 8, dtype=np.float64)
    size_mib = arr.nbytes / 2**20
    ours_best, peak_kib = await ipytasks_array_round_trip(shell, arr, 2 if quick else 3)
    raw_best = raw_array_round_trip(arr, 2 if quick else 3)
    raw_tp = 2 * size_mib / raw_best
    ours_tp = 2 * size_mib / ours_best
    rows.append(
        (
            f"{size_mib:.0f} MiB array in + out",
            f"{ours_tp:.0f} MiB/s",
            f"{raw_tp:.0f} MiB/s",
            f"{ours_tp / raw_tp:.2f}",
            ">= 0.5",
        )
    )
    peak_mib = (peak_kib - before_array) / 1024
    rows.append(
        (
            "kernel peak RSS during transfer",
            f"{peak_mib:.0f} MiB",
            f"array {size_mib:.0f} MiB",
            f"{peak_mib / size_mib:.2f}x",
            "< 2.5x",
        )
    )

    local, remote = await figure_interleaved(shell, 5 if quick else 30)
    ml, mr = statistics.median(local), statistics.median(remote)
    rows.append(
        (
            "figure from a process task, shown",
            f"{mr * 1e3:.0f} ms ({min(remote) * 1e3:.0f}-{max(remote) * 1e3:.0f})",
            f"{ml * 1e3:.0f} ms ({min(local) * 1e3:.0f}-{max(local) * 1e3:.0f}) in kernel",
            f"{mr / ml:.2f}x",
            "<= 1.5x",
        )
    )

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nipytasks process mode, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average before the run {load_before}, after {load}"
        f"{' (quick: small sizes)' if quick else ''}\n"
    )
    header = ("measure", "ipytasks", "baseline", "ratio", "goal")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(
        "\nPeak RSS: this process's peak during the transfers, above its RSS just before "
        "the input array was allocated (so: input array + received output + overhead)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    asyncio.run(main(parser.parse_args().quick))

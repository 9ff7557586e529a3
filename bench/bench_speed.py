"""The speed goals, each against its baseline, measured interleaved in one run.

    python bench/bench_speed.py [--quick] [--json]

One row per goal. Every ipytasks figure and its baseline are taken turn about (A B A B …,
at least five turns each), so that the machine's drift over minutes hits both alike; each
row shows the median of both, their spread, and the ratio of the pairs (its median and
spread). Where a median meets its goal by less than its spread on the goal's side (the
interquartile range of the pairs reaches past the goal), the row says ``unclear`` instead
of a pass. The spread is the interquartile range (IQR) of the turns.

In a kernel started from this Python through jupyter_client (``%load_ext ipytasks``; its
baselines in the same kernel):

- ``%%parallel`` submission with its status line (a cell of its own text each time, as
  ``run_cell_magic`` runs it), against ``display()`` of a bundle of the same shape with a
  display id: what any cell that shows one output pays. In turns of 1/9 of the
  submissions each: the goal is on the median, so the row's figure is each turn's median
  and its spread is theirs; the label adds the submissions one by one (median and IQR);
- thread mode: a trivial task (``1 + 1;``) submitted and awaited alone, against a raw
  ``ThreadPoolExecutor`` awaited on the kernel's loop; and batches of them;
- process mode: a batch of trivial tasks against a raw ``ProcessPoolExecutor`` (spawn) with
  the same number of workers;
- ``%%parallel --map i in range(N)``: the time until all N items are registered, per item,
  against ``ThreadPoolExecutor.submit`` of the same function per item; and how many times
  ``compile()`` ran for the whole map (the same for N and 2N items: one compile for all).

Big values, from this process, in turns: ``out = arr`` in a ``--process`` cell of the
kernel (``arr``: a float64 NumPy array), ``client.submit(identity, arr).result()`` on a
Dask ``LocalCluster`` (2 worker processes, 1 thread each, loopback; the client here), and
the ceiling: the same bytes copied by two raw processes through pre-faulted shared memory
(this process copies them in, a child copies them into an array of its own and back out,
this process copies them into a new array). Then the same for a pandas DataFrame (half
numbers, half strings). The kernel's peak memory during its transfers (``VmHWM``, reset
before each) above its memory with the value in it before the first transfer, in units of
the value's size: the copy that comes back is 1.0 of it.

Before each batch and each map (either side's), the garbage collector collects: a full
collection falls due every few thousand tasks, and whichever turn it lands in takes about
twice as long, so without it a pair's ratio is 0.5 or 2 by chance (as ``timeit`` keeps
collections out of what it times). Each side's own garbage is still collected in its turn.

``--quick``: small sizes and counts, five turns (a smoke run, not figures to quote).
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

from bench_scenarios import (
    MISSED,
    OK,
    UNCLEAR,
    BenchKernel,
    Row,
    error_row,
    fmt_ratio,
    fmt_time,
    unavailable_row,
)

TRIVIAL = "1 + 1;"
#: The goals, as the rows hold them.
GOAL_DASK = 1.5  # ipytasks' speed ÷ Dask's, at least
GOAL_CEILING = 2.0  # ipytasks' time ÷ the ceiling's, at most
GOAL_RSS = 1.3  # the kernel's peak growth ÷ the value, at most
GOAL_SUBMIT = 0.3e-3  # seconds, median
GOAL_PROCESS = 1.5  # ÷ the raw process pool, at most
GOAL_THREAD_RT = 1.3  # ÷ the raw thread pool, at most
GOAL_THREAD_BATCH = 1.0  # ÷ the raw thread pool, at most
GOAL_MAP = 20e-6  # seconds per item, median


def params(quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "turns": 5 if quick else 9,
        "mib": 20 if quick else 200,
        "rows": 20_000 if quick else 1_000_000,
        "submissions": 40 if quick else 300,
        "round_trips": 60 if quick else 300,
        "batch": 200 if quick else 1000,
        "map_items": 1000 if quick else 10_000,
    }


def spread(values: list[float]) -> tuple[float, float]:
    """The interquartile range (lowest–highest below five values): one turn that the
    machine's other work slowed down does not make it."""
    if len(values) >= 5:
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]
    return min(values), max(values)


def spread_label(n: int) -> str:
    return "IQR" if n >= 5 else "lowest–highest"


# -- inside the kernel ---------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (Linux >= 4.0)
        f.write("5")


def make_frame(rows: int) -> Any:
    """A DataFrame of ``rows`` × 10: int64, float64 and string columns, in turn."""
    import numpy as np
    import pandas as pd

    columns: dict[str, Any] = {}
    for k in range(5):
        columns[f"n{k}"] = (np.arange(rows, dtype=np.int64) * (k + 1) if k % 2 == 0
                            else np.linspace(0.0, 1.0, rows))
        columns[f"s{k}"] = [f"item-{k}-{i}" for i in range(rows)]
    return pd.DataFrame(columns)


async def kernel_overheads(p: dict[str, Any]) -> dict[str, Any]:
    """Submission, thread mode, process batches and --map, each turn about with its baseline."""
    import asyncio
    import concurrent.futures
    import gc
    import multiprocessing

    from IPython.display import display

    import ipytasks

    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - the kernel's shell
    perf = time.perf_counter
    counter = iter(range(10**9))
    out: dict[str, Any] = {}

    def check(name: str) -> None:
        record = ipytasks.tasks[name]
        if record.state != "done":
            raise RuntimeError(f"task {name} ended {record.state}: {record.error!r}")

    # 1. a %%parallel cell with its status line, against display() of a bundle like it;
    # in turns, each of its own submissions (the figure is a median: its spread is that of
    # the turns' medians)
    ip.run_cell_magic("parallel", "sub_warm", "sub_warm_v = 0")
    await ipytasks.wait("sub_warm")
    ours, base = [], []
    per_turn = max(p["submissions"] // p["turns"], 1)
    turns: list[tuple[float, float]] = []
    for _ in range(p["turns"]):
        turn_ours, turn_base = [], []
        for i in range(per_turn):
            name = f"sub{next(counter)}"
            t0 = perf()
            ip.run_cell_magic("parallel", name, f"{name}_v = {i}")
            turn_ours.append(perf() - t0)
            await ipytasks.wait(name)
            bundle = {"text/plain": f"✔ {name} done in 0.00s",
                      "text/html": f'<div class="ipytasks-status"><b>{name}</b> done</div>'}
            t0 = perf()
            display(bundle, raw=True, display_id=f"bench-{name}")
            turn_base.append(perf() - t0)
            await asyncio.sleep(0)
        ours += turn_ours
        base += turn_base
        turns.append((statistics.median(turn_ours), statistics.median(turn_base)))
    out["submit"] = {"ours": [t[0] for t in turns], "base": [t[1] for t in turns],
                     "each": ours, "each_base": base}

    # 2. thread mode: round trips, one at a time, then batches
    async def ours_thread_one() -> float:
        name = f"thr{next(counter)}"
        t0 = perf()
        ipytasks.submit(TRIVIAL, name, quiet=True, mode="thread")
        await ipytasks.wait(name)
        return perf() - t0

    async def raw_one(pool: concurrent.futures.Executor) -> float:
        t0 = perf()
        await asyncio.wrap_future(pool.submit(exec, TRIVIAL, {}))
        return perf() - t0

    async def ours_batch(mode: str, n: int) -> float:
        k = next(counter)
        names = [f"{mode}{k}_{i}" for i in range(n)]
        gc.collect()
        t0 = perf()
        for name in names:
            ipytasks.submit(TRIVIAL, name, quiet=True, mode=mode)
        await ipytasks.wait(*names)
        took = (perf() - t0) / n
        check(names[-1])
        return took

    async def raw_batch(pool: concurrent.futures.Executor, n: int) -> float:
        gc.collect()
        t0 = perf()
        await asyncio.gather(*[asyncio.wrap_future(pool.submit(exec, TRIVIAL, {}))
                               for _ in range(n)])
        return (perf() - t0) / n

    n = p["batch"]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        for _ in range(20):  # warm up both: threads started, code paths run
            await ours_thread_one()
            await raw_one(pool)
        ours, base = [], []
        for _ in range(p["round_trips"]):
            ours.append(await ours_thread_one())
            base.append(await raw_one(pool))
        out["thread_rt"] = {"ours": ours, "base": base}
        await ours_batch("thread", n)
        await raw_batch(pool, n)
        ours, base = [], []
        for _ in range(p["turns"]):
            ours.append(await ours_batch("thread", n))
            base.append(await raw_batch(pool, n))
        out["thread_batch"] = {"ours": ours, "base": base}

    # 3. process mode: batches, against a raw pool with as many workers
    try:
        await ours_batch("process", 20)  # starts the pool
        from ipytasks import api

        mode = api._current().scheduler.installed_mode("process")
        workers = getattr(mode, "max_workers", None) or os.cpu_count() or 1
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            await raw_batch(pool, n)  # warm up
            await ours_batch("process", n)
            ours, base = [], []
            for _ in range(p["turns"]):
                ours.append(await ours_batch("process", n))
                base.append(await raw_batch(pool, n))
        out["process_batch"] = {"ours": ours, "base": base, "workers": workers}
    except Exception as exc:  # noqa: BLE001 - said in the table
        out["process_batch"] = {"unavailable": f"{type(exc).__name__}: {exc}"}

    # 4. --map over N items: until every item is registered, against pool.submit per item
    items = p["map_items"]

    def function(i: int) -> int:
        return i * 2

    async def ours_map(k: int, count: int = items, expr: str = "") -> float:
        name = f"map{k}"
        gc.collect()
        t0 = perf()
        ip.run_cell_magic("parallel", f"{name} --map i in {expr or f'range({count})'}", "i * 2")
        record = ipytasks.tasks[name]
        while len(record.children) < count and not record.state.ended:
            await asyncio.sleep(0)
        took = (perf() - t0) / count
        await ipytasks.wait(name)
        check(name)
        return took

    with concurrent.futures.ThreadPoolExecutor() as pool:

        async def raw_map() -> float:
            gc.collect()
            t0 = perf()
            futures = [pool.submit(function, i) for i in range(items)]
            took = (perf() - t0) / items
            await asyncio.gather(*map(asyncio.wrap_future, futures))
            return took

        await ours_map(next(counter))
        await raw_map()
        ours, base = [], []
        for _ in range(p["turns"]):
            ours.append(await ours_map(next(counter)))
            base.append(await raw_map())
    out["map"] = {"ours": ours, "base": base, "items": items}

    # compile() calls for a whole map, N items and 2N: counted by an audit hook, which
    # stays for the rest of the kernel's life (so this comes last)
    calls = {"on": False, "n": 0}

    def audit(event: str, args: Any) -> None:
        if event == "compile" and calls["on"]:
            calls["n"] += 1

    sys.addaudithook(audit)
    compiles = []
    for count in (items, 2 * items):
        calls["on"], calls["n"] = True, 0
        # an expression not seen before either time (what was analysed once is not again)
        await ours_map(next(counter), count, f"range({count} + 0 * {count})")
        calls["on"] = False
        compiles.append(calls["n"])
    out["map"]["compiles"] = compiles
    return out


async def kernel_value_setup(p: dict[str, Any]) -> dict[str, Any]:
    """Make the array and the DataFrame in the kernel; start the worker pool; one warm-up
    transfer of each, small."""
    import numpy as np

    import ipytasks

    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - the kernel's shell
    ip.user_ns["small"] = np.ones(1000)
    ipytasks.submit("out = small", "value_warm", quiet=True, mode="process")
    await ipytasks.wait("value_warm")
    ip.user_ns.pop("out", None)
    ip.user_ns.pop("small", None)
    before = _rss_kib("VmRSS")
    ip.user_ns["arr"] = np.ones(p["mib"] * 2**20 // 8)
    after = _rss_kib("VmRSS")
    return {"rss_before_kib": before, "rss_arr_kib": after,
            "arr_bytes": ip.user_ns["arr"].nbytes}


async def kernel_frame_setup(p: dict[str, Any]) -> dict[str, Any]:
    """Drop the array, make the DataFrame."""
    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - the kernel's shell
    ip.user_ns.pop("arr", None)
    ip.user_ns["df"] = make_frame(p["rows"])
    return {}


async def kernel_value_trial(p: dict[str, Any]) -> dict[str, Any]:
    """One round trip of ``p['name']`` (``arr`` or ``df``) through a process cell."""
    import gc

    import ipytasks

    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - the kernel's shell
    value = p["name"]
    ip.user_ns.pop("out", None)
    gc.collect()
    task = f"ship_{value}_{p['turn']}"
    _reset_peak()
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    ipytasks.submit(f"out = {value}", task, quiet=True, mode="process")
    await ipytasks.wait(task)
    took = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    back, sent = ip.user_ns["out"], ip.user_ns[value]
    if len(back) != len(sent) or back is sent:
        raise RuntimeError(f"{value} came back wrong: {type(back)} of {len(back)}")
    ip.user_ns.pop("out", None)
    return {"s": took, "peak_kib": peak, "before_kib": before}


# -- this process: Dask and the ceiling ----------------------------------------------------


def _identity(value: Any) -> Any:
    return value


#: The other raw process of the ceiling: copies segment 1 into an array of its own, and
#: that array into segment 2, each time it is told to.
_CEILING_CHILD = """\
import mmap, os, sys
import numpy as np
one, two, cmd, reply, size = map(int, sys.argv[1:])
segments = [mmap.mmap(fd, size) for fd in (one, two)]
views = [np.frombuffer(m, dtype=np.uint8) for m in segments]
for view in views:
    view[:] = 0  # pre-faulted: every page of both segments mapped here
os.write(reply, b"r")
while os.read(cmd, 1):
    mine = np.empty(size, dtype=np.uint8)
    np.copyto(mine, views[0])
    np.copyto(views[1], mine)
    del mine
    os.write(reply, b"d")
"""


class Ceiling:
    """Two raw processes and two pre-faulted shared-memory segments (Linux ``memfd``)."""

    def __init__(self, size: int) -> None:
        import mmap

        import numpy as np

        self.size = size
        self.fds = [os.memfd_create("ipytasks-bench-ceiling") for _ in range(2)]
        for fd in self.fds:
            os.ftruncate(fd, size)
        self.maps = [mmap.mmap(fd, size) for fd in self.fds]
        self.views = [np.frombuffer(m, dtype=np.uint8) for m in self.maps]
        for view in self.views:
            view[:] = 0
        cmd_r, self.cmd = os.pipe()
        self.reply, reply_w = os.pipe()
        self.child = subprocess.Popen(
            [sys.executable, "-c", _CEILING_CHILD, *map(str, self.fds), str(cmd_r), str(reply_w),
             str(size)],
            pass_fds=(*self.fds, cmd_r, reply_w),
        )
        os.close(cmd_r)
        os.close(reply_w)
        if os.read(self.reply, 1) != b"r":
            raise RuntimeError("the ceiling's child did not start")

    def trial(self, arr: Any) -> float:
        import numpy as np

        data = arr.view(np.uint8).reshape(-1)
        t0 = time.perf_counter()
        np.copyto(self.views[0], data)
        os.write(self.cmd, b"g")
        if os.read(self.reply, 1) != b"d":
            raise RuntimeError("the ceiling's child died")
        back = np.empty(self.size, dtype=np.uint8)
        np.copyto(back, self.views[1])
        took = time.perf_counter() - t0
        if back[-1] != data[-1]:
            raise RuntimeError("the ceiling lost bytes")
        return took

    def close(self) -> None:
        os.close(self.cmd)
        self.child.wait(30)
        os.close(self.reply)
        self.views.clear()
        for m in self.maps:
            m.close()
        for fd in self.fds:
            os.close(fd)


def _dask_trial(client: Any, value: Any) -> float:
    t0 = time.perf_counter()
    back = client.submit(_identity, value, pure=False).result()
    took = time.perf_counter() - t0
    if len(back) != len(value):
        raise RuntimeError("Dask sent back another value")
    return took


def values(p: dict[str, Any], kernel: BenchKernel) -> dict[str, Any]:
    """The array and the DataFrame, turn about: ipytasks in the kernel, Dask, the ceiling."""
    import numpy as np

    out: dict[str, Any] = {}
    setup = kernel.bench("bench_speed", "kernel_value_setup", p)
    out.update(setup)
    arr = np.ones(p["mib"] * 2**20 // 8)

    def ours(name: str, turn: int | str) -> dict[str, Any]:
        return kernel.bench("bench_speed", "kernel_value_trial", {"name": name, "turn": turn})

    try:
        import distributed
        from distributed import Client, LocalCluster
    except ImportError:
        cluster = client = None
        out["dask_unavailable"] = "pip install distributed"
    else:
        out["dask_version"] = distributed.__version__
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1",
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        client.wait_for_workers(2, timeout=120)
    try:
        ceiling: Ceiling | None = Ceiling(int(arr.nbytes))
    except (AttributeError, OSError) as exc:  # no memfd_create: not Linux
        ceiling = None
        out["ceiling_unavailable"] = f"{type(exc).__name__}: {exc}"
    try:
        with warnings.catch_warnings():
            # "Large object of size … detected in task graph": that is the point here.
            warnings.simplefilter("ignore")
            # warm-up turn of each, uncounted
            ours("arr", "warm")
            if client is not None:
                _dask_trial(client, arr)
            if ceiling is not None:
                ceiling.trial(arr)
            series: dict[str, list[Any]] = {"arr": [], "arr_dask": [], "ceiling": [],
                                            "df": [], "df_dask": []}
            for turn in range(p["turns"]):
                series["arr"].append(ours("arr", turn))
                if client is not None:
                    series["arr_dask"].append(_dask_trial(client, arr))
                if ceiling is not None:
                    series["ceiling"].append(ceiling.trial(arr))
            # The DataFrame only now, here as in the kernel: its millions of strings
            # would make every garbage collection of the array's turns slower.
            del arr
            frame = make_frame(p["rows"])
            out["frame_bytes"] = int(frame.memory_usage(deep=True).sum())
            kernel.bench("bench_speed", "kernel_frame_setup", p)
            ours("df", "warm")
            if client is not None:
                _dask_trial(client, frame)
            for turn in range(p["turns"]):
                series["df"].append(ours("df", turn))
                if client is not None:
                    series["df_dask"].append(_dask_trial(client, frame))
    finally:
        if ceiling is not None:
            ceiling.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    out.update(series)
    return out


def run(quick: bool) -> dict[str, Any]:
    p = params(quick)
    result: dict[str, Any] = {"params": p}
    with BenchKernel() as kernel:
        kernel.execute("%load_ext ipytasks", timeout=60)
        try:
            result["overheads"] = kernel.bench("bench_speed", "kernel_overheads", p, timeout=1200)
        except Exception as exc:  # noqa: BLE001 - said in the table
            result["overheads"] = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            result["values"] = values(p, kernel)
        except Exception as exc:  # noqa: BLE001 - said in the table
            result["values"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


# -- the table -----------------------------------------------------------------------------


def judge(median: float, low: float, high: float, goal: float, at_most: bool) -> str:
    """``yes``/``NO`` on the median; a median that meets the goal by less than its spread
    on the goal's side (the interquartile range reaches past the goal) is ``unclear``, not
    a pass."""
    if not (median <= goal if at_most else median >= goal):
        return MISSED
    return UNCLEAR if (high > goal if at_most else low < goal) else OK


def _fmt_spread(values: list[float], fmt: Any) -> str:
    low, high = spread(values)
    return f"{fmt(statistics.median(values))} ({fmt(low)}–{fmt(high)})"


def paired_row(measure: str, ours: list[float], base: list[float], base_label: str,
               goal: float, goal_text: str, fmt: Any = fmt_time, at_most: bool = True,
               inverse: bool = False) -> Row:
    """A row of paired turns: the ratio of each pair (ours ÷ base; base ÷ ours with
    ``inverse``), its median and spread judged against ``goal``."""
    ratios = [b / a if inverse else a / b for a, b in zip(ours, base, strict=True)]
    low, high = spread(ratios)
    median = statistics.median(ratios)
    label = f"{measure} (median of {len(ours)}, {spread_label(len(ours))})"
    return (label, _fmt_spread(ours, fmt), f"{base_label} {_fmt_spread(base, fmt)}",
            f"{fmt_ratio(median)} ({low:.2f}–{high:.2f})", goal_text,
            judge(median, low, high, goal, at_most))


def absolute_row(measure: str, ours: list[float], base: list[float], base_label: str,
                 goal: float, goal_text: str, fmt: Any = fmt_time) -> Row:
    """A row held to an absolute goal on ours (the baseline beside it, for scale)."""
    low, high = spread(ours)
    median = statistics.median(ours)
    ratios = [a / b for a, b in zip(ours, base, strict=True)]
    label = f"{measure} (median of {len(ours)}, {spread_label(len(ours))})"
    return (label, _fmt_spread(ours, fmt), f"{base_label} {_fmt_spread(base, fmt)}",
            fmt_ratio(statistics.median(ratios)), goal_text,
            judge(median, low, high, goal, True))


def each_submission(submit: dict[str, Any]) -> str:
    """The submissions one by one: how many, their median and spread."""
    each = submit.get("each") or submit["ours"]
    low, high = spread(each)
    return (f"{len(each)} submissions one by one: {fmt_time(statistics.median(each))}, "
            f"IQR {fmt_time(low)}–{fmt_time(high)}")


def rows(r: dict[str, Any]) -> list[Row]:
    return value_rows(r) + overhead_rows(r)


def overhead_rows(r: dict[str, Any]) -> list[Row]:
    o = r["overheads"]
    if "error" in o:
        return [error_row("submission, thread, process and --map overheads (bench_speed.py)",
                          o["error"])]
    us = "µs"

    def per_item(seconds: float) -> str:
        return f"{seconds * 1e6:.1f} {us}"

    table = [
        absolute_row("%%parallel submission, status line shown; each turn's median "
                     f"({each_submission(o['submit'])})", o["submit"]["ours"],
                     o["submit"]["base"], "display() of one output", GOAL_SUBMIT, "≤ 0.3 ms"),
        paired_row("thread mode: a trivial task submitted and awaited alone",
                   o["thread_rt"]["ours"], o["thread_rt"]["base"], "ThreadPoolExecutor",
                   GOAL_THREAD_RT, "≤ 1.3× raw pool"),
        paired_row(f"thread mode: batch of {r['params']['batch']:,} trivial tasks, per task",
                   o["thread_batch"]["ours"], o["thread_batch"]["base"], "ThreadPoolExecutor",
                   GOAL_THREAD_BATCH, "≤ 1× raw pool (below it)"),
    ]
    pb = o["process_batch"]
    measure = f"process mode: batch of {r['params']['batch']:,} trivial tasks, per task"
    if "unavailable" in pb:
        table.append(unavailable_row(measure, pb["unavailable"]))
    else:
        table.append(paired_row(measure, pb["ours"], pb["base"],
                                f"ProcessPoolExecutor({pb['workers']})", GOAL_PROCESS,
                                "≤ 1.5× raw pool"))
    m = o["map"]
    compiles = m.get("compiles", [])
    once = len(compiles) == 2 and compiles[0] == compiles[1]
    note = (f"; compile() ran {compiles[0]}× for {m['items']:,} items, {compiles[1]}× for "
            f"{2 * m['items']:,}" if compiles else "")
    row = absolute_row(f"--map over {m['items']:,} items: submitted, per item{note}",
                       m["ours"], m["base"], "ThreadPoolExecutor.submit", GOAL_MAP,
                       "≤ 20 µs; compiles as many for 2N items as for N", fmt=per_item)
    if not once and row[5] == OK:
        row = (*row[:5], MISSED)
    table.append(row)
    return table


def value_rows(r: dict[str, Any]) -> list[Row]:
    v = r["values"]
    p = r["params"]
    mib = p["mib"]
    arr_label = f"{mib} MiB NumPy array to a --process worker and back"
    if "error" in v:
        return [error_row(arr_label, v["error"])]

    def gbps(speed: float) -> str:
        return f"{speed / 1e9:.2f} GB/s"

    size = v["arr_bytes"]

    def speeds(seconds: list[float]) -> list[float]:
        return [2 * size / s for s in seconds]  # in and out

    ours = speeds([t["s"] for t in v["arr"]])
    table: list[Row] = []
    if "dask_unavailable" in v:
        table.append(unavailable_row(f"{arr_label}, vs Dask", v["dask_unavailable"]))
    else:
        table.append(paired_row(
            f"{arr_label}, vs Dask client.submit on a LocalCluster", ours,
            speeds(v["arr_dask"]), "Dask", GOAL_DASK, "≥ 1.5× Dask", fmt=gbps, at_most=False))
    if "ceiling_unavailable" in v:
        table.append(unavailable_row(f"{arr_label}, vs the ceiling", v["ceiling_unavailable"]))
    else:
        table.append(paired_row(
            f"{arr_label}, vs the ceiling (two raw processes, pre-faulted shared memory)",
            ours, speeds(v["ceiling"]), "ceiling", GOAL_CEILING, "≤ 2× the ceiling's time",
            fmt=gbps, inverse=True))
    growth = [(t["peak_kib"] - v["rss_arr_kib"]) * 1024 / size for t in v["arr"]]
    low, high = spread(growth)
    median = statistics.median(growth)
    table.append((
        f"kernel peak RSS during the {mib} MiB round trip, above the kernel with the array "
        f"in it, ÷ the array (the copy that comes back is 1.0) (median of {len(growth)}, "
        f"{spread_label(len(growth))})",
        f"{median:.2f}× ({low:.2f}–{high:.2f})", f"array {size / 2**20:.0f} MiB", "",
        "≤ 1.3×", judge(median, low, high, GOAL_RSS, True)))
    frame_label = f"DataFrame {p['rows']:,} rows × 10 columns (5 numbers, 5 strings), to a " \
        "--process worker and back, vs Dask"
    if "dask_unavailable" in v:
        table.append(unavailable_row(frame_label, v["dask_unavailable"]))
    else:
        table.append(paired_row(frame_label, [t["s"] for t in v["df"]], v["df_dask"], "Dask",
                                GOAL_DASK, "≥ 1.5× Dask", at_most=False, inverse=True))
    return table


if __name__ == "__main__":
    from bench_scenarios import command_line

    command_line(__doc__, "small sizes and counts", run, rows)

"""Per-task overhead and array shipping: ipytasks against raw pools, ipyparallel and Dask.

    python bench/bench_peers.py [--quick] [--json]

The same trivial task, the cell ``1 + 1;`` (the function-based systems run ``exec("1 + 1;", {})``),
through every system, in one run. The semicolon keeps the value from being shown, as IPython
does for a cell: the function-based systems show nothing either, so every system does the same
work. What showing a value adds (IPython's display formatter, as for any cell's ``Out``) is
measured once more for async mode with ``1 + 1``:

- ipytasks ``async``, ``thread`` and ``process`` modes (``ipytasks.submit(..., quiet=True)``),
  inside a real ipykernel started from this Python through jupyter_client, next to what each
  mode stands on, in the same kernel: asyncio tasks, a ``ThreadPoolExecutor``, a
  ``ProcessPoolExecutor(2)`` (spawn). The raw pools are awaited on the kernel's loop
  (``asyncio.wrap_future``), as a cell that must not block the kernel would use them;
- ipyparallel on a local cluster over loopback (``ipyparallel.Cluster(n=2)``, started and stopped
  here): a load-balanced view's ``apply_async``, and ``rc[:].execute(code, block=False)``, which
  is what ``%%px --noblock`` sends (on both engines);
- Dask: ``client.submit`` on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  on 127.0.0.1, no dashboard.

Two figures each: a batch (N tasks submitted back to back, then all awaited; wall time / N) and a
round trip (one task submitted and awaited, the median of many). Then the throughput of shipping
a 200 MiB float64 array to a worker and back (``out = arr`` in a process cell; ``np.asarray`` as
the identity function elsewhere), best of a few.

The ipytasks figures come first and the kernel is shut down before the peers start, so nothing
of one competes with the other; then all of it once more, and each figure is the best of its two
turns (the machine's speed drifts over minutes). A peer that is not installed is reported as
not available. ``--quick``: one turn, 100-task batches, 30 round trips, a 20 MiB array.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from typing import Any

from bench_scenarios import (
    NO_GOAL,
    BenchKernel,
    Row,
    error_row,
    fmt_ratio,
    fmt_time,
    unavailable_row,
    verdict,
)

TRIVIAL = "1 + 1;"
#: The same cell with its value shown in the task's output area (the formatter's cost).
SHOWN = "1 + 1"
GOAL_IPP = 50.0  # ipyparallel ÷ ipytasks in-kernel, per task
GOAL_DASK = 10.0  # Dask ÷ ipytasks in-kernel, per task
GOAL_PROCESS = 3.0  # ipytasks process ÷ raw process pool
GOAL_ARRAY = 0.5  # ipytasks process throughput ÷ raw process pool's (bench_process.py's goal)


def params(quick: bool) -> dict[str, Any]:
    return {
        "n": 100 if quick else 1000,
        "batches": 2 if quick else 3,
        "round_trips": 30 if quick else 200,
        "mib": 20 if quick else 200,
        "array_repeat": 2 if quick else 3,
        "rounds": 1 if quick else 2,
    }


# -- inside the kernel ---------------------------------------------------------------------


async def kernel_peers(p: dict[str, Any]) -> dict[str, Any]:
    """ipytasks and the raw pools, in the kernel (called through ``BenchKernel.bench``)."""
    import asyncio
    import concurrent.futures
    import multiprocessing

    import ipytasks

    perf = time.perf_counter
    n, batches, m = p["n"], p["batches"], p["round_trips"]
    counter = iter(range(10**9))
    out: dict[str, Any] = {}

    async def ours_batch(mode: str, code: str = TRIVIAL) -> float:
        k = next(counter)
        names = [f"{mode}{k}_{i}" for i in range(n)]
        t0 = perf()
        for name in names:
            ipytasks.submit(code, name, quiet=True, mode=mode)
        await ipytasks.wait(*names)
        return (perf() - t0) / n

    async def ours_round_trip(mode: str) -> float:
        times = []
        for _ in range(m):
            name = f"{mode}_rt{next(counter)}"
            t0 = perf()
            ipytasks.submit(TRIVIAL, name, quiet=True, mode=mode)
            await ipytasks.wait(name)
            times.append(perf() - t0)
        return statistics.median(times)

    def check(names: list[str]) -> None:
        bad = [name for name in names if ipytasks.tasks[name].state != "done"]
        if bad:
            record = ipytasks.tasks[bad[0]]
            raise RuntimeError(f"task {bad[0]} ended {record.state}: {record.error!r}")

    async def body() -> None:
        exec(TRIVIAL, {})  # noqa: S102 - the same cell, without ipytasks

    async def raw_async_batch() -> float:
        t0 = perf()
        await asyncio.gather(*[asyncio.ensure_future(body()) for _ in range(n)])
        return (perf() - t0) / n

    async def raw_async_round_trip() -> float:
        times = []
        for _ in range(m):
            t0 = perf()
            await asyncio.ensure_future(body())
            times.append(perf() - t0)
        return statistics.median(times)

    async def raw_pool_batch(pool: concurrent.futures.Executor) -> float:
        t0 = perf()
        await asyncio.gather(*[asyncio.wrap_future(pool.submit(exec, TRIVIAL, {})) for _ in range(n)])
        return (perf() - t0) / n

    async def raw_pool_round_trip(pool: concurrent.futures.Executor) -> float:
        times = []
        for _ in range(m):
            t0 = perf()
            await asyncio.wrap_future(pool.submit(exec, TRIVIAL, {}))
            times.append(perf() - t0)
        return statistics.median(times)

    async def figures(key: str, batch: Any, round_trip: Any) -> None:
        await batch()  # warm up
        out[f"{key}_batch"] = min([await batch() for _ in range(batches)])
        out[f"{key}_rt"] = await round_trip()

    # ipytasks, in-kernel modes
    for mode in ("async", "thread"):
        await figures(mode, lambda mode=mode: ours_batch(mode), lambda mode=mode: ours_round_trip(mode))
    await ours_batch("async", SHOWN)  # warm up
    out["shown_batch"] = min([await ours_batch("async", SHOWN) for _ in range(batches)])
    check([name for name in ipytasks.tasks])
    # ipytasks, process mode (its pool starts on first use: warmed up by the first batch)
    try:
        import ipytasks.modes._process  # only to say why when it is missing

        await figures("process", lambda: ours_batch("process"), lambda: ours_round_trip("process"))
        check([name for name in ipytasks.tasks if name.startswith("process")])
    except Exception as exc:  # noqa: BLE001 - said in the table
        out["process_unavailable"] = f"{type(exc).__name__}: {exc}"

    # the raw baselines
    await figures("raw_async", raw_async_batch, raw_async_round_trip)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        await figures("raw_thread", lambda: raw_pool_batch(pool), lambda: raw_pool_round_trip(pool))
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as pool:
        await figures("raw_process", lambda: raw_pool_batch(pool), lambda: raw_pool_round_trip(pool))

        # the array, through a raw process pool and through process mode
        try:
            import numpy as np
        except ImportError:
            out["array_unavailable"] = "pip install numpy"
            return out
        arr = np.ones(p["mib"] * 2**20 // 8)
        best = float("inf")
        for _ in range(p["array_repeat"]):
            t0 = perf()
            back = await asyncio.wrap_future(pool.submit(np.asarray, arr))
            best = min(best, perf() - t0)
            assert back.shape == arr.shape
            del back
        out["array_raw_s"] = best
    out["array_mib"] = arr.nbytes / 2**20
    if "process_unavailable" in out:
        return out
    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - the kernel's shell
    ip.user_ns["arr"] = arr
    best = float("inf")
    try:
        for i in range(p["array_repeat"]):
            ip.user_ns.pop("out", None)
            t0 = perf()
            ipytasks.submit("out = arr", f"array{i}", quiet=True, mode="process")
            await ipytasks.wait(f"array{i}")
            best = min(best, perf() - t0)
            if ip.user_ns["out"].shape != arr.shape:
                raise RuntimeError("the array came back with another shape")
        out["array_s"] = best
    except Exception as exc:  # noqa: BLE001 - process mode failing is said in the table
        out["array_process_unavailable"] = f"{type(exc).__name__}: {exc}"
    finally:
        ip.user_ns.pop("out", None)
        ip.user_ns.pop("arr", None)
    return out


# -- the peers, in this process ------------------------------------------------------------


def _batch(submit: Any, wait: Any, n: int, batches: int) -> float:
    def one() -> float:
        t0 = time.perf_counter()
        wait([submit() for _ in range(n)])
        return (time.perf_counter() - t0) / n

    one()  # warm up
    return min(one() for _ in range(batches))


def _round_trip(call: Any, m: int) -> float:
    times = []
    for _ in range(m):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _array(ship: Any, p: dict[str, Any]) -> float | None:
    try:
        import numpy as np
    except ImportError:
        return None
    arr = np.ones(p["mib"] * 2**20 // 8)
    best = float("inf")
    for _ in range(p["array_repeat"]):
        t0 = time.perf_counter()
        back = ship(np.asarray, arr)
        best = min(best, time.perf_counter() - t0)
        assert back.shape == arr.shape
        del back
    return best


def ipyparallel_figures(p: dict[str, Any]) -> dict[str, Any]:
    try:
        import ipyparallel as ipp
    except ImportError:
        return {"unavailable": "pip install ipyparallel"}
    out: dict[str, Any] = {"version": ipp.__version__}
    profile_dir = tempfile.mkdtemp(prefix="ipytasks-bench-ipp-")
    t0 = time.perf_counter()
    cluster = ipp.Cluster(
        n=2, profile_dir=profile_dir, controller_ip="127.0.0.1", log_level=logging.WARNING,
        cluster_id="ipytasks-bench", shutdown_atexit=True,
    )
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(2, timeout=120)
        out["start_s"] = time.perf_counter() - t0
        lv = rc.load_balanced_view()
        dv = rc[:]
        n, batches, m = p["n"], p["batches"], p["round_trips"]
        out["lb_batch"] = _batch(lambda: lv.apply_async(exec, TRIVIAL, {}), rc.wait, n, batches)
        out["lb_rt"] = _round_trip(lambda: lv.apply_async(exec, TRIVIAL, {}).get(), m)
        out["px_batch"] = _batch(lambda: dv.execute(TRIVIAL, block=False), rc.wait, n, batches)
        out["px_rt"] = _round_trip(lambda: dv.execute(TRIVIAL, block=False).get(), m)
        out["array_s"] = _array(lambda fn, a: lv.apply_sync(fn, a), p)
    finally:
        if rc is not None:
            rc.close()
        cluster.stop_cluster_sync()
        import shutil

        shutil.rmtree(profile_dir, ignore_errors=True)
    return out


def dask_figures(p: dict[str, Any]) -> dict[str, Any]:
    try:
        import distributed
        from distributed import Client, LocalCluster
    except ImportError:
        return {"unavailable": "pip install distributed"}
    out: dict[str, Any] = {"version": distributed.__version__}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # "Large object of size 200 MiB detected in task graph": that is the point here.
        warnings.simplefilter("ignore")
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            host="127.0.0.1", silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            out["start_s"] = time.perf_counter() - t0
            n, batches, m = p["n"], p["batches"], p["round_trips"]
            def submit() -> Any:
                return client.submit(exec, TRIVIAL, {}, pure=False)

            out["batch"] = _batch(submit, distributed.wait, n, batches)
            out["rt"] = _round_trip(lambda: submit().result(), m)
            out["array_s"] = _array(lambda fn, a: client.submit(fn, a, pure=False).result(), p)
    return out


def run(quick: bool) -> dict[str, Any]:
    """Every system measured, in turns: ``rounds`` times round all of them, and per figure
    the best of its turns. The machine's speed drifts over minutes; measuring each system
    once would compare ipytasks at one moment with ipyparallel at another."""
    p = params(quick)
    result: dict[str, Any] = {"params": p, "quick": quick}
    turns: dict[str, list[dict[str, Any]]] = {"ipytasks": [], "ipyparallel": [], "dask": []}
    for _ in range(p["rounds"]):
        try:
            with BenchKernel() as kernel:
                kernel.execute("%load_ext ipytasks", timeout=60)
                turns["ipytasks"].append(kernel.bench("bench_peers", "kernel_peers", p))
        except Exception as exc:  # noqa: BLE001 - said in the table
            turns["ipytasks"].append({"error": f"{type(exc).__name__}: {exc}"})
        for key, figures in (("ipyparallel", ipyparallel_figures), ("dask", dask_figures)):
            try:
                turns[key].append(figures(p))
            except Exception as exc:  # noqa: BLE001 - said in the table
                turns[key].append({"error": f"{type(exc).__name__}: {exc}"})
    for key, measured in turns.items():
        result[key] = _best(measured)
    return result


def _best(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """The turns of one system as one: each time, the least of the turns that ran
    (every figure is seconds); an error only when every turn failed."""
    ran = [t for t in turns if "error" not in t and "unavailable" not in t] or turns[:1]
    best = dict(ran[0])
    for turn in ran[1:]:
        for key, value in turn.items():
            if isinstance(value, float) and isinstance(best.get(key), float):
                best[key] = min(best[key], value)
    return best


# -- the table -----------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[Row]:
    return overhead_rows(r) + array_rows(r)


def overhead_rows(r: dict[str, Any]) -> list[Row]:
    p = r["params"]
    n, m = p["n"], p["round_trips"]
    ours = r["ipytasks"]
    table: list[Row] = []

    def add(measure: str, a: str, b: str, ratio: str, goal: str, ok: bool | None) -> None:
        table.append((measure, a, b, ratio, goal, verdict(ok)))

    kinds = (("batch", f"batch of {n:,}, per task"), ("rt", f"round trip (median of {m})"))
    if "error" in ours:
        table.append(error_row("per-task overhead, ipytasks in a kernel", ours["error"]))
        return table + peer_rows(r, None)
    for mode, raw, raw_label in (
        ("async", "raw_async", "asyncio task"),
        ("thread", "raw_thread", "ThreadPoolExecutor"),
        ("process", "raw_process", "ProcessPoolExecutor(2)"),
    ):
        for kind, label in kinds:
            measure = f"trivial task, {mode} mode: {label}"
            if mode == "process" and "process_unavailable" in ours:
                table.append(unavailable_row(measure, ours["process_unavailable"]))
                continue
            x, base = ours[f"{mode}_{kind}"], ours[f"{raw}_{kind}"]
            goal, ok = ("", None)
            if mode == "process":
                goal, ok = f"≤ {GOAL_PROCESS:g}× raw pool", x / base <= GOAL_PROCESS
            add(measure, fmt_time(x), f"{raw_label} {fmt_time(base)}", fmt_ratio(x / base), goal or NO_GOAL, ok)
    if "shown_batch" in ours:
        x, base = ours["shown_batch"], ours["async_batch"]
        add(f"task showing its value ({SHOWN}), async mode: batch of {n:,}, per task", fmt_time(x),
            f"{TRIVIAL} {fmt_time(base)}", fmt_ratio(x / base), NO_GOAL, None)
    return table + peer_rows(r, ours)


def peer_rows(r: dict[str, Any], ours: dict[str, Any] | None) -> list[Row]:
    p = r["params"]
    n, m = p["n"], p["round_trips"]
    table: list[Row] = []
    peers = (
        ("ipyparallel", "lb", "ipyparallel load-balanced view.apply_async", GOAL_IPP, "pip install ipyparallel"),
        ("ipyparallel", "px", "ipyparallel %%px --noblock (as rc[:].execute(code, block=False))",
         GOAL_IPP, "pip install ipyparallel"),
        ("dask", "", "Dask client.submit, LocalCluster(2 procs)", GOAL_DASK, "pip install distributed"),
    )
    for key, prefix, label, goal, pip in peers:
        fig = r.get(key, {})
        for kind, kind_label in (("batch", f"batch of {n:,}, per task"), ("rt", f"round trip (median of {m})")):
            measure = f"{label}: {kind_label}"
            if "unavailable" in fig:
                table.append(unavailable_row(measure, fig["unavailable"] or pip))
                continue
            if "error" in fig:
                table.append(error_row(measure, fig["error"]))
                continue
            theirs = fig[f"{prefix}_{kind}" if prefix else kind]
            if ours is None:
                table.append((measure, "", fmt_time(theirs), "", f"≥ {goal:g}× cheaper", NO_GOAL))
                continue
            a, t = ours[f"async_{kind}"], ours[f"thread_{kind}"]
            table.append((
                f"{measure}, vs async mode",
                fmt_time(a),
                fmt_time(theirs),
                f"{fmt_ratio(theirs / a)} cheaper",
                f"ipytasks ≥ {goal:g}× cheaper",
                verdict(theirs / a >= goal),
            ))
            # Thread mode costs at least what a thread hand-off costs: the raw pool's own ratio
            # is the most any thread-based mode could show, so it is printed beside it.
            raw = ours.get(f"raw_thread_{kind}")
            bound = f" (raw thread pool {fmt_ratio(theirs / raw)})" if raw else ""
            table.append((
                f"{measure}, vs thread mode",
                fmt_time(t),
                fmt_time(theirs) + bound,
                f"{fmt_ratio(theirs / t)} cheaper",
                f"ipytasks ≥ {goal:g}× cheaper",
                verdict(theirs / t >= goal),
            ))
    return table


def array_rows(r: dict[str, Any]) -> list[Row]:
    ours = r["ipytasks"]
    mib = r["params"]["mib"]
    measure = f"{mib} MiB array to a worker and back, --process"
    if "error" in ours:
        return [error_row(measure, ours["error"])]
    if "array_unavailable" in ours:
        return [unavailable_row(measure, ours["array_unavailable"])]
    for key in ("process_unavailable", "array_process_unavailable"):
        if key in ours:
            return [unavailable_row(measure, ours[key])]

    def tp(seconds: float) -> float:
        return 2 * mib / seconds

    x = tp(ours["array_s"])
    raw = tp(ours["array_raw_s"])
    table: list[Row] = [(
        measure, f"{x:.0f} MiB/s", f"ProcessPoolExecutor(2) {raw:.0f} MiB/s",
        f"{fmt_ratio(x / raw)} raw", f"≥ {GOAL_ARRAY:g}× raw pool", verdict(x / raw >= GOAL_ARRAY),
    )]
    for key, label, pip in (
        ("ipyparallel", "ipyparallel apply_sync", "pip install ipyparallel"),
        ("dask", "Dask client.submit(…).result()", "pip install distributed"),
    ):
        fig = r.get(key, {})
        m = f"{mib} MiB array: vs {label}"
        if "unavailable" in fig:
            table.append(unavailable_row(m, fig["unavailable"] or pip))
        elif "error" in fig:
            table.append(error_row(m, fig["error"]))
        elif fig.get("array_s") is None:
            table.append(unavailable_row(m, "pip install numpy"))
        else:
            theirs = tp(fig["array_s"])
            table.append((m, f"{x:.0f} MiB/s", f"{theirs:.0f} MiB/s", f"{fmt_ratio(x / theirs)}",
                          NO_GOAL, NO_GOAL))
    return table


if __name__ == "__main__":
    from bench_scenarios import command_line

    command_line(__doc__, "small batches, a 20 MiB array", run, rows)

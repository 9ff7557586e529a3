"""Core overheads of ipytasks, measured inside a real ipykernel, with baselines from the same run.

    python bench/bench_core.py [--quick]

Prints one table: each figure beside its baseline and the goal it is held to.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from jupyter_client.manager import start_new_kernel

# Runs inside the kernel; prints one JSON line.
KERNEL_CODE = textwrap.dedent(
    """
    import asyncio, gc, json, statistics, time, tracemalloc
    from concurrent.futures import ThreadPoolExecutor
    import ipytasks
    ip = get_ipython()
    N, SLEEP, N_ASYNC, N_THREAD = {n}, {sleep}, {n_async}, {n_thread}
    out = {{}}

    def median_ms(fn, n):
        times = []
        for i in range(n):
            t0 = time.perf_counter(); fn(i); times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    # 1. one submission through the magic, as a user types it (status line shown) and --quiet
    ip.run_cell_magic("parallel", "warmup", "1")
    out["magic_visible_ms"] = median_ms(lambda i: ip.run_cell_magic("parallel", f"v{{i}}", "1"), 200)
    out["magic_quiet_ms"] = median_ms(lambda i: ip.run_cell_magic("parallel", f"q{{i}} --quiet", "1"), 200)
    await ipytasks.wait()

    # 2. N trivial tasks on the loop (async mode) end to end, against the same cell run
    #    N times by IPython's run_cell (which cannot nest an await cell in a running kernel)
    cell = "x = 1"
    t0 = time.perf_counter()
    for i in range(N):
        ip.run_cell(cell, store_history=False, silent=True)
    out["run_cell_us"] = (time.perf_counter() - t0) / N * 1e6
    t0 = time.perf_counter()
    for i in range(N):
        ipytasks.submit(cell, f"t{{i}}", quiet=True, mode="async")
    await ipytasks.wait(*(f"t{{i}}" for i in range(N)))
    out["submit_us"] = (time.perf_counter() - t0) / N * 1e6

    # 3. memory per finished quiet task (its record, output and compiled cell)
    gc.collect(); tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(N):
        ipytasks.submit("x = 1", f"m{{i}}", quiet=True, mode="async")
    await ipytasks.wait(*(f"m{{i}}" for i in range(N)))
    gc.collect()
    after = tracemalloc.take_snapshot(); tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    out["bytes_per_task"] = grown / N

    # 4. inference: submitting N tasks with dependencies inferred, against --no-infer
    for k in range(50):
        ip.user_ns[f"u{{k}}"] = k
    for infer, key in ((False, "noinfer_us"), (True, "infer_us")):
        # Distinct text per variant: a cell submitted twice is compiled and analysed once.
        v = "vi" if infer else "vn"
        cells = [f"{{v}}{{i}} = u{{i % 50}} + len(str({{v}}{{i - 1}} if {{i}} else 0))" for i in range(N)]
        t0 = time.perf_counter()
        for i, cell in enumerate(cells):
            ipytasks.submit(cell, f"inf{{int(infer)}}_{{i}}", quiet=True, mode="async", infer=infer)
        out[key] = (time.perf_counter() - t0) / N * 1e6
        await ipytasks.wait(*(f"inf{{int(infer)}}_{{i}}" for i in range(N)))

    # 5. overlap: N_ASYNC async sleeps and N_THREAD blocking sleeps, against raw asyncio / threads
    t0 = time.perf_counter()
    await asyncio.gather(*(asyncio.sleep(SLEEP) for _ in range(N_ASYNC)))
    out["raw_gather_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(N_ASYNC):
        ipytasks.submit(f"await asyncio.sleep({{SLEEP}})", f"s{{i}}", quiet=True)
    await ipytasks.wait(*(f"s{{i}}" for i in range(N_ASYNC)))
    out["async_overlap_s"] = time.perf_counter() - t0
    with ThreadPoolExecutor(N_THREAD) as pool:
        t0 = time.perf_counter()
        list(pool.map(time.sleep, [SLEEP] * N_THREAD))
        out["raw_threads_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(N_THREAD):
        ipytasks.submit(f"time.sleep({{SLEEP}})", f"b{{i}}", quiet=True)
    await ipytasks.wait(*(f"b{{i}}" for i in range(N_THREAD)))
    out["thread_overlap_s"] = time.perf_counter() - t0
    print("BENCH " + json.dumps(out))
    """
)


def run(quick: bool) -> dict[str, float]:
    params = dict(n=100, sleep=0.2, n_async=20, n_thread=8) if quick else dict(
        n=1000, sleep=1.0, n_async=100, n_thread=20
    )
    km, kc = start_new_kernel(kernel_name="python3")
    lines: list[str] = []
    try:
        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                lines.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                lines.append("\n".join(msg["content"]["traceback"]))

        kc.execute_interactive("%load_ext ipytasks\nimport asyncio, time", timeout=60)
        reply = kc.execute_interactive(
            KERNEL_CODE.format(**params), timeout=600, output_hook=hook
        )
        if reply["content"]["status"] != "ok":
            raise SystemExit("benchmark cell failed:\n" + "".join(lines))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(lines)
    line = next(ln for ln in text.splitlines() if ln.startswith("BENCH "))
    result = json.loads(line[len("BENCH "):])
    result.update(params)
    return result


def report(r: dict[str, float]) -> str:
    sleep = r["sleep"]
    rows = [
        ("magic submission, status line shown", f"{r['magic_visible_ms']:.2f} ms", "", "< 2 ms median"),
        ("magic submission, --quiet", f"{r['magic_quiet_ms']:.2f} ms", "", "< 2 ms median"),
        (
            f"{r['n']} trivial tasks on the loop, per task",
            f"{r['submit_us']:.0f} µs",
            f"run_cell {r['run_cell_us']:.0f} µs ({r['submit_us'] / r['run_cell_us']:.2f}×)",
            "≤ 2× run_cell",
        ),
        (
            f"submit {r['n']} tasks, dependencies inferred",
            f"{r['infer_us']:.0f} µs",
            f"--no-infer {r['noinfer_us']:.0f} µs ({r['infer_us'] / r['noinfer_us']:.2f}×)",
            "< 1.5× --no-infer",
        ),
        ("memory per finished quiet task", f"{r['bytes_per_task'] / 1024:.1f} KB", "", "< 20 KB"),
        (
            f"{r['n_async']} × await sleep({sleep:g})",
            f"{r['async_overlap_s']:.2f} s",
            f"asyncio.gather {r['raw_gather_s']:.2f} s",
            f"< {1.2 * sleep:.2f} s",
        ),
        (
            f"{r['n_thread']} × time.sleep({sleep:g}) in threads",
            f"{r['thread_overlap_s']:.2f} s",
            f"thread pool {r['raw_threads_s']:.2f} s",
            f"< {1.3 * sleep:.2f} s",
        ),
    ]
    widths = [max(len(row[i]) for row in rows + [("measure", "ipytasks", "baseline", "goal")]) for i in range(4)]
    out = []
    for row in [("measure", "ipytasks", "baseline", "goal")] + rows:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts and short sleeps")
    args = parser.parse_args()
    print(report(run(args.quick)))


if __name__ == "__main__":
    sys.exit(main())

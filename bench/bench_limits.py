"""Tasks queued on a group limit (``--limit 1``): the cost per task as the queue grows.

    python bench/bench_limits.py [--quick]

N trivial async tasks (``await asyncio.sleep(0)``) are submitted to one group with ``--limit 1`` and
waited for: all but one queue on the group's limiter and are let through one by one,
each reporting why it waits (``limit 1 in group g (1 running, k waiting)``). The
baseline is the same N tasks without a limit, on the same scheduler. Rounds are
interleaved (baseline, limited, baseline, limited…) and each figure is the median per
task with the spread (lowest–highest) of the rounds. The goal: at the largest N, the
limited cost per task within 1.5× the unlimited one, whatever N (counting the waiters
by scanning the queue made it grow with N: 1k/2k/4k/8k queued took 0.18/0.42/1.37/5.9 s
in all).

Prints a readable table, then the figures as one JSON line (what ``run.py`` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from ipytasks.records import TaskOptions, TaskRegistry
from ipytasks.scheduler import Scheduler

SIZES = (1_000, 2_000, 4_000, 8_000)
QUICK_SIZES = (500, 2_000)
#: Yields once, so the tasks behind the one holding the slot queue up.
BODY = "await asyncio.sleep(0)"


async def _run(shell: InteractiveShell, n: int, limit: int | None) -> float:
    """Seconds per task to submit ``n`` tasks of one group and see them all end (on a
    scheduler of their own, so earlier rounds' records weigh nothing)."""
    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    options = TaskOptions(mode="async", quiet=True, group="g", limit=limit)
    try:
        t0 = time.perf_counter()
        records = [sched.submit(BODY, f"t{i}", options) for i in range(n)]
        await sched.wait(records)
        return (time.perf_counter() - t0) / n
    finally:
        sched.close()


async def measure(sizes: tuple[int, ...], rounds: int) -> dict[str, Any]:
    shell = InteractiveShell.instance()
    shell.user_ns["asyncio"] = asyncio
    result: dict[str, Any] = {"sizes": list(sizes), "rounds": rounds}
    await _run(shell, 200, 1)  # warm: the cell compiled and analysed once
    for n in sizes:
        base, ours = [], []
        for _ in range(rounds):
            base.append(await _run(shell, n, None))
            ours.append(await _run(shell, n, 1))
        result[str(n)] = {"unlimited": base, "limit1": ours}
    return result


def spread(values: list[float]) -> str:
    """``median µs (lowest–highest)``, per task."""
    return (f"{statistics.median(values) * 1e6:.2f} µs "
            f"({min(values) * 1e6:.2f}–{max(values) * 1e6:.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, two rounds")
    args = parser.parse_args(argv)
    sizes, rounds = (QUICK_SIZES, 2) if args.quick else (SIZES, 5)
    r = asyncio.run(measure(sizes, rounds))
    print(f"{'tasks':>8}  {'--limit 1, per task':>28}  {'no limit, per task':>28}")
    for n in sizes:
        print(f"{n:>8,}  {spread(r[str(n)]['limit1']):>28}  {spread(r[str(n)]['unlimited']):>28}")
    for n in sizes:
        ratio = statistics.median(r[str(n)]["limit1"]) / statistics.median(r[str(n)]["unlimited"])
        print(f"--limit 1 / no limit at {n:,}: {ratio:.2f}" + (" (goal ≤ 1.5)" if n == sizes[-1]
                                                               else ""))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

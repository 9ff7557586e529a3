"""What a live dashboard costs while 1,000 tasks run (DESIGN §7: "1,000 tasks do not flood
the browser or slow the kernel").

Runs N trivial tasks through a real Scheduler on an asyncio loop, once without and
once with a dashboard open (real clock, real loop timers, the default throttle), and
reports for the run with it:

- the CPU time spent for the dashboard (each change put in its feed, its wake-ups,
  its refreshes, its output view), as a share of the process's CPU time for the run (goal < 5 %);
- the widget messages it sent (each ``Widget._send`` is one comm message on iopub):
  per second of the run and the most in any one second (goal < 10/s), and their bytes;
- the run's wall time with and without the dashboard.

Scenarios: ``burst`` (N async tasks submitted at once, each ``await asyncio.sleep(0)``),
``threads`` (N thread-mode tasks ``x = 1`` at once), ``stream`` (a chain of N tasks,
each ``await asyncio.sleep(0.003)``, so changes keep coming for several seconds).

Usage: ``python bench/bench_dashboard.py [--quick] [--tasks N] [--repeat R] [--json] [--check]``
(``--check``: exit 1 when a goal is not met).

The tasks do nothing, so the run's own CPU time is tiny (0.04 to 0.16 ms per task, the
scheduler's bookkeeping): the share of CPU is a worst case. The share of the tasks'
wall time says how much of the kernel's time the dashboard took.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import sys
import time
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from ipytasks.changes import ChangeFeed, Changes
from ipytasks.overview import open_dashboard
from ipytasks.overview import widgets as dashboard_widgets
from ipytasks.overview.testing import WidgetMessages
from ipytasks.records import TaskOptions, TaskRegistry
from ipytasks.scheduler import Scheduler

SCENARIOS = {
    "burst": ("await asyncio.sleep(0)", {}),
    "threads": ("x = 1", {}),
    "stream": ("await asyncio.sleep(0.003)", {"chain": "main"}),
}

GOAL_SHARE = 0.05
GOAL_RATE = 10.0


class Meter:
    """CPU seconds spent inside the wrapped functions (on the loop thread).

    Reading the thread's CPU clock twice per call costs about a microsecond, which
    would count against short calls; :meth:`net`
    subtracts that, as measured by :func:`meter_overhead`.
    """

    def __init__(self) -> None:
        self.cpu = 0.0
        self.calls = 0
        self._depth = 0

    def net(self, overhead: float) -> float:
        return max(self.cpu - self.calls * overhead, 0.0)

    def wrap(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.thread_time() - start
                self.calls += 1
                self._depth -= 1

        return timed


def meter_overhead(calls: int = 20000) -> float:
    """Seconds of CPU a Meter adds to one call of a function that does nothing."""
    meter = Meter()
    nothing = meter.wrap(lambda: None)
    start = time.thread_time()
    for _ in range(calls):
        nothing()
    return (time.thread_time() - start) / calls


class _Record:
    """What ``Changes.changed`` reads of a task: a record without output views."""

    sink = None


def feed_cost(calls: int = 50000, turns: int = 5) -> float:
    """Seconds of CPU the scheduler spends per change for an open dashboard: what
    ``Changes.changed`` costs with the dashboard's :class:`ChangeFeed` following more
    than with none (putting the task in the feed; the dashboard's ``take`` is counted
    here too).

    Too short a call to time one by one with the thread's CPU clock, so it is timed
    here in bulk, both ways in turns (best of each), and charged per change counted
    in the run.
    """
    batch = [_Record() for _ in range(1000)]

    def timed(followed: bool) -> float:
        changes = Changes()
        feed = changes.follow(lambda idle: None) if followed else ChangeFeed(lambda idle: None)
        changed = changes.changed
        start = time.thread_time()
        for _ in range(calls // len(batch)):
            for record in batch:
                changed(record)
            feed.take()
        return time.thread_time() - start

    best = {"with": math.inf, "without": math.inf}
    for _ in range(turns):
        best["with"] = min(best["with"], timed(True))
        best["without"] = min(best["without"], timed(False))
    return max(best["with"] - best["without"], 0.0) / calls


def counted(fn: Any, box: list[int]) -> Any:
    """``fn``, counting its calls in ``box[0]`` without reading a clock."""
    @functools.wraps(fn)
    def counting(*args: Any) -> Any:
        box[0] += 1
        return fn(*args)

    return counting


async def run(shell: Any, scenario: str, n: int, with_dashboard: bool,
              overhead: float = 0.0, per_change: float = 0.0) -> dict[str, Any]:
    code, options = SCENARIOS[scenario]
    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    meter = Meter()
    changes = [0]
    dash = None
    patched: list[tuple[Any, str, Any]] = []
    if with_dashboard:
        patched.append((Changes, "changed", Changes.changed))
        Changes.changed = counted(Changes.changed, changes)
        for owner, name in ((dashboard_widgets.Dashboard, "_wake"),
                            (dashboard_widgets.Dashboard, "_refresh"),
                            (dashboard_widgets.Dashboard, "_guarded"),
                            (dashboard_widgets._OutputView, "update")):
            original = getattr(owner, name)
            patched.append((owner, name, original))
            setattr(owner, name, meter.wrap(original))
        dash = open_dashboard(sched, sched.tasks, retry=None)
    # Its widgets, listed once: walking them at every message would count against it.
    mine = list(dash.all_widgets()) if dash is not None else []
    counter = WidgetMessages(only=lambda: mine, clock=time.monotonic)
    try:
        with counter:
            gc.collect()  # what earlier runs left is not this run's to collect
            cpu0, wall0 = time.process_time(), time.monotonic()
            records = [sched.submit(code, f"t{i}", TaskOptions(**options)) for i in range(n)]
            await sched.wait(records)
            wall_tasks = time.monotonic() - wall0
            if dash is not None:  # let the last refresh go out: it is part of the run
                while dash._throttle.armed:
                    await asyncio.sleep(0.05)
            wall = time.monotonic() - wall0
            cpu = time.process_time() - cpu0
        summary = dash.view.summary if dash is not None else ""
    finally:
        if dash is not None:
            dash.close()
        for owner, name, original in patched:
            setattr(owner, name, original)
        sched.close()
    result = {
        "scenario": scenario,
        "tasks": n,
        "dashboard": with_dashboard,
        "wall_s": round(wall, 3),
        "wall_tasks_s": round(wall_tasks, 3),
        "cpu_s": round(cpu, 3),
    }
    if with_dashboard:
        dash_cpu = meter.net(overhead) + changes[0] * per_change
        result.update(
            dashboard_cpu_s=round(dash_cpu, 4),
            dashboard_share=round(dash_cpu / cpu, 4) if cpu else 0.0,
            dashboard_share_of_wall=round(dash_cpu / wall_tasks, 4),
            dashboard_calls=meter.calls,
            changes=changes[0],
            messages=len(counter),
            messages_per_s=round(len(counter) / max(wall, 1.0), 2),
            max_messages_in_1s=counter.max_in_window(1.0),
            kbytes=round(counter.bytes / 1024, 1),
            all_done=f"✔ {n} done" in summary,
        )
    return result


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    shell = InteractiveShell.instance()
    shell.user_ns["asyncio"] = asyncio
    n = args.tasks or (200 if args.quick else 1000)
    repeat = 1 if args.quick else args.repeat
    overhead = meter_overhead()
    per_change = feed_cost()
    results = []
    for scenario in args.scenarios:
        await run(shell, scenario, 50, True)  # warm up imports and modes
        runs = []
        for _ in range(repeat):
            base = await run(shell, scenario, n, False)
            with_dash = await run(shell, scenario, n, True, overhead, per_change)
            with_dash["tasks_wall_without_dashboard_s"] = base["wall_tasks_s"]
            runs.append(with_dash)
        # The median run by dashboard share: other processes on the machine add noise.
        runs.sort(key=lambda r: r["dashboard_share"])
        results.append(runs[len(runs) // 2])
    return results


def report(results: list[dict[str, Any]]) -> bool:
    ok = True
    header = (f"{'scenario':<9} {'tasks':>5} {'tasks s':>8} {'(w/o)':>6} {'cpu s':>6} "
              f"{'dash cpu s':>10} {'of cpu':>7} {'of wall':>7} {'msgs':>5} {'msg/s':>6} "
              f"{'max/1s':>6} {'KiB':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['scenario']:<9} {r['tasks']:>5} {r['wall_tasks_s']:>8.2f} "
              f"{r['tasks_wall_without_dashboard_s']:>6.2f} {r['cpu_s']:>6.2f} "
              f"{r['dashboard_cpu_s']:>10.4f} {r['dashboard_share']:>7.1%} "
              f"{r['dashboard_share_of_wall']:>7.1%} {r['messages']:>5} "
              f"{r['messages_per_s']:>6.1f} {r['max_messages_in_1s']:>6} {r['kbytes']:>7.1f}")
        if r["dashboard_share"] >= GOAL_SHARE or r["max_messages_in_1s"] >= GOAL_RATE:
            ok = False
        if not r["all_done"]:
            print(f"  ! {r['scenario']}: the dashboard's last refresh did not show every task done")
            ok = False
    print("\ntasks s: submit to last task ended, with (w/o) the dashboard; cpu s: the process's "
          "CPU\ntime for the run, up to the dashboard's last refresh; dash cpu s: in dashboard "
          "code\n(listener, refreshes, actions), as a share of that CPU and of the tasks' wall "
          "time.")
    print(f"goals: dashboard CPU < {GOAL_SHARE:.0%} of the run's CPU, < {GOAL_RATE:g} messages "
          f"in any second: {'met' if ok else 'NOT met'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 tasks instead of 1,000")
    parser.add_argument("--tasks", type=int, default=0, help="number of tasks per scenario")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per scenario; the median is reported (1 with --quick)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    met = report(results)
    if args.json:
        print(json.dumps(results, indent=1))
    sys.exit(1 if args.check and not met else 0)

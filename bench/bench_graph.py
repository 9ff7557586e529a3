"""The task graph's picture: laying out 1,000 tasks, against rendering their table.

    python bench/bench_graph.py [--quick]

1,000 real tasks are submitted to a scheduler (an ``InteractiveShell``, one process) in a
shape a pipeline has: 100 blocks, each a ``load`` that binds ``raw_k``, seven steps that
read it (a fan-out of 7, edges inferred from the name), a ``combine`` that reads their
seven results (a fan-in), and a ``report`` in a ``%%sequential`` chain through every block,
``--after`` its block's ``load``. The loads wait for a gate, so every later task is
submitted while they have not ended and its edges are inferred; then all run to their end.

Measured, interleaved (baseline, graph, baseline, graph…), median and spread:

- the picture from scratch: the graph read from the records, laid out (grandalf's Sugiyama
  layout; the kept layout is dropped first), drawn as SVG; that is what ``%tasks --graph``
  and the dashboard's graph view cost when a task or an edge was added;
- the same with the layout kept (only states changed): what a refresh costs otherwise;
- the baseline: the dashboard's HTML table of the same 1,000 tasks, every row rendered.

A second shape is the widest a graph of 1,000 gets: one task read by 998 others, which all
one task reads. Goal: a layout of 1,000 tasks in under a second.

Prints a table (``measure / ipytasks / baseline / ratio / goal``) that ``run.py`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from ipytasks.overview import graph as taskgraph
from ipytasks.overview.render import table_html
from ipytasks.records import TaskOptions, TaskRegistry
from ipytasks.scheduler import Scheduler
from ipytasks.taskgraph import task_graph

BLOCKS = 100
FAN = 7


async def pipeline(shell: InteractiveShell, wide: bool) -> Any:
    """The records of 1,000 ended tasks of the shape above (``wide``: the fan of 998)."""
    shell.user_ns["gate"] = gate = asyncio.Event()
    sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop())
    quiet = TaskOptions(mode="async", quiet=True)
    try:
        if wide:
            sched.submit("await gate.wait()\nsource = 1", "source", quiet)
            for i in range(998):
                sched.submit(f"part_{i} = source", f"step{i}", quiet)
            reads = ", ".join(f"part_{i}" for i in range(998))
            sched.submit(f"total = [{reads}]", "gather", quiet)
        else:
            for k in range(BLOCKS):
                sched.submit(f"await gate.wait()\nraw_{k} = [1, 2]", f"load{k}", quiet)
                for j in range(FAN):
                    sched.submit(f"part_{k}_{j} = len(raw_{k})", f"step{k}_{j}", quiet)
                parts = " + ".join(f"part_{k}_{j}" for j in range(FAN))
                sched.submit(f"total_{k} = {parts}", f"combine{k}", quiet)
                report = TaskOptions(mode="async", quiet=True, chain="reports",
                                     after=(f"load{k}",))
                sched.submit(f"report_{k} = total_{k}", f"report{k}", report)
        gate.set()
        await sched.wait(list(sched.tasks.values()))
        records = list(sched.tasks.values())
        graph = task_graph(records)
        return records, graph
    finally:
        sched.close()


def _picture(records: list[Any], kept: bool) -> None:
    if not kept:
        taskgraph._layout.cache_clear()
    graph = task_graph(records)
    taskgraph.render_svg(taskgraph.graph_geometry(graph), taskgraph.states_of(graph))


def interleaved(rounds: int, ours: Callable[[], None], base: Callable[[], None]
                ) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        base()
        b.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t)
    return a, b


def ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1e3:.0f} ms "
            f"({min(values) * 1e3:.0f}–{max(values) * 1e3:.0f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 9
    shell = InteractiveShell.instance()
    rows = []
    _picture([], kept=False)  # grandalf imported (once per kernel): not in the figures
    for wide in (False, True):
        records, graph = asyncio.run(pipeline(shell, wide))
        assert len(graph.nodes) == 1000, len(graph.nodes)
        now = time.time()
        fresh, table = interleaved(rounds, lambda: _picture(records, kept=False),
                                   lambda: table_html(records, now=now))
        what = ("1 task read by 998, read by 1 (fan-out of 998)" if wide else
                f"{BLOCKS} blocks: load, fan-out of {FAN}, fan-in, chain, --after")
        spread = f"median of {rounds}, lowest–highest, interleaved"
        rows.append((f"task graph of 1,000 tasks, laid out and drawn ({what}; {spread}; "
                     f"{len(graph.edges):,} edges)",
                     ms(fresh), f"table of the same tasks {ms(table)}",
                     f"{statistics.median(fresh) / statistics.median(table):.1f}x",
                     f"< {1000:.0f} ms"))
        if not wide:
            kept, table = interleaved(rounds, lambda: _picture(records, kept=True),
                                      lambda: table_html(records, now=now))
            rows.append((f"task graph of 1,000 tasks, layout kept (states changed; {spread})",
                         ms(kept), f"table of the same tasks {ms(table)}",
                         f"{statistics.median(kept) / statistics.median(table):.1f}x", ""))
    header = ("measure", "ipytasks", "baseline", "ratio", "goal")
    widths = [max(len(r[c]) for r in [*rows, header]) for c in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

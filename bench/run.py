"""ipytasks' benchmark suite: every measurement, one table, baselines from the same run.

    python bench/run.py [--quick] [--only SECTION ...] [--output PATH] [--check]

(``make bench``; ``make bench QUICK=1`` for ``--quick``.)

Each part runs in a process of its own, one after the other, so that none competes with another
and whatever one starts (kernels, worker processes, an ipyparallel cluster, Dask workers) is gone
before the next begins; every process started here carries ``IPYTASKS_BENCH_RUN`` in its
environment, and any still alive after its part ended is reported and killed.

Parts (``--only`` takes these names):

- ``peers``      bench_peers.py: per-task overhead of a trivial task, ipytasks async / thread /
                 process in a kernel vs raw asyncio, thread and process pools, ipyparallel, Dask;
                 a 200 MiB NumPy array to a worker and back;
- ``scenarios``  bench_scenarios.py: three 1 s I/O tasks, a 1 s + 0.5 s chain, 100 I/O tasks
                 behind --limit 10, four 1 s CPU cells on two cores; per-task cost at 10 to
                 10,000 tasks;
- ``process``    bench_process.py: process mode's round trip, cold start, CPU cells, arrays
                 and peak memory, against raw pipes and pools;
- ``dashboard``  bench_dashboard.py: what a live dashboard costs while 1,000 tasks run;
- ``core``       bench_core.py: submission through the magics, inference, memory per task;
- ``output``     bench_output.py: iopub bytes per byte a task prints, and a print's cost in a
                 task against a plain cell;
- ``analysis``   bench_analysis.py: the namespace analysis of a 200-line cell;
- ``cache``      bench_cache.py: ``--cache``: fingerprinting a 200 MiB array, a hit that
                 binds one, the overhead on a trivial task;
- ``limits``     bench_limits.py: tasks queued on a group limit, released one by one, against
                 the same tasks without a limit;
- ``graph``      bench_graph.py: the task graph of 1,000 tasks laid out and drawn, against
                 rendering the table of the same tasks.

The table goes to stdout and, as Markdown, to ``test-output/bench.md`` (``--output``). A part
that cannot run (a peer not installed, process mode missing) says so in its rows; a part that
broke is an ``error`` row, and the exit status is then 1. Goals missed are shown, not fatal,
unless ``--check``. ``--quick`` is a smoke run of about a minute (small sizes, short sleeps):
its figures are not the ones to quote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import bench_peers
import bench_scenarios
from bench_scenarios import (
    ERROR,
    MISSED,
    NO_GOAL,
    OK,
    UNAVAILABLE,
    Row,
    error_row,
    fmt_ratio,
    fmt_time,
    unavailable_row,
    verdict,
)

HEADER = ("measure", "ipytasks", "baseline(s)", "ratio", "goal", "ok?")
TOKEN_VARIABLE = "IPYTASKS_BENCH_RUN"
PACKAGES = ("ipytasks", "ipykernel", "ipython", "jupyter_client", "cloudpickle", "numpy",
            "ipyparallel", "distributed")


# -- running a part ------------------------------------------------------------------------


class PartFailed(Exception):
    pass


def run_part(argv: list[str], timeout: float, ok_status: tuple[int, ...] = (0,)) -> str:
    """Run ``argv`` (in bench/) in a session of its own; its stdout, or :class:`PartFailed`."""
    proc = subprocess.Popen(
        argv, cwd=BENCH_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise PartFailed(f"did not finish within {timeout:g} s; {_tail(err)}") from None
    if proc.returncode not in ok_status:
        raise PartFailed(f"exit status {proc.returncode}: {_tail(err)}")
    return out


def run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    out = run_part(argv, timeout)
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PartFailed("printed no result: " + _tail(out))


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " / ".join(kept) or "(nothing on stderr)"


# -- the parts -------------------------------------------------------------------------------


def part_peers(quick: bool, timeout: float) -> dict[str, list[Row]]:
    title_o, title_a = OVERHEAD, ARRAYS
    try:
        r = run_json([sys.executable, "bench_peers.py", "--json", *_q(quick)], timeout)
    except PartFailed as exc:
        return {title_o: [error_row("per-task overhead (bench_peers.py)", str(exc))]}
    return {title_o: bench_peers.overhead_rows(r), title_a: bench_peers.array_rows(r)}


def part_scenarios(quick: bool, timeout: float) -> dict[str, list[Row]]:
    try:
        r = run_json([sys.executable, "bench_scenarios.py", "--json", *_q(quick)], timeout)
    except PartFailed as exc:
        return {SCENARIOS: [error_row("classic scenarios (bench_scenarios.py)", str(exc))]}
    return {SCENARIOS: bench_scenarios.rows(r), SCALING: bench_scenarios.scaling_rows(r)}


def part_core(quick: bool, timeout: float) -> dict[str, list[Row]]:
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCH_DIR)!r})\n"
        "import bench_core\n"
        f"print(json.dumps(bench_core.run({quick!r})))\n"
    )
    try:
        r = run_json([sys.executable, "-c", code], timeout)
    except PartFailed as exc:
        return {CORE: [error_row("core overheads (bench_core.py)", str(exc))]}
    return {CORE: core_rows(r)}


def core_rows(r: dict[str, Any]) -> list[Row]:
    """bench_core.py's figures, with the goals its own report holds them to."""
    n, sleep = r["n"], r["sleep"]
    ms = 1e-3
    us = 1e-6
    return [
        ("%%parallel submission, status line shown (median)", fmt_time(r["magic_visible_ms"] * ms),
         "", "", "< 2 ms", verdict(r["magic_visible_ms"] < 2)),
        ("%%parallel --quiet submission (median)", fmt_time(r["magic_quiet_ms"] * ms),
         "", "", "< 2 ms", verdict(r["magic_quiet_ms"] < 2)),
        (f"{n:,} trivial tasks on the loop (x = 1), per task", fmt_time(r["submit_us"] * us),
         f"run_cell {fmt_time(r['run_cell_us'] * us)}", fmt_ratio(r["submit_us"] / r["run_cell_us"]),
         "≤ 2× run_cell", verdict(r["submit_us"] <= 2 * r["run_cell_us"])),
        (f"submit {n:,} tasks, dependencies inferred, per task", fmt_time(r["infer_us"] * us),
         f"--no-infer {fmt_time(r['noinfer_us'] * us)}", fmt_ratio(r["infer_us"] / r["noinfer_us"]),
         "< 1.5× --no-infer", verdict(r["infer_us"] < 1.5 * r["noinfer_us"])),
        ("memory per finished quiet task", f"{r['bytes_per_task'] / 1024:.1f} KiB", "", "",
         "< 20 KiB", verdict(r["bytes_per_task"] < 20 * 1024)),
        (f"{r['n_async']} × await asyncio.sleep({sleep:g}) tasks", fmt_time(r["async_overlap_s"]),
         f"asyncio.gather {fmt_time(r['raw_gather_s'])}",
         fmt_ratio(r["async_overlap_s"] / r["raw_gather_s"]), f"< {1.2 * sleep:.2f} s",
         verdict(r["async_overlap_s"] < 1.2 * sleep)),
        (f"{r['n_thread']} × time.sleep({sleep:g}) thread tasks", fmt_time(r["thread_overlap_s"]),
         f"thread pool {fmt_time(r['raw_threads_s'])}",
         fmt_ratio(r["thread_overlap_s"] / r["raw_threads_s"]), f"< {1.3 * sleep:.2f} s",
         verdict(r["thread_overlap_s"] < 1.3 * sleep)),
    ]


def part_output(quick: bool, timeout: float) -> dict[str, list[Row]]:
    try:
        r = run_json([sys.executable, "bench_output.py", *_q(quick)], timeout)
    except PartFailed as exc:
        return {OUTPUT: [error_row("task output (bench_output.py)", str(exc))]}
    return {OUTPUT: output_rows(r)}


def output_rows(r: dict[str, Any]) -> list[Row]:
    """bench_output.py's figures: iopub traffic per byte printed, and what a print costs."""
    mb = r["printed_bytes"] / 1e6
    plain, task = r["plain_print_s"], r["task_print_s"]
    spread = (f" (spread {fmt_time(task[1])}–{fmt_time(task[2])} vs "
              f"{fmt_time(plain[1])}–{fmt_time(plain[2])})")
    ratio = task[0] / plain[0]
    return [
        (f"iopub bytes per byte printed: a thread task printing {mb:g} MB over "
         f"{r['seconds']:g} s, its cell refreshed live",
         f"{r['task_iopub_per_byte']:.2f}", f"plain cell {r['plain_iopub_per_byte']:.2f}",
         fmt_ratio(r["task_iopub_per_byte"] / r["plain_iopub_per_byte"]), "≤ 3 bytes per byte",
         verdict(r["task_iopub_per_byte"] <= 3)),
        (f"{r['print_calls']:,} print() calls in a thread task (median of {r['repeats']}, "
         "interleaved)" + spread, fmt_time(task[0]), f"plain cell {fmt_time(plain[0])}",
         fmt_ratio(ratio), "≤ 1.5× a plain cell", verdict(ratio <= 1.5)),
        _tqdm_row(r),
    ]


def _tqdm_row(r: dict[str, Any]) -> Row:
    """A tqdm loop in a thread task (the bar told to its status line) vs a plain cell's."""
    plain, task = r["plain_tqdm_s"], r["task_tqdm_s"]
    spread = (f" (spread {fmt_time(task[1])}–{fmt_time(task[2])} vs "
              f"{fmt_time(plain[1])}–{fmt_time(plain[2])})")
    ratio = task[0] / plain[0]
    return (f"tqdm loop of {r['print_calls']:,} iterations in a thread task, its bar in the "
            f"status line (median of {r['repeats']}, interleaved)" + spread,
            fmt_time(task[0]), f"plain cell {fmt_time(plain[0])}", fmt_ratio(ratio),
            "≤ 1.5× a plain cell", verdict(ratio <= 1.5))


def part_analysis(quick: bool, timeout: float) -> dict[str, list[Row]]:
    measure = "analyze() a 200-line cell (median)"
    try:
        out = run_part([sys.executable, "bench_analysis.py", *_q(quick)], timeout, (0, 1))
        analyze = float(re.search(r"^analyze:\s+([\d.]+) ms", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
        parse = float(re.search(r"^ast\.parse:\s+([\d.]+) ms", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    except (PartFailed, AttributeError, ValueError) as exc:
        return {ANALYSIS: [error_row(measure, str(exc))]}
    return {ANALYSIS: [(measure, f"{analyze:.2f} ms", f"ast.parse {parse:.2f} ms",
                        fmt_ratio(analyze / parse), "< 5 ms", verdict(analyze < 5))]}


def part_limits(quick: bool, timeout: float) -> dict[str, list[Row]]:
    """bench_limits.py: tasks queued on ``--limit 1``, per task, against no limit."""
    measure = "tasks queued on --limit 1 (bench_limits.py)"
    try:
        r = run_json([sys.executable, "bench_limits.py", *_q(quick)], timeout)
    except PartFailed as exc:
        return {LIMITS: [error_row(measure, str(exc))]}
    rows: list[Row] = []
    for n in r["sizes"]:
        ours, base = r[str(n)]["limit1"], r[str(n)]["unlimited"]
        ratio = statistics.median(ours) / statistics.median(base)
        last = n == r["sizes"][-1]
        rows.append((
            f"{n:,} tasks queued on --limit 1, per task (median, lowest–highest of "
            f"{r['rounds']})",
            f"{fmt_time(statistics.median(ours))} ({fmt_time(min(ours))}–{fmt_time(max(ours))})",
            f"no limit {fmt_time(statistics.median(base))} "
            f"({fmt_time(min(base))}–{fmt_time(max(base))})",
            fmt_ratio(ratio),
            "≤ 1.5× no limit" if last else "",
            verdict(ratio <= 1.5 if last else None),
        ))
    return {LIMITS: rows}


def part_process(quick: bool, timeout: float) -> dict[str, list[Row]]:
    """bench_process.py's own table, read back; any failure of it is process mode not available."""
    measure = "process mode (bench_process.py)"
    try:
        out = run_part([sys.executable, "bench_process.py", *_q(quick)], timeout)
        table = parse_text_table(out)
    except PartFailed as exc:
        return {PROCESS: [unavailable_row(measure, str(exc))]}
    if not table:
        return {PROCESS: [unavailable_row(measure, "its output has no table: " + _tail(out))]}
    rows = []
    for cells in table:
        name, ours, base, ratio, goal = (cells + [""] * 5)[:5]
        rows.append((name, ours, base, ratio.replace("x", "×") if ratio.endswith("x") else ratio,
                     goal, judge(goal, ratio or ours)))
    return {PROCESS: rows}


def parse_text_table(text: str) -> list[list[str]]:
    """The rows of a table printed as ``header / ---- ---- / rows``, columns cut where the dashes are."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("measure") and re.fullmatch(r"[- ]+", lines[i + 1].rstrip() or "x"):
            spans = [m.span() for m in re.finditer(r"-+", lines[i + 1])]
            rows = []
            for row in lines[i + 2 :]:
                if not row.strip():
                    break
                cells = [row[a : (spans[k + 1][0] if k + 1 < len(spans) else None)].strip()
                         for k, (a, _) in enumerate(spans)]
                rows.append(cells)
            return rows
    return []


def judge(goal: str, value: str) -> str:
    """``ok?`` for a goal written ``< 0.3 s``, ``<= 3x``, ``>= 0.5``: the value's first number."""
    g = re.match(r"\s*(<=|>=|<|>|≤|≥)\s*([\d.]+)", goal)
    v = re.match(r"\s*(-?[\d.]+)", value)  # an overhead can be below zero (noise)
    if not g or not v:
        return NO_GOAL
    limit, x = float(g.group(2)), float(v.group(1))
    op = g.group(1)
    return verdict({"<": x < limit, ">": x > limit, "<=": x <= limit, "≤": x <= limit,
                    ">=": x >= limit, "≥": x >= limit}[op])


def part_cache(quick: bool, timeout: float) -> dict[str, list[Row]]:
    """bench_cache.py's own table, read back."""
    measure = "--cache (bench_cache.py)"
    try:
        table = parse_text_table(run_part([sys.executable, "bench_cache.py", *_q(quick)], timeout))
    except PartFailed as exc:
        return {CACHE: [error_row(measure, str(exc))]}
    if not table:
        return {CACHE: [error_row(measure, "its output has no table")]}
    rows = []
    for cells in table:
        name, ours, base, ratio, goal = (cells + [""] * 5)[:5]
        rows.append((name, ours, base, ratio.replace("x", "×"), goal, judge(goal, ours)))
    return {CACHE: rows}


def part_graph(quick: bool, timeout: float) -> dict[str, list[Row]]:
    """bench_graph.py's own table, read back."""
    measure = "task graph (bench_graph.py)"
    try:
        table = parse_text_table(run_part([sys.executable, "bench_graph.py", *_q(quick)], timeout))
    except PartFailed as exc:
        return {GRAPH: [error_row(measure, str(exc))]}
    if not table:
        return {GRAPH: [error_row(measure, "its output has no table")]}
    rows = []
    for cells in table:
        name, ours, base, ratio, goal = (cells + [""] * 5)[:5]
        rows.append((name, ours, base, ratio.replace("x", "×"), goal, judge(goal, ours)))
    return {GRAPH: rows}


def part_dashboard(quick: bool, timeout: float) -> dict[str, list[Row]]:
    args = ["--tasks", "1000", "--json"]
    args += ["--repeat", "1", "--scenarios", "burst"] if quick else ["--repeat", "3"]
    measure = "dashboard (bench_dashboard.py)"
    try:
        out = run_part([sys.executable, "bench_dashboard.py", *args], timeout)
        start = out.index("\n[")
        results = json.loads(out[start:])
    except (PartFailed, ValueError) as exc:
        return {DASHBOARD: [error_row(measure, str(exc))]}
    rows: list[Row] = []
    for d in results:
        share, most = d["dashboard_share"], d["max_messages_in_1s"]
        ok = share < 0.05 and most < 10 and d["all_done"]
        rows.append((
            f"{d['tasks']:,} tasks, {d['scenario']}: dashboard CPU, widget messages",
            f"{share:.1%} of the run's CPU, ≤ {most} msg/s",
            f"tasks {fmt_time(d['wall_tasks_s'])}, w/o dashboard {fmt_time(d['tasks_wall_without_dashboard_s'])}",
            fmt_ratio(d["wall_tasks_s"] / d["tasks_wall_without_dashboard_s"]) + " wall",
            "< 5 % CPU, < 10 msg in any 1 s",
            verdict(ok),
        ))
    return {DASHBOARD: rows}


def _q(quick: bool) -> list[str]:
    return ["--quick"] if quick else []


OVERHEAD = "Per-task overhead of a trivial task"
SCENARIOS = "Classic scenarios"
ARRAYS = "Shipping a NumPy array to a worker and back"
PROCESS = "Process mode (bench_process.py, an InteractiveShell, raw pipes and pools)"
DASHBOARD = "Dashboard cost (bench_dashboard.py, an InteractiveShell)"
SCALING = "Scaling: per-task cost from 10 to 10,000 tasks"
CORE = "Submission, inference, memory (bench_core.py, in a kernel)"
ANALYSIS = "Namespace analysis (bench_analysis.py)"
OUTPUT = "Task output (bench_output.py, in a kernel)"
CACHE = "Cached outcomes, --cache (bench_cache.py, an InteractiveShell)"
LIMITS = "Group limits: releasing queued tasks (bench_limits.py, a scheduler in one process)"
GRAPH = "Task graph: layout and picture (bench_graph.py, a scheduler in one process)"
ORDER = (OVERHEAD, SCENARIOS, ARRAYS, PROCESS, DASHBOARD, GRAPH, SCALING, CORE, OUTPUT, ANALYSIS,
         CACHE, LIMITS)

# name -> (function, timeout quick, timeout full); run in this order
PARTS: dict[str, tuple[Callable[[bool, float], dict[str, list[Row]]], float, float]] = {
    "analysis": (part_analysis, 60, 300),
    "cache": (part_cache, 90, 600),
    "limits": (part_limits, 60, 600),
    "graph": (part_graph, 60, 300),
    "core": (part_core, 90, 900),
    "output": (part_output, 90, 600),
    "scenarios": (part_scenarios, 90, 1200),
    "process": (part_process, 90, 1200),
    "dashboard": (part_dashboard, 90, 900),
    "peers": (part_peers, 120, 1200),
}


# -- leftovers ---------------------------------------------------------------------------------


def marked_processes(token: str) -> list[tuple[int, str]]:
    """Live processes other than this one whose environment carries this run's token."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
            stat = Path("/proc", entry, "stat").read_text()
            cmd = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :][:1] in ("Z", "X"):
            continue
        if needle in environ.split(b"\0"):
            found.append((int(entry), cmd.strip()[:100]))
    return found


def sweep(token: str, grace: float = 10.0) -> list[str]:
    """Wait up to ``grace`` s for this run's processes to end; kill the rest; say which."""
    if not Path("/proc").is_dir():
        return []
    deadline = time.monotonic() + grace
    left = marked_processes(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = marked_processes(token)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return [f"{pid} {cmd}" for pid, cmd in left]


# -- the machine -------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        memory = f", {kib / 2**20:.1f} GiB RAM"
    except (OSError, AttributeError):
        pass
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    commit = ""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"{model}, {cores} CPUs (nproc){memory}, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; {', '.join(versions)}"
            f"{f'; git {commit}' if commit else ''}")


# -- the table ---------------------------------------------------------------------------------


def markdown(sections: dict[str, list[Row]]) -> str:
    body: list[tuple[str, ...]] = []
    for title in ORDER:
        if title in sections:
            body.append((f"**{title}**", "", "", "", "", ""))
            body.extend(sections[title])
    cells = [tuple(c.replace("|", "\\|") for c in row) for row in [HEADER, *body]]
    widths = [max(len(row[i]) for row in cells) for i in range(6)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


NOTES = """\
ratio: ipytasks ÷ baseline, except where the goal says "cheaper" (baseline ÷ ipytasks, for async
and for thread mode). ipytasks figures come from a kernel started through jupyter_client (the
process and dashboard rows: an InteractiveShell in one process, as those benchmarks do); raw
baselines run in the same kernel; ipyparallel and Dask run from the suite's own process against a
local cluster on 127.0.0.1, started and stopped by the benchmark. `%%px --noblock` is measured as
`rc[:].execute(code, block=False)`, what the magic sends, on both engines. Timings on a shared
machine are noisy: read the ratios, each from one run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, short sleeps")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="run only these parts")
    parser.add_argument("--output", type=Path, default=ROOT / "test-output" / "bench.md",
                        help="where to write the Markdown table (default test-output/bench.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed too")
    args = parser.parse_args(argv)

    token = uuid.uuid4().hex
    os.environ[TOKEN_VARIABLE] = token
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    sections: dict[str, list[Row]] = {}
    leftovers: list[str] = []
    durations = []
    for name in args.only:
        function, quick_timeout, full_timeout = PARTS[name]
        t0 = time.monotonic()
        print(f"bench: {name}…", file=sys.stderr, flush=True)
        try:
            got = function(args.quick, quick_timeout if args.quick else full_timeout)
        except Exception as exc:  # noqa: BLE001 - a broken part is a row, not the end of the run
            got = {ORDER[-1]: [error_row(f"part {name}", f"{type(exc).__name__}: {exc}")]}
        for title, rows in got.items():
            sections.setdefault(title, []).extend(rows)
        left = sweep(token)
        if left:
            leftovers.append(f"{name}: " + "; ".join(left))
        durations.append(f"{name} {time.monotonic() - t0:.0f} s")
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    table = markdown(sections)
    all_rows = [row for rows in sections.values() for row in rows]
    count = {k: sum(1 for row in all_rows if row[5] == k) for k in (OK, MISSED, UNAVAILABLE, ERROR)}
    title = (f"ipytasks benchmarks{' (--quick: a smoke run, not figures to quote)' if args.quick else ''}, "
             f"{started:%Y-%m-%d %H:%M} UTC")
    summary = (f"Goals met: {count[OK]}, missed: {count[MISSED]}; not available: {count[UNAVAILABLE]}; "
               f"errors: {count[ERROR]}. Took {elapsed:.0f} s ({', '.join(durations)}); load average "
               f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.")
    text = "\n\n".join([
        title,
        f"Machine: {machine()}.",
        table,
        summary,
        NOTES,
        *(["Processes left running by a part, killed: " + " / ".join(leftovers)] if leftovers else []),
    ]) + "\n"
    print(text)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"(written to {args.output})", file=sys.stderr)
    except OSError as exc:
        print(f"could not write {args.output}: {exc}", file=sys.stderr)
    if count[ERROR] or leftovers:
        return 1
    return 1 if args.check and count[MISSED] else 0


if __name__ == "__main__":
    sys.exit(main())

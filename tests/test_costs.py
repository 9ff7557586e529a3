"""What each task costs, and where its body is, through a real kernel.

CPU time of thread tasks (a busy loop against a sleep), CPU time and peak memory of a process
task that allocates 500 MB (the peak counts from the job's start: a warm worker's earlier job
does not count), and where running thread and process bodies are, as the dashboard shows.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.kernel

WAIT = 60  # seconds: only to fail a hung test


def _values(k: Any, names: list[str]) -> dict[str, tuple[Any, Any]]:
    code = "\n".join(
        f"print({n!r}, ipytasks.tasks[{n!r}].cpu_time, ipytasks.tasks[{n!r}].peak_rss)"
        for n in names)
    out = k.execute("import ipytasks\n" + code).stdout.split("\n")
    found = {}
    for line in out:
        if line:
            name, cpu, rss = line.split()
            found[name] = (None if cpu == "None" else float(cpu),
                           None if rss == "None" else int(rss))
    return found


def test_cpu_time_of_thread_tasks_and_peak_memory_of_a_process_task(kernel: Any) -> None:
    """A busy thread task used CPU, a sleeping one next to none; a process task that holds
    500 MB peaks above that, and the next job on the same worker does not inherit the peak."""
    k = kernel
    # The busy task burns 0.2 s of its thread's CPU, however long that takes on a shared
    # machine, and says how much it measured itself.
    k.execute("%%parallel cost_busy\nimport time\nstart = time.thread_time()\n"
              "while time.thread_time() - start < 0.2:\n    pass\n"
              "busy_used = time.thread_time() - start")
    k.execute("%%parallel cost_sleep\nimport time\ntime.sleep(0.4)")
    k.execute("%%parallel cost_big --mode process\nimport os\nblock = bytearray(500 * 2**20)\n"
              "block[::4096] = b'x' * len(block[::4096])\npid = os.getpid()\ndel block")
    k.execute("%wait cost_busy cost_sleep cost_big", timeout=WAIT)
    k.execute("%%parallel cost_small --mode process\nimport os\nsmall_pid = os.getpid()")
    k.execute("%wait cost_small", timeout=WAIT)
    got = _values(k, ["cost_busy", "cost_sleep", "cost_big", "cost_small"])
    busy_used = float(k.execute("print(busy_used)").stdout)
    assert busy_used <= got["cost_busy"][0] < busy_used + 0.1, got
    assert got["cost_sleep"][0] < 0.02, got
    assert got["cost_busy"][1] is None and got["cost_sleep"][1] is None  # the kernel's memory
    cpu, rss = got["cost_big"]
    assert rss > 500 * 2**20 and cpu > 0, got
    same = k.execute("print(pid == small_pid)").stdout.strip()
    if same == "True":  # the same warm worker: its peak started again with the job
        assert got["cost_small"][1] < 300 * 2**20, got
    shown = k.execute("from ipytasks.overview.render import text_table\n"
                      "print(text_table(ipytasks.tasks))").stdout
    assert re.search(r"cost_big .* 5\d\d MB", shown), shown


def test_where_running_bodies_are_shows_in_the_dashboard(kernel: Any) -> None:
    """With the dashboard open, the rows of running thread, process and async tasks say which
    line of their cell they are on (the process says so by itself, once a second)."""
    k = kernel
    k.execute("%tasks")
    k.execute("import threading\nwhere_go = threading.Event()")
    k.execute("%%parallel where_t\nx = 1\nwhere_go.wait(30)\nx")
    k.execute("%%parallel where_p --mode process\nimport time\ny = 1\nwhile True:\n"
              "    time.sleep(0.05)")
    k.execute("%%parallel where_a\nimport asyncio\nz = 1\nawait asyncio.sleep(30)")
    views = k.find_widgets("AnyModel")

    def tables() -> list[str]:
        return [m["content"]["data"]["state"]["table"]["html"] for m in k.messages()
                if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] in views
                and "table" in (m["content"]["data"].get("state") or {})]

    def row(name: str) -> str:
        for html in reversed(tables()):
            match = re.search(rf'<tr data-task="{name}".*?</tr>', html)
            if match:
                return match.group(0)
        return ""

    try:
        k.wait_until(lambda: re.search(r"line 2 of the cell › \S*threading.py:\d+ in wait",
                                       row("where_t")) is not None,
                     timeout=WAIT, what="the thread task's row says where it waits")
        k.wait_until(lambda: "line 4 of the cell" in row("where_p"), timeout=WAIT,
                     what="the process task's row says where it loops")
        k.wait_until(lambda: re.search(r"line 3 of the cell › \S*tasks.py:\d+ in sleep",
                                       row("where_a")) is not None,
                     timeout=WAIT, what="the async task's row says where it awaits")
    finally:
        k.execute("where_go.set()\n%cancel where_p where_a")
        k.execute("%wait where_t", timeout=WAIT)
    assert "line" not in row("where_t")  # an ended task is nowhere

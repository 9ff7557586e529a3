"""Progress from inside a task: tqdm bars and ``ipytasks.progress`` show in the task's status
line and dashboard row, and draw nothing anywhere.

The interception is tested on real tqdm classes (``tqdm``, ``tqdm.auto`` with ``async for``,
``tqdm.notebook``) in this process; the whole path through a real kernel: a thread task and
a process task each run a tqdm loop over 50 items while an ordinary cell runs, and their cells'
display updates, the dashboard's messages and the ordinary cell are read as a front end gets
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ipytasks.reports import Progress
from ipytasks.workers.watch import TqdmWatch

tqdm = pytest.importorskip("tqdm")


@pytest.fixture
def told() -> Iterator[tuple[list[tuple[Any, Any, dict[str, Any], bool]], list[Any]]]:
    """A watch whose owner is ``owner[0]``; what it was told, in order."""
    said: list[tuple[Any, Any, dict[str, Any], bool]] = []
    owner: list[Any] = [None]
    watch = TqdmWatch(lambda: owner[0], lambda *args: said.append(args))
    watch.install()
    try:
        yield said, owner
    finally:
        watch.uninstall()


def test_bars_of_a_task_are_told_and_draw_nothing(told: Any) -> None:
    """std, auto (async for) and notebook bars made by the owner report n/total to the end and
    write nothing; a bar made elsewhere draws as usual, and none is told after uninstall."""
    import tqdm.auto
    import tqdm.notebook

    said, owner = told
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        owner[0] = "task"
        for _ in tqdm.tqdm(range(50), mininterval=0):
            pass
        bar = tqdm.notebook.tqdm(total=7)
        bar.update(3)
        bar.update(4)
        bar.close()

        async def loop() -> None:
            async for _ in tqdm.auto.tqdm(range(4), mininterval=0):
                pass

        asyncio.run(loop())
        for _ in tqdm.tqdm(range(3), disable=None):  # off when not a terminal: counts here
            pass
        owner[0] = None
        assert err.getvalue() == ""
        for _ in tqdm.tqdm(range(3), file=err):
            pass
    assert "3/3" in err.getvalue()  # the bar of no task drew itself
    ends = [(state["n"], state["total"]) for who, _, state, closed in said if closed]
    assert ends == [(50, 50), (7, 7), (4, 4), (3, 3)]
    assert {who for who, *_ in said} == {"task"}
    ns = [state["n"] for _, key, state, _ in said if key == said[0][1]]
    assert ns == sorted(ns) and len(set(ns)) > 10


def test_a_bar_keeps_its_task_when_another_thread_redraws_it(told: Any) -> None:
    """tqdm's monitor thread (or any) redrawing a task's bar tells that task."""
    import threading

    said, owner = told
    owner[0] = "mine"
    bar = tqdm.tqdm(total=10)
    owner[0] = None
    bar.n = 5
    thread = threading.Thread(target=bar.refresh)
    thread.start()
    thread.join()
    bar.close()
    assert [(who, s["n"]) for who, _, s, _ in said][-2:] == [("mine", 5), ("mine", 5)]


def test_progress_text() -> None:
    p = Progress(done=37, total=100, rate=12.3, elapsed=3.0, note="fit")
    assert p.text() == "37/100 (37%) · 12.3 it/s · 6 s left · fit"
    assert p.count() == "37/100"
    assert Progress(done=5, unit="B").text() == "5 B"
    assert Progress(done=100, total=100, rate=4).text() == "100/100 (100%) · 4 it/s"


def test_install_and_uninstall_put_tqdm_back() -> None:
    """Loading patches tqdm's ``__new__`` (at once, tqdm being imported); unloading restores it."""
    import tqdm.std

    from ipytasks import reports

    original = tqdm.std.tqdm.__dict__["__new__"]
    reports.install(lambda record: None)
    try:
        assert tqdm.std.tqdm.__dict__["__new__"] is not original
    finally:
        reports.uninstall()
    assert tqdm.std.tqdm.__dict__["__new__"] is original


def test_progress_outside_a_task_does_nothing() -> None:
    import ipytasks

    ipytasks.progress(3, 10, "ordinary cell")  # no error, nothing to tell


# -- through a real kernel ---------------------------------------------------------------------

LOOP = """\
%%parallel {name} --mode {mode}
import time
from tqdm.auto import tqdm
for i in tqdm(range(50), desc="{name} items"):
    time.sleep(0.06)
"""
COUNT = re.compile(r"(\d+)/50")


def _counts(texts: list[str]) -> list[int]:
    return [int(m.group(1)) for t in texts if (m := COUNT.search(t))]


def _moved(counts: list[int]) -> bool:
    """At least two distinct values between 0 and 50, then 50."""
    return len({c for c in counts if 0 < c < 50}) >= 2 and counts[-1] == 50


def _row_progress(html: str, name: str) -> str | None:
    match = re.search(rf'data-task="{name}".*?class="ipytasks-progress" title="([^"]*)"', html)
    return match.group(1) if match else None


@pytest.mark.kernel
def test_tqdm_in_thread_and_process_tasks_shows_in_cells_and_dashboard(kernel: Any) -> None:
    """Two tasks (thread, process) run tqdm over 50 items while the dashboard is shown and an
    ordinary cell runs: each cell's status line moves (two values at least) to 50/50, the
    dashboard's rows do too, the tasks' outputs hold no bar, and the ordinary cell only its
    own print."""
    k = kernel
    k.execute("import ipytasks")
    dash = k.execute("%tasks")
    cells = {name: k.execute(LOOP.format(name=name, mode=mode))
             for name, mode in (("bar_t", "thread"), ("bar_p", "process"))}
    plain = k.execute("import time\nfor _ in range(5):\n    time.sleep(0.1)\nprint('plain')")
    k.execute("%wait bar_t bar_p", timeout=60)

    for name, cell in cells.items():
        ids = [i for i in cell.display_ids if i.startswith("ipytasks-")]
        assert len(ids) == 1
        texts = [m["content"]["data"]["text/plain"].split("\n")[0] for m in k.messages()
                 if m["msg_type"] in ("display_data", "update_display_data")
                 and (m["content"].get("transient") or {}).get("display_id") == ids[0]]
        counts = _counts(texts)
        assert _moved(counts), (name, texts)
        assert "it/s" in " ".join(texts) and f"{name} items" in " ".join(texts)
        assert re.search(r"done in [\d.]+s · 50/50", texts[-1]), texts[-1]
        # Nothing of the bar in the task's output: no frame, no widget.
        assert "\r" not in k.display(ids[0])["text/plain"]
        shown = k.execute(f"print(repr(ipytasks.tasks[{name!r}].output))").stdout.strip()
        assert shown == "''"
        assert not [d for d in cell.displays if "application/vnd.jupyter.widget-view+json" in d]

    # The dashboard: its TasksView's table went through the values too.
    views = k.find_widgets("AnyModel") or k.find_widgets("TasksViewModel")
    tables = [m["content"]["data"]["state"]["table"]["html"] for m in k.messages()
              if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] in views
              and "table" in (m["content"]["data"].get("state") or {})]
    for name in cells:
        rows = [t for t in (_row_progress(h, name) for h in tables) if t]
        assert _moved(_counts(rows)), (name, rows)
    assert dash.status == "ok"
    # The ordinary cell got its own print and nothing else.
    assert plain.stdout == "plain\n" and plain.stderr == ""
    assert not plain.displays


@pytest.mark.kernel
def test_progress_api_and_map_items(kernel: Any) -> None:
    """``ipytasks.progress`` in a thread task and in a process task, and a --map task's items
    with a failure: ``k/n done, 1 failed`` in its status line."""
    k = kernel
    k.execute("import ipytasks")
    api = k.execute(
        "%%parallel prog_t\nimport ipytasks\nfor i in range(1, 4):\n"
        "    ipytasks.progress(i * 10, 30, 'rows')\n")
    proc = k.execute(
        "%%parallel prog_p --mode process\nimport ipytasks\nipytasks.progress(2, 8, 'files')\n")
    k.execute("%%parallel prog_a\nimport asyncio\nfrom tqdm.auto import tqdm\n"
              "async for i in tqdm(range(5)):\n    await asyncio.sleep(0.01)")
    items = k.execute("%%parallel prog_m --map x in range(4)\n"
                      "import time\ntime.sleep(0.4 * x)\nassert x != 1\nx")
    k.execute("%wait prog_t prog_p prog_a", timeout=60)
    k.execute("%wait prog_m", timeout=60, allow_errors=True)
    got = k.execute("for n in ('prog_t', 'prog_p', 'prog_a'):\n"
                    "    t = ipytasks.tasks[n]\n    p = t.progress\n"
                    "    print(n, t.mode, p.done, p.total, p.note)")
    assert got.stdout.split("\n")[:3] == [
        "prog_t thread 30 30 rows", "prog_p process 2 8 files", "prog_a async 5 5 "]
    for cell, words in ((api, "· 30/30"), (proc, "· 2/8")):
        ids = [i for i in cell.display_ids if i.startswith("ipytasks-")]
        assert words in k.display(ids[0])["text/plain"].split("\n")[0]
    ids = [i for i in items.display_ids if i.startswith("ipytasks-")]
    texts = [m["content"]["data"]["text/plain"].split("\n")[0] for m in k.messages()
             if m["msg_type"] == "update_display_data"
             and (m["content"].get("transient") or {}).get("display_id") == ids[0]]
    assert any(re.search(r"running [\d.]+s: [123]/4 done, 1 failed", t) for t in texts), texts
    table = k.execute("from ipytasks.overview.render import text_table\n"
                      "print(text_table(ipytasks.tasks))").stdout
    assert re.search(r"prog_m .* 3/4 done, 1 failed", table), table

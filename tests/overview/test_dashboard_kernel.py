"""The dashboard in a real kernel: it follows tasks, obeys clicks, and keeps its traffic low.

``%tasks`` is not wired to the dashboard yet, so the cell opens it through its entry
point. Front-end events (clicking a task's row, clicking Cancel) are sent as the
comm messages a browser would send.
"""

from __future__ import annotations

import time
from typing import Any

from ipytasks.overview.testing import timeline_tasks
from kernel_driver import Kernel

OPEN = (
    "from ipytasks.overview import open_dashboard\n"
    "from ipytasks import api\n"
    "{var} = open_dashboard(api._current().scheduler, api.tasks)\n"
    "display({var})"
)


def _dashboard_widgets(kernel: Kernel, since: set[str]) -> dict[str, str]:
    """comm ids of the parts of the dashboard opened after ``since``, by part."""
    states = kernel.widget_states()
    parts: dict[str, str] = {}
    for cid, widget in states.items():
        if cid in since:
            continue
        state = widget["state"]
        kind = widget["model_name"]
        if kind == "AnyModel" and "table" in state and "timeline" in state:
            parts["view"] = cid
        elif kind == "ButtonModel" and state.get("description") == "Cancel":
            parts["cancel"] = cid
    return parts


def _timeline(kernel: Kernel, cid: str) -> dict[str, str]:
    """Task name → state, as the browser reads them from the timeline's numbers."""
    state = kernel.widget_states()[cid]["state"]
    timeline = state.get("timeline", {})
    tasks = timeline_tasks(bytes(timeline.get("names", b"")), bytes(timeline.get("rows", b"")))
    return {name: entry[0] for name, entry in tasks.items()}


def _value(kernel: Kernel, cid: str, key: str = "table") -> Any:
    """What the view shows: the table's rows, or its ``summary`` line."""
    value = kernel.widget_states()[cid]["state"].get(key, "")
    return value.get("html", "") if key == "table" else value


def test_dashboard_follows_tasks_and_cancels_from_a_click(kernel: Kernel) -> None:
    """The table shows done/failed/running tasks; picking one and clicking Cancel cancels it."""
    before = set(kernel.widget_states())
    kernel.execute(OPEN.format(var="_dash1"))
    parts = _dashboard_widgets(kernel, before)
    assert {"view", "cancel"} <= set(parts), parts
    kernel.execute("%%parallel dash_ok\nimport asyncio\nawait asyncio.sleep(0.1)\nprint('hi')")
    kernel.execute("%%parallel dash_bad\nraise ValueError('nope')")
    kernel.execute("%%parallel dash_slow\nimport asyncio\nawait asyncio.sleep(60)")
    kernel.wait_until(
        lambda: all(
            s in _value(kernel, parts["view"])
            for s in ("<b>dash_ok</b>", "✔ done", "✖ failed", "▶ running")
        ),
        what="the dashboard's table to show done, failed and running tasks",
    )
    # The timeline is sent numbers, not a picture: it names the tasks and their states.
    kernel.wait_until(
        lambda: {k: v for k, v in _timeline(kernel, parts["view"]).items()
                 if k.startswith("dash_")}
        == {"dash_ok": "done", "dash_bad": "failed", "dash_slow": "running"},
        what="the timeline view to hold the three tasks in their states",
    )
    summary = _value(kernel, parts["view"], "summary")
    assert "✔ 1 done" in summary and "✖ 1 failed" in summary and "▶ 1 running" in summary

    # A click on the task's row picks it.
    assert '<tr data-task="dash_slow"' in _value(kernel, parts["view"])
    kernel.send_comm_msg(parts["view"], {"method": "custom", "content": {
        "event": "selected", "value": "dash_slow"}})
    kernel.wait_until(
        lambda: "background:#ddf4ff" in _value(kernel, parts["view"]),
        what="the picked row to be highlighted",
    )
    kernel.send_comm_msg(parts["cancel"], {"method": "custom", "content": {"event": "click"}})
    kernel.wait_until(
        lambda: "⊘ cancelled" in _value(kernel, parts["view"])
        and _timeline(kernel, parts["view"]).get("dash_slow") == "cancelled",
        what="the cancelled task to show as cancelled, in the table and the timeline",
    )
    out = kernel.execute("print(api.tasks['dash_slow'].state)").stdout
    assert out.strip() == "cancelled"
    # The filter, as the browser sets it: the table keeps the tasks that did not succeed.
    kernel.send_comm_msg(parts["view"], {"method": "custom", "content": {
        "event": "show", "value": "unsuccessful"}})
    kernel.wait_until(
        lambda: "<b>dash_ok</b>" not in (shown := _value(kernel, parts["view"]))
        and "<b>dash_bad</b>" in shown and "<b>dash_slow</b>" in shown,
        what="the table to list only the failed and the cancelled task",
    )
    kernel.execute("_dash1.close()")
    still = kernel.execute("print(_dash1._feed in api._current().scheduler.changes.feeds)")
    assert still.stdout.strip() == "False"


def test_many_quick_tasks_send_few_messages(kernel: Kernel) -> None:
    """1,000 tasks in a burst: the dashboard sends a few messages per second, and shows the end."""
    before = set(kernel.widget_states())
    kernel.execute(OPEN.format(var="_dash2"))
    parts = _dashboard_widgets(kernel, before)
    ids = set(kernel.widget_states()) - before
    start_count = len(kernel.messages())
    started = time.monotonic()
    kernel.execute(
        "import ipytasks\n"
        "for i in range(1000):\n"
        "    ipytasks.submit('import asyncio\\nawait asyncio.sleep(0.3)', f'dash_many{i}',"
        " quiet=True)"
    )
    total = int(kernel.execute("print(len(api.tasks))").stdout)
    assert total >= 1000

    def all_ended() -> bool:
        summary = _value(kernel, parts["view"], "summary")
        return f"<b>{total} tasks</b>" in summary and "running" not in summary and (
            "pending" not in summary
        )

    kernel.wait_until(all_ended, what=f"the summary to count {total} tasks, all ended")
    elapsed = max(time.monotonic() - started, 1.0)
    updates = [
        m for m in kernel.messages()[start_count:]
        if m["msg_type"] == "comm_msg" and m["content"].get("comm_id") in ids
    ]
    # One message per refresh (the view holds summary, timeline and table), two refreshes
    # a second at most, plus the last one.
    sent = sorted(m["header"]["date"].timestamp() for m in updates)
    busiest = max((sum(1 for t in sent if start <= t < start + 1) for start in sent), default=0)
    print(f"{len(updates)} dashboard messages in {elapsed:.2f} s, at most {busiest} in 1 s")
    assert busiest < 10, sent
    assert len(updates) <= 3 * elapsed + 3, (len(updates), elapsed)
    kernel.execute("_dash2.close()")


def test_retried_task_keeps_its_row(kernel: Kernel) -> None:
    """A retried task stays on the dashboard's page it was on, in its place (it used to
    move to the end: the last page)."""
    before = set(kernel.widget_states())
    kernel.execute(
        "import ipytasks\n"
        "tries3 = []\n"
        "ipytasks.submit('1', 'keep_a', quiet=True)\n"
        "ipytasks.submit('tries3.append(1)\\nif len(tries3) < 2:\\n    raise OSError(\"flaky\")',"
        " 'keep_flaky', quiet=True)\n"
        "for k in range(30):\n"
        "    ipytasks.submit('1', f'keep_more{k}', quiet=True)\n"
    )
    kernel.execute("%wait keep_more29")
    kernel.execute(OPEN.format(var="_dash3"))
    parts = _dashboard_widgets(kernel, before)
    # The page it is on (earlier tests of this kernel left tasks before it).
    at = int(kernel.execute("print(list(api.tasks).index('keep_flaky'))").stdout)
    kernel.send_comm_msg(parts["view"], {"method": "custom", "content": {
        "event": "page", "value": at // 20}})

    def row_of_flaky() -> str:
        html = _value(kernel, parts["view"])
        at = html.find('<tr data-task="keep_flaky"')
        return html[at:html.find("</tr>", at)] if at >= 0 else ""

    kernel.wait_until(lambda: "failed" in row_of_flaky(), what="keep_flaky failed, on its page")

    def page() -> list[str]:
        rows = _value(kernel, parts["view"]).split("<tr data-task=")[1:]
        return [row.split('"')[1] for row in rows]

    shown = page()
    assert "keep_flaky" in shown
    kernel.execute("%retry keep_flaky")
    kernel.wait_until(lambda: "done" in row_of_flaky(),
                      what="the retried keep_flaky done, on the same page")
    assert page() == shown
    kernel.execute("_dash3.close()")

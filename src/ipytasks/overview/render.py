"""The dashboard's content as text: summary, task table, static HTML snapshot.

Pure functions of task records and a time ``now``: the live widget shows what
they return, a headless run ``display(HTML(snapshot_html(ipytasks.tasks)))``s it,
and a terminal prints :func:`text_table`.
"""

from __future__ import annotations

import functools
import html
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..records import TaskState
from ..views import STATE_STYLE, describe, table
from ._common import lane_of, offset, records_of, run_start, seconds
from .timeline import render_svg, timeline_geometry

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = (
    "COLUMNS",
    "Summary",
    "snapshot_html",
    "summarize",
    "summary_html",
    "table_html",
    "text_table",
)

COLUMNS = ("state", "task", "chain/group", "mode", "started", "duration", "tries", "waits for")

# The table sets what cells inherit (no wrapping, left); each cell only its padding. Inline
# styles rather than a <style> block: a saved snapshot keeps them where sanitizers strip those.
_TABLE = ('<table style="border-collapse:collapse;font-family:sans-serif;font-size:12px;'
          'white-space:nowrap;text-align:left">')
_CELL = "padding:1px 8px"
_SELECTED_BG = "#ddf4ff"
_HEAD = "".join(f'<th style="{_CELL};text-align:left;border-bottom:1px solid #d0d7de">{c}</th>'
                for c in COLUMNS)


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts per state, the run's wall time and the time its tasks spent running.

    ``wall`` runs from the first start to the last end (to now while a task runs);
    ``work`` is the sum of every task's running time. Both are ``None``/0 until a
    task has started.
    """

    counts: dict[TaskState, int]
    total: int
    wall: float | None
    work: float

    @property
    def speedup(self) -> float | None:
        if not self.wall or self.wall <= 0:
            return None
        return self.work / self.wall

    def text(self) -> str:
        """``6.0 s of work in 2.0 s: 3.0×`` (or that nothing ran yet)."""
        if self.wall is None:
            return "nothing has run yet"
        speedup = self.speedup
        ratio = f": {speedup:.1f}×" if speedup is not None else ""
        return f"{seconds(self.work)} of work in {seconds(self.wall)}{ratio}"

    def line(self) -> str:
        """``4 tasks: 1 running, 3 done; 6.0 s of work in 2.0 s: 3.0×``."""
        counts = ", ".join(f"{n} {state.value}" for state, n in self.counts.items())
        s = "s" if self.total != 1 else ""
        return f"{self.total} task{s}: {counts}; {self.text()}"


def summarize(records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
              now: float | None = None) -> Summary:
    """The :class:`Summary` of ``records`` (records or a registry) at ``now``."""
    records = records_of(records)
    now = time.time() if now is None else now
    counts = dict.fromkeys(TaskState, 0)
    first: float | None = None
    last: float | None = None
    work = 0.0
    # Plain comparisons rather than min()/max() calls: this runs on every refresh, over
    # every task of the session.
    for r in records:
        counts[r.state] += 1
        start = r.started
        if start is None:
            continue
        end = r.ended
        if end is None:
            end = now
        if end > start:
            work += end - start
        if first is None or start < first:
            first = start
        if last is None or end > last:
            last = end
    wall = None if first is None or last is None else max(last - first, 0.0)
    return Summary(
        counts={s: n for s, n in counts.items() if n},
        total=len(records),
        wall=wall,
        work=work,
    )


def summary_html(summary: Summary) -> str:
    """One line of HTML: counts per state (icon and colour), then :meth:`Summary.text`.

    ``12 tasks  ▶ 3 running · ✔ 8 done · ✖ 1 failed — 6.0 s of work in 2.0 s: 3.0×``
    """
    if not summary.total:
        return '<div style="font-family:sans-serif"><b>ipytasks</b>: no tasks yet</div>'
    parts = []
    for state, n in summary.counts.items():
        icon, colour = STATE_STYLE[state]
        label = state.value.replace("_", " ")
        parts.append(f'<span style="color:{colour}">{icon} {n} {label}</span>')
    s = "s" if summary.total != 1 else ""
    return (
        f'<div style="font-family:sans-serif"><b>{summary.total} task{s}</b> &nbsp;'
        + " · ".join(parts)
        + f" &nbsp;— {html.escape(summary.text())}</div>"
    )


def _waits(record: TaskRecord) -> str:
    return ", ".join(f"{n}: {record.reasons.get(n, 'after')}" for n in record.waits_for)


_SPECIAL = frozenset('&<>"\'')


def _esc(text: str) -> str:
    # Most names, modes and lanes have nothing to escape; checking is cheaper than escaping.
    return text if _SPECIAL.isdisjoint(text) else html.escape(text)


@functools.lru_cache(maxsize=256)
def _clock(second: int) -> str:
    """The local time of day of an epoch second (tasks of a burst share a few)."""
    return time.strftime("%H:%M:%S", time.localtime(second))


#: Per state: the opening of its cell (up to its title) and the rest of the cell.
_STATE_CELL = {
    state: (f'<td style="{_CELL};color:{colour}" title="', f'">{icon} {state.value}</td>')
    for state, (icon, colour) in STATE_STYLE.items()
}
_TD = f'<td style="{_CELL}">'
_TD_RIGHT = f'<td style="{_CELL};text-align:right">'
_TD_DIM = f'<td style="{_CELL};color:#6e7781">'


def _row(record: TaskRecord, t0: float, now: float, selected: bool) -> str:
    state = record.state
    opening, closing = _STATE_CELL[state]
    start = record.started
    if start is not None:
        end = record.ended
        started = (f'<td style="{_CELL}" title="{_clock(int(start))}">{offset(start - t0)}</td>'
                   f"{_TD_RIGHT}{seconds((now if end is None else end) - start)}</td>")
    else:
        started = f"{_TD}</td>{_TD_RIGHT}</td>"
    waits = _esc(_waits(record)) if record.waits_for else ""
    lane = lane_of(record)
    name = _esc(record.name)
    return (
        f'<tr data-task="{name}"'
        + (' style="background:' + _SELECTED_BG + '">' if selected else ">")
        + f"{opening}{_esc(describe(record, now))}{closing}"
        f"{_TD}<b>{name}</b></td>"
        f"{_TD}{_esc(lane) if lane else ''}</td>"
        f"{_TD}{_esc(record.mode)}</td>"
        f"{started}"
        f"{_TD_RIGHT}{record.attempts}</td>"
        f"{_TD if state is TaskState.PENDING else _TD_DIM}{waits}</td>"
        "</tr>"
    )


def table_html(
    records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
    *,
    now: float | None = None,
    t0: float | None = None,
    selected: str | None = None,
    cache: dict[TaskRecord, tuple[float, bool, str]] | None = None,
) -> str:
    """An HTML table with one row per record (all of them: page before calling); each
    row's ``data-task`` is its task's name (the live table picks a task by its row).

    :param t0: the time ``started`` counts from (default: the first submission of ``records``).
    :param selected: the name of a task to highlight.
    :param cache: the rows of ended tasks from the last call (a live dashboard's), which
        do not change any more; it is left holding this call's.
    """
    records = records_of(records)
    now = time.time() if now is None else now
    if t0 is None:
        t0 = run_start(records) or now
    if cache is None:
        rows = "".join(_row(r, t0, now, r.name == selected) for r in records)
    else:
        kept: dict[TaskRecord, tuple[float, bool, str]] = {}
        parts = []
        for r in records:
            chosen = r.name == selected
            hit = cache.get(r)
            if hit is not None and hit[0] == t0 and hit[1] is chosen:
                row = hit[2]
            else:
                row = _row(r, t0, now, chosen)
            if r.ended is not None:
                kept[r] = (t0, chosen, row)
            parts.append(row)
        cache.clear()
        cache.update(kept)
        rows = "".join(parts)
    return f"{_TABLE}<thead><tr>{_HEAD}</tr></thead><tbody>{rows}</tbody></table>"


def _errors_html(records: list[TaskRecord]) -> str:
    failed = [r for r in records if r.state is TaskState.FAILED and r.error is not None]
    if not failed:
        return ""
    items = []
    for r in failed:
        icon, colour = STATE_STYLE[r.state]
        first = f"{type(r.error).__name__}: {r.error}"
        items.append(
            f'<details><summary style="color:{colour}">{icon} <b>{html.escape(r.name)}</b>: '
            f"{html.escape(first)}</summary>"
            f'<pre style="font-size:11px">{html.escape(r.error_text())}</pre></details>'
        )
    return "".join(items)


def snapshot_html(records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
                  now: float | None = None) -> str:
    """The dashboard's content, frozen: summary, timeline, full table, and failed tasks' errors.

    Self-contained HTML with inline styles, for ``display(HTML(...))`` after ``%wait``
    in a headless run, or for a report.
    """
    records = records_of(records)
    now = time.time() if now is None else now
    geometry = timeline_geometry(records, now)
    parts = [
        '<div class="ipytasks-snapshot">',
        summary_html(summarize(records, now)),
    ]
    if records:
        parts.append(render_svg(geometry, legend=True))
        parts.append(table_html(records, now=now, t0=geometry.t0))
        parts.append(_errors_html(records))
    parts.append("</div>")
    return "".join(parts)


def text_table(records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
               now: float | None = None) -> str:
    """The plain-text task table (``%tasks`` in a terminal), with the summary line under it.

    The table is :func:`ipytasks.views.table`'s; ``now`` only moves the summary's clock.
    """
    records = records_of(records)
    text = table(records)
    if records:
        text += "\n\n" + summarize(records, now).line()
    return text

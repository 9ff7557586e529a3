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
from ..views import STATE_STYLE, describe, map_items, table
from ._common import lane_of, offset, records_of, run_start, seconds
from .timeline import render_svg, timeline_geometry

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = (
    "COLUMNS",
    "SORTS",
    "Summary",
    "size",
    "snapshot_html",
    "summarize",
    "summary_html",
    "table_html",
    "text_table",
    "time_left",
)

COLUMNS = ("state", "task", "chain/group", "mode", "started", "duration", "progress", "CPU",
           "memory", "tries", "waits for", "now at")
#: The columns the live table sorts by, by what its header sends (``data-sort``).
SORTS = {"state": "state", "task": "task", "started": "started", "duration": "duration",
         "progress": "progress", "CPU": "cpu", "memory": "memory", "tries": "tries"}
#: What each column says when hovered.
_TITLES = {
    "progress": "how far the task says it is (a tqdm bar, ipytasks.progress): done/total, "
                "rate, time left; a --map task: its items",
    "CPU": "CPU time: of its thread (thread mode), of its worker process (process, dask)",
    "memory": "the most memory (resident) its worker process held while it ran",
    "now at": "where a running body is: the cell's line, and the function it is in "
              "(looked at once a second while this table shows it)",
}

# The table sets what cells inherit (no wrapping, left); each cell only its padding. Inline
# styles rather than a <style> block: a saved snapshot keeps them where sanitizers strip those.
_TABLE = ('<table style="border-collapse:collapse;font-family:sans-serif;font-size:12px;'
          'white-space:nowrap;text-align:left">')
_CELL = "padding:1px 8px"
_SELECTED_BG = "#ddf4ff"
_TH = f"{_CELL};text-align:left;border-bottom:1px solid #d0d7de"


def _head(sort: tuple[str, bool] | None) -> str:
    """The header row; with ``sort`` (the live table's), sortable columns say so."""
    cells = []
    for c in COLUMNS:
        title = _TITLES.get(c, "")
        key = SORTS.get(c)
        if sort is None or key is None:
            cells.append(f'<th style="{_TH}"' + (f' title="{title}"' if title else "")
                         + f">{c}</th>")
            continue
        arrow = (" ▼" if sort[1] else " ▲") if sort[0] == key else ""
        hint = f"{title}; " if title else ""
        cells.append(f'<th data-sort="{key}" style="{_TH};cursor:pointer" '
                     f'title="{hint}click to sort">{c}{arrow}</th>')
    return "".join(cells)


_HEAD = _head(None)


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
    #: Seconds until the run is estimated to end (:func:`time_left`), or ``None``.
    left: float | None = None

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
        left = f"; about {seconds(self.left)} left" if self.left is not None else ""
        return f"{seconds(self.work)} of work in {seconds(self.wall)}{ratio}{left}"

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
    took = 0.0
    ran = 0
    running = []
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
            running.append(r)
        elif r.options.map is None:
            took += end - start
            ran += 1
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
        left=time_left(running, counts[TaskState.PENDING], took / ran if ran else None, now),
    )


def time_left(running: list[TaskRecord], pending: int, typical: float | None,
              now: float) -> float | None:
    """When the run will end, in seconds from ``now``: a guess, or ``None`` without a basis.

    A running task ends when its progress says (what is left at its current rate), or,
    without progress, after ``typical`` seconds (the mean duration of the tasks that
    ended; ``--map`` tasks count through their items). A pending task takes ``typical``
    too. The work left is shared by as many tasks as run now, and the run lasts at least
    as long as its longest running task: ``max(longest, work left / running)``. When some
    unfinished task has no basis (no progress, and no ended task to go by or it already
    ran longer than they took), ``None``.
    """
    longest = work = 0.0
    width = 0
    for r in running:
        if r.options.map is not None:
            continue
        progress = r.progress
        left = progress.left if progress is not None else None
        if left is None:
            if typical is None or r.started is None or now - r.started >= typical:
                return None  # nothing to go by, or it already took longer than most
            left = typical - (now - r.started)
        longest = max(longest, left)
        work += left
        width += 1
    if pending:
        if typical is None:
            return None
        work += pending * typical
    if not width and not pending:
        return None
    return max(longest, work / max(width, 1))


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


def size(value: float) -> str:
    """Bytes for people: ``812 KB``, ``1.5 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit in ("B", "KB") or value >= 100 else (
                f"{value:.3g} {unit}")
        value /= 1000
    return f"{value:.3g} TB"


def _progress_cell(record: TaskRecord) -> str:
    """A small bar and ``37/100 · 12 it/s · 5 s left`` (a --map task: its items)."""
    if record.options.map is not None and record.children:
        children = record.children
        fraction: float | None = sum(1 for c in children if c.state.ended) / len(children)
        text = map_items(record)
    else:
        progress = record.progress
        if progress is None:
            return f"{_TD}</td>"
        fraction = progress.fraction
        text = progress.text() if record.ended is None else progress.count()
    bar = ""
    if fraction is not None:
        bar = ('<span style="display:inline-block;width:48px;height:7px;background:#eaeef2;'
               f'margin-right:4px"><span style="display:block;height:7px;width:{fraction:.0%};'
               'background:#1f6feb"></span></span>')
    text = _esc(text)
    return f'<td style="{_CELL}" class="ipytasks-progress" title="{text}">{bar}{text}</td>'


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
        f"{_progress_cell(record)}"
        f"{_TD_RIGHT}{seconds(cpu) if (cpu := record.cpu_time) is not None else ''}</td>"
        f"{_TD_RIGHT}{size(rss) if (rss := record.peak_rss) else ''}</td>"
        f"{_TD_RIGHT}{record.attempts}</td>"
        f"{_TD if state is TaskState.PENDING else _TD_DIM}{waits}</td>"
        f"{_TD_DIM}{_esc(record.where) if record.where and record.ended is None else ''}</td>"
        "</tr>"
    )


def table_html(
    records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
    *,
    now: float | None = None,
    t0: float | None = None,
    selected: str | None = None,
    cache: dict[TaskRecord, tuple[float, bool, str]] | None = None,
    sort: tuple[str, bool] | None = None,
) -> str:
    """An HTML table with one row per record (all of them: page before calling); each
    row's ``data-task`` is its task's name (the live table picks a task by its row).

    :param t0: the time ``started`` counts from (default: the first submission of ``records``).
    :param selected: the name of a task to highlight.
    :param cache: the rows of ended tasks from the last call (a live dashboard's), which
        do not change any more; it is left holding this call's.
    :param sort: the live table's order, ``(key, descending)`` (the rows come sorted):
        its header then offers to sort by a click.
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
    head = _HEAD if sort is None else _head(sort)
    return f"{_TABLE}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


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

"""The timeline (Gantt chart) of a run: geometry once, drawn as SVG or as a PNG file.

:func:`timeline_geometry` decides where every bar goes, in seconds since the run
began and lane numbers; :func:`render_svg` (the HTML snapshot, ``.svg`` files) and
:func:`render_png` (``.png`` files, with matplotlib) only draw what it decided, so the
files always agree. The live dashboard's ``dashboard.js`` lays out by the same rules.

Up to :data:`LABELLED_LANES` tasks get a lane each, labelled with the task's name
and state icon, and a dashed line for the time they waited before starting. More
tasks than that are packed into as few lanes as can hold them without overlap
(one lane per task running at the same moment), so 1,000 tasks stay readable as
a picture of concurrency; every bar still names its task when hovered (SVG
``<title>``). Stretches where no task ran are shaded and labelled as idle.
"""

from __future__ import annotations

import heapq
import html
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import TaskState
from ..views import STATE_STYLE
from ._common import offset, records_of, run_start, seconds

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = (
    "PNG_NEEDS_MATPLOTLIB",
    "UNKNOWN_SUFFIX",
    "Bar",
    "Timeline",
    "render_png",
    "render_svg",
    "timeline_geometry",
    "write_timeline",
)

#: Up to this many tasks, one lane per task; beyond, tasks are packed into shared lanes.
LABELLED_LANES = 40

PNG_NEEDS_MATPLOTLIB = (
    "saving the timeline as PNG needs matplotlib: pip install matplotlib "
    "(or save it as .svg, which needs nothing)"
)
UNKNOWN_SUFFIX = "cannot save a timeline as {suffix!r}: give a path ending in .svg or .png"

_IDLE_FILL = "#eaeef2"
_GRID = "#d0d7de"
_TEXT = "#57606a"
_RESPONSIVE = ' style="max-width:100%;height:auto"'


class Bar:
    """One task on the timeline; times are seconds since :attr:`Timeline.t0`.

    ``start`` is ``None`` for a task that never ran (pending, skipped, cancelled
    while waiting). ``queued`` is when it was submitted, when it waited before
    running (drawn as a dashed line up to ``start``, or to ``end`` if it never ran);
    it is ``None`` in the packed layout. ``title`` is the hover text, made on first use.
    """

    __slots__ = ("_record", "_t0", "_title", "end", "lane", "name", "queued", "start", "state")

    def __init__(self, record: TaskRecord, lane: int, t0: float, end: float,
                 queued: bool) -> None:
        self.name = record.name
        self.state = record.state
        self.lane = lane
        started = record.started
        self.start = start = started - t0 if started is not None else None
        self.end = end - t0
        submitted = record.submitted - t0
        self.queued = (
            submitted if queued and (start is None or start - submitted > 1e-6) else None
        )
        self._record = record
        self._t0 = t0
        self._title: str | None = None

    @property
    def title(self) -> str:
        if self._title is None:
            self._title = _title(self._record, self._t0, self.end + self._t0)
        return self._title

    def __repr__(self) -> str:
        return f"<Bar {self.name} {self.state} lane {self.lane}: {self.start}..{self.end}>"


@dataclass(frozen=True, slots=True)
class Timeline:
    """Where everything goes: ``lanes`` labels (empty when packed), bars, idle stretches."""

    t0: float
    span: float
    now: float
    lanes: tuple[str, ...]
    bars: tuple[Bar, ...]
    idle: tuple[tuple[float, float], ...]
    packed: bool
    ticks: tuple[float, ...]
    #: Tasks left out of a packed timeline because they never ran.
    omitted: int = 0

    @property
    def running(self) -> bool:
        return any(b.state is TaskState.RUNNING for b in self.bars)


def timeline_geometry(
    records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
    now: float | None = None,
    *,
    labelled_lanes: int = LABELLED_LANES,
) -> Timeline:
    """Lay out the bars of ``records`` (records or a registry) on one time axis.

    :param now: epoch seconds that running and waiting tasks extend to (default: now).
    :param labelled_lanes: the most tasks drawn one per lane before packing them.
    """
    records = records_of(records)
    now = time.time() if now is None else now
    t0 = run_start(records)
    if t0 is None:
        return Timeline(t0=now, span=1.0, now=0.0, lanes=(), bars=(), idle=(), packed=False,
                        ticks=_ticks(1.0))
    ends = [r.ended if r.ended is not None else now for r in records]
    t_end = max(ends) if all(r.ended is not None for r in records) else max(max(ends), now)
    span = max(t_end - t0, 1e-3)
    packed = len(records) > labelled_lanes

    bars: list[Bar] = []
    lanes: tuple[str, ...]
    omitted = 0
    if not packed:
        for lane, (record, end) in enumerate(zip(records, ends, strict=True)):
            bars.append(Bar(record, lane, t0, end, True))
        lanes = tuple(r.name for r in records)
    else:
        # First fit by start time: a lane is free again once its last task ended.
        # (start, position, record, end): sorted by start, ties in registry order.
        started = sorted(
            [(r.started, i, r, e) for i, (r, e) in enumerate(zip(records, ends, strict=True))
             if r.started is not None]
        )
        omitted = len(records) - len(started)
        free: list[int] = []  # lane numbers free at the current start time (a heap)
        busy: list[tuple[float, int]] = []  # (end, lane) of lanes in use (a heap)
        count = 0
        for start, _, record, end in started:
            while busy and busy[0][0] <= start:
                heapq.heappush(free, heapq.heappop(busy)[1])
            if free:
                lane = heapq.heappop(free)
            else:
                lane, count = count, count + 1
            heapq.heappush(busy, (end, lane))
            bars.append(Bar(record, lane, t0, end, False))
        lanes = ("",) * count
    return Timeline(
        t0=t0,
        span=span,
        now=now - t0,
        lanes=lanes,
        bars=tuple(bars),
        idle=_idle(bars, span),
        packed=packed,
        ticks=_ticks(span),
        omitted=omitted,
    )


def _title(record: TaskRecord, t0: float, end: float) -> str:
    state = record.state
    started = record.started
    head = f"{record.name}: {state.value}"
    if started is None:
        if state.ended:
            return (f"{head}\nnever ran (submitted {offset(record.submitted - t0)}, "
                    f"ended {offset(end - t0)})")
        since = f"{head}\nwaiting since {offset(record.submitted - t0)}"
        if record.waits_for:
            since += " for " + ", ".join(
                f"{n} ({record.reasons.get(n, 'after')})" for n in record.waits_for
            )
        return since
    took = seconds(end - started)
    if state is TaskState.RUNNING:
        return f"{head} ({record.mode})\nstarted {offset(started - t0)}, running for {took}"
    return f"{head} ({record.mode})\n{offset(started - t0)} to {offset(end - t0)} ({took})"


def _idle(bars: list[Bar], span: float) -> tuple[tuple[float, float], ...]:
    """Stretches between the first start and the last end where no task ran."""
    spans = sorted((b.start, b.end) for b in bars if b.start is not None)
    gaps: list[tuple[float, float]] = []
    if not spans:
        return ()
    reach = spans[0][1]
    for start, end in spans[1:]:
        if start > reach + span * 0.002:
            gaps.append((reach, start))
        reach = max(reach, end)
    return tuple(gaps)


def _ticks(span: float) -> tuple[float, ...]:
    raw = span / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return tuple(i * step for i in range(int(span / step + 1e-9) + 1))


#: What a packed timeline's lane number means (first fit: a bar takes the lowest free lane).
LANE_TITLE = "lane {k}: {k} tasks ran at once when a bar here started"


def lane_labels(lanes: int, row_h: float) -> list[int]:
    """The lanes of a packed timeline that get a label (numbered from 1: lane k holds the
    k-th task running at once): every 1, 2, 5, 10… lanes, at least 12 px apart."""
    least = math.ceil(12 / row_h)
    step = next((s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                 if s >= least), least)
    if step == 1:
        return list(range(1, lanes + 1))
    return [1, *range(step, lanes + 1, step)]


def _tick_label(value: float, step: float) -> str:
    if step >= 60:
        return f"{value / 60:g} min"
    digits = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{digits}f} s"


def _num(value: float) -> str:
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def render_svg(
    timeline: Timeline,
    *,
    width: int = 760,
    max_height: int = 360,
    legend: bool = False,
    responsive: bool = True,
) -> str:
    """Draw ``timeline`` as one ``<svg>`` element (inline HTML or a file's body).

    Bars are drawn in a group scaled to seconds and lanes: one short element each.

    :param legend: a row naming the states' colours above the chart (for files,
        which have no summary line beside them).
    :param responsive: shrink to the width of the output area (inline HTML).
    """
    tl = timeline
    lanes = max(len(tl.lanes), 1)
    if tl.packed:
        label_w = 12 + 7 * len(str(lanes))
        row_h = min(16.0, max(max_height / lanes, 0.5))
    else:
        longest = max((len(name) for name in tl.lanes), default=4)
        label_w = min(8 + 7 * (min(longest, 24) + 2), 200)
        row_h = 16.0
    top = 18 if legend else 4
    plot_h = lanes * row_h
    height = top + plot_h + 22 + (14 if tl.packed and tl.omitted else 0)
    plot_w = width - label_w - 20
    scale = plot_w / tl.span

    def x(t: float) -> float:
        return label_w + min(max(t, 0.0), tl.span) * scale

    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {_num(height)}" '
            f'width="{width}" height="{_num(height)}"{_RESPONSIVE if responsive else ""} '
            f'font-family="sans-serif" font-size="11" role="img" '
            f'aria-label="timeline of {len(tl.bars)} tasks">'
        )
    ]
    if legend:
        states = [s for s in TaskState if any(b.state is s for b in tl.bars)]
        lx = label_w
        for state in states:
            icon, colour = STATE_STYLE[state]
            out.append(
                f'<rect x="{lx}" y="4" width="10" height="10" fill="{colour}"/>'
                f'<text x="{lx + 13}" y="13" fill="{_TEXT}">{icon} {state}</text>'
            )
            lx += 30 + 7 * len(str(state))
    # Seconds across, lanes down: what is inside does not depend on the axis' length.
    out.append(f'<g transform="translate({label_w} {top}) scale({scale:.6g} {row_h:.6g})">')
    for a, b in tl.idle:
        out.append(
            f'<rect x="{_sec(a)}" y="0" width="{_sec(b - a)}" height="{lanes}" '
            f'fill="{_IDLE_FILL}"><title>idle {seconds(b - a)} '
            f"({offset(a)} to {offset(b)})</title></rect>"
        )
    # Bars under a pixel wide are drawn a pixel or two wide, so that they still show.
    least = 2.0 ** math.ceil(math.log2(1.0 / scale))
    # Enough decimals that a ``least``-wide bar keeps its place and width.
    digits = max(3, math.ceil(-math.log10(least)) + 1)
    by_state: dict[TaskState, list[str]] = {}
    for bar in tl.bars:
        by_state.setdefault(bar.state, []).append(_bar_svg(bar, least, digits))
    for state, fragments in by_state.items():
        out.append(f'<g fill="{STATE_STYLE[state][1]}">')
        out.extend(fragments)
        out.append("</g>")
    out.append("</g>")
    step = tl.ticks[1] - tl.ticks[0] if len(tl.ticks) > 1 else tl.span
    for tick in tl.ticks:
        tx = _num(x(tick))
        out.append(
            f'<line x1="{tx}" x2="{tx}" y1="{top}" y2="{_num(top + plot_h + 3)}" '
            f'stroke="{_GRID}" stroke-width="0.5"/>'
            f'<text x="{tx}" y="{_num(top + plot_h + 15)}" text-anchor="middle" '
            f'fill="{_TEXT}">{_tick_label(tick, step)}</text>'
        )
    if tl.running:
        nx = _num(x(tl.now))
        out.append(
            f'<line x1="{nx}" x2="{nx}" y1="{top}" y2="{_num(top + plot_h)}" '
            f'stroke="{_TEXT}" stroke-dasharray="2 2"><title>now</title></line>'
        )
    if not tl.packed:
        for bar in tl.bars:
            icon, colour = STATE_STYLE[bar.state]
            title = html.escape(bar.title, quote=False)
            if bar.queued is not None:
                # The wait before starting, in pixels: a dashed line stays thin at any scale.
                ly = _num(top + bar.lane * row_h + row_h / 2)
                until = bar.start if bar.start is not None else bar.end
                out.append(
                    f'<line x1="{_num(x(bar.queued))}" x2="{_num(x(until))}" y1="{ly}" '
                    f'y2="{ly}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="3 2">'
                    f"<title>{title}</title></line>"
                )
            name = bar.name if len(bar.name) <= 24 else bar.name[:23] + "…"
            out.append(
                f'<text x="{label_w - 6}" y="{_num(top + bar.lane * row_h + row_h * 0.72)}" '
                f'text-anchor="end" fill="{colour}">{icon} {html.escape(name)}'
                f"<title>{title}</title></text>"
            )
    if tl.packed:
        for k in lane_labels(lanes, row_h):
            out.append(
                f'<text x="{label_w - 6}" y="{_num(top + (k - 1) * row_h + min(row_h, 12) * 0.8)}" '
                f'text-anchor="end" fill="{_TEXT}">{k}'
                f'<title>{LANE_TITLE.format(k=k)}</title></text>'
            )
    if tl.packed and tl.omitted:
        out.append(
            f'<text x="{width - 20}" y="{_num(top + plot_h + 31)}" text-anchor="end" '
            f'fill="{_TEXT}">+{tl.omitted} not started</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _sec(value: float, digits: int = 3) -> str:
    """A time in the scaled group, to ``digits`` decimals, without trailing zeros."""
    text = f"{value:.{digits}f}".rstrip("0")
    return text.removesuffix(".")


def _bar_svg(bar: Bar, least: float, digits: int) -> str:
    """A task's bar in the scaled group (seconds across, lanes down), ``least`` wide at least.

    The fill comes from the group of its state.
    """
    start = bar.start
    if start is None:
        return ""
    title = bar.title
    if "<" in title or "&" in title or ">" in title:
        title = html.escape(title, quote=False)
    return (
        f'<rect x="{start:.{digits}f}" y="{bar.lane}.15" '
        f'width="{max(least, bar.end - start):.{digits}f}" height="0.7">'
        f"<title>{title}</title></rect>"
    )


def render_png(timeline: Timeline, path: str | Path, *, dpi: int = 100) -> Path:
    """Draw ``timeline`` into a PNG file with matplotlib (without touching pyplot's state).

    :raises ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(PNG_NEEDS_MATPLOTLIB) from exc
    tl = timeline
    lanes = max(len(tl.lanes), 1)
    fig = Figure(figsize=(10, min(1.5 + 0.28 * lanes, 12)), dpi=dpi)
    ax = fig.add_subplot()
    for a, b in tl.idle:
        ax.axvspan(a, b, color=_IDLE_FILL, zorder=0)
    for bar in tl.bars:
        colour = STATE_STYLE[bar.state][1]
        if bar.queued is not None:
            until = bar.start if bar.start is not None else bar.end
            ax.hlines(bar.lane, bar.queued, until, colors=colour, linestyles="dashed", linewidth=1)
        if bar.start is not None:
            ax.barh(bar.lane, max(bar.end - bar.start, tl.span * 0.002), left=bar.start,
                    height=0.7, color=colour)
    ax.set_ylim(lanes - 0.5, -0.5)
    if tl.packed:
        ax.set_yticks([])
        ax.set_ylabel(f"{lanes} lanes (tasks running at once)")
    else:
        # Name and state: the colour is not the only sign of the state.
        states_by_lane = {b.lane: b.state for b in tl.bars}
        labels = [f"{name} ({states_by_lane[i]})" for i, name in enumerate(tl.lanes)]
        ax.set_yticks(range(len(tl.lanes)), labels=labels)
    ax.set_xlim(0, tl.span)
    ax.set_xlabel("seconds since the first submission")
    states = [s for s in TaskState if any(b.state is s for b in tl.bars)]
    if states:
        ax.legend(handles=[Patch(color=STATE_STYLE[s][1], label=str(s)) for s in states],
                  loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(states),
                  frameon=False)
    path = Path(path)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def write_timeline(
    records: Iterable[TaskRecord] | Mapping[str, TaskRecord],
    path: str | Path,
    *,
    now: float | None = None,
) -> Path:
    """Save the timeline of ``records`` (records or a registry) and return the file's path.

    ``.svg`` needs nothing; ``.png`` needs matplotlib.

    :raises ValueError: the path ends in something else.
    :raises ImportError: a ``.png`` was asked for and matplotlib is not installed.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise ValueError(UNKNOWN_SUFFIX.format(suffix=suffix or path.name))
    geometry = timeline_geometry(records, now)
    if suffix == ".png":
        return render_png(geometry, path)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + render_svg(geometry, legend=True, responsive=False)
        + "\n",
        encoding="utf-8",
    )
    return path

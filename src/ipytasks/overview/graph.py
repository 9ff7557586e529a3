"""The task graph as a picture: laid out once, drawn as SVG, Mermaid text or plain text.

:func:`graph_geometry` places every task of a :class:`~ipytasks.taskgraph.GraphSnapshot`
and routes every edge; :func:`render_svg` draws that in the tasks' states. The
``%tasks --graph`` output, ``ipytasks.graph()`` and its files, and the dashboard's graph
view all show this one drawing: the dashboard's browser code only recolours its nodes
as states change and makes them clickable. The layout depends on the names and edges
alone, not on states, so it is computed again only when a task or an edge is added.

The layout is grandalf's Sugiyama layout (the layered drawing Graphviz's ``dot`` makes:
layers by longest path, each task then moved as near as it can be to the tasks that wait
for it; crossings reduced by median ordering; coordinates by Brandes and Köpf; long edges
routed through one point per layer they cross), read left to right: a task's column is
further right than every task it waits for. Three adjustments, each where it is made:
two of grandalf's steps are made linear where they were quadratic (:func:`_sugiyama`),
and boxes its coordinates let overlap are pushed apart (:func:`_separate`). Each connected
part of the graph is laid out on its own, and the parts are set in rows in submission
order, so tasks that wait for nothing and for which nothing waits take a few rows of
boxes, not a column a screen high.

Edges: a data edge is labelled with the names that cause it (``rows``); a chain's edge
is thick; an ``--after`` edge is dashed. A ``--map`` task is one box with its item count.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import TaskState
from ..taskgraph import AFTER, CHAIN, DATA, GraphNode, GraphSnapshot
from ..views import STATE_STYLE

__all__ = (
    "EdgeLine",
    "GraphGeometry",
    "NodeBox",
    "graph_format",
    "graph_geometry",
    "graph_html",
    "graph_mermaid",
    "graph_text",
    "node_title",
    "render_svg",
    "states_of",
    "write_graph",
)

#: A task's box: its height, the space between boxes of one column, its padding.
NODE_H = 24
NODE_GAP = 10
PAD = 8
#: Width of a character of the 12 px sans-serif labels, and of the state icon before it
#: (an estimate: the kernel cannot measure text; generous, so labels fit).
CHAR_W = 7.2
ICON_W = 16
#: Labels longer than this are cut (with …); their full text is the hover text.
LABEL_CHARS = 28
EDGE_LABEL_CHARS = 24
#: Space between columns: at least this, more for the longest edge label of the part.
LAYER_GAP = 44
LAYER_GAP_MAX = 200
#: Space between laid-out parts of the graph, and the width a row of parts fills.
PART_GAP = 24
ROW_WIDTH = 900
MARGIN = 8
LEGEND_H = 22

_TEXT = "#1f2328"
_DIM = "#57606a"
_EDGE = "#8c959f"
_DATA_EDGE = "#6e7781"

UNKNOWN_FORMAT = (
    "cannot save the task graph as {suffix!r}: give a path ending in .svg or .mmd "
    "(Mermaid), or format='svg' or 'mermaid'"
)
FORMATS = ("svg", "mermaid")
_SUFFIXES = {".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid"}


@dataclass(frozen=True, slots=True)
class NodeBox:
    """Where a task's box goes: its top-left corner and size; ``label`` is the name as
    shown (cut when long), ``note`` a map's item count (``×20``)."""

    name: str
    x: float
    y: float
    w: float
    h: float
    label: str
    note: str


@dataclass(frozen=True, slots=True)
class EdgeLine:
    """An edge drawn: its SVG path, arrow head, label and where the label goes."""

    source: str
    target: str
    kinds: tuple[str, ...]
    names: tuple[str, ...]
    why: str
    path: str
    arrow: str
    label: str
    lx: float
    ly: float


@dataclass(frozen=True, slots=True)
class GraphGeometry:
    """Every box and edge of a graph, in pixels; nodes in the graph's order."""

    width: float
    height: float
    nodes: tuple[NodeBox, ...]
    edges: tuple[EdgeLine, ...]


def _note(node: GraphNode) -> str:
    if not node.is_map:
        return ""
    return f"×{node.items}" if node.items is not None else "×?"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _edge_label(names: tuple[str, ...]) -> str:
    return _cut(", ".join(names), EDGE_LABEL_CHARS)


def graph_geometry(graph: GraphSnapshot) -> GraphGeometry:
    """Lay ``graph`` out.

    The result depends only on names, map item counts and edges, and the last few are
    kept: a graph whose tasks only changed state costs a lookup.
    """
    nodes = tuple((n.name, _note(n)) for n in graph.nodes)
    edges = tuple((e.source, e.target, e.kinds, e.names, e.why) for e in graph.edges)
    return _layout(nodes, edges)


class _View:
    """What grandalf reads of a vertex (its size) and writes (its centre); for an edge,
    the points of its route."""

    __slots__ = ("h", "points", "w", "xy")

    def __init__(self, w: float = 0.0, h: float = 0.0) -> None:
        self.w, self.h = w, h
        self.xy: tuple[float, float] = (0.0, 0.0)
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = points


def _parts(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """The connected parts of a graph of ``n`` nodes, each in node order, in the order of
    their first node."""
    root = list(range(n))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            root[max(ra, rb)] = min(ra, rb)
    parts: dict[int, list[int]] = {}
    for i in range(n):
        parts.setdefault(find(i), []).append(i)
    return list(parts.values())


class _Conflicts(list[Any]):
    """grandalf's list of alignment conflicts, asked ``pair in conflicts`` once per edge
    and layer: answered from a set, which keeps a layout of 1,000 tasks from growing
    with the square of its edges (the list alone: 1 s instead of 0.3 s)."""

    def __init__(self, pairs: list[Any]) -> None:
        super().__init__(pairs)
        self._set = set(pairs)

    def __contains__(self, pair: object) -> bool:
        return pair in self._set


def _sugiyama(core: Any) -> Any:
    from grandalf.layouts import SugiyamaLayout

    class Sugiyama(SugiyamaLayout):
        def _detect_alignment_conflicts(self) -> None:
            super()._detect_alignment_conflicts()
            self.conflicts: list[Any] = _Conflicts(self.conflicts)

        def _rank_init(self, unranked: list[Any]) -> None:
            # grandalf's ranking (a vertex is ranked once all its in-edges were scanned),
            # counting each vertex's unscanned in-edges instead of listing them again for
            # each of its parents: that was quadratic in a vertex's in-degree (a task that
            # reads what 998 tasks bind took 0.5 s for this step alone).
            unscanned: dict[Any, int] = {}
            while unranked:
                ready = []
                for vertex in unranked:
                    self.setrank(vertex)
                    for edge in vertex.e_out():
                        child = edge.v[1]
                        left = unscanned.get(child)
                        left = (len(child.e_in()) if left is None else left) - 1
                        unscanned[child] = left
                        if left == 0:
                            ready.append(child)
                unranked = ready

        def _rank_optimize(self) -> None:
            # grandalf's: from the last column back, move each task to the column right
            # before the tasks that wait for it, when all of them are at least that far.
            # A task already there is left where it is rather than checked against all its
            # children again for each child (quadratic for a task that 998 tasks read).
            children: dict[Any, list[Any]] = {}
            for layer in reversed(self.layers):
                for vertex in layer:
                    rank = self.grx[vertex].rank
                    for parent in vertex.N(-1):
                        attrs = self.grx[parent]
                        if attrs.rank == rank - 1:
                            continue
                        kids = children.get(parent)
                        if kids is None:
                            kids = children[parent] = parent.N(+1)
                        if all(self.grx[kid].rank >= rank for kid in kids):
                            self.layers[attrs.rank].remove(parent)
                            attrs.rank = rank - 1
                            self.layers[rank - 1].append(parent)

    return Sugiyama(core)


def _separate(sugiyama: Any) -> None:
    """Push apart boxes of one column that overlap, keeping their order, then route the
    edges again. grandalf places each box at the mean of the two middle positions its
    four Brandes–Köpf alignments give, which can bring neighbours closer than their sizes
    allow (a few boxes in a graph of hundreds)."""
    moved = False
    for layer in sugiyama.layers:
        reach = -float("inf")
        for vertex in layer:
            view = vertex.view
            along, across = view.xy
            least = reach + view.w / 2
            if along < least:
                view.xy = (least, across)
                along = least
                moved = True
            reach = along + view.w / 2 + sugiyama.xspace
    if moved:
        sugiyama.draw_edges()


@functools.lru_cache(maxsize=8)
def _layout(nodes: tuple[tuple[str, str], ...],
            edges: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], str], ...],
            ) -> GraphGeometry:
    from grandalf.graphs import Edge, Vertex, graph_core

    index = {name: i for i, (name, _) in enumerate(nodes)}
    labels = [_cut(name, LABEL_CHARS) for name, _ in nodes]
    widths = [PAD * 2 + ICON_W + CHAR_W * (len(label) + (len(note) + 1 if note else 0))
              for label, (_, note) in zip(labels, nodes)]
    pairs = [(index[s], index[t]) for s, t, *_ in edges]
    # Centres, in the layout's own frame of each part: x along the layers (left to right).
    centre: list[tuple[float, float]] = [(0.0, 0.0)] * len(nodes)
    routes: list[list[tuple[float, float]]] = [[] for _ in edges]
    placed: list[tuple[list[int], list[int], float, float, float, float]] = []
    by_part: dict[int, list[int]] = {}
    parts = _parts(len(nodes), pairs)
    part_of = {}
    for k, members in enumerate(parts):
        for i in members:
            part_of[i] = k
    for j, (a, _) in enumerate(pairs):
        by_part.setdefault(part_of[a], []).append(j)
    for k, members in enumerate(parts):
        own = by_part.get(k, [])
        if not own:  # a task alone: its box where the part starts
            (i,) = members
            centre[i] = (widths[i] / 2, NODE_H / 2)
            placed.append((members, own, 0.0, 0.0, widths[i], NODE_H))
            continue
        # grandalf lays layers out top to bottom: its x runs along a layer (our y), its
        # y across layers (our x). So a box's height is its "w" there, its width its "h".
        vertices = {i: Vertex(i) for i in members}
        for i, v in vertices.items():
            v.view = _View(w=NODE_H, h=widths[i])
        lines = []
        for j in own:
            a, b = pairs[j]
            line = Edge(vertices[a], vertices[b])
            line.view = _View()
            lines.append(line)
        sugiyama = _sugiyama(graph_core(list(vertices.values()), lines))
        sugiyama.xspace = NODE_GAP
        longest = max((len(_edge_label(edges[j][3])) for j in own), default=0)
        sugiyama.yspace = min(max(LAYER_GAP, CHAR_W * longest + 28), LAYER_GAP_MAX)
        # optimize: each task as near as it can be to the tasks that wait for it, so an
        # edge crosses few columns (fewer route points: a 100-step chain whose steps each
        # follow their own load is laid out in a third of the time, and reads better).
        sugiyama.init_all(optimize=True)
        sugiyama.draw()
        _separate(sugiyama)
        for i, v in vertices.items():
            across, along = v.view.xy
            centre[i] = (along, across)
        for j, line in zip(own, lines):
            routes[j] = [(along, across) for across, along in line.view.points]
        left = min(centre[i][0] - widths[i] / 2 for i in members)
        right = max(centre[i][0] + widths[i] / 2 for i in members)
        top = min([centre[i][1] - NODE_H / 2 for i in members]
                  + [y for j in own for _, y in routes[j]])
        bottom = max([centre[i][1] + NODE_H / 2 for i in members]
                     + [y for j in own for _, y in routes[j]])
        placed.append((members, own, left, top, right - left, bottom - top))

    # Parts in rows, each row as wide as ROW_WIDTH allows (a wider part has a row of its own).
    x = y = float(MARGIN)
    row_h = 0.0
    width = 0.0
    boxes: list[NodeBox | None] = [None] * len(nodes)
    lines_out: list[EdgeLine | None] = [None] * len(edges)
    for members, own, left, top, w, h in placed:
        if x > MARGIN and x + w > ROW_WIDTH:
            x, y = float(MARGIN), y + row_h + PART_GAP
            row_h = 0.0
        dx, dy = x - left, y - top
        for i in members:
            cx, cy = centre[i]
            boxes[i] = NodeBox(nodes[i][0], cx - widths[i] / 2 + dx, cy - NODE_H / 2 + dy,
                               widths[i], NODE_H, labels[i], nodes[i][1])
        for j in own:
            points = [(px + dx, py + dy) for px, py in routes[j]]
            lines_out[j] = _edge_line(edges[j], points, boxes[pairs[j][0]], boxes[pairs[j][1]])
        x += w + PART_GAP
        row_h = max(row_h, h)
        width = max(width, x - PART_GAP + MARGIN)
    height = y + row_h + MARGIN + LEGEND_H
    return GraphGeometry(max(width, 360.0), height,
                         tuple(b for b in boxes if b is not None),
                         tuple(e for e in lines_out if e is not None))


def _edge_line(edge: tuple[str, str, tuple[str, ...], tuple[str, ...], str],
               points: list[tuple[float, float]], source: NodeBox | None,
               target: NodeBox | None) -> EdgeLine:
    """A smooth path through the route's points, leaving the source's side and entering
    the target's side level; its label halfway along its first stretch."""
    assert source is not None and target is not None
    if len(points) < 2:
        points = [(source.x + source.w / 2, source.y + source.h / 2),
                  (target.x + target.w / 2, target.y + target.h / 2)]
    (sx, sy), (tx, ty) = points[0], points[-1]
    forward = points[1][0] >= sx  # a route may run backwards (a name's new task, a cycle)
    points[0] = (source.x + source.w if forward else source.x, sy)
    entering = points[-2][0] <= tx  # from the left, as most do
    points[-1] = (target.x if entering else target.x + target.w, ty)
    parts = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        mid = (x0 + x1) / 2
        parts.append(f"C{mid:.1f},{y0:.1f} {mid:.1f},{y1:.1f} {x1:.1f},{y1:.1f}")
    ex, ey = points[-1]
    tip = 6.0 if entering else -6.0
    arrow = f"M{ex - tip:.1f},{ey - 3.5:.1f}L{ex:.1f},{ey:.1f}L{ex - tip:.1f},{ey + 3.5:.1f}Z"
    (x0, y0), (x1, y1) = points[0], points[1]
    return EdgeLine(edge[0], edge[1], edge[2], edge[3], edge[4], "".join(parts), arrow,
                    _edge_label(edge[3]), (x0 + x1) / 2, (y0 + y1) / 2 - 3)


# -- drawing ----------------------------------------------------------------------------


def node_title(name: str, state: TaskState | str, note: str = "") -> str:
    """A box's hover text: ``fetch: done``, ``calls: running (20 items)``."""
    items = f" ({note.removeprefix('×')} items)" if note else ""
    return f"{name}: {str(state).replace('_', ' ')}{items}"


def _edge_style(kinds: tuple[str, ...]) -> str:
    if AFTER in kinds:
        return f'stroke="{_EDGE}" stroke-width="1.3" stroke-dasharray="5 3"'
    if CHAIN in kinds:
        return f'stroke="{_EDGE}" stroke-width="2.4"'
    return f'stroke="{_DATA_EDGE}" stroke-width="1.3"'


def _edge_kind(kinds: tuple[str, ...]) -> str:
    return " ".join(kinds) or DATA


def render_svg(geometry: GraphGeometry, states: Mapping[str, TaskState]) -> str:
    """The graph as one SVG element, each box in its task's state colour.

    Boxes are ``<g class="ipytasks-node" data-task=NAME data-state=STATE>``, edges
    ``<g class="ipytasks-edge" data-source=… data-target=… data-kind=…>`` with their label
    in a ``<text>``; every box and edge says what it is when hovered.
    """
    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ipytasks-graph" '
        f'viewBox="0 0 {geometry.width:.0f} {geometry.height:.0f}" '
        f'width="{geometry.width:.0f}" height="{geometry.height:.0f}" '
        f'font-family="sans-serif" font-size="12" role="img" '
        f'aria-label="task graph: {len(geometry.nodes)} tasks, {len(geometry.edges)} edges">'
    ]
    for e in geometry.edges:
        title = esc(f"{e.target} waits for {e.source}: {e.why}" if e.why
                    else f"{e.target} waits for {e.source}")
        out.append(
            f'<g class="ipytasks-edge" data-source="{esc(e.source)}" '
            f'data-target="{esc(e.target)}" data-kind="{_edge_kind(e.kinds)}">'
            f"<title>{title}</title>"
            f'<path d="{e.path}" fill="none" {_edge_style(e.kinds)}/>'
            f'<path d="{e.arrow}" fill="{_DATA_EDGE}"/>'
        )
        if e.label:
            out.append(
                f'<text class="ipytasks-edge-label" x="{e.lx:.1f}" y="{e.ly:.1f}" '
                f'text-anchor="middle" font-size="11" fill="{_DIM}" stroke="#ffffff" '
                f'stroke-width="3" paint-order="stroke">{esc(e.label)}</text>'
            )
        out.append("</g>")
    for box in geometry.nodes:
        state = states.get(box.name, TaskState.PENDING)
        icon, colour = STATE_STYLE[TaskState(state)]
        note = (f'<tspan fill="{_DIM}"> {esc(box.note)}</tspan>' if box.note else "")
        out.append(
            f'<g class="ipytasks-node" data-task="{esc(box.name)}" data-state="{state}">'
            f"<title>{esc(node_title(box.name, state, box.note))}</title>"
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" '
            f'rx="4" fill="{colour}" fill-opacity="0.12" stroke="{colour}" stroke-width="1.5"/>'
            f'<text x="{box.x + PAD:.1f}" y="{box.y + box.h / 2 + 4:.1f}" fill="{_TEXT}">'
            f'<tspan class="ipytasks-icon" fill="{colour}">{icon}</tspan> '
            f"{esc(box.label)}{note}</text></g>"
        )
    out.append(_legend(geometry))
    out.append("</svg>")
    return "".join(out)


def _legend(geometry: GraphGeometry) -> str:
    y = geometry.height - LEGEND_H / 2
    parts = []
    x = float(MARGIN)
    for words, kinds in (("data: the names it waits for", (DATA,)), ("chain", (CHAIN,)),
                         ("--after", (AFTER,))):
        parts.append(f'<path d="M{x:.0f},{y - 4:.0f}h22" fill="none" {_edge_style(kinds)}/>'
                     f'<text x="{x + 28:.0f}" y="{y:.0f}">{html.escape(words)}</text>')
        x += 28 + CHAR_W * 0.85 * len(words) + 18
    return (f'<g class="ipytasks-legend" font-size="10" fill="{_DIM}">{"".join(parts)}</g>')


def graph_html(geometry: GraphGeometry, states: Mapping[str, TaskState]) -> str:
    """The SVG in a block that scrolls sideways when the graph is wider than the page."""
    return (f'<div class="ipytasks-graph-view" style="overflow-x:auto">'
            f"{render_svg(geometry, states)}</div>")


def states_of(graph: GraphSnapshot) -> dict[str, TaskState]:
    """Each task's state, by name (what :func:`render_svg` colours by)."""
    return {n.name: n.state for n in graph.nodes}


# -- as text ------------------------------------------------------------------------------


def _why_short(kinds: tuple[str, ...], names: tuple[str, ...], why: str) -> str:
    if DATA in kinds:
        return ", ".join(names)
    if CHAIN in kinds:
        return why.split(";")[0]
    return AFTER


def graph_text(graph: GraphSnapshot) -> str:
    """One line per task: its state, and what it waits for and why.

    ``○ report pending ← feature_sum (sums), clean (table)``
    """
    if not graph.nodes:
        return "no tasks yet"
    waits: dict[str, list[str]] = {}
    for e in graph.edges:
        waits.setdefault(e.target, []).append(f"{e.source} ({_why_short(e.kinds, e.names, e.why)})")
    tasks, edges = len(graph.nodes), len(graph.edges)
    lines = [f"task graph: {tasks} task{'s' if tasks != 1 else ''}, "
             f"{edges} edge{'s' if edges != 1 else ''}"]
    for n in graph.nodes:
        icon = STATE_STYLE[n.state][0]
        items = f" ×{n.items if n.items is not None else '?'}" if n.is_map else ""
        line = f"{icon} {n.name}{items} {str(n.state).replace('_', ' ')}"
        if n.name in waits:
            line += " ← " + ", ".join(waits[n.name])
        lines.append(line)
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def graph_mermaid(graph: GraphSnapshot) -> str:
    """The graph as a Mermaid flowchart (for a README or a code host that draws Mermaid):
    boxes in their state's colour with its icon, data edges labelled with their names,
    chains thick, ``--after`` dashed."""
    ids = {n.name: f"t{i}" for i, n in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for n in graph.nodes:
        icon = STATE_STYLE[n.state][0]
        items = f" ×{n.items if n.items is not None else '?'}" if n.is_map else ""
        lines.append(f'    {ids[n.name]}["{icon} {_mermaid_text(n.name)}{items}"]')
    for e in graph.edges:
        arrow = "-.->" if AFTER in e.kinds else "==>" if CHAIN in e.kinds else "-->"
        label = f'|"{_mermaid_text(", ".join(e.names))}"|' if e.names else ""
        lines.append(f"    {ids[e.source]} {arrow}{label} {ids[e.target]}")
    used: dict[TaskState, list[str]] = {}
    for n in graph.nodes:
        used.setdefault(n.state, []).append(ids[n.name])
    for state, members in used.items():
        colour = STATE_STYLE[state][1]
        lines.append(f"    classDef state_{state} stroke:{colour},stroke-width:2px,color:#1f2328")
        lines.append(f"    class {','.join(members)} state_{state}")
    return "\n".join(lines) + "\n"


def graph_format(path: str | os.PathLike[str] | None, format: str | None) -> str:
    """The format to write: ``format`` when given, else the one ``path``'s suffix names.

    :raises ValueError: an unknown format or suffix.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        return format
    if path is None:
        return "svg"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(UNKNOWN_FORMAT.format(suffix=suffix))
    return _SUFFIXES[suffix]


def write_graph(
    graph: GraphSnapshot, path: str | os.PathLike[str], format: str | None = None
) -> Path:
    """Write ``graph`` to ``path`` as SVG or Mermaid (by ``format``, else by the suffix:
    ``.svg``, ``.mmd``, ``.mermaid``); return the path."""
    kind = graph_format(path, format)
    path = Path(path)
    if kind == "svg":
        geometry = graph_geometry(graph)
        text = render_svg(geometry, states_of(graph))
    else:
        text = graph_mermaid(graph)
    path.write_text(text, encoding="utf-8")
    return path

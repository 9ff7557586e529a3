"""The task graph drawn: layout, SVG, Mermaid, text, and ``ipytasks.graph()`` files."""

from __future__ import annotations

import subprocess
import sys
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from ipytasks.overview.graph import (
    graph_geometry,
    graph_mermaid,
    graph_text,
    render_svg,
    states_of,
)
from ipytasks.records import TaskState
from ipytasks.taskgraph import GraphEdge, GraphNode, GraphSnapshot
from ipytasks.views import STATE_STYLE

DONE, RUNNING, PENDING = TaskState.DONE, TaskState.RUNNING, TaskState.PENDING


def pipeline() -> GraphSnapshot:
    """load → clean → (sum, peak) → report, a chain a → b, an --after edge, a map, a loner."""
    n = GraphNode
    return GraphSnapshot(
        (n("load", DONE, "async"), n("clean", RUNNING, "thread"), n("sum", PENDING, "thread"),
         n("peak", PENDING, "thread"), n("report", PENDING, "async"), n("a", DONE, "async"),
         n("b", DONE, "async"), n("calls", PENDING, "async", True, 20),
         n("alone", TaskState.FAILED, "thread")),
        (GraphEdge("load", "clean", ("data",), ("raw",), "reads raw"),
         GraphEdge("clean", "sum", ("data",), ("table",), "reads table"),
         GraphEdge("clean", "peak", ("data",), ("table",), "reads table"),
         GraphEdge("sum", "report", ("data",), ("sums",), "reads sums"),
         GraphEdge("peak", "report", ("data",), ("peaks",), "reads peaks"),
         GraphEdge("clean", "report", ("data",), ("table",), "reads table"),
         GraphEdge("a", "b", ("chain",), (), "chain main"),
         GraphEdge("b", "calls", ("after",), (), "after")),
    )


def test_layout_reads_left_to_right_without_overlaps() -> None:
    """Every edge runs from its source's column to a column further right; no two boxes
    overlap; a task waiting for nothing and nothing waiting for it is still placed."""
    graph = pipeline()
    geometry = graph_geometry(graph)
    boxes = {b.name: b for b in geometry.nodes}
    assert list(boxes) == [n.name for n in graph.nodes]
    for edge in graph.edges:
        assert boxes[edge.source].x + boxes[edge.source].w < boxes[edge.target].x, edge
    placed = list(boxes.values())
    for i, p in enumerate(placed):
        assert 0 <= p.x and p.x + p.w <= geometry.width and 0 <= p.y
        assert p.y + p.h <= geometry.height
        for q in placed[i + 1:]:
            apart = (p.x + p.w <= q.x or q.x + q.w <= p.x or p.y + p.h <= q.y
                     or q.y + q.h <= p.y)
            assert apart, (p, q)
    assert boxes["calls"].note == "×20" and boxes["load"].note == ""


def test_no_boxes_overlap_in_a_large_tangled_graph() -> None:
    """300 tasks, each waiting for up to two of the 30 before it: no two boxes overlap
    (grandalf alone overlaps a few in such graphs), and every edge still runs rightwards."""
    import random

    rnd = random.Random(7)
    names = [f"task{i}" for i in range(300)]
    pairs = sorted({(names[rnd.randint(max(0, i - 30), i - 1)], names[i])
                    for i in range(1, 300) for _ in range(rnd.randint(0, 2))})
    graph = GraphSnapshot(tuple(GraphNode(n, DONE, "async") for n in names),
                      tuple(GraphEdge(a, b, ("data",), ("x",), "reads x") for a, b in pairs))
    geometry = graph_geometry(graph)
    boxes = sorted(geometry.nodes, key=lambda b: b.x)
    for i, p in enumerate(boxes):
        for q in boxes[i + 1:]:
            if q.x >= p.x + p.w:
                break
            assert p.y + p.h <= q.y or q.y + q.h <= p.y, (p, q)
    at = {b.name: b for b in boxes}
    assert all(at[a].x + at[a].w < at[b].x for a, b in pairs)


def test_layout_does_not_depend_on_states_and_is_kept() -> None:
    """A graph whose tasks only changed state is not laid out again."""
    graph = pipeline()
    moved = GraphSnapshot(tuple(GraphNode(n.name, DONE, n.mode, n.is_map, n.items)
                            for n in graph.nodes), graph.edges)
    assert graph_geometry(moved) is graph_geometry(graph)


def test_layout_is_the_same_in_another_process() -> None:
    """The same graph gets the same picture in a fresh interpreter (no hash or address order)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_graph import pipeline;"
            "from ipytasks.overview.graph import graph_geometry;"
            "print(repr(graph_geometry(pipeline())))")
    here = str(Path(__file__).parent)
    runs = {subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True,
                           check=True, env={**_env(), "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)}
    assert len(runs) == 1 and runs.pop().startswith("GraphGeometry(")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_svg_has_boxes_in_state_colours_and_labelled_edges() -> None:
    graph = pipeline()
    svg = render_svg(graph_geometry(graph), states_of(graph))
    doc = xml.dom.minidom.parseString(svg)  # well-formed: a file and nbconvert keep it
    groups = doc.getElementsByTagName("g")
    nodes = {g.getAttribute("data-task"): g for g in groups
             if g.getAttribute("class") == "ipytasks-node"}
    assert set(nodes) == {n.name for n in graph.nodes}
    for node in graph.nodes:
        rect = nodes[node.name].getElementsByTagName("rect")[0]
        assert rect.getAttribute("stroke") == STATE_STYLE[node.state][1], node
        assert nodes[node.name].getAttribute("data-state") == node.state
    assert nodes["calls"].getElementsByTagName("title")[0].firstChild.data == (
        "calls: pending (20 items)")
    edges = {(g.getAttribute("data-source"), g.getAttribute("data-target")): g for g in groups
             if g.getAttribute("class") == "ipytasks-edge"}
    assert len(edges) == len(graph.edges)
    labels = {key: [t.firstChild.data for t in g.getElementsByTagName("text")]
              for key, g in edges.items()}
    assert labels[("load", "clean")] == ["raw"]
    assert labels[("peak", "report")] == ["peaks"]
    assert labels[("a", "b")] == [] and labels[("b", "calls")] == []
    assert edges[("a", "b")].getAttribute("data-kind") == "chain"
    dashed = edges[("b", "calls")].getElementsByTagName("path")[0]
    assert dashed.getAttribute("stroke-dasharray")
    title = edges[("load", "clean")].getElementsByTagName("title")[0].firstChild.data
    assert title == "clean waits for load: reads raw"


def test_mermaid() -> None:
    """Mermaid: boxes with their icon (and a map's count), edges by kind, data edges
    labelled, a class per state with its colour."""
    text = graph_mermaid(pipeline())
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    t0["✔ load"]' in lines and '    t7["○ calls ×20"]' in lines
    assert '    t0 -->|"raw"| t1' in lines
    assert "    t5 ==> t6" in lines and "    t6 -.-> t7" in lines
    assert f"    classDef state_running stroke:{STATE_STYLE[RUNNING][1]},stroke-width:2px," \
           "color:#1f2328" in lines
    assert "    class t1 state_running" in lines


def test_text() -> None:
    assert graph_text(pipeline()).splitlines() == [
        "task graph: 9 tasks, 8 edges",
        "✔ load done",
        "▶ clean running ← load (raw)",
        "○ sum pending ← clean (table)",
        "○ peak pending ← clean (table)",
        "○ report pending ← sum (sums), peak (peaks), clean (table)",
        "✔ a done",
        "✔ b done ← a (chain main)",
        "○ calls ×20 pending ← b (after)",
        "✖ alone failed",
    ]
    assert graph_text(GraphSnapshot((), ())) == "no tasks yet"


# -- ipytasks.graph(), as a user calls it --------------------------------------------------


@pytest.fixture
def loaded(ip: Any) -> Any:
    """ipytasks loaded in a shell, with a small pipeline run to its end."""
    ip.run_line_magic("load_ext", "ipytasks")
    import ipytasks

    ip.user_ns["gate"] = gate = __import__("threading").Event()
    ipytasks.submit("gate.wait(10)\nrows = [1, 2]", "u_load")
    ipytasks.submit("n = len(rows)", "u_count")
    gate.set()
    ip.run_line_magic("wait", "")
    return ip


def test_graph_to_a_file_as_svg_or_mermaid(loaded: Any, tmp_path: Path) -> None:
    """``ipytasks.graph(path)`` writes the picture (SVG) or Mermaid text by the path's suffix,
    or by ``format``, and returns the path."""
    import ipytasks

    written = ipytasks.graph(tmp_path / "pipeline.svg")
    assert written == tmp_path / "pipeline.svg"
    svg = written.read_text(encoding="utf-8")
    xml.dom.minidom.parseString(svg)
    assert 'data-source="u_load" data-target="u_count"' in svg
    assert 'class="ipytasks-edge-label" ' in svg and ">rows</text>" in svg

    mermaid = ipytasks.graph(tmp_path / "pipeline.mmd").read_text(encoding="utf-8")
    assert mermaid == ipytasks.graph(format="mermaid")
    assert mermaid.startswith("flowchart LR\n") and ' -->|"rows"| ' in mermaid
    as_text = ipytasks.graph(tmp_path / "pipeline.txt", format="mermaid").read_text()
    assert as_text == mermaid


def test_graph_shown_in_a_notebook_is_svg(loaded: Any) -> None:
    """``ipytasks.graph()`` is an SVG picture a notebook shows."""
    from IPython.display import SVG

    import ipytasks

    picture = ipytasks.graph()
    assert isinstance(picture, SVG) and 'data-task="u_count"' in picture.data


def test_graph_refuses_an_unknown_format(loaded: Any, tmp_path: Path) -> None:
    import ipytasks

    with pytest.raises(ValueError, match=r"'\.png'.*\.svg or \.mmd"):
        ipytasks.graph(tmp_path / "pipeline.png")
    with pytest.raises(ValueError, match="format must be one of svg, mermaid, not 'dot'"):
        ipytasks.graph(format="dot")


def test_tasks_graph_in_a_terminal_prints_text(loaded: Any, capsys: Any) -> None:
    """``%tasks --graph`` outside a kernel prints the graph as text."""
    loaded.run_line_magic("tasks", "--graph")
    out = capsys.readouterr().out
    assert "✔ u_count done ← u_load (rows)" in out

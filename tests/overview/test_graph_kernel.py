"""``%tasks --graph`` as a person meets it: in a real kernel, run headless and saved, exported.

- In a kernel (both environments): ``%tasks --graph`` on a small pipeline shows one display of
  SVG with a box per task in its state's colour, the edges (chain, ``--after``, inferred, the
  last labelled with the name that causes it) and a ``--map`` as one box with its count; the
  same display is updated in place as the tasks run and end.
- Run headless by nbclient and saved (ik7 and ik6, without widget state, as JupyterLab saves),
  the graph cell keeps its final SVG, and nbconvert's HTML shows it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipytasks.views import STATE_STYLE
from kernel_driver import Kernel, python_or_skip

ROOT = Path(__file__).resolve().parents[2]
COLOUR = {str(state): colour for state, (_, colour) in STATE_STYLE.items()}

PIPELINE = [
    "import asyncio, ipytasks\ngate_g = asyncio.Event()",
    "%%parallel g_load\nawait gate_g.wait()\nrows = [3, 1, 2]",
    "%%parallel g_clean\ncleaned = sorted(rows)",
    "%%sequential g_first --chain g_etl\nfirst = 1",
    "%%sequential g_second --chain g_etl\nsecond = 2",
    "%%parallel g_after --after g_first\nafter = 3",
    "%%parallel g_calls --map i in range(4)\ni * i",
]


def nodes(html: str) -> dict[str, tuple[str, str]]:
    """Task name → (state, colour of its box), read from the SVG."""
    found = {}
    for name, state, colour in re.findall(
        r'<g class="ipytasks-node" data-task="([^"]+)" data-state="([^"]+)">'
        r'<title>[^<]*</title><rect [^>]*stroke="(#[0-9a-f]{6})"', html):
        found[name] = (state, colour)
    return found


def edges(html: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, target) → (kind, label) of every edge in the SVG."""
    found = {}
    for source, target, kind, rest in re.findall(
        r'<g class="ipytasks-edge" data-source="([^"]+)" data-target="([^"]+)" '
        r'data-kind="([^"]+)">(.*?)</g>', html):
        label = re.search(r'class="ipytasks-edge-label"[^>]*>([^<]*)</text>', rest)
        found[(source, target)] = (kind, label.group(1) if label else "")
    return found


def test_graph_shows_the_pipeline_and_follows_its_states(kernel: Kernel) -> None:
    """Boxes in their states' colours, the edges with their kinds and labels, the map as one
    box with its count; updated in place, by its display id, as the tasks end."""
    for cell in PIPELINE:
        kernel.execute(cell)
    shown = kernel.execute("%tasks --graph")
    (display_id,) = shown.display_ids
    (data,) = shown.displays
    assert set(data) == {"text/plain", "text/html"}
    html = data["text/html"]
    assert "<svg" in html and 'class="ipytasks-graph"' in html
    boxes = nodes(html)
    assert boxes["g_load"] == ("running", COLOUR["running"])
    assert boxes["g_clean"] == ("pending", COLOUR["pending"])
    assert {k: v for k, v in edges(html).items() if k[0].startswith("g_")} == {
        ("g_load", "g_clean"): ("data", "rows"),
        ("g_first", "g_second"): ("chain", ""),
        ("g_first", "g_after"): ("after", ""),
    }
    assert re.search(r'data-task="g_calls"[^>]*>.*?×4</tspan>', html), html
    assert "g_calls[0]" not in html  # the map's items are not boxes of their own
    assert "g_clean pending ← g_load (rows)" in data["text/plain"]

    kernel.execute("gate_g.set()")
    kernel.execute("%wait g_clean g_second g_after g_calls")
    kernel.wait_until(
        lambda: {n: s for n, s in nodes(kernel.display(display_id)["text/html"]).items()
                 if n.startswith("g_")}
        == {n: ("done", COLOUR["done"]) for n in
            ("g_load", "g_clean", "g_first", "g_second", "g_after", "g_calls")},
        what="the graph's boxes to turn done, in the display shown before",
    )
    assert "✔ g_clean done ← g_load (rows)" in kernel.display(display_id)["text/plain"]


def test_graph_as_text_in_the_kernel(kernel: Kernel) -> None:
    """``%tasks --graph --text`` prints each task with what it waits for and why."""
    kernel.execute("import asyncio\ngate_t = asyncio.Event()")
    kernel.execute("%%parallel t_make\nawait gate_t.wait()\nvalues = [1]")
    kernel.execute("%%parallel t_use\ntotal = sum(values)")
    kernel.execute("gate_t.set()")
    kernel.execute("%wait t_use")
    out = kernel.execute("%tasks --graph --text").stdout
    assert "✔ t_use done ← t_make (values)" in out, out


CELLS = [
    "%load_ext ipytasks\nimport asyncio, ipytasks",
    "%%parallel s_load\nawait asyncio.sleep(0.3)\nrows = [1, 2, 3]",
    "%%parallel s_total\ntotal = sum(rows)",
    "%%parallel s_bad --after s_total\nraise ValueError('no')",
    "%tasks --graph",
    "try:\n    await ipytasks.wait()\nexcept ipytasks.TaskFailed:\n    pass",
]


@pytest.fixture(scope="module", params=["ik7", "ik6"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook as nbclient saves it (no widget state), read back from disk."""
    python = python_or_skip(request.param)
    path = tmp_path_factory.mktemp("graph") / "graph.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS]),
                   path)
    spec = importlib.util.spec_from_file_location("run_tour", ROOT / "notebooks" / "run_tour.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    executed = module.run_tour(path, python=python, store_widget_state=False)
    nbformat.write(executed, path)
    return nbformat.read(path, as_version=4)


def test_saved_notebook_keeps_the_final_graph(saved: Any) -> None:
    """The graph cell holds one display: static SVG in the final states, as saved to disk."""
    (cell,) = [c for c in saved.cells if c.source == "%tasks --graph"]
    (output,) = cell.outputs
    assert output.output_type == "display_data"
    html = output.data["text/html"]
    assert nodes(html) == {"s_load": ("done", COLOUR["done"]),
                           "s_total": ("done", COLOUR["done"]),
                           "s_bad": ("failed", COLOUR["failed"])}
    assert edges(html) == {("s_load", "s_total"): ("data", "rows"),
                           ("s_total", "s_bad"): ("after", "")}
    assert "✖ s_bad failed ← s_total (after)" in output.data["text/plain"]


def test_nbconvert_keeps_the_graph(saved: Any) -> None:
    """nbconvert's HTML page shows the graph as the SVG itself."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(saved)
    # nbconvert writes the markup again (attributes in another order): read it loosely.
    found = re.search(r'<svg [^>]*class="ipytasks-graph".*?</svg>', page, re.DOTALL)
    assert found, "no graph in the exported page"
    svg = found.group(0)
    assert re.search(r'<g [^>]*data-state="done"[^>]*data-task="s_total"|'
                     r'<g [^>]*data-task="s_total"[^>]*data-state="done"', svg), svg[:400]
    assert re.search(r'class="ipytasks-edge-label"[^>]*>rows</text>', svg)


OPEN = (
    "from ipytasks.overview import open_dashboard\n"
    "from ipytasks import api\n"
    "{var} = open_dashboard(api._current().scheduler, api.tasks)\n"
    "display({var})"
)


def test_dashboard_graph_view_follows_the_tasks_and_a_click_picks(kernel: Kernel) -> None:
    """The dashboard's ``graph`` button (an event, as the browser sends it) makes the kernel
    send the drawn graph and each box's state; states then change alone, without the
    picture; a click on a box (the same ``selected`` event as a row's) picks its task."""
    before = set(kernel.widget_states())
    kernel.execute(OPEN.format(var="_gdash"))
    (view,) = [cid for cid, w in kernel.widget_states().items()
               if cid not in before and "graph_states" in w["state"]]
    assert kernel.widget_state(view)["graph"] == {}  # not drawn until it is asked for
    kernel.execute("import asyncio\ngate_d = asyncio.Event()")
    kernel.execute("%%parallel d_load\nawait gate_d.wait()\nd_rows = [1]")
    kernel.execute("%%parallel d_use\nd_n = len(d_rows)")
    kernel.send_comm_msg(view, {"method": "custom", "content": {"event": "panel",
                                                                 "value": "graph"}})

    def shown() -> dict[str, str]:
        state = kernel.widget_state(view)
        names = state.get("graph", {}).get("names", [])
        states = state["states"]
        return {n: states[code][0] for n, code in zip(names, state["graph_states"])}

    kernel.wait_until(lambda: kernel.widget_state(view)["panel"] == "graph"
                      and {"d_load": "running", "d_use": "pending"}.items() <= shown().items(),
                      what="the graph view to show d_load running and d_use pending")
    svg = kernel.widget_state(view)["graph"]["svg"]
    assert edges(svg)[("d_load", "d_use")] == ("data", "d_rows")

    kernel.send_comm_msg(view, {"method": "custom", "content": {"event": "selected",
                                                                 "value": "d_use"}})
    kernel.wait_until(lambda: kernel.widget_state(view)["selected"] == "d_use",
                      what="a click on d_use's box to pick it")
    kernel.execute("gate_d.set()")
    kernel.execute("%wait d_use")
    kernel.wait_until(lambda: {"d_load": "done", "d_use": "done"}.items() <= shown().items(),
                      what="the graph view's boxes to turn done")
    assert kernel.widget_state(view)["graph"]["svg"] == svg  # states alone changed
    kernel.execute("_gdash.close()")

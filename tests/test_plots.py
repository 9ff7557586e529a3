"""Plots made by tasks show, complete, in their own task's output and in no other cell.

Through a real kernel: two thread tasks, an async task, a process task and a pandas
``.plot()`` task draw while ordinary cells (one of them plotting too) run. Each task draws in
a colour of its own, so a rendered image tells whose lines it holds: the test decodes every
PNG and counts the pixels of each colour. Through nbclient, the same notebook is executed and
saved, with and without widget state.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

#: Each task's colour (RGB in 0..1) and how many lines it draws.
COLOURS = {
    "plot_a": (1.0, 0.0, 0.0),  # red, thread
    "plot_b": (0.0, 0.0, 1.0),  # blue, thread
    "plot_c": (0.0, 1.0, 0.0),  # lime, async
    "plot_d": (1.0, 0.0, 1.0),  # magenta, process
    "plot_e": (0.0, 1.0, 1.0),  # cyan, pandas .plot() in a thread
    "ordinary": (1.0, 1.0, 0.0),  # yellow, an ordinary cell
}
LINES = {"plot_a": 5, "plot_b": 3, "plot_c": 4, "plot_d": 2, "plot_e": 1}

SETUP = """\
import threading, time
a_drew = [threading.Event() for _ in range(5)]
b_drew = [threading.Event() for _ in range(5)]"""
# A and B take turns, line by line: each draws while the other is in the middle of its plot.
# (Each task's names are its own, so no task waits for another: they all run at once.)
PLOT_A = """\
%%parallel plot_a
import matplotlib.pyplot as plt
for ia in range(5):
    if ia:
        b_drew[ia - 1].wait(10)
    plt.plot([0, 1], [ia, ia + 1], color="red", linewidth=4)
    a_drew[ia].set()
lines_a = len(plt.gca().lines)"""
PLOT_B = """\
%%parallel plot_b
import matplotlib.pyplot as plt
for ib in range(3):
    a_drew[ib].wait(10)
    plt.plot([0, 1], [ib + 1, ib], color="blue", linewidth=4)
    b_drew[ib].set()
b_drew[3].set()
lines_b = len(plt.gca().lines)"""
PLOT_C = """\
%%parallel plot_c
import asyncio
import matplotlib.pyplot as plt
for ic in range(4):
    plt.plot([0, 1], [ic, 0], color="lime", linewidth=4)
    await asyncio.sleep(0.05)
lines_c = len(plt.gca().lines)"""
PLOT_D = """\
%%parallel plot_d --process
import matplotlib.pyplot as plt
for id_ in range(2):
    plt.plot([0, 1], [0, id_ + 1], color="magenta", linewidth=4)
lines_d = len(plt.gca().lines)"""
PLOT_E = """\
%%parallel plot_e
import pandas as pd
ax_e = pd.DataFrame({"y": [0, 2, 1, 3]}).plot(color="cyan", linewidth=4)
lines_e = len(ax_e.lines)"""
SLEEP = "time.sleep(0.3)"
ORDINARY = """\
import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0], color="yellow", linewidth=4);"""
WAIT = "%wait plot_a plot_b plot_c plot_d plot_e"
SCENARIO = [SETUP, PLOT_A, PLOT_B, PLOT_C, SLEEP, PLOT_D, PLOT_E, ORDINARY, SLEEP, WAIT, SLEEP]
TASK_CELLS = {
    PLOT_A: "plot_a", PLOT_B: "plot_b", PLOT_C: "plot_c", PLOT_D: "plot_d", PLOT_E: "plot_e",
}


def colour_pixels(png_b64: str) -> dict[str, int]:
    """How many pixels of the PNG have each test colour (line centres are the exact colour)."""
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(io.BytesIO(base64.b64decode(png_b64)), format="png")[..., :3]
    return {
        name: int((np.abs(rgb - np.array(colour)).max(axis=-1) < 0.02).sum())
        for name, colour in COLOURS.items()
    }


#: A PNG inside HTML (a task's cell may show its displays as one HTML output).
PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def images_in(bundles: list[dict[str, Any]]) -> list[str]:
    """The PNGs (base64) of a list of mime bundles: ``image/png`` data, else PNGs inlined in
    ``text/html`` as ``data:`` URIs."""
    out = []
    for data in bundles:
        png = data.get("image/png")
        if png is not None:
            out.append("".join(png) if isinstance(png, list) else png)
            continue
        html = data.get("text/html")
        if html is not None:
            out.extend(PNG_URI.findall("".join(html) if isinstance(html, list) else html))
    return out


def assert_only(owner: str, png: str) -> None:
    counts = colour_pixels(png)
    others = {name: n for name, n in counts.items() if name != owner and n}
    assert counts[owner] > 20 and not others, f"{owner}'s image holds {counts}"


def message_bundles(execution: Any) -> list[dict[str, Any]]:
    """The mime bundles that a request's messages add to its cell: displays and results.

    (An ``update_display_data`` changes the display of its id wherever that is, whichever
    request parents it: see :func:`updates`.)
    """
    return [
        m["content"]["data"]
        for m in execution.messages
        if m["msg_type"] in ("display_data", "execute_result")
    ]


def display_ids(execution: Any) -> list[str]:
    """The display ids of the displays a request made."""
    return [
        m["content"]["transient"]["display_id"]
        for m in execution.messages
        if m["msg_type"] == "display_data" and m["content"].get("transient", {}).get("display_id")
    ]


def updates(kernel: Any, since: int) -> list[tuple[str, dict[str, Any]]]:
    """The display updates sent after the kernel's first ``since`` messages: ``(id, data)``."""
    return [
        (m["content"].get("transient", {}).get("display_id", ""), m["content"]["data"])
        for m in kernel.messages()[since:]
        if m["msg_type"] == "update_display_data"
    ]


def assert_updates_keep_to_their_task(kernel: Any, owners: dict[str, str], since: int) -> None:
    """A display update carrying an image updates a task's own display, with that task's image."""
    for display_id, data in updates(kernel, since):
        for png in images_in([data]):
            assert display_id in owners, f"an image went to a display no task made ({display_id})"
            assert_only(owners[display_id], png)


# -- through a real kernel -------------------------------------------------------------------


def test_each_task_figure_lands_whole_in_its_own_output_and_nowhere_else(kernel: Any) -> None:
    """Two thread tasks taking turns line by line, an async task, a process task and a pandas
    plot, with ordinary cells (one plotting) in between: every task ends with its own figure in
    its own output holding exactly its lines, pyplot's current axes in each task held only that
    task's lines, the ordinary cell shows only its own figure, and no other cell gets an image."""
    since = len(kernel.messages())
    runs = [kernel.execute(code) for code in SCENARIO]
    counts = json.loads(kernel.execute(
        "import json; print(json.dumps(dict(plot_a=lines_a, plot_b=lines_b, plot_c=lines_c, "
        "plot_d=lines_d, plot_e=lines_e)))"
    ).stdout)
    assert counts == LINES
    outputs = json.loads(kernel.execute(
        "import ipytasks\n"
        "print(json.dumps({n: [o for o in ipytasks.tasks[n].sink.notebook_outputs()] "
        f"for n in {sorted(LINES)!r}}}))"
    ).stdout)
    for name in LINES:
        pngs = images_in([o["data"] for o in outputs[name] if "data" in o])
        assert len(pngs) == 1, f"{name}: {len(pngs)} images in its output"
        assert_only(name, pngs[0])
    owners = {}
    for code, run in zip(SCENARIO, runs, strict=True):
        if code in TASK_CELLS:
            owners.update(dict.fromkeys(display_ids(run), TASK_CELLS[code]))
    assert_updates_keep_to_their_task(kernel, owners, since)
    for code, run in zip(SCENARIO, runs, strict=True):
        pngs = images_in(message_bundles(run))
        if code == ORDINARY:
            assert len(pngs) == 1, "the ordinary cell shows its figure as without ipytasks"
            assert_only("ordinary", pngs[0])
        elif code in TASK_CELLS:  # a task's cell may show its own figure, nothing else
            for png in pngs:
                assert_only(TASK_CELLS[code], png)
        else:
            assert not pngs, f"an image landed in the unrelated cell {code!r}"
    assert kernel.execute("print(plt.get_fignums())").stdout.strip() == "[]"


def test_figure_result_is_shown_once_as_the_result(kernel: Any) -> None:
    """A Figure as the last expression of a thread or process task is its result, shown once
    (rendered), and it does not reopen in the kernel's pyplot to be flushed into a later cell."""
    owners = {}
    since = len(kernel.messages())
    for name, flag in (("fig_thread", ""), ("fig_process", " --process")):
        run = kernel.execute(
            f"%%parallel {name}{flag}\nimport matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots()\nax.plot([0, 1], [0, 1], color='red', linewidth=4)\nfig"
        )
        owners.update(dict.fromkeys(display_ids(run), "plot_a"))  # red
    waited = kernel.execute("%wait fig_thread fig_process")
    later = kernel.execute("1 + 1")
    assert not images_in(message_bundles(waited) + message_bundles(later))
    assert_updates_keep_to_their_task(kernel, owners, since)
    out = json.loads(kernel.execute(
        "import ipytasks, json\nfrom matplotlib.figure import Figure\n"
        "print(json.dumps({n: [[o.get('data', {}).get('image/png') for o in "
        "ipytasks.tasks[n].sink.notebook_outputs()], isinstance(ipytasks.result(n), Figure)] "
        "for n in ('fig_thread', 'fig_process')} | {'open': plt.get_fignums()}))"
    ).stdout)
    assert out.pop("open") == []
    for name, (pngs, is_figure) in out.items():
        assert is_figure, name
        assert len(pngs) == 1 and pngs[0], f"{name}: {pngs}"
        assert_only("plot_a", pngs[0])  # red


def test_process_figures_follow_the_inline_backend_config(kernel: Any) -> None:
    """A process task's figure is rendered with ``%config InlineBackend`` formats and
    print_figure options: the same mime types, metadata and pixel size as the kernel's own
    rendering of the same figure."""
    kernel.execute(
        "import matplotlib.pyplot as plt\n"
        "%config InlineBackend.figure_formats = ['retina', 'svg']\n"
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}"
    )
    try:
        kernel.execute(
            "%%parallel configured --process\nimport matplotlib.pyplot as plt\n"
            "plt.plot([0, 1], [1, 2]);"
        )
        kernel.execute("%wait configured")
        result = json.loads(kernel.execute(
            "import json, struct, base64, ipytasks\nfrom matplotlib.figure import Figure\n"
            "fig = Figure(); fig.add_subplot().plot([0, 1], [1, 2])\n"
            "def shape(data, md):\n"
            "    png = base64.b64decode(data['image/png'])\n"
            "    return [sorted(data), md, list(struct.unpack('>ii', png[16:24]))]\n"
            "[task] = [o for o in ipytasks.tasks['configured'].sink.notebook_outputs()\n"
            "         if 'data' in o]\n"
            "print(json.dumps([shape(task['data'], task['metadata']), "
            "shape(*get_ipython().display_formatter.format(fig))]))"
        ).stdout)
        in_task, in_kernel = result
        assert "image/svg+xml" in in_task[0] and "image/png" in in_task[0]
        assert in_task == in_kernel
    finally:
        kernel.execute(
            "%config InlineBackend.figure_formats = ['png']\n"
            "%config InlineBackend.print_figure_kwargs = {'bbox_inches': 'tight'}"
        )


def test_loading_imports_no_plotting_library_and_unloading_restores_pyplot(
    fresh_kernel: Any,
) -> None:
    """Loading ipytasks and running thread and process tasks imports no plotting library;
    while loaded pyplot's registry is per task, and unloading gives pyplot its own back."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks")
    k.execute("%%parallel quiet_thread\nx = 1")
    k.execute("%%parallel quiet_process --process\ny = 2")
    k.execute("%wait quiet_thread quiet_process")
    loaded = k.execute(
        "import sys\nprint(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('matplotlib', 'pandas', 'ipympl', 'seaborn', 'PIL')))"
    ).stdout.strip()
    assert loaded == "[]"
    k.execute("import matplotlib.pyplot as plt\nfrom matplotlib._pylab_helpers import Gcf")
    assert k.execute("print(type(Gcf.figs).__name__)").stdout.strip() == "FigureRegistry"
    k.execute("%unload_ext ipytasks")
    assert k.execute("print(type(Gcf.figs).__name__)").stdout.strip() == "OrderedDict"


def test_widget_backend_figure_shows_live_in_the_task_output(fresh_kernel: Any) -> None:
    """With ``%matplotlib widget`` (ipympl) a thread task's figure is an ipympl canvas shown in
    the task's output, and it stays live: a later cell drawing on it updates that canvas."""
    pytest.importorskip("ipympl")
    k = fresh_kernel
    if k.env != "ik7":
        pytest.skip("ipympl is installed in the main environment only")
    k.execute("%load_ext ipytasks\n%matplotlib widget\n"
              "import threading\nmade, go = threading.Event(), threading.Event()")
    # A cell ends while the figure exists (ipympl's own end-of-cell hook runs then), and a
    # second task shows its figure itself with plt.show(): each is shown once, in its task.
    k.execute(
        "%%parallel live\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1], [0, 1])\nmade.set()\ngo.wait(10)"
    )
    between = k.execute("made.wait(10)")
    k.execute("go.set()")
    k.execute(
        "%%parallel live_shown\nimport matplotlib.pyplot as plt\n"
        "plt.plot([0, 1], [1, 1])\nplt.show()"
    )
    k.execute("%wait live live_shown")
    widget = "application/vnd.jupyter.widget-view+json"
    assert not any(widget in d for d in message_bundles(between)), "shown in another cell"
    views = {}
    for name in ("live", "live_shown"):
        shown = json.loads(k.execute(
            "import ipytasks, json\n"
            f"outputs = ipytasks.tasks[{name!r}].sink.notebook_outputs()\n"
            "print(json.dumps([o['data'] for o in outputs if 'data' in o]))"
        ).stdout)
        views[name] = [d["application/vnd.jupyter.widget-view+json"]["model_id"] for d in shown
                       if "application/vnd.jupyter.widget-view+json" in d]
    assert len(views["live"]) == 1 and len(views["live_shown"]) == 1, views
    model_id = views["live"][0]
    assert k.widget_state(model_id).get("_model_name") == "MPLCanvasModel"
    before = len(k.messages())
    k.execute("ax.plot([0, 1], [1, 0]); fig.canvas.draw()")
    k.wait_until(
        lambda: any(
            m["msg_type"] == "comm_msg" and m["content"].get("comm_id") == model_id
            for m in k.messages()[before:]
        ),
        what="the canvas to be redrawn",
    )
    assert not images_in(message_bundles(k.execute("1")))


# -- through nbclient: the saved notebook ------------------------------------------------------


def _execute_notebook(cells: list[str], store_widget_state: bool, workdir: Path) -> Any:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from traitlets import default

    spec_dir = workdir / "kernels" / "ipytasks-plots"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ipytasks plots", "language": "python",
    }))

    class Manager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _private(self) -> KernelSpecManager:
            return KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        nb, kernel_name="ipytasks-plots", kernel_manager_class=Manager, timeout=60,
        store_widget_state=store_widget_state, resources={"metadata": {"path": str(workdir)}},
    ).execute()
    # What a reader of the file gets: the notebook as saved and read back.
    return nbformat.reads(nbformat.writes(nb), as_version=4)


@pytest.mark.kernel
@pytest.mark.parametrize(
    "store_widget_state", [True, False], ids=["widget-state", "no-widget-state"]
)
def test_saved_notebook_keeps_each_figure_in_its_own_task_cell(store_widget_state: bool) -> None:
    """Executed by nbclient and saved, the notebook holds each task's figure, with exactly
    that task's lines, among the display outputs of the task's own cell, and no image in any
    other cell but the ordinary plotting cell (its own); nbconvert's HTML shows each figure."""
    with tempfile.TemporaryDirectory(prefix="ipytasks-plots-") as tmp:
        nb = _execute_notebook(["%load_ext ipytasks", *SCENARIO], store_widget_state, Path(tmp))
    owned = {}
    for cell in nb.cells[1:]:
        pngs = images_in([o["data"] for o in cell.outputs if "data" in o])
        owner = TASK_CELLS.get(cell.source, "ordinary" if cell.source == ORDINARY else None)
        if owner is None:
            assert not pngs, f"an image was saved in the unrelated cell {cell.source!r}"
        else:
            owned[owner] = (pngs, cell.outputs)
    for owner, (pngs, outputs) in owned.items():
        assert len(pngs) == 1, f"{owner}'s cell saved {len(pngs)} images: {outputs}"
        assert_only(owner, pngs[0])
    # nbconvert's HTML (what a code host or a colleague without a kernel sees) shows them.
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nb)
    for owner, (pngs, _) in owned.items():
        assert pngs[0] in html, f"{owner}'s figure is missing from nbconvert's HTML"

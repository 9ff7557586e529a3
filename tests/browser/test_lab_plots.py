"""A plotting task's figure in JupyterLab, in headless Chromium (the server and browser of
``test_lab.py``): a notebook whose thread task plots shows the task's figure (its red line) in
the task's own cell and no image in any other cell, live, and again after the notebook is
saved, its kernel shut down and it is reopened.

A screenshot goes to ``test-output/browser/failure-plots.png`` when something goes wrong.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

# The server and browser fixtures and page helpers of test_lab.py (by path: test modules are
# not importable by name under --import-mode=importlib).
_spec = importlib.util.spec_from_file_location(
    "ipytasks_test_lab", Path(__file__).with_name("test_lab.py")
)
_lab_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _lab_module  # its dataclasses look their module up there
_spec.loader.exec_module(_lab_module)
KERNEL_IDLE = _lab_module.KERNEL_IDLE
MARK_CELL = _lab_module.MARK_CELL
WAIT_MS = _lab_module.WAIT_MS
browser_page = _lab_module.browser_page
Lab = _lab_module.Lab
Tools = _lab_module.Tools
lab = _lab_module.lab
tools = _lab_module.tools

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


PLOT_CELL = (
    "%%parallel lab_plot\nimport matplotlib.pyplot as plt\n"
    "plt.plot([0, 1], [0, 1], color='red', linewidth=4)"
)
PLOT_NOTEBOOK_CELLS = ["%load_ext ipytasks", PLOT_CELL, "import time\ntime.sleep(1)",
                       "%wait lab_plot", "1 + 1"]

#: The ``src`` of every image in the output area of the cell marked ``mark``.
IMAGES_IN = """(mark) => {
  const cell = document.querySelector(`[data-ipytasks-test="${mark}"]`);
  if (!cell) return null;
  return [...cell.querySelectorAll('.jp-OutputArea img')].map(img => img.src);
}"""

#: How many images the output areas of all cells but the marked one show.
IMAGES_ELSEWHERE = """(mark) => [...document.querySelectorAll('.jp-Cell')]
  .filter(c => c.getAttribute('data-ipytasks-test') !== mark)
  .reduce((n, c) => n + c.querySelectorAll('.jp-OutputArea img').length, 0)"""


def _red_pixels(src: str) -> int:
    """Pixels of the test's red in an image given as a ``data:image/png;base64,`` URI."""
    import base64

    import matplotlib.image
    import numpy as np

    assert src.startswith("data:image/png;base64,"), src[:40]
    rgb = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])),
                                  format="png")[..., :3]
    return int((np.abs(rgb - np.array([1.0, 0.0, 0.0])).max(axis=-1) < 0.02).sum())


def _plot_images(page, mark: str) -> list[str]:
    page.wait_for_function(
        f"() => ({IMAGES_IN})({json.dumps(mark)})?.length > 0", timeout=WAIT_MS
    )
    return page.evaluate(IMAGES_IN, mark)


def test_plotting_task_figure_in_its_cell_live_and_after_reopening(tools: Tools, lab: Lab) -> None:
    """A thread task's figure shows in its own cell while the notebook is open (and in no
    other cell), and again after the notebook is saved, its kernel shut down and it is reopened."""
    pytest.importorskip("matplotlib")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in PLOT_NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    path = lab.root / "plots.ipynb"
    nbformat.write(nb, path)
    url = f"{lab.url}lab/tree/plots.ipynb?token={lab.token}"
    with browser_page(tools, "failure-plots.png") as page:
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
        assert page.evaluate(MARK_CELL, [PLOT_CELL, "plot"])
        assert page.evaluate(MARK_CELL, ["1 + 1", "last"])
        page.evaluate(
            "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        [live] = _plot_images(page, "plot")
        assert _red_pixels(live) > 20
        page.wait_for_function(  # the notebook has run to its end
            "() => document.querySelector('[data-ipytasks-test=\"last\"] .jp-OutputArea')"
            "?.textContent.includes('2')", timeout=WAIT_MS)
        assert page.evaluate(IMAGES_ELSEWHERE, "plot") == 0

        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
            timeout=WAIT_MS)
        page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
        assert page.evaluate(MARK_CELL, [PLOT_CELL, "plot"])
        [reopened] = _plot_images(page, "plot")
        assert _red_pixels(reopened) > 20
        assert page.evaluate(IMAGES_ELSEWHERE, "plot") == 0

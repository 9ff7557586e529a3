"""Progress from inside tasks in JupyterLab, in headless Chromium (the server and browser of
``test_lab.py``): a thread task and a process task each run a tqdm loop over 50 items while the
dashboard is shown; what the page shows is recorded as it changes (a MutationObserver), and
both the tasks' status lines and their dashboard rows are seen moving through at least two
values to 50/50, with no bar (text or widget) in any cell.

A screenshot goes to ``test-output/browser/failure-progress.png`` when something goes wrong.
"""

from __future__ import annotations

import importlib.util
import re
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

LOOP = ("%%parallel {name} --mode {mode}\nimport time\nfrom tqdm.auto import tqdm\n"
        "for i in tqdm(range(50)):\n    time.sleep(0.08)")
THREAD_CELL = LOOP.format(name="lab_bar_t", mode="thread")
PROCESS_CELL = LOOP.format(name="lab_bar_p", mode="process")
CELLS = ["%load_ext ipytasks", "%tasks", THREAD_CELL, PROCESS_CELL,
         "import time\ntime.sleep(0.5)\nprint('plain')", "%wait lab_bar_t lab_bar_p", "1 + 1"]

#: Records, as they change, the status line of each marked cell and the progress cell of
#: each task's dashboard row: ``window.__progressSeen[key]``, each text once in a row.
RECORD = """() => {
  const seen = {};
  const keep = (key, text) => {
    const list = seen[key] || (seen[key] = []);
    if (text && list[list.length - 1] !== text) list.push(text);
  };
  const look = () => {
    for (const mark of ['bar_t', 'bar_p']) {
      const line = document.querySelector(
        `[data-ipytasks-test="${mark}"] .jp-OutputArea .ipytasks-status`);
      if (line) keep(mark, line.textContent);
    }
    for (const name of ['lab_bar_t', 'lab_bar_p']) {
      const cell = document.querySelector(
        `.ipytasks-table tr[data-task="${name}"] .ipytasks-progress`);
      if (cell) keep('row ' + name, cell.textContent);
    }
  };
  new MutationObserver(look).observe(document.body, {childList: true, subtree: true,
                                                     characterData: true});
  look();
  window.__progressSeen = seen;
}"""

#: What the cells other than the two tasks' show: text, and how many progress widgets.
ELSEWHERE = """() => [...document.querySelectorAll('.jp-Cell')]
  .filter(c => !['bar_t', 'bar_p', 'dash'].includes(c.getAttribute('data-ipytasks-test')))
  .map(c => c.querySelector('.jp-OutputArea')?.textContent || '')"""
BAR_WIDGETS = "() => document.querySelectorAll('.widget-hprogress, progress').length"


def _counts(texts: list[str]) -> list[int]:
    return [int(m.group(1)) for t in texts if (m := re.search(r"(\d+)/50", t))]


def test_tqdm_progress_moves_in_the_cells_and_the_dashboard(tools: Tools, lab: Lab) -> None:
    pytest.importorskip("tqdm")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, lab.root / "progress.ipynb")
    url = f"{lab.url}lab/tree/progress.ipynb?token={lab.token}"
    with browser_page(tools, "failure-progress.png") as page:
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
        for source, mark in ((THREAD_CELL, "bar_t"), (PROCESS_CELL, "bar_p"), ("%tasks", "dash"),
                             ("1 + 1", "last")):
            assert page.evaluate(MARK_CELL, [source, mark])
        page.evaluate(RECORD)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        page.wait_for_function(  # the notebook has run to its end
            "() => document.querySelector('[data-ipytasks-test=\"last\"] .jp-OutputArea')"
            "?.textContent.includes('2')", timeout=WAIT_MS)
        seen = page.evaluate("() => window.__progressSeen")
        for key in ("bar_t", "bar_p", "row lab_bar_t", "row lab_bar_p"):
            counts = _counts(seen.get(key, []))
            assert len({c for c in counts if 0 < c < 50}) >= 2, (key, seen.get(key))
            assert counts and counts[-1] == 50, (key, seen.get(key))
        assert "it/s" in " ".join(seen["bar_t"]) and "it/s" in " ".join(seen["row lab_bar_p"])
        elsewhere = page.evaluate(ELSEWHERE)
        assert not [t for t in elsewhere if "/50" in t or "it/s" in t or "%|" in t], elsewhere
        assert any("plain" in t for t in elsewhere)
        assert page.evaluate(BAR_WIDGETS) == 0  # no tqdm widget anywhere

"""The tour in a real browser: JupyterLab on loopback, driven in headless Chromium by Playwright.

What it checks, all read from the page's ``.jp-OutputArea`` elements (the notebook's own text
includes the cells' sources, so a check on the whole page would pass by itself):

- a task's status line shows ``running`` and later the same line shows ``done``, live;
- the dashboard (the tour's ``%tasks``) shows the speedup ("… of work in … ×") and its
  timeline, drawn in the browser from the numbers the kernel sends, whose bars name their
  task and times when hovered;
- the tour's ``%tasks --graph`` cell and the dashboard's graph view (its ``graph`` button) show
  the edges the tour's text describes, with the names on them; clicking a box in the
  dashboard picks its task, as a row click does;
- after the tour, a cell of our own (added to the open notebook, the file is not saved) submits
  a long task; turning the dashboard's table to its last page, clicking the task's row and
  clicking Cancel turns it ``cancelled`` in the dashboard's table and in that cell's status
  line.

Screenshots go to ``test-output/browser/`` (``dashboard.png``, ``final.png``, and
``failure.png`` when something goes wrong), with the server's log ``jupyterlab.log``. The
server runs with Jupyter's and IPython's folders in a temporary directory (no user settings,
kernels or startup files; notebook windowing off, so every cell is in the DOM). With
``IPYTASKS_UPDATE_SCREENSHOT=1`` the dashboard's picture also replaces
``docs/screenshot-dashboard.png``, the one the README shows.

Needs Playwright (the ``browser`` dependency group) and Debian's ``/usr/bin/chromium``
(``make test`` installs both); without them the test is skipped, but fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kernel_driver import ci_mode

ROOT = Path(__file__).resolve().parents[2]
TOUR = ROOT / "notebooks" / "tour.ipynb"
OUTPUT_DIR = ROOT / "test-output" / "browser"
README_SCREENSHOT = ROOT / "docs" / "screenshot-dashboard.png"
SAVED_SCREENSHOT = ROOT / "docs" / "screenshot-saved.png"
UPDATE_SCREENSHOT = "IPYTASKS_UPDATE_SCREENSHOT"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Milliseconds for one wait in the page (the whole tour takes ~10 s).
WAIT_MS = 60_000
#: Running the whole tour: about 30 s alone, twice that or more on a busy machine.
TOUR_WAIT_MS = 180_000
SERVER_START_S = 60.0
LONG_TASK = "browser_long"
LONG_CELL = f"%%parallel {LONG_TASK}\nawait asyncio.sleep(60)"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def _unavailable(reason: str) -> None:
    if ci_mode():
        pytest.fail(f"{reason} (CI=true: the browser test must not be skipped)")
    pytest.skip(reason)


# -- the JupyterLab server ------------------------------------------------------------------


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (from /proc; kernels run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _request(url: str, *, token: str, method: str = "GET", timeout: float = 5.0) -> int:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.status


def _hermetic_env(home: Path) -> dict[str, str]:
    """The server's environment: Jupyter's and IPython's folders in ``home``, our lab settings."""
    env = dict(os.environ)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces")]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    settings = home / "lab-settings" / "@jupyterlab"
    # Every cell in the DOM (no windowing), and no news toast over the notebook.
    for plugin, values in [("notebook-extension/tracker", {"windowingMode": "none"}),
                           ("apputils-extension/notification",
                            {"fetchNews": "false", "checkForUpdates": False})]:
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


def _stop(lab: Lab) -> None:
    """Shut the server down with its kernels; kill whatever is left of it."""
    leftovers = {pid: _cmdline(pid) for pid in _descendants(lab.process.pid)}
    if lab.process.poll() is None:
        try:
            _request(f"{lab.url}api/shutdown", token=lab.token, method="POST")
        except (OSError, urllib.error.URLError):
            lab.process.terminate()
        try:
            lab.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.process.kill()
            lab.process.wait(timeout=10)
    for pid, cmdline in leftovers.items():
        if cmdline is not None and _cmdline(pid) == cmdline:  # still that process
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Tools:
    sync_playwright: Any
    expect: Any


@pytest.fixture
def tools() -> Tools:
    """Playwright and Chromium, or a skip saying what is missing (a failure under CI=true)."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (make test installs Debian's chromium with apt-get)")
    try:
        import jupyterlab  # noqa: F401
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        _unavailable(f"{exc.name} is not installed (make test installs the 'browser' group)")
    (OUTPUT_DIR / "failure.png").unlink(missing_ok=True)  # from an earlier run
    return Tools(sync_playwright, expect)


@pytest.fixture
def lab(tools: Tools, tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(TOUR, root / "tour.ipynb")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log = OUTPUT_DIR / "jupyterlab.log"
    port = _free_port()
    token = secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=root,
                                   env=_hermetic_env(tmp_path / "home"), start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}/", token, root, process, log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited ({process.returncode}):\n{server.log_tail()}")
            try:
                if _request(f"{server.url}api/status", token=token, timeout=2) == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer in {SERVER_START_S:.0f} s:\n"
                            f"{server.log_tail()}")
            time.sleep(0.2)  # polling a socket that is not up yet
        yield server
    finally:
        _stop(server)


# -- the page ---------------------------------------------------------------------------------

#: Keeps, for each task status line (``<span title=STATE>icon</span> <b>NAME</b> …``) that
#: appears in an output area, the states it showed in turn: window.__ipytasksLines.
WATCH_STATUS_LINES = r"""() => {
  const lines = [];
  const byName = new Map();  // an update draws the line anew: follow it by its task
  const note = (el) => {
    if (!el.closest('.jp-OutputArea')) return;
    const state = el.querySelector(':scope > span[title]');
    const name = el.querySelector(':scope > b');
    if (!state || !name) return;
    let line = byName.get(name.textContent);
    if (!line) {
      line = {name: name.textContent, states: []};
      byName.set(name.textContent, line);
      lines.push(line);
    }
    const s = state.getAttribute('title');
    if (line.states[line.states.length - 1] !== s) line.states.push(s);
  };
  const scan = (node) => {
    if (node.nodeType !== Node.ELEMENT_NODE) node = node.parentElement;
    if (!node) return;
    const own = node.closest('.ipytasks-status');
    if (own) note(own);
    node.querySelectorAll('.ipytasks-status').forEach(note);
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      scan(m.target);
      m.addedNodes.forEach(scan);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true,
                             attributes: true, attributeFilter: ['title']});
  document.querySelectorAll('.ipytasks-status').forEach(note);
  window.__ipytasksLines = lines;
}"""

KERNEL_IDLE = """() => {
  const panel = window.jupyterapp?.shell?.currentWidget;
  const kernel = panel?.sessionContext?.session?.kernel;
  return !!(panel?.content?.model && panel.context?.isReady && kernel
            && kernel.connectionStatus === 'connected' && kernel.status === 'idle');
}"""

#: Marks the first code cell whose source is exactly ``source`` with data-ipytasks-test=``mark``.
MARK_CELL = """([source, mark]) => {
  const notebook = window.jupyterapp.shell.currentWidget.content;
  const cell = notebook.widgets.find(c => c.model.type === 'code'
                                          && c.model.sharedModel.getSource() === source);
  if (!cell) return false;
  cell.node.setAttribute('data-ipytasks-test', mark);
  return true;
}"""

#: The text outputs of the last cell (the tour ends on ``%tasks --text``).
LAST_CELL_TEXT = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const outputs = cells.get(cells.length - 1).outputs.toJSON();
  return outputs.map(o => [].concat(o.text ?? o.data?.['text/plain'] ?? '').join('')).join('');
}"""

#: Every error a cell shows that its ``raises-exception`` tag does not announce.
UNEXPECTED_ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const found = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    if ((cell.getMetadata('tags') || []).includes('raises-exception')) continue;
    for (const o of cell.outputs.toJSON())
      if (o.output_type === 'error') found.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
  }
  return found;
}"""


#: Adds a code cell at the end of the notebook with ``source``, marks it and runs it.
ADD_AND_RUN = """async ([source, mark]) => {
  const app = window.jupyterapp;
  const notebook = app.shell.currentWidget.content;
  notebook.activeCellIndex = notebook.widgets.length - 1;
  await app.commands.execute('notebook:insert-cell-below');
  const cell = notebook.activeCell;
  cell.model.sharedModel.setSource(source);
  cell.node.setAttribute('data-ipytasks-test', mark);
  app.commands.execute('notebook:run-cell');  // resolves when the cell ends: not awaited
}"""

#: Pixels from the element's left edge to the right edge of its widest content, plus a margin.
CONTENT_WIDTH = """(el) => {
  const left = el.getBoundingClientRect().left;
  const parts = [...el.querySelectorAll('table, svg, button, select')];
  return Math.ceil(Math.max(...parts.map(p => p.getBoundingClientRect().right)) - left + 12);
}"""

#: Resolves once ``selector``'s HTML has not changed for ``ms`` milliseconds.
STEADY = """([selector, ms]) => {
  const el = document.querySelector(selector);
  if (!el) return false;
  const now = performance.now();
  const seen = window.__ipytasksSteady;
  if (!seen || seen.html !== el.innerHTML) {
    window.__ipytasksSteady = {html: el.innerHTML, since: now};
    return false;
  }
  return now - seen.since >= ms;
}"""


def _live_transition(page) -> str:
    """The name of a task whose status line showed ``running``, then ``done``."""
    handle = page.wait_for_function(
        """() => {
          const line = (window.__ipytasksLines || []).find(l => {
            const i = l.states.indexOf('running');
            return i >= 0 && l.states.indexOf('done', i) > i;
          });
          return line ? line.name : false;
        }""",
        timeout=WAIT_MS,
    )
    return handle.json_value()


def _save_readme_screenshot(png: bytes, width: int, path: Path = README_SCREENSHOT) -> None:
    """Write ``path`` (a picture the README shows): ``width`` pixels wide, as a palette PNG.

    Without Pillow, the element's picture as it is.
    """
    try:
        from PIL import Image
    except ImportError:
        data = png
    else:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image = image.crop((0, 0, min(width, image.width), image.height))
        out = io.BytesIO()
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            out, format="PNG", optimize=True)
        data = out.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.timeout(420)  # the tour, then save, shut down and reopen
def test_tour_live_in_jupyterlab(tools: Tools, lab: Lab) -> None:
    expect = tools.expect
    expect.set_options(timeout=WAIT_MS)
    with browser_page(tools) as page:
        _drive(page, lab, expect)


@contextlib.contextmanager
def browser_page(tools: Tools, failure: str = "failure.png") -> Iterator[Any]:
    """A page of headless Chromium (1280×1000, waits of WAIT_MS); when the block fails,
    a picture of the page goes to ``test-output/browser/<failure>``."""
    with tools.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            try:
                yield page
            except BaseException:
                page.screenshot(path=OUTPUT_DIR / failure)
                raise
        finally:
            browser.close()


def _drive(page, lab: Lab, expect) -> None:
    page.goto(f"{lab.url}lab/tree/tour.ipynb?token={lab.token}", wait_until="domcontentloaded")
    page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for the dashboard
    assert page.evaluate(MARK_CELL, ["%tasks", "dashboard"]), "the tour has no %tasks cell"
    # The tour is saved with the outputs of a headless run: start from a clean page.
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.wait_for_function("() => !document.querySelector('.jp-OutputArea-output')")
    page.evaluate(WATCH_STATUS_LINES)
    started = time.monotonic()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    # A status line goes from running to done while we look.
    name = _live_transition(page)
    assert name, "no status line went from running to done"

    # The dashboard: the speedup and the timeline.
    dashboard = page.locator('[data-ipytasks-test="dashboard"] .ipytasks-live').first
    summary = dashboard.locator(".ipytasks-summary")
    expect(summary).to_contain_text(re.compile(r"of work in .+×"))
    expect(dashboard.locator("svg").first).to_be_visible()

    # The end of the tour: its last cell (%tasks --text) prints the summary line.
    try:
        page.wait_for_function(f"() => ({LAST_CELL_TEXT})().includes('tasks:')",
                               timeout=TOUR_WAIT_MS)
    except Exception as exc:
        errors = page.evaluate(UNEXPECTED_ERRORS)
        raise AssertionError(f"the tour did not reach its last cell; errors: {errors}") from exc
    tour_seconds = time.monotonic() - started
    page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
    assert page.evaluate(UNEXPECTED_ERRORS) == []

    # Every task has ended; the dashboard says so, and its timeline has settled.
    expect(summary).not_to_contain_text("running")
    expect(summary).to_contain_text(re.compile(r"of work in .+×"))
    page.wait_for_function(
        STEADY, arg=['[data-ipytasks-test="dashboard"] .ipytasks-live svg', 1500],
        timeout=WAIT_MS, polling=100,
    )
    # The timeline is drawn in the browser from numbers; hovering a bar names its task.
    titles = dashboard.locator("svg rect.ipytasks-bar > title").all_text_contents()
    assert any(re.match(r"users: done \(async\)\n\+0\.\d\d s to \+1\.\d\d s", t)
               for t in titles), titles[:5]
    png = dashboard.screenshot(path=OUTPUT_DIR / "dashboard.png", animations="disabled")
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        _save_readme_screenshot(png, width=dashboard.evaluate(CONTENT_WIDTH))

    _graph(page, dashboard, expect)

    # A long task of our own, cancelled from the dashboard.
    page.evaluate(ADD_AND_RUN, [LONG_CELL, "long"])
    status = page.locator('[data-ipytasks-test="long"] .jp-OutputArea .ipytasks-status').first
    expect(status).to_contain_text(f"{LONG_TASK} running")

    # It is the newest task, the only one running: on the table's last page once the
    # dashboard counts it (the summary and the table change in one refresh).
    expect(summary).to_contain_text(re.compile(r"\b1 running\b"))
    pages = dashboard.locator(".ipytasks-page-label")
    expect(pages).to_have_text(re.compile(r"^\d+–\d+ of \d+$"))
    next_page = dashboard.locator('button[title="next page"]')
    while next_page.is_enabled():
        before = pages.inner_text()
        next_page.click()
        expect(pages).not_to_have_text(before)
    row = dashboard.locator("tr").filter(
        has=page.locator("b", has_text=re.compile(f"^{LONG_TASK}$")))
    expect(row.locator("td").first).to_contain_text("running")

    cancel = dashboard.locator("button", has_text="Cancel")
    expect(cancel).to_be_disabled()  # no task picked yet
    row.click()
    expect(dashboard.locator(".ipytasks-picked")).to_contain_text(f"picked: {LONG_TASK}")
    expect(cancel).to_be_enabled()  # the kernel got the pick
    cancel.click()

    expect(row.locator("td").first).to_contain_text("cancelled")
    expect(status).to_contain_text(f"{LONG_TASK} cancelled")
    page.screenshot(path=OUTPUT_DIR / "final.png")
    # While live, the dashboard's snapshot (what the file saves) is hidden behind it.
    snapshot = page.locator('[data-ipytasks-test="dashboard"] .ipytasks-snapshot')
    expect(snapshot).to_be_hidden()
    _reopen_saved(page, lab, expect)
    print(f"live running→done: {name}; tour ran in {tour_seconds:.1f} s")


#: The tour's pipeline (section 7) as its text describes it: each edge and the name on it.
TOUR_EDGES = [("load", "clean", "raw"), ("clean", "feature_sum", "table"),
              ("clean", "feature_max", "table"), ("feature_sum", "report", "sums"),
              ("feature_max", "report", "peaks"), ("clean", "report", "table")]


def _expect_tour_edges(graph, expect) -> None:
    for source, target, label in TOUR_EDGES:
        edge = graph.locator(
            f'g.ipytasks-edge[data-source="{source}"][data-target="{target}"]')
        expect(edge).to_have_count(1)
        expect(edge.locator("text.ipytasks-edge-label")).to_have_text(label)
    chain = graph.locator('g.ipytasks-edge[data-source="users"][data-target="orders"]')
    expect(chain).to_have_attribute("data-kind", "chain")


def _graph(page, dashboard, expect) -> None:
    """The tour's ``%tasks --graph`` cell and the dashboard's graph view show the pipeline's
    edges with their names; clicking a box in the dashboard picks its task."""
    assert page.evaluate(MARK_CELL, ["%tasks --graph", "graph"]), "the tour has no graph cell"
    static = page.locator('[data-ipytasks-test="graph"] .jp-OutputArea svg.ipytasks-graph')
    expect(static).to_be_visible()
    _expect_tour_edges(static, expect)
    expect(static.locator('g.ipytasks-node[data-task="report"]')).to_have_attribute(
        "data-state", "done")

    dashboard.locator("button.ipytasks-panel", has_text="graph").click()
    live = dashboard.locator(".ipytasks-graph-live svg.ipytasks-graph")
    expect(live).to_be_visible()
    expect(dashboard.locator(".ipytasks-timeline")).to_be_hidden()
    _expect_tour_edges(live, expect)
    box = live.locator('g.ipytasks-node[data-task="clean"]')
    expect(box).to_have_attribute("data-state", "done")
    box.click()
    expect(dashboard.locator(".ipytasks-picked")).to_contain_text("picked: clean")
    expect(box.locator("rect")).to_have_attribute("stroke-width", "3.5")  # outlined
    dashboard.screenshot(path=OUTPUT_DIR / "graph.png", animations="disabled")
    dashboard.locator("button.ipytasks-panel", has_text="timeline").click()
    expect(dashboard.locator(".ipytasks-timeline")).to_be_visible()


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

#: Per code cell of the open notebook: its source and the text its outputs show.
CELL_TEXTS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .map(c => [c.model.sharedModel.getSource(), c.outputArea ? c.outputArea.node.innerText : ''])"""


def _reopen_saved(page, lab: Lab, expect) -> None:
    """Save, shut the kernel down, reload the page: every task's cell still shows its
    final status and output, the dashboard's place its snapshot, and no widget error."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function(
        "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=WAIT_MS)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    page.wait_for_function(
        "() => !window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=WAIT_MS)
    # The file holds no reference to a live widget: the dashboard's was emptied once drawn.
    saved = json.loads((lab.root / "tour.ipynb").read_text(encoding="utf-8"))
    referenced = [
        (cell["source"], out["data"][WIDGET_VIEW]["model_id"])
        for cell in saved["cells"] for out in cell.get("outputs", ())
        if WIDGET_VIEW in out.get("data", {})
    ]
    assert referenced and all(model == "" for _, model in referenced), referenced
    page.reload(wait_until="domcontentloaded")
    page.wait_for_function(
        "() => window.jupyterapp?.shell?.currentWidget?.context?.isReady", timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-OutputArea .ipytasks-status').length > 5",
        timeout=WAIT_MS)
    # Widget outputs settle once the new kernel is there: hidden, or an error.
    page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
    page.wait_for_function(
        "() => ![...document.querySelectorAll('.jp-OutputArea-output')]"
        ".some(e => e.checkVisibility() && e.textContent.includes('Loading widget'))",
        timeout=WAIT_MS)
    page.screenshot(path=OUTPUT_DIR / "reopened.png")
    cells = page.evaluate(CELL_TEXTS)
    for source, text in cells:
        assert "Error displaying widget" not in text, source
        if source.startswith(("%%parallel", "%%sequential")) and "--quiet" not in source:
            first = text.strip().splitlines()[0] if text.strip() else ""
            assert re.match(r"\S+ \S+ (done|cached|failed|cancelled|timed out|skipped)", first), (
                source, text[:200])
    worker = [source for source, text in cells if "worker says: counted 10453" in text]
    assert len(worker) == 1 and worker[0].startswith("%%parallel crunch_low"), worker
    snapshot = page.locator('[data-ipytasks-test="dashboard"] .ipytasks-snapshot')
    assert page.evaluate(MARK_CELL, ["%tasks", "dashboard"])
    expect(snapshot).to_be_visible()
    # The graph cell keeps its picture, in the tasks' final states.
    assert page.evaluate(MARK_CELL, ["%tasks --graph", "graph"])
    graph = page.locator('[data-ipytasks-test="graph"] .jp-OutputArea svg.ipytasks-graph')
    expect(graph).to_be_visible()
    _expect_tour_edges(graph, expect)
    expect(snapshot).to_contain_text(re.compile(r"of work in .+×"))
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        page.set_viewport_size({"width": 1280, "height": 1600})
        box = page.evaluate(CELLS_BOX, ["%%parallel slow_report", "%%sequential save --chain etl"])
        png = page.screenshot(clip=box, animations="disabled")
        _save_readme_screenshot(png, width=int(box["width"]), path=SAVED_SCREENSHOT)


#: The box from the first cell whose source starts with ``first`` to the first after it
#: starting with ``last``, scrolled into view.
CELLS_BOX = """([first, last]) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const a = cells.findIndex(c => c.model.sharedModel.getSource().startsWith(first));
  const b = cells.findIndex((c, i) => i > a && c.model.sharedModel.getSource().startsWith(last));
  cells[a].node.scrollIntoView();
  const top = cells[a].node.getBoundingClientRect();
  const bottom = cells[b].node.getBoundingClientRect();
  return {x: top.x, y: top.y, width: Math.min(top.width, 900), height: bottom.bottom - top.y};
}"""

# -- the dashboard answers every click, during a running cell and after it -------------------

#: Milliseconds within which the dashboard must answer a change of filter, page or row.
ANSWER_MS = 1_000
#: Quick tasks that end at once, then the running ones: the table's "all" has two pages.
QUICK_TASKS = 25
RUNNING_TASKS = ("slow_a", "slow_b")
CLICKS_NOTEBOOK = [
    "%load_ext ipytasks\nimport asyncio, ipytasks",
    f"for k in range({QUICK_TASKS}):\n    ipytasks.submit('pass', f'quick{{k}}', quiet=True)",
    "%wait",
    *(f"%%parallel {name}\nawait asyncio.sleep(120)" for name in RUNNING_TASKS),
    "%tasks",
    "await asyncio.sleep(600)",
]

#: Whether the notebook's last cell (the foreground ``await``) is running, as its prompt says.
FOREGROUND_RUNNING = """(running) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const prompt = cells[cells.length - 1].node.querySelector('.jp-InputPrompt');
  return !!prompt && prompt.textContent.includes('[*]') === running
         && (running || /\\[\\d+\\]/.test(prompt.textContent));
}"""

#: The table's rows: each task's name, with ``*`` when the row is highlighted as picked.
TABLE_ROWS = """(el) => [...el.querySelectorAll('.ipytasks-table tr[data-task]')].map(
  r => r.dataset.task + (r.style.backgroundColor ? '*' : ''))"""


def _notebook(sources: list[str]) -> str:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(sources)]
    metadata = json.loads(TOUR.read_text())["metadata"]  # the tour's kernel
    return json.dumps({"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5})


def _answered(page, dashboard, check, what: str) -> float:
    """Wait up to ANSWER_MS for ``check(rows, label)`` to hold (the kernel's answer shown);
    return the seconds it took."""
    start = time.monotonic()
    label = dashboard.locator(".ipytasks-page-label")
    while True:
        rows, text = dashboard.evaluate(TABLE_ROWS), label.inner_text()
        if check(rows, text):
            return time.monotonic() - start
        if time.monotonic() - start > ANSWER_MS / 1000:
            raise AssertionError(f"not answered within {ANSWER_MS} ms: {what}; "
                                 f"the table shows {text!r}: {rows}")
        page.wait_for_timeout(20)  # polling the page, as expect() does


def _click_through(page, dashboard, rounds: int) -> float:
    """Change the filter, turn the page, pick rows and toggle the output, each answered
    within ANSWER_MS; return the slowest answer's seconds."""
    show = dashboard.locator("select.ipytasks-show")
    next_page = dashboard.locator('button[title="next page"]')
    prev_page = dashboard.locator('button[title="previous page"]')
    output = dashboard.locator("button", has_text="utput")
    total = QUICK_TASKS + len(RUNNING_TASKS)
    running = set(RUNNING_TASKS)

    def names(rows: list[str]) -> set[str]:
        return {r.rstrip("*") for r in rows}

    took = [0.0]
    for turn in range(rounds):
        show.select_option("running")
        took.append(_answered(page, dashboard, lambda rows, label: names(rows) == running
                              and label == "1–2 of 2", f"round {turn}: show running"))
        pick = RUNNING_TASKS[turn % 2]
        dashboard.locator(f'tr[data-task="{pick}"]').click()
        took.append(_answered(page, dashboard, lambda rows, label: f"{pick}*" in rows,
                              f"round {turn}: pick {pick}"))
        show.select_option("done")
        took.append(_answered(page, dashboard, lambda rows, label: not running & names(rows)
                              and label == f"1–20 of {QUICK_TASKS}", f"round {turn}: show done"))
        show.select_option("all")
        took.append(_answered(page, dashboard, lambda rows, label: label == f"1–20 of {total}",
                              f"round {turn}: show all"))
        next_page.click()
        took.append(_answered(page, dashboard, lambda rows, label: running <= names(rows)
                              and label == f"21–{total} of {total}", f"round {turn}: next page"))
        prev_page.click()
        took.append(_answered(page, dashboard, lambda rows, label: label == f"1–20 of {total}",
                              f"round {turn}: previous page"))
        # The Output button shows the picked task's output, and hides it again.
        expected = "Output" if output.inner_text().strip() == "Hide output" else "Hide output"
        output.click()
        start = time.monotonic()
        try:
            page.wait_for_function("([el, text]) => el.textContent.trim() === text",
                                   arg=[output.element_handle(), expected], timeout=ANSWER_MS,
                                   polling=20)
        except Exception as exc:
            raise AssertionError(f"not answered within {ANSWER_MS} ms: round {turn}: "
                                 f"the Output button") from exc
        took.append(time.monotonic() - start)
    return max(took)


def test_dashboard_answers_every_click(tools: Tools, lab: Lab) -> None:
    """With tasks running, every change of the filter, the page and the picked row (and the
    Output button) is answered within ANSWER_MS, while a foreground ``await`` cell runs and
    after it was interrupted.

    ipykernel 7 handles a widget message that arrives during an ``await`` cell without
    reporting busy/idle for it, and the browser's widget manager sends a model's next state
    update only after that idle: a dashboard whose clicks were state updates stopped
    answering for good after its first change during a running cell.
    """
    (lab.root / "clicks.ipynb").write_text(_notebook(CLICKS_NOTEBOOK))
    with browser_page(tools, "failure-clicks.png") as page:
        page.goto(f"{lab.url}lab/tree/clicks.ipynb?token={lab.token}",
                  wait_until="domcontentloaded")
        page.wait_for_function(KERNEL_IDLE, timeout=WAIT_MS)
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
        assert page.evaluate(MARK_CELL, ["%tasks", "dashboard"])
        page.evaluate(
            "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        dashboard = page.locator(
            '[data-ipytasks-test="dashboard"] .ipytasks-live').first
        tools.expect(dashboard.locator(".ipytasks-summary")).to_contain_text(
            re.compile(r"\b2 running\b"), timeout=WAIT_MS)
        # The foreground cell runs (the kernel's status is no sign of it: ipykernel 7
        # reports idle after each widget message it handles meanwhile).
        page.wait_for_function(FOREGROUND_RUNNING, arg=True, timeout=WAIT_MS)
        during = _click_through(page, dashboard, rounds=4)
        assert page.evaluate(FOREGROUND_RUNNING, True), "the foreground cell ended"
        page.evaluate(
            "() => window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
        page.wait_for_function(FOREGROUND_RUNNING, arg=False, timeout=WAIT_MS)
        after = _click_through(page, dashboard, rounds=4)
        print(f"slowest answer: {during:.2f} s during the cell, {after:.2f} s after")


# -- the state icons are drawn by the fonts a plain Linux desktop has --------------------------

#: The icons among ``icons`` that the browser draws as the font's missing-glyph box (the same
#: pixels as a code point no font has), in the dashboard's font (``sans-serif``).
MISSING_GLYPHS = """(icons) => {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 48;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const draw = (text) => {
    ctx.clearRect(0, 0, 48, 48);
    ctx.font = '28px sans-serif';
    ctx.fillText(text, 6, 36);
    return ctx.getImageData(0, 0, 48, 48).data.join(',');
  };
  const missing = draw('\\u{10FFFD}');
  const blank = draw(' ');
  return icons.filter((icon) => [missing, blank].includes(draw(icon)));
}"""


def test_state_icons_have_glyphs_without_an_emoji_font(tools: Tools) -> None:
    """Every state's icon is drawn by the fonts here (DejaVu and Liberation, no emoji font,
    as on many Linux desktops), not as an empty box."""
    from ipytasks.views import STATE_STYLE

    icons = [icon for icon, _ in STATE_STYLE.values()]
    with tools.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page()
            page.set_content("<html><body style='font-family:sans-serif'></body></html>")
            if not page.evaluate(MISSING_GLYPHS, ["\u23f3", "\u23f1"]):  # the old icons
                pytest.skip("an emoji font is installed: no missing glyph to tell apart here")
            assert page.evaluate(MISSING_GLYPHS, icons) == []
        finally:
            browser.close()

"""The saved notebook is the record: a notebook of tasks run headless (nbclient, with and
without widget state, ipykernel 7 and 6) keeps each task's final status, prints, displays,
result and traceback in the task's own cell, as ordinary outputs that nbconvert shows."""

from __future__ import annotations

import base64
import importlib.util
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernel_driver import python_or_skip

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.kernel

#: A 1×1 PNG, displayed by a task.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WIDGET = "application/vnd.jupyter.widget-view+json"

CELLS = [
    "%load_ext ipytasks\nimport asyncio, time, ipytasks\n"
    "from IPython.display import display, HTML, Markdown, Latex, Image",
    "%tasks",
    "%%parallel hello\nprint('hello one')\nprint('hello two')\nawait asyncio.sleep(0.2)\n42",
    "%%parallel rich --thread\n"
    "display(HTML('<table><tr><td>rich-cell</td></tr></table>'))\n"
    "display(Markdown('**md-text**'))\n"
    "display(Latex(r'$x^2_{rich}$'))\n"
    f"display(Image(data={PNG!r}))",
    "%%parallel broken --thread\ntime.sleep(0.2)\nint('broken-value')",
    # Ends while the next cell blocks the loop, so its last update goes out after that
    # cell has gone idle, when a headless client no longer listens to it.
    "%%parallel idle_end --thread\ntime.sleep(0.3)\nprint('ended while idle')",
    "time.sleep(1.5)",
    "%%parallel big --thread\nfor i in range(100_000):\n    print('line', i)",
    "print('plain cell')",
    "try:\n    await ipytasks.wait()\nexcept ipytasks.TaskFailed as failure:\n"
    "    print('failed:', ', '.join(r.name for r in failure.failures))\n"
    "print(len(ipytasks.tasks['big'].output))",
]
TASKS = ("hello", "rich", "broken", "idle_end", "big")


def _run_notebook(path: Path, python: str, store_widget_state: bool) -> Any:
    spec = importlib.util.spec_from_file_location("run_tour", ROOT / "notebooks" / "run_tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_tour(path, python=python, store_widget_state=store_widget_state)


@pytest.fixture(
    scope="module",
    params=[("ik7", True), ("ik7", False), ("ik6", False)],
    ids=["ik7-widget-state", "ik7-no-widget-state", "ik6-no-widget-state"],
)
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook as nbclient saves it, read back from disk."""
    env, store = request.param
    python = python_or_skip(env)
    folder = tmp_path_factory.mktemp("saved")
    path = folder / "tasks.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbformat.write(nb, path)
    executed = _run_notebook(path, python, store)
    executed.metadata["ipytasks_env"] = env
    nbformat.write(executed, path)
    return nbformat.read(path, as_version=4)


def cell_of(nb: Any, start: str) -> Any:
    (cell,) = [c for c in nb.cells if c.source.startswith(start)]
    return cell


def task_output(nb: Any, name: str) -> dict[str, str]:
    """The one output a task's cell holds: its data (text/plain and text/html)."""
    cell = cell_of(nb, f"%%parallel {name}")
    assert len(cell.outputs) == 1, cell.outputs
    (output,) = cell.outputs
    assert output.output_type == "display_data"
    assert set(output.data) == {"text/plain", "text/html"}
    return output.data


def test_each_task_cell_keeps_its_final_outputs(saved: Any) -> None:
    text = task_output(saved, "hello")["text/plain"]
    assert re.fullmatch(r"✔ hello done in [\d.]+s\nhello one\nhello two\n42\n", text), text

    rich = task_output(saved, "rich")
    assert rich["text/plain"].startswith("✔ rich done in ")
    page = rich["text/html"]
    assert "<td>rich-cell</td>" in page and "**md-text**" in page and r"$x^2_{rich}$" in page
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    # In the order the task displayed them.
    assert page.index("rich-cell") < page.index("md-text") < page.index("x^2") < page.index("data:")

    broken = task_output(saved, "broken")["text/plain"]
    assert broken.startswith("✖ broken failed in ")
    assert "ValueError: invalid literal for int() with base 10: 'broken-value'" in broken
    assert "int('broken-value')" in broken  # the traceback, with the cell's line
    assert "\x1b[" not in broken


def test_a_task_that_ended_between_cells_is_saved_final(saved: Any) -> None:
    text = task_output(saved, "idle_end")["text/plain"]
    assert re.fullmatch(r"✔ idle_end done in [\d.]+s\nended while idle\n", text), text


def test_a_huge_stream_is_saved_as_its_start_and_end(saved: Any) -> None:
    text = task_output(saved, "big")["text/plain"]
    assert text.startswith("✔ big done in ") and "\nline 0\n" in text
    assert text.endswith("line 99999\n")
    assert re.search(r"\n… [\d,]+ lines \([\d,]+ characters\) left out here; "
                     r"ipytasks.tasks\['big'\].output has all of it …\n", text)
    assert len(text) < 100_000
    last = cell_of(saved, "try:")
    printed = "".join(o.get("text", "") for o in last.outputs)
    whole = sum(len(f"line {i}") + 1 for i in range(100_000))
    assert printed == f"failed: broken\n{whole}\n"  # the task kept every character


def test_nothing_lands_in_another_cell_and_nothing_is_left_running(saved: Any) -> None:
    for cell in saved.cells:
        for output in cell.outputs:
            data = output.get("data", {})
            assert WIDGET not in data or data[WIDGET]["model_id"] == "", cell.source
            text = data.get("text/plain", "") + output.get("text", "")
            assert not re.search(r"\b(pending|running)\b", text), (cell.source, text)
            owner = next((n for n in TASKS if cell.source.startswith(f"%%parallel {n}")), None)
            for name in TASKS:
                if name != owner:
                    assert not re.search(rf"\b{name} (done|failed)", text), (cell.source, text)
            if owner != "hello":
                assert "hello one" not in text, cell.source


def test_the_dashboard_cell_keeps_a_static_snapshot(saved: Any) -> None:
    outputs = cell_of(saved, "%tasks").outputs
    live = [o for o in outputs if WIDGET in o.get("data", {})]
    # The live view's output is retired: a reference to no widget, which front ends hide.
    assert [o.data[WIDGET]["model_id"] for o in live] == [""]
    (snapshot,) = [o for o in outputs if "text/html" in o.get("data", {})]
    page = snapshot.data["text/html"]
    for name in TASKS:
        assert f">{name}<" in page, name
    assert "<svg" in page and "broken-value" in page
    assert "5 tasks" in snapshot.data["text/plain"] or "broken" in snapshot.data["text/plain"]


def test_nbconvert_shows_every_tasks_outputs(saved: Any) -> None:
    from nbconvert import HTMLExporter, MarkdownExporter

    page, _ = HTMLExporter().from_notebook_node(saved)
    markdown, _ = MarkdownExporter().from_notebook_node(saved)
    for exported in (page, markdown):
        for text in ("hello one", "rich-cell", "broken-value", "ended while idle", "line 99999"):
            assert text in exported, text
    assert "model not found" not in markdown

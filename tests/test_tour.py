"""The tour notebook runs top to bottom headless (nbclient) and shows what it promises."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.kernel


def _run_tour_module():
    spec = importlib.util.spec_from_file_location("run_tour", ROOT / "notebooks" / "run_tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tour_nb(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # The --cache section signs entries with a secret in the Jupyter data folder: a
    # temporary one, never the real home's.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_DATA_DIR", str(tmp_path_factory.mktemp("jupyter-data")))
        return _run_tour_module().run_tour(ROOT / "notebooks" / "tour.ipynb", python=sys.executable)


@pytest.fixture(scope="module")
def tour(tour_nb: dict) -> list[dict]:
    return [c for c in tour_nb.cells if c.cell_type == "code"]


def cell_text(cell: dict) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
        elif "data" in out:
            parts.append(str(out.data.get("text/plain", "")))
    return "".join(parts)


def find(tour: list[dict], snippet: str) -> dict:
    matches = [c for c in tour if snippet in c.source]
    assert matches, f"no tour cell contains {snippet!r}"
    return matches[0]


def test_parallel_is_faster_than_sequential(tour: list[dict]) -> None:
    """Three 1 s calls take about 3 s in a chain and about 1 s in parallel."""
    sequential = float(re.search(r"sequential: ([\d.]+) s", cell_text(find(tour, "print(f\"sequential"))).group(1))
    parallel = float(re.search(r"parallel: ([\d.]+) s", cell_text(find(tour, "print(f\"parallel"))).group(1))
    assert sequential >= 2.9
    assert parallel < 1.6


def test_failing_chain_is_reported_then_fixed(tour: list[dict]) -> None:
    """The failing chain's %wait lists the failure and the skip; the fixed cells then succeed."""
    failed = cell_text(find(tour, "%wait load parse save"))
    assert "TaskFailed: 2 tasks did not succeed: parse (failed), save (skipped)" in failed
    assert "ValueError: invalid literal for int()" in failed
    assert cell_text(find(tour, "%result save")).strip() == "3"


def test_task_table_lists_every_task(tour: list[dict]) -> None:
    """The last cell waits for everything and prints the table with each task's final state."""
    table = cell_text(tour[-1])
    assert re.search(r"\d+ tasks: .*s of work in .*s: [\d.]+×", table)
    states = dict(re.findall(r"^(\w+)\s.*?\b(done|failed|cancelled|timed_out|skipped|running|pending)\b", table, re.M))
    assert states["users"] == states["users_p"] == states["save"] == "done"
    assert states["forever"] == "cancelled"
    assert states["too_slow"] == "done"  # replaced after timing out
    assert "running" not in states.values() and "pending" not in states.values()


def test_cells_keep_their_tasks_final_outputs(tour: list[dict]) -> None:
    """Each submitting cell is saved with one plain display: the final status line and
    the task's output, no widget."""
    cell = find(tour, "%%parallel slow_report")
    (view,) = cell.outputs
    assert set(view.data) == {"text/plain", "text/html"}
    assert view.data["text/plain"].startswith("✔ slow_report done in ")
    for cell in tour:
        for out in cell.outputs:
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}) or (
                "%tasks" in cell.source
            ), cell.source
            text = out.get("data", {}).get("text/plain", "")
            assert not re.match(r"\S+ \w+ (pending|running)", text), (cell.source, text)


def test_pipeline_gets_in_order_values_and_says_why(tour: list[dict]) -> None:
    """The all-%%parallel pipeline waits on its data and computes what an in-order run would."""
    text = cell_text(find(tour, "for name in (\"clean\""))
    assert "clean        waits for {'load': 'reads raw'}" in text
    assert "'feature_sum': 'reads sums'" in text and "'feature_max': 'reads peaks'" in text
    assert "{'north': (6, 3), 'south': (24, 9)}" in text


def test_graph_shows_the_pipeline_as_the_text_says(tour: list[dict]) -> None:
    """The tour's %tasks --graph cell is saved as SVG with the pipeline's edges and labels."""
    (output,) = find(tour, "%tasks --graph").outputs
    svg = output.data["text/html"]
    for source, target, label in [("load", "clean", "raw"), ("clean", "feature_sum", "table"),
                                  ("clean", "feature_max", "table"), ("clean", "report", "table"),
                                  ("feature_sum", "report", "sums"),
                                  ("feature_max", "report", "peaks")]:
        edge = re.search(rf'<g class="ipytasks-edge" data-source="{source}" '
                         rf'data-target="{target}" data-kind="data">.*?</g>', svg)
        assert edge and f">{label}</text>" in edge.group(0), (source, target)
    assert 'data-source="users" data-target="orders" data-kind="chain"' in svg
    assert 'data-source="stats_a" data-target="combined" data-kind="after' in svg


def test_map_with_limit_and_retries(tour: list[dict]) -> None:
    """20 mapped calls, 5 at a time, take about 4 rounds; the flaky call succeeds on try 3."""
    text = cell_text(find(tour, 'ipytasks.result("calls")'))
    assert text.startswith("[0, 1, 4, 9, 16, 25] 20 calls, 5 at a time:")
    seconds = float(re.search(r"5 at a time: ([\d.]+) s", text).group(1))
    assert 0.35 <= seconds < 1.5
    assert "answered after 3 attempts" in cell_text(find(tour, 'ipytasks.result("flaky")'))


def test_dashboard_and_timeline_are_shown(tour: list[dict]) -> None:
    """The dashboard opens near the top; the timeline is saved and shown as SVG at the end."""
    dashboard = find(tour, "%tasks")
    # Saved: a retired live view (a reference to no widget) and the static snapshot.
    live, snapshot = dashboard.outputs
    assert live.data["application/vnd.jupyter.widget-view+json"]["model_id"] == ""
    assert "<svg" in snapshot.data["text/html"] and "of work in" in snapshot.data["text/html"]
    timeline = find(tour, "SVG(filename=ipytasks.timeline(")
    assert any("image/svg+xml" in o.get("data", {}) for o in timeline.outputs)


def test_process_cells_overlap_on_two_cores(tour: list[dict]) -> None:
    """Two CPU-bound --process cells come back with their results and overlap."""
    text = cell_text(find(tour, "%wait crunch_low crunch_high"))
    match = re.search(r"^(\d+) (\d+) \| [\d.]+ s of work in [\d.]+ s: ([\d.]+)×", text)
    assert match, text
    assert (int(match[1]), int(match[2])) == (10453, 11301)
    assert float(match[3]) > 1.2  # generous: two cores, shared with the rest of the machine


def test_worker_output_is_saved_in_its_task_area(tour: list[dict]) -> None:
    """A process worker's print is saved in its own task's cell, and in no other."""
    holding = [c.source for c in tour if "worker says: counted 10453" in cell_text(c)]
    assert holding == [find(tour, "%%parallel crunch_low").source]


def test_dask_section_runs_when_the_extra_is_installed(tour: list[dict]) -> None:
    """With distributed installed the tour counts primes on a Dask worker; without, it says so."""
    import importlib.util

    text = cell_text(find(tour, 'print(primes_dask, "primes, counted on"'))
    if importlib.util.find_spec("distributed") is None:
        assert text == ""
        assert "pip install 'ipytasks[dask]'" in cell_text(find(tour, "have_dask = "))
    else:
        assert text.strip() == "6057 primes, counted on dask"


def test_cache_section_reuses_then_reruns_with_its_reason(tour: list[dict]) -> None:
    """The cached cell ends at once with the same output; a changed input reruns its reader."""
    again = cell_text(find(tour, 'record = ipytasks.tasks["prices"]'))
    assert re.match(r"cached in 0\.\d\d s: stored \d\d:\d\d, saves 1\.\d s", again), again
    shown = cell_text(find(tour, "# prices per region"))
    assert "prices cached" in shown and "downloaded 2 prices" in shown and "'south': 2.25" in shown
    assert "done | input prices changed" in cell_text(find(tour, 'ipytasks.tasks["worth"].cache_note'))


def test_progress_and_costs_section(tour: list[dict]) -> None:
    """The tqdm loop's cell ends at 6/6 with no bar in it; the costs cell prints CPU time for
    thread and process tasks and a worker's peak memory."""
    steps = cell_text(find(tour, "%%parallel crunch_steps"))
    assert re.search(r"crunch_steps done in [\d.]+s · 6/6", steps), steps
    assert "\r" not in steps and "it/s]" not in steps
    costs = cell_text(find(tour, "%wait crunch_steps"))
    assert re.search(r"slow_report +thread +CPU +\d+\.\d\d s +peak \(the kernel's\)", costs), costs
    assert re.search(r"crunch_steps +process +CPU +\d+\.\d\d s +peak +\d+ MB +6/6", costs), costs


def test_make_tour_runs_its_kernel_over_ipc_quietly(tmp_path: Path) -> None:
    """run_tour.py (``make tour``) talks to its kernel over IPC: no TCP-encryption warning."""
    import json
    import subprocess

    notebook = tmp_path / "tiny.ipynb"
    notebook.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {},
                   "outputs": [], "source": "from ipykernel.kernelapp import IPKernelApp\n"
                   "print(IPKernelApp.instance().transport)"}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "run_tour.py"), str(notebook),
         "--output", str(tmp_path / "out.ipynb")],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ipc"
    assert "without encryption" not in done.stderr and "WARNING" not in done.stderr, done.stderr

"""Timeline geometry, its SVG and PNG drawings, and the static HTML snapshot."""

from __future__ import annotations

import itertools
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ipytasks.overview import snapshot_html, timeline_geometry, write_timeline
from ipytasks.overview.timeline import (
    PNG_NEEDS_MATPLOTLIB,
    render_svg,
)
from ipytasks.records import TaskOptions, TaskRecord, TaskRegistry, TaskState

T0 = 1_700_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def record(name: str, state: TaskState, submitted: float, started: float | None = None,
           ended: float | None = None, **options: object) -> TaskRecord:
    return TaskRecord(
        name=name, source="pass", options=TaskOptions(**options), mode="thread", state=state,
        submitted=T0 + submitted,
        started=None if started is None else T0 + started,
        ended=None if ended is None else T0 + ended,
        attempts=1 if started is not None else 0,
    )


def pipeline() -> list[TaskRecord]:
    """load and prep overlap, a gap, fit runs, plot waits on fit."""
    fit = record("fit", TaskState.RUNNING, 0.0, 3.0, chain="main")
    plot = record("plot", TaskState.PENDING, 0.1, chain="main")
    plot.waits_for = ("fit",)
    plot.reasons = {"fit": "chain main"}
    return [
        record("load", TaskState.DONE, 0.0, 0.0, 2.0, group="io"),
        record("prep", TaskState.FAILED, 0.0, 0.5, 1.5, group="io"),
        fit,
        plot,
    ]


def test_one_lane_per_task_with_times_relative_to_the_first_submission() -> None:
    """Few tasks: a labelled lane each, bars in seconds since the run began, running to now."""
    tl = timeline_geometry(pipeline(), now=T0 + 4.0)
    assert not tl.packed
    assert tl.lanes == ("load", "prep", "fit", "plot")
    bars = {b.name: b for b in tl.bars}
    assert (bars["load"].start, bars["load"].end) == (0.0, 2.0)
    assert (bars["prep"].start, bars["prep"].end) == (0.5, 1.5)
    assert (bars["fit"].start, bars["fit"].end) == (3.0, 4.0)  # running: up to now
    assert bars["plot"].start is None and bars["plot"].queued == pytest.approx(0.1)
    assert bars["prep"].queued == 0.0  # waited 0.5 s before starting
    assert bars["load"].queued is None  # started as soon as it was submitted
    assert tl.span == 4.0 and tl.now == 4.0
    assert tl.running


def test_idle_stretch_between_tasks_is_found() -> None:
    """Between the end of load (2 s) and the start of fit (3 s) nothing ran."""
    tl = timeline_geometry(pipeline(), now=T0 + 4.0)
    assert tl.idle == ((2.0, 3.0),)


def test_finished_run_ends_at_last_end_not_now() -> None:
    """When every task ended, the axis stops at the last end, however late it is now."""
    records = [record("a", TaskState.DONE, 0, 0, 1), record("b", TaskState.DONE, 0, 0.5, 2)]
    tl = timeline_geometry(records, now=T0 + 100)
    assert tl.span == 2.0 and not tl.running


def test_many_tasks_are_packed_into_as_many_lanes_as_ran_at_once() -> None:
    """100 tasks, at most 4 at a time: 4 lanes, no two bars of a lane overlap."""
    records = []
    for i in range(100):
        start = (i // 4) * 1.0
        records.append(record(f"t{i}", TaskState.DONE, 0, start, start + 0.9))
    records.append(record("waiting", TaskState.PENDING, 0))
    tl = timeline_geometry(records, now=T0 + 30)
    assert tl.packed
    assert len(tl.lanes) == 4
    assert tl.omitted == 1  # the task that never started has no bar
    by_lane: dict[int, list[tuple[float, float]]] = {}
    for bar in tl.bars:
        assert bar.start is not None
        by_lane.setdefault(bar.lane, []).append((bar.start, bar.end))
    for spans in by_lane.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_empty_timeline() -> None:
    """No tasks: no bars and a drawable axis."""
    tl = timeline_geometry([], now=T0)
    assert tl.bars == () and tl.span > 0
    ET.fromstring(render_svg(tl))


def test_svg_bars_have_state_colours_and_hover_titles() -> None:
    """Each task is a <rect> in its state's colour whose <title> names it and its times."""
    svg = render_svg(timeline_geometry(pipeline(), now=T0 + 4.0))
    root = ET.fromstring(svg)
    rects, fills = {}, {}
    for group in root.iter(f"{SVG}g"):  # bars are grouped by state, the group gives the fill
        for rect in group.findall(f"{SVG}rect"):
            title = rect.find(f"{SVG}title").text
            if not title.startswith("idle"):
                name = title.split(":")[0]
                rects[name], fills[name] = rect, group.get("fill")
    assert set(rects) == {"load", "prep", "fit"}  # plot never ran: a dashed line, no bar
    assert fills["load"] == "#1a7f37"
    assert fills["prep"] == "#cf222e"
    load_title = rects["load"].find(f"{SVG}title").text
    assert load_title == "load: done (thread)\n+0.00 s to +2.00 s (2.0 s)"
    # The name labels carry the state icon: colour is not the only sign.
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "✔ load" in labels and "✖ prep" in labels and "○ plot" in labels
    idle = [r for r in root.iter(f"{SVG}rect")
            if r.find(f"{SVG}title") is not None and r.find(f"{SVG}title").text.startswith("idle")]
    assert len(idle) == 1 and "idle 1.0 s" in idle[0].find(f"{SVG}title").text


def test_svg_pending_task_title_says_what_it_waits_for() -> None:
    """Hovering a waiting task's line says since when and for what."""
    svg = render_svg(timeline_geometry(pipeline(), now=T0 + 4.0))
    assert "plot: pending\nwaiting since +0.10 s for fit (chain main)" in svg


def test_names_are_escaped() -> None:
    """A name with markup characters cannot break the SVG."""
    records = [record("a<b>&c", TaskState.DONE, 0, 0, 1)]
    ET.fromstring(render_svg(timeline_geometry(records, now=T0 + 1)))


def test_write_svg_file(tmp_path: Path) -> None:
    """write_timeline to .svg writes a standalone SVG file from a registry, with a legend."""
    registry = TaskRegistry()
    for r in pipeline():
        registry._add(r)
    path = write_timeline(registry, tmp_path / "run.svg", now=T0 + 4.0)
    assert path == tmp_path / "run.svg"
    text = path.read_text(encoding="utf-8")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == f"{SVG}svg"
    assert "✖ failed" in [t.text for t in root.iter(f"{SVG}text")]  # legend


def test_write_png_without_matplotlib_says_how_to_install(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib, asking for a .png raises ImportError naming `pip install matplotlib`."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape("pip install matplotlib")) as info:
        write_timeline(pipeline(), tmp_path / "run.png", now=T0 + 4)
    assert str(info.value) == PNG_NEEDS_MATPLOTLIB
    assert not (tmp_path / "run.png").exists()


def test_write_png_with_matplotlib(tmp_path: Path) -> None:
    """With matplotlib, a .png path gets a PNG image."""
    pytest.importorskip("matplotlib")
    path = write_timeline(pipeline(), tmp_path / "run.png", now=T0 + 4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    """A path that is neither .svg nor .png is a ValueError that says which suffixes work."""
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        write_timeline(pipeline(), tmp_path / "run.jpg")


def test_snapshot_has_summary_timeline_table_and_errors() -> None:
    """The static snapshot holds the summary line, the SVG, a row per task and the errors."""
    records = pipeline()
    try:
        raise ValueError("bad row 7")
    except ValueError as exc:
        records[1].error = exc
    html = snapshot_html(records, now=T0 + 4.0)
    assert html.count("<svg") == 1
    assert html.count("<tr") == 1 + len(records)
    assert "4 tasks" in html
    assert "4.0 s of work in 4.0 s: 1.0×" in html  # 2 + 1 + 1 (fit, running)
    assert "ValueError: bad row 7" in html and "Traceback" in html
    assert "fit: chain main" in html  # what plot waits for, and why


def test_snapshot_of_no_tasks() -> None:
    """A snapshot with no tasks says so and draws nothing."""
    html = snapshot_html([], now=T0)
    assert "no tasks yet" in html and "<svg" not in html


def _packed_records() -> list[TaskRecord]:
    """100 tasks, at most 4 at a time (packed into 4 lanes)."""
    return [record(f"t{i}", TaskState.DONE, 0, (i // 4) * 1.0, (i // 4) * 1.0 + 0.9)
            for i in range(100)]


def test_packed_timeline_file_numbers_its_lanes() -> None:
    """A dense timeline (packed lanes) labels its lanes with how many tasks ran at once."""
    root = ET.fromstring(render_svg(timeline_geometry(_packed_records(), now=T0 + 30)))
    labels = {t.text: t.find(f"{SVG}title").text for t in root.iter(f"{SVG}text")
              if t.find(f"{SVG}title") is not None and t.text and t.text.isdigit()}
    assert labels == {str(k): f"lane {k}: {k} tasks ran at once when a bar here started"
                      for k in (1, 2, 3, 4)}


def test_live_packed_timeline_numbers_its_lanes(tmp_path: Path) -> None:
    """The live view (dashboard.js, run by node as the browser runs it) labels a packed
    timeline's lanes as the files do."""
    import json
    import shutil
    import subprocess

    from ipytasks.overview.columns import TaskColumns
    from ipytasks.views import STATE_STYLE

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    registry = TaskRegistry()
    for r in _packed_records():
        registry._add(r)
    columns = TaskColumns(registry)
    script = tmp_path / "draw.mjs"
    js = Path(__file__).resolve().parents[2] / "src" / "ipytasks" / "overview" / "dashboard.js"
    state = {
        "timeline": {"modes": list(columns.modes), "total": 100, "t0": T0},
        "now": T0 + 30, "labelled": 40,
        "states": [[str(s), *STATE_STYLE[s]] for s in TaskState],
    }
    script.write_text(
        f"import {{ svg }} from {json.dumps(str(js))};\n"
        f"const state = {json.dumps(state)};\n"
        f"const names = Buffer.from({json.dumps(columns.names().decode())});\n"
        f"const rows = Buffer.from({json.dumps(columns.rows().hex())}, 'hex');\n"
        "state.timeline.names = new DataView(names.buffer, names.byteOffset, names.length);\n"
        "state.timeline.rows = new DataView(rows.buffer, rows.byteOffset, rows.length);\n"
        "console.log(svg({ get: (k) => state[k] }));\n"
    )
    drawn = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30,
                           check=True).stdout
    lanes = re.findall(r'<text class="ipytasks-lane"[^>]*>(\d+)<title>([^<]*)</title>', drawn)
    assert lanes == [(str(k), f"lane {k}: {k} tasks ran at once when a bar here started")
                     for k in (1, 2, 3, 4)], drawn[:500]

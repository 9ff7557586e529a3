"""The benchmark suite runs: ``python bench/run.py --quick`` ends well and prints its table.

Benchmarks are not timed tests: this checks that every part of the suite still runs (a smoke run,
small sizes), not the figures. A part that cannot run here (ipyparallel or Dask not installed,
process mode missing) must say "not available" in its row; any other broken part is an
``error`` row, and fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| measure"
COLUMNS = ("measure", "ipytasks", "baseline(s)", "ratio", "goal", "ok?")


@pytest.mark.kernel
@pytest.mark.timeout(260)
def test_quick_pass_runs(tmp_path: Path) -> None:
    output = tmp_path / "bench.md"
    env = dict(os.environ)
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_VERSION"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=250, check=False,
    )
    report = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report

    lines = proc.stdout.splitlines()
    header = next((line for line in lines if line.startswith(HEADER)), None)
    assert header is not None, report
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS), report

    rows = [
        [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        for line in lines
        if line.startswith("| ") and line is not header and not line.startswith("| **")
    ]
    assert len(rows) >= 30, report
    for cells in rows:
        assert len(cells) == 6, cells
        ok = cells[5]
        assert ok in ("yes", "NO", "unclear", "—", "n/a"), f"broken row {cells}\n{report}"
        if ok == "n/a":
            assert "not available" in cells[1], cells
        assert not cells[1].startswith("error"), f"broken row {cells}\n{report}"
    for section in ("Speed goals", "Per-task overhead", "Classic scenarios", "Scaling",
                    "Dashboard"):
        assert f"**{section}" in proc.stdout, report
    assert output.read_text().count(HEADER) == 1

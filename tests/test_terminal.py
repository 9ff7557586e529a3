"""Terminal IPython: no loop runs between cells, so tasks run on ipytasks' own loop thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_ipython(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in terminal IPython (the real TerminalInteractiveShell), cell by cell."""
    script = textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--quick", "--colors=NoColor",
         "-c", script],
        capture_output=True, text=True, timeout=60,
    )


def test_tasks_run_between_cells_and_say_when_done() -> None:
    """A task keeps running between cells, prints into the terminal, and says how it ended."""
    result = run_ipython(
        """
        ip = get_ipython()
        ip.run_cell("%load_ext ipytasks")
        ip.run_cell("import asyncio, time")
        ip.run_cell("%%parallel fetch\\nawait asyncio.sleep(0.3)\\nprint('fetched')\\n'rows'")
        ip.run_cell("%%sequential broken\\n1/0")
        time.sleep(1)   # between cells: nothing runs the notebook's loop here
        ip.run_cell("%wait fetch")
        ip.run_cell("import ipytasks; print('state:', ipytasks.tasks['fetch'].state)")
        """
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "tasks run on a loop of their own in a background thread" in result.stderr
    assert "fetched" in out and "'rows'" in out
    assert "[fetch] done in 0.3" in out
    assert "[broken] failed in" in out and "ZeroDivisionError" in out
    assert "state: done" in out


def test_wait_blocks_and_lists_failures() -> None:
    """%wait blocks the terminal until tasks end and raises TaskFailed naming failures."""
    result = run_ipython(
        """
        ip = get_ipython()
        ip.run_cell("%load_ext ipytasks")
        ip.run_cell(
            "%%parallel slow --thread\\nimport time\\ntime.sleep(0.3)\\nraise ValueError('late')"
        )
        r = ip.run_cell("%wait")
        print("wait failed with", type(r.error_in_exec).__name__)
        """
    )
    assert "wait failed with TaskFailed" in result.stdout, result.stdout + result.stderr
    assert "1 task did not succeed: slow (failed)" in result.stdout

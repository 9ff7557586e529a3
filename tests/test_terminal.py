"""Terminal IPython: no loop runs between cells, so tasks run on ipytasks' own loop thread."""

from __future__ import annotations

import re
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
        ip.run_cell(
            "import asyncio, threading\\ngo, fetched = threading.Event(), threading.Event()"
        )
        ip.run_cell(
            "%%parallel fetch\\nawait asyncio.to_thread(go.wait, 10)\\n"
            "print('fetched')\\nfetched.set()\\n'rows'"
        )
        ip.run_cell("%%sequential broken\\n1/0")
        # Between cells, where nothing runs the notebook's loop: the task goes on by itself.
        go.set()
        # One string: the task's own lines are echoed from the loop's thread meanwhile,
        # and print() of two arguments could be cut between them.
        print(f"ran between cells: {fetched.wait(10)}")
        ip.run_cell("%wait fetch")
        ip.run_cell("import ipytasks; print('state:', ipytasks.tasks['fetch'].state)")
        """
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "tasks run on a loop of their own in a background thread" in result.stderr
    assert "ran between cells: True" in out, out + result.stderr
    assert "fetched" in out and "'rows'" in out
    assert re.search(r"\[fetch\] done in \d+\.\d\ds", out), out
    assert "[broken] failed in" in out and "ZeroDivisionError" in out
    assert "state: done" in out


def test_wait_blocks_and_lists_failures() -> None:
    """%wait blocks the terminal until tasks end and raises TaskFailed naming failures.

    The task ends only once the main thread is inside %wait (seen in its stack), so a
    %wait that returned without waiting would find it running and raise nothing.
    """
    result = run_ipython(
        """
        import threading
        ip = get_ipython()
        ip.run_cell("%load_ext ipytasks")
        release, seen = threading.Event(), []

        def release_once_waiting(sys=__import__("sys"), threading=threading):
            main = threading.main_thread().ident
            for _ in range(1000):  # at most 10 s, then the task ends all the same
                frame = sys._current_frames().get(main)
                while frame is not None and frame.f_code.co_name != "wait_blocking":
                    frame = frame.f_back
                if frame is not None:
                    seen.append(True)
                    break
                threading.Event().wait(0.01)
            release.set()

        ip.user_ns["release"] = release
        ip.run_cell("%%parallel slow --thread\\nrelease.wait(10)\\nraise ValueError('late')")
        threading.Thread(target=release_once_waiting, daemon=True).start()
        r = ip.run_cell("%wait")
        print("wait failed with", type(r.error_in_exec).__name__)
        print("released while waiting:", seen == [True])
        """
    )
    assert "wait failed with TaskFailed" in result.stdout, result.stdout + result.stderr
    assert "released while waiting: True" in result.stdout, result.stdout + result.stderr
    assert "1 task did not succeed: slow (failed)" in result.stdout

"""``--cache`` and ``%retry --failed`` through a real kernel (ipykernel 7 and 6), restarted.

Each kernel gets a Jupyter data folder of its own (the signing secret lives there) and
keeps its cache in ``.ipytasks`` of its working folder, as a notebook's kernel does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel_driver import Execution, Kernel

SETUP = "%load_ext ipytasks\nimport ipytasks, pandas as pd, time\nn = 3"
LOAD = (
    "%%parallel load --cache\n"
    "time.sleep(2)  # an expensive step\n"
    "print('loaded', n, 'rows')\n"
    "df = pd.DataFrame({'x': range(n)})\n"
    "df"
)


@pytest.fixture(autouse=True)
def jupyter_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jupyter data folder for this test's kernels: never the real home."""
    folder = tmp_path / "jupyter-data"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(folder))
    monkeypatch.delenv("IPYTASKS_CACHE", raising=False)
    return folder


def display_of(kernel: Kernel, execution: Execution) -> dict:
    ids = [i for i in execution.display_ids if i.startswith("ipytasks-")]
    assert len(ids) == 1, f"expected one task display, got {execution.displays}"
    return kernel.display(ids[0])


def status(kernel: Kernel, execution: Execution) -> str:
    return display_of(kernel, execution)["text/plain"].partition("\n")[0]


def area(kernel: Kernel, execution: Execution) -> str:
    return display_of(kernel, execution)["text/plain"].partition("\n")[2]


def value(kernel: Kernel, expr: str) -> str:
    return kernel.execute(f"print(repr({expr}))").stdout.strip()


def run(kernel: Kernel, cell: str, name: str) -> Execution:
    """Submit a task cell and wait until the task has ended."""
    sub = kernel.execute(cell)
    kernel.execute(f"%wait {name}", timeout=60)
    return sub


def test_cached_across_a_restart_and_rerun_when_something_changed(fresh_kernel: Kernel) -> None:
    """A 2 s cell runs once; after a restart it ends cached at once with the same value
    and outputs; a change to its input, its code or an upstream task runs it again and
    says why; comments do not count; a corrupted entry is recomputed."""
    k = fresh_kernel
    k.execute(SETUP)
    first = run(k, LOAD, "load")
    assert status(k, first).startswith("✔ load done in 2."), status(k, first)
    assert "(not stored before)" in status(k, first)
    assert "loaded 3 rows" in area(k, first)
    assert (k.cwd / ".ipytasks" / "entries").is_dir()
    assert (k.cwd / ".ipytasks" / ".gitignore").read_text().strip().endswith("*")

    k.restart()
    k.execute(SETUP)
    again = run(k, LOAD, "load")
    line = status(k, again)
    assert re.fullmatch(r"✔ load cached \(stored \d\d:\d\d, saves 2\.\d s\)", line), line
    assert value(k, "ipytasks.tasks['load'].state") == "'cached'"
    assert float(value(k, "ipytasks.tasks['load'].duration")) < 0.5
    assert value(k, "df.x.tolist()") == "[0, 1, 2]"
    assert value(k, "ipytasks.result('load').equals(df)") == "True"
    shown = area(k, again)
    assert "loaded 3 rows" in shown and re.search(r"x\s*\n0\s+0\n1\s+1\n2\s+2", shown), shown
    assert "<table" in display_of(k, again)["text/html"]  # the frame's own HTML, as first shown
    assert value(k, "ipytasks.tasks['load'].output") == "'loaded 3 rows\\n'"

    # A comment and a blank line are no change.
    commented = LOAD.replace("df = pd", "# build the frame\n\ndf = pd")
    assert status(k, run(k, commented, "load")).startswith("✔ load cached")

    k.execute("n = 4")
    changed = run(k, LOAD, "load")
    assert re.fullmatch(r"✔ load done in 2\.\d\ds \(input n changed\)", status(k, changed))
    assert value(k, "len(df)") == "4"

    edited = LOAD.replace("df = pd.DataFrame({'x': range(n)})", "df = pd.DataFrame({'x': range(n), 'y': 1})")
    assert status(k, run(k, edited, "load")).endswith("(code changed)")

    # An upstream task that ran again: the reader says so. Both submitted in one cell,
    # as Run All does: the reader waits for the writer, which is still pending.
    pipeline = (
        "ipytasks.submit('rows = [i * {k} for i in range(n)]', 'clean', cache=True)\n"
        "ipytasks.submit('total = sum(rows)', 'report', cache=True)"
    )
    k.execute(pipeline.format(k=2))
    k.execute("%wait clean report")
    assert value(k, "total") == "12"
    k.execute(pipeline.format(k=3))
    k.execute("%wait clean report")
    assert value(k, "ipytasks.tasks['clean'].cache_note") == "'code changed'"
    assert value(k, "ipytasks.tasks['report'].cache_note") == "'upstream clean recomputed'"
    assert value(k, "total") == "18"
    k.execute(pipeline.format(k=3))
    k.execute("%wait clean report")
    assert value(k, "[ipytasks.tasks[t].state for t in ('clean', 'report')]") == "['cached', 'cached']"

    # Flip bytes in the middle of the stored entry: detected, removed, recomputed.
    key = value(k, "ipytasks.tasks['load'].cache_key").strip("'")
    entry = k.cwd / ".ipytasks" / "entries" / f"{key}.ipt"
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    fixed = run(k, edited, "load")
    assert status(k, fixed).startswith("✔ load done in 2.")
    assert "stored entry its signature does not match (cut short or changed): recomputed" in status(k, fixed)
    assert status(k, run(k, edited, "load")).startswith("✔ load cached")


def test_a_value_that_cannot_be_fingerprinted_runs_uncached(fresh_kernel: Kernel) -> None:
    """A cell reading a database connection runs every time and its status names the value."""
    k = fresh_kernel
    k.execute(SETUP + "\nimport sqlite3\nconn = sqlite3.connect(':memory:', check_same_thread=False)")
    cell = "%%parallel query --cache\nrows = conn.execute('select 1').fetchall()"
    for _ in range(2):
        sub = run(k, cell, "query")
        assert status(k, sub).endswith("(not cached: reads conn (sqlite3.Connection))"), status(k, sub)
    assert value(k, "rows") == "[(1,)]"


def test_retry_failed_reruns_what_failed_and_what_it_skipped(fresh_kernel: Kernel) -> None:
    """%retry --failed after a fix reruns the failed step and the steps skipped because of
    it, in order; what succeeded (a cached step among them) is not run again."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport ipytasks\nready = False")
    k.execute("%%sequential fetch --cache\nbase = 10")
    k.execute("%%sequential parse\nassert ready, 'parser not ready'\nmid = base + 1")
    k.execute("%%sequential report\nout = mid * 2")
    k.execute("%%parallel side\nother = 1")
    waited = k.execute("%wait", allow_errors=True)
    assert "parse (failed)" in waited.error_text and "report (skipped)" in waited.error_text
    k.execute("fetch_run = ipytasks.tasks['fetch']; side_run = ipytasks.tasks['side']")

    k.execute("ready = True")
    retried = k.execute("%retry --failed")
    assert retried.stdout.strip() == "retrying: parse, report"
    k.execute("%wait")
    states = "[(t, ipytasks.tasks[t].state) for t in ipytasks.tasks]"
    assert value(k, states) == (
        "[('fetch', 'done'), ('parse', 'done'), ('report', 'done'), ('side', 'done')]"
    )
    assert value(k, "ipytasks.tasks['fetch'] is fetch_run and ipytasks.tasks['side'] is side_run") == "True"
    assert value(k, "ipytasks.tasks['report'].waits_for") == "('parse',)"
    assert value(k, "out") == "22"
    assert k.execute("%retry --failed").stdout.strip() == "retrying: nothing (no task failed)"


def test_a_task_ends_before_its_entry_is_written(fresh_kernel: Kernel) -> None:
    """A small entry is written after its task ended, on the cache's writer thread: while
    that thread is busy the task is done and no entry is there (a run of the same key
    misses); %tasks_cache waits for the write and lists it, and the next run is cached.
    A write that fails later shows `not stored: …` in the task's status line. Unloading
    waits for the writes under way."""
    k = fresh_kernel
    k.execute(SETUP + "\nimport threading\nfrom ipytasks.cache import outcome")
    block = "gate = threading.Event()\nbusy = outcome._writer.submit(gate.wait)"
    entries = k.cwd / ".ipytasks" / "entries"
    cell = "%%parallel small --cache\nsmall = n * 2"

    k.execute(block)
    first = run(k, cell, "small")
    assert re.fullmatch(r"✔ small done in 0\.\d\ds \(not stored before\)", status(k, first))
    assert not entries.exists() or not list(entries.glob("*.ipt"))
    assert status(k, run(k, cell, "small")).endswith("(not stored before)")  # not there yet
    k.execute("gate.set()")
    listing = k.execute("%tasks_cache").stdout
    assert "\nsmall " in listing, listing
    assert len(list(entries.glob("*.ipt"))) == 1
    assert status(k, run(k, cell, "small")).startswith("✔ small cached")

    # A folder whose entries cannot be made: the status line says so once the write failed.
    broken = k.cwd / "broken"
    broken.mkdir()
    (broken / "entries").write_text("not a folder")
    k.execute(f"%tasks_cache {broken}")
    k.execute(block)
    failed = run(k, cell.replace("small", "other"), "other")
    assert status(k, failed).endswith("(not stored before)"), status(k, failed)
    k.execute("gate.set()")
    k.wait_until(lambda: status(k, failed).endswith("(not stored before; not stored: File exists)"),
                 what="the status line to say the entry was not stored")
    assert value(k, "ipytasks.tasks['other'].state") == "'done'"

    # Unloading waits for the write under way (the writer is let go 0.5 s into the unload).
    k.execute(f"%tasks_cache {k.cwd / 'last'}")
    k.execute(block)
    run(k, cell.replace("small", "last"), "last")
    k.execute("threading.Timer(0.5, gate.set).start()\n%unload_ext ipytasks")
    assert len(list((k.cwd / "last" / "entries").glob("*.ipt"))) == 1


def test_cache_with_map_is_refused_saying_why_and_what_to_do(fresh_kernel: Kernel) -> None:
    """--cache --map is a usage error that says why and what to do instead."""
    k = fresh_kernel
    k.execute(SETUP)
    refused = k.execute("%%parallel calls --cache --map x in range(3)\ny = x * 2", allow_errors=True)
    text = refused.error_text
    assert "--cache does not combine with --map" in text, text
    assert "not stored one by one" in text and "each as a --cache task of its own" in text, text
    assert value(k, "'calls' in ipytasks.tasks") == "False"


def test_a_kernel_restarted_finishes_the_writes_under_way(fresh_kernel: Kernel) -> None:
    """A restart (a shutdown request, as a front end's Restart sends) lets the kernel
    finish writing the entries of tasks that ended: the next session's run is cached."""
    k = fresh_kernel
    k.execute(SETUP + "\nimport threading\nfrom ipytasks.cache import outcome")
    k.execute("gate = threading.Event()\nbusy = outcome._writer.submit(gate.wait)")
    cell = "%%parallel small --cache\nsmall = n * 2"
    run(k, cell, "small")
    k.execute("threading.Timer(0.5, gate.set).start()")  # let go while the kernel exits
    k.restart()
    k.execute(SETUP)
    assert status(k, run(k, cell, "small")).startswith("✔ small cached")


def test_an_array_changed_after_the_end_is_stored_as_the_task_left_it(fresh_kernel: Kernel) -> None:
    """A 400 kB array (out of band, yet small enough to be written after the task ended)
    changed in place by the next cell before its entry is written: the entry holds the
    array as the task left it."""
    k = fresh_kernel
    k.execute(SETUP + "\nimport threading\nimport numpy as np\nfrom ipytasks.cache import outcome")
    k.execute("gate = threading.Event()\nbusy = outcome._writer.submit(gate.wait)")
    cell = "%%parallel arr --cache\narr = np.zeros(50_000)"
    run(k, cell, "arr")
    k.execute("arr[0] = 99\ngate.set()")
    k.execute("%tasks_cache")
    k.execute("del arr")
    assert status(k, run(k, cell, "arr")).startswith("✔ arr cached")
    assert value(k, "(float(arr[0]), arr.nbytes)") == "(0.0, 400000)"


@pytest.mark.parametrize("mode", ["--mode async", "--thread", "--process"])
def test_every_mode_is_cached_and_binds_the_same(kernel: Kernel, mode: str) -> None:
    """A worker-process task is stored and reused like one on the kernel's loop or a thread:
    the second run ends cached, binds the same value and shows the same output."""
    name = "m_" + mode.split()[-1].lstrip("-")
    cell = (f"%%parallel {name} --cache {mode}\nimport os\nprint('computed', n)\n"
            f"v_{name} = [n, n * 2]\n" + ("await __import__('asyncio').sleep(0)\n"
                                            if "async" in mode else "") + f"v_{name}")
    kernel.execute(SETUP)
    first = run(kernel, cell, name)
    assert "(not stored before)" in status(kernel, first), status(kernel, first)
    kernel.execute(f"%tasks_cache\ndel v_{name}")  # %tasks_cache: the write is done
    again = run(kernel, cell, name)
    assert re.match(rf"✔ {name} cached \(stored", status(kernel, again)), status(kernel, again)
    assert area(kernel, again) == area(kernel, first) == "computed 3\n[3, 6]\n"
    assert value(kernel, f"v_{name}") == "[3, 6]"

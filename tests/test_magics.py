"""%%parallel, %%sequential, %wait, %cancel, %result through a real ipykernel (6 and 7).

Each test reads what the front end would see: the execute replies, the iopub
streams and errors of every cell, and the display each task's cell shows (its status
line and outputs, updated in place by display id). Progress is gated by events the test sets from a later cell.
"""

from __future__ import annotations

import re

import pytest

from kernel_driver import Execution, Kernel, strip_ansi


@pytest.fixture(scope="module")
def kernel(kernel: Kernel) -> Kernel:
    """The module's shared kernel, with what every test here uses imported once."""
    kernel.execute("import asyncio, sys, threading, ipytasks\nfrom IPython.display import display, HTML")
    return kernel


def task_display(execution: Execution) -> str:
    """The display id of the one task display a submitting cell shows."""
    ids = [i for i in execution.display_ids if i.startswith("ipytasks-")]
    assert len(ids) == 1, f"expected one task display in the cell, got {execution.displays}"
    return ids[0]


def shown(kernel: Kernel, execution: Execution) -> dict:
    """What the cell's task display shows now (its mime bundle)."""
    return kernel.display(task_display(execution))


def status_text(kernel: Kernel, execution: Execution) -> str:
    """The status line: the first line of the display's text."""
    return shown(kernel, execution)["text/plain"].partition("\n")[0]


def area_text(kernel: Kernel, execution: Execution) -> str:
    """Everything the display shows under the status line, as text."""
    return shown(kernel, execution)["text/plain"].partition("\n")[2]


def area_html(kernel: Kernel, execution: Execution) -> str:
    return shown(kernel, execution)["text/html"]


def streams_containing(kernel: Kernel, text: str) -> list[dict]:
    return [
        m for m in kernel.messages()
        if m["msg_type"] == "stream" and text in m["content"]["text"]
    ]


def error_of(execution: Execution) -> tuple[str, str]:
    """The error a cell ended with, as the execute reply names it (UsageError has no
    traceback message of its own: the shell prints it on stderr)."""
    assert execution.status == "error", f"the cell did not fail: {execution!r}"
    return execution.reply["ename"], execution.reply["evalue"]


def value(kernel: Kernel, expr: str) -> str:
    """The repr of ``expr`` evaluated in the kernel."""
    return kernel.execute(f"print(repr({expr}))").stdout.strip()


def test_output_lands_in_the_tasks_own_area(kernel: Kernel) -> None:
    """An async task returns at once; its prints, display and result reach only its own area."""
    kernel.execute("import asyncio, sys\nfrom IPython.display import display, HTML\ngate1 = asyncio.Event()")
    sub = kernel.execute(
        "%%parallel own1\n"
        "print('own1 before')\n"
        "await gate1.wait()\n"
        "print('own1 warn', file=sys.stderr)\n"
        "display(HTML('<i>own1 html</i>'))\n"
        "6 * 7"
    )
    assert sub.stdout == "" and sub.errors == []
    kernel.wait_until(lambda: "own1 before" in area_text(kernel, sub), what="first print in area")
    other = kernel.execute("import ipytasks\nprint('other cell', ipytasks.tasks['own1'].state)")
    assert other.stdout == "other cell running\n"
    kernel.execute("gate1.set()")
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="status line says done")
    assert area_text(kernel, sub) == (
        "own1 before\nown1 warn\n<IPython.core.display.HTML object>\n42\n"
    )
    page = area_html(kernel, sub)
    # In order: the print, the warning (shaded), the HTML as it was displayed, the result.
    assert re.search(r"own1 before\n</pre><pre [^>]*rgba\(255,0,0[^>]*>own1 warn\n</pre>"
                     r"<div><i>own1 html</i></div><pre [^>]*>42</pre>$", page), page
    assert streams_containing(kernel, "own1") == []
    assert status_text(kernel, sub).startswith("✔ own1 done in ")
    assert value(kernel, "ipytasks.tasks['own1'].output") == repr("own1 before\nown1 warn\n")


def test_thread_prints_stay_in_their_cell(kernel: Kernel) -> None:
    """A thread task printing while later cells run never writes into them (ipykernel 7
    would send a plain thread's print to the latest cell)."""
    kernel.execute("import threading\nstep = threading.Event()\ngo_on = threading.Event()")
    sub = kernel.execute(
        "%%parallel thr1\n"
        "print('thr1 one')\n"
        "step.set()\n"
        "go_on.wait(20)\n"
        "print('thr1 two')\n"
        "threading.current_thread().name"
    )
    kernel.wait_until(lambda: "thr1 one" in area_text(kernel, sub), what="thread print in area")
    later = kernel.execute("go_on.set()\nprint('later cell')")
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="thread task done")
    assert area_text(kernel, sub).startswith("thr1 one\nthr1 two\n'ipytasks-thread")
    assert later.stdout == "later cell\n"
    assert streams_containing(kernel, "thr1") == []
    assert value(kernel, "ipytasks.tasks['thr1'].mode") == "'thread'"


def test_sequential_chain_runs_in_order(kernel: Kernel) -> None:
    """%%sequential tasks of a chain wait for the previous one; other chains do not."""
    kernel.execute("gate2 = asyncio.Event()\norder2 = []")
    first = kernel.execute("%%sequential c2a --chain c2\nawait gate2.wait()\norder2.append('a')")
    second = kernel.execute("%%sequential c2b --chain c2\norder2.append('b')")
    other = kernel.execute("%%sequential c2x --chain c2other\norder2.append('x')")
    kernel.wait_until(lambda: "done" in status_text(kernel, other), what="other chain runs")
    assert "waits for c2a: chain c2" in status_text(kernel, second)
    assert value(kernel, "order2") == "['x']"
    kernel.execute("gate2.set()")
    kernel.wait_until(lambda: "done" in status_text(kernel, second), what="chain finished")
    assert "done" in status_text(kernel, first)
    assert value(kernel, "order2") == "['x', 'a', 'b']"


def test_wait_runs_other_tasks_and_lists_failures(kernel: Kernel) -> None:
    """%wait blocks its cell while tasks keep running, then raises one error naming every
    failure with its traceback; a skipped task is listed too."""
    kernel.execute(
        "%%parallel w3ok\nticks3 = 0\nfor _ in range(5):\n    ticks3 += 1\n    await asyncio.sleep(0.05)"
    )
    kernel.execute("%%sequential w3bad --chain c3\nawait asyncio.sleep(0.1)\n{}['missing']")
    kernel.execute("%%sequential w3after --chain c3\n'never'")
    waited = kernel.execute("%wait w3ok w3bad w3after", allow_errors=True)
    assert value(kernel, "ticks3") == "5"
    (error,) = waited.errors
    assert error["ename"] == "TaskFailed"
    assert "2 tasks did not succeed: w3bad (failed), w3after (skipped)" in error["evalue"]
    assert "KeyError: 'missing'" in error["evalue"] and "line 2" in error["evalue"]
    assert "upstream 'w3bad' failed" in error["evalue"]
    assert kernel.execute("%wait w3ok").status == "ok"


def test_wait_option_blocks_the_cell(kernel: Kernel) -> None:
    """--wait blocks until the task ends while another task keeps running meanwhile."""
    kernel.execute("%%parallel bg4\nbeats4 = 0\nwhile True:\n    beats4 += 1\n    await asyncio.sleep(0.02)")
    cell = kernel.execute("%%parallel w4 --wait\nawait asyncio.sleep(0.3)\nprint('w4 printed')\n'w4 result'")
    assert value(kernel, "ipytasks.tasks['w4'].state") == "'done'"
    assert "w4 printed" in area_text(kernel, cell)
    assert int(value(kernel, "beats4")) >= 3
    kernel.execute("%cancel bg4")
    assert value(kernel, "ipytasks.tasks['bg4'].state") in ("'cancelled'", "'running'")
    kernel.wait_until(lambda: value(kernel, "ipytasks.tasks['bg4'].state") == "'cancelled'")


def test_results_and_result_magic(kernel: Kernel) -> None:
    """%result returns the last expression's value or raises the task's error; results() maps
    names to results of finished tasks in a group."""
    kernel.execute("%%parallel r5a -g g5\n'alpha'")
    kernel.execute("%%parallel r5b -g g5\nawait asyncio.sleep(0)\n2 ** 10")
    kernel.execute("%%parallel r5c\nint('x')")
    kernel.execute("%wait g5")
    out = kernel.execute("%result r5b")
    assert out.displays[-1]["text/plain"] == "1024"
    assert value(kernel, "ipytasks.results('g5')") == "{'r5a': 'alpha', 'r5b': 1024}"
    kernel.wait_until(lambda: value(kernel, "ipytasks.tasks['r5c'].state") == "'failed'")
    failed = kernel.execute("%result r5c", allow_errors=True)
    assert failed.errors[0]["ename"] == "ValueError"


@pytest.mark.parametrize(
    ("body", "ename"),
    [("raise KeyboardInterrupt", "KeyboardInterrupt"), ("raise SystemExit(3)", "SystemExit")],
)
@pytest.mark.parametrize("mode", ["async", "thread"])
def test_interrupt_or_exit_in_a_task_fails_only_the_task(
    kernel: Kernel, body: str, ename: str, mode: str
) -> None:
    """KeyboardInterrupt or SystemExit from a task body makes that task failed; the kernel,
    its other tasks and the user's variables survive."""
    name = f"die6_{mode}_{ename.lower()}"
    kernel.execute(f"survivor6 = '{name}'")
    kernel.execute(f"%%parallel {name} --mode {mode}\n{body}")
    waited = kernel.execute(f"%wait {name}", allow_errors=True)
    assert waited.errors[0]["ename"] == "TaskFailed"
    assert f"{name} (failed)" in waited.errors[0]["evalue"]
    assert kernel.is_alive()
    assert kernel.execute("print('alive')").stdout == "alive\n"
    assert value(kernel, "survivor6") == repr(name)


def test_timeout_and_cancel(kernel: Kernel) -> None:
    """--timeout ends a body as timed_out; %cancel stops a running and a pending task."""
    kernel.execute("%%parallel t7 --timeout 0.2\nawait asyncio.sleep(30)")
    kernel.execute("%%sequential c7a --chain c7\nwhile True:\n    await asyncio.sleep(0.05)")
    kernel.execute("%%sequential c7b --chain c7\n'never runs'")
    cancelled = kernel.execute("%cancel c7a c7b")
    assert cancelled.stdout == "cancelled: c7a, c7b\n"
    kernel.wait_until(
        lambda: value(kernel, "[str(ipytasks.tasks[n].state) for n in ('t7', 'c7a', 'c7b')]")
        == "['timed_out', 'cancelled', 'cancelled']",
        what="timed out and cancelled",
    )
    assert value(kernel, "ipytasks.tasks['c7b'].started") == "None"


def test_magics_and_shell_commands_inside_a_task(kernel: Kernel) -> None:
    """A task body goes through IPython's transformations: %time and !cmd work in it."""
    sub = kernel.execute("%%parallel m8 --thread\n%time x8 = sum(range(10))\n!echo shell-says-hi\nx8")
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="magic task done")
    text = area_text(kernel, sub)
    assert "Wall time" in text and "shell-says-hi" in text
    assert text.endswith("\n45\n")
    assert streams_containing(kernel, "shell-says-hi") == []


@pytest.mark.parametrize(
    ("cell", "culprit"),
    [
        ("%%parallel u9 --bogus\n1", "unrecognized arguments: --bogus"),
        ("%%parallel u9 --after nope9\n1", "no task or group named 'nope9'"),
        ("%%parallel u9 --timeout -1\n1", "--timeout must be a number of seconds greater than 0"),
        ("%%parallel 9bad\n1", "NAME must be a Python identifier, not '9bad'"),
        ("%%parallel u9\nx = (", "SyntaxError on line 1"),
        ("%%parallel u9 --mode thread\nawait asyncio.sleep(0)", "top-level await"),
    ],
)
def test_bad_input_is_a_usage_error_and_creates_no_task(kernel: Kernel, cell: str, culprit: str) -> None:
    """Bad options, unknown targets and syntax errors are reported at once in the submitting
    cell, naming the culprit, and no task is created."""
    ename, evalue = error_of(kernel.execute(cell, allow_errors=True))
    assert ename == "UsageError"
    assert culprit in evalue
    assert value(kernel, "'u9' in ipytasks.tasks") == "False"


def test_busy_name_is_refused(kernel: Kernel) -> None:
    """Submitting a NAME that is still running is refused and the running task is untouched."""
    kernel.execute("gate10 = asyncio.Event()")
    kernel.execute("%%parallel busy10\nawait gate10.wait()\n'first'")
    ename, evalue = error_of(kernel.execute("%%parallel busy10\n'second'", allow_errors=True))
    assert ename == "UsageError" and "'busy10' is running" in evalue
    kernel.execute("gate10.set()\n%wait busy10")
    assert value(kernel, "ipytasks.result('busy10')") == "'first'"


def test_interrupt_ends_only_the_wait(fresh_kernel: Kernel) -> None:
    """The kernel's interrupt during %wait ends the wait, saying so in one line; the task
    keeps running."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport asyncio, ipytasks\nrelease = asyncio.Event()")
    k.execute("%%parallel long11\nawait release.wait()\n'finished'")
    # The print tells the test the cell's code runs (the kernel ignores an interrupt that
    # arrives before that); the wait starts right after it.
    waiting = k.submit("print('waiting now', flush=True)\n%wait long11")
    k.wait_until(lambda: "waiting now" in waiting.stdout, what="the %wait cell to run")
    k.interrupt_cell(waiting)
    assert waiting.status == "error"
    # One line (a UsageError, which the shell prints on stderr), no traceback.
    assert waiting.errors == [] and waiting.reply["ename"] == "UsageError"
    assert strip_ansi(waiting.stderr).strip() == (
        "UsageError: the wait was interrupted; the tasks keep running (%cancel stops them)")
    assert value(k, "ipytasks.tasks['long11'].state") == "'running'"
    k.execute("release.set()\n%wait long11")
    assert value(k, "ipytasks.result('long11')") == "'finished'"
    assert k.is_alive()


def test_unload_restores_everything(fresh_kernel: Kernel) -> None:
    """%unload_ext cancels tasks and restores streams, display publisher, magics and
    transformers; loading again works."""
    k = fresh_kernel
    before = k.execute(
        "import sys\nip = get_ipython()\n"
        "state = lambda: (type(sys.stdout).__name__, type(sys.stderr).__name__, "
        "'publish' in vars(ip.display_pub), len(ip.input_transformers_cleanup), "
        "len(ip.input_transformers_post), 'parallel' in ip.magics_manager.magics['cell'])\n"
        "print(state())"
    ).stdout
    k.execute("%load_ext ipytasks\nimport asyncio")
    k.execute("%%parallel hang12\nawait asyncio.Event().wait()")
    k.execute("%%parallel quick12\n1")
    unloaded = k.execute("%unload_ext ipytasks")
    assert "cancelled hang12" in unloaded.stdout
    after = k.execute("print(state())").stdout
    assert after == before
    k.execute("%load_ext ipytasks\nimport ipytasks")
    assert value(k, "len(ipytasks.tasks)") == "0"
    k.execute("%%parallel again12\n'again'\n")
    k.execute("%wait again12")
    assert value(k, "ipytasks.result('again12')") == "'again'"


def test_shutdown_names_cancelled_tasks(fresh_kernel: Kernel) -> None:
    """A kernel shut down with tasks running cancels them and names them in its log."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport asyncio")
    k.execute("%%parallel left13\nawait asyncio.Event().wait()")
    k.shutdown()
    assert "cancelled 1 unfinished task: left13" in k.log_tail()


def test_quiet_shows_nothing_but_keeps_output(kernel: Kernel) -> None:
    """--quiet puts no status line in the cell; the output is still kept on the task."""
    cell = kernel.execute("%%parallel q14 --quiet\nprint('kept quietly')")
    assert cell.displays == [] and cell.stdout == ""
    kernel.execute("%wait q14")
    assert streams_containing(kernel, "kept quietly") == []
    assert value(kernel, "ipytasks.tasks['q14'].output") == repr("kept quietly\n")


def test_submitting_cell_sends_its_display_once(kernel: Kernel) -> None:
    """A submission sends one message for its display: the display, no update before it
    (the view is registered before it is shown; what it holds then is what show sends)."""
    kernel.execute("gate_once = threading.Event()")
    cell = kernel.execute("%%parallel once17\ngate_once.wait(10)")
    display_id = task_display(cell)
    sent = [m["msg_type"] for m in cell.messages
            if (m["content"].get("transient") or {}).get("display_id") == display_id]
    assert sent == ["display_data"], sent
    kernel.execute("gate_once.set()")
    kernel.execute("%wait once17")
    assert status_text(kernel, cell).startswith("✔ once17 done")


def test_await_wait_in_an_async_cell(kernel: Kernel) -> None:
    """`await ipytasks.wait(...)` works in an ordinary async cell and returns when done."""
    kernel.execute("%%parallel aw15\nawait asyncio.sleep(0.2)\n'awaited'")
    cell = kernel.execute("await ipytasks.wait('aw15')\nprint(ipytasks.result('aw15'))")
    assert cell.stdout == "awaited\n"


def test_self_reference_is_a_cycle(kernel: Kernel) -> None:
    """A task cannot wait for itself: refused at once, naming the cycle."""
    ename, evalue = error_of(kernel.execute("%%parallel cyc16 --after cyc16\n1", allow_errors=True))
    assert ename == "UsageError" and "cycle" in evalue and "cyc16" in evalue


def test_interrupt_of_a_blocking_cell_spares_the_tasks(fresh_kernel: Kernel) -> None:
    """The Stop button during a blocking foreground cell interrupts that cell only: a thread
    task and an async task both go on and finish."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport asyncio, threading, time, ipytasks\ngo = threading.Event()")
    k.execute("%%parallel th17 --thread\ngo.wait(30)\n'thread done'")
    k.execute("%%parallel as17\nwhile not go.is_set():\n    await asyncio.sleep(0.02)\n'async done'")
    blocking = k.submit("print('blocking', flush=True)\ntime.sleep(30)")
    k.wait_until(lambda: "blocking" in blocking.stdout, what="the blocking cell to run")
    k.interrupt_cell(blocking)
    assert error_of(blocking)[0] == "KeyboardInterrupt"
    k.execute("go.set()\n%wait th17 as17")
    assert value(k, "(ipytasks.result('th17'), ipytasks.result('as17'))") == "('thread done', 'async done')"


def test_retry_magic_reruns_a_failed_task(kernel: Kernel) -> None:
    """%retry NAME runs a failed task's cell again with its options, replacing it."""
    kernel.execute("ready18 = False")
    kernel.execute("%%parallel r18 -g g18\nif not ready18:\n    raise RuntimeError('not yet')\n'ok now'")
    kernel.wait_until(lambda: value(kernel, "ipytasks.tasks['r18'].state") == "'failed'")
    kernel.execute("ready18 = True")
    again = kernel.execute("%retry r18")
    assert again.displays, "the retried task shows its status line again"
    kernel.execute("%wait r18")
    assert value(kernel, "(ipytasks.result('r18'), ipytasks.tasks['r18'].group)") == "('ok now', 'g18')"
    ename, evalue = error_of(kernel.execute("%retry r18", allow_errors=True))
    assert ename == "UsageError" and "only a task that did not succeed can be retried" in evalue


def test_retries_and_map_through_the_magic(kernel: Kernel) -> None:
    """--retries records attempts in the task's output; --map shows one line for all items."""
    kernel.execute("tries19 = []")
    kernel.execute(
        "%%parallel f19 --retries 2 --retry-delay 0.01\ntries19.append(1)\n"
        "if len(tries19) < 2:\n    raise OSError('flaky')\nlen(tries19)"
    )
    mapped = kernel.execute("%%parallel m19 --map n in range(4) --limit 2\nawait asyncio.sleep(0.05)\nprint('item', n)\nn * n")
    kernel.execute("%wait f19 m19")
    assert value(kernel, "(ipytasks.result('f19'), ipytasks.tasks['f19'].attempts)") == "(2, 2)"
    assert "attempt 1/3 failed: OSError: flaky; retry 2/3 in" in value(kernel, "ipytasks.tasks['f19'].output")
    assert value(kernel, "ipytasks.result('m19')") == "[0, 1, 4, 9]"
    kernel.wait_until(lambda: "done" in status_text(kernel, mapped), what="map status line done")
    assert status_text(kernel, mapped).startswith("✔ m19 done in ") and "4 items" in status_text(kernel, mapped)
    *printed, result = area_text(kernel, mapped).splitlines()
    assert sorted(printed) == [f"[{i}] item {i}" for i in range(4)] and result == "[0, 1, 4, 9]"


def test_inferred_wait_is_shown_in_the_status_line(kernel: Kernel) -> None:
    """A cell reading what a running task binds waits for it, and its status line says why."""
    kernel.execute("gate20 = asyncio.Event()")
    kernel.execute("%%parallel load20\nawait gate20.wait()\ndf20 = [1, 2, 3]")
    report = kernel.execute("%%parallel report20\nsum(df20)")
    assert "pending: waits for load20: reads df20" in status_text(kernel, report)
    kernel.execute("gate20.set()")
    kernel.wait_until(lambda: "done" in status_text(kernel, report), what="report done")
    assert area_text(kernel, report) == "6\n"


def test_running_a_cell_again_while_its_task_runs_shows_it_again(kernel: Kernel) -> None:
    """The same cell run again shows the running task's output, with a line on what to do;
    another cell that reuses the name is refused."""
    kernel.execute("gate30 = asyncio.Event()")
    code = "%%parallel again30\nprint('again30 printed')\nawait gate30.wait()\n30"
    first = kernel.execute(code)
    kernel.wait_until(lambda: "again30 printed" in area_text(kernel, first), what="first print")
    second = kernel.execute(code)
    assert second.status == "ok" and second.errors == []
    assert task_display(second) == task_display(first)  # the same output, shown again
    notes = [d["text/plain"] for d in second.displays if "ipytasks-status" not in d.get("text/html", "")]
    assert notes == ["again30 still runs, so this is its output. To run the cell again: "
                     "%cancel again30 first, or give the cell another NAME."]
    assert "again30 printed" in area_text(kernel, second)
    other = kernel.execute("%%parallel again30\nprint('another cell')", allow_errors=True)
    assert error_of(other) == (
        "UsageError", "task 'again30' is running: %cancel again30 first, or give this cell another NAME"
    )
    kernel.execute("gate30.set()")
    kernel.wait_until(lambda: "done" in status_text(kernel, second), what="shown again, updated")
    assert status_text(kernel, first) == status_text(kernel, second)
    assert area_text(kernel, second) == "again30 printed\n30\n"


def test_unload_and_shutdown_leave_every_cell_final(fresh_kernel: Kernel) -> None:
    """Tasks still running when the extension is unloaded, or when the kernel shuts down,
    say so in their cells: never a status left at running."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport asyncio, time")
    unloaded = k.execute("%%parallel long31\nawait asyncio.sleep(600)")
    k.wait_until(lambda: "running" in status_text(k, unloaded), what="long31 running")
    k.execute("%unload_ext ipytasks")
    k.wait_until(lambda: "cancelled" in status_text(k, unloaded), what="cancelled on unload")
    assert re.fullmatch(r"⊘ long31 cancelled after [\d.]+s: ipytasks was unloaded",
                        status_text(k, unloaded)), status_text(k, unloaded)
    k.execute("%load_ext ipytasks")
    cells = [k.execute("%%parallel long32\nawait asyncio.sleep(600)"),
             k.execute("%%parallel long33 --thread\nwhile True:\n    time.sleep(0.01)")]
    for cell in cells:
        k.wait_until(lambda cell=cell: "running" in status_text(k, cell), what="running")
    k.shutdown()
    for cell in cells:
        assert status_text(k, cell).endswith("cancelled: the kernel shut down"), status_text(k, cell)


def test_a_widget_a_task_displays_shows_live_in_its_cell(kernel: Kernel) -> None:
    """A widget is an output of its own in the task's cell; the task's display keeps the rest."""
    sub = kernel.execute(
        "%%parallel wid34 --thread\nimport ipywidgets\n"
        "slider34 = ipywidgets.IntSlider(value=34)\ndisplay(slider34)\nprint('after the slider')"
    )
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="widget task done")
    views = [d["application/vnd.jupyter.widget-view+json"]["model_id"]
             for d in sub.displays if "application/vnd.jupyter.widget-view+json" in d]
    assert len(views) == 1
    assert kernel.widget_state(views[0])["value"] == 34
    assert area_text(kernel, sub) == "after the slider\n"
    assert "IntSlider" not in area_html(kernel, sub)
    kernel.execute("slider34.value = 35")  # live: the cell's slider follows the kernel
    kernel.wait_until(lambda: kernel.widget_state(views[0])["value"] == 35, what="slider moved")


def test_a_busy_task_refreshes_its_cell_at_most_five_times_a_second(kernel: Kernel) -> None:
    sub = kernel.execute(
        "%%parallel chatty35 --thread\nimport time\nt0 = time.monotonic()\n"
        "while time.monotonic() - t0 < 2:\n    print('tick')\n    time.sleep(0.001)"
    )
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="chatty task done", timeout=20)
    display_id = task_display(sub)
    updates = [
        m for m in kernel.messages()
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]
    took = float(value(kernel, "ipytasks.tasks['chatty35'].duration"))
    assert 3 <= len(updates) <= 5 * took + 3, (len(updates), took)
    assert area_text(kernel, sub).count("tick") > 100  # what it printed, in one display


def test_a_running_tasks_elapsed_time_moves_while_nothing_else_changes(kernel: Kernel) -> None:
    """A task that neither prints nor changes state still has its status line refreshed: the
    elapsed time moves (the cell's view ticks while the task runs), and stops once it ends."""
    kernel.execute("gate37 = asyncio.Event()")
    sub = kernel.execute("%%parallel quiet37\nawait gate37.wait()")

    def elapsed() -> float:
        found = re.search(r"running (\d+\.\d)s", status_text(kernel, sub))
        return float(found.group(1)) if found else -1.0

    kernel.wait_until(lambda: elapsed() >= 1.0, what="the elapsed time to reach 1.0 s", timeout=20)
    kernel.execute("gate37.set()")
    kernel.wait_until(lambda: "done" in status_text(kernel, sub), what="quiet37 done")


def test_map_expression_is_read_as_python(kernel: Kernel) -> None:
    """--map VAR in EXPR takes any expression: minus signs, strings holding an option, a
    comprehension; the next option after it still counts; a broken EXPR names itself."""
    kernel.execute("k21 = 3")
    kernel.execute("%%parallel neg21 --map n in range(0, -k21, -1) --limit 2\nn * 10")
    kernel.execute("%%parallel str21 --map s in ['a --limit 9', 'b -g x'] -g g21\ns.upper()")
    kernel.execute("%%parallel comp21 --map n in [x for x in range(6) if x in (1, 4)]\nn")
    kernel.execute("%wait neg21 str21 comp21")
    assert value(kernel, "ipytasks.result('neg21')") == "[0, -10, -20]"
    assert value(kernel, "(ipytasks.result('str21'), ipytasks.tasks['str21'].group)") == (
        "(['A --LIMIT 9', 'B -G X'], 'g21')")
    assert value(kernel, "ipytasks.result('comp21')") == "[1, 4]"
    ename, evalue = error_of(kernel.execute("%%parallel bad21 --map n in range(3,\nn",
                                            allow_errors=True))
    assert ename == "UsageError" and "--map n in EXPR: 'range(3,' is not a Python expression" in evalue


def test_unknown_after_names_a_few_and_counts_the_rest(kernel: Kernel) -> None:
    """--after naming a missing task, after a large --map: the error suggests the close name
    and lists a few known ones, not every item of the map."""
    kernel.execute("%%parallel big22 --map n in range(500) --quiet\nn")
    kernel.execute("for k in range(12):\n    ipytasks.submit('1', f'few22_{k}', quiet=True)")
    kernel.execute("%wait big22")
    ename, evalue = error_of(kernel.execute("%%parallel late22 --after bg22\n1", allow_errors=True))
    assert ename == "UsageError"
    assert "no task or group named 'bg22' (did you mean 'big22'?)" in evalue, evalue
    assert "big22[" not in evalue and "few22_11" in evalue, evalue
    assert re.search(r"and [\d,]+ more\)$", evalue), evalue
    assert len(evalue) < 400, evalue


def test_a_failed_wait_shows_the_tasks_tracebacks_not_its_own(kernel: Kernel) -> None:
    """%wait raising TaskFailed shows each failed task's traceback, through the cell's own
    lines, and none of ipytasks' frames."""
    kernel.execute("%%parallel broken36 --thread\nx36 = 1\nint('broken36')")
    waited = kernel.execute("%wait broken36", allow_errors=True)
    (error,) = waited.errors
    shown = "\n".join(strip_ansi(line) for line in error["traceback"])
    assert shown.startswith("TaskFailed: 1 task did not succeed: broken36 (failed)"), shown
    assert "int('broken36')" in shown and "ValueError: invalid literal" in shown
    assert "ipytasks" not in shown and ".py" not in shown, shown


def test_a_failed_wait_names_every_failure_whatever_its_mode(kernel: Kernel) -> None:
    """%wait names every awaited task that did not succeed, in one error: a thread task's
    error, a process task's (raised in its worker), a worker's exception that cannot be
    re-created (RemoteError), a worker that died, a timeout. Each comes with its own
    traceback through its cell's lines and none of ipytasks' frames; a failed process
    task's own cell shows its traceback too."""
    kernel.execute("%%parallel f37a --thread\nint('f37a')")
    process = kernel.execute("%%parallel f37b --process\nx37 = 1\ny37 = 0\nz37 = x37 / y37")
    kernel.execute(
        "%%parallel f37c --process\nclass Odd37(Exception):\n    def __init__(self, a, b):\n"
        "        super().__init__(f'{a}-{b}')\nraise Odd37(1, 2)"
    )
    kernel.execute("%%parallel f37d --process\nimport os\nos._exit(3)")
    kernel.execute("%%parallel f37e --timeout 0.2\nawait asyncio.sleep(30)")
    waited = kernel.execute("%wait f37a f37b f37c f37d f37e", allow_errors=True)
    (error,) = waited.errors
    assert error["ename"] == "TaskFailed"
    shown = "\n".join(strip_ansi(line) for line in error["traceback"])
    assert shown.splitlines()[0] == (
        "TaskFailed: 5 tasks did not succeed: f37a (failed), f37b (failed), f37c (failed), "
        "f37d (failed), f37e (timed_out)"
    ), shown
    for expected in (
        "--- f37a: failed ---", "int('f37a')", "ValueError: invalid literal",
        "--- f37b: failed ---", "z37 = x37 / y37", "ZeroDivisionError: division by zero",
        "--- f37c: failed ---", "raise Odd37(1, 2)", "RemoteError: Odd37: 1-2",
        "--- f37d: failed ---", "BrokenWorker: worker process died (exit code 3)",
        "--- f37e: timed_out ---", "TimeoutError: task 'f37e' timed out after 0.2 s",
    ):
        assert expected in shown, f"{expected!r} not in:\n{shown}"
    assert re.search(r"Cell In\[\d+\], line 3, in <module>\n +z37 = x37 / y37", shown), shown
    assert "/ipytasks/" not in shown, shown  # no frame of ipytasks' own files
    kernel.wait_until(lambda: "ZeroDivisionError" in area_text(kernel, process),
                      what="the process task's traceback in its cell")
    area = area_text(kernel, process)
    assert "z37 = x37 / y37" in area and "/ipytasks/" not in area, area

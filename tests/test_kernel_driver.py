"""The kernel test harness itself (tests/kernel_driver.py), on both kernel environments."""

from __future__ import annotations

import time

import pytest

from kernel_driver import Kernel, python_or_skip, strip_ansi


def test_versions_match_the_environment(kernel: Kernel) -> None:
    """ik7 kernels run ipykernel >= 7 / IPython >= 9; ik6 kernels ipykernel 6.29 / IPython 8."""
    out = kernel.execute(
        "import ipykernel, IPython; print(ipykernel.__version__, IPython.__version__)"
    ).stdout.split()
    ipykernel_major, ipython_major = int(out[0].split(".")[0]), int(out[1].split(".")[0])
    if kernel.env == "ik6":
        assert out[0].startswith("6.29."), out
        assert ipython_major == 8, out
    else:
        assert ipykernel_major >= 7, out
        assert ipython_major >= 9, out


def test_stdout_and_results_are_recorded(kernel: Kernel) -> None:
    """A print lands in Execution.stdout, stderr separately, and the last expression's value in
    Execution.displays; the reply status is "ok"."""
    ex = kernel.execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n6 * 7")
    assert ex.status == "ok"
    assert ex.stdout == "hello\n"
    assert ex.stderr == "oops\n"
    assert {"text/plain": "42"} in [{"text/plain": d.get("text/plain")} for d in ex.displays]
    assert ex.messages[-1]["msg_type"] == "status"
    assert ex.messages[-1]["content"]["execution_state"] == "idle"


def test_errors_are_reported(kernel: Kernel) -> None:
    """An exception gives status "error", its ename/evalue/traceback in Execution.errors and
    error_text (no ANSI codes); without allow_errors execute() raises AssertionError saying so."""
    ex = kernel.execute("def boom():\n    1 / 0\nboom()", allow_errors=True)
    assert ex.status == "error"
    assert [e["ename"] for e in ex.errors] == ["ZeroDivisionError"]
    assert "ZeroDivisionError: division by zero" in ex.error_text
    assert "boom()" in ex.error_text
    assert "\x1b[" not in ex.error_text
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        kernel.execute("1 / 0")
    # the kernel goes on after an error
    assert kernel.execute("print('still here')").stdout == "still here\n"


def test_widget_state_follows_updates(kernel: Kernel) -> None:
    """A displayed widget appears in widget_states() with its model name, and a later change of a
    trait is merged into its state."""
    kernel.execute("import ipywidgets as w\ns = w.IntSlider()\ndisplay(s)")
    ex = kernel.execute("s.value = 5\nprint(s.model_id)")
    model_id = ex.stdout.strip()
    assert model_id in kernel.find_widgets("IntSliderModel")
    kernel.wait_until(
        lambda: kernel.widget_states()[model_id]["state"].get("value") == 5,
        timeout=10,
        what="slider value 5",
    )


def test_comm_messages_reach_widgets(kernel: Kernel) -> None:
    """send_comm_msg() delivers front-end events: a click runs the button's handler, and an
    update from the front end changes the trait; widget_state() reads one widget's state."""
    ex = kernel.execute(
        "import ipywidgets as w\nb = w.Button(description='click me')\n"
        "b.on_click(lambda _: setattr(b, 'description', 'clicked'))\ndisplay(b)\n"
        "t = w.Text()\nprint(b.model_id, t.model_id)"
    )
    button, text = ex.stdout.split()
    kernel.send_comm_msg(button, {"method": "custom", "content": {"event": "click"}})
    kernel.wait_until(
        lambda: kernel.widget_state(button)["description"] == "clicked", timeout=10, what="click"
    )
    update = {"method": "update", "state": {"value": "typed"}, "buffer_paths": []}
    kernel.send_comm_msg(text, update)
    kernel.wait_until(lambda: kernel.execute("print(t.value)").stdout == "typed\n", timeout=10)


def test_output_widget_text_reads_outputs(kernel: Kernel) -> None:
    """Stream entries written to an Output widget's outputs trait are read back by
    output_widget_text(), optionally filtered by stream name."""
    ex = kernel.execute(
        "import ipywidgets as w\no = w.Output()\ndisplay(o)\n"
        "o.append_stdout('one\\n')\no.append_stderr('warn\\n')\no.append_stdout('two\\n')\n"
        "print(o.model_id)"
    )
    model_id = ex.stdout.strip()
    assert model_id in kernel.find_widgets("OutputModel")
    kernel.wait_until(
        lambda: kernel.output_widget_text(model_id) == "one\nwarn\ntwo\n", timeout=10
    )
    assert kernel.output_widget_text(model_id, name="stdout") == "one\ntwo\n"


def test_messages_are_live(kernel: Kernel) -> None:
    """Execution.messages includes messages that arrive after the cell went idle (a print from
    an asyncio task the cell started)."""
    ex = kernel.execute(
        "import asyncio\n"
        "async def _late():\n    await asyncio.sleep(0.3)\n    print('late')\n"
        "_late_task = asyncio.ensure_future(_late())"
    )
    assert "late" not in ex.stdout
    kernel.wait_until(lambda: "late" in ex.stdout, timeout=10, what="late print")


def test_wait_until_times_out_clearly(kernel: Kernel) -> None:
    """wait_until raises AssertionError naming what it waited for, after about `timeout`."""
    start = time.monotonic()
    with pytest.raises(AssertionError, match="never-true condition") as info:
        kernel.wait_until(lambda: False, timeout=0.3, what="never-true condition")
    assert 0.3 <= time.monotonic() - start < 5
    assert "IOPub messages" in str(info.value)


def test_interrupt_death_and_shutdown(fresh_kernel: Kernel) -> None:
    """interrupt_cell() stops a blocking cell with KeyboardInterrupt, pressing again when a
    press did nothing; a kernel that dies makes execute() fail at once saying so; shutdown()
    leaves no process of the kernel's process group and is idempotent."""
    assert fresh_kernel.is_alive()
    running = fresh_kernel.submit("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    fresh_kernel.wait_until(lambda: "sleeping" in running.stdout, timeout=20, what="cell start")
    fresh_kernel.interrupt_cell(running)
    assert running.status == "error"
    assert "KeyboardInterrupt" in strip_ansi(running.error_text)
    # A press the cell does not act on (its handler swallows the first SIGINT) is repeated.
    deaf = fresh_kernel.submit(
        "import signal, time\nheard = []\n"
        "signal.signal(signal.SIGINT, lambda *a: heard.append(1) if not heard "
        "else signal.default_int_handler(*a))\n"
        "print('deaf', flush=True)\ntime.sleep(60)"
    )
    fresh_kernel.wait_until(lambda: "deaf" in deaf.stdout, timeout=20, what="cell start")
    assert fresh_kernel.interrupt_cell(deaf, again_after=1) == 2
    assert "KeyboardInterrupt" in strip_ansi(deaf.error_text)

    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"kernel died \(exit code 3\)"):
        fresh_kernel.execute("import os\nos._exit(3)", timeout=30)
    assert time.monotonic() - start < 10
    assert not fresh_kernel.is_alive()

    fresh_kernel.shutdown()
    assert fresh_kernel.processes_left() == []
    fresh_kernel.shutdown()


def test_missing_ik6_python_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $IPYTASKS_IK6_PYTHON, ik6 tests are skipped — but fail when CI=true."""
    monkeypatch.delenv("IPYTASKS_IK6_PYTHON", raising=False)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="IPYTASKS_IK6_PYTHON"):
        python_or_skip("ik6")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped"):
        python_or_skip("ik6")
    monkeypatch.setenv("IPYTASKS_IK6_PYTHON", "/nonexistent/python")
    with pytest.raises(pytest.fail.Exception, match="not an executable"):
        python_or_skip("ik6")

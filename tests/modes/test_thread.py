"""Thread mode (DESIGN §5.2): handing outcomes back to the loop, and the interpreter
it shares with the kernel.

Cancelling and timing out thread bodies is tested with the scheduler
(``tests/test_scheduler.py``); here, how outcomes come back, and what running thread
bodies must not do to the rest of the kernel (checked in a fresh interpreter, as what
it guards against is state of the interpreter itself: a subprocess, and a real kernel).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from ipytasks.modes._thread import _Handback

AFTER_THREAD_TASKS_UNDER_A_PROFILER = textwrap.dedent(
    """
    import asyncio, cProfile, threading
    from IPython.core.interactiveshell import InteractiveShell
    from ipytasks.scheduler import Scheduler
    from ipytasks.records import TaskOptions, TaskRegistry

    async def main():
        shell = InteractiveShell.instance()
        started = shell.user_ns["started"] = threading.Event()
        # One pool thread to begin with: a body submitted after the cancelled one runs
        # on its thread, so once it has run, that thread has taken the stop back.
        sched = Scheduler(shell, TaskRegistry(), loop=asyncio.get_running_loop(),
                          mode_settings={"thread": {"max_threads": 1}})
        opts = TaskOptions(mode="thread", quiet=True)
        await sched.wait([sched.submit("x = 1", "first", opts)])
        spin = sched.submit("started.set()\\nwhile True:\\n    pass", "spin", opts)
        assert await asyncio.to_thread(started.wait, 10)  # stopped while running
        sched.cancel([spin])
        await sched.wait([spin])
        assert spin.state == "cancelled", spin.state
        await sched.wait([sched.submit("z = 1", "next", opts)])
        sched.installed_mode("thread").resize(8)  # the bodies below start new threads
        profile = cProfile.Profile()  # what %prun does
        profile.enable()
        records = [sched.submit(f"y{i} = {i}", f"t{i}", opts) for i in range(8)]
        await sched.wait(records)
        profile.disable()
        sched.close()
        print("ok")

    asyncio.run(main())
    """
)


def test_thread_tasks_leave_no_pending_stop_behind() -> None:
    """Finished and cancelled thread tasks leave the interpreter as they found it: a
    stop is taken back only when one was sent, by receiving it rather than withdrawing
    it. (Withdrawing left CPython's "asynchronous exception pending" flag raised, which
    slowed every thread, and made starting pool threads under a profiler spin forever.)
    """
    done = subprocess.run(
        [sys.executable, "-c", AFTER_THREAD_TASKS_UNDER_A_PROFILER],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_outcomes_that_arrive_together_wake_the_loop_once(anyio_backend: str) -> None:
    """50 bodies ending while the loop is busy cost it one wake-up, not 50; a future
    cancelled meanwhile is left alone."""
    loop = asyncio.get_running_loop()
    handback = _Handback(loop)
    futures = [loop.create_future() for _ in range(50)]
    futures[7].cancel()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        worker = threading.Thread(
            target=lambda: [handback.put(f, None, (True, i)) for i, f in enumerate(futures)]
        )
        worker.start()
        worker.join()  # the loop is busy (here) while every outcome arrives
        assert wakeups == 1
        delivered = asyncio.gather(*(f for i, f in enumerate(futures) if i != 7))
        assert await asyncio.wait_for(delivered, 5) == [(True, i) for i in range(50) if i != 7]
        assert futures[7].cancelled()
        handback.put(loop.create_future(), None, (True, None))  # the next one wakes it again
        assert wakeups == 2
    finally:
        del loop.call_soon_threadsafe


def test_a_profiled_kernel_still_starts_thread_tasks_after_a_cancel(fresh_kernel: Any) -> None:
    """In a real kernel: a running thread task is cancelled, then the kernel's thread is
    profiled (``%prun`` or ``cProfile`` by hand) while new thread tasks start. They run and
    the kernel answers; before, the stop's withdrawal left the interpreter so that starting
    a pool thread under the profiler spun forever."""
    k = fresh_kernel
    k.execute("%load_ext ipytasks\nimport ipytasks")
    k.execute("%%parallel spin --thread\nimport time\nwhile True:\n    time.sleep(0.01)")
    k.wait_until(lambda: "running" in k.execute("print(ipytasks.tasks['spin'].state)",
                                                 timeout=10).stdout,
                 what="the spinning thread task to run")
    k.execute("%cancel spin")
    k.wait_until(lambda: "cancelled" in k.execute("print(ipytasks.tasks['spin'].state)",
                                                   timeout=10).stdout,
                 what="the spinning thread task to end cancelled")
    k.execute("import cProfile\n_profile = cProfile.Profile()\n_profile.enable()")
    for i in range(6):
        k.execute(f"%%parallel t{i} --thread --quiet\ny{i} = {i}")
    k.execute("%wait", timeout=20)
    out = k.execute(
        "_profile.disable()\nprint(sorted(ipytasks.tasks[f't{i}'].state for i in range(6)))",
        timeout=20,
    )
    assert out.stdout.strip() == str(["done"] * 6)


def test_a_quiet_thread_task_runs_before_its_cell_goes_on(kernel: Any) -> None:
    """In a real kernel: a quiet thread task that waits for nothing is in its thread as
    the call that submits it returns (the cell, blocking here, never lets the loop turn);
    its value and its end are there when the cell then awaits it."""
    out = kernel.execute(
        "import threading, ipytasks\n"
        "began51 = threading.Event()\n"
        "ipytasks.submit('began51.set()\\n51 * 2', 'early51', quiet=True, mode='thread')\n"
        "print(began51.wait(5))\n"
        "await ipytasks.wait('early51')\n"
        "print(ipytasks.tasks['early51'].state, ipytasks.tasks['early51'].result)",
        timeout=30,
    )
    assert out.stdout.split() == ["True", "done", "102"]

"""Thread mode (DESIGN §5.2) and the interpreter it shares with the kernel.

Cancelling and timing out thread bodies is tested with the scheduler
(``tests/test_scheduler.py``); here, what running thread bodies must not do to
the rest of the kernel. Each check runs in a fresh interpreter (a subprocess), as
what it guards against is state of the interpreter itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

AFTER_THREAD_TASKS_UNDER_A_PROFILER = textwrap.dedent(
    """
    import asyncio, cProfile
    from IPython.core.interactiveshell import InteractiveShell
    from ipytasks.scheduler import Scheduler
    from ipytasks.tasks import TaskOptions, TaskRegistry

    async def main():
        sched = Scheduler(InteractiveShell.instance(), TaskRegistry(),
                          loop=asyncio.get_running_loop())
        opts = TaskOptions(mode="thread", quiet=True)
        await sched.wait([sched.submit("x = 1", "first", opts)])
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
    """A finished thread task leaves the interpreter as it found it: once a body ended,
    its thread withdraws a stop only when one was asked for. (Withdrawing one every
    time left CPython's "asynchronous exception pending" flag raised, which slowed
    every thread, and made starting more pool threads under a profiler spin forever.)
    """
    done = subprocess.run(
        [sys.executable, "-c", AFTER_THREAD_TASKS_UNDER_A_PROFILER],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

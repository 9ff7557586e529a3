"""``%config TaskMagics.…`` after ``%load_ext``, in a real kernel: the pools follow it."""

from __future__ import annotations

import pytest

from kernel_driver import Kernel

#: Seconds the lone body waits for a partner that cannot start (one thread): it then fails.
ALONE_S = 1.0


def test_max_threads_changed_after_loading_takes_effect(kernel: Kernel) -> None:
    """With max_threads = 1 two bodies that must meet cannot (the first gives up); raised
    to 2, two more meet; 0 is refused with a message naming the setting."""
    kernel.execute("import threading, ipytasks\n%config TaskMagics.max_threads = 1")
    # Made now, with the setting of the moment (the pool may exist from before: same test).
    kernel.execute(f"pair1 = threading.Barrier(2, timeout={ALONE_S})")
    kernel.execute("%%parallel first1 --thread\npair1.wait()")
    kernel.execute("%%parallel second1 --thread\npair1.wait()")
    out = kernel.execute("%wait first1 second1", allow_errors=True)
    assert "first1 (failed)" in out.error_text and "BrokenBarrierError" in out.error_text, (
        out.error_text)
    kernel.execute("%config TaskMagics.max_threads = 2\npair2 = threading.Barrier(2, timeout=30)")
    kernel.execute("%%parallel first2 --thread\npair2.wait()")
    kernel.execute("%%parallel second2 --thread\npair2.wait()")
    kernel.execute("%wait first2 second2")
    bad = kernel.execute("%config TaskMagics.max_threads = 0")
    assert "TaskMagics.max_threads must be at least 1, not 0" in bad.stderr + bad.stdout
    assert kernel.execute(
        "print(get_ipython().magics_manager.registry['TaskMagics'].max_threads)"
    ).stdout.strip() == "2"


@pytest.mark.timeout(120)
def test_max_workers_changed_after_loading_resizes_the_pool(kernel: Kernel) -> None:
    """Lowered to 1 once the local worker pool runs, its other worker stops; raised again,
    the pool may hold 2 again."""
    kernel.execute("import ipytasks, os\n%config TaskMagics.max_workers = 2")
    kernel.execute("%%parallel warm3 --process\nos.getpid()")
    kernel.execute("%wait warm3")
    mode = "ipytasks.api._current().scheduler.installed_mode('process')"
    kernel.wait_until(lambda: kernel.execute(f"print(len({mode}.worker_pids))").stdout.strip()
                      == "2", what="the pool to hold 2 workers")
    kernel.execute("%config TaskMagics.max_workers = 1")
    kernel.wait_until(lambda: kernel.execute(f"print(len({mode}.worker_pids))").stdout.strip()
                      == "1", what="the pool to keep 1 worker")
    kernel.execute("%config TaskMagics.max_workers = 2")
    assert kernel.execute(f"print({mode}.max_workers, {mode}._pool.size)").stdout.split() == [
        "2", "2"]

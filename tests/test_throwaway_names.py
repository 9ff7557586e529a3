"""Throwaway names in a real kernel (DESIGN §6): cells that share only a loop variable,
an ``except … as`` name or ``_`` run together, each with its own, and say nothing.

The two loop cells meet at a barrier in every turn of their loops, so they pass only
when they run at once (in sequence the first would wait alone and break the barrier),
and each turn records the ``i`` its cell sees right after the other cell set its own.
"""

from __future__ import annotations

from kernel_driver import Kernel

#: Seconds a cell waits at the barrier: far more than the other cell needs to get there.
MEET_S = 20


def test_loops_over_the_same_name_run_together_each_with_its_own(kernel: Kernel) -> None:
    """Two thread cells looping over ``i`` run at once, see only their own ``i``, do not
    warn; a later cell that reads ``i`` waits for both (held until ``done``); ``i`` ends
    bound."""
    kernel.execute(
        "import threading, warnings\n"
        f"meet = threading.Barrier(2, timeout={MEET_S})\n"
        "done = threading.Event()\n"
        "seen_a, seen_b = [], []\n"
    )
    first = kernel.execute(
        "%%parallel loop_a --thread\n"
        "for i in range(3):\n"
        "    meet.wait()\n"
        "    meet.wait()  # the other cell has set its i meanwhile\n"
        "    seen_a.append(i)\n"
        "done.wait(30)\n"
    )
    second = kernel.execute(
        "%%parallel loop_b --thread\n"
        "for i in range(10, 13):\n"
        "    meet.wait()\n"
        "    meet.wait()\n"
        "    seen_b.append(i)\n"
        "done.wait(30)\n"
    )
    reader = kernel.execute("%%parallel uses_i\nlast_i = i")
    for execution in (first, second, reader):
        assert "Warning" not in execution.stderr and "rebinds" not in execution.stderr, (
            execution.stderr)
    out = kernel.execute(
        "import ipytasks\n"
        "print(ipytasks.tasks['loop_b'].waits_for, sorted(ipytasks.tasks['uses_i'].waits_for),"
        " ipytasks.tasks['uses_i'].reasons['loop_b'])\n"
        "done.set()\n"
        "%wait\n"
        "print(seen_a, seen_b, i in (2, 12), last_i == i)"
    ).stdout.splitlines()
    assert out == ["() ['loop_a', 'loop_b'] reads i", "[0, 1, 2] [10, 11, 12] True True"]


def test_process_cell_and_thread_cell_sharing_a_loop_variable(kernel: Kernel) -> None:
    """A ``--process`` cell does not wait for a thread cell because both loop over ``n``,
    nor for one that only catches into ``err`` and binds ``_``."""
    kernel.execute(
        "import threading\n"
        "hold = threading.Event()\n"
    )
    kernel.execute(
        "%%parallel holds_n --thread\n"
        "for n in range(2):\n"
        "    hold.wait(30)\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError as err:\n"
        "    _ = str(err)\n"
    )
    kernel.execute(
        "%%parallel squares --process\n"
        "total = 0\n"
        "for n in range(4):\n"
        "    total += n * n\n"
        "try:\n"
        "    int('x')\n"
        "except ValueError as err:\n"
        "    _ = 'caught'\n"
    )
    out = kernel.execute(
        "import ipytasks\n"
        "print(ipytasks.tasks['squares'].waits_for)\n"
        "await ipytasks.wait('squares')\n"
        "print(ipytasks.tasks['holds_n'].state, total)\n"
        "hold.set()\n"
        "%wait holds_n"
    ).stdout.splitlines()
    assert out == ["()", "running 14"]


def test_ordinary_names_keep_their_order(kernel: Kernel) -> None:
    """A loop variable that another cell binds as an ordinary name still orders the two,
    and so does a shared counter's read-modify-write."""
    kernel.execute("import threading\ngate = threading.Event()\ncounter = 0")
    kernel.execute("%%parallel sets_k --thread\ngate.wait(30)\nk = 5")
    kernel.execute("%%parallel loops_k --thread\nfor k in range(3):\n    pass")
    kernel.execute("%%parallel bump1 --thread\ngate.wait(30)\ncounter += 1")
    kernel.execute("%%parallel bump2 --thread\ncounter += 1")
    out = kernel.execute(
        "import ipytasks\n"
        "print(ipytasks.tasks['loops_k'].reasons, ipytasks.tasks['bump2'].reasons)\n"
        "gate.set()\n"
        "%wait\n"
        "print(k, counter)"
    ).stdout.splitlines()
    assert out == ["{'sets_k': 'rebinds k'} {'bump1': 'reads counter, rebinds counter'}", "2 2"]

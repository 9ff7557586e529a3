"""What a task's output costs, measured through a real ipykernel, against a plain cell.

    python bench/bench_output.py [--quick]

- iopub traffic: a thread task printing 10 MB over 20 s (``--quick``: 1 MB over 2 s) while its
  cell's display is refreshed live, as bytes sent on iopub per byte printed; the same print
  loop in a plain cell is the baseline. The cell shows a bounded window of a long stream, so
  refreshing it never re-sends the whole output.
- print cost: 100,000 ``print`` calls (``--quick``: 20,000) in a thread task against the same
  loop in a plain cell, in the same kernel, interleaved, five times each (median, spread).
- progress cost: a ``tqdm.auto`` loop of 100,000 iterations (``--quick``: 20,000) in a thread
  task, whose bar is told to the task's status line, against the same loop in a plain cell,
  whose bar is tqdm's own widget; interleaved, five times each (median, spread).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any

from jupyter_client.manager import start_new_kernel

PRINT_LOOP = """\
import time as _t
_line = "x" * 99 + "\\n"
_block = _line * {lines_per_step}
_t0 = _t.monotonic()
for _i in range({steps}):
    print(_block, end="")
    _t.sleep(max(0.0, _t0 + (_i + 1) * {step} - _t.monotonic()))
"""

PRINT_COST = """\
import statistics, time, ipytasks
N = {n}
def _plain():
    t0 = time.perf_counter()
    for i in range(N):
        print(i)
    return time.perf_counter() - t0
_plain_s, _task_s = [], []
for _round in range(5):
    _plain_s.append(_plain())
    t0 = time.perf_counter()
    ipytasks.submit("for i in range(N):\\n    print(i)", f"cost{{_round}}", mode="thread")
    await ipytasks.wait(f"cost{{_round}}")
    _task_s.append(time.perf_counter() - t0)
print("RESULT", statistics.median(_plain_s), min(_plain_s), max(_plain_s),
      statistics.median(_task_s), min(_task_s), max(_task_s))
"""

TQDM_COST = """\
import statistics, time, ipytasks
from tqdm.auto import tqdm
N = {n}
def _plain():
    t0 = time.perf_counter()
    for i in tqdm(range(N)):
        pass
    return time.perf_counter() - t0
_plain_s, _task_s = [], []
for _round in range(5):
    _plain_s.append(_plain())
    t0 = time.perf_counter()
    ipytasks.submit("for i in tqdm(range(N)):\\n    pass", f"bar{{_round}}", mode="thread")
    await ipytasks.wait(f"bar{{_round}}")
    _task_s.append(time.perf_counter() - t0)
print("RESULT", statistics.median(_plain_s), min(_plain_s), max(_plain_s),
      statistics.median(_task_s), min(_task_s), max(_task_s))
"""


class _Iopub:
    """Counts the content bytes of every iopub message, on a thread of its own."""

    def __init__(self, kc: Any) -> None:
        self._kc = kc
        self.bytes = 0
        self.idle: queue.Queue[str] = queue.Queue()
        self.stdout: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            self.bytes += len(json.dumps(msg["content"]))
            parent = msg.get("parent_header", {}).get("msg_id", "")
            if msg["msg_type"] == "stream":
                self.stdout.setdefault(parent, []).append(msg["content"].get("text", ""))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                self.idle.put(parent)

    def run(self, code: str, timeout: float = 600) -> str:
        """Execute ``code``, wait for its idle; return its stdout."""
        msg_id = self._kc.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            if self.idle.get(timeout=max(0.1, deadline - time.monotonic())) == msg_id:
                break
        reply = self._kc.get_shell_msg(timeout=timeout)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {reply['content']}")
        time.sleep(0.5)  # let the last iopub messages be counted
        return "".join(self.stdout.get(msg_id, ()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(quick: bool = False) -> dict[str, Any]:
    megabytes, seconds = (1, 2.0) if quick else (10, 20.0)
    steps = int(seconds * 10)
    lines_per_step = megabytes * 1_000_000 // 100 // steps
    loop = PRINT_LOOP.format(steps=steps, lines_per_step=lines_per_step, step=seconds / steps)
    printed = steps * lines_per_step * 100
    km, kc = start_new_kernel()
    iopub = _Iopub(kc)
    try:
        iopub.run("%load_ext ipytasks")
        before = iopub.bytes
        iopub.run(loop)
        plain_bytes = iopub.bytes - before
        before = iopub.bytes
        iopub.run("%%parallel flood --thread\n" + loop)
        iopub.run("%wait flood")
        task_bytes = iopub.bytes - before
        result = iopub.run(PRINT_COST.format(n=20_000 if quick else 100_000))
        numbers = [float(x) for x in result.split("RESULT", 1)[1].split()]
        result = iopub.run(TQDM_COST.format(n=20_000 if quick else 100_000))
        bars = [float(x) for x in result.split("RESULT", 1)[1].split()]
    finally:
        iopub.close()
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return {
        "printed_bytes": printed,
        "seconds": seconds,
        "task_iopub_per_byte": task_bytes / printed,
        "plain_iopub_per_byte": plain_bytes / printed,
        "plain_print_s": numbers[0:3],
        "task_print_s": numbers[3:6],
        "print_calls": 20_000 if quick else 100_000,
        "repeats": 5,
        "plain_tqdm_s": bars[0:3],
        "task_tqdm_s": bars[3:6],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

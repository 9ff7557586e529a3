"""What ``--cache`` costs and saves, in an ``InteractiveShell`` (a loop thread of ipytasks').

- fingerprinting a 200 MiB NumPy array, against XXH3 over its buffer alone (the floor);
- a cache hit for a task that binds a 200 MiB array (signature checked over the whole
  entry, array mapped from the file), against the run it replaces;
- the overhead of ``--cache`` on a trivial task: a hit, and a miss that stores, each
  against the same task without ``--cache``, measured interleaved (median, spread); and
  for the miss, the time until its entry is on disk (written after the task ended).

Prints a table (``measure / ipytasks / baseline / ratio / goal``) that ``run.py`` reads.

    python bench/bench_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MIB = 1024 * 1024


def median_spread(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 4 else [min(samples), 0, max(samples)]
    return statistics.median(samples), q[2] - q[0]


def bench_fingerprint(repeat: int) -> tuple[float, float]:
    import numpy as np
    import xxhash

    from ipytasks.cache.fingerprint import fingerprint

    array = np.random.default_rng(0).random(200 * MIB // 8)
    ours, floor = [], []
    for _ in range(repeat):  # interleaved
        t0 = time.perf_counter()
        fingerprint(array)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        xxhash.xxh3_128(memoryview(array).cast("B")).digest()
        floor.append(time.perf_counter() - t0)
    size = array.nbytes / 1e9
    return size / statistics.median(ours), size / statistics.median(floor)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    repeat = 5 if args.quick else 21
    trivial = 50 if args.quick else 300

    os.environ["JUPYTER_DATA_DIR"] = tempfile.mkdtemp(prefix="ipytasks-bench-secret-")
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "ipytasks")
    import ipytasks
    from ipytasks import api

    folder = tempfile.mkdtemp(prefix="ipytasks-bench-cache-")
    ip.run_line_magic("tasks_cache", folder)

    def round_trip(code: str, name: str, **options: object) -> float:
        t0 = time.perf_counter()
        api.submit(code, name, quiet=True, **options)
        api.wait_blocking(name)
        took = time.perf_counter() - t0
        assert ipytasks.tasks[name].state in ("done", "cached"), ipytasks.tasks[name]
        return took

    rows = []
    gbps, floor = bench_fingerprint(repeat)
    rows.append(("fingerprint a 200 MiB array", f"{gbps:.1f} GB/s", f"XXH3 alone {floor:.1f} GB/s",
                 f"{gbps / floor:.2f}", ">= 2 GB/s"))

    # A task that binds a 200 MiB array: the run, then hits (each a whole verified load).
    ip.user_ns["size"] = 200 * MIB // 8
    code = "import numpy as np\nbig = np.random.default_rng(1).random(size)\nbig[:3].sum();"
    run = round_trip(code, "big", cache=True)
    hits = []
    for _ in range(repeat):
        ip.user_ns.pop("big", None)
        hits.append(round_trip(code, "big", cache=True))
        assert ipytasks.tasks["big"].state == "cached"
    hit, spread = median_spread(hits)
    rows.append(("cache hit, task binding a 200 MiB array (median)", f"{hit:.3f} s (±{spread / 2:.3f})",
                 f"the run {run:.3f} s", f"{hit / run:.2f}", "< 0.3 s"))

    # Trivial tasks, interleaved: without --cache, a hit, a miss that stores. A miss's
    # entry is written after the task ended: the sample ends with the task, and the
    # write is waited for untimed, so it does not land in the next sample; how long
    # until the entry is on disk is its own row.
    cache = api._current().scheduler.result_cache()
    plain, hit_t, miss_t, stored_t = [], [], [], []
    for i in range(trivial):
        plain.append(round_trip("x = 1", "plain"))
        hit_t.append(round_trip("x = 1", "hit", cache=True))
        t0 = time.perf_counter()
        miss_t.append(round_trip(f"x = {i}", "miss", cache=True))
        cache.flush(60)
        stored_t.append(time.perf_counter() - t0)
    base, base_spread = median_spread(plain)
    for label, samples in (("hit", hit_t), ("miss that stores", miss_t)):
        med, spread = median_spread(samples)
        rows.append((f"--cache on a trivial task, {label}: added (median)",
                     f"{(med - base) * 1e3:.2f} ms", f"without {base * 1e3:.2f} ms (±{base_spread * 5e2:.2f})",
                     f"{med / base:.2f}x", "< 1 ms"))
    med, spread = median_spread(stored_t)
    rows.append(("--cache on a trivial task, miss: until its entry is on disk (median)",
                 f"{(med - base) * 1e3:.2f} ms", f"without {base * 1e3:.2f} ms",
                 f"{med / base:.2f}x", "—"))

    ip.run_line_magic("unload_ext", "ipytasks")
    widths = [max(len(r[c]) for r in rows + [("measure", "ipytasks", "baseline", "ratio", "goal")])
              for c in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(("measure", "ipytasks", "baseline", "ratio", "goal"), widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time ``ipytasks.namespace.analysis.analyze`` on a realistic 200-line cell.

Prints the median time of ``analyze`` on the parsed cell and, measured in the same
run, the median time of ``ast.parse`` of the same source and the ratio of the two.
The budget is well under 5 ms for a 200-line cell.

    python bench/bench_analysis.py [--quick] [--lines N]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time

from ipytasks.namespace.analysis import analyze

BUDGET_MS = 5.0

_BLOCKS = [
    # assignments, calls, attribute and subscript access
    """\
df{i} = pd.read_csv(path / f"part{i}.csv", parse_dates=["when"])
df{i}["total"] = df{i}["price"] * df{i}["qty"] + tax_rate * df{i}["price"]
summary{i} = df{i}.groupby("region").agg({{"total": "sum", "qty": "mean"}})
""",
    # loop with augmented assignment and a conditional
    """\
acc{i} = 0
for row in rows{i}:
    if row.ok and row.value > threshold:
        acc{i} += row.value * weights[row.kind]
    else:
        skipped.append(row)
""",
    # comprehensions, a generator and a walrus
    """\
clean{i} = [normalize(x, scale=s) for x in raw{i} if x is not None]
index{i} = {{k: v for k, v in zip(keys, clean{i}) if (n := len(k)) > min_len}}
total{i} = sum(v ** 2 for v in index{i}.values())
""",
    # a function with defaults, a nested comprehension and a free name
    """\
def transform{i}(frame, factor=default_factor, *, cols=None):
    cols = cols or list(frame.columns)
    out = {{c: [v * factor + offset for v in frame[c]] for c in cols}}
    return pd.DataFrame(out)
""",
    # try/except, with, lambda, results dict store
    """\
try:
    with open(out_dir / "r{i}.json") as fh:
        loaded{i} = json.load(fh)
except FileNotFoundError as err:
    log.warning("missing %s", err)
    loaded{i} = {{}}
key{i} = sorted(loaded{i}, key=lambda k: (priority.get(k, 0), k))
results["r{i}"] = transform{i}(df{i}).head(limit)
""",
    # a small class
    """\
class Model{i}(Base):
    alpha = 0.5
    def fit(self, X, y):
        self.coef_ = np.linalg.lstsq(X, y, rcond=None)[0] * self.alpha
        return self
model{i} = Model{i}().fit(X_train, y_train)
""",
]


def make_cell(lines: int = 200) -> str:
    parts: list[str] = ["import json", "import numpy as np", "import pandas as pd"]
    i = 0
    while sum(p.count("\n") + 1 for p in parts) < lines:
        parts.append(_BLOCKS[i % len(_BLOCKS)].format(i=i).rstrip("\n"))
        i += 1
    return "\n".join(parts) + "\n"


def median_time(fn, arg, repeat: int, inner: int) -> float:
    """Median over ``repeat`` samples of the mean time of ``inner`` calls, in seconds."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn(arg)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--lines", type=int, default=200, help="cell size (default 200)")
    args = ap.parse_args(argv)
    repeat, inner = (15, 5) if args.quick else (101, 20)

    source = make_cell(args.lines)
    n_lines = source.count("\n")
    tree = ast.parse(source)
    n_nodes = sum(1 for _ in ast.walk(tree))
    for _ in range(3):  # warm up
        analyze(tree)
        ast.parse(source)

    t_analyze = median_time(analyze, tree, repeat, inner)
    t_parse = median_time(ast.parse, source, repeat, inner)
    names = analyze(tree)

    print(f"cell: {n_lines} lines, {n_nodes} AST nodes; "
          f"{len(names.reads)} reads, {len(names.binds)} binds, {len(names.mutates)} mutates")
    print(f"analyze:   {t_analyze * 1e3:.3f} ms (median of {repeat} x {inner} runs)")
    print(f"ast.parse: {t_parse * 1e3:.3f} ms")
    print(f"ratio analyze / ast.parse: {t_analyze / t_parse:.2f}")
    ok = t_analyze * 1e3 < BUDGET_MS
    print(f"budget {BUDGET_MS:.0f} ms: {'ok' if ok else 'EXCEEDED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

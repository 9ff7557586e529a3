"""Run the tour notebook headless and print its task table.

    python notebooks/run_tour.py [NOTEBOOK] [--output PATH]

Executes every cell with nbclient on a kernel of the Python running this script (120 s per cell,
widget state stored; the kernel talks over local IPC sockets, not TCP), writes the executed
notebook to ``test-output/tour.ipynb`` and prints the standard output of the last cell (the tour
ends with ``%tasks``, which prints the task table).
A failing cell exits with status 1 and its error; the notebook as far as it ran is still written.

Importable: ``run_tour(path) -> nbformat.NotebookNode`` (raises nbclient's CellExecutionError).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_NOTEBOOK = HERE / "tour.ipynb"
DEFAULT_OUTPUT = HERE.parent / "test-output" / "tour.ipynb"
CELL_TIMEOUT = 120


def _write_kernelspec(folder: Path, python: str) -> str:
    """A kernelspec for ``python`` in ``folder``; returns its name."""
    name = "ipytasks-tour"
    spec_dir = folder / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ipytasks tour",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return name


def run_tour(
    path: str | Path = DEFAULT_NOTEBOOK,
    *,
    python: str | None = None,
    timeout: int = CELL_TIMEOUT,
    cwd: str | Path | None = None,
    executed: list | None = None,
    store_widget_state: bool = True,
):  # -> nbformat.NotebookNode
    """Execute the notebook at ``path`` and return it with its outputs.

    The kernel runs ``python`` (default: this interpreter) with ``cwd`` (default: the notebook's
    folder) as working directory. On a failing cell nbclient's ``CellExecutionError`` is raised;
    pass a list as ``executed`` to receive the partly executed notebook in that case too.
    ``store_widget_state`` is nbclient's: False saves what JupyterLab saves by default.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from traitlets import default

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    if executed is not None:
        executed.append(nb)
    with tempfile.TemporaryDirectory(prefix="ipytasks-tour-") as tmp:
        name = _write_kernelspec(Path(tmp), python or sys.executable)

        class TourKernelManager(AsyncKernelManager):
            """Finds kernelspecs in our temporary folder only; talks to the kernel over IPC
            (Unix sockets): local only, and ipykernel warns about plain TCP."""

            @default("kernel_spec_manager")
            def _private_kernelspecs(self) -> KernelSpecManager:
                return KernelSpecManager(kernel_dirs=[tmp])

            @default("transport")
            def _local_sockets(self) -> str:
                return "ipc"

            @default("ip")
            def _socket_prefix(self) -> str:
                return str(Path(tmp) / "kernel")

        client = NotebookClient(
            nb,
            kernel_name=name,
            kernel_manager_class=TourKernelManager,
            timeout=timeout,
            store_widget_state=store_widget_state,
            resources={"metadata": {"path": str(cwd or path.parent)}},
        )
        client.execute()
    return nb


def last_cell_stdout(nb) -> str:
    """What the last code cell printed (its stdout), else the text/plain of its results."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    if not cells:
        return ""
    outputs = cells[-1].get("outputs", [])
    text = "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for o in outputs
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    if text:
        return text
    plain = [
        o["data"]["text/plain"]
        for o in outputs
        if o.get("output_type") in ("execute_result", "display_data")
        and "text/plain" in o.get("data", {})
    ]
    return "\n".join("".join(p) if isinstance(p, list) else p for p in plain)


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", default=str(DEFAULT_NOTEBOOK))
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    executed: list = []
    try:
        nb = run_tour(args.notebook, timeout=args.timeout, executed=executed)
    except CellExecutionError as exc:
        if executed:
            nbformat.write(executed[0], output)
        message = str(exc) if sys.stderr.isatty() else re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        print(f"{args.notebook}: a cell failed (partial run in {output})", file=sys.stderr)
        print(message, file=sys.stderr)
        return 1
    nbformat.write(nb, output)
    sys.stdout.write(last_cell_stdout(nb))
    print(f"\n(executed notebook: {output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

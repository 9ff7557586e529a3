"""A cell's text turned into the text IPython would run: ``cells.transform_cell``.

It leaves IPython's token pass out where that pass cannot change the cell; held here
against the shell's own ``transform_cell`` on cells with and without IPython syntax, in
this process and in a kernel of each IPython the tests run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ipytasks import cells
from kernel_driver import Kernel, strip_ansi

TOUR = Path(__file__).parents[1] / "notebooks" / "tour.ipynb"

#: Cells with IPython's special syntax, cells without, and cells that only look like it.
CORPUS = [
    "x = 1",
    "x = 1\n",
    "rows = [r for r in range(10)]\nlen(rows)",
    "def f(a):\n    return a * 2\nf(3)",
    "import math\nmath.sqrt(2);",
    "\n\nx = 2\n",  # leading blank lines
    "    x = 3\n    y = 4\n",  # indented as a whole
    "if True:\n    x = 1\nelse:\n    x = 2\n",
    "x = (1,\n     2)\n",
    "x = (1\n     , 2)\n",  # a line that begins with an escape character, inside brackets
    "s = 'a % b'\n",
    "s = '%d items' % 3",
    "y = 10 % 3",
    "flag = x != 1",
    "w = 'why?'",
    "x = 1 \\\n    + 2\n",
    "%time x = 1",
    "%%time\nx = 1\n",
    "t = %timeit -o -n1 -r1 pass",
    "!echo hi",
    "files = !ls",
    "x?",
    "?x",
    "x??",
    ",print a b",
    ";print a b",
    "/print 1",
    ">>> x = 1\n>>> y = 2\n",
    "In [1]: x = 1\n   ...: y = 2\n",
    "x = 1\n... # an ellipsis\n",
    "pwd",  # automagic on a line of its own
    "exit",
    "async def g():\n    return 1\nawait g()",
    "x = 1; y = 2",
    "def broken(:\n    pass",  # does not parse: transformed all the same
]


def tour_sources() -> list[str]:
    """The tour's code cells without their magic line."""
    sources = []
    for cell in json.loads(TOUR.read_text())["cells"]:
        if cell["cell_type"] == "code":
            text = "".join(cell["source"])
            first, _, rest = text.partition("\n")
            sources.append(rest if first.startswith("%%") else text)
    return sources


@pytest.mark.parametrize("source", CORPUS + tour_sources())
def test_transformed_as_the_shell_does(ip: Any, source: str) -> None:
    assert cells.transform_cell(ip, source) == ip.transform_cell(source)


class _CountingPass:
    """Stands in for the token pass of one manager instance, counting its calls."""

    def __init__(self, manager: Any) -> None:
        self.calls = 0
        self._pass = manager.do_token_transforms

    def __call__(self, lines: list[str]) -> list[str]:
        self.calls += 1
        return self._pass(lines)


@pytest.fixture
def token_pass(ip: Any) -> Any:
    manager = ip.input_transformer_manager
    counting = _CountingPass(manager)
    manager.do_token_transforms = counting  # on the instance: the class's stays IPython's
    try:
        yield counting
    finally:
        del manager.do_token_transforms


def test_plain_cell_skips_the_token_pass(ip: Any, token_pass: _CountingPass) -> None:
    assert cells.transform_cell(ip, "x = 1\ny = x + 1\n") == "x = 1\ny = x + 1\n"
    assert token_pass.calls == 0
    cells.transform_cell(ip, "x = 1\n%time y = 2\n")
    assert token_pass.calls == 1


def test_another_token_transformer_gets_every_cell(ip: Any) -> None:
    class Shout:
        """A token transformer another extension adds: NAME!! → NAME.upper()."""

        priority = 5

        @classmethod
        def find(cls, tokens_by_line: list[list[Any]]) -> Any:
            for line in tokens_by_line:
                for token in line:
                    if token.string == "hello":
                        return cls(token.start)
            return None

        def __init__(self, start: tuple[int, int]) -> None:
            self.start_line, self.start_col = start[0] - 1, start[1]

        def sortby(self) -> tuple[int, int, int]:
            return self.start_line, self.start_col, self.priority

        def transform(self, lines: list[str]) -> list[str]:
            line = lines[self.start_line]
            lines[self.start_line] = line.replace("hello", "'HELLO'", 1)
            return lines

    manager = ip.input_transformer_manager
    manager.token_transformers.append(Shout)
    try:
        assert cells.transform_cell(ip, "x = hello\n") == "x = 'HELLO'\n"
    finally:
        manager.token_transformers.remove(Shout)


def test_transformers_after_the_token_pass_still_run(ip: Any) -> None:
    def mark(lines: list[str]) -> list[str]:
        return [*lines, "marked = True\n"]

    ip.input_transformers_post.append(mark)
    try:
        assert cells.transform_cell(ip, "x = 1") == "x = 1\nmarked = True\n"
    finally:
        ip.input_transformers_post.remove(mark)


COMPARE = """
from ipytasks import cells
sources = {sources!r}
ip = get_ipython()
wrong = [s for s in sources if cells.transform_cell(ip, s) != ip.transform_cell(s)]
print("differ:", wrong)
"""


def test_transformed_as_the_shell_does_in_a_kernel(kernel: Kernel) -> None:
    result = kernel.execute(COMPARE.format(sources=CORPUS + tour_sources()))
    assert result.stdout.strip() == "differ: []"


def test_a_task_cell_is_cell_in_n_with_its_lines(kernel: Kernel) -> None:
    """A task's cell has its lines where tracebacks, ``inspect`` and pdb look: a failing
    task's traceback names it ``Cell In[n]`` and shows the line; a function it defines
    has its source."""
    cell = kernel.execute(
        "%%parallel lines41 --thread\ndef twice41(x):\n    return 2 * x\n\nint('lines41')")
    kernel.execute("%wait lines41", allow_errors=True)
    (display_id,) = [i for i in cell.display_ids if i.startswith("ipytasks-")]
    shown = strip_ansi(kernel.display(display_id)["text/plain"])
    assert re.search(r"Cell In\[\d+\], line 4\n(?:.*\n)*?----> 4 int\('lines41'\)", shown), shown
    source = kernel.execute("import inspect\nprint(inspect.getsource(twice41), end=\"\")")
    assert source.stdout == "def twice41(x):\n    return 2 * x\n"

"""The namespace analysis held against the standard ``symtable`` module on real code.

``symtable`` is what CPython's compiler decides about each name. For code without
magics, ``exec`` and the like, the analysis must agree with it where both speak:
- binds: exactly the names the compiler makes module-level (assigned, imported, deleted,
  or declared ``global`` and assigned in a nested function);
- reads: only names the compiler resolves to the module's namespace, and every such name
  the code never binds (a name the code binds somewhere may or may not be read first: that
  is the flow-sensitive part ``symtable`` knows nothing of).
The corpus: the tour's task cells and the standard library's own modules, whose module
level is code like a cell's.
"""

from __future__ import annotations

import json
import symtable
import sysconfig
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from ipytasks.namespace.analysis import analyze_source

TOUR = Path(__file__).parents[2] / "notebooks" / "tour.ipynb"
STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def compiler_names(source: str) -> tuple[set[str], set[str]]:
    """(module-level binds, names resolved to the module's namespace), per ``symtable``."""
    top = symtable.symtable(source, "<cell>", "exec")
    binds = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    reads = {s.get_name() for s in top.get_symbols() if s.is_referenced()}

    def visit(table: symtable.SymbolTable) -> None:
        for child in table.get_children():
            for s in child.get_symbols():
                # A parameter is the function's own, whatever symtable says of it: it
                # mixes up a function named "top" with the module (whose table has
                # that name).
                if not s.is_global() or s.is_parameter():
                    continue
                if s.is_declared_global() and (s.is_assigned() or s.is_imported()):
                    binds.add(s.get_name())
                if s.is_referenced() and s.get_name() != "__class__":
                    reads.add(s.get_name())
            visit(child)

    visit(top)
    return binds, reads


def tour_cells() -> list[str]:
    """The tour's code cells without their magic line, as IPython runs them."""
    cells = []
    transform = TransformerManager().transform_cell
    for cell in json.loads(TOUR.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.startswith("%%"):
            source = source.split("\n", 1)[1] if "\n" in source else ""
        code = transform(source)
        if "get_ipython()" in code or "await" in code:
            continue  # magics are analysed from their text; symtable sees only a call
        cells.append(code)
    return cells


CORPUS = [pytest.param(code, id=f"tour-{i}") for i, code in enumerate(tour_cells())]
CORPUS += [pytest.param(path, id=path.name) for path in STDLIB]


def test_the_corpus_is_real() -> None:
    assert len(CORPUS) > 150 and len(tour_cells()) >= 8


def disagreements(source: str, binds: frozenset[str], reads: frozenset[str]) -> list[str]:
    """Where an analysis's binds and reads of ``source`` contradict the compiler."""
    compiled_binds, compiled_reads = compiler_names(source)
    found = []
    if set(binds) != compiled_binds:
        found.append(f"binds: extra {sorted(binds - compiled_binds)}, "
                     f"missing {sorted(compiled_binds - binds)}")
    if not set(reads) <= compiled_reads:
        found.append(f"reads the compiler keeps local: {sorted(reads - compiled_reads)}")
    if not compiled_reads - compiled_binds <= set(reads):
        found.append(f"reads missed: {sorted(compiled_reads - compiled_binds - reads)}")
    return found


@pytest.mark.parametrize("code", CORPUS)
def test_the_analysis_agrees_with_the_compiler(code: str | Path) -> None:
    """Also where the analysis reports ``unknown`` (``exec``, ``import *``): it still
    lists what it could see."""
    source = code.read_text(errors="replace") if isinstance(code, Path) else code
    names = analyze_source(source)
    assert disagreements(source, names.binds, names.reads) == []


def test_a_wrong_answer_would_be_seen() -> None:
    """A dropped bind, a dropped read or a local taken for a read is a disagreement."""
    source = "import os\ndef f(a):\n    global g\n    g = a + len(os.sep)\nf(1)\n"
    names = analyze_source(source)
    assert disagreements(source, names.binds, names.reads) == []
    assert names.binds == {"os", "f", "g"} and names.reads == {"len"}
    assert disagreements(source, names.binds - {"g"}, names.reads)
    assert disagreements(source, names.binds, names.reads - {"len"})
    assert disagreements(source, names.binds, names.reads | {"a"})

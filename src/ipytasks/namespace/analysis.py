"""Which names a cell reads from, and binds in, the notebook's namespace.

Contract (implementation pending):

``analyze(tree)`` takes the ``ast.Module`` of a cell *after* IPython's input
transformation (so ``%magic`` and ``!cmd`` are already calls of ``get_ipython()``)
and returns a :class:`CellNames`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ("CellNames", "analyze")


@dataclass(frozen=True, slots=True)
class CellNames:
    """The names a cell uses at notebook (module) level.

    - ``reads``: names whose value the cell may take from the namespace as it was
      before the cell ran: read before (or without) being bound by the cell,
      including free names read inside functions, lambdas, classes and
      comprehensions defined in the cell.
    - ``binds``: names the cell binds at top level (``=``, ``+=``, ``import``,
      ``def``, ``class``, ``for``/``with … as``/``except … as`` targets, ``match``
      captures, walrus, ``global`` statements in nested functions that assign).
    - ``mutates``: names the cell changes in place without rebinding
      (``df['x'] = …``, ``df.x = …``, ``del d[k]``, ``d[k] += …``).
    - ``deletes``: names removed with ``del name``.
    - ``imports``: the subset of ``binds`` bound only by import statements.
    - ``unknown``: why the analysis cannot be trusted (star import, ``exec``,
      ``eval``, ``globals()``, ``locals()``, ``vars()``); ``None`` when it can.
      Callers treat an unknown cell as reading and binding everything.
    """

    reads: frozenset[str]
    binds: frozenset[str]
    mutates: frozenset[str] = frozenset()
    deletes: frozenset[str] = frozenset()
    imports: frozenset[str] = frozenset()
    unknown: str | None = None


def analyze(tree: ast.Module) -> CellNames:
    raise NotImplementedError

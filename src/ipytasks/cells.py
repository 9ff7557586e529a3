"""Turning a cell's text into code a task can run.

A cell goes through IPython's own input transformations first (so ``%time``,
``!cmd`` and ``%wait`` work inside a task), then is split like IPython splits a
cell: the statements, and the last expression whose value is the task's result.
Both parts are compiled with top-level ``await`` allowed; a cell that uses it
compiles to coroutines and runs on the event loop.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

from ._worker import split_compile

__all__ = ("CompiledCell", "MapItemCell", "compile_cell", "compile_map_function")


@dataclass(frozen=True, slots=True, eq=False)
class CompiledCell:
    """A cell ready to run: the statements, the last expression, and what it needs."""

    source: str
    transformed: str
    filename: str
    number: int
    tree: ast.Module
    body: CodeType | None
    last: CodeType | None
    is_async: bool
    quiet_result: bool

    async def run_async(self, namespace: dict[str, Any]) -> Any:
        """Run the cell in ``namespace`` on the current event loop; return its last value."""
        for code in (self.body, self.last):
            if code is None:
                continue
            value = eval(code, namespace)  # noqa: S307 - running the user's own cell
            if code.co_flags & inspect.CO_COROUTINE:
                value = await value
        return value if self.last is not None else None

    def run_sync(self, namespace: dict[str, Any]) -> Any:
        """Run a cell without top-level ``await`` in ``namespace``; return its last value."""
        value = None
        if self.body is not None:
            exec(self.body, namespace)  # noqa: S102 - running the user's own cell
        if self.last is not None:
            value = eval(self.last, namespace)  # noqa: S307
        return value


#: Recently compiled cells: submitting the same text again (a loop over
#: ``ipytasks.submit``, a retry) reuses the code objects. Code is immutable, so
#: sharing is safe; bounded, oldest first out.
_compiled: dict[tuple[int, str, int, int], CompiledCell] = {}
_COMPILED_MAX = 256


def compile_cell(shell: Any, source: str, number: int = 0) -> CompiledCell:
    """Transform and compile ``source`` the way IPython would run it as cell ``number``.

    :raises SyntaxError: if the transformed cell does not parse; the error points
        at the line of the cell.
    """
    key = (id(shell), source, number, shell.compile.flags)
    cell = _compiled.get(key)
    if cell is None:
        cell = _compile_cell(shell, source, number)
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.pop(next(iter(_compiled)), None)
        _compiled[key] = cell
    return cell


def _compile_cell(shell: Any, source: str, number: int) -> CompiledCell:
    transformed = shell.transform_cell(source)
    # IPython's caching compiler registers the source with linecache, so tracebacks
    # show the cell's lines (and "Cell In[n]" for the submitting cell).
    filename = shell.compile.cache(transformed, number, raw_code=source)
    tree, body, last = split_compile(transformed, filename, shell.compile.flags)
    is_async = any(
        code is not None and bool(code.co_flags & inspect.CO_COROUTINE) for code in (body, last)
    )
    return CompiledCell(
        source=source,
        transformed=transformed,
        filename=filename,
        number=number,
        tree=tree,
        body=body,
        last=last,
        is_async=is_async,
        quiet_result=source.rstrip().endswith(";"),
    )


@dataclass(frozen=True, slots=True)
class MapItemCell:
    """One item of a ``--map`` cell: the cell's body as a function of the map variable.

    Each item runs in a scope of its own, so items that run at once do not overwrite
    each other's names; what an item binds stays there (``global`` reaches the
    notebook), and its value is the cell's last expression.
    """

    cell: CompiledCell
    function: Any
    item: Any

    @property
    def is_async(self) -> bool:
        return self.cell.is_async

    @property
    def filename(self) -> str:
        return self.cell.filename

    @property
    def number(self) -> int:
        return self.cell.number

    @property
    def source(self) -> str:
        return self.cell.source

    quiet_result = True

    async def run_async(self, namespace: dict[str, Any]) -> Any:
        value = self.function(self.item)
        return await value if self.cell.is_async else value

    def run_sync(self, namespace: dict[str, Any]) -> Any:
        return self.function(self.item)


_ITEM_FUNCTION = "__ipytasks_map_item__"


def compile_map_function(cell: CompiledCell, var: str, namespace: dict[str, Any]) -> Any:
    """The cell's body as ``def item(VAR): …; return <last expression>``, over ``namespace``."""
    body = [node for node in cell.tree.body]
    if body and isinstance(body[-1], ast.Expr):
        last = body.pop()
        body.append(ast.copy_location(ast.Return(value=last.value), last))
    if not body:
        body = [ast.Pass()]
    kind = ast.AsyncFunctionDef if cell.is_async else ast.FunctionDef
    func = kind(
        name=_ITEM_FUNCTION,
        args=ast.arguments(
            posonlyargs=[], args=[ast.arg(arg=var)], kwonlyargs=[], kw_defaults=[], defaults=[]
        ),
        body=body,
        decorator_list=[],
        lineno=1,
        col_offset=0,
    )
    module = ast.fix_missing_locations(ast.Module(body=[func], type_ignores=[]))
    code = compile(module, cell.filename, "exec", dont_inherit=True)
    function_code = next(
        c for c in code.co_consts if isinstance(c, CodeType) and c.co_name == _ITEM_FUNCTION
    )
    return FunctionType(function_code, namespace, f"{var}-item")

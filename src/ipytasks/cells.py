"""Turning a cell's text into code a task can run.

A cell goes through IPython's own input transformations first (so ``%time``,
``!cmd`` and ``%wait`` work inside a task), then is split like IPython splits a
cell: the statements, and the last expression whose value is the task's result.
Both parts are compiled with top-level ``await`` allowed; a cell that uses it
compiles to coroutines and runs on the event loop.

A cell's throwaway names (:attr:`~ipytasks.namespace.analysis.CellNames.loose`: loop
variables, ``except … as`` names, ``_``) are private to its task while it runs in the
notebook's namespace, so that two tasks looping over ``i`` at once never read each
other's ``i``: the cell runs as the body of a function in which those names are local
and every other name it binds is declared ``global``; what the locals hold at the end
is then bound in the namespace, as a cell run at top level would leave them. Where that
cannot mean the same as the cell (a function or generator the cell defines keeps one
of the names: it would keep the local, not the namespace's name), the name stays
ordinary.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import re
import sys
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

from IPython.core import inputtransformer2
from IPython.core.compilerop import code_name
from IPython.core.interactiveshell import InteractiveShell

from .namespace.analysis import CellNames, analyze
from .workers.child import split_compile

__all__ = ("CompiledCell", "MapItemCell", "compile_cell", "compile_map_function")


@dataclass(frozen=True, slots=True, eq=False)
class CompiledCell:
    """A cell ready to run: the statements, the last expression, and what it needs."""

    source: str
    transformed: str
    filename: str
    number: int
    tree: ast.Module
    #: The names the cell uses (:func:`~ipytasks.namespace.analysis.analyze` of ``tree``,
    #: run once, here: everything that asks about the cell's names reads this).
    names: CellNames
    body: CodeType | None
    last: CodeType | None
    is_async: bool
    quiet_result: bool
    #: The throwaway names the cell keeps private while it runs (see the module).
    private: frozenset[str] = frozenset()
    #: With ``private``: the cell as ``def f(out): global …; try: …; return last;
    #: finally: out.update(locals())``.
    function: CodeType | None = None

    async def run_async(self, namespace: dict[str, Any]) -> Any:
        """Run the cell in ``namespace`` on the current event loop; return its last value."""
        if self.function is not None:
            kept: dict[str, Any] = {}
            try:
                value = FunctionType(self.function, namespace)(kept)
                return await value if self.is_async else value
            finally:
                self._publish(namespace, kept)
        for code in (self.body, self.last):
            if code is None:
                continue
            value = eval(code, namespace)  # noqa: S307 - running the user's own cell
            if code.co_flags & inspect.CO_COROUTINE:
                value = await value
        return value if self.last is not None else None

    def run_sync(self, namespace: dict[str, Any]) -> Any:
        """Run a cell without top-level ``await`` in ``namespace``; return its last value."""
        if self.function is not None:
            kept: dict[str, Any] = {}
            try:
                return FunctionType(self.function, namespace)(kept)
            finally:
                self._publish(namespace, kept)
        value = None
        if self.body is not None:
            exec(self.body, namespace)  # noqa: S102 - running the user's own cell
        if self.last is not None:
            value = eval(self.last, namespace)  # noqa: S307
        return value

    def _publish(self, namespace: dict[str, Any], kept: dict[str, Any]) -> None:
        namespace.update({name: kept[name] for name in self.private if name in kept})


#: Recently compiled cells: submitting the same text again (a loop over
#: ``ipytasks.submit``, a retry) reuses the code objects. Code is immutable, so
#: sharing is safe; bounded, oldest first out.
_compiled: dict[tuple[int, str, int, int], CompiledCell] = {}
_COMPILED_MAX = 256


def compile_cell(shell: InteractiveShell, source: str, number: int = 0) -> CompiledCell:
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


#: Where IPython's token transformations find something to do: magics (``%``), shell
#: commands and assignments from them (``!``), help (``?``) and the autocall escapes
#: (``,f a``, ``;f a``, ``/f a``) that begin a line.
_SPECIAL_SYNTAX = re.compile(r"[%!?]|^[ \t]*[,;/]", re.MULTILINE)


_Manager = inputtransformer2.TransformerManager
#: The token transformers the character check above is made for: any other (added by an
#: extension, or by a later IPython) gets the whole pass.
_IPYTHON_TOKEN_TRANSFORMERS = [
    inputtransformer2.MagicAssign,
    inputtransformer2.SystemAssign,
    inputtransformer2.EscapedCommand,
    inputtransformer2.HelpEnd,
]


def transform_cell(shell: InteractiveShell, source: str) -> str:
    """``shell.transform_cell(source)``: the cell as IPython would run it.

    IPython's token transformations tokenize the whole cell to find its special syntax,
    which costs more than the rest of compiling a small cell. Where the shell's
    transformations are IPython's own and the cell holds none of the characters that
    syntax starts with, that pass cannot change it, and is left out; everything else
    (the clean-up of prompts and indentation, the single-line checks, the transformers
    other extensions add after it) runs as IPython runs it.
    """
    manager = shell.input_transformer_manager
    if not _default_token_pass(shell, manager):
        return shell.transform_cell(source)
    cell = source if source.endswith("\n") else source + "\n"
    lines = cell.splitlines(keepends=True)
    for transform in manager.cleanup_transforms + manager.line_transforms:
        lines = transform(lines)
    cell = "".join(lines)
    if _SPECIAL_SYNTAX.search(cell):
        return shell.transform_cell(source)
    # The rest is InteractiveShell.transform_cell's own, after its static pass.
    if len(cell.splitlines()) == 1:
        prefilter = shell.prefilter_manager
        assert prefilter is not None  # made with the shell
        with shell.builtin_trap:
            cell = prefilter.prefilter_lines(cell) + "\n"
    lines = cell.splitlines(keepends=True)
    for transform in shell.input_transformers_post:
        lines = transform(lines)
    return "".join(lines)


def _default_token_pass(shell: InteractiveShell, manager: Any) -> bool:
    """Whether the shell transforms cells with IPython's own methods and token
    transformers (nothing replaced or added by another extension)."""
    return (
        type(shell).transform_cell is InteractiveShell.transform_cell
        and type(manager).transform_cell is _Manager.transform_cell
        and type(manager).do_token_transforms is _Manager.do_token_transforms
        and manager.token_transformers == _IPYTHON_TOKEN_TRANSFORMERS
    )


def _register_lines(shell: InteractiveShell, transformed: str, source: str, number: int) -> str:
    """Register the cell's lines as IPython's caching compiler registers a cell's:
    ``linecache`` has its lines (tracebacks, ``inspect``, pdb show them) and tracebacks
    call it ``Cell In[number]``.

    The name is the one plain IPython gives a cell (``<ipython-input-N-…>``, from a SHA-1
    of its text), not ipykernel's, a hash computed in Python that for a cell of a thousand
    characters costs more than the rest of submitting it (no tool looks a task's cell up
    by that name: the front end's is the whole cell's, magic line included). Where the
    compiler keeps no table of cell numbers (not IPython's), its own ``cache`` names it.
    """
    compiler = shell.compile
    numbers = getattr(compiler, "_filename_map", None)
    if not isinstance(numbers, dict):
        return compiler.cache(transformed, number, raw_code=source)
    filename = code_name(transformed, number)
    numbers[filename] = number
    lines = [line + "\n" for line in transformed.splitlines()]
    linecache.cache[filename] = (len(transformed), None, lines, filename)
    return filename


def _compile_cell(shell: InteractiveShell, source: str, number: int) -> CompiledCell:
    transformed = transform_cell(shell, source)
    filename = _register_lines(shell, transformed, source, number)
    tree, body, last = split_compile(transformed, filename, shell.compile.flags)
    is_async = any(
        code is not None and bool(code.co_flags & inspect.CO_COROUTINE) for code in (body, last)
    )
    names = analyze(tree)
    private, function = _private_names(tree, names, is_async, filename, shell.compile.flags)
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
        private=private,
        function=function,
        names=names,
    )


_CELL_FUNCTION = "__ipytasks_cell__"
_KEPT = "__ipytasks_kept__"
#: Nested code run on the spot, so a name it shares with the cell means the same whether
#: that name is the cell function's local or the namespace's.
_RUN_AT_ONCE = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>"})


def _private_names(
    tree: ast.Module, names: CellNames, is_async: bool, filename: str, flags: int
) -> tuple[frozenset[str], CodeType | None]:
    """The cell's throwaway names that can be kept private, and the cell as a function
    of them (see the module); ``(frozenset(), None)`` when there are none."""
    private = set(names.loose)
    if not private or names.unknown or "locals" in names.binds | names.reads:
        return frozenset(), None
    while private:
        try:
            code = _cell_function(tree, names.binds - private, is_async, filename, flags)
        except SyntaxError:  # e.g. an annotated name, which cannot be declared global
            return frozenset(), None
        kept = {name for c in _nested(code) if c.co_name not in _RUN_AT_ONCE
                for name in c.co_freevars} & private
        if not kept:
            return frozenset(private), code
        private -= kept
    return frozenset(), None


def _nested(code: CodeType) -> Iterator[CodeType]:
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield const
            yield from _nested(const)


def _cell_function(
    tree: ast.Module, shared: AbstractSet[str], is_async: bool, filename: str, flags: int
) -> CodeType:
    """``def f(kept): global <shared>; try: <cell>; return <last>;
    finally: kept.update(locals())``."""
    body = list(tree.body)
    if body and isinstance(last := body[-1], ast.Expr):
        body[-1] = ast.copy_location(ast.Return(value=last.value), last)
    keep = ast.Expr(ast.Call(
        func=ast.Attribute(value=ast.Name(_KEPT, ast.Load()), attr="update", ctx=ast.Load()),
        args=[ast.Call(func=ast.Name("locals", ast.Load()), args=[], keywords=[])],
        keywords=[]))
    statements: list[ast.stmt] = [ast.Global(names=sorted(shared))] if shared else []
    statements.append(ast.Try(body=body or [ast.Pass()], handlers=[], orelse=[],
                              finalbody=[keep]))
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    extra: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}
    func = kind(
        name=_CELL_FUNCTION,
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=_KEPT)], kwonlyargs=[],
                           kw_defaults=[], defaults=[]),
        body=statements, decorator_list=[], returns=None, lineno=1, col_offset=0, **extra)
    module = ast.fix_missing_locations(ast.Module(body=[func], type_ignores=[]))
    code = compile(module, filename, "exec", flags, dont_inherit=True)
    function = next(c for c in code.co_consts
                    if isinstance(c, CodeType) and c.co_name == _CELL_FUNCTION)
    # Its frames in a traceback read as the cell's own, like those of a cell run at top level.
    return function.replace(co_name="<module>", co_qualname="<module>")


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
    if body and isinstance(last := body[-1], ast.Expr):
        body[-1] = ast.copy_location(ast.Return(value=last.value), last)
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

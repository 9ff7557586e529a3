"""Which names a cell reads from, and binds in, the notebook's namespace.

``analyze(tree)`` takes the ``ast.Module`` of a cell *after* IPython's input
transformation (so ``%magic`` and ``!cmd`` are already calls of ``get_ipython()``)
and returns a :class:`CellNames`; ``analyze_source(source)`` parses such source
first (top-level ``await``, ``async for`` and ``async with`` allowed).

The analysis is static, over ``ast`` only, in a single walk of the tree. Its
answers err in the safe direction for dependency inference and
for shipping inputs and outputs to workers: it may report a read or a bind
that does not happen at run time, but it should not miss one (except through
the constructs that set ``unknown``, and the ``with`` approximation below).

Reads and binds at notebook level
---------------------------------
* The module level of the cell *is* the notebook namespace. A name the cell
  binds (or deletes) before it reads it is its own, not a read. This is tracked
  flow-sensitively as the set of names *definitely* bound on every path:

  - ``if``/``elif``/``else``, ``match`` cases, ``x if c else y`` and the later
    operands of ``and``/``or``: only what every branch binds counts afterwards;
  - loops may run zero times: what a ``for``/``while`` body binds does not count
    after the loop (but does inside the body; ``while True:`` is left only by
    ``break``, so what is bound before every ``break`` counts after it);
  - ``try``: handlers and ``finally`` are analysed as if the body failed at its
    first statement; after the statement counts what every path that falls
    through binds, plus what ``finally`` binds;
  - a branch ending in ``raise``, ``break``, ``continue`` or ``return`` does not
    reach the code after it, so it does not weaken the merge;
  - ``with`` bodies are assumed to run to the end or propagate their exception
    (a context manager that swallows exceptions could skip the rest of the body;
    the one common case, ``suppress(...)``, is recognised and handled like a
    ``try``).

* Builtins are not special: ``print``, ``len``... are reported in ``reads``
  like any other free name. So are IPython's own names (``get_ipython`` for
  every magic, ``In``, ``Out``, ``_``...). Callers keep only the reads that
  exist in the user namespace (and skip ``shell.user_ns_hidden``).
* Attribute and subscript loads read the base name: ``df.shape`` reads ``df``.
* Pure stores into an object are *mutations*, not reads: ``d[k] = v``,
  ``obj.a = v``, ``del d[k]``, ``del obj.a`` (also through chains such as
  ``a.b[i].c = v``) put the root name (``d``, ``obj``, ``a``) in ``mutates``,
  unless the cell definitely bound it before; the names used in the subscript
  and the value are read. Augmented stores ``d[k] += v`` / ``obj.a += v`` read
  *and* mutate the root. Mutation through method calls (``lst.append(x)``)
  cannot be told apart from a pure call: that is only a read of ``lst``.
* Binds: ``=`` (tuple and star unpacking), annotated assignment with a value
  (``x: int`` alone binds nothing, but its annotation is read), ``+=`` and the
  other augmented assignments (read then bind), walrus (also inside a
  comprehension, where it binds in the cell's scope: a bind that the code after
  the comprehension cannot count on, as the comprehension may run zero times),
  ``import a.b`` (binds ``a``), ``import a.b as c`` (``c``),
  ``from m import x as y`` (``y``), ``def``, ``class``, ``for``/``async for``
  targets, ``with … as``/``async with … as`` targets, ``except … as`` (Python
  deletes that name at the end of the handler; it is still listed in
  ``binds``), ``match`` captures (``case P(x=px)``, ``case [a, *rest]``,
  ``case {"k": v, **kw}``, ``case _ as z``). ``del name`` puts ``name`` in
  ``deletes`` and in ``binds``. ``binds`` says *may* bind: after the cell runs,
  a name in ``binds`` may be missing from the namespace.
* ``imports`` is the subset of ``binds`` bound by import statements only.

Nested scopes
-------------
* Comprehensions and generator expressions have their own scope: their loop
  variables are not bound at notebook level; the names they read that are not
  their own are reads (the first iterable is evaluated in the enclosing scope).
* Functions (``def``, ``lambda``) read their free names only when called, but
  those names are counted as reads *at the point of definition*: a free name of
  a function body that the cell has not definitely bound before the definition
  is a read, even if the cell binds it before calling the function. A ``def``
  or ``class`` statement binds its own name before its methods' bodies are
  considered, so recursion and methods that mention their class are no read.
  Default argument values, annotations of parameters and decorators are
  evaluated at definition time: reads. Class bodies run at definition time and
  are analysed flow-sensitively like the cell itself (their names are not
  visible to the methods, as in Python).
* ``global x`` in a nested function: assigning ``x`` there binds the notebook's
  ``x`` (in ``binds``; in ``imports`` when bound by an import there), ``del x``
  deletes it, ``x[k] = v`` mutates it, and reading ``x`` reads it. A subscript
  or attribute store on a free name inside a function (``d[k] = v`` with
  ``d`` not local) mutates the notebook's ``d`` too. ``nonlocal`` names are
  resolved in the enclosing function, as in Python.

Magics and shell commands
-------------------------
Magics can do anything, but treating every magic as unknown would switch the
analysis off for most notebooks. The choice made here:

* ``%time`` / ``%%time`` / ``%%capture [name]``: the code they run is analysed
  as if it were written in the cell at that point (they run it in the user
  namespace); ``%%capture name`` also binds ``name``.
* ``%timeit`` / ``%%timeit``: the statement (and the ``%%timeit`` setup line)
  runs inside a function, so its free names are reads and its assignments bind
  nothing; ``-v NAME`` binds ``NAME``.
* ``x?`` / ``x??`` (``%pinfo``, ``%pinfo2``, ``%pdef``, ``%pdoc``,
  ``%psource``, ``%pfile``) read ``x``; ``%xdel x`` deletes ``x``;
  ``%store x`` reads ``x``; ``%store -r x y`` binds ``x`` and ``y``.
* ``%run``, ``%reset``, ``%reset_selective``, ``%store -r`` (without names),
  ``get_ipython().run_cell(...)``/``ex``/``ev``/``push``/``del_var`` and
  ``get_ipython().user_ns`` make the cell ``unknown``: they bind, run or delete
  names that cannot be known.
* Every other magic is assumed not to touch the user namespace and does *not*
  make the cell unknown. IPython expands ``$name`` and ``{expr}`` in a magic's
  line (except for ``%time``/``%timeit``) and in ``!cmd``/``!!cmd``; those are
  reads. The names of the magics called are in ``CellNames.magics`` (``!`` for
  shell commands), so callers can apply their own policy.

Unknown
-------
``from m import *`` and calls of ``exec``, ``eval`` and ``globals`` anywhere,
and ``locals()``/``vars()`` without arguments at notebook level (inside a
function or class body they only see that body's own names), plus the magics above, set
``CellNames.unknown`` to a short reason naming the construct and its line (the
first one found). The other fields are still filled in as far as they can be.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

__all__ = ("CellNames", "analyze", "analyze_source")


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
    - ``magics``: the IPython magics the cell calls (names without ``%``, line
      and cell magics alike), and ``"!"`` when it runs shell commands.
    - ``loose``: the subset of ``binds`` that are throwaway names: bound at top level
      of the cell's own code only as ``for`` targets or ``except … as`` names, or
      ``_`` however bound; never read from the namespace, changed in place or
      deleted by the cell. Their value after the cell is an accident of the loop
      (or of the error), so no other cell's order should hang on them.
    """

    reads: frozenset[str]
    binds: frozenset[str]
    mutates: frozenset[str] = frozenset()
    deletes: frozenset[str] = frozenset()
    imports: frozenset[str] = frozenset()
    unknown: str | None = None
    magics: frozenset[str] = frozenset()
    loose: frozenset[str] = frozenset()


_PARSE_FLAGS = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def analyze_source(source: str) -> CellNames:
    """Parse ``source`` (already transformed by IPython) and :func:`analyze` it.

    Top-level ``await``, ``async for`` and ``async with`` are accepted. A syntax
    error propagates as :class:`SyntaxError`.
    """
    return analyze(compile(source, "<cell>", "exec", _PARSE_FLAGS, dont_inherit=True))


def analyze(tree: ast.Module) -> CellNames:
    """The names the cell ``tree`` reads and binds at notebook level (see module docs)."""
    a = _Analyzer()
    a.run(tree.body)
    return CellNames(
        reads=frozenset(a.reads),
        binds=frozenset(a.binds),
        mutates=frozenset(a.mutates),
        deletes=frozenset(a.deletes),
        imports=frozenset(a.import_binds - a.other_binds),
        unknown=a.unknown,
        magics=frozenset(a.magics),
        loose=frozenset(
            n for n in a.binds
            if n == "_" or (n in a.loose_binds and n not in a.other_binds
                            and n not in a.import_binds)
        ) - a.reads - a.mutates - a.deletes,
    )


# --------------------------------------------------------------------------- scopes

_MODULE, _CLASS, _FUNC, _COMP = 0, 1, 2, 3
_OTHER, _IMPORT, _DELETE, _LOOSE = 0, 1, 2, 3


class _Scope:
    __slots__ = (
        "kind",
        "parent",
        "resolve",
        "flow",
        # flow scopes (module, class): names definitely bound, undo trail, dead code
        "bound",
        "trail",
        "dead",
        "loops",
        # class: what methods read, flushed once the class name is bound
        "dloads",
        "dmuts",
        "dgloads",
        "dgmuts",
        # function / lambda
        "locals",
        "loads",
        "muts",
        "gloads",
        "gmuts",
        "glob_decl",
        "nonlocal_decl",
        # comprehension
        "targets",
        "home",
    )
    resolve: _Scope | None
    # set by _e_comp on a comprehension scope
    targets: set[str]
    home: _Scope

    def __init__(self, kind: int, parent: _Scope | None) -> None:
        self.kind = kind
        self.parent = parent
        self.flow = kind <= _CLASS
        # where free names go: the nearest enclosing scope that is not a class
        p = parent
        while p is not None and p.kind == _CLASS:
            p = p.resolve if p.resolve is not None else p.parent
        self.resolve = p
        if self.flow:
            self.bound: set[str] = set()
            self.trail: list[str] = []
            self.dead = False
            self.loops: list[tuple[int, list[set[str]]]] = []
            self.glob_decl: set[str] = set()
            if kind == _CLASS:
                self.dloads: set[str] = set()
                self.dmuts: set[str] = set()
                self.dgloads: set[str] = set()
                self.dgmuts: set[str] = set()
        elif kind == _FUNC:
            self.locals: set[str] = set()
            self.loads: set[str] = set()
            self.muts: set[str] = set()
            self.gloads: set[str] = set()
            self.gmuts: set[str] = set()
            self.glob_decl = set()
            self.nonlocal_decl: set[str] = set()


def _target_names(t: ast.AST, out: set[str]) -> None:
    tp = type(t)
    if tp is ast.Name:
        out.add(t.id)  # type: ignore[attr-defined]
    elif tp is ast.Tuple or tp is ast.List:
        for e in t.elts:  # type: ignore[attr-defined]
            _target_names(e, out)
    elif tp is ast.Starred:
        _target_names(t.value, out)  # type: ignore[attr-defined]


def _root_name(e: ast.AST) -> str | None:
    while True:
        tp = type(e)
        if tp is ast.Name:
            return e.id  # type: ignore[attr-defined]
        if tp is ast.Subscript or tp is ast.Attribute:
            e = e.value  # type: ignore[attr-defined]
        else:
            return None


def _irrefutable(p: ast.pattern) -> bool:
    if type(p) is ast.MatchAs:
        return p.pattern is None or _irrefutable(p.pattern)
    if type(p) is ast.MatchOr:
        return any(_irrefutable(q) for q in p.patterns)
    return False


def _is_suppress(e: ast.expr) -> bool:
    if type(e) is not ast.Call:
        return False
    f = e.func
    return (type(f) is ast.Name and f.id == "suppress") or (
        type(f) is ast.Attribute and f.attr == "suppress"
    )


def _is_get_ipython_call(e: ast.expr) -> bool:
    return (
        type(e) is ast.Call
        and type(e.func) is ast.Name
        and e.func.id == "get_ipython"
        and not e.args
        and not e.keywords
    )


def _str_arg(args: list[ast.expr], i: int) -> str | None:
    if i < len(args):
        a = args[i]
        if type(a) is ast.Constant and type(a.value) is str:
            return a.value
    return None


_SKIP_FIELDS = frozenset({"ctx", "op", "ops", "type_comment", "kind"})
_FIELDS_CACHE: dict[type, tuple[str, ...]] = {}

_UNKNOWN_CALLS = {
    "exec": "exec() can read and bind any name",
    "eval": "eval() can read and bind any name",
    "globals": "globals() gives access to every name",
}
_UNKNOWN_MODULE_CALLS = {
    "locals": "locals() gives access to every name",
    "vars": "vars() without arguments gives access to every name",
}
_UNKNOWN_SHELL_ATTRS = frozenset({"run_cell", "run_cell_async", "ex", "ev", "push", "del_var"})
_NS_ATTRS = frozenset({"user_ns", "user_global_ns"})
_PINFO = frozenset({"pinfo", "pinfo2", "pdef", "pdoc", "psource", "pfile"})
_IDENT = re.compile(r"\s*([A-Za-z_]\w*)")
_TOKEN = re.compile(r"\s*(\S+)")
_NO_RAISE = re.compile(r"\s*(?:--no-raise-error\b\s*)*")

_dollar_formatter: Any = None
_transformer: Any = None


def _parse_magic_code(code: str) -> ast.Module | None:
    """Parse code run by ``%time``/``%timeit``/``%%capture``, as IPython does (it
    transforms the code first); ``None`` when it does not parse."""
    global _transformer
    try:
        return compile(code, "<magic>", "exec", _PARSE_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):
        pass
    try:
        if _transformer is None:
            from IPython.core.inputtransformer2 import TransformerManager

            _transformer = TransformerManager()
        code = _transformer.transform_cell(code)
        return compile(code, "<magic>", "exec", _PARSE_FLAGS, dont_inherit=True)
    except Exception:
        return None


def _split_timeit(line: str) -> tuple[str, str | None]:
    """Split ``%timeit`` options (``getopt`` spec ``n:r:tcp:qov:``) from the code.

    Returns the code and the ``-v`` variable name, if any.
    """
    pos = 0
    var = None
    while True:
        m = _TOKEN.match(line, pos)
        if m is None:
            return "", var
        tok = m.group(1)
        if tok == "--":
            return line[m.end() :], var
        if not tok.startswith("-") or tok == "-":
            return line[m.start(1) :], var
        pos = m.end()
        i = 1
        while i < len(tok):
            c = tok[i]
            if c in "nrpv":
                arg = tok[i + 1 :]
                if not arg:
                    m2 = _TOKEN.match(line, pos)
                    if m2 is None:
                        return "", var
                    arg = m2.group(1)
                    pos = m2.end()
                if c == "v":
                    var = arg
                break
            if c in "tcqo":
                i += 1
                continue
            return line[m.start(1) :], var  # not an option IPython knows
        # next token


# --------------------------------------------------------------------------- walker


class _Analyzer:
    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.binds: set[str] = set()
        self.mutates: set[str] = set()
        self.deletes: set[str] = set()
        self.import_binds: set[str] = set()
        self.other_binds: set[str] = set()
        self.loose_binds: set[str] = set()
        self.magics: set[str] = set()
        self.unknown: str | None = None
        self.module = _Scope(_MODULE, None)
        self.scope = self.module
        self.line_override: int | None = None

    def run(self, body: list[ast.stmt]) -> None:
        self._block(body)

    # ------------------------------------------------------------ name events

    def _unknown(self, node: ast.AST, what: str) -> None:
        if self.unknown is None:
            line = self.line_override or getattr(node, "lineno", 0)
            self.unknown = f"line {line}: {what}"

    def _owner(self, s: _Scope, name: str) -> _Scope | None:
        """Where a use of ``name`` in scope ``s`` goes: the function that will see it when
        called, the module, or ``None`` when a class body or comprehension binds it."""
        while True:
            k = s.kind
            if k == _FUNC or k == _MODULE:
                return s
            if k == _CLASS:
                if name in s.glob_decl:
                    s = self.module
                    continue
                if name in s.bound:
                    return None
            elif name in s.targets:  # comprehension
                return None
            s = s.resolve  # type: ignore[assignment]

    def _load_from(self, s: _Scope, name: str) -> None:
        owner = self._owner(s, name)
        if owner is None:
            return
        if owner.kind == _FUNC:
            owner.loads.add(name)
        elif name not in owner.bound:
            self.reads.add(name)

    def _load(self, name: str) -> None:
        s = self.scope
        if s.kind == _MODULE:
            if name not in s.bound:
                self.reads.add(name)
        else:
            self._load_from(s, name)

    def _mutate(self, name: str) -> None:
        owner = self._owner(self.scope, name)
        if owner is None:
            return
        if owner.kind == _FUNC:
            owner.muts.add(name)
        elif name not in owner.bound:
            self.mutates.add(name)

    def _module_bind(self, name: str, kind: int) -> None:
        self.binds.add(name)
        if kind == _IMPORT:
            self.import_binds.add(name)
        elif kind == _LOOSE and self.line_override is None:  # not in a magic's code
            self.loose_binds.add(name)
        else:
            self.other_binds.add(name)
            if kind == _DELETE:
                self.deletes.add(name)

    def _store_in(self, s: _Scope, name: str, kind: int = _OTHER) -> None:
        k = s.kind
        if k == _MODULE:
            self._module_bind(name, kind)
        elif k == _FUNC:
            if name in s.glob_decl:
                self._module_bind(name, _OTHER if kind == _LOOSE else kind)
            elif name not in s.nonlocal_decl:
                s.locals.add(name)
            return
        elif k == _CLASS:
            if name in s.glob_decl:
                self._module_bind(name, _OTHER if kind == _LOOSE else kind)
                return
        else:  # comprehension targets are collected up front
            return
        if name not in s.bound:
            s.bound.add(name)
            s.trail.append(name)

    def _store(self, name: str, kind: int = _OTHER) -> None:
        self._store_in(self.scope, name, kind)

    def _deliver(
        self,
        p: _Scope,
        free: set[str],
        muts: set[str],
        gloads: set[str],
        gmuts: set[str],
        deferred: bool,
    ) -> None:
        """Hand the free names of a closed function scope to the scope around it."""
        while True:
            k = p.kind
            if k == _FUNC:
                p.loads |= free
                p.muts |= muts
                p.gloads |= gloads
                p.gmuts |= gmuts
                return
            if k == _MODULE:
                b = p.bound
                for names, out in ((free, self.reads), (gloads, self.reads)):
                    for n in names:
                        if n not in b:
                            out.add(n)
                for names in (muts, gmuts):
                    for n in names:
                        if n not in b:
                            self.mutates.add(n)
                return
            if k == _CLASS:
                if deferred:
                    p.dloads |= free
                    p.dmuts |= muts
                    p.dgloads |= gloads
                    p.dgmuts |= gmuts
                    return
            else:  # comprehension
                t = p.targets
                free = {n for n in free if n not in t}
                muts = {n for n in muts if n not in t}
            p = p.resolve  # type: ignore[assignment]

    def _close_function(
        self, fs: _Scope, deferred: bool, parent: _Scope
    ) -> None:
        loc = fs.locals
        g = fs.glob_decl
        nl = fs.nonlocal_decl
        free: set[str] = set()
        muts: set[str] = set()
        gloads = fs.gloads
        gmuts = fs.gmuts
        for n in fs.loads:
            if n in g:
                gloads.add(n)
            elif n not in loc and n not in nl:
                free.add(n)
        for n in fs.muts:
            if n in g:
                gmuts.add(n)
            elif n not in loc and n not in nl:
                muts.add(n)
        self._deliver(parent, free, muts, gloads, gmuts, deferred)

    # ------------------------------------------------------------ flow helpers
    # Flow scopes keep ``bound`` plus a trail of the names added to it, so that a
    # branch can be undone and the names it added compared without copying sets.

    @staticmethod
    def _undo(s: _Scope, mark: int) -> set[str]:
        """Forget what was bound since ``mark``; return those names."""
        trail = s.trail
        added = set(trail[mark:])
        s.bound -= added
        del trail[mark:]
        return added

    @staticmethod
    def _apply(s: _Scope, names: set[str]) -> None:
        b = s.bound
        for n in names:
            if n not in b:
                b.add(n)
                s.trail.append(n)

    def _merge(self, s: _Scope, exits: list[set[str]]) -> None:
        """Continue after a branch point whose live exits added ``exits``."""
        if not exits:
            s.dead = True
            return
        s.dead = False
        common = exits[0]
        for e in exits[1:]:
            common = common & e
        self._apply(s, common)

    # ------------------------------------------------------------ statements

    def _block(self, body: list[ast.stmt]) -> None:
        stmt = self._stmt
        for st in body:
            stmt(st)

    def _stmt(self, node: ast.stmt) -> None:
        h = _STMT.get(type(node))
        if h is None:
            self._generic(node)
        else:
            h(self, node)

    def _s_expr(self, node: ast.Expr) -> None:
        self._expr(node.value)

    def _s_assign(self, node: ast.Assign) -> None:
        self._expr(node.value)
        for t in node.targets:
            self._target(t)

    def _s_augassign(self, node: ast.AugAssign) -> None:
        t = node.target
        if type(t) is ast.Name:
            self._load(t.id)
            self._expr(node.value)
            self._store(t.id)
            return
        if type(t) is ast.Subscript:
            self._expr(t.value)
            self._expr(t.slice)
        elif type(t) is ast.Attribute:
            self._expr(t.value)
        self._expr(node.value)
        root = _root_name(t)
        if root is not None:
            self._mutate(root)

    def _s_annassign(self, node: ast.AnnAssign) -> None:
        s = self.scope
        t = node.target
        if node.value is not None:
            self._expr(node.value)
        if s.kind != _FUNC:  # annotations of local variables are not evaluated
            self._expr(node.annotation)
        if node.value is not None:
            self._target(t)
        elif type(t) is ast.Name:
            if s.kind == _FUNC:
                self._store(t.id)  # makes it local, binds nothing at notebook level
            elif not node.simple:
                self._load(t.id)
        elif s.kind != _FUNC and (type(t) is ast.Subscript or type(t) is ast.Attribute):
            self._expr(t.value)
            if type(t) is ast.Subscript:
                self._expr(t.slice)

    def _s_delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._del_target(t)

    def _del_target(self, t: ast.expr) -> None:
        if type(t) is ast.Name:
            self._store(t.id, _DELETE)
        elif type(t) is ast.Tuple or type(t) is ast.List:
            for e in t.elts:
                self._del_target(e)
        elif type(t) is ast.Subscript:
            self._store_base(t.value)
            self._expr(t.slice)
        elif type(t) is ast.Attribute:
            self._store_base(t.value)
        else:
            self._expr(t)

    def _s_import(self, node: ast.Import) -> None:
        for a in node.names:
            self._store(a.asname or a.name.partition(".")[0], _IMPORT)

    def _s_importfrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            if a.name == "*":
                self._unknown(
                    node, f"from {'.' * node.level}{node.module or ''} import * "
                    "binds names that cannot be known"
                )
            else:
                self._store(a.asname or a.name, _IMPORT)

    def _s_global(self, node: ast.Global) -> None:
        s = self.scope
        if s.kind != _MODULE:
            s.glob_decl.update(node.names)

    def _s_nonlocal(self, node: ast.Nonlocal) -> None:
        s = self.scope
        if s.kind == _FUNC:
            s.nonlocal_decl.update(node.names)

    def _s_pass(self, node: ast.stmt) -> None:
        pass

    def _s_return(self, node: ast.Return) -> None:
        if node.value is not None:
            self._expr(node.value)
        self.scope.dead = True  # harmless on function scopes

    def _s_raise(self, node: ast.Raise) -> None:
        if node.exc is not None:
            self._expr(node.exc)
        if node.cause is not None:
            self._expr(node.cause)
        self.scope.dead = True

    def _s_break(self, node: ast.Break) -> None:
        s = self.scope
        if s.flow and s.loops and not s.dead:
            mark, breaks = s.loops[-1]
            breaks.append(set(s.trail[mark:]))  # what is bound when leaving the loop here
        s.dead = True

    def _s_continue(self, node: ast.Continue) -> None:
        self.scope.dead = True

    def _s_assert(self, node: ast.Assert) -> None:
        self._expr(node.test)
        if node.msg is not None:
            self._expr(node.msg)

    def _s_if(self, node: ast.If) -> None:
        self._expr(node.test)
        s = self.scope
        if not s.flow:
            self._block(node.body)
            self._block(node.orelse)
            return
        if s.dead:
            self._block(node.body)
            self._block(node.orelse)
            return
        mark = len(s.trail)
        exits = []
        self._block(node.body)
        added = self._undo(s, mark)
        if not s.dead:
            exits.append(added)
        s.dead = False
        self._block(node.orelse)
        added = self._undo(s, mark)
        if not s.dead:
            exits.append(added)
        self._merge(s, exits)

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While, infinite: bool) -> None:
        """Body and ``else`` of a loop; the iterable or first test is already done."""
        s = self.scope
        if not s.flow or s.dead:
            if isinstance(node, (ast.For, ast.AsyncFor)):
                self._target(node.target, _LOOSE)
            elif not s.flow:
                self._expr(node.test)
            self._block(node.body)
            self._block(node.orelse)
            return
        mark = len(s.trail)
        breaks: list[set[str]] = []
        s.loops.append((mark, breaks))
        if isinstance(node, (ast.For, ast.AsyncFor)):
            self._target(node.target, _LOOSE)
        self._block(node.body)
        s.loops.pop()
        self._undo(s, mark)
        s.dead = False
        exits: list[set[str]] = []
        self._block(node.orelse)  # runs when the loop ends without break
        added = self._undo(s, mark)
        if not s.dead and not infinite:
            exits.append(added)
        exits.extend(breaks)
        self._merge(s, exits)

    def _s_for(self, node: ast.For | ast.AsyncFor) -> None:
        self._expr(node.iter)
        self._loop(node, False)

    def _s_while(self, node: ast.While) -> None:
        s = self.scope
        if not s.flow:
            self._loop(node, False)
            return
        self._expr(node.test)
        t = node.test
        self._loop(node, type(t) is ast.Constant and bool(t.value))

    def _s_try(self, node: ast.Try) -> None:
        s = self.scope
        if not s.flow or s.dead:
            self._block(node.body)
            for h in node.handlers:
                self._handler(h)
            self._block(node.orelse)
            self._block(node.finalbody)
            return
        mark = len(s.trail)
        exits = []
        self._block(node.body)
        self._block(node.orelse)
        added = self._undo(s, mark)
        if not s.dead:
            exits.append(added)
        for h in node.handlers:
            s.dead = False
            self._handler(h)
            added = self._undo(s, mark)
            if not s.dead:
                exits.append(added)
        s.dead = False
        fin: set[str] = set()
        fin_dead = False
        if node.finalbody:
            self._block(node.finalbody)
            fin = self._undo(s, mark)
            fin_dead = s.dead
        self._merge(s, exits)
        self._apply(s, fin)
        if fin_dead:
            s.dead = True

    def _handler(self, h: ast.ExceptHandler) -> None:
        if h.type is not None:
            self._expr(h.type)
        if h.name:
            self._store(h.name, _LOOSE)
        self._block(h.body)

    def _s_with(self, node: ast.With | ast.AsyncWith) -> None:
        suppress = False
        for item in node.items:
            self._expr(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
            suppress = suppress or _is_suppress(item.context_expr)
        s = self.scope
        if not suppress or not s.flow or s.dead:
            self._block(node.body)
            return
        mark = len(s.trail)
        self._block(node.body)
        self._undo(s, mark)
        s.dead = False

    def _s_match(self, node: ast.Match) -> None:
        self._expr(node.subject)
        s = self.scope
        flow = s.flow and not s.dead
        mark = len(s.trail) if flow else 0
        exits = []
        total = False
        for case in node.cases:
            self._pattern(case.pattern)
            if case.guard is not None:
                self._expr(case.guard)
            self._block(case.body)
            if flow:
                added = self._undo(s, mark)
                if not s.dead:
                    exits.append(added)
                s.dead = False
                if case.guard is None and _irrefutable(case.pattern):
                    total = True
        if flow:
            if not total:
                exits.append(set())
            self._merge(s, exits)

    def _pattern(self, p: ast.pattern) -> None:
        if type(p) is ast.MatchAs:
            if p.pattern is not None:
                self._pattern(p.pattern)
            if p.name is not None:
                self._store(p.name)
        elif type(p) is ast.MatchValue:
            self._expr(p.value)
        elif type(p) is ast.MatchSequence:
            for q in p.patterns:
                self._pattern(q)
        elif type(p) is ast.MatchStar:
            if p.name is not None:
                self._store(p.name)
        elif type(p) is ast.MatchMapping:
            for k in p.keys:
                self._expr(k)
            for q in p.patterns:
                self._pattern(q)
            if p.rest is not None:
                self._store(p.rest)
        elif type(p) is ast.MatchClass:
            self._expr(p.cls)
            for q in p.patterns:
                self._pattern(q)
            for q in p.kwd_patterns:
                self._pattern(q)
        elif type(p) is ast.MatchOr:
            for q in p.patterns:
                self._pattern(q)
        # MatchSingleton: nothing

    def _arguments_outer(self, args: ast.arguments, annotations: bool) -> None:
        """What a ``def``/``lambda`` evaluates where it is defined."""
        for d in args.defaults:
            self._expr(d)
        for kd in args.kw_defaults:
            if kd is not None:
                self._expr(kd)
        if annotations:
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs):
                if a.annotation is not None:
                    self._expr(a.annotation)
            for va in (args.vararg, args.kwarg):
                if va is not None and va.annotation is not None:
                    self._expr(va.annotation)

    @staticmethod
    def _params(args: ast.arguments) -> set[str]:
        names = {a.arg for a in args.posonlyargs}
        names.update(a.arg for a in args.args)
        names.update(a.arg for a in args.kwonlyargs)
        if args.vararg is not None:
            names.add(args.vararg.arg)
        if args.kwarg is not None:
            names.add(args.kwarg.arg)
        return names

    def _s_functiondef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self._expr(d)
        self._arguments_outer(node.args, True)
        if node.returns is not None:
            self._expr(node.returns)
        parent = self.scope
        self._store(node.name)  # before the body: recursion reads no notebook name
        fs = _Scope(_FUNC, parent)
        fs.locals = self._params(node.args)
        self.scope = fs
        self._block(node.body)
        self.scope = parent
        self._close_function(fs, True, parent)

    def _s_classdef(self, node: ast.ClassDef) -> None:
        for d in node.decorator_list:
            self._expr(d)
        for b in node.bases:
            self._expr(b)
        for k in node.keywords:
            self._expr(k.value)
        parent = self.scope
        cs = _Scope(_CLASS, parent)
        self.scope = cs
        self._block(node.body)
        self.scope = parent
        self._store(node.name)
        self._deliver(parent, cs.dloads, cs.dmuts, cs.dgloads, cs.dgmuts, True)

    # ------------------------------------------------------------ targets

    def _target(self, t: ast.expr, kind: int = _OTHER) -> None:
        if type(t) is ast.Name:
            self._store(t.id, kind)
        elif type(t) is ast.Tuple or type(t) is ast.List:
            for e in t.elts:
                self._target(e, kind)
        elif type(t) is ast.Starred:
            self._target(t.value, kind)
        elif type(t) is ast.Subscript:
            self._store_base(t.value)
            self._expr(t.slice)
        elif type(t) is ast.Attribute:
            self._store_base(t.value)
        else:
            self._expr(t)

    def _store_base(self, e: ast.expr) -> None:
        """``e`` is the object a subscript or attribute store changes in place."""
        if type(e) is ast.Name:
            self._mutate(e.id)
        elif type(e) is ast.Subscript:
            self._store_base(e.value)
            self._expr(e.slice)
        elif type(e) is ast.Attribute:
            if e.attr in _NS_ATTRS and _is_get_ipython_call(e.value):
                self._unknown(e, f"get_ipython().{e.attr} gives access to every name")
            self._store_base(e.value)
        else:
            self._expr(e)

    # ------------------------------------------------------------ expressions

    def _expr(self, node: ast.expr) -> None:
        tp = type(node)
        if type(node) is ast.Name:
            if type(node.ctx) is ast.Load:
                self._load(node.id)
            elif type(node.ctx) is ast.Store:
                self._store(node.id)
            else:
                self._store(node.id, _DELETE)
            return
        if tp is ast.Constant:
            return
        h = _EXPR.get(tp)
        if h is None:
            self._generic(node)
        else:
            h(self, node)

    def _generic(self, node: ast.AST) -> None:
        tp = type(node)
        fields = _FIELDS_CACHE.get(tp)
        if fields is None:
            fields = tuple(f for f in tp._fields if f not in _SKIP_FIELDS)
            _FIELDS_CACHE[tp] = fields
        expr = self._expr
        for f in fields:
            v = getattr(node, f, None)
            if type(v) is list:
                for x in v:
                    if isinstance(x, ast.expr):
                        expr(x)
                    elif isinstance(x, ast.stmt):
                        self._stmt(x)
                    elif isinstance(x, ast.AST):
                        self._generic(x)
            elif isinstance(v, ast.expr):
                expr(v)
            elif isinstance(v, ast.AST):
                self._generic(v)

    def _e_attribute(self, node: ast.Attribute) -> None:
        v = node.value
        if node.attr in _NS_ATTRS and _is_get_ipython_call(v):
            self._unknown(node, f"get_ipython().{node.attr} gives access to every name")
        self._expr(v)

    def _e_subscript(self, node: ast.Subscript) -> None:
        self._expr(node.value)
        self._expr(node.slice)

    def _e_binop(self, node: ast.BinOp) -> None:
        self._expr(node.left)
        self._expr(node.right)

    def _e_unaryop(self, node: ast.UnaryOp) -> None:
        self._expr(node.operand)

    def _e_compare(self, node: ast.Compare) -> None:
        self._expr(node.left)
        for c in node.comparators:
            self._expr(c)

    def _e_elts(self, node: ast.Tuple | ast.List | ast.Set) -> None:
        for e in node.elts:
            self._expr(e)

    def _e_starred(self, node: ast.Starred) -> None:
        self._expr(node.value)

    def _e_dict(self, node: ast.Dict) -> None:
        for k, v in zip(node.keys, node.values):
            if k is not None:
                self._expr(k)
            self._expr(v)

    def _e_call(self, node: ast.Call) -> None:
        f = node.func
        self._expr(f)
        for a in node.args:
            self._expr(a)
        for k in node.keywords:
            self._expr(k.value)
        if type(f) is ast.Name:
            name = f.id
            why = _UNKNOWN_CALLS.get(name)
            if why is None and not node.args and not node.keywords and self.scope.kind == _MODULE:
                why = _UNKNOWN_MODULE_CALLS.get(name)
            if why is not None:
                self._unknown(node, why)
        elif type(f) is ast.Attribute and _is_get_ipython_call(f.value):
            self._shell_call(node, f.attr)

    def _e_namedexpr(self, node: ast.NamedExpr) -> None:
        self._expr(node.value)
        s = self.scope
        if s.kind == _COMP:
            self._store_in(s.home, node.target.id)
        else:
            self._store(node.target.id)

    def _e_boolop(self, node: ast.BoolOp) -> None:
        values = node.values
        self._expr(values[0])
        s = self.scope
        if not s.flow:
            for v in values[1:]:
                self._expr(v)
            return
        mark = len(s.trail)
        for v in values[1:]:
            self._expr(v)
        self._undo(s, mark)  # the later operands may not run

    def _e_ifexp(self, node: ast.IfExp) -> None:
        self._expr(node.test)
        s = self.scope
        if not s.flow:
            self._expr(node.body)
            self._expr(node.orelse)
            return
        mark = len(s.trail)
        self._expr(node.body)
        a = self._undo(s, mark)
        self._expr(node.orelse)
        b = self._undo(s, mark)
        self._apply(s, a & b)

    def _e_lambda(self, node: ast.Lambda) -> None:
        self._arguments_outer(node.args, False)
        parent = self.scope
        fs = _Scope(_FUNC, parent)
        fs.locals = self._params(node.args)
        self.scope = fs
        self._expr(node.body)
        self.scope = parent
        self._close_function(fs, False, parent)

    def _e_comp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        gens = node.generators
        outer = self.scope
        self._expr(gens[0].iter)
        cs = _Scope(_COMP, outer)
        targets: set[str] = set()
        for g in gens:
            _target_names(g.target, targets)
        cs.targets = targets
        home = outer.home if outer.kind == _COMP else outer
        cs.home = home
        mark = len(home.trail) if outer.kind != _COMP and home.flow else -1
        self.scope = cs
        first = True
        for g in gens:
            if not first:
                self._expr(g.iter)
            first = False
            self._target(g.target)
            for c in g.ifs:
                self._expr(c)
        if isinstance(node, ast.DictComp):
            self._expr(node.key)
            self._expr(node.value)
        else:
            self._expr(node.elt)
        self.scope = outer
        if mark >= 0:
            self._undo(home, mark)  # a comprehension may run zero times

    # ------------------------------------------------------------ IPython

    def _shell_call(self, node: ast.Call, meth: str) -> None:
        """``get_ipython().meth(...)``: magics, shell commands, namespace access."""
        args = node.args
        if meth == "run_line_magic":
            name, line = _str_arg(args, 0), _str_arg(args, 1)
            if name is not None and line is not None:
                self._line_magic(node, name, line)
        elif meth == "run_cell_magic":
            name, line, cell = _str_arg(args, 0), _str_arg(args, 1), _str_arg(args, 2)
            if name is not None and line is not None and cell is not None:
                self._cell_magic(node, name, line, cell)
        elif meth in ("system", "getoutput"):
            self.magics.add("!")
            cmd = _str_arg(args, 0)
            if cmd is not None:
                self._expand(node, cmd)
        elif meth in _UNKNOWN_SHELL_ATTRS:
            self._unknown(node, f"get_ipython().{meth} can read and bind any name")

    def _line_magic(self, node: ast.Call, name: str, line: str) -> None:
        self.magics.add(name)
        if name == "time":
            self._inline(node, line[_NO_RAISE.match(line).end() :])  # type: ignore[union-attr]
        elif name == "timeit":
            stmt, var = _split_timeit(line)
            self._isolated(node, [stmt])
            if var is not None and var.isidentifier():
                self._store(var)
        elif name in _PINFO:
            m = _IDENT.match(line)
            if m is not None:
                self._load(m.group(1))
        elif name == "run":
            self._unknown(node, "%run can bind any name")
        elif name in ("reset", "reset_selective"):
            self._unknown(node, f"%{name} can delete any name")
        elif name == "xdel":
            self._expand(node, line)
            if line.strip().isidentifier():
                self._store(line.strip(), _DELETE)
        elif name == "store":
            self._expand(node, line)
            words = line.split()
            if "-r" in words:
                names = [w for w in words if w.isidentifier()]
                if not names:
                    self._unknown(node, "%store -r can bind any name")
                for w in names:
                    self._store(w)
            elif not any(w.startswith("-") for w in words):
                for w in words:
                    if w.isidentifier():
                        self._load(w)
        else:
            self._expand(node, line)

    def _cell_magic(self, node: ast.Call, name: str, line: str, cell: str) -> None:
        self.magics.add(name)
        if name == "time":
            self._inline(node, cell)
        elif name == "timeit":
            setup, var = _split_timeit(line)
            self._isolated(node, [setup, cell])
            if var is not None and var.isidentifier():
                self._store(var)
        elif name == "capture":
            self._expand(node, line)
            self._inline(node, cell)
            out = [w for w in line.split() if not w.startswith("-")]
            if out and out[0].isidentifier():
                self._store(out[0])
        else:
            self._expand(node, line)

    def _inline(self, node: ast.Call, code: str) -> None:
        """Code a magic runs in the user namespace, as if written here."""
        if self.scope.kind != _MODULE:
            self._isolated(node, [code])
            return
        tree = _parse_magic_code(code)
        if tree is None:
            return
        saved = self.line_override
        self.line_override = saved or node.lineno
        self._block(tree.body)
        self.line_override = saved

    def _isolated(self, node: ast.Call, codes: list[str]) -> None:
        """Code a magic runs in a function of its own (``%timeit``)."""
        parent = self.scope
        fs = _Scope(_FUNC, parent)
        saved = self.line_override
        self.line_override = saved or node.lineno
        self.scope = fs
        for code in codes:
            tree = _parse_magic_code(code)
            if tree is not None:
                self._block(tree.body)
        self.scope = parent
        self.line_override = saved
        self._close_function(fs, False, parent)

    def _expand(self, node: ast.Call, text: str) -> None:
        """Names IPython's ``$name``/``{expr}`` expansion reads in a magic line."""
        global _dollar_formatter
        if "$" not in text and "{" not in text:
            return
        try:
            if _dollar_formatter is None:
                from IPython.utils.text import DollarFormatter

                _dollar_formatter = DollarFormatter()
            parts = list(_dollar_formatter.parse(text))
        except Exception:
            return
        for _lit, field, spec, _conv in parts:
            if not field:
                continue
            src = f"{field}:{spec}" if spec else field
            try:
                e = compile(src, "<magic>", "eval", ast.PyCF_ONLY_AST, dont_inherit=True)
            except (SyntaxError, ValueError):
                continue
            assert isinstance(e, ast.Expression)  # mode "eval" gives an Expression
            saved = self.line_override
            self.line_override = saved or node.lineno
            self._expr(e.body)
            self.line_override = saved


_STMT: dict[type, Any] = {
    ast.Expr: _Analyzer._s_expr,
    ast.Assign: _Analyzer._s_assign,
    ast.AugAssign: _Analyzer._s_augassign,
    ast.AnnAssign: _Analyzer._s_annassign,
    ast.Delete: _Analyzer._s_delete,
    ast.Import: _Analyzer._s_import,
    ast.ImportFrom: _Analyzer._s_importfrom,
    ast.Global: _Analyzer._s_global,
    ast.Nonlocal: _Analyzer._s_nonlocal,
    ast.Pass: _Analyzer._s_pass,
    ast.Return: _Analyzer._s_return,
    ast.Raise: _Analyzer._s_raise,
    ast.Break: _Analyzer._s_break,
    ast.Continue: _Analyzer._s_continue,
    ast.Assert: _Analyzer._s_assert,
    ast.If: _Analyzer._s_if,
    ast.For: _Analyzer._s_for,
    ast.AsyncFor: _Analyzer._s_for,
    ast.While: _Analyzer._s_while,
    ast.Try: _Analyzer._s_try,
    ast.TryStar: _Analyzer._s_try,
    ast.With: _Analyzer._s_with,
    ast.AsyncWith: _Analyzer._s_with,
    ast.Match: _Analyzer._s_match,
    ast.FunctionDef: _Analyzer._s_functiondef,
    ast.AsyncFunctionDef: _Analyzer._s_functiondef,
    ast.ClassDef: _Analyzer._s_classdef,
}

_EXPR: dict[type, Any] = {
    ast.Attribute: _Analyzer._e_attribute,
    ast.Subscript: _Analyzer._e_subscript,
    ast.BinOp: _Analyzer._e_binop,
    ast.UnaryOp: _Analyzer._e_unaryop,
    ast.Compare: _Analyzer._e_compare,
    ast.Tuple: _Analyzer._e_elts,
    ast.List: _Analyzer._e_elts,
    ast.Set: _Analyzer._e_elts,
    ast.Starred: _Analyzer._e_starred,
    ast.Dict: _Analyzer._e_dict,
    ast.Call: _Analyzer._e_call,
    ast.NamedExpr: _Analyzer._e_namedexpr,
    ast.BoolOp: _Analyzer._e_boolop,
    ast.IfExp: _Analyzer._e_ifexp,
    ast.Lambda: _Analyzer._e_lambda,
    ast.ListComp: _Analyzer._e_comp,
    ast.SetComp: _Analyzer._e_comp,
    ast.GeneratorExp: _Analyzer._e_comp,
    ast.DictComp: _Analyzer._e_comp,
}

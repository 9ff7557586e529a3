"""Static analysis of the names a cell reads and binds (``ipytasks.namespace.analysis``)."""

from __future__ import annotations

import ast
import dataclasses
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipytasks.namespace.analysis import CellNames, analyze, analyze_source


def names(src: str) -> CellNames:
    return analyze_source(textwrap.dedent(src))


def ipy(src: str) -> CellNames:
    """Analyse ``src`` after IPython's input transformation, as the product does."""
    from IPython.core.inputtransformer2 import TransformerManager

    return analyze_source(TransformerManager().transform_cell(textwrap.dedent(src)))


# --------------------------------------------------------------------------- API


def test_analyze_takes_a_parsed_module() -> None:
    """``analyze`` works on an ``ast.Module`` as ``ast.parse`` returns it."""
    r = analyze(ast.parse("y = x + 1\n"))
    assert r == CellNames(reads=frozenset({"x"}), binds=frozenset({"y"}))


def test_cellnames_is_frozen_with_defaults() -> None:
    """``CellNames`` is immutable and only ``reads``/``binds`` are required."""
    r = CellNames(reads=frozenset(), binds=frozenset())
    assert r.mutates == r.deletes == r.imports == r.magics == frozenset()
    assert r.unknown is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.reads = frozenset({"x"})  # type: ignore[misc]


def test_analyze_source_allows_top_level_await() -> None:
    """Cells may use top-level ``await``, ``async for`` and ``async with``."""
    r = names(
        """
        await asyncio.sleep(t)
        async for item in stream:
            got = item
        async with lock as held:
            pass
        """
    )
    assert r.reads == {"asyncio", "t", "stream", "lock"}
    assert r.binds == {"item", "got", "held"}


def test_analyze_source_raises_on_syntax_error() -> None:
    """A cell that does not parse raises ``SyntaxError``."""
    with pytest.raises(SyntaxError):
        analyze_source("x = = 1")


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("x = 1\nprint(x)", False),
        ("print(x)\nx = 1", True),
        ("x = x + 1", True),
        ("x += 1", True),
        ("x = 1\nx += 1", False),
        ("del x\nprint(x)", False),
    ],
)
def test_straight_line_order(src: str, read: bool) -> None:
    """In straight-line code, a name bound (or deleted) before it is read is the cell's own."""
    assert ("x" in names(src).reads) is read


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("if c:\n    x = 1\nprint(x)", True),
        ("if c:\n    x = 1\nelse:\n    x = 2\nprint(x)", False),
        ("if c:\n    x = 1\nelif d:\n    x = 2\nprint(x)", True),
        ("if c:\n    x = 1\nelif d:\n    x = 2\nelse:\n    x = 3\nprint(x)", False),
        ("if c:\n    x = 1\nelse:\n    raise ValueError\nprint(x)", False),
        ("if c:\n    x = 1\n    print(x)", False),
    ],
)
def test_branches(src: str, read: bool) -> None:
    """After ``if``, a name counts as bound only if every branch that goes on binds it."""
    assert ("x" in names(src).reads) is read


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("for i in r:\n    total = total + i", True),
        ("total = 0\nfor i in r:\n    total = total + i", False),
        ("for i in r:\n    x = i\nprint(x)", True),
        ("for x in r:\n    pass\nprint(x)", True),
        ("for i in r:\n    print(x)\n    x = i", True),
        ("while c:\n    x = 1\nprint(x)", True),
        ("while True:\n    x = f()\n    if x:\n        break\nprint(x)", False),
        ("while True:\n    if c:\n        break\n    x = 1\nprint(x)", True),
        ("for i in r:\n    pass\nelse:\n    x = 1\nprint(x)", False),
        ("for i in r:\n    if i:\n        break\nelse:\n    x = 1\nprint(x)", True),
        ("for i in r:\n    if i:\n        x = 1\n        break\nelse:\n    x = 2\nprint(x)", False),
    ],
)
def test_loops(src: str, read: bool) -> None:
    """Loop bodies may run zero times; ``while True`` is left only by ``break``."""
    assert ("x" in names(src).reads or "total" in names(src).reads) is read


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("try:\n    x = f()\nexcept E:\n    pass\nprint(x)", True),
        ("try:\n    x = f()\nexcept E:\n    x = None\nprint(x)", False),
        ("try:\n    x = f()\nexcept E:\n    raise\nprint(x)", False),
        ("try:\n    f()\nexcept E:\n    print(x)\nx = 1", True),
        ("try:\n    x = f()\nexcept E:\n    print(x)", True),
        ("try:\n    f()\nfinally:\n    x = 1\nprint(x)", False),
        ("try:\n    f()\nexcept E:\n    pass\nelse:\n    x = 1\nprint(x)", True),
    ],
)
def test_try(src: str, read: bool) -> None:
    """Handlers may run after any part of the body; ``finally`` always runs."""
    assert ("x" in names(src).reads) is read


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("with open(f) as fh:\n    x = fh.read()\nprint(x)", False),
        ("with suppress(E):\n    x = f()\nprint(x)", True),
        ("with contextlib.suppress(E):\n    x = f()\nprint(x)", True),
    ],
)
def test_with(src: str, read: bool) -> None:
    """``with`` bodies count as run to the end, except under ``suppress(...)``."""
    assert ("x" in names(src).reads) is read


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("y = c and (x := 1)\nprint(x)", True),
        ("y = (x := 1) and c\nprint(x)", False),
        ("y = (x := 1) if c else (x := 2)\nprint(x)", False),
        ("y = (x := 1) if c else 0\nprint(x)", True),
        ("y = (x := 1) + x", False),
        ("y = x + (x := 1)", True),
    ],
)
def test_walrus_in_conditional_expressions(src: str, read: bool) -> None:
    """Walrus binds in the later operands of ``and``/``or`` and in one arm of ``if``-``else``
    expressions are not definite."""
    r = names(src)
    assert ("x" in r.reads) is read
    assert "x" in r.binds


def test_match_captures_and_reads() -> None:
    """``match`` captures are binds; class and value patterns read names."""
    r = names(
        """
        match p:
            case Point(x=px):
                pass
            case [a, *rest]:
                pass
            case {"k": v, **kw}:
                pass
            case Color.RED:
                pass
            case _ as z:
                pass
        """
    )
    assert r.binds == {"px", "a", "rest", "v", "kw", "z"}
    assert r.reads == {"p", "Point", "Color"}


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("match p:\n    case 1:\n        x = 1\n    case _:\n        x = 2\nprint(x)", False),
        ("match p:\n    case 1:\n        x = 1\n    case 2:\n        x = 2\nprint(x)", True),
        ("match p:\n    case 1:\n        x = 1\n    case x:\n        pass\nprint(x)", False),
        ("match p:\n    case 1:\n        x = 1\n    case _ if c:\n        x = 2\nprint(x)", True),
    ],
)
def test_match_flow(src: str, read: bool) -> None:
    """After ``match``, a name is bound if every case binds it and some case always matches."""
    assert ("x" in names(src).reads) is read


# --------------------------------------------------------------------------- stores


@pytest.mark.parametrize(
    ("src", "mutated"),
    [
        ("results['a'] = 1", "results"),
        ("obj.attr = 2", "obj"),
        ("del d['k']", "d"),
        ("del obj.attr", "obj"),
        ("df['x'][0] = 1", "df"),
        ("a.b.c = 1", "a"),
        ("for d['k'] in r:\n    pass", "d"),
        ("with cm() as obj.attr:\n    pass", "obj"),
    ],
)
def test_pure_stores_mutate_not_read(src: str, mutated: str) -> None:
    """A store into a subscript or attribute mutates its root name and does not read it."""
    r = names(src)
    assert r.mutates == {mutated}
    assert mutated not in r.reads
    assert mutated not in r.binds


@pytest.mark.parametrize("src", ["d[k] += 1", "d.count += 1", "d[k].n *= 2"])
def test_augmented_store_reads_and_mutates(src: str) -> None:
    """An augmented store into a subscript or attribute reads and mutates the root name."""
    r = names(src)
    assert "d" in r.reads
    assert r.mutates == {"d"}


def test_store_reads_subscript_and_value() -> None:
    """``a[i] = v`` reads ``i`` and ``v``; ``a.b[i].c = v`` mutates ``a`` only."""
    assert names("a[i] = v").reads == {"i", "v"}
    r = names("a.b[i].c = f(v)")
    assert r.reads == {"i", "f", "v"}
    assert r.mutates == {"a"}


def test_mutating_own_value_is_not_a_mutation() -> None:
    """Storing into a value the cell bound itself does not mutate the notebook's value."""
    r = names("d = {}\nd['a'] = 1\nd['a'] += 1")
    assert r.mutates == frozenset()
    assert r.reads == frozenset()
    assert r.binds == {"d"}


def test_method_calls_are_reads() -> None:
    """A mutating method call (``lst.append``) cannot be told from a pure one: a read."""
    r = names("lst.append(x)")
    assert r.reads == {"lst", "x"}
    assert r.mutates == frozenset()


def test_attribute_read_reads_base() -> None:
    """``df.shape`` reads ``df``."""
    assert names("n = df.shape[0]").reads == {"df"}


# --------------------------------------------------------------------------- binds


@pytest.mark.parametrize(
    ("src", "binds"),
    [
        ("x = 1", {"x"}),
        ("x = y = 1", {"x", "y"}),
        ("a, (b, c) = t", {"a", "b", "c"}),
        ("a, *rest = t", {"a", "rest"}),
        ("[a, b] = t", {"a", "b"}),
        ("x: int = 1", {"x"}),
        ("x: int", set()),
        ("x += 1", {"x"}),
        ("(y := 1)", {"y"}),
        ("print(y := 1)", {"y"}),
        ("import a.b", {"a"}),
        ("import a.b as c", {"c"}),
        ("from m import x as y", {"y"}),
        ("from m import x, z", {"x", "z"}),
        ("from . import sibling", {"sibling"}),
        ("def f():\n    pass", {"f"}),
        ("async def f():\n    pass", {"f"}),
        ("class C:\n    pass", {"C"}),
        ("for i, j in r:\n    pass", {"i", "j"}),
        ("with a as b, c as (d, e):\n    pass", {"b", "d", "e"}),
        ("try:\n    pass\nexcept E as err:\n    pass", {"err"}),
        ("try:\n    pass\nexcept* E as err:\n    pass", {"err"}),
        ("del x", {"x"}),
        ("del x, (y, z)", {"x", "y", "z"}),
        ("async for i in r:\n    pass", {"i"}),
        ("async with a as b:\n    pass", {"b"}),
        ("match p:\n    case {'k': v, **kw}:\n        pass", {"v", "kw"}),
    ],
)
def test_binds(src: str, binds: set[str]) -> None:
    """Every binding construct at top level puts its names in ``binds``."""
    assert names(src).binds == binds


def test_annotation_is_read() -> None:
    """Annotations at notebook level are evaluated: their names are read."""
    assert names("x: int").reads == {"int"}
    assert names("x: Dict[str, T] = {}").reads == {"Dict", "str", "T"}


def test_del_name_is_a_delete_and_a_bind() -> None:
    """``del name`` puts the name in ``deletes`` and ``binds``, not ``reads``."""
    r = names("del x")
    assert r.deletes == {"x"}
    assert r.binds == {"x"}
    assert r.reads == frozenset()


def test_except_name_is_bound() -> None:
    """``except … as e`` binds ``e`` (Python deletes it after the handler); inside the
    handler ``e`` is the cell's own, after the ``try`` it may still be the notebook's."""
    r = names("try:\n    f()\nexcept Exception as e:\n    print(e)")
    assert r.binds == {"e"}
    assert "e" not in r.reads
    assert "e" in names("try:\n    f()\nexcept Exception as e:\n    pass\nprint(e)").reads


@pytest.mark.parametrize(
    ("src", "imports"),
    [
        ("import os", {"os"}),
        ("import numpy as np\nfrom math import pi", {"np", "pi"}),
        ("import os\nos = None", set()),
        ("try:\n    import numpy as np\nexcept ImportError:\n    np = None", set()),
        ("import os\nx = 1", {"os"}),
        ("def f():\n    global np\n    import numpy as np", {"np"}),
    ],
)
def test_imports(src: str, imports: set[str]) -> None:
    """``imports`` holds the names bound only by import statements."""
    r = names(src)
    assert r.imports == imports
    assert r.imports <= r.binds


# --------------------------------------------------------------------------- nested scopes


def test_comprehension_variables_are_not_bound() -> None:
    """Comprehension loop variables stay in the comprehension; its free names are reads."""
    r = names("y = [x * k for x in data if x > lo]")
    assert r.binds == {"y"}
    assert r.reads == {"k", "data", "lo"}


@pytest.mark.parametrize(
    "src",
    [
        "s = {x for x in xs}",
        "d = {k: v for k, v in items}",
        "g = (x for x in xs)",
        "m = [[x * y for y in row] for row in xs for x in row]",
    ],
)
def test_comprehension_kinds(src: str) -> None:
    """Set, dict, generator and nested comprehensions bind only the assigned name."""
    r = names(src)
    assert len(r.binds) == 1
    assert r.reads <= {"xs", "items"}


def test_comprehension_first_iterable_is_outside() -> None:
    """The first iterable is evaluated outside the comprehension: ``[x for x in x]`` reads ``x``."""
    assert names("y = [x for x in x]").reads == {"x"}


def test_comprehension_sees_names_bound_before() -> None:
    """A comprehension reading a name the cell bound before does not read the notebook's."""
    assert names("k = 2\ny = [x * k for x in data]").reads == {"data"}


def test_walrus_in_comprehension_binds_at_top_level() -> None:
    """A walrus in a comprehension binds in the cell's scope, but not definitely."""
    r = names("ys = [(last := x) for x in xs]\nprint(last)")
    assert "last" in r.binds
    assert "x" not in r.binds
    assert "last" in r.reads  # the comprehension may run zero times


def test_function_free_names_are_reads_at_definition() -> None:
    """Free names of a function body are reads at the point of definition."""
    r = names("def f(a):\n    b = a + 1\n    return helper(b) + scale")
    assert r.reads == {"helper", "scale"}
    assert r.binds == {"f"}


def test_function_free_names_bound_before() -> None:
    """A free name bound by the cell before the ``def`` is the cell's own."""
    assert names("scale = 2\ndef f(a):\n    return a * scale").reads == frozenset()


def test_function_free_names_bound_after() -> None:
    """A free name bound only after the ``def`` is still a read (decided at definition)."""
    assert names("def f(a):\n    return a * scale\nscale = 2\nf(1)").reads == {"scale"}


def test_function_locals_are_not_reads() -> None:
    """Names local to a function (even when read before assigned there) are not reads."""
    r = names("def f():\n    print(q)\n    q = 1\n    for i in r:\n        pass")
    assert r.reads == {"print", "r"}


def test_recursion_is_not_a_read() -> None:
    """A function calling itself does not read the notebook's function of that name."""
    assert names("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)").reads == frozenset()


def test_lambda_free_names() -> None:
    """Lambdas read their free names at definition; their parameters are their own."""
    r = names("key = lambda item, w=default: (item[0] * w, weights[item])")
    assert r.reads == {"default", "weights"}
    assert r.binds == {"key"}


def test_defaults_decorators_annotations_are_reads() -> None:
    """Defaults, decorators and annotations are evaluated at definition time."""
    r = names(
        """
        @cache
        @register(registry)
        def f(a: A, b=dflt, *args: Args, c: C = kdflt, **kw: KW) -> R:
            pass
        """
    )
    assert r.reads == {
        *("cache", "register", "registry"),
        *("A", "dflt", "Args", "C", "kdflt", "KW", "R"),
    }


def test_nested_functions() -> None:
    """A nested function's free names resolve in the enclosing function first."""
    r = names(
        """
        def outer(x):
            y = 1
            def inner():
                return x + y + z
            return inner
        """
    )
    assert r.reads == {"z"}


def test_nonlocal() -> None:
    """``nonlocal`` names belong to the enclosing function, not the notebook."""
    r = names(
        """
        def counter():
            n = 0
            def inc():
                nonlocal n
                n += 1
                return n
            return inc
        """
    )
    assert r.reads == frozenset()
    assert r.binds == {"counter"}


def test_global_assignment_binds() -> None:
    """A name declared ``global`` and assigned in a nested function is bound by the cell."""
    r = names("def setup():\n    global CONFIG\n    CONFIG = load()")
    assert r.binds == {"setup", "CONFIG"}
    assert r.reads == {"load"}


def test_global_augmented_reads_and_binds() -> None:
    """``global n; n += 1`` in a function reads and binds ``n``."""
    r = names("def bump():\n    global n\n    n += 1")
    assert "n" in r.reads
    assert "n" in r.binds


def test_global_mutation_only() -> None:
    """A ``global`` name only mutated in a nested function is in ``mutates``, not ``binds``."""
    r = names("def put(k, v):\n    global cache\n    cache[k] = v")
    assert r.mutates == {"cache"}
    assert r.binds == {"put"}
    assert r.reads == frozenset()


def test_global_bypasses_enclosing_function() -> None:
    """``global x`` in an inner function refers to the notebook's ``x``, not the outer local."""
    r = names(
        """
        def outer():
            x = 1
            def inner():
                global x
                return x
            return inner
        """
    )
    assert r.reads == {"x"}


def test_free_subscript_store_in_function_mutates() -> None:
    """``d[k] = v`` inside a function with ``d`` not local mutates the notebook's ``d``."""
    r = names("def record(k, v):\n    results[k] = v")
    assert r.mutates == {"results"}
    assert r.reads == frozenset()


def test_class_body_is_flow_sensitive() -> None:
    """A class body runs at definition; its own names are not visible to its methods."""
    r = names(
        """
        class Model(Base, metaclass=Meta):
            rate = 0.1
            scaled = rate * factor
            items = [rate * x for x in xs]
            def step(self):
                return rate + Model.rate
        """
    )
    # `rate` in the method is the notebook's (class names are invisible there);
    # `rate` in the comprehension element likewise; `Model` is bound by then.
    assert r.reads == {"Base", "Meta", "factor", "xs", "rate"}
    assert r.binds == {"Model"}


def test_class_name_in_own_body_is_read() -> None:
    """The class body runs before the class name is bound."""
    assert names("class A:\n    other = A").reads == {"A"}


def test_class_in_function() -> None:
    """A class nested in a function resolves free names in that function."""
    r = names("def make(base):\n    class Sub(base):\n        x = base.x + y\n    return Sub")
    assert r.reads == {"y"}


# --------------------------------------------------------------------------- unknown


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        (
            "x = 1\ny = 2\nfrom os import *",
            "line 3: from os import * binds names that cannot be known",
        ),
        ("x = 1\nexec(code)", "line 2: exec() can read and bind any name"),
        ("y = eval('x + 1')", "line 1: eval() can read and bind any name"),
        ("g = globals()", "line 1: globals() gives access to every name"),
        ("ns = locals()", "line 1: locals() gives access to every name"),
        ("ns = vars()", "line 1: vars() without arguments gives access to every name"),
        ("def f():\n    exec(code)", "line 2: exec() can read and bind any name"),
        ("def f():\n    return globals()", "line 2: globals() gives access to every name"),
        ("from .pkg import *", "line 1: from .pkg import * binds names that cannot be known"),
    ],
)
def test_unknown(src: str, reason: str) -> None:
    """Constructs that can read or bind any name make the cell unknown, with line and reason."""
    assert names(src).unknown == reason


@pytest.mark.parametrize(
    "src",
    [
        "v = vars(obj)",
        "def f():\n    return locals()",
        "class A:\n    ns = locals()",
        "r = df.eval('a + b')",
        "x = 1",
    ],
)
def test_not_unknown(src: str) -> None:
    """``vars(obj)``, ``locals()`` inside a function or class and ``.eval`` methods are fine."""
    assert names(src).unknown is None


def test_unknown_keeps_analysing() -> None:
    """An unknown cell still reports what it can, and the first reason found."""
    r = names("a = b\nexec(c)\neval(d)")
    assert r.unknown == "line 2: exec() can read and bind any name"
    assert r.reads >= {"b", "c", "d"}
    assert r.binds == {"a"}


# --------------------------------------------------------------------------- magics


def test_time_line_magic_analysed_inline() -> None:
    """``%time`` runs its code in the user namespace: it reads and binds like the cell."""
    r = ipy("%time x = a + 1\nprint(x)")
    assert r.binds == {"x"}
    assert {"a", "print"} <= r.reads
    assert "x" not in r.reads
    assert r.magics == {"time"}
    assert r.unknown is None


def test_time_line_magic_expression_value() -> None:
    """``r = %time f(a)`` reads ``f`` and ``a`` and binds ``r``."""
    r = ipy("r = %time f(a)")
    assert r.binds == {"r"}
    assert {"f", "a"} <= r.reads


def test_time_cell_magic() -> None:
    """``%%time`` analyses the cell body in place."""
    r = ipy("%%time\ny = a\nz = y\n")
    assert r.binds == {"y", "z"}
    assert r.reads - {"get_ipython"} == {"a"}


def test_timeit_reads_but_binds_nothing() -> None:
    """``%timeit`` runs its statement in a function: free names are read, nothing is bound."""
    r = ipy("%timeit -n 3 -r 2 y = f(b)")
    assert r.binds == frozenset()
    assert r.reads - {"get_ipython"} == {"f", "b"}


def test_timeit_save_option_binds() -> None:
    """``%timeit -v res …`` binds ``res``."""
    assert ipy("%timeit -o -v res f(x)").binds == {"res"}


def test_timeit_cell_magic() -> None:
    """``%%timeit`` reads the setup line's and the body's free names, binds nothing."""
    r = ipy("%%timeit -n1 data = load(path)\nprocess(data)\n")
    assert r.binds == frozenset()
    assert r.reads - {"get_ipython"} == {"load", "path", "process"}


def test_capture_cell_magic() -> None:
    """``%%capture out`` analyses the body in place and binds ``out``."""
    r = ipy("%%capture out --no-stderr\nw = compute(q)\n")
    assert r.binds == {"out", "w"}
    assert r.reads - {"get_ipython"} == {"compute", "q"}


@pytest.mark.parametrize(
    "src", ["%matplotlib inline", "%load_ext autoreload", "%pip install numpy", "%%bash\nls\n"]
)
def test_other_magics_are_not_unknown(src: str) -> None:
    """Other magics do not make the cell unknown; their names are in ``magics``."""
    r = ipy(src)
    assert r.unknown is None
    assert r.magics
    assert r.binds == frozenset()


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("%run script.py", "line 1: %run can bind any name"),
        ("x = 1\n%reset -f", "line 2: %reset can delete any name"),
        ("%store -r", "line 1: %store -r can bind any name"),
        (
            "get_ipython().user_ns['x'] = 1",
            "line 1: get_ipython().user_ns gives access to every name",
        ),
        (
            "get_ipython().run_cell(code)",
            "line 1: get_ipython().run_cell can read and bind any name",
        ),
    ],
)
def test_namespace_changing_magics_are_unknown(src: str, reason: str) -> None:
    """Magics and shell calls that run code or delete names make the cell unknown."""
    assert ipy(src).unknown == reason


@pytest.mark.parametrize(
    ("src", "read"),
    [
        ("!ls $folder", "folder"),
        ("files = !ls {folder}", "folder"),
        ("!echo {n + offset}", "offset"),
        ("%cd $target.path", "target"),
        ("x?", "x"),
        ("obj.method??", "obj"),
    ],
)
def test_magic_lines_read_expanded_names(src: str, read: str) -> None:
    """``$name`` and ``{expr}`` in magic lines and shell commands, and ``x?``, are reads."""
    r = ipy(src)
    assert read in r.reads
    assert r.unknown is None


def test_shell_command_magic_name() -> None:
    """Shell commands are recorded as ``!`` in ``magics``; no expansion, no reads but the call."""
    r = ipy("!ls -la\nout = !pwd")
    assert r.magics == {"!"}
    assert r.reads == {"get_ipython"}
    assert r.binds == {"out"}


def test_xdel_and_store() -> None:
    """``%xdel x`` deletes ``x``; ``%store y`` reads ``y``; ``%store -r z`` binds ``z``."""
    r = ipy("%xdel x\n%store y\n%store -r z")
    assert r.deletes == {"x"}
    assert "y" in r.reads
    assert r.binds == {"x", "z"}


# --------------------------------------------------------------------------- builtins


def test_builtins_are_reported() -> None:
    """Builtins are reads like any name; the caller filters by the user namespace."""
    assert names("n = len(xs)\nprint(n)").reads == {"len", "xs", "print"}


# --------------------------------------------------------------------------- property


_SCALARS = ("a", "b", "c")
_TRACKED = frozenset({"a", "b", "c", "d"})


@st.composite
def _expr(draw: st.DrawFn, live: frozenset[str], depth: int = 0) -> str:
    choices = ["int"] + (["name"] if live else []) + (["add", "walrus"] if depth < 3 else [])
    kind = draw(st.sampled_from(choices))
    if kind == "int":
        return str(draw(st.integers(0, 9)))
    if kind == "name":
        return draw(st.sampled_from(sorted(live)))
    if kind == "add":
        return f"({draw(_expr(live, depth + 1))} + {draw(_expr(live, depth + 1))})"
    return f"({draw(st.sampled_from(_SCALARS))} := {draw(_expr(live, depth + 1))})"


@st.composite
def _program(draw: st.DrawFn) -> str:
    """A straight-line program over ints ``a``, ``b``, ``c`` and a dict-like ``d``.

    It never loads a name it has deleted, so it runs without ``NameError``.
    """
    deleted: set[str] = set()
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        live = frozenset(n for n in _SCALARS if n not in deleted)
        ops = ["assign", "multi", "unpack", "rebind_d"]
        if live:
            ops += ["aug", "del"]
        if "d" not in deleted:
            ops += ["dstore", "daug", "ddel", "deld"]
        op = draw(st.sampled_from(ops))
        e = lambda: draw(_expr(live))  # noqa: E731
        target = lambda: draw(st.sampled_from(_SCALARS))  # noqa: E731
        if op == "assign":
            line = f"{target()} = {e()}"
        elif op == "multi":
            line = f"{target()} = {target()} = {e()}"
        elif op == "unpack":
            line = f"{target()}, {target()} = {e()}, {e()}"
        elif op == "rebind_d":
            line = "d = new_sink()"
        elif op == "aug":
            line = f"{draw(st.sampled_from(sorted(live)))} += {e()}"
        elif op == "del":
            line = f"del {draw(st.sampled_from(sorted(live)))}"
        elif op == "dstore":
            line = f"d[{e()}] = {e()}"
        elif op == "daug":
            line = f"d[{e()}] += {e()}"
        elif op == "ddel":
            line = f"del d[{e()}]"
        else:
            line = "del d"
        tree = ast.parse(line)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                if isinstance(node.ctx, ast.Del):
                    deleted.add(node.id)
                else:
                    deleted.discard(node.id)
        lines.append(line)
    return "\n".join(lines) + "\n"


class _Sink:
    """Stands for the notebook's dict ``d``; logs what is done to it."""

    def __init__(self, log: list[tuple[str, str]], tag: str) -> None:
        self.log, self.tag = log, tag

    def __getitem__(self, key: object) -> int:
        self.log.append(("sink_get", self.tag))
        return 0

    def __setitem__(self, key: object, value: object) -> None:
        self.log.append(("sink_set", self.tag))

    def __delitem__(self, key: object) -> None:
        self.log.append(("sink_del", self.tag))


class _TracingDict(dict):
    """Namespace used as *locals* of ``exec`` so that every name access is traced."""

    def __init__(self, init: dict[str, object], log: list[tuple[str, str]]) -> None:
        super().__init__(init)
        self.log = log

    def __getitem__(self, key: str) -> object:
        self.log.append(("load", key))
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: object) -> None:
        self.log.append(("store", key))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append(("delete", key))
        super().__delitem__(key)


def _trace(src: str) -> tuple[set[str], set[str], set[str], set[str]]:
    """Run ``src`` against a traced namespace: (reads, binds, deletes, mutates) observed."""
    log: list[tuple[str, str]] = []
    ns = _TracingDict({"a": 1, "b": 2, "c": 3, "d": _Sink(log, "notebook")}, log)
    new_sink = lambda: _Sink(log, "cell")  # noqa: E731
    exec(compile(src, "<prop>", "exec"), {"__builtins__": __builtins__, "new_sink": new_sink}, ns)
    reads: set[str] = set()
    binds: set[str] = set()
    deletes: set[str] = set()
    mutates: set[str] = set()
    own: set[str] = set()
    for i, (event, name) in enumerate(log):
        if event in ("sink_set", "sink_del") and name == "notebook":
            mutates.add("d")
        if name not in _TRACKED:
            continue
        if event == "load" and name not in own:
            if name == "d":
                # the notebook's d is read unless the load only serves a pure store into it
                nxt = next(ev for ev, tag in log[i + 1 :] if ev.startswith("sink_"))
                if nxt == "sink_get":
                    reads.add(name)
            else:
                reads.add(name)
        elif event in ("store", "delete"):
            own.add(name)
            binds.add(name)
            if event == "delete":
                deletes.add(name)
    return reads, binds, deletes, mutates


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_program())
def test_straight_line_reads_match_execution(src: str) -> None:
    """On straight-line programs, ``reads``/``binds``/``deletes``/``mutates`` are exactly what
    a traced execution observes: a name is read iff its first use is a load of its value."""
    reads, binds, deletes, mutates = _trace(src)
    r = analyze_source(src)
    assert r.reads & _TRACKED == reads, src
    assert r.binds & _TRACKED == binds, src
    assert r.deletes & _TRACKED == deletes, src
    assert r.mutates & _TRACKED == mutates, src
    assert r.unknown is None


@pytest.mark.parametrize(
    ("src", "loose"),
    [
        ("for i in range(3):\n    print(i)", {"i"}),
        ("for k, v in d.items():\n    out[k] = v", {"k", "v"}),
        ("try:\n    f()\nexcept E as e:\n    print(e)", {"e"}),
        ("_ = f()", {"_"}),
        ("for i in x:\n    pass\nprint(i)", set()),  # read after the loop: maybe not bound by it
        ("print(i)\nfor i in x:\n    pass", set()),  # read from the notebook first
        ("i = 0\nfor i in x:\n    pass", set()),  # also bound as an ordinary name
        ("for i in x:\n    pass\ndel i", set()),
        ("def f():\n    global i\n    for i in x:\n        pass", set()),
        ("get_ipython().run_line_magic('time', 'for j in x: pass')", set()),  # the magic's own
    ],
)
def test_loose_names_are_loop_and_except_targets_only(src: str, loose: set[str]) -> None:
    """``loose``: names bound only as ``for``/``except … as`` targets (or ``_``) and not read."""
    assert names(src).loose == loose

"""Watching a running body: its tqdm bars told instead of drawn, and where it is.

Shared by the kernel (thread and async tasks: :mod:`ipytasks.reports`,
:mod:`ipytasks.costs`) and the worker process (process and dask tasks: :mod:`.child`,
whose notes carry what it sees to the kernel), so it needs nothing but the standard
library. tqdm is patched only once it is imported, by whoever imports it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a worker 15 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ("TqdmWatch", "bar_state", "where_text", "where_words")


class _Discard:
    """The stream a task's tqdm bar writes to: nothing is shown, it is told instead.

    It says it is a terminal, so that ``disable=None`` (off when not a terminal) counts.
    """

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _NoWidget:
    """Stands in for ``tqdm.notebook``'s widgets in a task: takes every change, shows none."""

    children = property(lambda self: (self, self, self))

    def __getattr__(self, name: str) -> Any:
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


_DISCARD = _Discard()
_NO_WIDGET = _NoWidget()


def bar_state(bar: Any) -> dict[str, Any]:
    """A tqdm bar as plain data: ``n``, ``total``, ``rate`` (per second or ``None``),
    ``elapsed``, ``note`` (its description and postfix), ``unit``."""
    d = bar.format_dict
    n, total, rate = d.get("n") or 0, d.get("total"), d.get("rate")
    scale = d.get("unit_scale")
    if scale and scale is not True:  # a factor: the bar shows n * scale
        n, total = n * scale, total * scale if total is not None else None
        rate = rate * scale if rate is not None else None
    elapsed = d.get("elapsed") or 0.0
    if rate is None and elapsed > 0:
        rate = (n - (d.get("initial") or 0)) / elapsed
    note = " ".join(str(x) for x in (d.get("prefix"), d.get("postfix")) if x)
    return {"n": n, "total": total, "rate": rate, "elapsed": elapsed, "note": note,
            "unit": str(d.get("unit") or "it")}


class TqdmWatch:
    """Every tqdm bar made where ``owner()`` returns something is told, not drawn.

    ``report(owner, key, state, closed)`` receives the bar's :func:`bar_state` each time
    the bar would redraw (tqdm spaces those out by ``mininterval``) and when it closes;
    ``key`` tells the bars of one owner apart. A bar made elsewhere is left alone.

    How: ``tqdm.std.tqdm.__new__`` (every bar class passes there) makes such a bar an
    instance of a subclass of its own class whose ``display`` reports; a
    ``tqdm.notebook`` bar gets no widgets (``status_printer``) and is not displayed.
    Every ``__init__`` of the bar's classes runs as usual (``tqdm.auto``'s asyncio part
    included). tqdm is patched when it is imported, or at once if it is already.
    """

    _HOOKED = "tqdm.std"

    def __init__(self, owner: Any, report: Any) -> None:
        self.owner = owner
        self.report = report
        self._classes: dict[type, type] = {}
        self._original: Any = None
        self._base: Any = None
        self._hooked = False

    # -- installing ---------------------------------------------------------------------

    def install(self) -> None:
        std = sys.modules.get(self._HOOKED)
        if std is not None:
            self._patch(std)
        elif not self._hooked:
            self._hooked = True
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self._hooked = False
        base = self._base
        if base is not None and base.__dict__.get("__new__") is not self._original:
            base.__new__ = self._original
        self._base = self._original = None

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self._HOOKED:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self._patch)
                return spec
        return None

    def _patch(self, std: Any) -> None:
        base = std.tqdm
        if self._base is base:
            return
        self._base = base
        self._original = original = base.__dict__["__new__"]
        new = original.__func__ if isinstance(original, staticmethod) else original
        owner_of, class_for = self.owner, self._class_for

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            owner = owner_of()
            if owner is None or "_ipytasks_told" in cls.__dict__:
                return new(cls, *args, **kwargs)
            bar = new(class_for(cls), *args, **kwargs)
            bar._ipytasks_owner = owner
            return bar

        base.__new__ = staticmethod(__new__)

    # -- a bar that tells ---------------------------------------------------------------

    def _class_for(self, cls: type) -> type:
        made = self._classes.get(cls)
        if made is not None:
            return made
        notebook = any(k.__name__ == "tqdm_notebook" for k in cls.__mro__)
        tell = self._tell

        def __init__(bar: Any, *args: Any, **kwargs: Any) -> None:
            if notebook:
                kwargs["display"] = False
            else:
                kwargs["file"] = _DISCARD
            cls.__init__(bar, *args, **kwargs)  # type: ignore[misc]

        def display(bar: Any, *args: Any, close: bool = False, **kwargs: Any) -> bool:
            tell(bar, close)
            return True

        def close(bar: Any) -> None:
            was_on = not getattr(bar, "disable", True)
            try:
                cls.close(bar)  # type: ignore[attr-defined]
            finally:
                if was_on:
                    tell(bar, True)

        def status_printer(*args: Any, **kwargs: Any) -> Any:
            return _NO_WIDGET if notebook else _DISCARD.write

        made = type(cls.__name__, (cls,), {
            "__init__": __init__, "display": display, "close": close,
            "status_printer": staticmethod(status_printer),
            "clear": lambda bar, *a, **k: None, "moveto": lambda bar, *a, **k: None,
            "_ipytasks_told": True, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        })
        self._classes[cls] = made
        return made

    def _tell(self, bar: Any, closed: bool) -> None:
        owner = getattr(bar, "_ipytasks_owner", None)
        if owner is None:
            return
        try:
            self.report(owner, id(bar), bar_state(bar), closed)
        except Exception:  # noqa: BLE001 - a progress report must never break the loop it counts
            pass


class _PatchingLoader:
    """Loads a module as usual, then hands it to ``patch``."""

    def __init__(self, loader: Any, patch: Any) -> None:
        self.loader = loader
        self.patch = patch

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def where_text(frame: Any, cell_filename: str) -> str | None:
    """Where a body is: ``line 3 of the cell``, and the innermost frame below the cell's
    when the body is in a function it called (``line 3 of the cell › linalg.py:120 in solve``)."""
    innermost = frame
    while frame is not None and frame.f_code.co_filename != cell_filename:
        frame = frame.f_back
    return where_words(frame.f_lineno if frame is not None else None,
                       innermost if innermost is not frame else None)


def where_words(cell_line: int | None, inner: Any) -> str | None:
    """``line 3 of the cell › linalg.py:120 in solve`` (either part may be missing)."""
    parts = []
    if cell_line is not None:
        parts.append(f"line {cell_line} of the cell")
    if inner is not None:
        code = inner.f_code
        path = code.co_filename.replace("\\", "/").rsplit("/", 2)
        parts.append(f"{'/'.join(path[-2:])}:{inner.f_lineno} in {code.co_name}")
    return " › ".join(parts) or None

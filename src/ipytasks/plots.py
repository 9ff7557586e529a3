"""Plots made by tasks: each task draws on its own pyplot figures, shown in its own cell.

pyplot keeps every open figure in one registry, ``matplotlib._pylab_helpers.Gcf.figs``;
its "current figure" is the last one there. The notebook's inline backend shows what
is in that registry from a post-execute hook, at the end of whichever cell finishes
next. So, left alone, a figure drawn by a task lands in an unrelated cell (maybe half
drawn), and two tasks calling ``plt.plot`` draw on the same figure.

While ipytasks is loaded, ``Gcf.figs`` is replaced by :class:`FigureRegistry`, which
answers from the running task's own registry (a context variable the scheduler sets
for each attempt of a task) and from the original registry everywhere else. Each
task therefore has its own current figure and axes, ordinary cells see exactly the
figures they would without ipytasks, and the inline backend's hook never sees a
task's figures. When a body ends, :func:`show_figures` shows the figures it left
open in the task's output, rendered by IPython's display formatter (so
``%config InlineBackend`` formats, dpi and ``bbox_inches`` apply), and closes them.

Nothing here imports matplotlib: the registry is replaced when ``matplotlib.pyplot``
is already imported, or by an import hook at the moment it is (by a cell or a task).
Worker processes (process and dask modes) render their figures themselves: see
:mod:`ipytasks.workers.child`; :func:`inline_settings` is what they are told.
"""

from __future__ import annotations

import collections
import contextvars
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .output import TaskOutput

__all__ = (
    "FigureRegistry",
    "install",
    "inline_settings",
    "open_task_figures",
    "show_figures",
    "uninstall",
)

_HELPERS = "matplotlib._pylab_helpers"

#: The figure managers of the task whose code runs in this context (``None``: not a task).
task_figures: contextvars.ContextVar[collections.OrderedDict[Any, Any] | None] = (
    contextvars.ContextVar("ipytasks_task_figures", default=None)
)

#: Backends whose canvas needs a GUI main loop, which a task cannot drive.
GUI_BACKEND = (
    "ipytasks: figure {num} of task {name!r} uses the {backend} backend, which cannot draw "
    "from a task (it needs the main thread); use %matplotlib inline or %matplotlib widget\n"
)
#: What matplotlib_inline's InlineBackend uses when nobody configured it.
DEFAULT_FORMATS = ("png",)
DEFAULT_PRINT_KWARGS: dict[str, Any] = {"bbox_inches": "tight"}


class FigureRegistry:
    """Stands in for ``Gcf.figs``: the running task's figures, or the notebook's.

    Implements what matplotlib does with that ``OrderedDict`` (``get``, ``pop``,
    ``values``, ``move_to_end``…) by handing each call to the registry of the
    current context.
    """

    __slots__ = ("shared",)

    def __init__(self, shared: collections.OrderedDict[Any, Any]) -> None:
        self.shared = shared

    def _figs(self) -> collections.OrderedDict[Any, Any]:
        figs = task_figures.get()
        return self.shared if figs is None else figs

    def __getitem__(self, key: Any) -> Any:
        return self._figs()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._figs()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._figs()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._figs()

    def __iter__(self) -> Any:
        return iter(self._figs())

    def __reversed__(self) -> Any:
        return reversed(self._figs())

    def __len__(self) -> int:
        return len(self._figs())

    def __bool__(self) -> bool:
        return bool(self._figs())

    def __repr__(self) -> str:
        return f"FigureRegistry({self._figs()!r})"

    def __getattr__(self, name: str) -> Any:
        # get, pop, values, keys, items, clear, move_to_end, setdefault, popitem, copy...
        return getattr(self._figs(), name)


# -- installing -------------------------------------------------------------------------


class _HelpersLoader:
    """Loads ``matplotlib._pylab_helpers`` as usual, then installs the registry."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename... (tracebacks)
        return getattr(self.loader, name)


class _ImportHook:
    """A ``sys.meta_path`` finder that only watches for ``matplotlib._pylab_helpers``."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _HELPERS:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HelpersLoader(spec.loader)
        return spec


_lock = threading.Lock()
_hook: _ImportHook | None = None


def _patch(helpers: Any) -> None:
    with _lock:
        gcf = helpers.Gcf
        if not isinstance(gcf.figs, FigureRegistry):
            gcf.figs = FigureRegistry(gcf.figs)


def install() -> None:
    """Give tasks their own pyplot figures from now on (imports nothing)."""
    global _hook
    helpers = sys.modules.get(_HELPERS)
    if helpers is not None:
        _patch(helpers)
        return
    with _lock:
        if _hook is None:
            _hook = _ImportHook()
            sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    """Put pyplot's own registry back (figures tasks still hold stay theirs)."""
    global _hook
    with _lock:
        if _hook is not None:
            if _hook in sys.meta_path:
                sys.meta_path.remove(_hook)
            _hook = None
        helpers = sys.modules.get(_HELPERS)
        if helpers is not None and isinstance(helpers.Gcf.figs, FigureRegistry):
            helpers.Gcf.figs = helpers.Gcf.figs.shared


# -- a task's figures ----------------------------------------------------------------------


def open_task_figures() -> collections.OrderedDict[Any, Any]:
    """Start an empty figure registry for the task running in this context; return it."""
    figs: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    task_figures.set(figs)
    return figs


def _backend_name() -> str:
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return ""
    try:
        return str(matplotlib.get_backend())
    except Exception:  # noqa: BLE001 - a broken backend setting: treat it as unknown
        return ""


def _is_widget(canvas: Any) -> bool:
    return hasattr(canvas, "_repr_mimebundle_") and hasattr(canvas, "comm")


def _widget_shown(canvas: Any, sink: TaskOutput) -> bool:
    """Whether the task displayed this canvas already (``plt.show()``, ``display(canvas)``).

    Asked of the task's own outputs: ipympl's list of figures to show is emptied at the end
    of every cell, whichever cell ends while the task runs.
    """
    model_id = getattr(canvas, "model_id", None)
    for output in list(sink.outputs):
        if not isinstance(output, dict):  # a stream
            continue
        view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        if isinstance(view, dict) and view.get("model_id") == model_id:
            return True
    return False


def _inline_metadata(fig: Any) -> dict[str, Any]:
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    fetch = getattr(inline, "_fetch_figure_metadata", None)
    if fetch is None:
        return {}
    try:
        return fetch(fig) or {}
    except Exception:  # noqa: BLE001 - a hint for dark themes only
        return {}


def show_figures(
    figs: collections.OrderedDict[Any, Any],
    shell: InteractiveShell,
    sink: TaskOutput,
    *,
    result: Any = None,
    name: str = "",
    show: bool = True,
) -> None:
    """Show the figures a task left open in its output, as the inline backend would, and
    close them. Runs in the task's context (closing goes to the task's registry).

    ``result``, when it is one of them, is left to be shown as the task's result. With
    ``show=False`` (a cancelled body) they are only closed. Widget canvases (ipympl)
    are displayed and stay open: closing one would end its live view.
    """
    managers = list(figs.values())
    if not managers:
        return
    backend = _backend_name()
    inline = "inline" in backend
    told = False
    formatter = shell.display_formatter
    assert formatter is not None  # an initialised shell has one
    for manager in managers:
        fig = manager.canvas.figure
        canvas = fig.canvas
        if _is_widget(canvas):
            if show and fig is not result and not _widget_shown(canvas, sink):
                data, metadata = formatter.format(canvas)
                sink.display(data, metadata)
            figs.pop(manager.num, None)  # the task's registry only: the widget lives on
            continue
        if getattr(type(canvas), "required_interactive_framework", None):
            if show and not told:
                told = True
                note = GUI_BACKEND.format(num=manager.num, name=name, backend=backend)
                sink.write("stderr", note)
            figs.pop(manager.num, None)
            continue
        if show and fig is not result:
            data, metadata = formatter.format(fig)
            # Only what a cell would show: the inline backend shows any figure (an empty
            # one as text); elsewhere (Agg, a terminal) a cell shows no figure at all.
            if inline or set(data) - {"text/plain"}:
                if inline:
                    metadata = {**metadata, **_inline_metadata(fig)}
                sink.display(data, metadata)
    pyplot = sys.modules.get("matplotlib.pyplot")
    for manager in list(figs.values()):
        if pyplot is not None:
            pyplot.close(manager.canvas.figure)
        else:
            figs.pop(manager.num, None)


def inline_settings(shell: InteractiveShell) -> dict[str, Any]:
    """How the notebook's inline backend renders figures: formats and ``print_figure`` options.

    Sent to worker processes, which render their figures themselves. Read from the
    ``InlineBackend`` configurable when it exists (``%config InlineBackend...``),
    else from the shell's configuration, else matplotlib_inline's defaults; imports
    nothing.
    """
    formats: Any = DEFAULT_FORMATS
    kwargs: dict[str, Any] = DEFAULT_PRINT_KWARGS
    config = sys.modules.get("matplotlib_inline.config")
    backend_cls = getattr(config, "InlineBackend", None)
    if backend_cls is not None and backend_cls.initialized():
        backend = backend_cls.instance()
        formats, kwargs = backend.figure_formats, backend.print_figure_kwargs
    else:
        section: Any = getattr(shell, "config", None)
        section = section.get("InlineBackend") if hasattr(section, "get") else None
        if section:
            formats = section.get("figure_formats", formats)
            if section.get("figure_format"):
                formats = (section["figure_format"],)
            kwargs = section.get("print_figure_kwargs", kwargs)
    if isinstance(formats, str):
        formats = (formats,)
    return {"formats": sorted(formats), "kwargs": dict(kwargs)}

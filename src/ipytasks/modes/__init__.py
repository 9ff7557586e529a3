"""Run modes: where a task body runs.

Each mode lives in ``modes/_<name>.py`` and exposes ``mode_class``; a mode's
module is imported only when a task first uses it.
"""

from __future__ import annotations

import importlib.util
from importlib import import_module

from .abc import Mode

__all__ = ("BACKENDS", "MODES", "NEEDS_DASK", "Mode", "dask_available", "get_mode_class")

#: What ``--mode`` accepts. ``auto`` resolves to ``async`` or ``thread`` per cell.
MODES = ("auto", "async", "thread", "process")
#: What ``--on`` accepts: where process-mode bodies run (``dask``: mode ``dask``).
BACKENDS = ("local", "dask")
NEEDS_DASK = "{what} needs distributed: pip install 'ipytasks[dask]'"


def dask_available() -> bool:
    """Whether the ``dask`` extra is installed (without importing it)."""
    return importlib.util.find_spec("distributed") is not None


def get_mode_class(name: str) -> type[Mode]:
    """The class implementing mode ``name`` (one of :data:`MODES` but ``auto``)."""
    module = import_module(f"ipytasks.modes._{name}")
    return module.mode_class

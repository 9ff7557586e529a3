"""Refusals: what the Python API raises for a call it cannot take.

A bad argument is a ``ValueError`` (a value of the wrong kind a ``TypeError``), and a call
before ``%load_ext ipytasks`` a ``RuntimeError``, as Python's own functions do. These
subclasses let the magics tell a refusal of theirs from an error a task raised (``%result``
re-raises those) and show it as a one-line usage error.
"""

from __future__ import annotations

__all__ = ("BadArgument", "BadArgumentType", "NotLoaded", "REFUSALS")


class BadArgument(ValueError):
    """An option, name or target that cannot be taken; the message names it."""


class BadArgumentType(TypeError):
    """A value of the wrong kind for an option, or an unknown option."""


class NotLoaded(RuntimeError):
    """ipytasks is not loaded in this shell (or was unloaded)."""


#: What the magics show as a usage error.
REFUSALS = (BadArgument, BadArgumentType, NotLoaded)

"""Moving a cell's inputs to a worker process and its outputs back.

The kernel's side of the payload of process and dask mode; the worker's side is
:mod:`ipytasks.workers.child`, and both pickle with :mod:`ipytasks.workers.wire`, so
both ends encode values alike.

* **Inputs** are the names the cell reads (or changes in place) that exist in
  the user namespace when the task *starts* — a ``%%sequential`` cell may read
  what the task before it bound. IPython's own entries (``In``, ``Out``,
  ``get_ipython``, ``exit``, ``_``, ``_3``, ``_i3``…, everything in
  ``shell.user_ns_hidden``) and dunder names are never shipped; builtins are not
  in the namespace, so they resolve in the worker. Values are taken by reference
  on the event loop when the task starts, and pickled a moment later on a worker's
  I/O thread, so that a large input does not hold up the loop (the loop pickles a
  few numbers and short strings itself: :meth:`Job.cheap`). Modules travel by
  name; functions, lambdas and classes defined in the notebook by value
  (cloudpickle); NumPy arrays, ``bytes`` and ``bytearray`` of 64 KiB and more as
  protocol-5 out-of-band buffers.
* **Outputs** are the names the cell binds at top level and still has at the end,
  plus the value of its last expression; names it deleted with ``del`` are
  deleted. :func:`merge` applies them in one step.
* A value that cannot travel fails the task with a message naming it and its
  type: ``cannot send 'my_lock' (_thread.lock) to a worker process: ...``.
"""

from __future__ import annotations

import marshal
import os
import pickle
import re
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import plots
from ..errors import RemoteError, ShippingError
from ..workers import wire

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..cells import CompiledCell
    from .analysis import CellNames

__all__ = (
    "Job",
    "Reply",
    "decode_reply",
    "inputs_of",
    "merge",
    "rebuild_error",
)

CANNOT_SEND = "cannot send {name!r} ({type}) to a worker process: {error}"
CANNOT_RECEIVE_BACK = "cannot receive {what} ({type}) from the worker process: {error}"

#: IPython's history entries: _, __, ___, _i, _ii, _iii, _7, _i7.
_HISTORY_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+")


def _is_ipython_entry(name: str, hidden: Any) -> bool:
    return (
        name in hidden
        or _HISTORY_NAME.fullmatch(name) is not None
        or (name.startswith("__") and name.endswith("__"))
    )


def inputs_of(shell: InteractiveShell, names: CellNames) -> tuple[dict[str, Any], list[str]]:
    """The values to ship for a cell, taken from ``shell.user_ns`` now.

    :returns: ``(inputs, placeholders)``: the values by name, and the names the
        cell only deletes (``del x``), which get a stand-in so ``del`` succeeds
        without shipping the value.
    """
    user_ns = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {})
    inputs = {}
    for name in sorted(names.reads | names.mutates):
        if name in user_ns and not _is_ipython_entry(name, hidden):
            inputs[name] = user_ns[name]
    placeholders = sorted(
        n
        for n in names.deletes
        if n in user_ns and n not in inputs and not _is_ipython_entry(n, hidden)
    )
    return inputs, placeholders


@dataclass(slots=True)
class Job:
    """One cell to run in a worker: its code, its inputs, and what to bring back."""

    cell: CompiledCell
    inputs: dict[str, Any]
    binds: frozenset[str]
    deletes: frozenset[str]
    placeholders: list[str] = field(default_factory=list)
    flags: int = 0
    #: None: the worker keeps its own (a Dask worker on another machine)
    sys_path: list[str] | None = field(default_factory=list)
    cwd: str | None = None
    environ: dict[bytes, bytes] = field(default_factory=dict)
    #: How the worker renders the figures the cell leaves open (the inline backend's settings).
    figures: dict[str, Any] = field(default_factory=dict)
    #: Whether the worker says where the body is, once a second (a dashboard is open).
    sample: bool = False

    @classmethod
    def take(cls, shell: InteractiveShell, cell: CompiledCell, names: CellNames) -> Job:
        """Take the inputs and the kernel's import path, directory and environment now."""
        inputs, placeholders = inputs_of(shell, names)
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        compiler = getattr(shell, "compile", None)
        return cls(
            cell=cell,
            inputs=inputs,
            binds=names.binds,
            deletes=names.deletes,
            placeholders=placeholders,
            flags=getattr(compiler, "flags", 0),
            sys_path=[p for p in sys.path if isinstance(p, str)],
            cwd=cwd,
            environ=_environ_snapshot(),
            figures=plots.inline_settings(shell),
        )

    def cheap(self) -> bool:
        """Whether its inputs cost next to nothing to pickle: none, or a few numbers and
        short strings (so the event loop may send it itself)."""
        inputs = self.inputs
        if len(inputs) > _CHEAP_COUNT:
            return False
        for value in inputs.values():
            kind = type(value)
            if kind not in _CHEAP_TYPES and not (kind in _SHORT_TYPES and len(value) <= _SHORT):
                return False
        return True

    def encode(self, environ: bool = True) -> tuple[bytes, bytes, list[pickle.PickleBuffer]]:
        """Pickle the job: ``(meta, values, buffers)`` for :func:`.wire.write_message`.

        :param environ: include the environment (leave it out when the worker
            already has this one).
        :raises ShippingError: an input cannot be pickled (named, with its type).
        """
        names = list(self.inputs)
        values: bytes = b""
        buffers: list[pickle.PickleBuffer] = []
        if names:  # (a pickler costs more than the trivial job that has no inputs)
            packer = wire.ValuePacker(cloud=True)
            for name in names:
                value = self.inputs[name]
                try:
                    packer.add(value)
                except Exception as exc:  # noqa: BLE001 - whatever pickling raised
                    raise ShippingError(
                        CANNOT_SEND.format(
                            name=name, type=wire.type_name(value), error=wire.error_text(exc)
                        )
                    ) from None
            values, buffers = packer.getvalue(), packer.buffers
        meta = {
            "kind": "run",
            "names": names,
            "types": {n: wire.type_name(v) for n, v in self.inputs.items()},
            "placeholders": list(self.placeholders),
            # The kernel's code objects (same interpreter), and the source to compile
            # if the worker's Python differs.
            "hexversion": sys.hexversion,
            "code": tuple(
                marshal.dumps(c) if c is not None else None
                for c in (self.cell.body, self.cell.last)
            ),
            "source": self.cell.source,
            "transformed": self.cell.transformed,
            "filename": self.cell.filename,
            "flags": self.flags,
            "binds": sorted(self.binds),
            "deletes": sorted(self.deletes),
            "sys_path": self.sys_path,
            "cwd": self.cwd,
            "environ": self.environ if environ else None,
            "figures": self.figures,
            "quiet": bool(getattr(self.cell, "quiet_result", False)),
            "sample": self.sample,
        }
        return pickle.dumps(meta, protocol=5), values, buffers


#: What :meth:`Job.cheap` allows: how many inputs, of which types, how long a string.
_CHEAP_COUNT = 16
_CHEAP_TYPES = frozenset({int, float, complex, bool, type(None)})
_SHORT_TYPES = frozenset({str, bytes})
_SHORT = 4096


def _environ_snapshot() -> dict[bytes, bytes]:
    """A copy of the process environment, as bytes (POSIX)."""
    data = getattr(os.environ, "_data", None)  # the encoded dict behind os.environ
    if isinstance(data, dict):
        return dict(data)  # a C-level copy: 50x cheaper than dict(os.environ)
    return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}


@dataclass(slots=True)
class Reply:
    """What came back: the values to merge, the names to delete, the result, or an error."""

    values: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None
    #: What the cell displayed (its figures, rendered in the worker): (data, metadata) pairs.
    displays: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: The result's display when the worker rendered it (a Figure), else ``None``.
    result_display: tuple[dict[str, Any], dict[str, Any]] | None = None
    #: Names the cell bound that stayed in the worker (closed files).
    left: list[str] = field(default_factory=list)
    #: What the job cost, as the worker measured it: ``{"cpu": seconds, "rss": bytes}``.
    cost: dict[str, Any] | None = None


def decode_reply(meta: Any, values: bytes | bytearray, buffers: list[Any]) -> Reply:
    """Turn a worker's reply into a :class:`Reply` (runs on any thread).

    ``meta`` is the reply's meta, pickled or already loaded.
    """
    info = meta if isinstance(meta, dict) else pickle.loads(meta)
    reply = _decode(info, values, buffers)
    reply.left = list(info.get("left") or ())
    reply.cost = info.get("cost")
    return reply


def _decode(info: dict[str, Any], values: bytes | bytearray, buffers: list[Any]) -> Reply:
    displays = [tuple(d) for d in info.get("displays", ())]
    if not info.get("ok"):
        if "shipping" in info:
            return Reply(error=ShippingError(info["shipping"]), displays=displays)
        return Reply(error=rebuild_error(info["error"]), displays=displays)
    names = info["names"]
    count = len(names) + (1 if info["result"] else 0)
    loader = wire.load_values(values, buffers, count)
    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = next(loader)
        except Exception as exc:  # noqa: BLE001
            what, type_ = repr(name), info.get("types", {}).get(name, "?")
            return Reply(error=ShippingError(CANNOT_RECEIVE_BACK.format(
                what=what, type=type_, error=wire.error_text(exc))))
    result = None
    if info["result"]:
        try:
            result = next(loader)
        except Exception as exc:  # noqa: BLE001
            type_ = info.get("result_type", "?")
            return Reply(error=ShippingError(CANNOT_RECEIVE_BACK.format(
                what=wire.RESULT, type=type_, error=wire.error_text(exc))))
    rendered = info.get("result_display")
    return Reply(
        values=out,
        deleted=list(info["deleted"]),
        result=result,
        displays=displays,
        result_display=tuple(rendered) if rendered is not None else None,
    )


def merge(user_ns: dict[str, Any], reply: Reply) -> Any:
    """Apply a successful reply to the namespace in one step; return the result.

    Call it on the thread that runs the notebook's code (the event loop). Functions
    defined in the cell come back bound to ``user_ns``, as if the cell had run in
    the notebook: they see the notebook's names when called later.
    """
    rebound: dict[int, Any] = {}
    values = {name: _rebind(value, user_ns, rebound) for name, value in reply.values.items()}
    result = _rebind(reply.result, user_ns, rebound)
    user_ns.update(values)
    for name in reply.deleted:
        user_ns.pop(name, None)
    return result


def _rebind(value: Any, user_ns: dict[str, Any], done: dict[int, Any]) -> Any:
    if (
        type(value) is not types.FunctionType
        or value.__module__ != "__main__"
        or value.__globals__ is user_ns
    ):
        return value
    new = done.get(id(value))
    if new is None:
        new = types.FunctionType(
            value.__code__, user_ns, value.__name__, value.__defaults__, value.__closure__
        )
        new.__kwdefaults__ = value.__kwdefaults__
        new.__qualname__ = value.__qualname__
        new.__doc__ = value.__doc__
        new.__module__ = value.__module__
        new.__annotations__ = value.__annotations__
        new.__dict__.update(value.__dict__)
        done[id(value)] = new
    return new


# -- errors -------------------------------------------------------------------------


def rebuild_error(described: dict[str, Any], _depth: int = 0) -> BaseException:
    """Re-create a worker's exception with a traceback through the same lines.

    The exception itself is unpickled when possible (so ``except ValueError`` still
    works), else it becomes a :class:`RemoteError`. Its traceback is made of
    stand-in frames at the worker's file names and line numbers, so IPython shows
    the cell's own lines (the kernel's linecache has the cell); if that fails, the
    worker's traceback text is added as a note. Causes and contexts are rebuilt too.

    Not ``tblib`` (which Dask uses): its stand-in frames keep the stub's ``co_qualname``
    and column positions, so IPython's traceback drops the function's name (``in
    check()``) and the standard one puts carets under the wrong columns. Not
    ``traceback.TracebackException``: it formats text, while IPython's traceback (and
    ``except ValueError``) needs a real exception with a real traceback.
    """
    exc: BaseException | None = None
    if described.get("pickled") is not None:
        try:
            exc = pickle.loads(described["pickled"])
        except Exception:  # noqa: BLE001 - falls back to RemoteError
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        exc = RemoteError(described["message"], described["text"], described["type"])
    try:
        exc.__traceback__ = _stand_in_traceback(exc, described["frames"])
    except Exception:  # noqa: BLE001 - the text still says where it happened
        exc.__traceback__ = None
        try:
            exc.add_note("Traceback in the worker process:\n" + described["text"].rstrip())
        except Exception:  # noqa: BLE001
            pass
    if _depth < 8:
        cause, context = described.get("cause"), described.get("context")
        exc.__cause__ = rebuild_error(cause, _depth + 1) if cause else None
        exc.__context__ = rebuild_error(context, _depth + 1) if context else None
    exc.__suppress_context__ = bool(described.get("suppress_context"))
    return exc


def _no_columns(code: types.CodeType) -> types.CodeType:
    """The same code with line numbers only: no carets under a stand-in statement."""
    units = len(code.co_code) // 2
    table = bytearray()
    while units:
        n = min(8, units)
        table += bytes((0x80 | (13 << 3) | (n - 1), 0))  # "no column info", line delta 0
        units -= n
    replaced = code.replace(co_linetable=bytes(table))
    if any(line != code.co_firstlineno for _, _, line in replaced.co_lines()):
        return code
    return replaced


def _stand_in_frame(exc: BaseException, filename: str, lineno: int, name: str) -> Any:
    code = compile("raise __ipytasks_exc__", filename, "exec", dont_inherit=True)
    code = code.replace(co_firstlineno=max(lineno, 1), co_name=name, co_qualname=name)
    try:
        code = _no_columns(code)
    except Exception:  # noqa: BLE001 - carets under the line are cosmetic
        pass
    namespace = {"__ipytasks_exc__": exc, "__name__": "__ipytasks_worker__"}
    exc.__traceback__ = None
    try:
        exec(code, namespace)  # noqa: S102 - raises exc at filename:lineno
    except BaseException as raised:
        if raised is not exc:
            raise
        assert raised.__traceback__ is not None  # a caught exception has one
        tb = raised.__traceback__.tb_next  # skip this function's own frame
    finally:
        namespace.clear()
    return tb


def _stand_in_traceback(exc: BaseException, frames: list[tuple[str, int, str]]) -> Any:
    head = None
    previous = None
    for filename, lineno, name in frames:
        tb = _stand_in_frame(exc, filename, lineno, name)
        if previous is None:
            head = tb
        else:
            previous.tb_next = tb
        previous = tb
    return head

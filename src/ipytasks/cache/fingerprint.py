"""Content fingerprints of the values a cell reads (``--cache``).

``fingerprint(value)`` is a 16-byte digest (XXH3-128) of what the value holds,
never of where it lives: an array changed in place (``a[0] = 1``,
``df.loc[0, "x"] = 1``) gets another fingerprint, however it was changed.

How a value is read:

* NumPy arrays, pandas objects and anything else that pickles: pickle protocol
  5 with out-of-band buffers, the stream and each buffer fed to the hash as
  they come. A 200 MiB array is hashed where it lies, at the speed of XXH3
  (gigabytes a second), not copied into a pickle first.
* Sets: their elements' fingerprints, sorted, since a set's order changes from
  one process to the next (string hashing is randomised).
* Small lists, tuples and dicts: walked, so the sets inside them count as sets.
* Functions and classes defined in the notebook: by their code (constants,
  names, nested code), defaults, closure and the notebook names they use, each
  fingerprinted in turn. Their file name (which holds the kernel's process id)
  does not count, so the same ``def`` after a restart has the same fingerprint.
  Pickle would take them by name, and a changed body would go unseen.
* Modules: by name. Functions and classes of importable modules: by their
  qualified name (what pickle does too): a change to a module's file is not
  seen (``%tasks_cache --clear`` after editing one).

What cannot be fingerprinted reliably raises :class:`Unfingerprintable`: what
pickle refuses (open files, generators, locks, sockets, database connections)
and what pickles differently twice in a row. A miss is then certain, never a
wrong result.
"""

from __future__ import annotations

import pickle
import sys
import types
from typing import Any

import xxhash

from ..workers.wire import type_name

__all__ = ("Unfingerprintable", "fingerprint", "digest_text")

#: Containers up to this many items are walked (their sets sorted); larger ones are
#: pickled at C speed.
WALK_LIMIT = 1_000
#: How deep the walk goes before it hands the rest to pickle.
WALK_DEPTH = 6
#: The in-band part of a pickle is taken twice to catch values whose pickle changes
#: from one pickling to the next; beyond this size the second pickling is skipped.
RECHECK_LIMIT = 64 * 1024 * 1024

# Attributes of a notebook class that say nothing about what it does.
_CLASS_NOISE = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__firstlineno__",
     "__static_attributes__"}
)


class Unfingerprintable(Exception):
    """A value whose content cannot be told reliably; ``what`` names its type."""

    def __init__(self, what: str, why: str = "") -> None:
        super().__init__(f"{what}: {why}" if why else what)
        self.what = what
        self.why = why


def digest_text(text: str) -> str:
    """The hex XXH3-128 digest of a text."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


def fingerprint(value: Any) -> bytes:
    """The 16-byte content digest of ``value``.

    :raises Unfingerprintable: the value cannot be fingerprinted reliably.
    """
    h = xxhash.xxh3_128()
    _Walker(h).add(value, 0)
    return h.digest()


def _in_notebook(obj: Any) -> bool:
    """Whether a function or class was defined in the notebook (not importable by name)."""
    module = getattr(obj, "__module__", None)
    if module is None or module == "__main__":
        return True
    found: Any = sys.modules.get(module)
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is not obj


class _Token:
    """What a notebook function, class or module becomes inside a pickled value."""

    def __init__(self, digest: bytes) -> None:
        self.digest = digest


class _HashFile:
    """A write-only file that feeds a hash (the in-band part of a pickle)."""

    __slots__ = ("h", "size")

    def __init__(self, h: Any) -> None:
        self.h = h
        self.size = 0

    def write(self, data: Any) -> int:
        self.h.update(data)
        n = len(data)
        self.size += n
        return n


class _Walker:
    """One fingerprint: walks containers and notebook code, pickles the rest."""

    def __init__(self, h: Any) -> None:
        self.h = h
        # Notebook functions and classes being fingerprinted (recursion, cycles).
        self._visiting: dict[int, bytes] = {}

    def add(self, value: Any, depth: int) -> None:
        h = self.h
        cls = type(value)
        if cls is str:
            data = value.encode("utf-8", "surrogatepass")
            h.update(b"s" + len(data).to_bytes(8, "little"))
            h.update(data)
        elif cls is bytes:
            h.update(b"b" + len(value).to_bytes(8, "little"))
            h.update(value)
        elif cls is int or cls is float or cls is bool or value is None:
            text = repr(value).encode()
            h.update(cls.__name__[0].encode() + len(text).to_bytes(1, "little") + text)
        elif cls is set or cls is frozenset:
            parts = sorted(self._sub(v, depth + 1) for v in value)
            h.update(b"S" if cls is set else b"F")
            h.update(len(parts).to_bytes(8, "little"))
            for part in parts:
                h.update(part)
        elif (cls is list or cls is tuple) and len(value) <= WALK_LIMIT and depth < WALK_DEPTH:
            h.update(b"L" if cls is list else b"T")
            h.update(len(value).to_bytes(8, "little"))
            for item in value:
                self.add(item, depth + 1)
        elif cls is dict and len(value) <= WALK_LIMIT and depth < WALK_DEPTH:
            h.update(b"D")
            h.update(len(value).to_bytes(8, "little"))
            for key, item in value.items():
                self.add(key, depth + 1)
                self.add(item, depth + 1)
        elif cls is types.ModuleType:
            h.update(b"M" + value.__name__.encode())
        elif (cls is types.FunctionType or isinstance(value, type)) and _in_notebook(value):
            h.update(b"C")
            h.update(self._code_object(value))
        else:
            self._pickle(value)

    def _sub(self, value: Any, depth: int) -> bytes:
        """The digest of ``value`` alone (an element of a set)."""
        inner = _Walker(xxhash.xxh3_128())
        inner._visiting = self._visiting
        inner.add(value, depth)
        return inner.h.digest()

    # -- notebook code ------------------------------------------------------------

    def _code_object(self, obj: Any) -> bytes:
        seen = self._visiting.get(id(obj))
        if seen is not None:
            return seen  # recursion: a function that names itself, a method naming its class
        self._visiting[id(obj)] = b"R" + obj.__qualname__.encode()
        inner = _Walker(xxhash.xxh3_128())
        inner._visiting = self._visiting
        h = inner.h
        h.update(obj.__qualname__.encode())
        if isinstance(obj, type):
            for base in obj.__bases__:
                inner.add(base, 0)
            for key in sorted(k for k in vars(obj) if k not in _CLASS_NOISE):
                h.update(key.encode())
                attr = vars(obj)[key]
                if isinstance(attr, staticmethod | classmethod):
                    attr = attr.__func__
                elif isinstance(attr, property):
                    attr = (attr.fget, attr.fset, attr.fdel)
                inner.add(attr, 0)
        else:
            inner._code(obj.__code__)
            inner.add(obj.__defaults__, 0)
            inner.add(obj.__kwdefaults__, 0)
            for cell in obj.__closure__ or ():
                try:
                    inner.add(cell.cell_contents, 0)
                except ValueError:  # an empty cell: bound later
                    h.update(b"E")
            namespace = obj.__globals__
            for name in sorted(_global_names(obj.__code__)):
                if name in namespace:
                    h.update(name.encode())
                    inner.add(namespace[name], 0)
        digest = h.digest()
        self._visiting[id(obj)] = digest
        return digest

    def _code(self, code: types.CodeType) -> None:
        h = self.h
        h.update(code.co_code)
        for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            h.update("\0".join(names).encode() + b"\1")
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.add(const, 0)

    # -- everything else ----------------------------------------------------------

    def _pickle(self, value: Any) -> None:
        h = self.h
        h.update(b"P")
        first = xxhash.xxh3_128()
        size = self._dump(value, first, self.h)
        if size <= RECHECK_LIMIT:
            again = xxhash.xxh3_128()
            self._dump(value, again, None)
            if again.digest() != first.digest():
                raise Unfingerprintable(
                    type_name(value), "its pickle changes from one pickling to the next"
                )
        h.update(first.digest())

    def _dump(self, value: Any, stream_hash: Any, buffer_hash: Any | None) -> int:
        out = _HashFile(stream_hash)

        def take(buffer: pickle.PickleBuffer) -> bool:
            try:
                raw = buffer.raw()
            except BufferError:  # not contiguous: pickle writes it in band
                return True
            if buffer_hash is not None:
                buffer_hash.update(len(raw).to_bytes(8, "little"))
                buffer_hash.update(raw)
            return False

        pickler = _Pickler(out, self, buffer_callback=take)
        try:
            pickler.dump(value)
        except Unfingerprintable:
            raise
        except RecursionError:
            raise Unfingerprintable(type_name(value), "nested too deeply") from None
        except Exception as exc:  # noqa: BLE001 - whatever pickling refused
            raise Unfingerprintable(type_name(value), str(exc) or type(exc).__name__) from None
        return out.size


class _Pickler(pickle.Pickler):
    """Pickle protocol 5 where notebook code and modules stand for their fingerprints."""

    def __init__(self, file: Any, walker: _Walker, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._walker = walker

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is types.ModuleType:
            return _Token, (b"M" + obj.__name__.encode(),)
        if (cls is types.FunctionType or isinstance(obj, type)) and _in_notebook(obj):
            return _Token, (self._walker._code_object(obj),)
        return NotImplemented


def _global_names(code: types.CodeType) -> set[str]:
    """Every global name a code object and the code nested in it may load."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names

"""A task's key, its stored outcome, and the reason it ran again (``--cache``).

The scheduler asks :class:`ResultCache` three things of a ``--cache`` task:

1. :meth:`~ResultCache.plan`, on the event loop when the task may start (what it
   waits for has ended): its key, from the cell's code (its syntax tree, so
   comments and blank lines do not count), a content fingerprint of every value
   it reads from the notebook, the keys of the tasks it follows by ``--after`` or
   by its chain, and the value of ``--cache-key``. A value that cannot be
   fingerprinted makes the task run uncached, and the plan says which.
2. :meth:`~ResultCache.replay`: when an entry of that key is there and verified,
   bind what the task bound, show what it showed, and give its result.
3. :meth:`~ResultCache.keep`, after a successful run and before the task ends
   (so no task that waits for it touches its values while they are pickled):
   store the names it bound (and those it changed in place, found by
   fingerprinting its inputs again), its result and its outputs. The file is
   written on a thread of its own (:data:`_writer`): a small entry after the task
   has ended (from a copy), a large one before (from its arrays, uncopied). A
   write that fails adds ``not stored: <reason>`` to the task's note then.

The outcome is what a notebook sees of a run, so a hit is indistinguishable
from the run, except that names bound to one object are bound to equal copies
of it (a value changed in place is rebound, not changed again).
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cells import CompiledCell
from ..dependencies import task_names
from ..namespace.shipping import Reply, _is_ipython_entry, inputs_of, merge
from ..workers import wire
from .fingerprint import Unfingerprintable, digest_text, fingerprint
from .store import DEFAULT_MAX_SIZE, CacheCorrupt, Entry, Store, load_secret, parse_size

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..records import TaskRecord

__all__ = ("Plan", "ResultCache", "default_root")

#: Changes whenever what goes into a key or an entry changes: old entries then miss.
FORMAT = 1
#: How much of a task's full text output an entry keeps (its start and end beyond that).
TEXT_LIMIT = 4 * 1024 * 1024
FOLDER = ".ipytasks"
#: Entries up to this size are read on the event loop (a hop to a thread and back would
#: cost more than the work) and written after their task ended, from a copy.
INLINE_SIZE = 1024 * 1024
#: How long unloading ipytasks waits for entries still being written.
FLUSH_TIMEOUT = 30.0


@dataclass(slots=True)
class Plan:
    """What a ``--cache`` task's key is made of, or why it has none."""

    key: str | None = None
    #: The key's parts (kept beside the entry, to say later what changed).
    parts: dict[str, Any] = field(default_factory=dict)
    #: The fingerprint of each input when the task started.
    inputs: dict[str, bytes] = field(default_factory=dict)
    #: Why the task runs uncached (``reads conn (sqlite3.Connection)``).
    refused: str | None = None


def default_root() -> Path:
    """``$IPYTASKS_CACHE``, else ``.ipytasks`` in the notebook's folder.

    A kernel that Jupyter starts for a notebook runs in the notebook's folder, and
    Jupyter names the notebook in ``JPY_SESSION_NAME``; a terminal uses its folder.
    """
    where = os.environ.get("IPYTASKS_CACHE")
    if where:
        return Path(where).expanduser()
    session = os.environ.get("JPY_SESSION_NAME", "")
    if (
        session.endswith(".ipynb")
        and os.path.isabs(session)
        and os.path.isdir(os.path.dirname(session))
    ):
        return Path(os.path.dirname(session)) / FOLDER
    return Path.cwd() / FOLDER


def _clock(stamp: float) -> str:
    local = time.localtime(stamp)
    if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M", local)
    return time.strftime("%b %d %H:%M", local).replace(" 0", " ")


class ResultCache:
    """Stored outcomes of ``--cache`` tasks, for one shell.

    :param root: the cache folder; ``None``: :func:`default_root` when first used.
    :param secret_folder: where the signing secret lives; ``None``: the Jupyter data folder.
    """

    def __init__(self, shell: InteractiveShell, root: Path | None = None,
                 secret_folder: Path | None = None) -> None:
        self.shell = shell
        self._root = root
        self._secret_folder = secret_folder
        self._store: Store | None = None
        size = os.environ.get("IPYTASKS_CACHE_SIZE")
        self.max_size = parse_size(size) if size else DEFAULT_MAX_SIZE

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = default_root()
        return self._root

    @root.setter
    def root(self, path: Path) -> None:
        self._root = Path(path).expanduser().absolute()
        self._store = None

    def set_max_size(self, size: int) -> None:
        self.max_size = size
        if self._store is not None:
            self._store.max_size = size
            self._store._size = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root, load_secret(self._secret_folder), self.max_size)
        return self._store

    # -- 1. the key -----------------------------------------------------------------

    def plan(self, record: TaskRecord) -> Plan:
        """The task's key now (its inputs as they are), or why it has none."""
        cell = record.cell
        assert isinstance(cell, CompiledCell)  # a cached task is never a --map item
        names = task_names(cell, record.options)
        if names.unknown:
            return Plan(refused=f"its names cannot be known ({names.unknown})")
        inputs, _ = inputs_of(self.shell, cell.names)
        fingerprints: dict[str, bytes] = {}
        for name, value in inputs.items():
            try:
                fingerprints[name] = fingerprint(value)
            except Unfingerprintable as exc:
                return Plan(refused=f"reads {name} ({exc.what})")
        # Names it reads that are not in the notebook now (builtins, a NameError to
        # come): their later appearance must change the key.
        absent = sorted((names.reads | names.mutates) - inputs.keys())
        extra = None
        expression = record.options.cache_key
        if expression is not None:
            try:
                value = eval(compile(expression, "<--cache-key>", "eval"), self.shell.user_ns)  # noqa: S307
                extra = fingerprint(value).hex()
            except Unfingerprintable as exc:
                return Plan(refused=f"--cache-key is a {exc.what}")
            except Exception as exc:  # noqa: BLE001 - the user's expression failed
                return Plan(refused=f"--cache-key failed: {type(exc).__name__}: {exc}")
        upstream = {}
        for other in record.upstream:
            why = record.reasons.get(other.name, "")
            # Edges by --after and by chain are the user's: they count by key. Inferred
            # edges are data, already counted by the fingerprints of what it reads.
            if "after" in why or "chain" in why:
                upstream[other.name] = other.cache_key or "uncached"
        parts = {
            "format": FORMAT,
            "code": digest_text(ast.dump(cell.tree, annotate_fields=False)),
            "inputs": {name: fp.hex() for name, fp in sorted(fingerprints.items())},
            "absent": absent,
            "upstream": upstream,
            "cache_key": extra,
        }
        key = digest_text(json.dumps(parts, sort_keys=True))
        return Plan(key=key, parts=parts, inputs=fingerprints)

    def why_run(self, record: TaskRecord, plan: Plan) -> str:
        """Why a task whose entry was not there runs: what changed since it was stored."""
        before = self.store.read_note(record.name)
        if before is None:
            return "not stored before"
        if before.get("key") == plan.key:
            return "its entry was cleared or evicted"
        old, new = before.get("parts", {}), plan.parts
        if old.get("format") != new["format"]:
            return "stored by another version of ipytasks"
        if old.get("code") != new["code"]:
            return "code changed"
        reasons = []
        changed_upstream = sorted(
            name for name, key in new["upstream"].items()
            if old.get("upstream", {}).get(name) != key
        )
        old_inputs = old.get("inputs", {})
        changed = sorted(
            name for name in set(old_inputs) | set(new["inputs"])
            if old_inputs.get(name) != new["inputs"].get(name)
        )
        changed += sorted(set(old.get("absent", ())) ^ set(new["absent"]))
        # An input bound by a task it waited for that ran (not from the cache) says
        # more as "upstream clean recomputed".
        for other in record.upstream:
            if other.state == "done" and other.name not in changed_upstream:
                assert isinstance(other.cell, CompiledCell)  # a registered task's own cell
                binds = task_names(other.cell, other.options).binds
                if any(name in binds for name in changed):
                    changed_upstream.append(other.name)
                    changed = [name for name in changed if name not in binds]
        for name in changed_upstream:
            reasons.append(f"upstream {name} recomputed")
        if changed:
            label = "input" if len(changed) == 1 else "inputs"
            reasons.append(f"{label} {', '.join(changed)} changed")
        if old.get("cache_key") != new["cache_key"]:
            reasons.append("--cache-key changed")
        return "; ".join(reasons) or "its entry was cleared or evicted"

    # -- 2. a hit ---------------------------------------------------------------------

    async def replay(self, record: TaskRecord, plan: Plan) -> tuple[bool, Any]:
        """Bind, show and return the stored outcome of ``plan.key``.

        :returns: ``(True, result)`` on a hit; ``(False, None)`` when there is no
            usable entry, with ``record.cache_note`` saying why the task runs.
        """
        store = self.store
        assert plan.key is not None
        file = store.open(plan.key)
        if file is None:
            record.cache_note = self.why_run(record, plan)
            return False, None
        try:
            if _file_size(file) <= INLINE_SIZE:
                entry = store.load(plan.key, file)
                values, result = _unpack(entry)
            else:
                # Checking the signature reads the whole entry: off the event loop.
                entry = await asyncio.to_thread(store.load, plan.key, file)
                values, result = await asyncio.to_thread(_unpack, entry)
        except CacheCorrupt as exc:
            record.cache_note = f"stored entry {exc}: recomputed"
            return False, None
        except Exception as exc:  # noqa: BLE001 - signed by us, yet it will not load
            store.remove([plan.key])
            record.cache_note = (
                f"stored entry did not load ({type(exc).__name__}: {exc}): recomputed"
            )
            return False, None
        manifest = entry.manifest
        result = merge(
            self.shell.user_ns, Reply(values=values, deleted=manifest["deleted"], result=result)
        )
        if record.sink is not None:
            record.sink.restore(manifest.get("outputs", []), manifest.get("text", ""))
        record.cache_note = (
            f"stored {_clock(manifest['stored'])}, saves {manifest['duration']:.1f} s"
        )
        return True, result

    # -- 3. storing -------------------------------------------------------------------

    async def keep(self, record: TaskRecord, plan: Plan,
                   result: Any) -> concurrent.futures.Future[str | None] | None:
        """Store the outcome of a run that succeeded; say in the note if it was not.

        :returns: for an entry of up to :data:`INLINE_SIZE`, the write still under way:
            it gives why it was not stored (already added to ``record.cache_note``) or
            ``None``. ``None`` when it is written (or refused) already.
        """
        assert plan.key is not None
        cell = record.cell
        assert isinstance(cell, CompiledCell)  # a cached task is never a --map item
        names = cell.names
        user_ns = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", {})
        values = {
            name: user_ns[name]
            for name in sorted(names.binds | names.mutates)
            if name in user_ns and not _is_ipython_entry(name, hidden)
        }
        # What it changed in place without assigning (rows.append(x)) is an outcome too.
        for name, before in plan.inputs.items():
            if name in values or name not in user_ns:
                continue
            try:
                if fingerprint(user_ns[name]) != before:
                    values[name] = user_ns[name]
            except Unfingerprintable as exc:
                self._not_stored(record, f"{name} became a {exc.what}")
                return None
        deleted = sorted(n for n in names.deletes if n not in user_ns)
        duration = time.time() - (record.started or time.time())
        sink = record.sink
        text = sink.text if sink is not None else ""
        if len(text) > TEXT_LIMIT:
            cut = len(text) - TEXT_LIMIT // 4 * 3
            text = (text[: TEXT_LIMIT // 4] + f"\n… {cut - TEXT_LIMIT // 4:,} characters "
                    "left out of the stored output …\n" + text[cut:])
        manifest = {
            "format": FORMAT,
            "task": record.name,
            "stored": time.time(),
            "duration": duration,
            "deleted": deleted,
            "outputs": _json_ready(sink.saved() if sink is not None else []),
            "text": text,
            "parts": plan.parts,
        }
        try:
            packed = self._pack(manifest, values, result)
        except _NotStorable as exc:
            self._not_stored(record, str(exc))
            return None
        store = self.store  # the folder now: a later %tasks_cache PATH does not move it
        pickled, buffers = packed
        if len(pickled) + sum(memoryview(b).nbytes for b in buffers) <= INLINE_SIZE:
            # The task ends without waiting for the write (a file written, then renamed).
            # Its buffers are copied (at most 1 MiB), byte for byte as Store.write takes
            # them: what it bound may be changed in place once it has ended, and the entry
            # must hold what it produced.
            copied = (pickled, [bytes(memoryview(b).cast("B")) for b in buffers])
            return _submit(self._write, store, record, plan, manifest, copied)
        # A large entry is written from where its arrays lie, uncopied, so the task waits
        # for it (off the event loop): nothing changes them meanwhile. Through the same
        # writer, so a task's entries are written in the order they were made.
        await asyncio.wrap_future(_submit(self._write, store, record, plan, manifest, packed))
        return None

    @staticmethod
    def _pack(manifest: dict[str, Any], values: dict[str, Any],
              result: Any) -> tuple[bytes, list[Any]]:
        """Pickle the values and the result (large buffers stay out of band, uncopied)."""
        packer = wire.ValuePacker(cloud=True)
        for name, value in values.items():
            try:
                packer.add(value)
            except Exception as exc:  # noqa: BLE001 - whatever pickling refused
                raise _NotStorable(f"binds {name} ({wire.type_name(value)})") from exc
        manifest["names"] = list(values)
        manifest["result"] = result is not None
        if result is not None:
            try:
                packer.add(result)
            except Exception as exc:  # noqa: BLE001
                raise _NotStorable(f"its result is a {wire.type_name(result)}") from exc
        return packer.getvalue(), packer.buffers

    def _write(self, store: Store, record: TaskRecord, plan: Plan,
               manifest: dict[str, Any], packed: tuple[bytes, list[Any]]) -> str | None:
        """On the writer thread: write the entry, then its note and the eviction.

        :returns: why it was not stored (also added to ``record.cache_note``), or ``None``.
        """
        assert plan.key is not None  # only a plan with a key is written
        try:
            store.write(plan.key, manifest, *packed)
        except Exception as exc:  # noqa: BLE001 - the task succeeded; only storing failed
            why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else (
                f"{type(exc).__name__}: {exc}")
            # Set here, before the write's future is done: whoever waited for the
            # writer (flush) finds the note. One attribute, replaced whole.
            self._not_stored(record, why)
            return why
        try:
            # What the key was made of, to say later why a task ran again.
            store.write_note(record.name, {"key": plan.key, "parts": plan.parts})
            store.evict()
        except OSError:
            pass  # the entry is stored; only the reason a later run gives is less precise
        return None

    @staticmethod
    def flush(timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the entries handed to the writer;
        return how many are still being written (0: all written or failed)."""
        marker = _writer.submit(lambda: None)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            marker.result(timeout)
        return sum(1 for f in list(_pending) if not f.done())

    @staticmethod
    def _not_stored(record: TaskRecord, why: str) -> None:
        note = f"not stored: {why}"
        record.cache_note = f"{record.cache_note}; {note}" if record.cache_note else note

    # -- %tasks_cache --clear ------------------------------------------------------------

    def clear(self, tasks: list[str] | None = None) -> int:
        """Remove every entry, or those of these task names; return how many went."""
        store = self.store
        infos = store.infos()
        if tasks is not None:
            infos = [i for i in infos if i.task in tasks]
        for task in {i.task for i in infos} | set(tasks or ()):
            store.forget_note(task)
        return store.remove([i.key for i in infos])


#: One thread writes the entries, their notes and the eviction, in the order the tasks
#: stored them. Its work left at interpreter exit is done before the process ends
#: (concurrent.futures joins its threads), so a kernel that exits normally loses none.
_writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ipytasks-cache")
#: Writes handed to it and not yet done (for ``flush``'s count).
_pending: set[concurrent.futures.Future[Any]] = set()


def _submit(fn: Any, *args: Any) -> concurrent.futures.Future[str | None]:
    future: concurrent.futures.Future[str | None] = _writer.submit(fn, *args)
    _pending.add(future)
    future.add_done_callback(_pending.discard)
    return future


class _NotStorable(Exception):
    pass


def _file_size(file: Any) -> int:
    try:
        return os.fstat(file.fileno()).st_size
    except OSError:
        return INLINE_SIZE + 1


def _unpack(entry: Entry) -> tuple[dict[str, Any], Any]:
    manifest = entry.manifest
    names = manifest["names"]
    count = len(names) + (1 if manifest["result"] else 0)
    loader = wire.load_values(entry.values, entry.buffers, count)
    values = {name: next(loader) for name in names}
    result = next(loader) if manifest["result"] else None
    return values, result


def _json_ready(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs that JSON can hold (a display of odd data is left out, not fatal)."""
    kept = []
    for item in outputs:
        try:
            json.dumps(item)
        except (TypeError, ValueError):
            continue
        kept.append(item)
    return kept

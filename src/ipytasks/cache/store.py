"""Signed cache entries in a folder (``.ipytasks/`` next to the notebook by default).

A cache folder is untrusted input: loading a pickle runs code, and the folder
sits where a cloned repository, a shared drive or another user can put files.
So every entry is one file signed with HMAC-SHA256 over all of its bytes, with a
secret of this user's that lives outside the project (in the Jupyter data folder,
beside Jupyter's own notebook-trust secret; made on first use, mode 0600), and
the signature is checked before anything in the file is unpickled. An entry that
is unsigned, signed with another secret, cut short or changed is reported as
such, removed, and never loaded. :meth:`Store.trust` re-signs the entries of a
folder the user has decided to trust (a colleague's cache).

An entry's file (``entries/<key>.ipt``)::

    magic (16 bytes) | key id (8) | manifest length (8) | manifest (JSON)
    | padding to 64 | values (the pickle stream) | padding | buffer | padding | buffer …
    | HMAC-SHA256 of everything before it (32)

The manifest says where the values and each out-of-band buffer (a NumPy array's
data, a DataFrame's blocks) lie, so loading maps the file (copy-on-write: arrays
come back writable, pages are read as they are touched) and hands the buffers to
the unpickler without a copy. The key id names the secret that signed it, so an
entry from another user is told apart from a damaged one.

Writes go to a temporary file in the same folder, renamed over the entry when
complete: a reader never sees half an entry, a kernel killed while writing leaves
only a temporary file (cleared later), and two kernels writing the same entry
each rename a whole one. Entries are evicted least recently used first (a hit
touches the file's time) when the folder grows past its size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import mmap
import os
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = (
    "CacheCorrupt",
    "Entry",
    "EntryInfo",
    "Store",
    "load_secret",
    "parse_size",
    "DEFAULT_MAX_SIZE",
)

MAGIC = b"IPYTASKS-CACHE1\n"
_HEAD = struct.Struct("<8sQ")
_SIG = 32
_ALIGN = 64
SUFFIX = ".ipt"
#: The size cap of a cache folder unless ``IPYTASKS_CACHE_SIZE`` or ``--max-size`` says.
DEFAULT_MAX_SIZE = 5 * 1000**3
SECRET_FILE = "ipytasks_cache_secret"
#: Temporary files older than this are left-overs of a kernel that died writing.
STALE_TEMP = 3600.0


class CacheCorrupt(Exception):
    """An entry that must not be loaded; the message says why (shown in the status line)."""


@dataclass(slots=True)
class Entry:
    """A verified entry: its manifest, and the values and buffers as views of the file."""

    manifest: dict[str, Any]
    values: memoryview
    buffers: list[memoryview]


@dataclass(slots=True)
class EntryInfo:
    """What ``%tasks_cache`` lists of an entry (read from its manifest, not verified)."""

    key: str
    task: str
    size: int
    used: float
    stored: float
    duration: float


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500 MiB"``, ``"0"``, or a number of bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2,
             "MIB": 1024**2, "G": 1000**3, "GB": 1000**3, "GIB": 1024**3, "T": 1000**4,
             "TB": 1000**4, "TIB": 1024**4}
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("BKMGTI")
    unit = value[len(number):]
    if unit not in units or not number:
        raise ValueError(f"not a size: {text!r} (say 5GB, 500MiB)")
    return int(float(number) * units[unit])


def _jupyter_data_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir())


def load_secret(folder: Path | None = None) -> bytes:
    """This user's signing secret, made on first use (32 random bytes, mode 0600).

    It lives in the Jupyter data folder (``JUPYTER_DATA_DIR``), outside any project,
    so a cache folder that travels with a notebook carries no way to sign entries.
    Two kernels making it at once agree on one: it is linked into place only if absent.
    """
    folder = folder if folder is not None else _jupyter_data_dir()
    path = folder / SECRET_FILE
    try:
        text = path.read_text().strip()
        if len(text) >= 64:
            return bytes.fromhex(text)
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if another kernel was first: then its secret is the one
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _key_id(secret: bytes) -> bytes:
    return hmac.new(secret, b"ipytasks cache key id", hashlib.sha256).digest()[:8]


def _pad(n: int) -> int:
    return -n % _ALIGN


class Store:
    """The entries of one cache folder, signed with ``secret``.

    :param root: the folder (made on first write).
    :param secret: the signing secret (:func:`load_secret`).
    :param max_size: bytes the entries may take before the least recently used go.
    """

    def __init__(self, root: Path, secret: bytes, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.root = Path(root)
        self.entries = self.root / "entries"
        self.max_size = max_size
        self._secret = secret
        self._key_id = _key_id(secret)
        # Bytes in the folder as last counted, and added since: eviction rescans the
        # folder only when this says it may be over the cap.
        self._size: int | None = None

    # -- reading ------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.entries / f"{key}{SUFFIX}"

    def open(self, key: str) -> Any | None:
        """The entry's open file, or ``None`` when there is none (a cheap first look)."""
        try:
            return open(self.path(key), "rb")  # noqa: SIM115 - handed to load()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return None

    def load(self, key: str, file: Any) -> Entry:
        """Verify and map the entry in ``file``; nothing in it is unpickled here.

        :raises CacheCorrupt: unsigned, signed with another secret, cut short or
            changed (the entry is removed).
        """
        with file:
            try:
                size = os.fstat(file.fileno()).st_size
                if size < len(MAGIC) + _HEAD.size + _SIG:
                    raise CacheCorrupt("cut short")
                mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
            except CacheCorrupt:
                self._remove(key)
                raise
            except (OSError, ValueError) as exc:
                raise CacheCorrupt(f"unreadable ({exc})") from None
        try:
            entry = self._verify(mapped, size)
        except CacheCorrupt:
            with contextlib.suppress(BufferError):
                mapped.close()
            self._remove(key)
            raise
        with contextlib.suppress(OSError):
            os.utime(self.path(key))  # most recently used
        return entry

    def _verify(self, mapped: mmap.mmap, size: int) -> Entry:
        view = memoryview(mapped)
        if bytes(view[: len(MAGIC)]) != MAGIC:
            raise CacheCorrupt("not an ipytasks cache entry")
        key_id, manifest_size = _HEAD.unpack_from(view, len(MAGIC))
        if key_id != self._key_id:
            raise CacheCorrupt(
                "signed with another secret "
                "(not yours: %tasks_cache --trust PATH after checking it)"
            )
        expected = hmac.new(self._secret, view[: size - _SIG], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, bytes(view[size - _SIG:])):
            raise CacheCorrupt("its signature does not match (cut short or changed)")
        start = len(MAGIC) + _HEAD.size
        try:
            manifest = json.loads(bytes(view[start: start + manifest_size]))
            values = view[manifest["values"][0]: manifest["values"][0] + manifest["values"][1]]
            buffers = [view[offset: offset + length] for offset, length in manifest["buffers"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheCorrupt(f"its manifest is malformed ({exc})") from None
        return Entry(manifest, values, buffers)

    # -- writing ------------------------------------------------------------------

    def write(self, key: str, manifest: dict[str, Any], values: bytes,
              buffers: list[Any]) -> int:
        """Write and sign an entry; return its size.

        :raises OSError: the folder cannot be written (full, read-only): nothing is
            left behind.
        """
        self.entries.mkdir(parents=True, exist_ok=True)
        self._ignore_in_git()
        views = [memoryview(b).cast("B") for b in buffers]
        manifest = dict(manifest)
        # The offsets depend on the manifest's own length: reserve room for the numbers
        # (every offset at most 20 digits), place the data after it, pad the JSON to it.
        manifest["values"] = [0, 0]
        manifest["buffers"] = [[0, 0] for _ in views]
        room = len(json.dumps(manifest, separators=(",", ":")).encode()) + 40 * (len(views) + 1)
        offset = len(MAGIC) + _HEAD.size + room
        offset += _pad(offset)
        manifest["values"] = [offset, len(values)]
        offset += len(values)
        placed = []
        for v in views:
            offset += _pad(offset)
            placed.append([offset, v.nbytes])
            offset += v.nbytes
        manifest["buffers"] = placed
        text = json.dumps(manifest, separators=(",", ":")).encode()
        text += b" " * (room - len(text))
        temp = self.entries / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
        signer = hmac.new(self._secret, digestmod=hashlib.sha256)
        size = 0
        try:
            with open(temp, "wb") as out:

                def put(data: Any) -> None:
                    nonlocal size
                    signer.update(data)
                    out.write(data)
                    size += len(data) if isinstance(data, bytes) else memoryview(data).nbytes

                put(MAGIC)
                put(_HEAD.pack(self._key_id, len(text)))
                put(text)
                put(b"\0" * _pad(size))
                put(values)
                for v in views:
                    put(b"\0" * _pad(size))
                    put(v)
                out.write(signer.digest())
                size += _SIG
            os.replace(temp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        if self._size is not None:
            self._size += size
        return size

    def _ignore_in_git(self) -> None:
        marker = self.root / ".gitignore"
        if not marker.exists():
            with contextlib.suppress(OSError):
                marker.write_text(
                    "# ipytasks' cache: results of this machine, signed for its user\n*\n"
                )

    # -- listing, eviction, clearing ------------------------------------------------

    def infos(self) -> list[EntryInfo]:
        """Every entry, most recently used first (manifests read, not verified)."""
        found = []
        for path in self._entry_files():
            try:
                with open(path, "rb") as f:
                    head = f.read(len(MAGIC) + _HEAD.size)
                    if head[: len(MAGIC)] != MAGIC:
                        continue
                    _, length = _HEAD.unpack_from(head, len(MAGIC))
                    manifest = json.loads(f.read(min(length, 1 << 20)))
                    stat = os.fstat(f.fileno())
            except (OSError, ValueError, struct.error):
                continue
            found.append(EntryInfo(
                key=path.name[: -len(SUFFIX)],
                task=str(manifest.get("task", "?")),
                size=stat.st_size,
                used=stat.st_mtime,
                stored=float(manifest.get("stored", stat.st_mtime)),
                duration=float(manifest.get("duration", 0.0)),
            ))
        found.sort(key=lambda i: i.used, reverse=True)
        return found

    def _entry_files(self) -> Iterator[Path]:
        try:
            with os.scandir(self.entries) as it:
                for item in it:
                    if item.name.endswith(SUFFIX):
                        yield Path(item.path)
        except OSError:
            return

    def evict(self) -> list[str]:
        """Remove least recently used entries until the folder fits its cap; return their keys."""
        if self._size is not None and self._size <= self.max_size:
            return []
        now = time.time()
        sized = []
        total = 0
        try:
            with os.scandir(self.entries) as it:
                for item in it:
                    try:
                        stat = item.stat()
                    except OSError:
                        continue
                    if item.name.startswith(".tmp-"):
                        if now - stat.st_mtime > STALE_TEMP:  # a kernel died writing it
                            with contextlib.suppress(OSError):
                                os.unlink(item.path)
                        continue
                    if item.name.endswith(SUFFIX):
                        sized.append((stat.st_mtime, stat.st_size, item.name))
                        total += stat.st_size
        except OSError:
            return []
        removed = []
        for _, size, name in sorted(sized):
            if total <= self.max_size:
                break
            with contextlib.suppress(OSError):
                os.unlink(self.entries / name)
                removed.append(name[: -len(SUFFIX)])
            total -= size
        self._size = total
        return removed

    def remove(self, keys: list[str]) -> int:
        """Remove these entries; return how many were there."""
        return sum(self._remove(key) for key in keys)

    def _remove(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except OSError:
            return False
        self._size = None
        return True

    def trust(self, folder: Path) -> list[EntryInfo]:
        """Re-sign with this user's secret every well-formed entry in ``folder`` (a cache
        folder or its ``entries``); return what was re-signed.

        This is the user saying they trust what is in it: a file is checked for shape
        only (nothing is unpickled), then its signature is replaced.
        """
        folder = Path(folder)
        other = Store(folder if folder.name != "entries" else folder.parent, b"-", self.max_size)
        signed = []
        for info in other.infos():
            path = other.path(info.key)
            data = bytearray(path.read_bytes())
            if len(data) < len(MAGIC) + _HEAD.size + _SIG or data[: len(MAGIC)] != MAGIC:
                continue
            _HEAD.pack_into(data, len(MAGIC), self._key_id, _HEAD.unpack_from(data, len(MAGIC))[1])
            body = memoryview(data)[: len(data) - _SIG]
            data[len(data) - _SIG:] = hmac.new(self._secret, body, hashlib.sha256).digest()
            temp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(6)}")
            try:
                temp.write_bytes(data)
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
            signed.append(info)
        return signed

    # -- the latest outcome of each task name (for saying why a task ran again) ---

    def _note_path(self, task: str) -> Path:
        return self.root / "names" / f"{task}.json"

    def write_note(self, task: str, note: dict[str, Any]) -> None:
        """Remember the key parts of ``task``'s latest stored outcome (signed JSON)."""
        folder = self.root / "names"
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(note, separators=(",", ":"), sort_keys=True)
        signature = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()
        temp = folder / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            temp.write_text(f"{signature}\n{text}")
            os.replace(temp, self._note_path(task))
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def read_note(self, task: str) -> dict[str, Any] | None:
        """What :meth:`write_note` kept for ``task``, if it is there and signed by us."""
        try:
            signature, _, text = self._note_path(task).read_text().partition("\n")
        except (OSError, ValueError):
            return None
        expected = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            note = json.loads(text)
        except ValueError:
            return None
        return note if isinstance(note, dict) else None

    def forget_note(self, task: str) -> None:
        with contextlib.suppress(OSError):
            self._note_path(task).unlink()

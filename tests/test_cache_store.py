"""The cache's signed entries and its fingerprints, without a kernel.

Damage is done to real files (cut short, bytes flipped, another user's secret, a
pickle that would run code), two real processes write one entry at once, a writer
is killed before its rename, and a full and a read-only file system are real mounts
in a user namespace of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ipytasks.cache.fingerprint import Unfingerprintable, fingerprint
from ipytasks.cache.store import SECRET_FILE, CacheCorrupt, Store, load_secret
from ipytasks.workers import wire

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.fixture
def secret_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jupyter-data"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(folder))
    return folder


def pack(*values: object) -> tuple[bytes, list]:
    packer = wire.ValuePacker(cloud=True)
    for v in values:
        packer.add(v)
    return packer.getvalue(), packer.buffers


def put(store: Store, key: str, *values: object) -> Path:
    data, buffers = pack(*values)
    store.write(key, {"task": "t", "names": ["v"] * len(values)}, data, buffers)
    return store.path(key)


def take(store: Store, key: str, count: int = 1) -> list:
    file = store.open(key)
    assert file is not None, "no entry"
    entry = store.load(key, file)
    return list(wire.load_values(entry.values, entry.buffers, count))


def test_secret_is_made_once_private_and_in_the_jupyter_data_folder(secret_dir: Path) -> None:
    """The secret is created on first use with mode 0600 and read back the same afterwards."""
    first = load_secret()
    path = secret_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret() == first and len(first) == 32
    assert [p.name for p in secret_dir.iterdir()] == [SECRET_FILE]  # no temporary left


def test_an_array_comes_back_equal_writable_and_without_a_copy(tmp_path: Path, secret_dir: Path) -> None:
    """A NumPy array is mapped from the entry (not read into a copy) and can be changed."""
    store = Store(tmp_path / "c", load_secret())
    array = np.arange(1_000_000, dtype=np.float64)
    put(store, "k1", array, {"small": [1, 2]})
    back, small = take(store, "k1", 2)
    assert np.array_equal(back, array) and small == {"small": [1, 2]}
    assert not back.flags.owndata and back.flags.writeable
    base = back.base
    while isinstance(base, memoryview | np.ndarray):
        base = base.obj if isinstance(base, memoryview) else base.base
    assert type(base).__name__ == "mmap", type(base)
    back[0] = 42.0  # a private copy-on-write page: the entry is unchanged
    assert take(store, "k1")[0][0] == 0.0


@pytest.mark.parametrize("damage", ["cut short", "flipped byte", "header only"])
def test_a_damaged_entry_is_refused_and_removed(tmp_path: Path, secret_dir: Path, damage: str) -> None:
    store = Store(tmp_path / "c", load_secret())
    path = put(store, "k", np.arange(100_000))
    data = path.read_bytes()
    if damage == "cut short":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "flipped byte":
        path.write_bytes(data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    else:
        path.write_bytes(data[:20])
    with pytest.raises(CacheCorrupt):
        take(store, "k")
    assert not path.exists()
    assert store.open("k") is None


def test_another_users_entry_is_never_unpickled(tmp_path: Path, secret_dir: Path) -> None:
    """An entry signed with another secret, or a plain pickle dropped in the folder, is
    refused before anything in it runs; --trust re-signs what the user accepts."""
    marker = tmp_path / "code-ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    theirs = Store(tmp_path / "shared", os.urandom(32))
    put(theirs, "k", Boom())
    mine = Store(tmp_path / "shared", load_secret())
    with pytest.raises(CacheCorrupt, match="signed with another secret"):
        take(mine, "k")
    assert not marker.exists()

    import pickle

    mine.entries.mkdir(parents=True, exist_ok=True)
    mine.path("plain").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CacheCorrupt, match="not an ipytasks cache entry"):
        take(mine, "plain")
    assert not marker.exists()

    put(theirs, "k2", [1, 2, 3])
    signed = mine.trust(tmp_path / "shared")
    assert [i.key for i in signed] == ["k2"]
    assert take(mine, "k2") == [[1, 2, 3]]


WRITER = """
import sys
sys.path.insert(0, {src!r})
from pathlib import Path
from ipytasks.workers import wire
from ipytasks.cache.store import Store
store = Store(Path({root!r}), bytes.fromhex({secret!r}))
for i in range(60):
    packer = wire.ValuePacker()
    packer.add(bytes([{tag}]) * (200_000 + i))
    store.write("same", {{"task": "t", "names": ["v"]}}, packer.getvalue(), packer.buffers)
"""


def test_two_processes_writing_one_entry_never_corrupt_it(tmp_path: Path, secret_dir: Path) -> None:
    """Two writers replace the same entry 60 times each while it is read: every read is a
    whole entry of one of them."""
    secret = load_secret()
    root = tmp_path / "c"
    store = Store(root, secret)
    put(store, "same", b"\0" * 10)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER.format(
            src=SRC, root=str(root), secret=secret.hex(), tag=tag)])
        for tag in (1, 2)
    ]
    reads = 0
    while any(w.poll() is None for w in writers) or reads < 5:
        (value,) = take(store, "same")
        assert value in (b"\0" * 10,) or (len(set(value)) == 1 and value[0] in (1, 2)), value[:10]
        reads += 1
    assert [w.wait() for w in writers] == [0, 0]
    assert [p.name for p in store.entries.iterdir()] == ["same.ipt"]


def test_a_writer_killed_before_its_rename_leaves_no_entry(tmp_path: Path, secret_dir: Path) -> None:
    """A kernel killed while writing leaves only a temporary file: no entry, and the
    temporary is cleared once it is old."""
    secret = load_secret()
    root = tmp_path / "c"
    script = WRITER.replace("for i in range(60):", "import os\nos.replace = lambda *a: (print('written', flush=True), sys.stdin.read())\nfor i in range(1):")
    with subprocess.Popen(
        [sys.executable, "-c", script.format(src=SRC, root=str(root), secret=secret.hex(), tag=1)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as writer:
        assert writer.stdout.readline().strip() == "written"  # whole file written, not renamed
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    store = Store(root, secret, max_size=0)
    assert store.open("same") is None
    temps = list(store.entries.iterdir())
    assert len(temps) == 1 and temps[0].name.startswith(".tmp-")
    os.utime(temps[0], (0, 0))
    store.evict()
    assert list(store.entries.iterdir()) == []


def test_least_recently_used_entries_go_first(tmp_path: Path, secret_dir: Path) -> None:
    store = Store(tmp_path / "c", load_secret(), max_size=250_000)
    for i, key in enumerate(("a", "b", "c")):
        put(store, key, b"x" * 100_000)
        os.utime(store.path(key), (1000 + i, 1000 + i))
    take(store, "a")  # a hit makes it the most recently used
    store.evict()
    assert sorted(p.name for p in store.entries.iterdir()) == ["a.ipt", "c.ipt"]


FULL_OR_READ_ONLY = """
import os, sys
sys.path.insert(0, {src!r})
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
ip.run_line_magic("load_ext", "ipytasks")
import ipytasks
ip.run_line_magic("tasks_cache", {folder!r})
ip.run_cell_magic("parallel", "big --cache", "import numpy as np\\nbig = np.ones({n})\\nbig.sum()")
ip.run_line_magic("wait", "")
record = ipytasks.tasks["big"]
# A small entry is written after its task ended: the note says it was not stored once
# the write failed, and %tasks_cache waits for the writes under way, as a person would.
ip.run_line_magic("tasks_cache", "")
# The view is told on the loop after the write failed: a %wait (a round trip through the
# loop) comes after it, so the terminal's line is printed by then.
ip.run_line_magic("wait", "")
print(record.state, "|", record.cache_note, "|", record.result)
"""


@pytest.mark.parametrize("n", [1_000_000, 100_000], ids=["8MB-written-before-the-end",
                                                      "800kB-written-after-the-end"])
@pytest.mark.parametrize("mount, expected", [
    ("mount -t tmpfs -o size=256k tmpfs {m}", "No space left on device"),
    ("mount -t tmpfs tmpfs {m} && mount -o remount,ro {m}", "Read-only file system"),
])
def test_a_full_or_read_only_folder_still_runs_the_task(
    tmp_path: Path, secret_dir: Path, mount: str, expected: str, n: int
) -> None:
    """On a real full (256 KiB tmpfs) or read-only mount the task succeeds and its status
    says the outcome was not stored, and why: a large entry, written before the task
    ends, and a small one, written after."""
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True
    ).returncode != 0:
        pytest.skip("needs user namespaces (unshare -rm) to mount a small file system")
    m = tmp_path / "mnt"
    m.mkdir()
    script = tmp_path / "run.py"
    script.write_text(FULL_OR_READ_ONLY.format(src=SRC, folder=str(m / "cache"), n=n))
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount.format(m=m) + f" && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_DATA_DIR": str(secret_dir)},
    )
    assert done.returncode == 0, done.stderr
    last = next(line for line in done.stdout.splitlines() if line.count(" | ") == 2)
    state, note, result = (part.strip() for part in last.split("|"))
    assert state == "done" and result == f"{float(n)}"
    assert note == f"not stored before; not stored: {expected}", last
    if n < 1_000_000:  # found after the end: the terminal's view says it on a line of its own
        assert f"[big] not stored: {expected}\n" in done.stdout, done.stdout


# -- fingerprints ---------------------------------------------------------------------------


def test_a_change_in_place_changes_the_fingerprint() -> None:
    """Identity is never trusted: the same object changed in place has a new fingerprint."""
    array = np.zeros(1_000_000)
    before = fingerprint(array)
    array[123_456] = 1
    assert fingerprint(array) != before
    frame = pd.DataFrame({"x": range(5), "s": list("abcde")})
    before = fingerprint(frame)
    frame.loc[0, "x"] = 1
    assert fingerprint(frame) != before
    assert fingerprint(frame) == fingerprint(frame.copy())
    rows = [1, 2]
    before = fingerprint(rows)
    rows.append(3)
    assert fingerprint(rows) != before


@pytest.mark.parametrize("make, named", [
    ("open(__file__)", "_io.TextIOWrapper"),
    ("(i for i in range(3))", "generator"),
    ("threading.Lock()", "_thread.lock"),
    ("sqlite3.connect(':memory:')", "sqlite3.Connection"),
    ("Drifting()", "Drifting"),
])
def test_values_that_cannot_be_fingerprinted_are_named(make: str, named: str) -> None:
    import itertools
    import sqlite3  # noqa: F401
    import threading  # noqa: F401

    counter = itertools.count()

    class Drifting:  # pickles differently every time
        def __reduce__(self):
            return (int, (next(counter),))

    value = eval(make)  # noqa: S307
    try:
        with pytest.raises(Unfingerprintable) as info:
            fingerprint(value)
        assert info.value.what.endswith(named)
    finally:
        if hasattr(value, "close"):
            value.close()


FINGERPRINT_IN_A_NEW_PROCESS = """
import sys
sys.path.insert(0, {src!r})
from ipytasks.cache.fingerprint import fingerprint
source = '''
def scale(x, k=2):
    return [v * k for v in x] + sorted(LABELS)
LABELS = {{"b", "a", "c"}}
'''
code = compile(source, "/tmp/ipykernel_%d/cell.py" % {seed}, "exec")
exec(code, sys.modules["__main__"].__dict__)
print(fingerprint({{"labels": LABELS, "f": scale}}).hex())
"""


def test_notebook_functions_and_sets_fingerprint_the_same_in_every_process() -> None:
    """A function defined in a cell and a set of strings fingerprint alike in two
    processes with different string hashing and different cell file names."""
    digests = set()
    for seed in (1, 2, 3):
        out = subprocess.run(
            [sys.executable, "-c", FINGERPRINT_IN_A_NEW_PROCESS.format(src=SRC, seed=seed)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)},
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_a_notebook_functions_body_and_the_names_it_uses_count() -> None:
    namespace: dict = {"__name__": "__main__"}
    exec("K = 2\ndef f(x):\n    return x * K\n", namespace)  # noqa: S102
    first = fingerprint(namespace["f"])
    namespace["K"] = 3
    assert fingerprint(namespace["f"]) != first
    exec("def f(x):\n    return x * K + 0\n", namespace)  # noqa: S102
    namespace["K"] = 2
    assert fingerprint(namespace["f"]) != first

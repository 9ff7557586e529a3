"""Drive a real ipykernel through jupyter_client, for tests.

One :class:`Kernel` is one kernel process started from a kernelspec written into a private
temporary folder (its cwd, its IPYTHONDIR, its connection file and its log live there too). A
background thread records every IOPub message and keeps a table of the widget models the kernel
opened (state from ``comm_open`` merged with every ``update``/``echo_update``), so tests can look
at what a front end would show. The test thread owns the shell channel.

Environments: ``"ik7"`` is the Python running pytest; ``"ik6"`` is ``$IPYTASKS_IK6_PYTHON`` (the
Makefile builds ``.venv-ik6`` with ipykernel 6.29 / IPython 8 and points it there).
"""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipytasks.workers.local import TAG

ENVS = ("ik7", "ik6")
#: A worker process's first argument (see ``_workers_of``).
WORKER_TAG = TAG.encode()
IK6_VARIABLE = "IPYTASKS_IK6_PYTHON"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours in tracebacks)."""
    return _ANSI.sub("", text)


def ci_mode() -> bool:
    """True when running under CI (``CI`` set to a true value), where skipping is not allowed."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


class KernelEnvUnavailable(RuntimeError):
    """The Python interpreter for a kernel environment cannot be found."""


def env_python(env: str) -> str:
    """Path of the Python interpreter that runs kernels of ``env`` ("ik7" or "ik6")."""
    if env == "ik7":
        return sys.executable
    if env == "ik6":
        path = os.environ.get(IK6_VARIABLE, "")
        if not path:
            raise KernelEnvUnavailable(
                f"ik6 kernel tests need ${IK6_VARIABLE} (the Python of the ipykernel 6 env); "
                "`make test` builds .venv-ik6 and sets it"
            )
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise KernelEnvUnavailable(f"${IK6_VARIABLE}={path!r} is not an executable file")
        return path
    raise ValueError(f"unknown kernel environment {env!r}; expected one of {ENVS}")


def python_or_skip(env: str) -> str:
    """:func:`env_python`, skipping the test when it is unavailable — but failing under CI."""
    import pytest

    try:
        return env_python(env)
    except KernelEnvUnavailable as exc:
        if ci_mode():
            pytest.fail(f"{exc} (CI=true: kernel environment {env!r} must not be skipped)")
        pytest.skip(str(exc))


def _summary(msg: dict[str, Any], width: int = 100) -> str:
    """One line describing an IOPub message, for failure reports."""
    kind = msg.get("msg_type", "?")
    content = msg.get("content", {})
    parent = _short_id((msg.get("parent_header") or {}).get("msg_id", ""))
    if kind == "stream":
        detail = f"{content.get('name')}: {content.get('text', '')!r}"
    elif kind == "status":
        detail = content.get("execution_state", "")
    elif kind == "error":
        detail = f"{content.get('ename')}: {content.get('evalue')}"
    elif kind == "execute_input":
        detail = repr(content.get("code", ""))
    elif kind in ("display_data", "execute_result", "update_display_data"):
        detail = repr(content.get("data", {}).get("text/plain", sorted(content.get("data", {}))))
    elif kind in ("comm_open", "comm_msg", "comm_close"):
        data = content.get("data", {})
        state = data.get("state", {})
        detail = f"{content.get('comm_id', '')[:8]} {data.get('method', '')} {sorted(state)}"
        if "outputs" in state:
            detail += f" outputs={len(state['outputs'])}"
    else:
        detail = ""
    line = f"[{parent}] {kind} {detail}"
    return line if len(line) <= width else line[: width - 3] + "..."


def _short_id(msg_id: str) -> str:
    """jupyter_client's msg ids are ``<session>_<pid>_<n>``: show ``#n``."""
    if not msg_id:
        return "-"
    head, _, number = msg_id.rpartition("_")
    return f"#{number}" if head and number.isdigit() else msg_id[:8]


def _text(value: Any) -> str:
    """nbformat allows multiline strings as lists of lines."""
    return "".join(value) if isinstance(value, list) else str(value)


def _set_buffers(state: dict[str, Any], paths: list[list[Any]], buffers: list[Any]) -> None:
    for path, buf in zip(paths, buffers):
        if not path:
            continue
        obj: Any = state
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = bytes(buf)


def _workers_of(kernel_pid: int) -> list[int]:
    """Live ipytasks worker processes started by the kernel ``kernel_pid``.

    A worker's command line is ``python -P -u -c BOOT ipytasks-worker CMD_FD REPLY_FD
    KERNEL_PID …`` (``ipytasks.workers.local.TAG``).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
            state = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        if state[state.rfind(")") + 2 :][:1] in ("Z", "X"):
            continue
        for i, arg in enumerate(args):
            if (
                arg == WORKER_TAG
                and len(args) > i + 3
                and args[i + 3] == str(kernel_pid).encode()
            ):
                found.append(int(entry))
                break
    return found


def _process_group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state, fields[2] the process group
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


class Execution:
    """One ``execute_request`` and what the kernel sent for it."""

    def __init__(self, kernel: Kernel, msg_id: str, code: str) -> None:
        self.kernel = kernel
        self.msg_id = msg_id
        self.code = code
        self.reply: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Execution {_short_id(self.msg_id)} {self.status} {self.code[:40]!r}>"

    @property
    def status(self) -> str:
        """``"ok"``, ``"error"`` or ``"aborted"``; ``"pending"`` until the reply came."""
        return self.reply.get("status", "pending")

    @property
    def messages(self) -> list[dict[str, Any]]:
        """IOPub messages whose parent is this request, including ones that arrive later."""
        return self.kernel._messages_for(self.msg_id)

    def _stream(self, name: str) -> str:
        return "".join(
            _text(m["content"].get("text", ""))
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"].get("name") == name
        )

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Content (ename, evalue, traceback) of each ``error`` message of this request."""
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    @property
    def displays(self) -> list[dict[str, Any]]:
        """The mime bundle (``data``) of each display_data / execute_result of this request."""
        return [
            m["content"].get("data", {})
            for m in self.messages
            if m["msg_type"] in ("display_data", "execute_result")
        ]

    @property
    def display_ids(self) -> list[str]:
        """The display id of each display_data of this request that has one, in order."""
        return [
            m["content"]["transient"]["display_id"]
            for m in self.messages
            if m["msg_type"] == "display_data"
            and (m["content"].get("transient") or {}).get("display_id")
        ]

    @property
    def error_text(self) -> str:
        """Every error of this request as plain text: ``ename: evalue`` and the traceback."""
        errors = self.errors
        if not errors and self.reply.get("status") == "error":
            errors = [self.reply]
        parts = []
        for err in errors:
            parts.append(f"{err.get('ename')}: {err.get('evalue')}")
            parts.extend(strip_ansi(line) for line in err.get("traceback", []))
        return "\n".join(parts)

    def wait(self, timeout: float = 30, *, allow_errors: bool = False) -> Execution:
        """Block until the reply and the ``idle`` status of this request have arrived."""
        self.kernel._wait_done(self, timeout)
        if self.status != "ok" and not allow_errors:
            raise AssertionError(
                f"cell ended with status {self.status!r}:\n{_indent(self.code)}\n"
                f"--- error ---\n{_indent(self.error_text or '(no error content)')}\n"
                f"--- stdout ---\n{_indent(self.stdout)}\n--- stderr ---\n{_indent(self.stderr)}"
            )
        return self


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines()) or prefix + "(empty)"


class Kernel:
    """A running kernel of environment ``env`` ("ik7" or "ik6") and a recorder of its IOPub."""

    def __init__(
        self,
        env: str = "ik7",
        *,
        python: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60,
    ) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.env = env
        self.python = python or env_python(env)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"ipytasks-{env}-"))
        self.cwd = self.workdir / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        spec_dir = self.workdir / "kernels" / f"ipytasks-{env}"
        spec_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"ipytasks test ({env})",
            "language": "python",
            "metadata": {"debugger": False},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

        self._lock = threading.Condition(threading.RLock())
        self._messages: list[dict[str, Any]] = []
        self._by_parent: dict[str, list[dict[str, Any]]] = {}
        self._idle: set[str] = set()
        self._widgets: dict[str, dict[str, Any]] = {}
        self._displays: dict[str, dict[str, Any]] = {}
        self._replies: dict[str, dict[str, Any]] = {}
        self._shell_lock = threading.Lock()
        self._stop = threading.Event()
        self._pump_error: BaseException | None = None
        self._closed = False
        self._kc: Any = None
        self._pump: threading.Thread | None = None

        env_vars = dict(os.environ)
        env_vars["IPYTHONDIR"] = str(self.workdir / "ipython")
        env_vars["PATH"] = os.path.dirname(self.python) + os.pathsep + env_vars.get("PATH", "")
        env_vars.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        env_vars.setdefault("JUPYTER_PLATFORM_DIRS", "1")
        for name in ("PYTEST_CURRENT_TEST", "PYTEST_VERSION", "VIRTUAL_ENV"):
            env_vars.pop(name, None)

        self.log_path = self.workdir / "kernel.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in shutdown()
        self._km = KernelManager(
            kernel_name=f"ipytasks-{env}",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.workdir / "kernels")]),
            connection_file=str(self.workdir / "connection.json"),
        )
        try:
            self._km.start_kernel(
                cwd=str(self.cwd), env=env_vars, stdout=self._log, stderr=subprocess.STDOUT
            )
            self.pid: int = self._km.provisioner.process.pid
            self.pgid: int = os.getpgid(self.pid)
            self._kc = self._km.client()
            self._kc.start_channels()
            try:
                self._kc.wait_for_ready(timeout=startup_timeout)
            except RuntimeError as exc:
                raise AssertionError(
                    f"{env} kernel ({self.python}) did not start: {exc}\n{self.log_tail()}"
                ) from exc
            self._pump = threading.Thread(
                target=self._pump_iopub, name=f"iopub-{env}-{self.pid}", daemon=True
            )
            self._pump.start()
        except BaseException:
            self.shutdown()
            raise

    def __repr__(self) -> str:
        return f"<Kernel {self.env} pid={getattr(self, 'pid', None)}>"

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- IOPub recording (background thread) ---------------------------------------------

    def _pump_iopub(self) -> None:
        channel = self._kc.iopub_channel
        while not self._stop.is_set():
            try:
                msg = channel.get_msg(timeout=0.05)
            except queue.Empty:
                continue
            except Exception as exc:  # socket closed under us, or a bad message
                if not self._stop.is_set():
                    self._pump_error = exc
                return
            with self._lock:
                self._record(msg)
                self._lock.notify_all()

    def _record(self, msg: dict[str, Any]) -> None:
        self._messages.append(msg)
        parent = (msg.get("parent_header") or {}).get("msg_id")
        if parent:
            self._by_parent.setdefault(parent, []).append(msg)
        kind = msg["msg_type"]
        content = msg.get("content", {})
        if kind == "status" and content.get("execution_state") == "idle" and parent:
            self._idle.add(parent)
        elif kind in ("display_data", "update_display_data"):
            display_id = (content.get("transient") or {}).get("display_id")
            # A front end updates only displays it has shown.
            if display_id and (kind == "display_data" or display_id in self._displays):
                self._displays[display_id] = copy.deepcopy(content.get("data", {}))
        elif kind == "comm_open":
            if content.get("target_name") != "jupyter.widget":
                return
            data = content.get("data", {})
            state = copy.deepcopy(data.get("state", {}))
            _set_buffers(state, data.get("buffer_paths", []), msg.get("buffers", []))
            self._widgets[content["comm_id"]] = {
                "model_name": state.get("_model_name", ""),
                "state": state,
            }
        elif kind == "comm_msg":
            widget = self._widgets.get(content.get("comm_id", ""))
            data = content.get("data", {})
            if widget is None or data.get("method") not in ("update", "echo_update"):
                return
            state = copy.deepcopy(data.get("state", {}))
            _set_buffers(state, data.get("buffer_paths", []), msg.get("buffers", []))
            widget["state"].update(state)
            if "_model_name" in state:
                widget["model_name"] = state["_model_name"]
        elif kind == "comm_close":
            widget = self._widgets.get(content.get("comm_id", ""))
            if widget is not None:
                widget["closed"] = True

    def _messages_for(self, msg_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._by_parent.get(msg_id, ()))

    # ---- public API -------------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """Every IOPub message received so far (after start-up), in order."""
        with self._lock:
            return list(self._messages)

    def display(self, display_id: str) -> dict[str, Any]:
        """The mime bundle a front end shows for ``display_id`` now: the data of the last
        ``display_data`` or ``update_display_data`` with that id."""
        with self._lock:
            if display_id not in self._displays:
                raise AssertionError(f"no display {display_id!r}; known: {list(self._displays)}")
            return copy.deepcopy(self._displays[display_id])

    def widget_states(self) -> dict[str, dict[str, Any]]:
        """comm_id -> ``{"model_name", "state"}`` (plus ``"closed": True`` once closed)."""
        with self._lock:
            return copy.deepcopy(self._widgets)

    def widget_state(self, model_id: str) -> dict[str, Any]:
        """A copy of one widget's current state (cheaper than ``widget_states()[model_id]``)."""
        with self._lock:
            widget = self._widgets.get(model_id)
            if widget is None:
                raise AssertionError(f"no widget {model_id!r}; known: {list(self._widgets)}")
            return copy.deepcopy(widget["state"])

    def send_comm_msg(self, comm_id: str, data: dict[str, Any]) -> None:
        """Send a ``comm_msg`` to the kernel as a front end would, e.g. ``{"method": "update",
        "state": {"index": 2}, "buffer_paths": []}`` or ``{"method": "custom", "content":
        {"event": "click"}}`` for a button click. Returns at once."""
        self._check_open()
        msg = self._kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        with self._shell_lock:
            self._kc.shell_channel.send(msg)

    def find_widgets(self, model_name: str) -> list[str]:
        """comm_ids of the widgets of ``model_name`` ("OutputModel", ...), in order of opening."""
        with self._lock:
            return [cid for cid, w in self._widgets.items() if w["model_name"] == model_name]

    def output_widget_text(self, model_id: str, *, name: str | None = None) -> str:
        """The text of the stream entries in an Output widget's ``outputs`` (``name`` filters
        to "stdout" or "stderr")."""
        with self._lock:
            widget = self._widgets.get(model_id)
            if widget is None:
                known = [c for c, w in self._widgets.items() if w["model_name"] == "OutputModel"]
                raise AssertionError(f"no widget {model_id!r}; Output widgets: {known}")
            return "".join(
                _text(out.get("text", ""))
                for out in widget["state"].get("outputs", [])
                if out.get("output_type") == "stream" and (name is None or out.get("name") == name)
            )

    def submit(self, code: str, *, stop_on_error: bool = False) -> Execution:
        """Send an execute_request and return at once; ``Execution.wait()`` waits for it."""
        self._check_open()
        with self._shell_lock:
            msg_id = self._kc.execute(
                code, store_history=True, allow_stdin=False, stop_on_error=stop_on_error
            )
        return Execution(self, msg_id, code)

    def execute(
        self,
        code: str,
        *,
        timeout: float = 30,
        allow_errors: bool = False,
        stop_on_error: bool = False,
    ) -> Execution:
        """Run ``code`` and wait for its reply and its ``idle`` status.

        A reply other than ``ok`` raises AssertionError with the error, unless ``allow_errors``.
        """
        return self.submit(code, stop_on_error=stop_on_error).wait(
            timeout, allow_errors=allow_errors
        )

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 30, what: str = ""
    ) -> None:
        """Wait until ``predicate()`` is true, re-checking on each IOPub message and every 0.1 s."""
        deadline = time.monotonic() + timeout
        next_alive_check = time.monotonic() + 0.5
        while True:
            with self._lock:
                seen = len(self._messages)
            if predicate():
                return
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what or predicate!r}\n"
                    + self._report()
                )
            if now >= next_alive_check:
                next_alive_check = now + 0.5
                self._check_alive(f"waiting for {what or predicate!r}")
            with self._lock:
                if len(self._messages) == seen:
                    self._lock.wait(min(0.1, max(deadline - now, 0.001)))

    def interrupt(self) -> None:
        """Interrupt the kernel as the Stop button does (SIGINT to its process group)."""
        self._km.interrupt_kernel()

    def interrupt_cell(
        self, execution: Execution, timeout: float = 60, *, again_after: float = 10
    ) -> int:
        """Interrupt the kernel until ``execution`` has ended, as a user presses Stop again when
        a press did nothing; returns how many interrupts it took (raises at ``timeout``).

        An interrupt can be lost to a cell blocked in a system call: the kernel gets SIGINT as
        a process and CPython runs the handler in the main thread only, so a signal taken by
        another of the kernel's threads leaves the cell blocking (seen once in CI, ipykernel 6,
        a cell blocked reading a pipe)."""
        deadline = time.monotonic() + timeout
        presses = 0
        while True:
            self.interrupt()
            presses += 1
            left = deadline - time.monotonic()
            if self._wait_done(
                execution, min(again_after, max(left, 0)), strict=left <= again_after
            ):
                return presses

    def restart(self, timeout: float = 60) -> None:
        """Restart the kernel as a front end's Restart does: a new process on the same
        connection, in the same folder and environment; what the old one held is gone."""
        self._check_open()
        old = self.pid
        self._km.restart_kernel(now=False)
        self.pid = self._km.provisioner.process.pid
        self.pgid = os.getpgid(self.pid)
        assert self.pid != old, "the kernel process did not change"
        # Not the client's wait_for_ready: it reads IOPub itself, from this thread, while
        # the pump thread reads that socket too. A request queued until the new kernel
        # listens answers the same question; what the new kernel publishes before IOPub
        # has reconnected is lost (its idle, say), so ask until one comes back whole.
        deadline = time.monotonic() + timeout
        while not self._wait_done(self.submit("pass"), 5, strict=False):
            if time.monotonic() > deadline:
                raise AssertionError(f"the restarted kernel did not answer in {timeout:g} s")

    def is_alive(self) -> bool:
        return bool(self._km.is_alive())

    def processes_left(self) -> list[int]:
        """PIDs still alive of the kernel: its process group, and its process-mode workers
        (which run in process groups of their own)."""
        if not hasattr(self, "pgid"):
            return []
        return sorted(set(_process_group_members(self.pgid)) | set(_workers_of(self.pid)))

    def kill_leftovers(self) -> list[int]:
        """SIGKILL whatever is left of the kernel's process group; returns the PIDs killed."""
        left = self.processes_left()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def log_tail(self, lines: int = 40) -> str:
        """The end of the kernel process's own stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no kernel log)"
        tail = text.splitlines()[-lines:]
        return "--- kernel log (tail) ---\n" + ("\n".join(tail) if tail else "(empty)")

    def shutdown(self) -> None:
        """Shut the kernel down (shutdown_request, then kill after a grace period) and clean up.

        Processes the kernel started in its process group are not killed here (a test may want
        to check they ended by themselves); :meth:`kill_leftovers` does that.
        """
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if self._km.has_kernel:
                    self._km.shutdown_kernel(now=False)
            except Exception:
                try:
                    self._km.shutdown_kernel(now=True)
                except Exception:
                    if hasattr(self, "pid"):
                        try:
                            os.kill(self.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            process = getattr(self._km.provisioner, "process", None)
            if process is not None:  # the provisioner normally reaps it; make sure
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            self._stop.set()
            if self._pump is not None:
                self._pump.join(timeout=5)
            if self._kc is not None:
                self._kc.stop_channels()
                if not self._kc.context.closed:
                    self._kc.context.destroy(linger=0)
            try:
                self._km.cleanup_resources()
            except Exception:
                pass
            if getattr(self._km, "_created_context", False) and not self._km.context.closed:
                self._km.context.destroy(linger=0)
            self._log.close()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AssertionError(f"{self!r} was shut down")

    def _check_alive(self, doing: str) -> None:
        if self._pump_error is not None:
            raise AssertionError(f"IOPub reader failed: {self._pump_error!r}\n" + self._report())
        if not self._km.is_alive():
            code = getattr(getattr(self._km.provisioner, "process", None), "returncode", None)
            raise AssertionError(
                f"{self.env} kernel died (exit code {code}) while {doing}\n" + self._report()
            )

    def _report(self, last: int = 25) -> str:
        with self._lock:
            recent = self._messages[-last:]
            total = len(self._messages)
        lines = [f"--- last {len(recent)} of {total} IOPub messages ---"]
        lines += [_summary(m) for m in recent]
        lines.append(self.log_tail(15))
        return "\n".join(lines)

    def _poll_shell(self, timeout: float) -> None:
        with self._shell_lock:
            try:
                reply = self._kc.shell_channel.get_msg(timeout=timeout)
            except queue.Empty:
                return
        parent = (reply.get("parent_header") or {}).get("msg_id")
        if parent:
            self._replies[parent] = reply

    def _wait_done(self, execution: Execution, timeout: float, *, strict: bool = True) -> bool:
        """True once ``execution``'s reply and idle status are in; at ``timeout``, raise (or,
        not ``strict``, return False)."""
        deadline = time.monotonic() + timeout
        next_alive_check = time.monotonic() + 0.5
        while True:
            if not execution.reply and execution.msg_id in self._replies:
                execution.reply = self._replies.pop(execution.msg_id)["content"]
            with self._lock:
                idle = execution.msg_id in self._idle
            if execution.reply and idle:
                return True
            now = time.monotonic()
            if now >= deadline:
                if not strict:
                    return False
                raise AssertionError(
                    f"cell did not finish within {timeout:g} s (reply: "
                    f"{execution.status}, idle: {idle}):\n{_indent(execution.code)}\n"
                    + self._report()
                )
            if now >= next_alive_check:
                next_alive_check = now + 0.5
                self._check_alive(f"running {execution.code[:60]!r}")
            if not execution.reply:
                self._poll_shell(min(0.05, max(deadline - now, 0.001)))
            else:
                with self._lock:
                    if execution.msg_id not in self._idle:
                        self._lock.wait(min(0.1, max(deadline - now, 0.001)))

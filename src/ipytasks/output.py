"""Per-task output capture.

Everything a task prints or displays is caught where it is produced, keyed by a
context variable that the scheduler sets for the task, and kept in the task's
:class:`TaskOutput`. Routing therefore never depends on which cell the kernel
thinks is current (FACTS.md: a print from a thread goes to the *latest* cell on
ipykernel 7, and front ends drop output for a cell that has gone idle).

Views (the cell's status line and output area, a dashboard row) attach to a
``TaskOutput`` and are refreshed on the event loop, batched and throttled,
because every update of an ``Output`` widget re-sends its whole output list.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol

__all__ = ("TaskOutput", "OutputCapture", "current_output")

#: Seconds between two refreshes of a task's views while it produces output.
FLUSH_INTERVAL = 0.2

#: The output of the task whose code is running in this context, if any.
current_output: contextvars.ContextVar[TaskOutput | None] = contextvars.ContextVar(
    "ipytasks_current_output", default=None
)


class View(Protocol):
    def update(self, output: TaskOutput) -> None: ...


class TaskOutput:
    """What one task printed and displayed, as notebook outputs, plus its views.

    ``write`` and ``display`` may be called from any thread; views are refreshed on
    ``loop`` only. ``echo``, when given, receives stream text as it comes (the
    terminal, where there is no widget to refresh).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.echo = echo
        self.outputs: list[dict[str, Any]] = []
        self.version = 0
        self.views: list[View] = []
        self.owner: Any = None  # the TaskRecord, set by the scheduler
        self._text: list[str] = []
        self._lock = threading.Lock()
        self._flush_armed = False
        self._clear_pending = False

    @property
    def text(self) -> str:
        """All stream text so far, stdout and stderr in the order written."""
        with self._lock:
            return "".join(self._text)

    # -- producing --------------------------------------------------------------

    def write(self, name: str, text: str) -> None:
        """Append ``text`` to stream ``name`` (``"stdout"`` or ``"stderr"``)."""
        if not text:
            return
        with self._lock:
            self._take_pending_clear()
            self._text.append(text)
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last.get("output_type") == "stream" and last["name"] == name:
                # A new dict, never an in-place change: widget traits compare by value.
                self.outputs[-1] = {**last, "text": last["text"] + text}
            else:
                self.outputs.append({"output_type": "stream", "name": name, "text": text})
            self.version += 1
        if self.echo is not None:
            self.echo(name, text)
        self._arm_flush()

    def display(self, data: dict[str, Any], metadata: dict[str, Any] | None = None,
                display_id: str | None = None, update: bool = False) -> None:
        """Append (or, with ``update``, replace by ``display_id``) a rich output."""
        item = {"output_type": "display_data", "data": data, "metadata": metadata or {}}
        with self._lock:
            self._take_pending_clear()
            if update and display_id is not None:
                for i, old in enumerate(self.outputs):
                    if old.get("_display_id") == display_id:
                        self.outputs[i] = {**item, "_display_id": display_id}
                        break
            else:
                self.outputs.append({**item, "_display_id": display_id} if display_id else item)
            self.version += 1
        if self.echo is not None and "text/plain" in data:
            self.echo("stdout", str(data["text/plain"]) + "\n")
        self._arm_flush()

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """Append a traceback, shown like a failed cell's."""
        item = {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": traceback}
        with self._lock:
            self._take_pending_clear()
            self.outputs.append(item)
            self.version += 1
        self._arm_flush()

    def clear(self, wait: bool = False) -> None:
        """Clear the output area now, or with ``wait`` when the next output arrives."""
        with self._lock:
            if wait:
                self._clear_pending = True
                return
            self.outputs.clear()
            self.version += 1
        self._arm_flush()

    def _take_pending_clear(self) -> None:
        if self._clear_pending:
            self._clear_pending = False
            self.outputs.clear()

    def notebook_outputs(self) -> tuple[dict[str, Any], ...]:
        """The outputs in nbformat's shape (what an ``Output`` widget takes)."""
        with self._lock:
            return tuple(
                {k: v for k, v in o.items() if k != "_display_id"} if "_display_id" in o else o
                for o in self.outputs
            )

    # -- refreshing views ---------------------------------------------------------

    def attach(self, view: View) -> None:
        self.views.append(view)

    def detach(self, view: View) -> None:
        if view in self.views:
            self.views.remove(view)

    def _arm_flush(self) -> None:
        if not self.views:
            return
        with self._lock:
            if self._flush_armed:
                return
            self._flush_armed = True
        try:
            self.loop.call_soon_threadsafe(self._schedule_flush, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: nobody is left to show it to
            pass

    def _schedule_flush(self) -> None:
        self.loop.call_later(FLUSH_INTERVAL, self.flush, context=contextvars.Context())

    def flush(self) -> None:
        """Refresh every view now. Runs on the loop.

        Run it in an empty context: widget messages then carry the kernel's latest
        request as their parent, which is the cell a headless client listens to.
        """
        with self._lock:
            self._flush_armed = False
        for view in list(self.views):
            try:
                view.update(self)
            except Exception as exc:  # a broken view must not break the task
                _report_internal_error("refreshing a task's view", exc)


def _report_internal_error(what: str, exc: BaseException) -> None:
    stream = sys.__stderr__
    if stream is not None:
        print(f"ipytasks: error while {what}: {exc!r}", file=stream)


class _RoutingStream:
    """Stands in for ``sys.stdout``/``sys.stderr``: a task's writes go to its output."""

    def __init__(self, original: IO[str], name: str) -> None:
        self._ipytasks_original = original
        self._ipytasks_name = name
        self._ipytasks_dirty = True

    def write(self, text: str) -> int:
        sink = current_output.get()
        if sink is None:
            self._ipytasks_dirty = True
            return self._ipytasks_original.write(text)
        sink.write(self._ipytasks_name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        # ipykernel flushes both streams before every display, and each flush of its
        # stream waits for a round trip to its IO thread: skip it when nothing was
        # written through here since the last one.
        if current_output.get() is None and self._ipytasks_dirty:
            self._ipytasks_dirty = False
            self._ipytasks_original.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._ipytasks_original, attr)


class OutputCapture:
    """Installs the routing of streams and ``display()`` and takes it out again."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._streams: dict[str, _RoutingStream] = {}
        self._display_pub: Any = None

    @property
    def original_stdout(self) -> IO[str]:
        stream = self._streams.get("stdout")
        return stream._ipytasks_original if stream is not None else sys.stdout

    def install(self) -> None:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if not isinstance(current, _RoutingStream):
                routed = _RoutingStream(current, name)
                setattr(sys, name, routed)
                self._streams[name] = routed
        pub = self.shell.display_pub
        original_publish = pub.publish
        original_clear = pub.clear_output

        def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None,
                    *args: Any, **kwargs: Any) -> Any:
            sink = current_output.get()
            if sink is None:
                return original_publish(data, metadata, *args, **kwargs)
            transient = kwargs.get("transient") or {}
            sink.display(data, metadata, transient.get("display_id"), kwargs.get("update", False))
            return None

        def clear_output(wait: bool = False) -> Any:
            sink = current_output.get()
            if sink is None:
                return original_clear(wait)
            sink.clear(wait)
            return None

        # Instance attributes shadow the methods; deleting them restores the originals.
        pub.publish = publish
        pub.clear_output = clear_output
        self._display_pub = pub

    def uninstall(self) -> None:
        for name, routed in self._streams.items():
            if getattr(sys, name) is routed:
                setattr(sys, name, routed._ipytasks_original)
        self._streams.clear()
        pub = self._display_pub
        if pub is not None:
            for attr in ("publish", "clear_output"):
                pub.__dict__.pop(attr, None)
        self._display_pub = None

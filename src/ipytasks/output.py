"""Per-task output capture.

Everything a task prints or displays is caught where it is produced, keyed by a
context variable that the scheduler sets for the task, and kept in the task's
:class:`TaskOutput`. Routing therefore never depends on which cell the kernel
thinks is current (a print from a thread goes to the *latest* cell on ipykernel 7,
and headless clients drop output for a cell that has gone idle).

Views (the cell's display, the dashboard's output area) attach to a
``TaskOutput`` and are refreshed on the event loop when it changes, or when the
task's status does (:mod:`ipytasks.changes`): every refresh re-sends what the view
shows, so what it shows is bounded (a long stream is shown as its start and its
end), and each view spaces its refreshes out.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ("TaskOutput", "OutputCapture", "current_output")

#: Seconds between two refreshes of a task's views while it produces output: new output
#: is handed to them at most this often (writes from any thread, one call on the loop),
#: and a cell's view sends at most this often.
FLUSH_INTERVAL = 0.2
#: Characters of a run of stream text shown from its start, and from its end.
HEAD_CHARS = 20_000
TAIL_CHARS = 40_000

#: The output of the task whose code is running in this context, if any.
current_output: contextvars.ContextVar[TaskOutput | None] = contextvars.ContextVar(
    "ipytasks_current_output", default=None
)


class View(Protocol):
    def update(self, output: TaskOutput) -> None: ...


class _Stream:
    """A run of text written to one stream, kept as a window: its start and its end.

    The task keeps every character (:attr:`TaskOutput.text`); what a cell shows is
    bounded, so refreshing it costs the same after 10 lines or 10 million.
    """

    __slots__ = ("name", "head", "head_size", "tail", "tail_size", "size", "lines")

    def __init__(self, name: str) -> None:
        self.name = name
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.size = 0
        self.lines = 0

    def add(self, text: str) -> None:
        self.size += len(text)
        self.lines += text.count("\n")
        room = HEAD_CHARS - self.head_size
        if room > 0:
            piece = text[:room]
            self.head.append(piece)
            self.head_size += len(piece)
            text = text[room:]
            if not text:
                return
        if len(text) >= TAIL_CHARS:
            self.tail.clear()
            self.tail_size = 0
            text = text[-TAIL_CHARS:]
        self.tail.append(text)
        self.tail_size += len(text)
        while self.tail_size - len(self.tail[0]) >= TAIL_CHARS:
            self.tail_size -= len(self.tail.popleft())

    def window(self) -> tuple[str, int, int, str]:
        """``(start, characters left out, lines left out, end)`` of what was written."""
        head = "".join(self.head)
        tail = "".join(self.tail)[-TAIL_CHARS:]
        left_out = self.size - len(head) - len(tail)
        if left_out <= 0:
            return head + tail, 0, 0, ""
        # Whole lines only on both sides of the gap.
        cut = head.rfind("\n") + 1
        if cut:
            left_out += len(head) - cut
            head = head[:cut]
        start = tail.find("\n") + 1
        if 0 < start < len(tail):
            left_out += start
            tail = tail[start:]
        lines = self.lines - head.count("\n") - tail.count("\n")
        return head, left_out, lines, tail

    def shown_text(self, note: str) -> str:
        """The window as one text, with ``note`` (formatted with the counts) in the gap."""
        head, chars, lines, tail = self.window()
        if not chars:
            return head
        return head + note.format(chars=chars, lines=lines) + tail


#: What a TaskOutput's lists are until something is added to them: never added to itself.
_NONE: list[Any] = []


class TaskOutput:
    """What one task printed and displayed, as notebook outputs, plus its views.

    ``write`` and ``display`` may be called from any thread; views are refreshed on
    ``loop`` only. ``echo``, when given, receives stream text as it comes (the
    terminal, where there is no cell to refresh).

    ``outputs`` holds, in order, the task's streams (:class:`_Stream`: a bounded
    window of each run of text), displays and tracebacks; ``version`` grows with
    every change, so a view redraws only what changed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.echo = echo
        # Shared empty lists until the first output or view: most of a large map's items
        # print nothing, and three lists per item would be garbage collection's work.
        self.outputs: list[dict[str, Any] | _Stream] = _NONE
        self.version = 0
        self.views: list[View] = _NONE
        self.owner: Any = None  # the TaskRecord, set by the scheduler
        self._text: list[str] = _NONE
        self._lock = threading.Lock()
        self._flush_armed = False
        self._clear_pending = False

    def _outputs(self) -> list[dict[str, Any] | _Stream]:
        """The outputs, to add to (under the lock)."""
        if self.outputs is _NONE:
            self.outputs = []
        return self.outputs

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
            if self._text is _NONE:
                self._text = []
            self._text.append(text)
            last = self.outputs[-1] if self.outputs else None
            if not isinstance(last, _Stream) or last.name != name:
                last = _Stream(name)
                self._outputs().append(last)
            last.add(text)
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
                    if isinstance(old, dict) and old.get("_display_id") == display_id:
                        self.outputs[i] = {**item, "_display_id": display_id}
                        break
            else:
                self._outputs().append({**item, "_display_id": display_id} if display_id else item)
            self.version += 1
        if self.echo is not None and "text/plain" in data:
            self.echo("stdout", str(data["text/plain"]) + "\n")
        self._arm_flush()

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """Append a traceback, shown like a failed cell's."""
        item = {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": traceback}
        with self._lock:
            self._take_pending_clear()
            self._outputs().append(item)
            self.version += 1
        self._arm_flush()

    def clear(self, wait: bool = False) -> None:
        """Clear the output area now, or with ``wait`` when the next output arrives."""
        with self._lock:
            if wait:
                self._clear_pending = True
                return
            self.outputs = _NONE
            self.version += 1
        self._arm_flush()

    def _take_pending_clear(self) -> None:
        if self._clear_pending:
            self._clear_pending = False
            self.outputs = _NONE

    def snapshot(self) -> tuple[int, list[dict[str, Any] | _Stream]]:
        """``(version, outputs)`` as they are now; streams are to be read as windows."""
        with self._lock:
            return self.version, list(self.outputs)

    def notebook_outputs(self) -> tuple[dict[str, Any], ...]:
        """The outputs in nbformat's shape (what an ``Output`` widget takes).

        A stream longer than its window shows its start and end, with a line in
        between saying how much is left out and where the whole of it is.
        """
        note = _left_out_note(self.owner)
        _, outputs = self.snapshot()
        return tuple(
            {"output_type": "stream", "name": o.name, "text": o.shown_text(note)}
            if isinstance(o, _Stream)
            else {k: v for k, v in o.items() if k != "_display_id"} if "_display_id" in o else o
            for o in outputs
        )

    # -- keeping and restoring (``--cache``) -------------------------------------------

    def saved(self) -> list[dict[str, Any]]:
        """The outputs as JSON-ready data, to be shown again by :meth:`restore`.

        Bounded as the cell's display is: each stream as its window (start, what is
        left out, end), displays as their mime bundles. A widget's view is left out
        (its model lives only as long as this kernel), its text form kept.
        """
        saved: list[dict[str, Any]] = []
        for item in self.snapshot()[1]:
            if isinstance(item, _Stream):
                head, chars, lines, tail = item.window()
                saved.append({"stream": item.name, "head": head, "chars": chars,
                              "lines": lines, "tail": tail})
            elif item.get("output_type") == "display_data":
                data = {k: v for k, v in item["data"].items()
                        if k != "application/vnd.jupyter.widget-view+json"}
                if data:
                    saved.append({"data": data, "metadata": item.get("metadata") or {}})
        return saved

    def restore(self, saved: list[dict[str, Any]], text: str) -> None:
        """Show again what :meth:`saved` kept, as if the task had just produced it."""
        with self._lock:
            for item in saved:
                if "stream" in item:
                    stream = _Stream(item["stream"])
                    stream.head = [item["head"]]
                    stream.head_size = len(item["head"])
                    stream.tail = deque([item["tail"]] if item["tail"] else [])
                    stream.tail_size = len(item["tail"])
                    stream.size = len(item["head"]) + item["chars"] + len(item["tail"])
                    stream.lines = (item["head"].count("\n") + item["lines"]
                                    + item["tail"].count("\n"))
                    self._outputs().append(stream)
                else:
                    self._outputs().append({"output_type": "display_data", "data": item["data"],
                                            "metadata": item.get("metadata") or {}})
            if self._text is _NONE:
                self._text = []
            self._text.append(text)
            self.version += 1
        if self.echo is not None and text:
            self.echo("stdout", text)
        self._arm_flush()

    # -- refreshing views ---------------------------------------------------------

    def attach(self, view: View) -> None:
        if self.views is _NONE:
            self.views = []
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

        Run it in an empty context: messages then carry the kernel's latest
        request as their parent, which is the cell a headless client listens to.
        """
        with self._lock:
            self._flush_armed = False
        for view in list(self.views):
            try:
                view.update(self)
            except Exception as exc:  # a broken view must not break the task
                _report_internal_error("refreshing a task's view", exc)


#: Between the start and the end of a stream too long to show whole.
LEFT_OUT_NOTE = (
    "\n… {{lines:,}} lines ({{chars:,}} characters) left out here; "
    "{where} has all of it …\n"
)


def _left_out_note(record: Any) -> str:
    name = getattr(record, "name", None)
    where = f"ipytasks.tasks[{name!r}].output" if name else "the task's .output"
    return LEFT_OUT_NOTE.format(where=where)


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

    def __init__(self, shell: InteractiveShell) -> None:
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

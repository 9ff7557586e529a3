"""What the submitting cell shows of its task.

In a kernel: one display output with a live status line (name, state, elapsed
time ticking) above everything the task produced, updated in place from the
task's :class:`~ipytasks.output.TaskOutput`; it is an ordinary output, so the
saved notebook keeps it. In a terminal: the task's output as it
comes, and one line when it ends (``[load] done in 1.02s``).
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import itertools
import time
import uuid
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from .bundle import WIDGET_MIME, is_widget, merge
from .output import FLUSH_INTERVAL, _left_out_note, _report_internal_error
from .records import SUCCESSFUL, TaskState
from .throttle import Throttle

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .output import TaskOutput
    from .records import TaskRecord

__all__ = ("describe", "CellView", "CellDisplays", "TextView", "STATE_STYLE")

#: Per state: an icon that does not rely on colour alone, and a colour.
STATE_STYLE: dict[TaskState, tuple[str, str]] = {
    TaskState.PENDING: ("○", "#8a6d00"),
    TaskState.RUNNING: ("▶", "#1f6feb"),
    TaskState.DONE: ("✔", "#1a7f37"),
    TaskState.CACHED: ("✔", "#0a6e66"),
    TaskState.FAILED: ("✖", "#cf222e"),
    TaskState.CANCELLED: ("⊘", "#6e7781"),
    TaskState.TIMED_OUT: ("◷", "#bc4c00"),
    TaskState.SKIPPED: ("↷", "#6e7781"),
}


def describe(record: TaskRecord, now: float | None = None) -> str:
    """One line of plain text on where a task stands: ``load running 1.2s``."""
    state = record.state
    name = record.name
    if state is TaskState.PENDING:
        if record.pending_reason:
            return f"{name} pending: {record.pending_reason}"
        if record.waits_for:
            waiting = "; ".join(f"{n}: {record.reasons.get(n, 'after')}" for n in record.waits_for)
            return f"{name} pending: waits for {waiting}"
        return f"{name} pending"
    # --cache: why it runs, where its outcome came from, or why it was not stored.
    note = f" ({record.cache_note})" if record.cache_note else ""
    progress = record.progress
    if state is TaskState.RUNNING:
        elapsed = (now or time.time()) - (record.started or time.time())
        if record.options.map is not None:
            return f"{name} running {elapsed:.1f}s: {map_items(record)}"
        told = f": {progress.text()}" if progress is not None else ""
        return f"{name} running {elapsed:.1f}s ({record.mode}){note}{told}"
    if state is TaskState.CACHED:
        return f"{name} cached{note}"
    took = record.duration
    took_text = f"{took:.2f}s" if took is not None else ""
    if state is TaskState.DONE:
        if record.options.map is not None:
            return f"{name} done in {took_text}: {len(record.children)} items"
        told = f" · {progress.count()}" if progress is not None else ""
        return f"{name} done in {took_text}{note}{told}"
    if state is TaskState.SKIPPED:
        return f"{name} skipped: {record.error}"
    if state is TaskState.CANCELLED:
        text = f"{name} cancelled" + (f" after {took_text}" if took is not None else "")
        reason = str(record.error) if record.error is not None else ""
        # A cancel the user asked for needs no reason; unloading or a map's items do.
        return f"{text}: {reason}" if reason and reason != f"task {name!r} was cancelled" else text
    if state is TaskState.TIMED_OUT:
        return f"{name} timed out after {took_text}"
    error = record.error
    detail = f"{type(error).__name__}: {error}" if error is not None else ""
    at = f" at {progress.count()}" if progress is not None else ""
    return f"{name} failed in {took_text}{at}: {detail}".rstrip(": ")


def map_items(record: TaskRecord) -> str:
    """A ``--map`` task's items: ``37/100 done, 2 failed`` (and how many were cancelled)."""
    counts = Counter(child.state for child in record.children)
    done = sum(counts[s] for s in SUCCESSFUL)
    failed = counts[TaskState.FAILED] + counts[TaskState.TIMED_OUT] + counts[TaskState.SKIPPED]
    text = f"{done}/{len(record.children)} done"
    if failed:
        text += f", {failed} failed"
    if counts[TaskState.CANCELLED]:
        text += f", {counts[TaskState.CANCELLED]} cancelled"
    return text


def status_text(record: TaskRecord, state: TaskState | None = None, text: str = "") -> str:
    """The status line as text: ``✔ fetch done in 1.00s``.

    ``state`` and ``text`` (the words after the name) stand in for the record's own.
    """
    state = state or record.state
    return f"{STATE_STYLE[state][0]} {record.name} {text}" if text else (
        f"{STATE_STYLE[state][0]} {describe(record)}")


def status_html(record: TaskRecord, state: TaskState | None = None, text: str = "") -> str:
    """The status line as HTML: icon and outcome in the state's colour, the name in bold."""
    state = state or record.state
    icon, colour = STATE_STYLE[state]
    rest = text or describe(record).partition(" ")[2]
    return (
        f'<div class="ipytasks-status"><span style="color:{colour}" title="{state}">'
        f"{icon}</span> <b>{html.escape(record.name)}</b> "
        f'<span style="color:{colour}">{html.escape(rest)}</span></div>'
    )


#: What a cell run again while its task has not ended shows above the task's output.
STILL_RUNNING = (
    "{name} {verb}, so this is its output. To run the cell again: %cancel {name} first, "
    "or give the cell another NAME."
)

#: Seconds between two refreshes of a running task's status line when nothing else
#: changes: its elapsed time moves.
TICK_INTERVAL = 0.5

#: Status of a task whose kernel shut down while it had not ended.
SHUT_DOWN = "cancelled: the kernel shut down"


#: Display ids: unique to this process (one random part), then counted (a uuid4 per task
#: reads the system's random source, which costs as much as the rest of making the view).
_DISPLAY_PREFIX = f"ipytasks-{uuid.uuid4().hex[:16]}-"
_display_numbers = itertools.count(1)


class CellView:
    """A task's place in the cell that submitted it: one display output, kept current.

    The display holds the status line and everything the task produced (see
    :mod:`ipytasks.bundle`), and is updated in place by its display id, at most
    every :data:`~ipytasks.output.FLUSH_INTERVAL` seconds, every
    :data:`TICK_INTERVAL` seconds while the task runs (its elapsed time), and at once
    when the task ends. A widget the task displays goes to the cell as a display of
    its own.
    """

    def __init__(self, record: TaskRecord, displays: CellDisplays) -> None:
        self.record = record
        self.display_id = f"{_DISPLAY_PREFIX}{next(_display_numbers)}"
        self._displays = displays
        self._parent = displays.current_parent()
        self._output_version = -1
        self._output_parts = ("", "")
        self._widgets: set[str] = set()
        self._sent: dict[str, Any] | None = None
        self._throttle: Throttle | None = None
        self.final = False
        #: The submitting cell's id, where the front end sends one.
        self.cell: str | None = None

    def bundle(self, output: TaskOutput | None = None) -> dict[str, Any]:
        """The display's data now: status line, then the task's outputs."""
        record = self.record
        output = output if output is not None else record.sink
        if output is not None:
            version, outputs = output.snapshot()
            if version != self._output_version:
                self._output_version = version
                self._output_parts = merge(outputs, _left_out_note(record))
                self._forward_widgets(outputs)
        return self._compose()

    def _compose(self, state: TaskState | None = None, words: str = "") -> dict[str, Any]:
        text, rich = self._output_parts
        return {
            "text/plain": status_text(self.record, state, words) + ("\n" + text if text else ""),
            "text/html": status_html(self.record, state, words) + rich,
        }

    def show(self) -> None:
        """Make the display, in the cell that runs now."""
        self._sent = self.bundle()
        self._displays.publish(self._sent, self.display_id)
        sink = self.record.sink
        if sink is not None:
            self._throttled(sink.loop).flushed()  # the first update waits its turn

    def _throttled(self, loop: asyncio.AbstractEventLoop) -> Throttle:
        throttle = self._throttle
        if throttle is None:
            throttle = self._throttle = Throttle(
                self._refresh,
                mininterval=FLUSH_INTERVAL,
                # An empty context: the update's parent is the kernel's latest request.
                call_later=lambda delay, callback: loop.call_later(
                    delay, callback, context=contextvars.Context()),
                on_error=lambda exc: _report_internal_error("refreshing a task's view", exc),
            )
        return throttle

    def update(self, output: TaskOutput) -> None:
        """The task changed: send it soon (runs on the loop). A task that ended is sent
        at once, and for good."""
        if self.final or self._sent is None:
            # Not shown yet (the task is being registered): show() sends it as it is then.
            return
        throttle = self._throttled(output.loop)
        if self.record.state.ended:
            throttle.flush_now()
        else:
            throttle.request()

    def _refresh(self) -> None:
        record, throttle = self.record, self._throttle
        assert throttle is not None  # it runs this
        if self.final or record.sink is None:
            return
        bundle = self.bundle(record.sink)
        if record.state.ended:
            self.final = True
            throttle.close()
        elif record.state is TaskState.RUNNING:
            # Its elapsed time moves: come back for it, even if nothing else changes.
            throttle.request(TICK_INTERVAL)
        if bundle != self._sent:
            self._sent = bundle
            self._displays.publish(bundle, self.display_id, update=True, view=self)

    def amend(self, output: TaskOutput, note: str) -> None:
        """The task has ended and its status line changed since (``note``: its outcome
        could not be stored, found after the end): send the line again, once more."""
        if not self.record.state.ended:
            self.update(output)
            return
        bundle = self.bundle(output)
        if bundle != self._sent:
            self._sent = bundle
            self._displays.publish(bundle, self.display_id, update=True, view=self)

    def resend(self) -> None:
        """Send the last state again (a headless client may have missed it)."""
        if self._sent is not None:
            self._displays.publish(self._sent, self.display_id, update=True)

    def shut_down(self) -> None:
        """The kernel is going away with this task unfinished: say so, for good."""
        if self.final or self.record.state.ended:
            return
        self.final = True
        if self._throttle is not None:
            self._throttle.close()
        bundle = self._compose(TaskState.CANCELLED, SHUT_DOWN)
        self._displays.publish(bundle, self.display_id, update=True)

    def _forward_widgets(self, outputs: list[Any]) -> None:
        for item in outputs:
            if is_widget(item):
                model = str(item["data"][WIDGET_MIME].get("model_id", ""))
                if model not in self._widgets:
                    self._widgets.add(model)
                    self._displays.publish(item["data"], None, parent=self._parent,
                                           metadata=item.get("metadata"))


class _Resendable(Protocol):
    def resend(self) -> None: ...


class CellDisplays:
    """Sends the task cells' displays, and sends again what a headless client missed.

    An update parented to the request that runs now reaches every client;
    JupyterLab also applies one sent between requests, but nbclient and papermill
    only listen while a cell runs. So an update sent while no cell ran is sent again
    when the next cell starts (a closing ``%wait`` then saves every task's final
    state). When the kernel shuts down, tasks that have not ended say so in their cells.
    """

    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell
        self._executing = True  # installed by a magic, in a running cell
        self._views: weakref.WeakValueDictionary[TaskRecord, CellView] = (
            weakref.WeakValueDictionary())
        self._missed: dict[_Resendable, None] = {}

        self._open: weakref.WeakSet[CellView] = weakref.WeakSet()

    def install(self) -> None:
        events = self.shell.events
        events.register("pre_execute", self._pre_execute)
        events.register("post_execute", self._post_execute)
        self.shell.observe(self._exiting, names="exit_now")

    def uninstall(self) -> None:
        events = self.shell.events
        for name, callback in (("pre_execute", self._pre_execute),
                               ("post_execute", self._post_execute)):
            if callback in events.callbacks[name]:
                events.unregister(name, callback)
        try:
            self.shell.unobserve(self._exiting, names="exit_now")
        except ValueError:
            pass

    def current_parent(self) -> dict[str, Any]:
        return dict(self.shell.display_pub.parent_header or {})

    def view(self, record: TaskRecord) -> CellView:
        view = CellView(record, self)
        view.cell = self._current_cell()
        self._open.add(view)
        self._views[record] = view
        return view

    def shown_again(self, record: TaskRecord, source: str) -> CellView | None:
        """Show an unfinished task again if the running cell is the one that submitted it.

        The same cell is the same cell id where the front end sends one (JupyterLab,
        Notebook 7, nbclient), else the same text. Returns the view shown, or ``None``
        (another cell: the name is busy).
        """
        view = self._views.get(record)
        if view is None:
            return None
        cell = self._current_cell()
        same = cell == view.cell if cell or view.cell else source == record.source
        if not same:
            return None
        verb = "waits to run" if record.state is TaskState.PENDING else "still runs"
        note = STILL_RUNNING.format(name=record.name, verb=verb)
        self.publish({"text/plain": note, "text/html": f"<div>{html.escape(note)}</div>"}, None)
        view.show()
        return view

    def _current_cell(self) -> str | None:
        kernel = getattr(self.shell, "kernel", None)
        try:
            request = kernel.get_parent() if kernel is not None else None
        except Exception:  # noqa: BLE001 - no request to tell the cell by
            return None
        return ((request or {}).get("metadata") or {}).get("cellId")

    def publish(self, data: dict[str, Any], display_id: str | None, *, update: bool = False,
                view: _Resendable | None = None, parent: dict[str, Any] | None = None,
                metadata: dict[str, Any] | None = None) -> None:
        pub = self.shell.display_pub
        content: dict[str, Any] = {"data": data, "metadata": metadata or {}}
        if display_id is not None:
            content["transient"] = {"display_id": display_id}
        msg_type = "update_display_data" if update else "display_data"
        session = pub.session
        msg = session.msg(
            msg_type, content, parent=parent if parent is not None else pub.parent_header
        )
        session.send(pub.pub_socket, msg, ident=pub.topic)
        if view is not None and not self._executing:
            self._missed[view] = None

    def _pre_execute(self) -> None:
        self._executing = True
        missed, self._missed = self._missed, {}
        for view in missed:
            view.resend()

    def _post_execute(self) -> None:
        self._executing = False

    def _exiting(self, change: dict[str, Any]) -> None:
        if change.get("new"):
            for view in list(self._open):
                view.shut_down()


class TextView:
    """The terminal's view: a line when the task ends, with its traceback if it failed."""

    def __init__(self, record: TaskRecord, write: Any) -> None:
        self.record = record
        self._write = write
        self._said_end = False

    def amend(self, output: TaskOutput, note: str) -> None:
        """Said after the end line: ``[load] not stored: No space left on device``."""
        if self._said_end:
            self._write(f"[{self.record.name}] {note}\n")
        else:
            self.update(output)

    def update(self, output: TaskOutput) -> None:
        record = self.record
        if record.state.ended and not self._said_end:
            self._said_end = True
            line = f"[{describe(record).replace(' ', '] ', 1)}\n"
            if record.state is TaskState.FAILED and record.error is not None:
                line += record.error_text() + "\n"
            self._write(line)


def table(records: Any) -> str:
    """A plain-text table of tasks: the terminal's and a headless run's ``%tasks``."""
    records = list(records)
    if not records:
        return "no tasks yet"
    header = ("task", "chain/group", "mode", "state", "started", "duration", "progress", "cpu",
              "memory", "tries", "waits for")
    rows = [header]
    first = min((r.submitted for r in records), default=0.0)
    for r in records:
        lane = r.options.chain or r.options.group or ""
        if r.options.chain and r.options.group:
            lane = f"{r.options.chain}/{r.options.group}"
        started = f"+{r.started - first:.2f}s" if r.started is not None else ""
        duration = f"{r.duration:.2f}s" if r.duration is not None else ""
        if r.options.map is not None and r.children:
            told = map_items(r)
        else:
            told = r.progress.count() if r.progress is not None else ""
        cpu = f"{r.cpu_time:.2f}s" if r.cpu_time is not None else ""
        memory = f"{r.peak_rss / 1e6:,.0f} MB" if r.peak_rss else ""
        rows.append(
            (r.name, lane, r.mode, str(r.state), started, duration, told, cpu, memory,
             str(r.attempts), ", ".join(r.waits_for))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

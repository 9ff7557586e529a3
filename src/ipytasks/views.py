"""What the submitting cell shows of its task.

In a kernel: a live status line (name, state, elapsed time ticking) above the
task's own output area, both ipywidgets, refreshed from the task's
:class:`~ipytasks.output.TaskOutput`. In a terminal: the task's output as it
comes, and one line when it ends (``[load] done in 1.02s``).
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from .records import TaskState

if TYPE_CHECKING:
    from .output import TaskOutput
    from .records import TaskRecord

__all__ = ("describe", "CellView", "TextView", "STATE_STYLE")

#: Per state: an icon that does not rely on colour alone, and a colour.
STATE_STYLE: dict[TaskState, tuple[str, str]] = {
    TaskState.PENDING: ("○", "#8a6d00"),
    TaskState.RUNNING: ("▶", "#1f6feb"),
    TaskState.DONE: ("✔", "#1a7f37"),
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
    if state is TaskState.RUNNING:
        elapsed = (now or time.time()) - (record.started or time.time())
        if record.options.map is not None:
            ended = sum(1 for c in record.children if c.state.ended)
            return f"{name} running {elapsed:.1f}s: {ended} of {len(record.children)} done"
        return f"{name} running {elapsed:.1f}s ({record.mode})"
    took = record.duration
    took_text = f"{took:.2f}s" if took is not None else ""
    if state is TaskState.DONE:
        if record.options.map is not None:
            return f"{name} done in {took_text}: {len(record.children)} items"
        return f"{name} done in {took_text}"
    if state is TaskState.SKIPPED:
        return f"{name} skipped: {record.error}"
    if state is TaskState.CANCELLED:
        return f"{name} cancelled" + (f" after {took_text}" if took is not None else "")
    if state is TaskState.TIMED_OUT:
        return f"{name} timed out after {took_text}"
    error = record.error
    detail = f"{type(error).__name__}: {error}" if error is not None else ""
    return f"{name} failed in {took_text}: {detail}".rstrip(": ")


def _status_html(record: TaskRecord) -> str:
    icon, colour = STATE_STYLE[record.state]
    text = describe(record)
    name, _, rest = text.partition(" ")
    return (
        f'<span style="color:{colour}" title="{record.state}">{icon}</span> '
        f"<b>{html.escape(name)}</b> "
        f'<span style="color:{colour}">{html.escape(rest)}</span>'
    )


class CellView:
    """The status line and output area of one task, as ipywidgets.

    The output area is made when the task first has output: a task that prints
    nothing costs two widgets (and two comm messages) instead of three.
    """

    def __init__(self, record: TaskRecord) -> None:
        import ipywidgets as widgets

        layout, style = _shared_layout()
        self.record = record
        self.status = widgets.HTML(value=_status_html(record), layout=layout, style=style)
        self.area: Any = None
        self.widget = _task_box(children=(self.status,), layout=layout)
        self.widget._ipytasks_record = record
        self._shown_version = 0

    def update(self, output: TaskOutput) -> None:
        # Outputs first: once the status line says a task ended, its output is there.
        if output.version != self._shown_version:
            self._shown_version = output.version
            if self.area is None:
                import ipywidgets as widgets

                self.area = widgets.Output(layout=self.status.layout)
                self.area.outputs = output.notebook_outputs()
                self.widget.children = (self.status, self.area)
            else:
                self.area.outputs = output.notebook_outputs()
        status = _status_html(self.record)
        if self.status.value != status:
            self.status.value = status


def _task_box_class() -> type:
    import ipywidgets as widgets

    class TaskBox(widgets.VBox):
        """A VBox whose plain-text form names the task, for front ends without widgets."""

        def __repr__(self) -> str:
            record = getattr(self, "_ipytasks_record", None)
            return f"[{describe(record)}]" if record is not None else super().__repr__()

    return TaskBox


_box_class: type | None = None
_shared: tuple[Any, Any] | None = None


def _shared_layout() -> tuple[Any, Any]:
    # Every widget has a Layout (and an HTML a style), each a widget of its own with
    # a comm: sharing one set makes a task's view three comms instead of seven.
    global _shared
    if _shared is None or _shared[0].comm is None:
        from ipywidgets.widgets.widget_string import HTMLStyle
        import ipywidgets as widgets

        _shared = (widgets.Layout(), HTMLStyle())
    return _shared


def _task_box(**kwargs: Any) -> Any:
    # The class is built on first use: importing ipywidgets at load would slow
    # down %load_ext, and a terminal never needs it.
    global _box_class
    if _box_class is None:
        _box_class = _task_box_class()
    return _box_class(**kwargs)


class TextView:
    """The terminal's view: a line when the task ends, with its traceback if it failed."""

    def __init__(self, record: TaskRecord, write: Any) -> None:
        self.record = record
        self._write = write
        self._said_end = False

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
    header = ("task", "chain/group", "mode", "state", "started", "duration", "tries", "waits for")
    rows = [header]
    first = min((r.submitted for r in records), default=0.0)
    for r in records:
        lane = r.options.chain or r.options.group or ""
        if r.options.chain and r.options.group:
            lane = f"{r.options.chain}/{r.options.group}"
        started = f"+{r.started - first:.2f}s" if r.started is not None else ""
        duration = f"{r.duration:.2f}s" if r.duration is not None else ""
        rows.append(
            (r.name, lane, r.mode, str(r.state), started, duration, str(r.attempts),
             ", ".join(r.waits_for))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

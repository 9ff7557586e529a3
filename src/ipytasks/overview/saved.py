"""The dashboard's place in a saved notebook: a static snapshot, kept current.

A widget is drawn from kernel-side state that front ends do not save by default;
reopened without its kernel, a saved widget output reads "model not found". So
``%tasks`` shows two outputs:

- a snapshot (:func:`~ipytasks.overview.render.snapshot_html`: summary, timeline
  picture, table, errors) as an ordinary display, updated in place by its display
  id at most every :data:`SNAPSHOT_INTERVAL` seconds and at once when the last task
  ends; this is what the saved file, nbconvert and viewers without a kernel show;
- the live dashboard, through :class:`DashboardHost`: its front-end code draws the
  dashboard next to the host's output and hides the snapshot while it runs, then
  the kernel retires the host's output (an empty widget reference, which front ends
  hide and save as nothing). A host that no front end draws within
  :data:`PLACE_GRACE` seconds, or :data:`IDLE_GRACE` when the last task ends (a
  headless run, which ends with ``%wait``), is retired all the same, so the saved
  file holds no reference to a widget. Retiring a host that was drawn changes
  nothing: the live view already lives beside it.

``%tasks --graph`` shows the task graph the same way as the snapshot: one display of
static SVG, kept current (:func:`show_graph`).
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from ..bundle import WIDGET_MIME
from ..output import _report_internal_error
from ..taskgraph import task_graph
from ..throttle import Throttle
from .graph import graph_geometry, graph_html, graph_text, states_of
from .render import snapshot_html, summarize, text_table

if TYPE_CHECKING:
    from ..records import TaskRecord
    from ..scheduler import Scheduler
    from ..views import CellDisplays
    from .widgets import Dashboard

__all__ = ("DashboardHost", "SNAPSHOT_INTERVAL", "show_dashboard", "show_graph")

#: Least seconds between two updates of a dashboard's snapshot while tasks change.
SNAPSHOT_INTERVAL = 2.0
#: The snapshot lists every task up to this many; past it, its summary line as text.
TEXT_ROWS = 50
#: Seconds a host may take to be drawn before it is retired undrawn (a headless run).
PLACE_GRACE = 3.0
#: The same when the last task has ended (a closing ``%wait`` in a headless run).
IDLE_GRACE = 1.0
#: What a retired host's output holds: a reference to no widget, which front ends hide.
RETIRED = {WIDGET_MIME: {"model_id": "", "version_major": 2, "version_minor": 1}, "text/plain": ""}


class DashboardHost(anywidget.AnyWidget):
    """Draws a dashboard beside its own output, then asks to be retired (``host.js``)."""

    _esm = Path(__file__).with_name("host.js").read_text(encoding="utf-8")
    #: The dashboard's model id.
    target = traitlets.Unicode("").tag(sync=True)
    #: Names the snapshot this host's view hides while it runs.
    key = traitlets.Unicode("").tag(sync=True)


class _Snapshot:
    """A dashboard's snapshot display, kept current from the scheduler's changes."""

    #: The display id's prefix.
    kind = "dashboard"

    def __init__(self, scheduler: Scheduler, registry: Mapping[str, TaskRecord],
                 displays: CellDisplays) -> None:
        self.key = uuid.uuid4().hex
        self.display_id = f"ipytasks-{self.kind}-{self.key}"
        self._registry = registry
        self._displays = displays
        self._sent: dict[str, Any] | None = None
        self.host: _Host | None = None
        loop = scheduler.loop
        self._throttle = Throttle(
            self._send,
            mininterval=SNAPSHOT_INTERVAL,
            call_later=lambda delay, callback: loop.call_later(
                delay, callback, context=contextvars.Context()),
            on_error=lambda exc: _report_internal_error("refreshing a dashboard snapshot", exc),
            max_share=0.02,
            cpu_clock=time.thread_time,
        )
        self._feed = scheduler.subscribe(self._wake)

    def bundle(self) -> dict[str, Any]:
        records = self._registry
        text = text_table(records) if len(records) <= TEXT_ROWS else summarize(records).line()
        return {
            "text/plain": text,
            "text/html": f'<div data-ipytasks-dashboard="{self.key}">'
                         f"{snapshot_html(records)}</div>",
        }

    def show(self) -> None:
        self._sent = self.bundle()
        self._displays.publish(self._sent, self.display_id)

    def _wake(self, idle: bool) -> None:
        self._feed.take()
        if idle:
            contextvars.Context().run(self._throttle.flush_now)
            if self.host is not None:
                self.host.retire(undrawn_for=IDLE_GRACE)
        else:
            self._throttle.request(SNAPSHOT_INTERVAL)

    def _send(self) -> None:
        bundle = self.bundle()
        if bundle != self._sent:
            self._sent = bundle
            self._displays.publish(bundle, self.display_id, update=True, view=self)

    def resend(self) -> None:
        if self._sent is not None:
            self._displays.publish(self._sent, self.display_id, update=True)


class _GraphSnapshot(_Snapshot):
    """``%tasks --graph``: the task graph as SVG, kept current like a dashboard's snapshot
    (its layout is computed again only when a task or an edge is added)."""

    kind = "graph"

    def bundle(self) -> dict[str, Any]:
        graph = task_graph(list(self._registry.values()))
        return {"text/plain": graph_text(graph),
                "text/html": graph_html(graph_geometry(graph), states_of(graph))}


class _Host:
    """A host's display: retired once drawn, or after :data:`PLACE_GRACE` seconds undrawn."""

    def __init__(self, dashboard: Dashboard, key: str, displays: CellDisplays) -> None:
        self.widget = DashboardHost(target=dashboard.model_id, key=key)
        self.display_id = f"ipytasks-host-{key}"
        self._displays = displays
        self._shown_at = time.monotonic()
        self.widget.on_msg(self._on_msg)
        self._timer = dashboard._loop.call_later(
            PLACE_GRACE, self.retire, context=contextvars.Context())

    def show(self) -> None:
        view = {"model_id": self.widget.model_id, "version_major": 2, "version_minor": 1}
        self._displays.publish({WIDGET_MIME: view, "text/plain": ""}, self.display_id)

    def _on_msg(self, widget: Any, content: dict[str, Any], buffers: Any) -> None:
        if content.get("event") == "placed":
            self.retire()

    def retire(self, undrawn_for: float = 0.0) -> None:
        """Retire the host's output; only once it has waited ``undrawn_for`` seconds."""
        if self.widget.comm is None or time.monotonic() - self._shown_at < undrawn_for:
            return
        self._timer.cancel()
        self._displays.publish(RETIRED, self.display_id, update=True, view=self)
        self.widget.close()

    def resend(self) -> None:
        self._displays.publish(RETIRED, self.display_id, update=True)


def show_graph(scheduler: Scheduler, registry: Mapping[str, TaskRecord],
               displays: CellDisplays) -> None:
    """Show the task graph in the running cell, kept current until the kernel stops."""
    _GraphSnapshot(scheduler, registry, displays).show()


def show_dashboard(dashboard: Dashboard, displays: CellDisplays) -> None:
    """Show ``dashboard`` in the running cell: live where drawn, its snapshot saved."""
    snapshot = _Snapshot(dashboard._scheduler, dashboard._registry, displays)
    host = snapshot.host = _Host(dashboard, snapshot.key, displays)
    host.show()
    snapshot.show()

"""The live dashboard widget: summary, timeline, task table and actions.

Layout, top to bottom::

    view         12 tasks ▶ 3 running · ✔ 8 done · ✖ 1 failed — 6.0 s of work in 2.0 s: 3×
                 [timeline] [graph]
                 a bar per task on one time axis, idle stretches shaded; or the task
                 graph (drawn by the kernel once per added task or edge, recoloured by
                 the browser as states change; a click on a box picks its task)
                 show [all ▾] ◀ 1–20 of 1000 ▶ · picked: fit
                 one HTML table: the tasks of the current page; a click on a row picks it
                 (TasksView: one model, drawn by the browser; the timeline from numbers)
    [Cancel] [Retry] [Output]   for the picked task
    message      what the last action did
    output       the picked task's output (an ``Output`` widget fed from its TaskOutput)

Why one HTML table and not a row of widgets per task: each widget is a model the
front end must create and each changed widget is a message of its own, so 1,000
tasks would mean thousands of models (several buttons each) and, while they run,
one message per changed row. Here what a refresh changes (summary, timeline, table,
page) goes out as one message of one model, whatever the number of tasks, and only
the page being looked at is rendered. The timeline's numbers go out with the refresh
that shows a change in the table, so both show the same moment; between changes only
the time running bars reach (``now``) moves. Refreshes and timeline redraws also space out
with their own cost (:data:`MAX_SHARE`), so a session of 10,000 tasks is drawn less
often rather than slowing the kernel down.

Updates: the scheduler puts every change in the dashboard's
:class:`~ipytasks.changes.ChangeFeed` and wakes it when the feed was empty; the
dashboard then only asks its :class:`~ipytasks.throttle.Throttle` for a
refresh, which takes what the feed holds. A refresh runs at most every
``mininterval`` seconds (the first after a quiet spell :data:`SETTLE` seconds after
the change), re-renders from the records, and assigns only values that differ from
what the widgets hold (traitlets sends nothing for an equal value). While a task
runs, one timer ticks the durations every ``tick_interval``; when none runs there is
no timer and no work.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets as widgets
import traitlets

from .. import costs
from ..output import _report_internal_error
from ..records import ACTIVE, UNSUCCESSFUL, TaskState
from ..taskgraph import task_graph
from ..throttle import CallLater, Throttle
from ..views import STATE_STYLE
from .columns import TaskColumns
from .graph import graph_geometry, render_svg
from .render import SORTS, summarize, summary_html, table_html, text_table
from .saved import show_dashboard
from .timeline import LABELLED_LANES

#: A state's number, as the view's ``states`` lists them.
_STATE_NUMBER = {state: i for i, state in enumerate(TaskState)}

if TYPE_CHECKING:
    from ..output import TaskOutput
    from ..records import TaskRecord
    from ..scheduler import Scheduler
    from ..views import CellDisplays

__all__ = (
    "FILTERS",
    "MAX_SHARE",
    "MININTERVAL",
    "PAGE_SIZE",
    "PANELS",
    "SETTLE",
    "TICK_INTERVAL",
    "Dashboard",
    "TasksView",
    "open_dashboard",
)

#: Least seconds between two refreshes of a dashboard.
MININTERVAL = 0.5
#: Seconds from the first change after a quiet spell to the refresh that shows it.
SETTLE = 0.1
#: Seconds between two refreshes while tasks run and nothing else changes.
TICK_INTERVAL = 1.0
#: The most of the kernel's time the dashboard's refreshes may take: a refresh (or a
#: timeline redraw) that took ``c`` seconds of CPU is followed by none for ``c / MAX_SHARE``.
MAX_SHARE = 0.02
#: Tasks per page of the table.
PAGE_SIZE = 20
#: The most tasks the plain-text form of a dashboard lists one per line.
REPR_ROWS = 50

#: What the ``show`` filter offers: the states each choice keeps (``None``: all).
FILTERS: dict[str, frozenset[TaskState] | None] = {
    "all": None,
    "active": ACTIVE,
    "unsuccessful": frozenset(UNSUCCESSFUL),
    **{str(state): frozenset({state}) for state in TaskState},
}

#: What the dashboard can show above its table.
PANELS = ("timeline", "graph")

NO_SELECTION = "pick a task first: click its row in the table (or its box in the graph)"


def open_dashboard(
    scheduler: Scheduler,
    registry: Mapping[str, TaskRecord] | None = None,
    **options: Any,
) -> Dashboard:
    """Build a live dashboard of ``registry``'s tasks (default: the scheduler's) and return it.

    Display it (it is an ``ipywidgets.VBox``); ``close()`` it to stop its updates.
    Keyword options are :class:`Dashboard`'s.
    """
    return Dashboard(scheduler, registry, **options)


class TasksView(anywidget.AnyWidget):
    """The dashboard's view of its tasks, drawn in the browser (``dashboard.js``): the
    summary line, the timeline, and the task table with its filter and pager.

    One model, so that a refresh sends one message with whatever changed. For the
    timeline the kernel sends numbers (:class:`~ipytasks.overview.columns.TaskColumns`),
    not SVG: a redraw of 1,000 tasks costs it a few copies of memory, and the layout is
    the one of the timeline files (one lane per task up to ``labelled`` tasks, else
    packed). The table's rows are HTML (:func:`~ipytasks.overview.render.table_html`),
    of the page shown only.

    The kernel alone sets :attr:`show`, :attr:`page` and :attr:`selected`. When the user
    picks a filter, turns the page or clicks a row, the front end sends an event (a
    custom message ``{"event": "show" | "page" | "selected", "value": …}``) and the
    kernel answers with the new state. Events rather than state updates, because a
    front end sends its next state update of a model only once the kernel reported
    idle for the previous one, and ipykernel 7 handles a widget message that arrives
    while an ``await`` cell runs without reporting busy or idle for it: one change
    made then would hold back every later change for good. Custom messages are not
    held back (buttons use them too), and with one writer the kernel never races a
    user's change with a refresh.
    """

    # The source itself, not its path: anywidget watches a path for changes by holding
    # every view made from it, so no view could ever be freed.
    _esm = Path(__file__).with_name("dashboard.js").read_text(encoding="utf-8")
    #: The line on top (:func:`~ipytasks.overview.render.summary_html`): counts per
    #: state, and work against wall time.
    summary = traitlets.Unicode("").tag(sync=True)

    #: The timeline's data, in one trait (each trait set costs the kernel as much as
    #: a small message, whatever its size):
    #:
    #: - ``names``: one task name per line, in submission order, as UTF-8 (bytes travel
    #:   beside the message's JSON, not inside it);
    #: - ``rows``: five float64 columns: submitted, started, ended (epoch seconds, NaN:
    #:   not yet), state number, mode number;
    #: - ``modes``: per mode number, the mode's name;
    #: - ``total``: how many tasks there are. Past ``labelled`` the timeline is packed:
    #:   it draws the tasks that started and counts the others ("+k not started");
    #: - ``t0``: the run's time zero, in epoch seconds.
    timeline = traitlets.Dict().tag(sync=True)
    #: The time running bars reach, in epoch seconds (alone: it moves while the rest
    #: of the timeline may not).
    now = traitlets.Float(0.0).tag(sync=True)
    #: Per state number: its name, icon and colour.
    states = traitlets.List([[str(s), *STATE_STYLE[s]] for s in TaskState]).tag(sync=True)
    labelled = traitlets.Int(LABELLED_LANES).tag(sync=True)

    #: The table: ``html``, the rows of the current page as an HTML table (each row's
    #: ``data-task``: its name); ``label``, ``1–20 of 45`` (or ``no tasks``, ``no
    #: running tasks``); ``pages``, how many pages there are.
    table = traitlets.Dict().tag(sync=True)
    #: The page shown, from 0.
    page = traitlets.Int(0).tag(sync=True)
    #: Which tasks the table lists: one of ``filters`` (:data:`FILTERS`).
    show = traitlets.Unicode("all").tag(sync=True)
    filters = traitlets.List(traitlets.Unicode(), list(FILTERS)).tag(sync=True)
    #: The picked task's name: the one Cancel, Retry and Output apply to.
    selected = traitlets.Unicode(None, allow_none=True).tag(sync=True)

    #: What shows above the table: ``"timeline"`` or ``"graph"`` (one of :data:`PANELS`).
    panel = traitlets.Unicode("timeline").tag(sync=True)
    #: The task graph, while it is the panel shown, drawn by the kernel
    #: (:func:`~ipytasks.overview.graph.render_svg`): ``svg``; ``names`` and
    #: ``notes`` (a map's item count), per box in the order of the SVG's boxes. Sent
    #: again only when a task or an edge was added: state changes go in ``graph_states``.
    graph = traitlets.Dict().tag(sync=True)
    #: Per box of ``graph``: its task's state number (an index into ``states``).
    graph_states = traitlets.List(traitlets.Int()).tag(sync=True)


class _OutputView:
    """Attached to the selected task's ``TaskOutput``: new output asks for a refresh."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def update(self, output: TaskOutput) -> None:
        self.dashboard._changed()


class Dashboard(widgets.VBox):
    """A live view of every task: see the module docstring for the parts.

    :param scheduler: the :class:`~ipytasks.scheduler.Scheduler` whose changes to follow
        (``subscribe``/``unsubscribe``, ``cancel``, ``loop``, ``on_loop_thread``).
    :param registry: the records to show, name → latest record (default ``scheduler.tasks``).
    :param page_size: rows per page of the table.
    :param mininterval: least seconds between two refreshes.
    :param tick_interval: seconds between refreshes while tasks run and nothing changes.
    :param retry: ``retry(name)`` for the Retry button (the API hands in
        ``ipytasks.retry``). Without one the button is hidden.
    :param clock: monotonic seconds for throttling (``time.monotonic``); when given, it
        also measures what refreshes cost (else the loop thread's CPU time does).
    :param wall: epoch seconds for durations (``time.time``), the clock task records use.
    :param call_later: ``call_later(delay, callback)`` for the refresh timer (default: the
        scheduler's loop, in an empty context).
    :param displays: the kernel's :class:`~ipytasks.views.CellDisplays`: displayed, the
        dashboard then also shows a snapshot that the saved notebook keeps
        (:mod:`~ipytasks.overview.saved`).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        registry: Mapping[str, TaskRecord] | None = None,
        *,
        page_size: int = PAGE_SIZE,
        mininterval: float = MININTERVAL,
        tick_interval: float = TICK_INTERVAL,
        retry: Callable[[str], Any] | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        call_later: CallLater | None = None,
        displays: CellDisplays | None = None,
    ) -> None:
        Layout = widgets.Layout
        self._displays = displays
        self.view = TasksView()
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            tooltip="cancel the picked task")
        self.retry_button = widgets.Button(description="Retry", icon="redo", disabled=True,
                                           tooltip="run the picked task's cell again")
        # A Button, not a ToggleButton: a click is a custom message, which a front end
        # never holds back (see TasksView), where a toggle's value is a state update.
        self.output_button = widgets.Button(description="Output", icon="align-left",
                                            tooltip="show the picked task's output")
        self.message = widgets.HTML()
        self.output = widgets.Output(layout=Layout(
            display="none", max_height="320px", overflow="auto", border="1px solid #d0d7de"))
        actions = widgets.HBox([self.cancel_button, self.retry_button, self.output_button])
        super().__init__(children=(self.view, actions, self.message, self.output))

        self._scheduler = scheduler
        self._registry: Mapping[str, TaskRecord] = (
            registry if registry is not None else scheduler.tasks
        )
        self.page_size = page_size
        self.tick_interval = tick_interval
        self._clock = clock or time.monotonic
        self._cost_clock = clock or time.thread_time
        self._timeline_at = -math.inf
        self._timeline_cost_gap = 0.0
        # Tasks changed since the timeline's numbers last went out.
        self._timeline_stale = True
        self._table_rows: dict[TaskRecord, tuple[float, bool, str]] = {}
        self._wall = wall or time.time
        self._loop = scheduler.loop
        self._retry = retry
        if retry is None:
            self.retry_button.layout.display = "none"
        if call_later is None:
            loop = self._loop

            def call_later(delay: float, callback: Callable[[], None]) -> Any:
                # An empty context: widget messages then carry the kernel's latest
                # request as parent, never the cell of the task that changed.
                return loop.call_later(delay, callback, context=contextvars.Context())

        self._throttle = Throttle(
            self._refresh,
            mininterval=mininterval,
            call_later=call_later,
            clock=self._clock,
            on_error=lambda exc: _report_internal_error("refreshing the dashboard", exc),
            max_share=MAX_SHARE,
            cpu_clock=self._cost_clock,
        )
        self._page = 0
        self._show = "all"
        self._panel = "timeline"
        self._graph_geometry: Any = None
        #: The table's order: ``(key, descending)`` (a key of :data:`SORTS`), or ``None``:
        #: submission order.
        self._sort: tuple[str, bool] | None = None
        self._selected: str | None = None
        self._output_view = _OutputView(self)
        self._watched: TaskOutput | None = None
        self._shown_version = -1
        self._output_shown = False
        self._closed = False

        self.view.on_msg(self._on_event)
        self.cancel_button.on_click(lambda _: self._post(self._cancel_selected))
        self.retry_button.on_click(lambda _: self._post(self._retry_selected))
        self.output_button.on_click(lambda _: self._post(self._toggle_output))

        self._columns = TaskColumns(self._registry)
        self._feed = scheduler.subscribe(self._wake)
        costs.watch(+1)  # worker processes say where their bodies are while it is open
        # What the last render showed, to tell when a refresh has nothing new to show.
        self._seen: tuple[Any, ...] = ()
        self._shown_counts: Mapping[TaskState, int] = {}
        self._shown_running = False
        self._render()
        self._on_loop(self._tick_if_running)

    # -- following the scheduler ------------------------------------------------------

    def _wake(self, idle: bool) -> None:
        """Called by the scheduler (on the loop) when tasks changed, or all have ended."""
        if self._closed:
            return
        if idle:
            # The last task ended: show the final state now, not after the throttle's
            # delay, so a `%wait` that returns finds it sent (a headless run saves the
            # widget state it saw while that cell ran). In an empty context, so the
            # kernel sends it as part of its latest request.
            contextvars.Context().run(self._throttle.flush_now)
        else:
            # A short wait first, so that a burst (a cell submitting many tasks, a
            # `--map`) is shown once it has settled rather than caught half-way.
            self._throttle.request(SETTLE)

    def _changed(self) -> None:
        if not self._closed:
            self._throttle.request()

    def _refresh(self) -> None:
        if self._closed:
            return
        if self._render():
            self._throttle.request(self.tick_interval)

    def _tick_if_running(self) -> None:
        if not self._closed and any(
            r.state is TaskState.RUNNING for r in self._registry.values()
        ):
            self._throttle.request(self.tick_interval)

    # -- rendering ----------------------------------------------------------------------

    def _render(self) -> bool:
        """Bring every part up to date; parts whose content is unchanged send nothing.

        Returns whether a task is running (then durations need ticking).
        """
        # Several changes of a task between two refreshes are applied once.
        changed = self._feed.take()
        columns = self._columns
        columns.update(changed)
        records = list(self._registry.values())
        now = self._wall()
        watched = self._watched
        seen = (self._page, self._show, self._panel, self._selected, self._output_shown,
                watched.version if watched is not None else None, len(records), self._sort)
        if not changed and not self._shown_running and seen == self._seen:
            # Nothing moved since the last render (a refresh for a due timeline redraw).
            self._send({}, self._shown_counts, now, changed=False)
            return False
        self._seen = seen
        keep = FILTERS[self._show]
        shown = records if keep is None else [r for r in records if r.state in keep]
        if self._sort is not None:
            key, descending = self._sort
            shown = sort_records(shown, key, descending, now)
        pages = max(1, math.ceil(len(shown) / self.page_size))
        self._page = page = min(self._page, pages - 1)
        visible = shown[page * self.page_size:(page + 1) * self.page_size]
        mono = self._clock()
        for r in visible:
            if r.state is TaskState.RUNNING:
                costs.look(r, mono)  # at most once a second each, for the rows shown only
        if shown:
            first = page * self.page_size + 1
            label = f"{first}–{first + len(visible) - 1} of {len(shown)}"
        else:
            label = "no tasks" if keep is None else f"no {self._show.replace('_', ' ')} tasks"
        selected = self._selected
        summary = columns.summary(now)
        values = {
            "summary": summary_html(summary),
            "table": {"html": table_html(visible, now=now, t0=columns.run_start(),
                                         selected=selected, cache=self._table_rows,
                                         sort=self._sort or ("", False)),
                      "label": label, "pages": pages},
            "page": page, "show": self._show, "selected": selected, "panel": self._panel}
        if self._panel == "graph":
            self._graph_values(records, values)
        self._send(values, summary.counts, now, changed=bool(changed))

        record = self._registry.get(selected) if selected is not None else None
        _assign(self.cancel_button, disabled=record is None or record.state.ended)
        _assign(self.retry_button,
                disabled=self._retry is None or record is None or record.state not in UNSUCCESSFUL)
        self._render_output(record)
        self._shown_counts = summary.counts
        self._shown_running = TaskState.RUNNING in summary.counts
        return self._shown_running

    def _send(self, values: dict[str, Any], counts: Mapping[TaskState, int], now: float,
              *, changed: bool) -> None:
        """Give the view ``values`` and, when tasks ``changed`` since the timeline was
        last sent, the timeline's numbers: one message with those that changed.

        So the timeline shows what the table shows, in the same message, unless its last
        redraw was costly: a redraw is followed by none for its cost over
        :data:`MAX_SHARE` (a refresh is then asked for when it is due). While tasks run,
        ``now`` goes out with every refresh, so running bars grow as durations tick.
        """
        self._timeline_stale |= changed
        mono = self._clock()
        due = self._timeline_at + self._timeline_cost_gap
        redraw = self._timeline_stale and mono >= due
        cost = self._cost_clock()
        if redraw:
            self._timeline_at = mono
            self._timeline_stale = False
            columns = self._columns
            values["timeline"] = {
                "names": columns.names(), "rows": columns.rows(), "modes": list(columns.modes),
                "total": len(self._registry), "t0": columns.run_start() or now}
        elif self._timeline_stale:
            self._throttle.request(due - mono)
        if any(s in ACTIVE for s in counts):
            values["now"] = now
        _assign(self.view, **values)
        if redraw:
            # What the redraw cost, with the message it went in.
            self._timeline_cost_gap = (self._cost_clock() - cost) / MAX_SHARE

    def _graph_values(self, records: list[TaskRecord], values: dict[str, Any]) -> None:
        """The graph's states, and the graph itself when a task or an edge was added (its
        layout is kept until then)."""
        graph = task_graph(records)
        geometry = graph_geometry(graph)
        if geometry is not self._graph_geometry:
            self._graph_geometry = geometry
            states = {n.name: n.state for n in graph.nodes}
            values["graph"] = {"svg": render_svg(geometry, states),
                               "names": [box.name for box in geometry.nodes],
                               "notes": [box.note for box in geometry.nodes]}
        values["graph_states"] = [_STATE_NUMBER[n.state] for n in graph.nodes]

    def _render_output(self, record: TaskRecord | None) -> None:
        sink = record.sink if record is not None and self._output_shown else None
        if sink is not self._watched:
            self._unwatch()
            if sink is not None:
                sink.attach(self._output_view)
                self._watched = sink
        if sink is None:
            return
        if sink.version != self._shown_version:
            self._shown_version = sink.version
            self.output.outputs = sink.notebook_outputs()

    def _unwatch(self) -> None:
        if self._watched is not None:
            self._watched.detach(self._output_view)
            self._watched = None
            self._shown_version = -1
            if self.output.outputs:
                self.output.outputs = ()

    # -- user actions (front-end events may come on another thread) ---------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop, whatever thread the event arrived on."""
        if self._closed:
            return
        try:
            self._loop.call_soon_threadsafe(self._guarded, fn, *args, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: ipytasks was unloaded
            pass

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a failed action must not reach the loop
            _report_internal_error("handling a dashboard action", exc)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        on_loop = getattr(self._scheduler, "on_loop_thread", None)
        if on_loop is not None and on_loop():
            fn()
        else:
            self._post(fn)

    def _on_event(self, _view: Any, content: Any, _buffers: Any) -> None:
        """A filter picked, a page turned or a row clicked in the browser (TasksView)."""
        if not isinstance(content, dict):
            return
        actions: dict[Any, Callable[[Any], None]] = {
            "show": self._set_filter, "page": self._goto, "selected": self._select,
            "sort": self._set_sort,
            "panel": self._set_panel,
        }
        action = actions.get(content.get("event"))
        if action is not None:
            self._post(action, content.get("value"))

    def _select(self, name: Any) -> None:
        """Make ``name`` the task that the action buttons and the output area apply to."""
        if not isinstance(name, str | None) or name == self._selected:
            return
        self._selected = name
        _assign(self.message, value="")
        self._throttle.flush_now()

    def _set_filter(self, value: Any) -> None:
        if not isinstance(value, str) or value not in FILTERS:
            return  # not one the front end offers: the filter in use stays
        self._show = value
        self._page = 0
        self._throttle.flush_now()

    def _set_sort(self, key: Any) -> None:
        """Sort the table by ``key`` (a header's ``data-sort``); the same key again turns
        the order round. Costs and progress start with the most, the rest with the least."""
        if not isinstance(key, str) or key not in SORTS.values():
            return
        if self._sort is not None and self._sort[0] == key:
            self._sort = (key, not self._sort[1])
        else:
            self._sort = (key, key in ("duration", "progress", "cpu", "memory"))
        self._page = 0
        self._throttle.flush_now()

    def _set_panel(self, value: Any) -> None:
        """Show the timeline or the task graph above the table."""
        if not isinstance(value, str) or value not in PANELS:
            return
        self._panel = value
        self._throttle.flush_now()

    def _goto(self, page: Any) -> None:
        if isinstance(page, int) and not isinstance(page, bool):
            self._page = max(0, page)
        self._throttle.flush_now()

    def _selected_record(self) -> TaskRecord | None:
        record = self._registry.get(self._selected) if self._selected is not None else None
        if record is None:
            _assign(self.message, value=NO_SELECTION)
        return record

    def _cancel_selected(self) -> None:
        record = self._selected_record()
        if record is None:
            return
        if self._scheduler.cancel([record]):
            _assign(self.message, value=f"cancelling <b>{record.name}</b>")
        else:
            _assign(self.message, value=f"<b>{record.name}</b> has already ended ({record.state})")
        self._throttle.flush_now()

    def _retry_selected(self) -> None:
        record = self._selected_record()
        if record is None or self._retry is None:
            return
        try:
            self._retry(record.name)
        except Exception as exc:  # noqa: BLE001 - shown to the user, like a usage error
            import html

            _assign(self.message, value=f'<span style="color:#cf222e">retry {record.name}: '
                                        f"{html.escape(str(exc))}</span>")
        else:
            _assign(self.message, value=f"retrying <b>{record.name}</b>")
        self._throttle.flush_now()

    def _toggle_output(self) -> None:
        self._output_shown = show = not self._output_shown
        _assign(self.output_button, description="Hide output" if show else "Output",
                tooltip="hide the output" if show else "show the picked task's output")
        self.output.layout.display = None if show else "none"
        if show and self._selected is None:
            _assign(self.message, value=NO_SELECTION)
        self._throttle.flush_now()

    # -- lifetime ---------------------------------------------------------------------

    def all_widgets(self) -> Iterator[widgets.Widget]:
        """This dashboard and every widget it is made of (layouts and styles included)."""
        seen: set[int] = set()
        stack: list[Any] = [self]
        while stack:
            widget = stack.pop()
            if not isinstance(widget, widgets.Widget) or id(widget) in seen:
                continue
            seen.add(id(widget))
            yield widget
            stack.extend(getattr(widget, "children", ()))
            for attr in ("layout", "style"):
                stack.append(getattr(widget, attr, None))

    def close(self) -> None:
        """Stop following the scheduler and close every widget of the dashboard."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self._scheduler.unsubscribe(self._feed)
            costs.watch(-1)
            on_loop = getattr(self._scheduler, "on_loop_thread", None)
            if on_loop is not None and on_loop():
                self._throttle.close()
            else:
                try:
                    self._loop.call_soon_threadsafe(self._throttle.close)
                except RuntimeError:  # the loop is closed: so is its timer
                    pass
            if self._watched is not None:
                self._watched.detach(self._output_view)
            self._watched = None
            for widget in list(self.all_widgets()):
                if widget is not self:
                    widget.close()
        super().close()

    def _ipython_display_(self) -> None:
        if self._displays is not None:
            show_dashboard(self, self._displays)  # live, and a snapshot the notebook saves
        else:
            from IPython.display import display

            display(self._repr_mimebundle_(), raw=True)

    def __repr__(self) -> str:
        # What front ends without widgets (and ``print``) show: the text table, or
        # only its summary line when it would be long.
        registry = getattr(self, "_registry", None)
        if registry is None:
            return super().__repr__()
        if len(registry) <= REPR_ROWS:
            return text_table(registry)
        return summarize(registry).line()


_STATE_ORDER = {state: i for i, state in enumerate(TaskState)}


def sort_records(records: list[TaskRecord], key: str, descending: bool,
                 now: float) -> list[TaskRecord]:
    """``records`` in the order of column ``key`` (:data:`SORTS`); those without a value
    (not started, not measured) last either way, in submission order."""
    def value(r: TaskRecord) -> Any:
        if key == "task":
            return r.name
        if key == "state":
            return _STATE_ORDER[r.state]
        if key == "started":
            return r.started
        if key == "duration":
            return None if r.started is None else (r.ended or now) - r.started
        if key == "progress":
            if r.options.map is not None and r.children:
                return sum(1 for c in r.children if c.state.ended) / len(r.children)
            return r.progress.fraction if r.progress is not None else None
        if key == "cpu":
            return r.cpu_time
        if key == "memory":
            return r.peak_rss
        return r.attempts

    valued = [(v, r) for r in records if (v := value(r)) is not None]
    valued.sort(key=lambda pair: pair[0], reverse=descending)
    return [r for _, r in valued] + [r for r in records if value(r) is None]


def _assign(widget: widgets.Widget, **values: Any) -> None:
    """Set the traits that differ, in one message."""
    changed = {k: v for k, v in values.items() if getattr(widget, k) != v}
    if not changed:
        return
    if len(changed) == 1:
        (name, value), = changed.items()
        setattr(widget, name, value)
        return
    with widget.hold_sync():
        for name, value in changed.items():
            setattr(widget, name, value)

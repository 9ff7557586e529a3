"""The overview of all tasks: the live dashboard, a text table, a snapshot, timeline files.

- :func:`open_dashboard` ``(scheduler, registry)``: the live ipywidgets dashboard
  (``%tasks`` / ``ipytasks.dashboard()`` in a notebook);
- :func:`text_table` ``(records)``: the same as plain text (``%tasks`` in a terminal);
- :func:`snapshot_html` ``(records)``: a frozen HTML copy, for headless runs and reports;
- :func:`write_timeline` ``(records, path)``: the timeline as an ``.svg`` or ``.png`` file.

``records`` may be ``ipytasks.tasks`` itself or any iterable of task records.
ipywidgets is imported only when a live dashboard is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .render import snapshot_html as snapshot_html
from .render import summarize as summarize
from .render import text_table as text_table
from .timeline import timeline_geometry as timeline_geometry
from .timeline import write_timeline as write_timeline

if TYPE_CHECKING:
    from ..records import TaskRecord
    from ..scheduler import Scheduler
    from .widgets import Dashboard

__all__ = (
    "open_dashboard",
    "snapshot_html",
    "summarize",
    "text_table",
    "timeline_geometry",
    "write_timeline",
)


def open_dashboard(
    scheduler: Scheduler, registry: Mapping[str, TaskRecord] | None = None, **options: Any
) -> Dashboard:
    """Build a live dashboard of ``registry``'s tasks (default: ``scheduler.tasks``).

    Returns an ``ipywidgets.VBox`` to display; it follows the scheduler until
    ``close()``d. Keyword options: see :class:`ipytasks.overview.widgets.Dashboard`.
    """
    from .widgets import open_dashboard as _open

    return _open(scheduler, registry, **options)

"""Small helpers shared by the dashboard's renderers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..records import TaskRecord


def records_of(records: Iterable[TaskRecord] | Mapping[str, TaskRecord] | Any) -> list[TaskRecord]:
    """The records of a registry (``ipytasks.tasks``) or of any iterable of records.

    Iterating a registry yields names, so a mapping is read through ``values()``.
    """
    if isinstance(records, Mapping):
        return list(records.values())
    return list(records)


def seconds(value: float) -> str:
    """A duration for people: ``0.35 s``, ``6.0 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if value < 1:
        return f"{value:.2f} s" if value > 0 else "0.00 s"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        minutes, secs = divmod(round(value), 60)
        return f"{minutes} min {secs:02d} s"
    hours, rest = divmod(round(value), 3600)
    return f"{hours} h {rest // 60:02d} min"


def offset(value: float) -> str:
    """A time since the start of the run: ``+1.20 s``."""
    if value < 60:
        return f"+{value:.2f} s" if value > 0 else "+0.00 s"
    return "+" + seconds(value)


def lane_of(record: TaskRecord) -> str:
    """Chain and group of a task, as one label (``main``, ``fetch``, ``main/fetch``)."""
    chain, group = record.options.chain, record.options.group
    if chain and group:
        return f"{chain}/{group}"
    return chain or group or ""


def run_start(records: list[TaskRecord]) -> float | None:
    """Time zero of a run's axis: the first submission (or start, if earlier)."""
    first: float | None = None
    for r in records:
        t = r.submitted if r.started is None or r.submitted <= r.started else r.started
        if first is None or t < first:
            first = t
    return first

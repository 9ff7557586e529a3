"""Helpers for testing and benchmarking the dashboard without wall time or a front end.

- :class:`VirtualClock`: virtual time and timers (tqdm's ``DiscreteTimer``, trio's
  ``MockClock``): pass ``clock=vc.time, wall=vc.time, call_later=vc.call_later`` to
  :func:`~ipytasks.overview.open_dashboard`, then :meth:`VirtualClock.advance`.
- :class:`WidgetMessages`: counts the state updates widgets send to the front end,
  by hooking ``Widget._send`` (each call is one ``comm_msg`` on iopub).
- :func:`timeline_tasks`: what a live timeline view holds, read back from its numbers.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any, Self

__all__ = ("VirtualClock", "WidgetMessages", "timeline_tasks")


class _Timer:
    def __init__(self, clock: VirtualClock, when: float, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time that moves only when told to, and timers that fire when it passes them.

    :param start: the initial time (use an epoch-like value to stand in for ``time.time``).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self, self.now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    @property
    def pending(self) -> list[float]:
        """When the timers that are still armed fire, soonest first."""
        return sorted(t.when for _, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float = 0.0) -> int:
        """Move time forward, firing due timers in order, each at its own time.

        Returns how many fired.
        """
        end = self.now + seconds
        fired = 0
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            fired += 1
            timer.callback()
        self.now = end
        return fired


class WidgetMessages:
    """Record the updates widgets send, while used as a context manager.

    ``only``: count the widgets of this collection only (e.g. a dashboard's
    ``all_widgets()``, re-read at every message), otherwise every widget.
    Each entry of :attr:`sent` is ``(model_id, state keys, bytes of JSON and buffers)``.
    """

    def __init__(self, only: Callable[[], Iterable[Any]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._only = only
        self._clock = clock
        self.sent: list[tuple[str, tuple[str, ...], int]] = []
        self.times: list[float] = []
        self._original: Any = None

    def __enter__(self) -> Self:
        from ipywidgets import Widget

        original = self._original = Widget._send
        recorder = self

        def _send(widget: Any, msg: dict[str, Any], buffers: Any = None) -> Any:
            if recorder._only is None or any(w is widget for w in recorder._only()):
                state = msg.get("state", {}) if isinstance(msg, dict) else {}
                # Binary values travel as buffers beside the JSON, named by buffer_paths.
                paths = msg.get("buffer_paths", []) if isinstance(msg, dict) else []
                keys = tuple(sorted({*state, *(str(p[0]) for p in paths)}))
                size = len(json.dumps(msg, default=str)) + sum(
                    memoryview(b).nbytes for b in buffers or ())
                recorder.sent.append((widget.model_id, keys, size))
                if recorder._clock is not None:
                    recorder.times.append(recorder._clock())
            return original(widget, msg, buffers)

        Widget._send = _send
        return self

    def __exit__(self, *exc: object) -> None:
        from ipywidgets import Widget

        Widget._send = self._original

    def __len__(self) -> int:
        return len(self.sent)

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.sent)

    def clear(self) -> None:
        self.sent.clear()
        self.times.clear()

    def max_in_window(self, window: float = 1.0) -> int:
        """The most messages sent within any ``window`` seconds (needs ``clock``)."""
        best = 0
        start = 0
        for end, t in enumerate(self.times):
            while t - self.times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best


def timeline_tasks(names: bytes, rows: bytes) -> dict[str, tuple[str, float, float | None,
                                                              float | None]]:
    """Decode a live timeline's ``names`` and ``rows`` (as ``dashboard.js`` reads them):
    name → (state, submitted, started, ended), times in epoch seconds or ``None``."""
    from ..records import TaskState

    lines = bytes(names).decode().split("\n") if names else []
    n = len(lines)
    values = struct.unpack(f"<{5 * n}d", rows) if n else ()
    states = list(TaskState)

    def at(i: int) -> float | None:
        return None if math.isnan(values[i]) else values[i]

    return {
        line: (str(states[int(values[3 * n + i])]), values[i], at(n + i), at(2 * n + i))
        for i, line in enumerate(lines)
    }

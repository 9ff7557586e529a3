"""async mode: the body runs as a coroutine on the scheduler's event loop."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from .. import costs
from .abc import Mode

if TYPE_CHECKING:
    from ..records import TaskRecord


class AsyncMode(Mode):
    """Run the cell on the loop itself, in the notebook's namespace.

    Cancel and timeout cancel the coroutine, as they would any asyncio task.
    """

    name = "async"

    async def run(self, task: TaskRecord) -> Any:
        assert task.cell is not None
        running = asyncio.current_task()
        if running is not None:
            task._sampler = functools.partial(costs.coroutine_where, running, task.cell.filename)
        try:
            return await task.cell.run_async(self.shell.user_ns)
        finally:
            task._sampler = None


mode_class = AsyncMode

"""The one small interface every run mode implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..records import TaskRecord

__all__ = ("Mode",)


class Mode(metaclass=ABCMeta):
    """Where a task body runs.

    A mode is created once per session, on first use, with the IPython shell.
    The scheduler calls :meth:`run` inside the task's own context: output written
    to ``sys.stdout`` there already lands in the task's output area, and
    ``task.sink`` takes output that arrives from elsewhere (a worker process).
    """

    #: The word used for it on the magic line and in ``task.mode``.
    name: ClassVar[str]

    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell

    def prepare(self, task: TaskRecord) -> None:
        """Check a task at submission, on the submitting thread, before it is registered.

        Raise ``errors.BadArgument`` to refuse it (no task is created). The default accepts all.
        """

    @abstractmethod
    async def run(self, task: TaskRecord) -> Any:
        """Run ``task.cell`` and return its result, or raise its error.

        Cancelling the awaiting asyncio task must stop the body (cancel, timeout).
        """

    def close(self) -> None:
        """Release what the mode holds (threads, worker processes). Called on unload."""

"""The one small interface every run mode implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ..records import TaskRecord

__all__ = ("Begun", "Mode")


@dataclass(frozen=True, slots=True)
class Begun:
    """A body that :meth:`Mode.begin` started."""

    #: Awaited for the body's result (or error), as :meth:`Mode.run` would be; cancelling
    #: the awaiting task stops the body.
    outcome: Coroutine[Any, Any, Any]
    #: Stops the body when ``outcome`` will never be awaited (the task was cancelled first).
    stop: Callable[[], None]


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

    #: Whether :meth:`begin` starts a body at once (a mode that overrides it says so).
    begins_at_once: ClassVar[bool] = False

    def begin(
        self, task: TaskRecord, returned: Callable[[Any], None] | None = None
    ) -> Begun:
        """Start the body now, on the loop's thread, in the task's context (the runner
        calls it at registration for a task that waits for nothing, when
        :attr:`begins_at_once`): the first attempt then costs no loop turn before it runs.

        ``returned(value)``, when given, is called on the loop's thread in the turn the
        body's value arrives (not when the body raises), before ``outcome`` gives it: the
        runner ends the task there, so whoever waits for it resumes a turn sooner.
        """
        raise NotImplementedError

    @abstractmethod
    async def run(self, task: TaskRecord) -> Any:
        """Run ``task.cell`` and return its result, or raise its error.

        Cancelling the awaiting asyncio task must stop the body (cancel, timeout).
        """

    def close(self) -> None:
        """Release what the mode holds (threads, worker processes). Called on unload."""

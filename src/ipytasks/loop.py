"""The event loop tasks run on, from start to close, and how other threads reach it.

Every task's state changes on this one loop's thread: the kernel's own loop in a
kernel (where the magics already run), or a loop of ipytasks' own in a daemon
thread where no loop runs between cells (terminal IPython, a script). Calls from
other threads hop onto it (:meth:`LoopHost.call`); a thread that must wait for a
result blocks on it (:meth:`LoopHost.run_blocking`), which the loop's own thread
may never do.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BadArgument

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ("LoopHost",)

T = TypeVar("T")

OWN_LOOP_NOTICE = (
    "ipytasks: no event loop runs between cells here, so tasks run on a loop of their own "
    "in a background thread. Objects made in `await` cells belong to IPython's loop and "
    "cannot be awaited in async tasks.\n"
)
BLOCKS_THE_LOOP = (
    "this would block the event loop the tasks run on: "
    "use `await ipytasks.wait(...)`, or %wait on a line of its own"
)


class LoopHost:
    """The event loop tasks run on, and a way to call into it from any thread.

    :param loop: the running loop to use; ``None`` starts a loop of its own in a
        daemon thread.
    :param at_exit: called when the interpreter exits before :meth:`close` (the
        kernel shut down with tasks unfinished).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        *,
        at_exit: Callable[[], None] | None = None,
    ) -> None:
        self.own_thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    leftover = asyncio.all_tasks(loop)
                    for task in leftover:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.close()

            self.own_thread = threading.Thread(target=run, name="ipytasks-loop", daemon=True)
            self.own_thread.start()
            ready.wait(10)
            self.thread_ident = self.own_thread.ident
        else:
            self.thread_ident = threading.get_ident()
        self.loop = loop
        self._at_exit = at_exit
        if at_exit is not None:
            atexit.register(at_exit)

    @classmethod
    def for_shell(
        cls,
        shell: InteractiveShell,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        at_exit: Callable[[], None] | None = None,
    ) -> LoopHost:
        """``loop``, else the kernel's running loop when ``shell`` has a kernel, else a
        loop of its own (which the user is told about once, on stderr)."""
        if loop is None and getattr(shell, "kernel", None) is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        host = cls(loop, at_exit=at_exit)
        if host.own:
            sys.stderr.write(OWN_LOOP_NOTICE)
        return host

    @property
    def own(self) -> bool:
        """Whether the loop is ipytasks' own, in a thread of its own."""
        return self.own_thread is not None

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_ident

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop thread and return its value (or raise its error)."""
        if self.on_loop_thread():
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result()

    def run_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Block this thread until ``coro`` ends on the loop; not from the loop's thread.

        Ctrl-C (or any error here) cancels ``coro`` and re-raises: it ends the wait only.

        :raises ValueError: called on the loop's thread, which it would block for good.
        """
        if self.on_loop_thread():
            coro.close()
            raise BadArgument(BLOCKS_THE_LOOP)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def await_on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on this loop, from a coroutine on any loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        """Forget the exit hook; stop and join a loop of ipytasks' own."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit = None
        if self.own_thread is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.own_thread.join(5)

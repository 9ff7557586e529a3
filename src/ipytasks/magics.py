"""The magics: parse a line, call the API.

In a kernel, ``%wait`` lines and ``%%parallel … --wait`` cells are rewritten by an
input transformer into an ``await`` of the API, so IPython runs the cell as an
``await`` cell on the kernel's loop: the tasks keep running while it waits, and
the kernel's interrupt cancels only the wait. Blocking in a synchronous magic
instead would need a nested loop run, which lets the interrupt land inside a
background task.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import io
import re
import shlex
import tokenize
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import Int, TraitError, observe, validate

from . import api
from .cache.outcome import FLUSH_TIMEOUT
from .errors import REFUSALS, TaskFailed
from .modes import BACKENDS, NEEDS_DASK, dask_available
from .options import TaskOptions, checked, magic_values
from .options import magic_arguments as task_arguments

if TYPE_CHECKING:
    from .modes._dask import DaskMode

__all__ = ("TaskMagics",)

WAIT_INTERRUPTED = "the wait was interrupted; the tasks keep running (%cancel stops them)"
F = TypeVar("F", bound=Callable[..., Any])
_BACKEND_WHERE = {"local": "in worker processes on this machine", "dask": "on Dask"}


def mode_settings(magics: TaskMagics) -> dict[str, dict[str, Any]]:
    """What each run mode is made with, from the magics' settings."""
    return {
        "thread": {"max_threads": magics.max_threads},
        "process": {"max_workers": magics.max_workers or None},
        "dask": {"n_workers": magics.max_workers or None},  # the LocalCluster's
    }


_MAP_OPTION = re.compile(r"(?:^|\s)--map(?=\s|$)")
MAP_USAGE = "%%{magic}: --map needs VAR in EXPR (e.g. --map url in urls), not {spec!r}"
MAP_EXPRESSION = "%%{magic}: --map {var} in EXPR: {expr!r} is not a Python expression: {why}"


def _split_map(magic: str, line: str, options: Collection[str]) -> tuple[str, str | None]:
    """Take ``--map VAR in EXPR`` out of a magic line: (rest of the line, "VAR in EXPR").

    EXPR is read as Python: it ends at the first of the magic's ``options`` (``-g``,
    ``--limit``) that stands outside brackets and strings after white space where what
    comes before is an expression, else at the end of the line. So ``range(0, -k, -1)``,
    ``a -b`` and ``["a --limit"]`` are whole expressions.
    """
    match = _MAP_OPTION.search(line)
    if match is None:
        return line, None
    rest = line[match.end():]
    head = re.match(r"\s*(?P<var>[^\W\d]\w*)\s+in(?=[\s(\[{'\"])", rest)
    if head is None:
        raise UsageError(MAP_USAGE.format(magic=magic, spec=rest.strip()))
    var, start = head["var"], head.end()
    ends = [*_option_starts(rest, start, options), len(rest)]
    why = "nothing after 'in'"
    for end in ends:
        expr = rest[start:end].strip()
        if not expr:
            continue
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as exc:
            why = exc.msg
            continue
        return line[: match.start()] + " " + rest[end:], f"{var} in {expr}"
    raise UsageError(MAP_EXPRESSION.format(magic=magic, var=var, expr=rest[start:].strip(),
                                           why=why))


def _option_starts(text: str, start: int, options: Collection[str]) -> list[int]:
    """Offsets in ``text`` (from ``start``) where one of ``options`` begins, outside
    brackets and strings, after white space."""
    found: list[int] = []
    depth = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text[start:]).readline))
    except (tokenize.TokenError, SyntaxError):  # an open bracket or string: no option inside
        tokens = []
    for token, after in zip(tokens, tokens[1:]):
        if token.type != tokenize.OP:
            continue
        if token.string in "([{":
            depth += 1
        elif token.string in ")]}":
            depth -= 1
        elif token.string == "-" and depth == 0 and after.start == token.end:
            at = start + token.start[1]
            word = re.match(r"-{1,2}[\w-]+", text[at:])
            if (at > 0 and text[at - 1].isspace() and word is not None
                    and word[0] in options):
                found.append(at)
    return found


def _syntax_message(magic: str, exc: SyntaxError) -> str:
    where = f"line {exc.lineno}" if exc.lineno else "the cell"
    text = f"%%{magic}: no task created, {type(exc).__name__} on {where} of the cell: {exc.msg}"
    if exc.text:
        code = exc.text.rstrip("\n")
        stripped = code.lstrip()
        caret = max((exc.offset or 1) - 1 - (len(code) - len(stripped)), 0)
        text += f"\n    {stripped}\n    {' ' * caret}^"
    return text


def _without_traceback(exc: BaseException) -> BaseException:
    # The error lists the tasks' own tracebacks; the frames of the wait are noise.
    return exc.with_traceback(None)


def _refusals_as_usage(function: F) -> F:
    """Show the API's refusals (a bad option, an unknown task) as usage errors: one line,
    no traceback. Errors of tasks (``%result``, ``%wait``) pass as they are."""
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def refused_async(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            try:
                return await function(*args, **kwargs)
            except REFUSALS as exc:
                raise UsageError(str(exc)) from None

        return cast(F, refused_async)

    @functools.wraps(function)
    def refused(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return function(*args, **kwargs)
        except REFUSALS as exc:
            raise UsageError(str(exc)) from None

    return cast(F, refused)


def _parse(magic: Any, line: str) -> Any:
    try:
        return magic_arguments.parse_argstring(magic, line)
    except UsageError as exc:
        raise UsageError(f"%%{magic.__name__}: {exc}") from None


#: Each task magic's options as a line that is a NAME alone gives them, checked once.
_default_options: dict[str, TaskOptions] = {}


def _line_options(
    magic: Any, line: str, mapping: str | None
) -> tuple[str | None, TaskOptions | dict[str, Any]]:
    """The task's name (``None``: the default) and options from a task magic's line
    (``--map`` taken out of it already, as ``mapping``). A line that is a NAME alone (or
    nothing), the usual one, skips argparse and the option checks, which would cost a
    tenth of the submission."""
    name = line.strip()
    if mapping is None and (not name or name.isidentifier()):
        options = _default_options.get(magic.__name__)
        if options is None:
            options = checked(magic_values(_parse(magic, ""), magic.__name__), "magic")
            _default_options[magic.__name__] = options
        return name or None, options
    args = _parse(magic, line)
    values = magic_values(args, magic.__name__)
    values["map"] = mapping
    return args.name, values


@magics_class
class TaskMagics(Magics):
    """``%%parallel``, ``%%sequential``, ``%wait``, ``%cancel``, ``%retry``, ``%result``,
    ``%tasks``, ``%tasks_backend``, ``%tasks_cache``."""

    max_threads = Int(
        40, help="How many thread-mode bodies may run at once (the worker-thread pool's "
        "size). A change takes effect at once, also after %load_ext.",
    ).tag(config=True)
    max_workers = Int(
        0, help="How many worker processes process mode keeps (0: one per core); also the "
        "workers of the LocalCluster the Dask backend starts. A change takes effect at once "
        "for local worker processes, also after %load_ext; a LocalCluster already running "
        "keeps its workers.",
    ).tag(config=True)

    @validate("max_threads", "max_workers")
    def _at_least(self, proposal: Any) -> int:
        value, name = proposal["value"], proposal["trait"].name
        least = 1 if name == "max_threads" else 0
        if value < least:
            raise TraitError(f"TaskMagics.{name} must be at least {least}, not {value}")
        return value

    @observe("max_threads", "max_workers")
    def _resize(self, change: Any) -> None:
        """Apply a changed setting to the modes (see ``Scheduler.configure``)."""
        session = api._session
        if session is None:  # not loaded yet: loading reads the settings
            return
        settings = mode_settings(self)
        for name, values in settings.items():
            session.mode_settings.setdefault(name, {}).update(values)
        scheduler = session._scheduler
        if scheduler is not None:
            for note in scheduler.configure(settings):
                print(f"ipytasks: {note}")

    def _cell_number(self) -> int:
        # IPython counts the running cell before running it: In[n] runs with count n+1.
        assert self.shell is not None  # the magics are registered with a shell
        return max(self.shell.execution_count - 1, 1)

    def _default_name(self) -> str:
        if getattr(self.shell, "kernel", None) is not None:
            return f"cell{self._cell_number()}"
        return api._current().scheduler.next_default_name()

    def submit_cell(self, magic: str, line: str, cell: str) -> api.TaskRecord:
        """Parse a ``%%parallel``/``%%sequential`` line and submit ``cell``."""
        method = getattr(self, magic)
        line, mapping = _split_map(magic, line, method.parser._option_string_actions)
        name, options = _line_options(method, line, mapping)
        api._current()
        try:
            return api._submit(
                cell,
                name if name is not None else self._default_name(),
                options,
                "magic",
                number=self._cell_number(),
            )
        except SyntaxError as exc:
            # Reported as a usage error: the shell then shows the message alone,
            # not the stack of the magic machinery above the user's line.
            raise UsageError(_syntax_message(magic, exc)) from None

    @magic_arguments.magic_arguments()
    @task_arguments("parallel")
    @cell_magic
    @_refusals_as_usage
    def parallel(self, line: str, cell: str) -> None:
        """Run the cell as a background task, concurrently with other tasks.

        The cell returns at once and its code runs in the background: on the
        kernel's event loop when it uses top-level ``await``, else in a worker
        thread, in the notebook's own namespace. The cell shows a live status line
        above the task's own output area, where everything the task prints or
        displays, its result and its traceback land.

        Examples
        --------
        ::

            In [2]: %%parallel fetch
               ...: await asyncio.sleep(1)
               ...: rows = [1, 2, 3]
               ...: len(rows)
            ✔ fetch done in 1.00s
            3
        """
        self.submit_cell("parallel", line, cell)

    @magic_arguments.magic_arguments()
    @task_arguments("sequential")
    @cell_magic
    @_refusals_as_usage
    def sequential(self, line: str, cell: str) -> None:
        """Run the cell as a background task after the previous task of its chain.

        Like ``%%parallel``, but the task starts only once the task submitted
        before it to the same chain (``--chain``, default ``main``) has ended;
        with ``--on-error stop`` (the default) it is skipped if that one did not
        succeed.

        Examples
        --------
        ::

            In [3]: %%sequential parse
               ...: table = [r * 2 for r in rows]
            ✔ parse done in 0.01s
        """
        self.submit_cell("sequential", line, cell)

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "targets", nargs="*", metavar="TARGET", help="Task names or groups (default: all tasks)."
    )
    @magic_arguments.argument(
        "--timeout", metavar="S", type=float, default=None,
        help="Give up waiting after S seconds (the tasks keep running).",
    )
    @line_magic
    @_refusals_as_usage
    def wait(self, line: str) -> None:
        """Block until tasks end; raise one error listing every task that failed.

        Other tasks keep running while this cell waits, and interrupting the
        kernel ends only the wait. In a notebook a ``%wait`` line makes its cell
        an ``await`` cell; from a thread or a terminal it blocks.

        Examples
        --------
        ::

            In [4]: %wait fetch parse
        """
        __tracebackhide__ = True
        args = _parse(self.wait, line)
        try:
            api.wait_blocking(*args.targets, timeout=args.timeout)
        except (TaskFailed, TimeoutError) as exc:
            raise _without_traceback(exc) from None

    @magic_arguments.magic_arguments()
    @magic_arguments.argument("targets", nargs="*", metavar="TARGET", help="Task names or groups.")
    @magic_arguments.argument("--all", action="store_true", help="Cancel every unfinished task.")
    @line_magic
    @_refusals_as_usage
    def cancel(self, line: str) -> None:
        """Cancel tasks: pending ones never start, running bodies are stopped.

        An async body is cancelled at its next ``await``; a thread body at its
        next Python instruction (a C call that blocks finishes first).

        Examples
        --------
        ::

            In [5]: %cancel fetch
            cancelled: fetch
        """
        args = _parse(self.cancel, line)
        names = api.cancel(*args.targets, all=args.all)
        print("cancelled: " + (", ".join(names) if names else "nothing (all had ended)"))

    @magic_arguments.magic_arguments()
    @magic_arguments.argument("name", nargs="?", default=None, metavar="NAME",
                              help="The task's name.")
    @magic_arguments.argument(
        "--failed", action="store_true",
        help="Every task that failed, timed out or was cancelled, and every task skipped "
        "because of one, in the order they were submitted; what succeeded is left alone.",
    )
    @line_magic
    @_refusals_as_usage
    def retry(self, line: str) -> None:
        """Run a failed, timed-out, cancelled or skipped task's cell again, with its options.

        The new run replaces the old task under the same name; the cell shows its
        status line again. ``--failed`` reruns every task that did not succeed and
        the tasks skipped because of them, each after the tasks it waits for;
        tasks that succeeded are not run again (``--cache`` tasks among them keep
        their outcome).

        Examples
        --------
        ::

            In [8]: %retry fetch

            In [9]: %retry --failed
            retrying: parse, report
        """
        args = _parse(self.retry, line)
        if args.failed:
            if args.name is not None:
                raise UsageError("%retry: give a NAME or --failed, not both")
            records = api.retry(failed=True)
            assert isinstance(records, list)  # failed=True gives the list
            names = ", ".join(r.name for r in records)
            print(f"retrying: {names}" if records else "retrying: nothing (no task failed)")
            return
        if args.name is None:
            raise UsageError("%retry: name the task to run again, or use --failed")
        api.retry(args.name)

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "path", nargs="?", default=None, metavar="PATH",
        help="Keep the cache in this folder from now on (this session).",
    )
    @magic_arguments.argument(
        "--clear", nargs="*", default=None, metavar="NAMES",
        help="Remove the stored outcomes of these tasks (names, or comma-separated); "
        "without names, every entry.",
    )
    @magic_arguments.argument(
        "--trust", metavar="PATH", default=None,
        help="Re-sign with your secret the entries of the cache folder PATH (a "
        "colleague's, say), after you have looked at them: until then they are never "
        "loaded.",
    )
    @magic_arguments.argument(
        "--max-size", dest="max_size", metavar="SIZE", default=None,
        help="The folder's size cap (5GB by default, or $IPYTASKS_CACHE_SIZE); the least "
        "recently used entries go first.",
    )
    @line_magic
    @_refusals_as_usage
    def tasks_cache(self, line: str) -> None:
        """Show where ``--cache`` outcomes are stored and what is there; clear some or all.

        Each ``--cache`` task's outcome (the names it binds, its result and its
        outputs) is one file in ``entries/`` of the cache folder, signed with a
        secret of yours kept in the Jupyter data folder; an entry that is not
        signed with it is never loaded. The folder is ``.ipytasks`` beside the
        notebook unless ``$IPYTASKS_CACHE`` or ``%tasks_cache PATH`` says otherwise.
        Without options, it lists the entries: task, size, when last used, and the
        time a hit saves (how long the run took). It first waits for entries still
        being written (a task ends before its entry is on disk).

        Examples
        --------
        ::

            In [10]: %tasks_cache
            cache: /home/me/project/.ipytasks (2 entries, 152.6 MB of 5.0 GB)
            task   size      used     saves
            -----  --------  -------  ------
            load   152.6 MB  2 s ago  38.1 s
            clean  1.2 kB    5 m ago  0.4 s

            In [11]: %tasks_cache --clear load
            removed 1 entry
        """
        args = _parse(self.tasks_cache, line)
        cache = api._current().scheduler.result_cache()
        # Entries of tasks that just ended may still be being written (after the task
        # ended): what this shows, clears or moves includes them.
        cache.flush(FLUSH_TIMEOUT)
        if args.path is not None:
            cache.root = args.path
        if args.max_size is not None:
            from .cache.store import parse_size

            try:
                cache.set_max_size(parse_size(args.max_size))
            except ValueError as exc:
                raise UsageError(f"%tasks_cache --max-size: {exc}") from None
        if args.trust is not None:
            signed = cache.store.trust(args.trust)
            listed = ": " + ", ".join(sorted({i.task for i in signed})) if signed else ""
            print(f"re-signed {len(signed)} entr{'y' if len(signed) == 1 else 'ies'} in "
                  f"{args.trust}" + listed)
            return
        if args.clear is not None:
            names = [n.strip() for item in args.clear for n in item.split(",") if n.strip()]
            removed = cache.clear(names or None)
            print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
            return
        print(_cache_listing(cache))

    @magic_arguments.magic_arguments()
    @magic_arguments.argument("name", metavar="NAME", help="The task's name.")
    @line_magic
    @_refusals_as_usage
    def result(self, line: str) -> Any:
        """Return a task's result (its last expression's value), or raise its error.

        Examples
        --------
        ::

            In [6]: %result fetch
            Out[6]: 3
        """
        args = _parse(self.result, line)
        return api.result(args.name)

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "backend", nargs="?", choices=BACKENDS, default=None,
        help="'dask' or 'local'; without it, show the current backend.",
    )
    @magic_arguments.argument(
        "address", nargs="?", default=None, metavar="ADDRESS",
        help="With dask: the scheduler to connect to (tcp://host:8786). Without: the "
        "cluster already in use, else a LocalCluster started with the first task.",
    )
    @line_magic
    @_refusals_as_usage
    def tasks_backend(self, line: str) -> None:
        """Choose where process-mode bodies run: this machine, or a Dask cluster.

        After ``%tasks_backend dask``, ``--process`` cells run on a Dask cluster with
        the same inputs, outputs, output and states, as ``--on dask``
        cells always do: the cluster at ADDRESS; without one, the cluster already in
        use (``ipytasks.use(client)``), else a ``LocalCluster`` started with the first
        such task (its dashboard link shows in that task's output).
        ``%tasks_backend local`` goes back to worker processes on this machine. Needs
        the extra: ``pip install 'ipytasks[dask]'``.

        Examples
        --------
        ::

            In [9]: %tasks_backend dask tcp://10.0.0.5:8786
            process-mode bodies now run on the Dask cluster at tcp://10.0.0.5:8786 (4 workers)

            In [10]: %tasks_backend local
            process-mode bodies now run in worker processes on this machine
        """
        args = _parse(self.tasks_backend, line)
        if args.backend is None:
            scheduler = api._current().scheduler
            where = _BACKEND_WHERE[scheduler.backend]
            mode = scheduler.installed_mode("dask")
            client = getattr(mode, "client", None)
            if scheduler.backend == "dask" and client is not None:
                where += f" (the cluster at {client.scheduler.address})"
            elif scheduler.backend == "dask":
                where += " (a LocalCluster that starts with the first task)"
            print(f"process-mode bodies run {where}")
            return
        if args.backend == "local":
            if args.address is not None:
                raise UsageError("%tasks_backend local takes no ADDRESS")
            api.use("local")
            print(f"process-mode bodies now run {_BACKEND_WHERE['local']}")
            return
        if not dask_available():
            raise UsageError(NEEDS_DASK.format(what="%tasks_backend dask"))
        api.use(args.address or "dask")
        mode = api._current().scheduler.installed_mode("dask")
        assert mode is not None  # api.use just installed it
        client = cast("DaskMode", mode).client
        if client is None:
            print(
                "process-mode bodies now run on Dask: a LocalCluster starts with the first "
                "such task (--on local keeps a cell on this machine)"
            )
            return
        workers = len(client.scheduler_info().get("workers", {}))
        print(
            f"process-mode bodies now run on the Dask cluster at {client.scheduler.address} "
            f"({workers} worker{'s' if workers != 1 else ''})"
        )

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "--text", action="store_true", help="Print the table as text, even in a notebook."
    )
    @magic_arguments.argument(
        "--graph", action="store_true",
        help="Draw the task graph instead: a box per task in its state's colour, an arrow "
             "per edge (chains thick, --after dashed, inferred edges labelled with the "
             "names that cause them); kept current, and kept as a picture in the saved "
             "notebook. With --text (or in a terminal), as text.",
    )
    @line_magic
    @_refusals_as_usage
    def tasks(self, line: str) -> Any:
        """Show the live dashboard of every task; in a terminal (or with --text), a table.

        The dashboard has a row per task (state, chain/group, mode, start, duration,
        attempts, what it waits for and why), a timeline of all tasks on one time
        axis (or the task graph: the ``graph`` button above it), a summary with the
        speedup, and cancel / retry / output actions for the task picked (click its
        row, or its box in the graph). It keeps following the tasks until it is
        closed.

        ``%tasks --graph`` draws the task graph on its own, as a picture that stays
        current while tasks run and is saved with the notebook
        (``ipytasks.graph("pipeline.svg")`` writes it to a file).

        Examples
        --------
        ::

            In [7]: %tasks --text
            task   chain/group  mode   state  started  duration  tries  waits for
            -----  -----------  -----  -----  -------  --------  -----  ---------
            fetch               async  done   +0.00s   1.00s     1
            1 task: 1 done; 1.0 s of work in 1.0 s: 1.0×

            In [8]: %tasks --graph --text
            task graph: 2 tasks, 1 edge
            ✔ fetch done
            ✔ report done ← fetch (rows)
        """
        args = _parse(self.tasks, line)
        in_kernel = getattr(self.shell, "kernel", None) is not None
        if args.graph:
            session = api._current()
            if args.text or not in_kernel or session.displays is None:
                from .overview.graph import graph_text
                from .taskgraph import task_graph

                print(graph_text(task_graph(list(api.tasks.values()))))
                return None
            from .overview.saved import show_graph

            show_graph(session.scheduler, api.tasks, session.displays)
            return None
        if args.text or not in_kernel:
            from .overview import text_table

            print(text_table(api.tasks))
            return None
        return api.dashboard()


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _age(seconds: float) -> str:
    for limit, per, unit in ((60, 1, "s"), (3600, 60, "m"), (86400, 3600, "h")):
        if seconds < limit:
            return f"{seconds / per:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def _cache_listing(cache: Any) -> str:
    """What ``%tasks_cache`` prints: the folder, then one row per entry."""
    import time

    infos = cache.store.infos()
    total = sum(i.size for i in infos)
    n = len(infos)
    head = (f"cache: {cache.root} ({n} entr{'y' if n == 1 else 'ies'}, {_size(total)} of "
            f"{_size(cache.max_size)})")
    if not infos:
        return head
    now = time.time()
    rows = [("task", "size", "used", "saves")]
    rows += [(i.task, _size(i.size), _age(max(now - i.used, 0)), f"{i.duration:.1f} s")
             for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return head + "\n" + "\n".join(lines)


# A %wait line, after IPython turned it into a call of the magic.
_WAIT_LINE = re.compile(
    r"^(?P<indent>\s*)get_ipython\(\)\.run_line_magic\('wait', (?P<arg>.*)\)\s*$"
)
_TASK_CELL = re.compile(r"^%%(?P<magic>parallel|sequential)(?P<line>(\s.*)?)$")


def await_wait_lines(lines: list[str]) -> list[str]:
    """Input transformer (post): make each ``%wait`` line an ``await`` of the API."""
    out = []
    for text in lines:
        match = _WAIT_LINE.match(text)
        if match:
            text = (
                f"{match['indent']}await __import__('ipytasks').magics.awaited_wait("
                f"{match['arg']})\n"
            )
        out.append(text)
    return out


def await_waiting_cells(lines: list[str]) -> list[str]:
    """Input transformer (cleanup): a ``%%parallel … --wait`` cell becomes an ``await``."""
    if not lines:
        return lines
    match = _TASK_CELL.match(lines[0].rstrip("\n"))
    if match is None:
        return lines
    try:
        words = shlex.split(match["line"])
    except ValueError:
        return lines  # let the magic report the bad line
    if "--wait" not in words:
        return lines
    cell = "".join(lines[1:])
    return [
        f"await __import__('ipytasks').magics.awaited_cell({match['magic']!r}, "
        f"{match['line'].strip()!r}, {cell!r})\n"
    ]


def _magics() -> TaskMagics:
    session = api._current()
    return session.shell.magics_manager.registry["TaskMagics"]


@_refusals_as_usage
async def awaited_wait(line: str) -> None:
    """What a ``%wait`` line runs in a notebook: the magic, awaited on the kernel's loop."""
    __tracebackhide__ = True
    magics = _magics()
    args = _parse(magics.wait, line)
    try:
        await api.wait(*args.targets, timeout=args.timeout)
    except (TaskFailed, TimeoutError) as exc:
        raise _without_traceback(exc) from None
    except asyncio.CancelledError:
        # The kernel cancels an await cell when interrupted. What the user did is no
        # error of ours: one line (the shell shows a UsageError without a traceback),
        # and the cell ends there, which is all the kernel's cancellation asks.
        raise UsageError(WAIT_INTERRUPTED) from None


@_refusals_as_usage
async def awaited_cell(magic: str, line: str, cell: str) -> None:
    """What a ``%%parallel … --wait`` cell runs in a notebook: submit, then await the end."""
    magics = _magics()
    line = " ".join(w for w in shlex.split(line) if w != "--wait")
    record = magics.submit_cell(magic, line, cell)
    __tracebackhide__ = True
    try:
        await api.wait(record.name)
    except TaskFailed as exc:
        raise _without_traceback(exc) from None
    except asyncio.CancelledError:
        raise UsageError(WAIT_INTERRUPTED) from None

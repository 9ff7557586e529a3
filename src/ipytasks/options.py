"""Every option of ``%%parallel``, ``%%sequential`` and ``ipytasks.submit``, declared once.

Each option is one field of :class:`TaskOptions`: its name, type, default, flags, help
text and check. From these fields come the magics' arguments and their ``?`` help
(:func:`magic_arguments`), ``submit``'s keyword parameters and their help
(:func:`signature`, :func:`api_help`), and the check of what either was given
(:func:`checked`). Adding an option is adding a field here; the scheduler then reads it
from the task's options.

A check raises ``ValueError`` (``TypeError`` for a value of the wrong kind) whose message
names the option as the caller wrote it: ``--timeout`` on a magic line, ``timeout`` in a
call. The magics turn these into IPython's ``UsageError``; the Python API lets them go.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import math
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import BadArgument, BadArgumentType
from .limits import parse_rate
from .modes import BACKENDS, MODES, NEEDS_DASK, dask_available

__all__ = (
    "TaskOptions", "api_help", "checked", "identifier", "magic_arguments", "magic_values",
    "signature",
)

#: Who wrote the options: a magic line (``--timeout``) or a call (``timeout=``).
Caller = Literal["magic", "api"]

ON_ERROR_CHOICES = ("stop", "continue")
BAD_NAME = "{what} must be a Python identifier, not {value!r}"
BAD_CHOICE = "{option} must be one of {choices}, not {value!r}"
CACHE_MAP = (
    "{cache} does not combine with {map}: a map's items are not stored one by one (each "
    "would need a key of its own, made of the item's value too, and the map's result is "
    "gathered from them). Cache the cell that computes what the map reads, or the cell "
    "that uses the map's result; or, for items that are slow one by one, submit each as "
    "a {cache} task of its own (ipytasks.submit(code, name, cache=True) in a loop)"
)


#: ``magic_default`` when a magic line's default is the field's.
_AS_DEFAULT: Any = object()


@dataclass(frozen=True)
class _Spec:
    """How one option is written and checked (the field's metadata)."""

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    #: The values it takes, when it is one of a few (shown in the magic's usage).
    choices: tuple[str, ...] = ()
    #: ``store_true``/``store_false`` for a flag that takes no value.
    action: str | None = None
    #: The value for a magic line without the option, where it differs from the field's
    #: default (``--chain``: ``main``).
    magic_default: Any = _AS_DEFAULT
    #: The magics that take it (``None``: both).
    magics: tuple[str, ...] | None = None
    #: Short flags that set the option to a value: ``(flag, value, help)``.
    shortcuts: tuple[tuple[str, Any, str], ...] = ()
    #: What a call may pass, where it is more than the field's type (``"5/s"`` for a rate).
    accepts: str | None = None
    #: ``check(value, option) -> value``: validates and normalises one value.
    check: Callable[[Any, str], Any] | None = None


def _option(default: Any, *flags: str, help: str, **spec: Any) -> Any:  # noqa: A002
    return field(default=default, metadata={"option": _Spec(flags, help, **spec)})


# -- checks of one value: (value, how the caller names the option) -> value ------------------


def _choice(choices: tuple[str, ...]) -> Callable[[Any, str], Any]:
    def check(value: Any, option: str) -> Any:
        if value not in choices:
            raise BadArgument(BAD_CHOICE.format(option=option, choices="|".join(choices),
                                               value=value))
        return value

    return check


def identifier(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise BadArgument(BAD_NAME.format(what=what, value=value))
    return value


def _optional_identifier(value: Any, option: str) -> str | None:
    return None if value is None else identifier(value, option)


def _names(value: str | Iterable[str] | None, option: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(
        identifier(item.strip(), f"each {option} target") for item in items if item.strip()
    )


def _seconds(value: Any, option: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (seconds > 0 and math.isfinite(seconds)):
        raise BadArgument(f"{option} must be a number of seconds greater than 0, not {value!r}")
    return seconds


def _delay(value: Any, option: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (seconds >= 0 and math.isfinite(seconds)):
        raise BadArgument(f"{option} must be a number of seconds, 0 or more, not {value!r}")
    return seconds


def _whole(minimum: int | None = None, *, optional: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, option: str) -> int | None:
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str)
            or not str(value).strip().lstrip("-").isdigit()
        ):
            raise BadArgument(f"{option} must be a whole number, not {value!r}")
        number = int(value)
        if minimum is not None and number < minimum:
            raise BadArgument(f"{option} must be {minimum} or more, not {number}")
        return number

    return check


def _rate(value: Any, option: str) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        rate = parse_rate(value) if isinstance(value, str) else float(value)
        if not rate > 0 or not math.isfinite(rate):
            raise BadArgument("must be above zero")
    except (TypeError, ValueError):
        raise BadArgument(
            f"{option} must be a number of starts above 0, per second or minute (5/s, "
            f"120/min), not {value!r}"
        ) from None
    return rate


def _map(value: Any, option: str) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        var, sep, expr = value.strip().partition(" in ")
    elif isinstance(value, tuple) and len(value) == 2:
        (var, expr), sep = value, " in "
    else:
        raise BadArgumentType(f"{option} takes 'VAR in EXPR' as text, not {value!r}")
    var, expr = str(var).strip(), str(expr).strip()
    if not sep or not expr:
        raise BadArgument(f"{option} needs VAR in EXPR (e.g. {option} url in urls), not {value!r}"
                         if option.startswith("--") else
                         f"{option} needs 'VAR in EXPR' (e.g. {option}='url in urls'), "
                         f"not {value!r}")
    identifier(var, f"{option} VAR")
    return var, expr


def _switch(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise BadArgumentType(f"{option} is on or off (True or False), not {value!r}")
    return value


def _expression(value: Any, option: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadArgumentType(f"{option} takes an expression as text, not {value!r}")
    try:
        compile(value, f"<{option}>", "eval")
    except SyntaxError as exc:
        raise BadArgument(f"{option}: {value!r} is not an expression: {exc.msg}") from None
    return value


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What the user asked for on the magic line (or as keyword arguments of ``submit``).

    ``chain`` is ``None`` for a ``%%parallel`` task and the chain's name for a
    ``%%sequential`` one. Made directly, the values are taken as they are; :func:`checked`
    makes one from what a user wrote.
    """

    after: tuple[str, ...] = _option(
        (), "--after", metavar="A,B", check=_names, accepts="str | Iterable[str]",
        help="Start only after these tasks or groups have ended.",
    )
    group: str | None = _option(
        None, "-g", "--group", metavar="G", check=_optional_identifier,
        help="Group label, for %wait, %cancel and --after.",
    )
    chain: str | None = _option(
        None, "--chain", metavar="C", check=_optional_identifier, magic_default="main",
        magics=("sequential",),
        help="The chain to append to; a chain runs its tasks in order, each after the one "
        "before it (%%sequential: default 'main'; submit: none, a %%parallel task).",
    )
    on_error: str = _option(
        "stop", "--on-error", choices=ON_ERROR_CHOICES, check=_choice(ON_ERROR_CHOICES),
        help="When a task this one waits for did not succeed: 'stop' (default) marks this "
        "one skipped, 'continue' runs it anyway.",
    )
    mode: str = _option(
        "auto", "--mode", choices=MODES, check=_choice(MODES),
        shortcuts=(
            ("--thread", "thread", "Short for --mode thread."),
            ("--process", "process", "Short for --mode process: run in a worker process; the "
             "names the cell reads are shipped there and the names it binds come back on "
             "success."),
        ),
        help="Where the body runs: 'async' on the kernel's event loop, 'thread' in a worker "
        "thread, 'process' in a worker process; 'auto' (default) picks async when the cell "
        "has a top-level await, else thread.",
    )
    #: ``None``: the session's default backend (``%tasks_backend``).
    on: str | None = _option(
        None, "--on", choices=BACKENDS, check=lambda value, option: (
            None if value is None else _choice(BACKENDS)(value, option)),
        help="Where a process-mode body runs: 'dask' on a Dask cluster (implies --process; "
        "the cluster of %tasks_backend, else a LocalCluster started with the first such "
        "task), 'local' in worker processes on this machine. Default: the backend "
        "%tasks_backend set (local unless changed).",
    )
    timeout: float | None = _option(
        None, "--timeout", metavar="S", check=_seconds,
        help="Stop the body after S seconds; the task ends as timed_out.",
    )
    retries: int = _option(
        0, "--retries", metavar="N", check=_whole(0),
        help="Run the body again up to N times after it fails or times out, waiting "
        "--retry-delay seconds before the first retry and twice as long before each next "
        "one, up to 60 s.",
    )
    retry_delay: float = _option(
        1.0, "--retry-delay", metavar="S", check=_delay,
        help="Wait S seconds before the first retry (default 1), doubling each time (with "
        "20% jitter) up to a cap of 60 s; a delay above 60 s stays as it is.",
    )
    limit: int | None = _option(
        None, "--limit", metavar="N", check=_whole(1, optional=True),
        help="At most N tasks of this task's group run at once.",
    )
    #: Starts per second (``--rate 5/s``, ``120/min``).
    rate: float | None = _option(
        None, "--rate", metavar="N/s", check=_rate, accepts="float | str | None",
        help="At most N starts per second (or N/min) in this task's group.",
    )
    #: ``--map VAR in EXPR`` as ``(VAR, EXPR)``.
    map: tuple[str, str] | None = _option(
        None, "--map", metavar="VAR in EXPR", check=_map, accepts="str | None",
        help="Fan out: one task per item of EXPR with VAR bound to it, named NAME[0], "
        "NAME[1]...; each item runs in a scope of its own and the task's result is the list "
        "of the items' results, in order. EXPR is any Python expression (range(0, -k, -1), "
        "a comprehension); on a magic line it runs to the next option outside brackets and "
        "strings. It is evaluated once the tasks it depends on have ended.",
    )
    priority: int = _option(
        0, "--priority", metavar="N", check=_whole(),
        help="Among tasks held by a --limit or --rate, higher N starts first (default 0).",
    )
    #: Wait for unfinished tasks whose names this one shares (``--no-infer`` turns it off).
    infer: bool = _option(
        True, "--no-infer", action="store_false", check=_switch,
        help="Do not wait for unfinished tasks whose names this cell reads, rebinds or "
        "changes (by default it does, so every name gets the value an in-order run gives).",
    )
    #: A conflict on a shared name is an error, not a warning (``--strict``).
    strict: bool = _option(
        False, "--strict", action="store_true", check=_switch,
        help="Make a conflict on a shared name (possible with --no-infer) an error, not a "
        "warning.",
    )
    wait: bool = _option(
        False, "--wait", action="store_true", check=_switch,
        help="Block this cell until the task ends (output shows live); other tasks keep "
        "running.",
    )
    quiet: bool = _option(
        False, "--quiet", action="store_true", check=_switch,
        help="No status line or output area in the cell; output is still kept.",
    )
    #: Reuse the stored outcome when the code, what it reads and its upstream are unchanged.
    cache: bool = _option(
        False, "--cache", action="store_true", check=_switch,
        help="Reuse the stored outcome (the names the cell binds, its result, its outputs) "
        "when the cell's code (comments and blank lines aside), the values it reads and the "
        "tasks it follows by --after or chain are unchanged, also after a kernel restart: "
        "the task then ends at once as 'cached'. Stored in .ipytasks/ beside the notebook "
        "(%tasks_cache says where and what).",
    )
    #: An expression whose value joins the cache key.
    cache_key: str | None = _option(
        None, "--cache-key", metavar="EXPR", check=_expression,
        help="An expression whose value joins the cache key (implies --cache), for a cell "
        "that reads the clock or random numbers: e.g. --cache-key 'datetime.date.today()' "
        "reruns it once a day.",
    )


_FIELDS = tuple(f for f in dataclasses.fields(TaskOptions))
_SPECS: dict[str, _Spec] = {f.name: f.metadata["option"] for f in _FIELDS}
#: The names ``submit`` takes, in the order of the magics' help.
NAMES = tuple(_SPECS)
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in _FIELDS}


def _label(name: str, caller: Caller) -> str:
    return _SPECS[name].flags[-1] if caller == "magic" else name


#: Options checked already, by what was given, where every value is a plain scalar (its
#: type is part of the key: ``True`` is not ``1``): a loop of ``submit`` calls with the
#: same keywords checks them once. Bounded, oldest first out.
_checked: dict[tuple[Any, ...], TaskOptions] = {}
_CHECKED_MAX = 256
_SCALARS = (type(None), bool, int, float, str)


def checked(values: dict[str, Any], caller: Caller) -> TaskOptions:
    """Check what a magic line or a ``submit`` call gave, and make the task's options.

    :raises ValueError: a value out of range, an option combination that cannot be.
    :raises TypeError: an unknown option (``submit``), a value of the wrong kind.
    """
    key = None
    if all(type(value) in _SCALARS for value in values.values()):
        key = (caller, *values.items(), *map(type, values.values()))
        options = _checked.get(key)
        if options is not None:
            return options
    options = _checked_now(values, caller)
    if key is not None:
        if len(_checked) >= _CHECKED_MAX:
            _checked.pop(next(iter(_checked)))
        _checked[key] = options
    return options


def _checked_now(values: dict[str, Any], caller: Caller) -> TaskOptions:
    unknown = [name for name in values if name not in _SPECS]
    if unknown:
        raise BadArgumentType(
            f"submit() got an unknown option {unknown[0]!r} (options: {', '.join(NAMES)})"
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is _DEFAULTS[name]:
            continue  # what the field holds already (a magic line gives every option)
        check = _SPECS[name].check
        out[name] = check(value, _label(name, caller)) if check is not None else value
    options = TaskOptions(**out)
    return _together(options, caller)


def _together(options: TaskOptions, caller: Caller) -> TaskOptions:
    """The checks that read more than one option."""
    label = lambda name: _label(name, caller)  # noqa: E731
    if options.on == "dask":
        if options.mode not in ("auto", "process"):
            raise BadArgument(f"{label('on')} dask runs process-mode bodies on the cluster; "
                             f"drop {label('mode')} {options.mode}")
        if not dask_available():
            raise BadArgument(NEEDS_DASK.format(what=f"{label('on')} dask"))
    if options.cache_key is not None and not options.cache:
        options = dataclasses.replace(options, cache=True)
    if options.cache and options.map is not None:
        raise BadArgument(CACHE_MAP.format(cache=label("cache"), map=label("map")))
    if (options.limit is not None or options.rate is not None) and options.group is None \
            and options.map is None:
        option = label("limit") if options.limit is not None else label("rate")
        group = "-g GROUP" if caller == "magic" else "group='NAME'"
        raise BadArgument(f"{option} applies to a group of tasks: add {group}")
    return options


def magic_arguments(magic: str) -> Callable[[Any], Any]:
    """Decorate magic ``magic`` (``parallel``/``sequential``) with its options' arguments.

    Values stay text: :func:`checked` converts them, so a bad one gets the same message
    as in a call, naming the flag.
    """
    from IPython.core import magic_arguments as ma

    def argparse_help(text: str) -> str:
        return text.replace("%", "%%")  # argparse formats help with %

    decorators = [ma.argument(
        "name", nargs="?", default=None, metavar="NAME",
        help="Task name, a Python identifier. Default: the cell's number (cell7).",
    )]
    for f in _FIELDS:
        spec = _SPECS[f.name]
        if spec.magics is not None and magic not in spec.magics:
            continue
        default = f.default if spec.magic_default is _AS_DEFAULT else spec.magic_default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default,
                                  "help": argparse_help(spec.help)}
        if spec.action is not None:
            kwargs["action"] = spec.action
        else:
            kwargs["metavar"] = spec.metavar or "{" + ",".join(spec.choices) + "}"
        decorators.append(ma.argument(*spec.flags, **kwargs))
        for flag, value, text in spec.shortcuts:
            decorators.append(ma.argument(flag, dest=f.name, action="store_const", const=value,
                                          help=argparse_help(text)))

    def decorate(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return decorate


def magic_values(args: Any, magic: str) -> dict[str, Any]:
    """The options of a parsed magic line, by field name (``--map`` is parsed apart)."""
    return {
        name: getattr(args, name)
        for name, spec in _SPECS.items()
        if name != "map" and (spec.magics is None or magic in spec.magics)
    }


def signature(function: Callable[..., Any]) -> inspect.Signature:
    """``function``'s signature with its ``**options`` spelled out, one keyword each."""
    params = [p for p in inspect.signature(function).parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for f in _FIELDS:
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=f.default,
                                        annotation=_SPECS[f.name].accepts or f.type))
    return inspect.Signature(params, return_annotation=inspect.signature(function)
                             .return_annotation)


def api_help() -> str:
    """One ``:param name:`` line per option, for ``submit``'s docstring."""
    lines = []
    for f in _FIELDS:
        spec = _SPECS[f.name]
        text = spec.help
        for flag, value, _ in spec.shortcuts:
            text += f" ({flag} on a magic line is {f.name}={value!r}.)"
        lines.append(textwrap.fill(f":param {f.name}: ``{spec.flags[-1]}``. {text}", width=88,
                                   subsequent_indent="    "))
    return "\n".join(lines)

"""The options, declared once: the magics' arguments, submit()'s keywords and the checks."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

import ipytasks
from ipytasks.magics import TaskMagics
from ipytasks.options import TaskOptions, checked

FIELDS = [f.name for f in dataclasses.fields(TaskOptions)]


def test_every_option_is_a_keyword_of_submit_with_its_default() -> None:
    """help(ipytasks.submit) and editors show each option as a keyword, with its default
    and its help line."""
    parameters = inspect.signature(ipytasks.submit).parameters
    assert list(parameters) == ["code", "name", *FIELDS]
    for f in dataclasses.fields(TaskOptions):
        assert parameters[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[f.name].default == f.default
        assert f":param {f.name}:" in (ipytasks.submit.__doc__ or "")


def test_every_option_is_an_argument_of_the_magics_with_its_help() -> None:
    """%%parallel? lists every option's flag and help; --chain is %%sequential's alone."""
    parallel = TaskMagics.parallel.__doc__ or ""
    sequential = TaskMagics.sequential.__doc__ or ""
    for f in dataclasses.fields(TaskOptions):
        spec = f.metadata["option"]
        flag = spec.flags[-1]
        first_words = " ".join(spec.help.split()[:3])
        if f.name == "chain":
            assert flag not in parallel and flag in sequential
            continue
        for doc in (parallel, sequential):
            assert flag in doc, flag
            assert first_words in " ".join(doc.split()), first_words
    assert "--thread" in parallel and "--process" in parallel


@pytest.mark.parametrize(
    ("values", "magic", "api", "kind"),
    [
        ({"limit": 2}, "--limit applies to a group of tasks: add -g GROUP",
         "limit applies to a group of tasks: add group='NAME'", ValueError),
        ({"rate": "0/s", "group": "g"}, "--rate must be a number of starts above 0",
         "rate must be a number of starts above 0", ValueError),
        ({"retries": -1}, "--retries must be 0 or more, not -1", "retries must be 0 or more",
         ValueError),
        ({"timeout": "soon"}, "--timeout must be a number of seconds greater than 0, not 'soon'",
         "timeout must be a number of seconds greater than 0", ValueError),
        ({"mode": "fast"}, "--mode must be one of auto|async|thread|process, not 'fast'",
         "mode must be one of auto|async|thread|process", ValueError),
        ({"group": "not a name"}, "--group must be a Python identifier, not 'not a name'",
         "group must be a Python identifier", ValueError),
        ({"after": "a,b c"}, "each --after target must be a Python identifier, not 'b c'",
         "each after target must be", ValueError),
        ({"cache_key": "1 +"}, "--cache-key: '1 +' is not an expression",
         "cache_key: '1 +' is not an expression", ValueError),
        ({"cache": True, "map": "x in xs"}, "--cache does not combine with --map",
         "cache does not combine with map", ValueError),
        ({"quiet": "yes"}, "--quiet is on or off (True or False), not 'yes'",
         "quiet is on or off", TypeError),
        ({"map": "x of xs"}, "--map needs VAR in EXPR (e.g. --map url in urls)",
         "map needs 'VAR in EXPR' (e.g. map='url in urls')", ValueError),
    ],
)
def test_a_bad_option_is_named_as_its_caller_wrote_it(
    values: dict[str, Any], magic: str, api: str, kind: type[Exception]
) -> None:
    """The same check names --timeout on a magic line and timeout in a call."""
    with pytest.raises(kind) as raised:
        checked(values, "magic")
    assert str(raised.value).startswith(magic)
    with pytest.raises(kind) as raised:
        checked(values, "api")
    assert str(raised.value).startswith(api)


def test_values_are_converted_once_for_both_callers() -> None:
    """Magic text and call values become the same options."""
    from_magic = checked({"after": "a, b", "timeout": "2.5", "retries": "3", "rate": "120/min",
                          "group": "g", "limit": "2", "priority": "-1"}, "magic")
    from_call = checked({"after": ["a", "b"], "timeout": 2.5, "retries": 3, "rate": 2,
                         "group": "g", "limit": 2, "priority": -1}, "api")
    assert from_magic == from_call
    assert from_call.after == ("a", "b") and from_call.rate == 2.0
    assert checked({"cache_key": "1"}, "api").cache is True


def test_options_checked_again_are_checked_alike() -> None:
    """The same keywords give the same options each time; a value equal to one checked
    before but of another kind (True is 1) is checked on its own, and refused."""
    assert checked({"retries": 1, "mode": "thread"}, "api") == TaskOptions(retries=1,
                                                                         mode="thread")
    assert checked({"retries": 1, "mode": "thread"}, "api").retries == 1
    with pytest.raises(ValueError, match="retries must be a whole number, not True"):
        checked({"retries": True, "mode": "thread"}, "api")
    with pytest.raises(ValueError, match="--retries must be a whole number"):
        checked({"retries": True, "mode": "thread"}, "magic")


def test_an_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'timout' \(options: after, group"):
        checked({"timout": 1}, "api")

"""Command-line options derived from the options' declarations (:mod:`workers.options`): one flag per declared
option, with its help text and default, on ``convert`` (``CONVERT``) and on ``submit`` and ``watch add``
(``JOB``).  A command takes them with :func:`with_options` and receives the typed values in one dict."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable

import typer

from service.cli.output import comma_list


def _plain(hint: Any) -> Any:
    """``int`` for ``int | None``: what a command line reads (an option left out keeps its default)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(hint) if a is not type(None)]
        return others[0] if len(others) == 1 else str
    return hint


def option_parameters(options: type, surface: str, only: tuple[str, ...] | None = None) -> list[inspect.Parameter]:
    """The typer parameters of every option of ``options`` (a :class:`workers.declare.Options` class) that users
    set on ``surface`` (or of those named in ``only``), in declaration order."""
    hints = options.types()
    parameters = []
    for f, declared in options.declared(surface):
        if only is not None and f.name not in only:
            continue
        default = options.user_default(f.name)
        names = [declared.flag or "--" + f.name.replace("_", "-")]
        if declared.cli == "comma":
            annotation, default = str, ",".join(getattr(v, "value", v) for v in default) if default else None
        elif declared.cli == "repeat":  # the flag given once per value (each may be a comma-separated list too)
            annotation, default = list[str] | None, None
        elif declared.cli == "pair":
            annotation, default = tuple[int, int], default or (0, 0)
        elif declared.cli == "either":
            annotation = bool | None
        else:
            annotation = _plain(hints[f.name])
        info = typer.Option(default, *names, help=declared.help, metavar=declared.metavar)
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                            annotation=annotation))
    return parameters


def typed_values(options: type, surface: str, given: dict[str, Any]) -> dict[str, Any]:
    """The command line's values (``given``) as the options take them (comma lists split, empty ones left out)."""
    values = {}
    for f, declared in options.declared(surface):
        if f.name not in given:
            continue
        value = given[f.name]
        if declared.cli == "comma":
            value = comma_list(value) or None
        elif declared.cli == "repeat":
            value = tuple(item for given_value in value or () for item in comma_list(given_value)) or None
        if value is None and declared.cli in ("comma", "repeat"):
            continue  # not given: the option's own default
        values[f.name] = value
    return values


def with_options(surface: str, *groups: type, only: tuple[str, ...] | None = None
                 ) -> Callable[[Callable], Callable]:
    """Give a command every option of ``groups`` (:class:`workers.declare.Options` classes) that users set on
    ``surface`` (or those named in ``only``): typer sees them as parameters after the command's own (before any parameter the command
    declares keyword-only), and the command receives them typed, in one dict, as its ``options`` argument."""
    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        trailing = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        added = [p for group in groups for p in option_parameters(group, surface, only)]
        names = {p.name for p in added}

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            values = {k: v for group in groups for k, v in typed_values(group, surface, given).items()}
            return command(*args, **kwargs, options=values)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in positional] + added + trailing
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        del run.__wrapped__  # typer reads the signature above, not the command's own
        return run
    return decorate

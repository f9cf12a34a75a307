"""How an option is declared, and what every options group does with its declarations.

An option is a dataclass field made by :func:`option` (or :func:`internal`), whose metadata carries its
:class:`Declared` facts; :class:`Options` reads them to take a user's values, to store and load the options as
JSON, and to give a job's dedupe key.  The option groups themselves are in :mod:`workers.options`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from workers.errors import OptionsError
from workers.names import Attention
from workers.validate.thresholds import ValidationBars

CONVERT, JOB = "convert", "job"  # where users set an option: the convert command; jobs (CLI, API, watches)
BOTH = frozenset({CONVERT, JOB})
Keyed = Literal["always", "set"] | None


@dataclass(frozen=True)
class Declared:
    """What an option's declaration says besides its type and default."""

    help: str
    surfaces: frozenset[str]  # where users set it; empty: the library's own (set by code, never typed)
    keyed: Keyed  # part of a job's dedupe key: always, only when set (not the default), or never
    flag: str | None  # the command line's flag ("--attention"); None: --the-name-with-dashes
    cli: str  # how a command line spells it: "value", "comma" (a comma-separated list), "repeat" (the flag once
    #          per value, or comma-separated), "pair" (two numbers),
    #          "switch" (--x/--no-x... as a plain flag), "either" (--private/--public; unset: neither)
    metavar: str | None
    max_length: int | None  # longest text (or list) a request may hold
    too_long: str  # what a too-long value is said to be ("is not a Hub repo id")
    from_user: Callable[[Any], Any] | None  # a typed value to the option's value (0 bits: float16 only)
    user_default: Any  # the default a user sees, where it differs from the field's (namespace: the service's)
    load: Callable[[Any], Any] | None  # a stored (JSON) value back to the option's value


_SAME = object()


def option(default: Any = dataclasses.MISSING, *, help: str, surfaces: frozenset[str] = BOTH,
           keyed: Keyed = "set", flag: str | None = None, cli: str = "value", metavar: str | None = None,
           max_length: int | None = None, too_long: str = "is too long", from_user: Callable | None = None,
           user_default: Any = _SAME, load: Callable | None = None) -> Any:
    """Declare one option: a dataclass field carrying its :class:`Declared` facts."""
    declared = Declared(help, frozenset(surfaces), keyed, flag, cli, metavar, max_length, too_long, from_user,
                        user_default, load)
    kwargs: dict[str, Any] = {"metadata": {"option": declared}}
    if isinstance(default, (list, dict, set)):
        kwargs["default_factory"] = lambda: type(default)(default)
    elif default is not dataclasses.MISSING and not isinstance(default, (str, int, float, bool, tuple, type(None))):
        kwargs["default_factory"] = lambda: default  # immutable objects (the bars): shared safely
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def internal(default: Any, *, keyed: Keyed = None, load: Callable | None = None, help: str = "") -> Any:
    """Declare an option only code sets (benchmarks, tests, the service's settings)."""
    return option(default, help=help, surfaces=frozenset(), keyed=keyed, load=load)


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every options group can do: be read from a user's values and from storage, and be written."""

    @classmethod
    def declared(cls, surface: str | None = None) -> list[tuple[dataclasses.Field, Declared]]:
        """The fields of this group (in declaration order) with their declarations; with ``surface``, only those
        users set there."""
        return [(f, f.metadata["option"]) for f in dataclasses.fields(cls)
                if surface is None or surface in f.metadata["option"].surfaces]

    @classmethod
    def pick(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that are options of this group."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if k in names}

    @classmethod
    def types(cls) -> dict[str, Any]:
        """Each field's type (the annotations evaluated)."""
        return typing.get_type_hints(cls)

    @classmethod
    def user_default(cls, name: str) -> Any:
        """The default a user sees for ``name`` (None for a required option a service fills in)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        declared = f.metadata["option"]
        if declared.user_default is not _SAME:
            return declared.user_default
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None

    @classmethod
    def from_user(cls, **values: Any):
        """The options as a user asks for them (the CLI's and the API's values, already typed): 0 bits means
        float16 only, an empty text means "not given", ``chunks_only`` implies ``chunk_unet``."""
        given = {}
        for f, declared in cls.declared():
            if f.name in values:
                value = values.pop(f.name)
                given[f.name] = declared.from_user(value) if declared.from_user else value
        if values:
            raise TypeError(f"{cls.__name__} has no options {', '.join(sorted(values))}")
        if given.get("chunks_only"):
            given["chunk_unet"] = True
        return cls(**given)

    def to_dict(self, names: typing.Iterable[str] | None = None) -> dict[str, Any]:
        """The options as JSON values (every field, or ``names``)."""
        wanted = set(names) if names is not None else None
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)
                if wanted is None or f.name in wanted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Options read back from :meth:`to_dict`'s JSON (a job row, a watch, a report); refuses unknown names."""
        if not isinstance(data, dict):
            raise OptionsError(f"stored options must be an object, not {type(data).__name__}",
                               hint="Submit the job (or add the watch) again.")
        known = {f.name: declared for f, declared in cls.declared()}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise OptionsError(f"unknown options {', '.join(unknown)}",
                               hint="They were saved by another version: submit the job (or add the watch) again.")
        values = {}
        for name, value in data.items():
            load = known[name].load
            values[name] = load(value) if load and value is not None else \
                tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def key(self) -> str:
        """The canonical text of the options that tell jobs apart: those keyed ``always``, and those keyed
        ``set`` that differ from their defaults (so an option added later leaves every earlier key as it was)."""
        values = {}
        for f, declared in self.declared():
            value = getattr(self, f.name)
            if declared.keyed == "always" or (declared.keyed == "set" and value != field_default(f)):
                values[f.name] = _json(value)
        return json.dumps(values, sort_keys=True, separators=(",", ":"))


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _json(value: Any) -> Any:
    if isinstance(value, Attention):
        return value.value
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, ValidationBars):
        return dataclasses.asdict(value)
    return value

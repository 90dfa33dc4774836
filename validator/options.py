"""Options records: each option defined once, with its type, default and help, and read from there
by every face that takes it (constructors, `from_url`s, command lines).

A record is a `TypedDict` (so `**options: Unpack[Record]` types the keywords of every face that
takes them) whose fields carry an `Option` in `Annotated[...]`: the default, per-role defaults
where roles differ on purpose, the help text, and what a command line needs. `resolved` fills in
the defaults and refuses a keyword the record does not define; `fields` lists them for a face's
argument parser or a test (as uvicorn's `Config` and httpx's `Timeout` are defined once).

Pure: no I/O, nothing of the project but `errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from types import NoneType, UnionType
from typing import Any, Literal, TypeVar

from validator.errors import ConfigurationError

__all__ = ["Field", "Option", "add_arguments", "fields", "resolved", "split"]

R = TypeVar("R", bound=Mapping[str, Any])


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """What a record says of one option, besides its name and type (`Annotated[T, Option(...)]`).

    `default`: the value when the option is not given; `roles`: the default of a role that
    differs on purpose (`{"admin": 2.0}`), said here so that it is said once; `help`: one line,
    for docs and `--help`. For a command line: `flags` (default `--name-with-dashes`),
    `metavar`, `env` (an environment variable read when the flag is not given), `parse` (the
    text to value, when the type does not say it: bool is a switch, int a number, a Literal
    its choices, anything else text) and `choices` (when the type is wider than the flag)."""

    default: Any
    help: str
    roles: Mapping[str, Any] | None = None
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    env: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None

    def default_for(self, role: str | None) -> Any:
        """The default of `role` (that of every role when it has none of its own)."""
        if role is not None and self.roles is not None and role in self.roles:
            return self.roles[role]
        return self.default


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One option of a record: its name, its type (without `Annotated`) and its `Option`."""

    name: str
    type: Any
    option: Option
    required: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        return self.option.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def base(self) -> Any:
        """The type without `None`: `int | None` -> int."""
        args = typing.get_args(self.type)
        if isinstance(self.type, UnionType) or typing.get_origin(self.type) is typing.Union:
            kept = [a for a in args if a is not NoneType]
            if len(kept) == 1:
                return kept[0]
        return self.type

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """`Option.choices`, else the values of a Literal type, else None."""
        if self.option.choices is not None:
            return self.option.choices
        base = self.base
        return typing.get_args(base) if typing.get_origin(base) is Literal else None


def fields(record: type[Mapping[str, Any]]) -> tuple[Field, ...]:
    """The options of `record`, in definition order (inherited ones first)."""
    return _fields(record)


_CACHE: dict[type, tuple[Field, ...]] = {}


def _fields(record: type) -> tuple[Field, ...]:
    found = _CACHE.get(record)
    if found is None:
        hints = typing.get_type_hints(record, include_extras=True)
        listed = []
        for name, annotation in hints.items():
            hint = annotation
            while typing.get_origin(hint) in (typing.Required, typing.NotRequired):
                hint = typing.get_args(hint)[0]
            if typing.get_origin(hint) is not typing.Annotated:
                raise TypeError(f"{record.__name__}.{name} has no Option: Annotated[T, Option(...)]")
            base, *extras = typing.get_args(hint)
            while typing.get_origin(base) in (typing.Required, typing.NotRequired):
                base = typing.get_args(base)[0]
            option = next(e for e in extras if isinstance(e, Option))
            listed.append(Field(name, base, option, name in getattr(record, "__required_keys__", ())))
        found = _CACHE[record] = tuple(listed)
    return found


def resolved(record: type[R], given: Mapping[str, Any], *, owner: str, role: str | None = None) -> R:
    """`given` over `record`'s defaults (those of `role` where it has its own). Raises
    `ConfigurationError` naming `owner` for a keyword the record does not define."""
    known = {f.name: f for f in _fields(record)}
    unknown = set(given) - set(known)
    if unknown:
        raise ConfigurationError(
            f"{owner} has no option {', '.join(sorted(unknown))} (its options: {', '.join(known)})"
        )
    values = {name: f.option.default_for(role) for name, f in known.items()}
    values.update(given)
    return typing.cast(R, values)


def split(given: Mapping[str, Any], record: type[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`given` as the options `record` defines and the rest."""
    names = {f.name for f in _fields(record)}
    inside = {k: v for k, v in given.items() if k in names}
    return inside, {k: v for k, v in given.items() if k not in names}


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    options: Iterable[Field],
    environ: Mapping[str, str],
) -> None:
    """A flag per option (`Field.flags`), as its type says: a bool a switch, a Literal its
    choices, an int or a float a number, else text (or `Option.parse`). A flag not given leaves
    no attribute (so the record's default applies), unless its `Option.env` is set in `environ`."""
    for f in options:
        option = f.option
        default = option.default
        keywords: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.base is bool:
            keywords["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            keywords["metavar"] = option.metavar
            keywords["choices"] = f.choices
            number = f.base if f.base in (int, float) else None
            keywords["type"] = option.parse or number or str
        shown = "" if default in (None, False, (), "") else f" (default: {_text(default)})"
        if option.env is not None:
            shown += f" (${option.env})"
            if option.env in environ:
                keywords["default"] = environ[option.env]
        if f.required and keywords["default"] is argparse.SUPPRESS:
            keywords["required"] = True
        parser.add_argument(*f.flags, help=option.help + shown, **keywords)


def _text(value: Any) -> str:
    """A default as a command line would spell it."""
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)

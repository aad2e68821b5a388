"""Component options: a dataclass declares them, and specs are checked against it.

A component's options class is an ordinary (preferably frozen) dataclass whose field types are the
schema: int, float, bool, str, Literal[...] for a fixed set of choices, `X | None`, and tuples or
lists of those. `__post_init__` may raise ValueError for constraints across fields; the message is
shown to the user with the component it belongs to.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import tomllib

from .errors import AssignmentError, SpecError, did_you_mean, one_of


def parse_value(text: str) -> Any:
    """A `--set` value: a TOML literal where it is one (4, 0.1, true, [1, 2], "x"), else the text."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(assignments, flag: str) -> dict:
    """{key: value} from KEY=VALUE assignments (`--schedule-set halve_every=100`), values as parse_value reads them."""
    values = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise AssignmentError(f"{flag} {assignment!r}: expected key=value, e.g. {flag} name=4")
        values[key.strip()] = parse_value(text.strip())
    return values


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(parts) + " (or unset)"
    if origin in (tuple, list):
        item = typing.get_args(annotation)[0]
        return "a list of " + {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(
            item, f"({_describe(item)})")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def coerce(value: Any, annotation, where: str) -> Any:
    """`value` checked (and widened: int to float, list to tuple) against a field's type."""
    origin = typing.get_origin(annotation)
    wrong = SpecError(f"{where}: {value!r} is not {_describe(annotation)}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise SpecError(
                f"{where}: {value!r} is not allowed{did_you_mean(value, map(str, allowed))}; "
                f"allowed: {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return coerce(value, argument, where)
            except SpecError:
                continue
        raise wrong
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong
        item = typing.get_args(annotation)[0]
        items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if annotation is Any:
        return value
    raise TypeError(f"{where}: option type {annotation!r} is not supported in an options dataclass")


def build_options(cls: type, values: dict, where: str):
    """An instance of the options dataclass `cls` from a spec table, with one-line errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: options class {cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if not fields:
            raise SpecError(f"{where} takes no options; drop '{key}'")
        if key not in fields:
            raise SpecError(
                f"{where}: unknown option '{key}'{did_you_mean(key, fields)}; "
                f"allowed: {one_of(fields, limit=30)}"
            )
    checked = {key: coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    missing = [name for name, f in fields.items() if name not in checked
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{where}: option '{missing[0]}' is required ({_describe(hints[missing[0]])})")
    try:
        return cls(**checked)
    except (ValueError, TypeError) as error:
        raise SpecError(f"{where}: {error}") from None


def options_to_dict(options) -> dict:
    """The options as plain JSON/TOML values (tuples become lists)."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options) if f.init}


def describe_options(cls: type | None) -> list[dict]:
    """The schema of an options class, for `lmkit components --json` and the docs."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append({"name": f.name, "type": _describe(hints[f.name]),
                     "default": list(default) if isinstance(default, tuple) else default,
                     "help": f.metadata.get("help", "")})
    return rows

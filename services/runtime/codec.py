"""Plain values to JSON and back, by their type hints: dataclasses, enums, dates, instants, bytes,
decimals, tuples. Stores commands (timers), request fingerprints and idempotent responses."""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import types
import typing
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """A JSON-ready form of `value`; the inverse is `from_plain` with the same type."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes cannot be encoded: pass an aware datetime")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_from_plain(kind: type, value: Any) -> Any:
    """A field missing from `value` takes its default: what an older version stored (an
    idempotent answer, a timer's command) decodes after a field with a default is added. A
    missing field with no default is a KeyError naming it."""
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object for {kind.__name__}")
    hints = _hints(kind)
    arguments = {}
    for f in dataclasses.fields(kind):
        if f.name in value:
            arguments[f.name] = from_plain(hints[f.name], value[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f"{kind.__name__}.{f.name} is missing and has no default")
    return kind(**arguments)


def from_plain(kind: Any, value: Any) -> Any:  # noqa: PLR0912 - one branch per kind of type
    """Rebuilds a value of type `kind` from `to_plain`'s output."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return from_plain(option, value)
            except (TypeError, ValueError, KeyError):
                continue
        raise ValueError(f"{value!r} matches none of {kind}")
    if kind is Any:
        return value
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(kind)
        item = args[0] if args else Any
        items = [from_plain(item, element) for element in value]
        return origin(items)
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        return {from_plain(key_type, k): from_plain(value_type, v) for k, v in value.items()}
    if isinstance(kind, type):
        if dataclasses.is_dataclass(kind):
            return _dataclass_from_plain(kind, value)
        if issubclass(kind, enum.Enum):
            return kind(value)
        if issubclass(kind, datetime):
            return datetime.fromisoformat(value)
        if issubclass(kind, date):
            return date.fromisoformat(value)
        if issubclass(kind, bytes):
            return base64.b64decode(value)
        if issubclass(kind, Decimal):
            return Decimal(value)
        if kind in (bool, int, float, str):
            if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
                raise TypeError(f"{value!r} is not a {kind.__name__}")
            return kind(value)
        if kind is type(None):
            if value is not None:
                raise TypeError(f"{value!r} is not None")
            return None
    raise TypeError(f"cannot decode {kind!r}")


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal values give equal text."""
    return json.dumps(to_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(kind: type[T], text: str) -> T:
    result: T = from_plain(kind, json.loads(text))
    return result


def fingerprint(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of `value` and its type's name."""
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    return hashlib.sha256(f"{name}\n{dumps(value)}".encode()).hexdigest()

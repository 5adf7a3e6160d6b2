"""The runtime codec, which stores commands (timers), request fingerprints and idempotent
answers: what an older version stored must still decode after a field with a default is added."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.runtime import codec


@dataclass(frozen=True)
class Before:
    name: str
    price: Decimal


@dataclass(frozen=True)
class After:
    name: str
    price: Decimal
    served_at: datetime | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Required:
    name: str
    price: Decimal
    region: str


def test_a_value_round_trips() -> None:
    value = After("call", Decimal("12.50"), datetime(2026, 12, 7, 9, tzinfo=UTC), ("a", "b"))
    assert codec.loads(After, codec.dumps(value)) == value


def test_what_an_older_version_stored_decodes_with_the_new_fields_defaults() -> None:
    stored = codec.dumps(Before("call", Decimal("12.50")))
    assert codec.loads(After, stored) == After("call", Decimal("12.50"), None, ())


def test_a_missing_field_without_a_default_is_named() -> None:
    stored = codec.dumps(Before("call", Decimal("12.50")))
    with pytest.raises(KeyError, match=r"Required\.region"):
        codec.loads(Required, stored)


def test_a_value_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(TypeError):
        codec.loads(After, json.dumps(["call", "12.50"]))

"""The pure building blocks every service's model imports: events, commands, aggregates, resource
name patterns, and validators for business IDs, resource ids, text fields and instants."""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.runtime.errors import FieldViolation, InvalidArgument

# [0-9], not \d: \d matches every Unicode digit, so fullwidth digits would make a second identity.
_BUSINESS_ID = re.compile(r"([0-9]{6,7})-([0-9])")
_BUSINESS_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2)
# AIP-122: ids in resource names are lowercase, start with a letter, fit a DNS label.
_RESOURCE_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


def business_id_check_digit(body: str) -> int | None:
    """The check digit for a 7-digit business ID body, or None when no ID with that body can exist.

    Remainder 1 has no check digit: such bodies are never issued.
    """
    remainder = (
        sum(int(digit) * weight for digit, weight in zip(body, _BUSINESS_ID_WEIGHTS, strict=True)) % 11
    )
    if remainder == 0:
        return 0
    if remainder == 1:
        return None
    return 11 - remainder


@functools.lru_cache(maxsize=8192)
def validate_business_id(value: str, field: str = "business_id") -> str:
    """Return the canonical form "NNNNNNN-C" of a Finnish business ID (Y-tunnus), or raise InvalidArgument.

    Surrounding whitespace is ignored. IDs issued before 1991 may be written with a
    6-digit body ("123456-7"); they are left-padded with 0, and the check digit must
    still verify on the padded body.

    Remembered (a refusal is not): ingestion checks the same few hundred providers' IDs on
    every observation.
    """
    text = value.strip()
    match = _BUSINESS_ID.fullmatch(text)
    if match is None:
        raise _invalid(field, f"{value!r} is not a business ID of the form 1234567-8")
    body, check = match.group(1).zfill(7), int(match.group(2))
    expected = business_id_check_digit(body)
    if expected is None:
        raise _invalid(field, f"{value!r} is not a business ID: no ID is issued with this number")
    if check != expected:
        raise _invalid(field, f"{value!r} is not a business ID: the check digit does not match")
    return f"{body}-{check}"


def validate_resource_id(value: str, field: str) -> str:
    """Return a region, service or indicator id unchanged, or raise InvalidArgument.

    1..63 characters of lowercase letters, digits and hyphens, starting with a letter.
    """
    if _RESOURCE_ID.fullmatch(value) is None:
        raise _invalid(
            field,
            f"{value!r} must be 1-63 lowercase letters, digits or hyphens, starting with a letter",
        )
    return value


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(value: str, field: str, max_length: int) -> FieldViolation | None:
    """A violation when the text is blank, longer than max_length or holds control characters
    (a NUL cannot even be stored in PostgreSQL), else None."""
    if not value.strip():
        return FieldViolation(field, "must not be empty")
    if len(value) > max_length:
        return FieldViolation(field, f"must be at most {max_length} characters")
    if _CONTROL.search(value):
        return FieldViolation(field, "must not contain control characters")
    return None


def require_aware(now: datetime) -> datetime:
    """Refuse naive datetimes: every instant in the model is timezone-aware.

    A naive value here is a programming error in the caller, not bad client input.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")
    return now


FINLAND = ZoneInfo("Europe/Helsinki")


def finnish_date(moment: datetime) -> date:
    """The Finnish calendar day of an instant.

    Deadlines and certificate dates are Finnish calendar days; the UTC date lags by a day
    after midnight in Helsinki and would make a certificate issued "today" look as if it
    came from the future.
    """
    return require_aware(moment).astimezone(FINLAND).date()


def raise_if_any(violations: list[FieldViolation], message: str) -> None:
    """Raise one InvalidArgument carrying every violation, so a client can fix them all at once."""
    if violations:
        details = "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in violations)
        raise InvalidArgument(f"{message}: {details}", violations)


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(description, [FieldViolation(field, description)])


# -- the building blocks of every service's model ---------------------------------------------


class Event:
    """A domain event: something that happened, named in the past tense (ProviderSuspended).

    Subclasses are frozen dataclasses whose fields carry the names of their proto
    message's fields, so the unit of work can turn them into that message without a
    hand-written mapping. `region` is the organiser whose events these are; by default it is
    the last token of the event's NATS subject (`subject_key`), so consumers can filter by
    organiser.
    """

    region: str

    @property
    def subject_key(self) -> str:
        """The last token of the event's subject. An event that belongs to no organiser (a
        bidder's keys serve it in every region) overrides this with what consumers filter by."""
        return self.region


class Command:
    """A request to change state, named in the imperative (RegisterProvider).

    Subclasses are frozen dataclasses of plain values. A command is what a gRPC call, a
    NATS event or a timer is turned into; the dispatcher hands it to its one handler.
    """


class Query:
    """A request to read state (GetRegistration); handled like a command, on a read-only unit of work."""


class Aggregate:
    """An entity that records the events of its own changes; the unit of work collects them.

    Works for plain and frozen dataclasses alike: the pending events live in the
    instance's __dict__, outside the dataclass fields, so they take no part in
    equality or repr.
    """

    def record(self, event: Event) -> None:
        # A process-wide counter orders events across the aggregates of one unit of work.
        self.__dict__.setdefault("_pending_events", []).append((next(_EVENT_ORDER), event))

    def pull_events(self) -> list[tuple[int, Event]]:
        """The events recorded since the last pull with their order numbers; pulling empties the list."""
        events: list[tuple[int, Event]] = self.__dict__.pop("_pending_events", [])
        return events


_EVENT_ORDER = itertools.count()


# -- resource names (AIP-122): one pattern formats and parses --------------------------------

_SEGMENT_KINDS: dict[str, tuple[re.Pattern[str], str]] = {
    # AIP-122 ids: lowercase ASCII letters, digits, hyphens, starting with a letter.
    "id": (_RESOURCE_ID, "1-63 lowercase letters, digits or hyphens, starting with a letter"),
    # Positive integers in canonical form: ASCII digits only (str.isdigit would take "²"
    # and fullwidth digits), no leading zero (so "01" never aliases "1"), and short
    # enough to fit a 32-bit column.
    "int": (re.compile(r"[1-9][0-9]{0,8}"), "a positive whole number without leading zeros"),
    # Server-assigned opaque ids (uuid hex) and business IDs.
    "key": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"), "1-64 ASCII letters, digits, '-' or '_'"),
    "business_id": (re.compile(r"[0-9]{7}-[0-9]"), "a business ID of the form 1234567-8"),
}
_VARIABLE = re.compile(r"\{(\w+)(?::(\w+))?\}")
_PARSED_NAMES_KEPT = 4096
"""Parsed names a pattern remembers before it forgets them all (a bound, not an LRU: the hot
names come straight back)."""


def segment_rule(kind: str) -> tuple[str, str]:
    """The regular expression (matched against the whole segment) and description of a segment kind."""
    regex, description = _SEGMENT_KINDS[kind]
    return regex.pattern, description


class ResourcePattern:
    """A resource name pattern such as "regions/{region}/services/{service}/terms/{version:int}".

    Each variable has a kind (`id` by default, `int`, `key`, `business_id`) that says what
    a segment may hold; `parse` refuses anything else with INVALID_ARGUMENT naming the
    field, and `format` builds the name, so the two can never disagree.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.variables: dict[str, str] = {}
        regex = ""
        position = 0
        for match in _VARIABLE.finditer(pattern):
            regex += re.escape(pattern[position : match.start()])
            name, kind = match.group(1), match.group(2) or "id"
            if kind not in _SEGMENT_KINDS:
                raise ValueError(f"unknown segment kind {kind!r} in {pattern!r}")
            self.variables[name] = kind
            regex += f"(?P<{name}>[^/]+)"
            position = match.end()
        regex += re.escape(pattern[position:])
        self._regex = re.compile(regex)
        self.template = _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", pattern)
        # Names that parsed, with their variables: a stream of observations names one indicator
        # thousands of times. A refusal is not kept.
        self._parsed: dict[str, dict[str, str]] = {}
        self.shape = _VARIABLE.sub("*", pattern)
        """The pattern as a google.api.http path template spells it: each variable a `*`."""

    def format(self, **values: object) -> str:
        return self.template.format(**{name: str(values[name]) for name in self.variables})

    def parse(self, value: str, field: str) -> dict[str, str]:
        """The variables of `value`; raises InvalidArgument naming `field` when it does not match."""
        parsed = self._parsed.get(value)
        if parsed is not None:
            return dict(parsed)
        parts = self._parse(value, field)
        if len(self._parsed) >= _PARSED_NAMES_KEPT:
            self._parsed.clear()
        self._parsed[value] = parts
        return dict(parts)

    def _parse(self, value: str, field: str) -> dict[str, str]:
        match = self._regex.fullmatch(value)
        if match is None:
            raise _invalid(field, f"must be a resource name of the form {self.template}")
        parts = match.groupdict()
        violations = []
        for name, kind in self.variables.items():
            regex, description = _SEGMENT_KINDS[kind]
            if regex.fullmatch(parts[name]) is None:
                violations.append(FieldViolation(field, f"the {name} segment must be {description}"))
        raise_if_any(violations, f"{field} is not a valid resource name")
        return parts


# -- Ed25519 public keys, as clients send them: 32 raw bytes --------------------------------------


def key_fingerprint(raw_public_key: bytes) -> str:
    """A key's name where the key itself is not wanted (events, audit records, resource names):
    the hex SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()


def ed25519_public_key(raw: bytes) -> Ed25519PublicKey | None:
    """The raw 32-byte Ed25519 public key, or None when `raw` is not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def verify_with_any(keys: Iterable[bytes], signature: bytes, message: bytes) -> bytes | None:
    """The first of the raw `keys` whose Ed25519 signature over `message` `signature` is, or None."""
    for raw in keys:
        key = ed25519_public_key(raw)
        if key is None:
            continue
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return raw
    return None

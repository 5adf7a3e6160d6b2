"""Validators shared by every service's model: business IDs, resource ids, text fields, instants."""

from __future__ import annotations

import re
from datetime import datetime

from services.runtime.errors import FieldViolation, InvalidArgument

_BUSINESS_ID = re.compile(r"(\d{6,7})-(\d)")
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


def validate_business_id(value: str, field: str = "business_id") -> str:
    """Return the canonical form "NNNNNNN-C" of a Finnish business ID (Y-tunnus), or raise InvalidArgument.

    Surrounding whitespace is ignored. IDs issued before 1991 may be written with a
    6-digit body ("123456-7"); they are left-padded with 0, and the check digit must
    still verify on the padded body.
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


def check_text(value: str, field: str, max_length: int) -> FieldViolation | None:
    """A violation when the text is blank or longer than max_length, else None."""
    if not value.strip():
        return FieldViolation(field, "must not be empty")
    if len(value) > max_length:
        return FieldViolation(field, f"must be at most {max_length} characters")
    return None


def require_aware(now: datetime) -> datetime:
    """Refuse naive datetimes: every instant in the model is timezone-aware.

    A naive value here is a programming error in the caller, not bad client input.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")
    return now


def raise_if_any(violations: list[FieldViolation], message: str) -> None:
    """Raise one InvalidArgument carrying every violation, so a client can fix them all at once."""
    if violations:
        details = "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in violations)
        raise InvalidArgument(f"{message}: {details}", violations)


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(description, [FieldViolation(field, description)])

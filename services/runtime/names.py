"""Resource names (AIP-122), page sizes and page tokens (AIP-158), shared by every servicer."""

from __future__ import annotations

import base64
import binascii
import json
import re
from functools import cache

from services.runtime.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(pattern))
    return re.compile(regex)


def parse_name(value: str, pattern: str, field: str) -> dict[str, str]:
    """Splits e.g. "regions/uusimaa/services/recruitment" by "regions/{region}/services/{service}"."""
    match = _compile(pattern).fullmatch(value)
    if match is None:
        description = f"must be a resource name of the form {pattern}"
        raise InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])
    return match.groupdict()


def page_size(requested: int, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", [FieldViolation(field, "must not be negative")]
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(position: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, sort_keys=True).encode()).decode().rstrip("=")


def decode_page_token(token: str, field: str = "page_token") -> dict[str, str]:
    """An opaque token from a previous page; a damaged one is the client's mistake."""
    if not token:
        return {}
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if not isinstance(position, dict) or not all(isinstance(v, str) for v in position.values()):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [FieldViolation(field, "is not a token this service issued")],
        )
    return position

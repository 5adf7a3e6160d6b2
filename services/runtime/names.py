"""Pagination (AIP-158): page sizes, and page tokens that are opaque, bound to the query that
issued them, and refused with INVALID_ARGUMENT when damaged, tampered with or foreign."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from services.runtime.errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageRequest",
    "foreign_page_token",
    "next_page_token",
    "page",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_TOKEN_MAX_LENGTH = 2048
_FOREIGN = "is not a token this service issued"


@dataclass(frozen=True)
class PageRequest:
    """Where a page starts (empty for the first page) and how many items it holds."""

    size: int
    after: dict[str, str]
    query: dict[str, str]

    def next_token(self, last: Mapping[str, str] | None) -> str:
        """The token for the page after one ending at `last`; empty when there is none."""
        return next_page_token(self.query, last) if last is not None else ""

    # The position's parts, checked as any client input is: the checksum tells a damaged
    # token from one this code wrote, not a forged one, so a bad part is INVALID_ARGUMENT.

    def text(self, key: str) -> str:
        try:
            return self.after[key]
        except KeyError:
            raise foreign_page_token() from None

    def instant(self, key: str) -> datetime:
        try:
            moment = datetime.fromisoformat(self.text(key))
        except ValueError:
            raise _refuse(_FOREIGN, "page_token") from None
        if moment.tzinfo is None:
            raise _refuse(_FOREIGN, "page_token")
        return moment

    def day(self, key: str) -> date:
        try:
            return date.fromisoformat(self.text(key))
        except ValueError:
            raise _refuse(_FOREIGN, "page_token") from None

    def number(self, key: str) -> int:
        value = self.text(key)
        if not (value.isascii() and value.isdigit()):
            raise _refuse(_FOREIGN, "page_token")
        return int(value)


def _query_digest(query: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(query), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _checksum(body: str) -> str:
    # Not a secret: it tells a damaged or hand-edited token from one this code wrote.
    # A forged position could only move within a query the caller may run anyway.
    return hashlib.sha256(f"kasvu-page-token\n{body}".encode()).hexdigest()[:16]


def next_page_token(query: Mapping[str, str], position: Mapping[str, str]) -> str:
    body = json.dumps({"p": dict(position), "q": _query_digest(query)}, sort_keys=True, separators=(",", ":"))
    raw = json.dumps({"b": body, "c": _checksum(body)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def foreign_page_token(field: str = "page_token") -> InvalidArgument:
    """The refusal of a token this service did not issue, or whose position names nothing the
    list holds (a list that pages by a position it looks up, rather than compares)."""
    return _refuse(_FOREIGN, field)


def _refuse(description: str, field: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])


def page(
    page_size: int,
    page_token: str,
    query: Mapping[str, object],
    *,
    listing: str,
    size_field: str = "page_size",
    token_field: str = "page_token",
) -> PageRequest:
    """Validates a list request's paging fields against the query (parent and filters) they page.

    `listing` names the list (e.g. "registry.ListOrganisers") and binds its tokens to it as well:
    two lists with the same parent and filters, or none, would otherwise take each other's."""
    if page_size < 0:
        raise _refuse("must not be negative", size_field)
    bound = {key: str(value) for key, value in {"list": listing, **query}.items()}
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return PageRequest(size, {}, bound)
    if len(page_token) > _TOKEN_MAX_LENGTH:
        raise _refuse(_FOREIGN, token_field)
    try:
        raw = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
        outer = json.loads(raw)
        body = outer["b"]
        if not isinstance(body, str) or outer.get("c") != _checksum(body):
            raise ValueError("checksum")
        inner = json.loads(body)
        position, digest = inner["p"], inner["q"]
    except (binascii.Error, ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise _refuse(_FOREIGN, token_field) from None
    if not isinstance(position, dict) or not all(isinstance(v, str) for v in position.values()):
        raise _refuse(_FOREIGN, token_field)
    if digest != _query_digest(bound):
        raise _refuse(
            "was issued for another query: keep the parent and filters of the first page", token_field
        )
    return PageRequest(size, position, bound)

"""Bidder keys: the Ed25519 keys a provider enrols beforehand to sign its bids with.

A bid's signature proves who bid only if the key it verifies with is known to belong to the
bidder; a key that came with the bid itself proves nothing. So a provider enrols its keys
(proving it holds each by a signature over a fixed, domain-separated message naming itself and
the key), and a bid, or a consortium member's signature, verifies only with a key live-enrolled
for that bidder. One key belongs to one bidder for good: a retired key is never enrolled
again, by anyone, so a signature once made with it always means the same bidder. Retiring a
key refuses new bids signed with it; bids already submitted stay valid (opening checks the
signature, not the enrolment). Pure: no storage, no transport.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from services.runtime.domain import Aggregate, Event, ResourcePattern, require_aware
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.tendering import sealing

BIDDER = ResourcePattern("bidders/{bidder:business_id}")
BIDDER_KEY = ResourcePattern("bidders/{bidder:business_id}/keys/{fingerprint:key}")

NOT_ENROLLED = "BIDDER_KEY_NOT_ENROLLED"
"""The reason of a bid refused for a key not live-enrolled for its bidder."""

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


# -- events ----------------------------------------------------------------------------------------


class _BidderKeyEvent(Event):
    bidder: str

    @property
    def subject_key(self) -> str:
        # A bidder's keys serve its bids in every region, so their subjects end in the bidder
        # (consumers filter by it) rather than in an organiser.
        return self.bidder


@dataclass(frozen=True)
class BidderKeyEnrolled(_BidderKeyEvent):
    """A provider enrolled a key for signing its bids: identifiers and the key's fingerprint."""

    key: str
    bidder: str
    fingerprint: str
    enroll_time: datetime


@dataclass(frozen=True)
class BidderKeyRetired(_BidderKeyEvent):
    """A provider retired a key: new bids signed with it are refused, earlier ones stand."""

    key: str
    bidder: str
    fingerprint: str
    retire_time: datetime


EVENTS: tuple[type[Event], ...] = (BidderKeyEnrolled, BidderKeyRetired)


# -- the key ---------------------------------------------------------------------------------------


@dataclass
class BidderKey(Aggregate):
    bidder: str
    """The provider's business ID."""
    public_key: bytes
    """Raw 32-byte Ed25519 public key."""
    fingerprint: str
    """Lowercase hex SHA-256 of `public_key`: the key's id."""
    enrolled_at: datetime
    retired_at: datetime | None = None

    @property
    def name(self) -> str:
        return BIDDER_KEY.format(bidder=self.bidder, fingerprint=self.fingerprint)

    @property
    def live(self) -> bool:
        return self.retired_at is None

    def retire(self, now: datetime) -> bool:
        """Retires the key; False (and no event) when it was retired already, so a retry finds
        the state it asked for."""
        if self.retired_at is not None:
            return False
        self.retired_at = require_aware(now)
        self.record(BidderKeyRetired(self.name, self.bidder, self.fingerprint, now))
        return True


def fingerprint_of(name_fingerprint: str, field: str) -> str:
    """The fingerprint segment of a key's name, refused unless 64 lowercase hex digits (so one
    key never has two names)."""
    if _FINGERPRINT.fullmatch(name_fingerprint) is None:
        raise _invalid(field, "the fingerprint segment must be 64 lowercase hex digits (SHA-256 of the key)")
    return name_fingerprint


def enrol(
    bidder: str, public_key: bytes, proof: bytes, existing: BidderKey | None, now: datetime
) -> tuple[BidderKey, bool]:
    """The key enrolled for `bidder`, and whether it is new (False: it was live for the bidder
    already, and nothing changes).

    The key and the proof of possession are checked first, so only the key's holder learns
    whether someone else enrolled it. `existing` is the key with the same fingerprint, whoever
    enrolled it."""
    try:
        sealing.ed25519_public(public_key, "bidder_key.public_key")
    except sealing.SealingError:
        raise _invalid("bidder_key.public_key", "must be a raw 32-byte Ed25519 public key") from None
    try:
        sealing.verify_bidder_key_proof(bidder, public_key, proof)
    except sealing.SealingError as error:
        raise _invalid("bidder_key.proof", str(error)) from None
    fingerprint = sealing.key_fingerprint(public_key)
    if existing is not None:
        if existing.bidder != bidder:
            raise FailedPrecondition("the key is enrolled by another bidder", reason="BIDDER_KEY_TAKEN")
        if not existing.live:
            raise FailedPrecondition(
                f"{existing.name} was retired; a retired key is never enrolled again",
                reason="BIDDER_KEY_RETIRED",
            )
        return existing, False
    key = BidderKey(bidder, public_key, fingerprint, require_aware(now))
    key.record(BidderKeyEnrolled(key.name, bidder, fingerprint, now))
    return key, True


def not_enrolled(field: str, bidder: str) -> FieldViolation:
    return FieldViolation(field, f"is not a key enrolled for {bidder} (enrol it first, or it was retired)")


def is_enrolled(enrolled: Collection[tuple[str, str]], bidder: str, public_key: bytes) -> bool:
    """Whether `public_key` is among `enrolled`, the (bidder, fingerprint) pairs live now."""
    return (bidder, sealing.key_fingerprint(public_key)) in enrolled


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])

"""Bidder keys' pure rules: enrolment needs a valid key and its holder's proof for this bidder,
is idempotent for a live key of the same bidder, refuses a retired key and another bidder's;
retirement happens once; events carry identifiers only and are addressed by the bidder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.tendering import bidder_keys, sealing

NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)
BIDDER, OTHER = "1234561-2", "1234562-0"


def enrolled(key: Ed25519PrivateKey, bidder: str = BIDDER) -> bidder_keys.BidderKey:
    raw = sealing.raw_public(key)
    found, new = bidder_keys.enrol(bidder, raw, sealing.sign_bidder_key(bidder, key), None, NOW)
    assert new
    return found


def test_an_enrolled_key_is_named_by_its_bidder_and_fingerprint_and_records_its_event() -> None:
    key = Ed25519PrivateKey.generate()
    found = enrolled(key)
    fingerprint = sealing.key_fingerprint(sealing.raw_public(key))
    assert found.name == f"bidders/{BIDDER}/keys/{fingerprint}"
    assert found.live and found.enrolled_at == NOW
    [(_, event)] = found.pull_events()
    assert event == bidder_keys.BidderKeyEnrolled(found.name, BIDDER, fingerprint, NOW)
    assert event.subject_key == BIDDER  # the last token of its subject


def test_enrolling_a_live_key_again_for_the_same_bidder_changes_nothing() -> None:
    key = Ed25519PrivateKey.generate()
    first = enrolled(key)
    first.pull_events()
    again, new = bidder_keys.enrol(
        BIDDER, first.public_key, sealing.sign_bidder_key(BIDDER, key), first, NOW + timedelta(days=1)
    )
    assert again is first and not new
    assert again.pull_events() == [] and again.enrolled_at == NOW


def test_a_retired_key_or_another_bidders_key_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    mine = enrolled(key)
    with pytest.raises(FailedPrecondition) as taken:
        bidder_keys.enrol(OTHER, mine.public_key, sealing.sign_bidder_key(OTHER, key), mine, NOW)
    assert taken.value.reason == "BIDDER_KEY_TAKEN"
    assert mine.retire(NOW)
    with pytest.raises(FailedPrecondition) as retired:
        bidder_keys.enrol(BIDDER, mine.public_key, sealing.sign_bidder_key(BIDDER, key), mine, NOW)
    assert retired.value.reason == "BIDDER_KEY_RETIRED"


def test_a_key_that_is_not_32_bytes_or_a_proof_not_for_this_bidder_and_key_is_refused_naming_it() -> None:
    key = Ed25519PrivateKey.generate()
    raw = sealing.raw_public(key)
    with pytest.raises(InvalidArgument) as short:
        bidder_keys.enrol(BIDDER, raw[:31], b"", None, NOW)
    assert [v.field for v in short.value.violations] == ["bidder_key.public_key"]
    for proof in (
        sealing.sign_bidder_key(OTHER, key),  # made for another bidder
        key.sign(raw),  # the bare key, as the registry's rotation signs: not this purpose
        sealing.sign_bidder_key(BIDDER, Ed25519PrivateKey.generate()),  # by another key
    ):
        with pytest.raises(InvalidArgument) as forged:
            bidder_keys.enrol(BIDDER, raw, proof, None, NOW)
        assert [v.field for v in forged.value.violations] == ["bidder_key.proof"]


def test_the_proof_is_checked_before_anyone_learns_the_key_is_taken() -> None:
    key = Ed25519PrivateKey.generate()
    theirs = enrolled(key, OTHER)
    with pytest.raises(InvalidArgument):
        bidder_keys.enrol(BIDDER, theirs.public_key, b"\x00" * 64, theirs, NOW)


def test_a_key_is_retired_once() -> None:
    found = enrolled(Ed25519PrivateKey.generate())
    found.pull_events()
    later = NOW + timedelta(hours=1)
    assert found.retire(later)
    assert not found.live and found.retired_at == later
    assert not found.retire(later + timedelta(hours=1))
    assert found.retired_at == later
    [(_, event)] = found.pull_events()
    assert event == bidder_keys.BidderKeyRetired(found.name, BIDDER, found.fingerprint, later)


def test_a_keys_name_holds_its_fingerprint_in_lowercase_hex_only() -> None:
    fingerprint = "ab" * 32
    assert bidder_keys.fingerprint_of(fingerprint, "name") == fingerprint
    for wrong in ("AB" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(InvalidArgument):
            bidder_keys.fingerprint_of(wrong, "name")


def test_is_enrolled_asks_for_this_bidder_and_this_key() -> None:
    raw = sealing.raw_public(Ed25519PrivateKey.generate())
    live = {(BIDDER, sealing.key_fingerprint(raw))}
    assert bidder_keys.is_enrolled(live, BIDDER, raw)
    assert not bidder_keys.is_enrolled(live, OTHER, raw)
    assert not bidder_keys.is_enrolled(live, BIDDER, sealing.raw_public(Ed25519PrivateKey.generate()))

"""Sealed bids without storage: Shamir over GF(256), the opening key's k-of-n wrapping, HPKE bids
bound to call, lot and bidder, signatures and receipts."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.tendering import sealing

CALL = "regions/pirkanmaa/calls/c1"


def test_gf256_multiplication_matches_the_aes_field() -> None:
    # FIPS-197 4.2: {57} x {83} = {c1}; every non-zero element has an inverse.
    assert sealing.gf_mul(0x57, 0x83) == 0xC1
    assert all(sealing.gf_mul(a, sealing.gf_div(1, a)) == 1 for a in range(1, 256))


def test_any_k_shares_rebuild_the_secret_and_k_minus_1_do_not() -> None:
    secret = bytes(range(32))
    shares = sealing.split_secret(secret, 3, 5)
    for chosen in itertools.combinations(shares, 3):
        assert sealing.combine_shares(chosen) == secret
    for pair in itertools.combinations(shares, 2):
        assert sealing.combine_shares(pair) != secret


def test_a_threshold_of_one_gives_the_secret_in_every_share_and_bad_parameters_are_refused() -> None:
    assert all(share[1:] == b"ab" for share in sealing.split_secret(b"ab", 1, 3))
    with pytest.raises(ValueError):
        sealing.split_secret(b"x", 4, 3)
    with pytest.raises(ValueError):
        sealing.combine_shares([b"\x01a", b"\x01b"])


def committee(n: int) -> list[X25519PrivateKey]:
    return [X25519PrivateKey.generate() for _ in range(n)]


def test_k_committee_shares_open_a_bid_and_k_minus_1_open_nothing() -> None:
    members = committee(3)
    keys = sealing.create_opening_keys(CALL, [sealing.raw_public(m) for m in members], 2)
    bidder_key = Ed25519PrivateKey.generate()
    sealed = sealing.seal_bid(b'{"price":"10"}', keys.public_key, CALL, "lot-a", "1234567-1")
    signature = sealing.sign_sealed_bid(sealed, bidder_key)
    sealing.verify_bid_signature(sealed, signature, sealing.raw_public(bidder_key))
    shares = [sealing.open_share(keys.sealed_shares[i], members[i], CALL, i) for i in range(3)]
    assert all(sealing.check_share(s, c, CALL) for s, c in zip(shares, keys.commitments, strict=True))
    with pytest.raises(sealing.SealingError):
        sealing.unwrap_opening_key(keys.wrapped_private_key, shares[:1], CALL)
    private = sealing.unwrap_opening_key(keys.wrapped_private_key, [shares[0], shares[2]], CALL)
    assert sealing.open_bid(sealed, private, CALL, "lot-a", "1234567-1") == b'{"price":"10"}'


def test_a_bid_opens_only_for_its_own_call_lot_and_bidder_and_a_share_only_for_its_member() -> None:
    members = committee(1)
    keys = sealing.create_opening_keys(CALL, [sealing.raw_public(members[0])], 1)
    share = sealing.open_share(keys.sealed_shares[0], members[0], CALL, 0)
    private = sealing.unwrap_opening_key(keys.wrapped_private_key, [share], CALL)
    sealed = sealing.seal_bid(b"bid", keys.public_key, CALL, "lot-a", "1234567-1")
    for call, lot, bidder in (
        (CALL + "x", "lot-a", "1234567-1"),
        (CALL, "lot-b", "1234567-1"),
        (CALL, "lot-a", "7654321-1"),
    ):
        with pytest.raises(sealing.SealingError):
            sealing.open_bid(sealed, private, call, lot, bidder)
    with pytest.raises(sealing.SealingError):
        sealing.open_share(keys.sealed_shares[0], X25519PrivateKey.generate(), CALL, 0)
    assert not sealing.check_share(share, keys.commitments[0], CALL + "x")


def test_a_tampered_ciphertext_or_another_key_fails_the_signature_check() -> None:
    key = Ed25519PrivateKey.generate()
    sealed = b"\x00" * 64
    signature = sealing.sign_sealed_bid(sealed, key)
    with pytest.raises(sealing.SealingError):
        sealing.verify_bid_signature(sealed[:-1] + b"\x01", signature, sealing.raw_public(key))
    with pytest.raises(sealing.SealingError):
        sealing.verify_bid_signature(sealed, signature, sealing.raw_public(Ed25519PrivateKey.generate()))


def test_a_provider_verifies_its_receipt_and_spots_a_changed_one() -> None:
    service_key = Ed25519PrivateKey.generate()
    receipt = sealing.Receipt("b1", CALL, "lot-a", "1234567-1", "ab" * 32, "2026-11-23T10:00:00+00:00")
    signature = sealing.sign_receipt(receipt, service_key)
    assert sealing.verify_receipt(receipt, signature, sealing.raw_public(service_key))
    changed = sealing.Receipt("b1", CALL, "lot-a", "1234567-1", "cd" * 32, receipt.receive_time)
    assert not sealing.verify_receipt(changed, signature, sealing.raw_public(service_key))

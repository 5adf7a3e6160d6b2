"""A registration's keys: a set of live Ed25519 keys, rotated by adding one and retiring the signer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.registry.model import (
    MAX_REGISTRATION_KEYS,
    Registration,
    RegistrationKey,
    RegistrationKeyAdded,
    RegistrationKeyRetired,
    verify_with_any,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_registry_model import NOW, admitted, make_terms


def new_key() -> tuple[Ed25519PrivateKey, bytes]:
    private = Ed25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def with_key() -> tuple[Registration, Ed25519PrivateKey]:
    """An admitted registration whose one key is a fresh one this test holds the private half of."""
    registration = admitted()
    private, public = new_key()
    registration.public_key = public
    registration.pull_events()
    return registration, private


def test_a_registration_that_never_changed_keys_holds_its_one_key_since_it_was_created():
    registration, _ = with_key()
    assert registration.keys == (RegistrationKey(registration.public_key, registration.created_at),)
    assert registration.live_keys == (registration.public_key,)


def test_rotation_adds_the_new_key_and_retires_the_one_that_signed_in_one_decision():
    registration, old = with_key()
    old_public = registration.public_key
    _, new_public = new_key()
    later = NOW + timedelta(days=1)

    registration.rotate_key(new_public, old.sign(new_public), later)

    assert registration.live_keys == (new_public,)
    assert registration.public_key == new_public
    assert [(k.public_key, k.retire_time) for k in registration.keys] == [
        (old_public, later),
        (new_public, None),
    ]
    assert [type(e).__name__ for _, e in registration.pull_events()] == ["ProviderKeyRotated"]


def test_a_rotation_not_signed_by_a_live_key_is_refused_and_changes_nothing():
    registration, old = with_key()
    held = registration.keys
    stranger, new_public = new_key()
    with pytest.raises(InvalidArgument) as error:
        registration.rotate_key(new_public, stranger.sign(new_public), NOW)
    assert [v.field for v in error.value.violations] == ["key_signature"]
    # A retired key signs nothing either.
    registration.rotate_key(new_public, old.sign(new_public), NOW)
    _, third = new_key()
    with pytest.raises(InvalidArgument):
        registration.rotate_key(third, old.sign(third), NOW)
    assert registration.live_keys == (new_public,)
    assert held[0].public_key not in registration.live_keys


def test_a_commitment_verifies_with_any_live_key_and_not_with_a_retired_one():
    registration, old = with_key()
    old_public = registration.public_key
    successor, new_public = new_key()
    registration.rotate_key(new_public, old.sign(new_public), NOW)
    terms = make_terms(version=2)
    message = bytes.fromhex(terms.content_hash)
    assert verify_with_any(registration.live_keys, successor.sign(message), message) == new_public
    assert verify_with_any(registration.live_keys, old.sign(message), message) is None
    assert verify_with_any((old_public, new_public), old.sign(message), message) == old_public
    with pytest.raises(InvalidArgument) as error:
        registration.recommit(terms, (), old.sign(message), "provider", NOW)
    assert [v.field for v in error.value.violations] == ["terms_signature"]


def test_a_rotation_of_what_is_not_active_is_failed_precondition():
    registration, old = with_key()
    registration.withdraw("provider", NOW)
    _, new_public = new_key()
    with pytest.raises(FailedPrecondition):
        registration.rotate_key(new_public, old.sign(new_public), NOW)


def added(registration: Registration, signer: Ed25519PrivateKey) -> tuple[Ed25519PrivateKey, bytes]:
    """A second key added to `registration`, signed by `signer` and proved by itself."""
    private, public = new_key()
    assert registration.add_key(public, signer.sign(public), private.sign(registration.name.encode()), NOW)
    return private, public


def test_an_added_key_is_live_beside_the_first_and_its_event_names_only_its_fingerprint():
    registration, first = with_key()
    _, public = added(registration, first)
    assert len(registration.live_keys) == 2
    assert registration.public_key == public
    [(_, event)] = registration.pull_events()
    assert isinstance(event, RegistrationKeyAdded)
    assert event.key_fingerprint == RegistrationKey(public, NOW).fingerprint
    assert public not in {v for v in vars(event).values() if isinstance(v, bytes)}


def test_adding_a_key_already_live_changes_nothing():
    registration, first = with_key()
    key = registration.public_key
    assert not registration.add_key(key, first.sign(key), first.sign(registration.name.encode()), NOW)
    assert registration.pull_events() == []
    assert registration.live_keys == (key,)


@pytest.mark.parametrize("bad", ["public_key", "key_signature", "possession_signature"])
def test_a_malformed_key_or_signature_is_refused_naming_the_field(bad):
    registration, first = with_key()
    private, public = new_key()
    stranger, _ = new_key()
    arguments = {
        "public_key": b"short" if bad == "public_key" else public,
        "key_signature": (stranger if bad == "key_signature" else first).sign(public),
        "possession_signature": (stranger if bad == "possession_signature" else private).sign(
            registration.name.encode()
        ),
    }
    with pytest.raises(InvalidArgument) as error:
        registration.add_key(
            arguments["public_key"], arguments["key_signature"], arguments["possession_signature"], NOW
        )
    assert bad in [v.field for v in error.value.violations]
    assert len(registration.live_keys) == 1


def test_keys_are_capped_per_registration():
    registration, first = with_key()
    for _ in range(MAX_REGISTRATION_KEYS - 1):
        added(registration, first)
    private, public = new_key()
    with pytest.raises(FailedPrecondition) as error:
        registration.add_key(public, first.sign(public), private.sign(registration.name.encode()), NOW)
    assert error.value.reason == "TOO_MANY_KEYS"
    assert len(registration.live_keys) == MAX_REGISTRATION_KEYS


def test_a_key_is_retired_with_another_live_keys_signature_but_never_the_last():
    registration, first = with_key()
    first_public = registration.public_key
    second, second_public = added(registration, first)
    registration.pull_events()
    fingerprint = RegistrationKey(first_public, NOW).fingerprint

    with pytest.raises(InvalidArgument) as error:
        registration.retire_key(fingerprint, first.sign(first_public), NOW)  # signed by itself
    assert [v.field for v in error.value.violations] == ["key_signature"]

    registration.retire_key(fingerprint, second.sign(first_public), NOW)
    assert registration.live_keys == (second_public,)
    [(_, event)] = registration.pull_events()
    assert isinstance(event, RegistrationKeyRetired)
    assert event.key_fingerprint == fingerprint

    with pytest.raises(FailedPrecondition) as last:
        registration.retire_key(RegistrationKey(second_public, NOW).fingerprint, b"", NOW)
    assert last.value.reason == "LAST_LIVE_KEY"
    with pytest.raises(InvalidArgument) as retired:
        registration.retire_key(fingerprint, second.sign(first_public), NOW)
    assert [v.field for v in retired.value.violations] == ["key_fingerprint"]
    assert registration.live_keys == (second_public,)

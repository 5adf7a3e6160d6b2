"""A provider's contact details: validated by field, normalised, and changed with an event that
names the provider only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.registry.model import (
    CONTACT_DETAILS,
    ContactChanges,
    ContactDetails,
    ProviderContactDetailsChanged,
)
from services.runtime.errors import InvalidArgument

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BUSINESS_ID = "0737546-2"
GIVEN = ContactChanges(
    fields=(), contact_person="Maija Meikäläinen", email="maija@Tyopolku.FI", phone="+358 40 123 4567"
)


def set_once() -> ContactDetails:
    details = ContactDetails(BUSINESS_ID)
    assert details.update(GIVEN, NOW)
    return details


def refused_fields(details: ContactDetails, changes: ContactChanges) -> list[str]:
    with pytest.raises(InvalidArgument) as error:
        details.update(changes, NOW)
    return [violation.field for violation in error.value.violations]


def test_contact_details_are_the_providers_named_by_its_business_id():
    details = set_once()
    assert details.name == "providers/0737546-2/contactDetails"
    assert CONTACT_DETAILS.parse(details.name, "name") == {"business_id": BUSINESS_ID}


def test_a_first_update_stores_the_details_normalised_and_records_an_event_of_identifiers_only():
    details = set_once()

    assert (details.contact_person, details.email, details.phone) == (
        "Maija Meikäläinen",
        "maija@tyopolku.fi",  # the domain is case-blind; the local part is kept as given
        "+358401234567",
    )
    assert details.update_time == NOW
    [(_, event)] = details.pull_events()
    assert event == ProviderContactDetailsChanged(details.name, BUSINESS_ID, NOW)
    assert event.subject_key == BUSINESS_ID
    for private in ("Maija", "tyopolku", "4567"):
        assert private not in repr(event)


def test_the_same_details_again_are_no_change_and_record_nothing():
    details = set_once()
    details.pull_events()
    later = NOW + timedelta(days=1)

    assert not details.update(
        ContactChanges(
            fields=(), contact_person=" Maija Meikäläinen ", email="maija@tyopolku.fi", phone="+358401234567"
        ),
        later,
    )

    assert details.pull_events() == []
    assert details.update_time == NOW


def test_a_masked_update_replaces_only_the_fields_it_names():
    details = set_once()
    later = NOW + timedelta(days=1)

    assert details.update(
        ContactChanges(fields=("phone",), contact_person="", phone="+46 70 123 45 67"), later
    )

    assert (details.contact_person, details.email, details.phone) == (
        "Maija Meikäläinen",
        "maija@tyopolku.fi",
        "+46701234567",
    )
    assert details.update_time == later


def test_every_missing_field_of_a_first_update_is_named_at_once():
    assert refused_fields(ContactDetails(BUSINESS_ID), ContactChanges(fields=())) == [
        "contact_details.contact_person",
        "contact_details.email",
        "contact_details.phone",
    ]
    # A mask naming one field of details never given leaves the other two missing.
    assert refused_fields(ContactDetails(BUSINESS_ID), ContactChanges(fields=("email",), email="a@b.fi")) == [
        "contact_details.contact_person",
        "contact_details.phone",
    ]


@pytest.mark.parametrize(
    "email",
    [
        "maija",
        "maija@",
        "@tyopolku.fi",
        "maija@tyopolku",
        "maija@@tyopolku.fi",
        "maija meikäläinen@tyopolku.fi",
        "maija@työ.fi",  # an internationalised domain is given in its xn-- form
        "maija..m@tyopolku.fi",
        "maija@-tyopolku.fi",
        "maija\n@tyopolku.fi",
        "m" * 65 + "@tyopolku.fi",
        "m@" + "a" * 250 + ".fi",
    ],
)
def test_an_email_without_the_shape_of_an_address_is_refused(email: str):
    assert refused_fields(set_once(), ContactChanges(fields=("email",), email=email)) == [
        "contact_details.email"
    ]


@pytest.mark.parametrize("email", ["m.meikalainen+registry@tyopolku.fi", "maija@xn--ty-wka.fi", "a@b.co"])
def test_addresses_of_the_usual_shapes_are_taken(email: str):
    details = set_once()
    assert details.update(ContactChanges(fields=("email",), email=email), NOW)


@pytest.mark.parametrize(
    "phone",
    [
        "040 123 4567",  # national form: the country code is missing
        "00358401234567",
        "+0401234567",
        "+358",
        "+35840123456789012",  # more than E.164's 15 digits
        "+358 40 123 4567 ext 2",
        "+358 (40) 123 4567",
        "+358" + " " * 40 + "401234567",
        "+\N{FULLWIDTH DIGIT THREE}58401234567",  # a fullwidth digit is no ASCII one
    ],
)
def test_a_phone_number_not_in_international_form_is_refused(phone: str):
    assert refused_fields(set_once(), ContactChanges(fields=("phone",), phone=phone)) == [
        "contact_details.phone"
    ]


@pytest.mark.parametrize(
    "person", ["", "   ", "M" * 201, "Maija\x00Meikäläinen"], ids=["empty", "blank", "long", "control"]
)
def test_a_contact_person_blank_too_long_or_with_control_characters_is_refused(person: str):
    assert refused_fields(set_once(), ContactChanges(fields=("contact_person",), contact_person=person)) == [
        "contact_details.contact_person"
    ]


def test_a_refusal_changes_nothing_and_never_repeats_the_value_given():
    details = set_once()
    details.pull_events()
    with pytest.raises(InvalidArgument) as error:
        details.update(
            ContactChanges(fields=(), contact_person="Matti", email="matti-at-tyopolku", phone="0401234567"),
            NOW,
        )

    assert "matti" not in str(error.value).lower()
    assert "0401234567" not in str(error.value)
    assert all("matti" not in v.description.lower() for v in error.value.violations)
    assert (details.contact_person, details.email, details.phone) == (
        "Maija Meikäläinen",
        "maija@tyopolku.fi",
        "+358401234567",
    )
    assert details.pull_events() == []


def test_a_mask_naming_another_field_is_refused_naming_the_mask():
    assert refused_fields(set_once(), ContactChanges(fields=("business_id", "email"), email="a@b.fi")) == [
        "update_mask"
    ]

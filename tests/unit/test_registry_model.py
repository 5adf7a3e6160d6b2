"""Unit tests of the provider registry's domain: business IDs, terms, evidence, commitment, decisions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.registry.model import (
    DEFAULT_MAX_AGE_DAYS,
    Evidence,
    Reason,
    Registration,
    RegistrationState,
    Requirement,
    RequirementKind,
    Terms,
    assess_evidence,
    decide_registration,
    draft_registration,
    new_terms,
    parse_requirement_kind,
    validate_business_id,
    validate_resource_id,
    verify_commitment,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument

TODAY = date(2025, 3, 14)
# Noon in Helsinki, so the Finnish date is unambiguously TODAY.
NOW = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
WEIGHTS = (7, 9, 10, 5, 8, 4, 2)


def check_digit(body: str) -> int | None:
    """The Y-tunnus check digit computed independently of the model, for generating test IDs."""
    remainder = sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11
    return None if remainder == 1 else (0 if remainder == 0 else 11 - remainder)


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in error.value.violations]


def declaration(code: str = "prepayment-register") -> Requirement:
    return Requirement(code, "Entered in the prepayment register", RequirementKind.DECLARATION)


def document(code: str = "tax-certificate", max_age_days: int = 90) -> Requirement:
    return Requirement(code, "Tax debt certificate", RequirementKind.DOCUMENT, max_age_days)


def make_terms(*requirements: Requirement, version: int = 1) -> Terms:
    return new_terms(
        "uusimaa", "recruitment", version, "Rekrytointipalvelut", requirements or (declaration(),)
    )


class Provider:
    """A provider with its own Ed25519 key pair that signs terms."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, terms: Terms) -> bytes:
        return self._key.sign(bytes.fromhex(terms.content_hash))


# --- business ID (Y-tunnus) ---------------------------------------------------------------------


@pytest.mark.parametrize("business_id", ["0737546-2", "1572860-0", "2617416-4"])
def test_accepts_known_valid_business_ids(business_id):
    assert validate_business_id(business_id) == business_id


@pytest.mark.parametrize(
    "body", ["1234567", "7654321", "0000001", "9999999", "2001001", "1000000", "0000019"]
)
def test_accepts_business_ids_whose_check_digit_follows_the_algorithm(body):
    expected = check_digit(body)
    assert expected is not None
    assert validate_business_id(f"{body}-{expected}") == f"{body}-{expected}"


@pytest.mark.parametrize("business_id", ["0737546-2", "1572860-0", "2617416-4"])
def test_rejects_business_id_with_flipped_check_digit(business_id):
    body, check = business_id.split("-")
    for wrong in (d for d in range(10) if d != int(check)):
        with pytest.raises(InvalidArgument) as error:
            validate_business_id(f"{body}-{wrong}")
        assert fields_of(error) == ["business_id"]


def test_rejects_business_id_whose_remainder_is_one():
    body = next(f"{n:07d}" for n in range(1, 10_000) if check_digit(f"{n:07d}") is None)
    for check in range(10):
        with pytest.raises(InvalidArgument, match="no ID is issued"):
            validate_business_id(f"{body}-{check}")


def test_remainder_zero_gives_check_digit_zero():
    assert validate_business_id("0000019-0") == "0000019-0"


def test_strips_whitespace_around_business_id():
    assert validate_business_id("  0737546-2\n") == "0737546-2"


def test_left_pads_a_six_digit_business_id_when_its_check_digit_verifies():
    assert validate_business_id("737546-2") == "0737546-2"


def test_rejects_a_six_digit_business_id_whose_padded_check_digit_fails():
    with pytest.raises(InvalidArgument):
        validate_business_id("737546-3")


@pytest.mark.parametrize(
    "business_id",
    ["", "07375462", "0737546_2", "0737546-", "12345-6", "12345678-9", "073754a-2", "0737546-22"],
)
def test_rejects_malformed_business_ids(business_id):
    with pytest.raises(InvalidArgument) as error:
        validate_business_id(business_id, field="registration.business_id")
    assert fields_of(error) == ["registration.business_id"]


# --- resource ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["uusimaa", "a", "pirkanmaa-2", "r" + "x" * 62])
def test_accepts_resource_ids_of_lowercase_letters_digits_and_hyphens(value):
    assert validate_resource_id(value, "parent") == value


@pytest.mark.parametrize(
    "value", ["", "Uusimaa", "2uusimaa", "-uusimaa", "uusi maa", "uusimaa_", "r" + "x" * 63]
)
def test_rejects_resource_ids_outside_aip_122(value):
    with pytest.raises(InvalidArgument) as error:
        validate_resource_id(value, "parent")
    assert fields_of(error) == ["parent"]


# --- terms --------------------------------------------------------------------------------------


def test_content_hash_is_sha256_of_the_documented_canonical_json():
    terms = make_terms(document("tax-certificate"), declaration("insurance"))
    expected_json = json.dumps(
        {
            "region": "uusimaa",
            "service": "recruitment",
            "version": 1,
            "title": "Rekrytointipalvelut",
            "requirements": [
                {
                    "code": "tax-certificate",
                    "description": "Tax debt certificate",
                    "kind": "DOCUMENT",
                    "max_age_days": 90,
                    "decided_by": "AUTOMATIC",
                    "legal_basis": "",
                    "valid_days": 365,
                },
                {
                    "code": "insurance",
                    "description": "Entered in the prepayment register",
                    "kind": "DECLARATION",
                    "max_age_days": 90,
                    "decided_by": "AUTOMATIC",
                    "legal_basis": "",
                    "valid_days": 365,
                },
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert terms.canonical_json == expected_json
    assert terms.content_hash == hashlib.sha256(expected_json).hexdigest()


def test_canonical_json_keeps_finnish_letters_unescaped():
    terms = new_terms("uusimaa", "recruitment", 1, "Työllisyyspalvelut", (declaration(),))
    assert "Työllisyyspalvelut".encode() in terms.canonical_json
    assert b"\\u" not in terms.canonical_json


def test_content_hash_is_stable_for_equal_terms():
    assert make_terms(document()).content_hash == make_terms(document()).content_hash


@pytest.mark.parametrize(
    "change",
    [
        lambda r: replace(r, code="other-code"),
        lambda r: replace(r, description="A different description"),
        lambda r: replace(r, kind=RequirementKind.DECLARATION),
        lambda r: replace(r, max_age_days=91),
    ],
    ids=["code", "description", "kind", "max_age_days"],
)
def test_content_hash_changes_when_a_requirement_changes(change):
    assert make_terms(change(document())).content_hash != make_terms(document()).content_hash


def test_content_hash_changes_with_version_and_requirement_order():
    base = make_terms(document(), declaration())
    assert make_terms(document(), declaration(), version=2).content_hash != base.content_hash
    assert make_terms(declaration(), document()).content_hash != base.content_hash


def test_new_terms_fills_the_three_month_default_for_an_unset_max_age():
    terms = make_terms(Requirement("tax", "Tax debt certificate", RequirementKind.DOCUMENT, 0))
    assert terms.requirements[0].max_age_days == DEFAULT_MAX_AGE_DAYS == 90


def test_new_terms_rejects_empty_title_and_missing_requirements_together():
    with pytest.raises(InvalidArgument) as error:
        new_terms("uusimaa", "recruitment", 1, "  ", ())
    assert fields_of(error) == ["terms.title", "terms.requirements"]


def test_new_terms_rejects_a_title_over_200_characters():
    with pytest.raises(InvalidArgument) as error:
        new_terms("uusimaa", "recruitment", 1, "x" * 201, (declaration(),))
    assert fields_of(error) == ["terms.title"]


def test_new_terms_rejects_a_nul_character_which_postgresql_cannot_store():
    with pytest.raises(InvalidArgument) as error:
        new_terms("uusimaa", "recruitment", 1, "Rekry\0", (declaration(),))
    assert fields_of(error) == ["terms.title"]


def test_new_terms_rejects_duplicate_requirement_codes_at_the_second_one():
    with pytest.raises(InvalidArgument) as error:
        make_terms(declaration("insurance"), document("tax"), declaration("insurance"))
    assert fields_of(error) == ["terms.requirements[2].code"]


def test_new_terms_rejects_empty_code_and_description():
    with pytest.raises(InvalidArgument) as error:
        make_terms(declaration(), Requirement("", "", RequirementKind.DECLARATION))
    assert fields_of(error) == ["terms.requirements[1].code", "terms.requirements[1].description"]


def test_new_terms_rejects_a_requirement_without_a_kind():
    unset = Requirement("tax", "Tax debt certificate", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as error:
        make_terms(unset)
    assert fields_of(error) == ["terms.requirements[0].kind"]


@pytest.mark.parametrize("max_age_days", [-1, 3651])
def test_new_terms_rejects_a_document_max_age_outside_one_to_3650_days(max_age_days):
    with pytest.raises(InvalidArgument) as error:
        make_terms(declaration(), document(max_age_days=max_age_days))
    assert fields_of(error) == ["terms.requirements[1].max_age_days"]


@pytest.mark.parametrize("max_age_days", [1, 365, 3650])
def test_new_terms_accepts_document_max_ages_within_range(max_age_days):
    assert make_terms(document(max_age_days=max_age_days)).requirements[0].max_age_days == max_age_days


def test_new_terms_rejects_a_malformed_region_as_parent():
    with pytest.raises(InvalidArgument) as error:
        new_terms("Uusimaa", "recruitment", 1, "Title", (declaration(),))
    assert fields_of(error) == ["parent"]


def test_parses_requirement_kinds_by_name_with_or_without_proto_prefix():
    assert parse_requirement_kind("DOCUMENT", "k") is RequirementKind.DOCUMENT
    assert parse_requirement_kind("REQUIREMENT_KIND_DECLARATION", "k") is RequirementKind.DECLARATION
    with pytest.raises(InvalidArgument) as error:
        parse_requirement_kind("REQUIREMENT_KIND_UNSPECIFIED", "terms.requirements[0].kind")
    assert fields_of(error) == ["terms.requirements[0].kind"]


# --- evidence -----------------------------------------------------------------------------------


def test_all_requirements_met_gives_no_reasons():
    terms = make_terms(declaration("insurance"), document("tax"))
    evidence = [Evidence("insurance", declared=True), Evidence("tax", issued_on=TODAY - timedelta(days=10))]
    assert assess_evidence(terms, evidence, TODAY) == []


def test_undeclared_or_missing_declaration_is_not_declared():
    terms = make_terms(declaration("insurance"), declaration("licence"))
    reasons = assess_evidence(terms, [Evidence("insurance", declared=False)], TODAY)
    assert [(r.code, r.subject) for r in reasons] == [
        ("REQUIREMENT_NOT_DECLARED", "insurance"),
        ("REQUIREMENT_NOT_DECLARED", "licence"),
    ]


def test_document_without_evidence_or_issue_date_is_missing():
    terms = make_terms(document("tax"), document("insurance"))
    reasons = assess_evidence(terms, [Evidence("insurance", declared=True)], TODAY)
    assert [(r.code, r.subject) for r in reasons] == [
        ("EVIDENCE_MISSING", "tax"),
        ("EVIDENCE_MISSING", "insurance"),
    ]


def test_accepts_evidence_exactly_max_age_old():
    terms = make_terms(document("tax", max_age_days=90))
    assert assess_evidence(terms, [Evidence("tax", issued_on=TODAY - timedelta(days=90))], TODAY) == []


def test_rejects_evidence_older_than_max_age():
    terms = make_terms(document("tax", max_age_days=90))
    reasons = assess_evidence(terms, [Evidence("tax", issued_on=TODAY - timedelta(days=91))], TODAY)
    assert [(r.code, r.subject) for r in reasons] == [("EVIDENCE_TOO_OLD", "tax")]
    assert "91 days old" in reasons[0].message


def test_accepts_evidence_issued_today():
    terms = make_terms(document("tax"))
    assert assess_evidence(terms, [Evidence("tax", issued_on=TODAY)], TODAY) == []


def test_rejects_evidence_issued_after_today():
    terms = make_terms(document("tax"))
    reasons = assess_evidence(terms, [Evidence("tax", issued_on=TODAY + timedelta(days=1))], TODAY)
    assert [r.code for r in reasons] == ["EVIDENCE_FROM_FUTURE"]


def test_contractor_liability_evidence_may_be_twelve_months_old_when_the_terms_say_so():
    terms = make_terms(document("contractor-liability", max_age_days=365))
    assert (
        assess_evidence(terms, [Evidence("contractor-liability", issued_on=date(2024, 3, 14))], TODAY) == []
    )


def test_evidence_for_an_unknown_requirement_is_invalid_argument():
    terms = make_terms(declaration("insurance"))
    with pytest.raises(InvalidArgument) as error:
        assess_evidence(
            terms, [Evidence("insurance", declared=True), Evidence("unknown", declared=True)], TODAY
        )
    assert fields_of(error) == ["registration.evidence[1].requirement_code"]


def test_evidence_given_twice_for_one_requirement_is_invalid_argument():
    terms = make_terms(declaration("insurance"))
    evidence = [Evidence("insurance", declared=True), Evidence("insurance", declared=True)]
    with pytest.raises(InvalidArgument) as error:
        assess_evidence(terms, evidence, TODAY)
    assert fields_of(error) == ["registration.evidence[1].requirement_code"]


def test_malformed_document_hash_is_invalid_argument():
    terms = make_terms(document("tax"))
    with pytest.raises(InvalidArgument) as error:
        assess_evidence(terms, [Evidence("tax", issued_on=TODAY, document_sha256="not-hex")], TODAY)
    assert fields_of(error) == ["registration.evidence[0].document_sha256"]


# --- commitment ---------------------------------------------------------------------------------


def test_signature_over_the_terms_content_hash_verifies():
    provider, terms = Provider(), make_terms()
    verify_commitment(provider.public_key, provider.sign(terms), terms.content_hash)


def test_signature_over_other_terms_is_refused_as_invalid_argument():
    provider, terms, other = Provider(), make_terms(version=1), make_terms(version=2)
    with pytest.raises(InvalidArgument) as error:
        verify_commitment(provider.public_key, provider.sign(other), terms.content_hash)
    assert fields_of(error) == ["registration.terms_signature"]


def test_signature_by_another_key_is_refused():
    terms = make_terms()
    with pytest.raises(InvalidArgument) as error:
        verify_commitment(Provider().public_key, Provider().sign(terms), terms.content_hash)
    assert fields_of(error) == ["registration.terms_signature"]


@pytest.mark.parametrize("public_key", [b"", b"\x01" * 31, b"\x01" * 33])
def test_public_key_of_the_wrong_length_is_refused(public_key):
    terms = make_terms()
    with pytest.raises(InvalidArgument) as error:
        verify_commitment(public_key, Provider().sign(terms), terms.content_hash)
    assert fields_of(error) == ["registration.public_key"]


# --- decision -----------------------------------------------------------------------------------


def decide(
    terms: Terms, evidence: list[Evidence], provider: Provider | None = None, **overrides
) -> Registration:
    provider = provider or Provider()
    arguments: dict[str, Any] = {
        "id": "reg-1",
        "terms": terms,
        "business_id": "0737546-2",
        "display_name": "Rekry Oy",
        "evidence": evidence,
        "public_key": provider.public_key,
        "signature": provider.sign(terms),
        "now": NOW,
    }
    arguments.update(overrides)
    return decide_registration(**arguments)


def test_admits_a_provider_that_meets_every_requirement_and_commits():
    terms = make_terms(declaration("insurance"), document("tax"))
    registration = decide(terms, [Evidence("insurance", declared=True), Evidence("tax", issued_on=TODAY)])
    assert registration.state is RegistrationState.ADMITTED
    assert registration.reasons == []
    assert registration.listed
    assert (registration.region, registration.service, registration.terms_version) == (
        "uusimaa",
        "recruitment",
        1,
    )
    assert registration.created_at == registration.updated_at == NOW


def test_rejects_with_one_reason_per_unmet_requirement():
    terms = make_terms(declaration("insurance"), document("tax"), document("licence"))
    registration = decide(
        terms, [Evidence("insurance", declared=False), Evidence("tax", issued_on=TODAY - timedelta(days=1))]
    )
    assert registration.state is RegistrationState.REJECTED
    assert not registration.listed
    assert [(r.code, r.subject) for r in registration.reasons] == [
        ("REQUIREMENT_NOT_DECLARED", "insurance"),
        ("EVIDENCE_MISSING", "licence"),
    ]


def test_a_document_dated_after_today_in_finland_is_refused_naming_each_such_document():
    terms = make_terms(declaration("insurance"), document("tax"), document("licence"))
    evidence = [
        Evidence("insurance", declared=False),
        Evidence("tax", issued_on=TODAY + timedelta(days=1)),
        Evidence("licence", issued_on=TODAY),  # today is not the future
    ]
    with pytest.raises(InvalidArgument) as error:
        decide(terms, evidence)
    assert error.value.reason == "EVIDENCE_FROM_FUTURE"
    assert [v.field for v in error.value.violations] == ["registration.evidence[1].issued_on"]


def test_a_document_from_the_future_is_refused_before_one_too_old():
    terms = make_terms(document("tax", max_age_days=90), document("licence", 30))
    evidence = [
        Evidence("tax", issued_on=TODAY - timedelta(days=91)),
        Evidence("licence", issued_on=TODAY + timedelta(days=2)),
    ]
    with pytest.raises(InvalidArgument) as error:
        decide(terms, evidence)
    assert error.value.reason == "EVIDENCE_FROM_FUTURE"
    assert [v.field for v in error.value.violations] == ["registration.evidence[1].issued_on"]


def test_a_draft_with_a_document_from_the_future_is_refused_on_submission_and_stays_a_draft():
    terms = make_terms(document("tax"))
    provider = Provider()
    registration = drafted(terms, [Evidence("tax", issued_on=TODAY + timedelta(days=3))], provider)
    with pytest.raises(InvalidArgument) as error:
        registration.submit(terms, provider.sign(terms), "provider", NOW)
    assert error.value.reason == "EVIDENCE_FROM_FUTURE"
    assert [v.field for v in error.value.violations] == ["registration.evidence[0].issued_on"]
    assert registration.state is RegistrationState.DRAFT
    assert registration.pull_events() == []


def test_evidence_past_its_age_is_refused_naming_the_document_its_requirement_and_the_age_allowed():
    terms = make_terms(declaration("insurance"), document("tax", max_age_days=90), document("licence", 30))
    evidence = [
        Evidence("insurance", declared=False),
        Evidence("tax", issued_on=TODAY - timedelta(days=91)),
        Evidence("licence", issued_on=TODAY - timedelta(days=30)),  # exactly its maximum: fine
    ]
    with pytest.raises(FailedPrecondition) as error:
        decide(terms, evidence)
    assert error.value.reason == "EVIDENCE_TOO_OLD"
    assert [(v.field, v.description) for v in error.value.violations] == [
        ("registration.evidence[1].issued_on", "is 91 days old; requirement 'tax' allows at most 90 days")
    ]


def drafted(terms: Terms, evidence: list[Evidence], provider: Provider) -> Registration:
    """A draft holding `evidence`, its DRAFT event already taken."""
    registration = draft_registration(
        "reg-1", terms, "0737546-2", "Rekry Oy", evidence, provider.public_key, NOW
    )
    registration.pull_events()
    return registration


def test_a_draft_with_evidence_past_its_age_is_refused_on_submission_and_stays_a_draft():
    terms = make_terms(document("tax", max_age_days=90))
    provider = Provider()
    registration = drafted(terms, [Evidence("tax", issued_on=TODAY - timedelta(days=60))], provider)
    with pytest.raises(FailedPrecondition) as error:
        registration.submit(terms, provider.sign(terms), "provider", NOW + timedelta(days=31))
    assert error.value.reason == "EVIDENCE_TOO_OLD"
    assert [v.field for v in error.value.violations] == ["registration.evidence[0].issued_on"]
    assert registration.state is RegistrationState.DRAFT
    assert [d.kind for d in registration.decisions] == ["DRAFT"]
    assert registration.pull_events() == []


def test_decision_stores_the_canonical_business_id_and_trimmed_name():
    registration = decide(
        make_terms(),
        [Evidence("prepayment-register", declared=True)],
        business_id=" 737546-2 ",
        display_name=" Rekry ",
    )
    assert (registration.business_id, registration.display_name) == ("0737546-2", "Rekry")


def test_ages_documents_by_the_finnish_calendar_day():
    # 23:30 UTC on 13 March is already 14 March in Helsinki: a certificate issued
    # that Finnish day is not from the future.
    late_evening_utc = datetime(2025, 3, 13, 23, 30, tzinfo=UTC)
    terms = make_terms(document("tax"))
    registration = decide(terms, [Evidence("tax", issued_on=TODAY)], now=late_evening_utc)
    assert registration.state is RegistrationState.ADMITTED


def test_decision_reports_every_malformed_field_at_once():
    terms = make_terms(declaration("insurance"))
    with pytest.raises(InvalidArgument) as error:
        decide(
            terms,
            [Evidence("unknown", declared=True)],
            business_id="0737546-3",
            display_name="",
            signature=b"\x00" * 64,
        )
    assert fields_of(error) == [
        "registration.business_id",
        "registration.display_name",
        "registration.terms_signature",
        "registration.evidence[0].requirement_code",
    ]


def test_decision_refuses_a_signature_over_other_terms():
    provider, terms = Provider(), make_terms(version=1)
    with pytest.raises(InvalidArgument) as error:
        decide(
            terms,
            [Evidence("prepayment-register", declared=True)],
            provider,
            signature=provider.sign(make_terms(version=2)),
        )
    assert fields_of(error) == ["registration.terms_signature"]


def test_decision_refuses_a_display_name_over_200_characters():
    with pytest.raises(InvalidArgument) as error:
        decide(make_terms(), [Evidence("prepayment-register", declared=True)], display_name="x" * 201)
    assert fields_of(error) == ["registration.display_name"]


def test_decision_needs_a_timezone_aware_now():
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(make_terms(), [], now=datetime(2025, 3, 14, 12, 0))


# --- suspension ---------------------------------------------------------------------------------


def admitted() -> Registration:
    return decide(make_terms(), [Evidence("prepayment-register", declared=True)])


def test_suspends_an_admitted_provider_after_a_quality_breach():
    registration, later = admitted(), NOW + timedelta(days=30)
    assert registration.suspend("regions/uusimaa/breaches/b-1", later) is True
    assert registration.state is RegistrationState.SUSPENDED
    assert not registration.listed
    assert registration.suspended_by_breach == "regions/uusimaa/breaches/b-1"
    assert registration.reasons == [
        Reason("QUALITY_BREACH", "regions/uusimaa/breaches/b-1", registration.reasons[0].message)
    ]
    assert registration.updated_at == later
    assert registration.created_at == NOW


def test_suspending_twice_changes_nothing():
    registration = admitted()
    registration.suspend("b-1", NOW + timedelta(days=1))
    before = replace(registration, reasons=list(registration.reasons))
    assert registration.suspend("b-2", NOW + timedelta(days=2)) is False
    assert registration == before


def test_a_rejected_registration_cannot_be_suspended():
    registration = decide(make_terms(), [])
    assert registration.state is RegistrationState.REJECTED
    with pytest.raises(FailedPrecondition):
        registration.suspend("b-1", NOW)
    assert registration.state is RegistrationState.REJECTED

"""Unit tests of the rulebook's two parts: the general part a region publishes for all its
services and the service part, their content hash, code clashes, the union of their
requirements in the admission decision, re-issue on a new general part, and the diff."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from services.registry.model import (
    MAX_SECTIONS,
    Attribute,
    Decider,
    Evidence,
    GeneralTerms,
    GeneralTermsPublished,
    ReasonCode,
    RegistrationState,
    Requirement,
    RequirementKind,
    Section,
    SectionTopic,
    Terms,
    TermsPublished,
    diff_terms,
    new_general_terms,
    new_terms,
    publish_general_terms,
    refuse_aged_evidence,
    reissue_terms,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_registry_model import NOW, TODAY, decide


def declaration(code: str, decided_by: Decider = Decider.AUTOMATIC) -> Requirement:
    return Requirement(code, f"Declares {code}", RequirementKind.DECLARATION, decided_by=decided_by)


def document(code: str, max_age_days: int = 90) -> Requirement:
    return Requirement(code, f"Document {code}", RequirementKind.DOCUMENT, max_age_days)


INVOICING = Section(SectionTopic.PRICE_AND_INVOICING, "Invoices monthly, 14 days net, e-invoice only.")
FEEDBACK = Section(SectionTopic.FEEDBACK_AND_REPORTING, "Reports served customers each quarter.")


def general(
    *requirements: Requirement, sections: tuple[Section, ...] = (INVOICING,), version: int = 1
) -> GeneralTerms:
    return new_general_terms(
        "uusimaa", version, "Yleiset ehdot", requirements or (declaration("prepayment-register"),), sections
    )


def service_terms(
    *requirements: Requirement,
    sections: tuple[Section, ...] = (),
    pinned: GeneralTerms | None = None,
    version: int = 1,
) -> Terms:
    return new_terms(
        "uusimaa",
        "recruitment",
        version,
        "Rekrytointi",
        requirements or (document("tax"),),
        sections=sections,
        general=pinned,
    )


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in error.value.violations]


# -- the content hash ---------------------------------------------------------------------------


def test_terms_with_no_general_part_and_no_sections_keep_the_hash_signed_before_the_two_parts():
    """The hash of these terms was computed before the general part existed: providers' existing
    signatures over it must stay valid."""
    terms = new_terms(
        "uusimaa",
        "recruitment",
        1,
        "Rekrytointi",
        [
            Requirement("tax", "Verovelkatodistus", RequirementKind.DOCUMENT, legal_basis="569/2009 5 §"),
            Requirement(
                "languages",
                "Palvelu suomeksi ja ruotsiksi",
                RequirementKind.ATTRIBUTE_CHECK,
                attribute=Attribute.LANGUAGES,
                values=("fi", "sv"),
            ),
            Requirement(
                "ceiling",
                "Hintakatto",
                RequirementKind.ATTRIBUTE_CHECK,
                attribute=Attribute.PRICE_CEILING,
                price_ceiling=Decimal("85.50"),
                decided_by=Decider.PERSON,
            ),
        ],
    )
    assert terms.content_hash == "e54e0db535e5f35918106bc8b88e01c2ed32c0bf51ef89bf11518314635d7525"
    assert b"sections" not in terms.canonical_json
    assert b"general_terms" not in terms.canonical_json


def test_the_service_hash_covers_its_sections_and_the_pinned_general_parts_own_hash():
    pinned = general()
    terms = service_terms(sections=(FEEDBACK,), pinned=pinned)

    document_ = json.loads(terms.canonical_json)
    assert document_["sections"] == [
        {"topic": "FEEDBACK_AND_REPORTING", "text": "Reports served customers each quarter."}
    ]
    assert document_["general_terms"] == {
        "name": "regions/uusimaa/generalTerms/1",
        "content_hash": hashlib.sha256(pinned.canonical_json).hexdigest(),
    }
    assert terms.content_hash == hashlib.sha256(terms.canonical_json).hexdigest()


def test_the_general_parts_canonical_json_is_the_documented_form():
    pinned = general(document("insurance"), sections=(INVOICING,))
    expected = json.dumps(
        {
            "region": "uusimaa",
            "version": 1,
            "title": "Yleiset ehdot",
            "requirements": [
                {
                    "code": "insurance",
                    "description": "Document insurance",
                    "kind": "DOCUMENT",
                    "max_age_days": 90,
                    "decided_by": "AUTOMATIC",
                    "legal_basis": "",
                    "valid_days": 365,
                }
            ],
            "sections": [{"topic": "PRICE_AND_INVOICING", "text": INVOICING.text}],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert pinned.canonical_json == expected


def test_a_change_in_either_part_changes_the_service_hash():
    base = service_terms(sections=(FEEDBACK,), pinned=general())
    other_clause = service_terms(sections=(replace(FEEDBACK, text="Reports each month."),), pinned=general())
    other_general = service_terms(
        sections=(FEEDBACK,), pinned=general(sections=(replace(INVOICING, text="Invoices weekly."),))
    )
    unpinned = service_terms(sections=(FEEDBACK,))

    hashes = {t.content_hash for t in (base, other_clause, other_general, unpinned)}
    assert len(hashes) == 4


# -- validation ---------------------------------------------------------------------------------


def test_a_service_code_the_general_part_already_has_is_refused_naming_the_field():
    pinned = general(declaration("prepayment-register"))

    with pytest.raises(InvalidArgument) as error:
        service_terms(document("tax"), declaration("prepayment-register"), pinned=pinned)

    assert fields_of(error) == ["terms.requirements[1].code"]
    assert "regions/uusimaa/generalTerms/1" in error.value.violations[0].description


def test_a_general_code_a_current_service_part_uses_is_refused_naming_the_field():
    current = service_terms(document("tax"))

    with pytest.raises(InvalidArgument) as error:
        new_general_terms(
            "uusimaa", 1, "Yleiset", [declaration("insurance"), document("tax")], (), services=[current]
        )

    assert fields_of(error) == ["general_terms.requirements[1].code"]
    assert current.name in error.value.violations[0].description


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param((Section("HOLIDAYS", "x"),), ["general_terms.sections[0].topic"], id="unknown-topic"),  # type: ignore[arg-type]
        pytest.param(
            (INVOICING, Section(SectionTopic.PREMISES, " ")), ["general_terms.sections[1].text"], id="blank"
        ),
        pytest.param((INVOICING,) * (MAX_SECTIONS + 1), ["general_terms.sections"], id="too-many"),
    ],
)
def test_a_malformed_section_of_the_general_part_is_refused_naming_the_field(sections, expected):
    with pytest.raises(InvalidArgument) as error:
        new_general_terms("uusimaa", 1, "Yleiset", [declaration("insurance")], sections)
    assert fields_of(error) == expected


def test_a_malformed_section_of_the_service_part_is_refused_naming_the_field():
    with pytest.raises(InvalidArgument) as error:
        service_terms(sections=(FEEDBACK, Section(SectionTopic.CONTENT, "")))
    assert fields_of(error) == ["terms.sections[1].text"]


def test_a_general_part_needs_a_requirement_or_a_section_and_unique_codes():
    with pytest.raises(InvalidArgument) as empty:
        new_general_terms("uusimaa", 1, "Yleiset", [], ())
    assert fields_of(empty) == ["general_terms"]
    assert new_general_terms("uusimaa", 1, "Yleiset", [], (INVOICING,)).requirements == ()

    with pytest.raises(InvalidArgument) as twice:
        new_general_terms("uusimaa", 1, "Yleiset", [declaration("a"), declaration("a")], ())
    assert fields_of(twice) == ["general_terms.requirements[1].code"]


def test_a_service_part_may_have_no_requirements_of_its_own_only_when_the_general_part_has_some():
    assert new_terms("uusimaa", "recruitment", 1, "R", [], general=general()).all_requirements != ()
    only_sections = new_general_terms("uusimaa", 1, "Yleiset", [], (INVOICING,))
    for pinned in (None, only_sections):
        with pytest.raises(InvalidArgument) as error:
            new_terms("uusimaa", "recruitment", 1, "R", [], general=pinned)
        assert fields_of(error) == ["terms.requirements"]


# -- admission over both parts ------------------------------------------------------------------


def test_a_registration_must_meet_the_requirements_of_both_parts():
    terms = service_terms(document("tax"), pinned=general(declaration("prepayment-register")))

    short = decide(terms, [Evidence("tax", issued_on=TODAY)])
    assert short.state is RegistrationState.REJECTED
    assert [(r.code, r.subject) for r in short.reasons] == [
        (ReasonCode.REQUIREMENT_NOT_DECLARED, "prepayment-register")
    ]

    met = decide(terms, [Evidence("prepayment-register", declared=True), Evidence("tax", issued_on=TODAY)])
    assert met.state is RegistrationState.ADMITTED


def test_a_general_requirement_a_person_decides_sends_the_registration_to_review():
    terms = service_terms(
        document("tax"), pinned=general(declaration("good-standing", decided_by=Decider.PERSON))
    )
    registration = decide(terms, [Evidence("good-standing", declared=True), Evidence("tax", issued_on=TODAY)])
    assert registration.state is RegistrationState.IN_REVIEW


def test_a_general_document_past_its_age_is_refused_as_a_service_one_is():
    terms = service_terms(declaration("insurance"), pinned=general(document("tax", max_age_days=30)))
    aged = [Evidence("insurance", declared=True), Evidence("tax", issued_on=TODAY - timedelta(days=31))]

    with pytest.raises(FailedPrecondition) as error:
        refuse_aged_evidence(terms, aged, TODAY)

    assert [v.field for v in error.value.violations] == ["registration.evidence[1].issued_on"]


# -- a new general part -------------------------------------------------------------------------


def test_a_new_general_part_reissues_the_service_part_unchanged_pinned_to_it():
    first = general(version=1)
    current = replace(service_terms(document("tax"), sections=(FEEDBACK,), pinned=first), published_at=NOW)
    second = publish_general_terms(
        "uusimaa",
        2,
        "Yleiset ehdot 2027",
        [declaration("prepayment-register")],
        (INVOICING,),
        NOW,
        services=[current],
    )

    reissued = reissue_terms(current, second, NOW)

    assert (reissued.version, reissued.general) == (2, second)
    assert (reissued.title, reissued.requirements, reissued.sections) == (
        current.title,
        current.requirements,
        current.sections,
    )
    assert reissued.content_hash != current.content_hash
    assert [type(e) for _, e in second.pull_events()] == [GeneralTermsPublished]
    [(_, published)] = reissued.pull_events()
    assert isinstance(published, TermsPublished)
    assert published.general_terms == "regions/uusimaa/generalTerms/2"
    deadline = current.supersede(reissued, NOW, 30)
    assert deadline == NOW + timedelta(days=30)


def test_the_diff_covers_the_clauses_and_the_general_part():
    older = service_terms(document("tax"), sections=(FEEDBACK,), pinned=general(declaration("a")))
    newer = service_terms(
        document("tax"),
        sections=(replace(FEEDBACK, text="Monthly."),),
        pinned=general(declaration("b"), sections=(INVOICING,), version=2),
        version=2,
    )

    diff = diff_terms(older, newer)

    assert (diff.added, diff.removed, diff.changed) == (("b",), ("a",), ())
    assert diff.changed_topics == (SectionTopic.FEEDBACK_AND_REPORTING,)
    assert (diff.from_general_terms, diff.to_general_terms) == (
        "regions/uusimaa/generalTerms/1",
        "regions/uusimaa/generalTerms/2",
    )
    assert diff.general_terms_changed
    same = diff_terms(older, older)
    assert (same.changed_topics, same.general_terms_changed) == ((), False)

"""Drafts, automatic attribute checks, the municipality code list and reinstatement on a breach's
resolution, in the pure model."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from services.registry.model import (
    MUNICIPALITIES,
    Attribute,
    BreachPolicy,
    Decider,
    DecisionKind,
    DraftChanges,
    Evidence,
    Registration,
    RegistrationRejected,
    RegistrationState,
    Requirement,
    RequirementKind,
    draft_registration,
    new_breach_policy,
    new_terms,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_registry_lifecycle_model import REASON, admitted, event_names
from tests.unit.test_registry_model import NOW, Provider, decide, declaration, fields_of, make_terms

PROVIDER = "provider:0737546-2:p"


def check(attribute: Attribute, *values: str, ceiling: str | None = None, **kwargs) -> Requirement:  # type: ignore[no-untyped-def]
    return Requirement(
        f"check-{attribute.value.lower()}",
        f"Attribute check of {attribute.value}",
        RequirementKind.ATTRIBUTE_CHECK,
        attribute=attribute,
        values=values,
        price_ceiling=Decimal(ceiling) if ceiling is not None else None,
        **kwargs,
    )


def draft(provider: Provider, **overrides) -> Registration:  # type: ignore[no-untyped-def]
    arguments = {
        "id": "reg-1",
        "terms": make_terms(),
        "business_id": "0737546-2",
        "display_name": "",
        "evidence": [],
        "public_key": provider.public_key,
        "now": NOW,
        "actor": PROVIDER,
    }
    arguments.update(overrides)
    return draft_registration(**arguments)  # type: ignore[arg-type]


# -- drafts -------------------------------------------------------------------------------------


def test_a_draft_decides_nothing_and_records_who_started_it_on_which_terms():
    registration = draft(Provider())

    assert registration.state == RegistrationState.DRAFT
    assert not registration.active and not registration.listed
    assert [(d.kind, d.actor, d.decide_time, d.terms_version) for d in registration.decisions] == [
        (DecisionKind.DRAFT, PROVIDER, NOW, 1)
    ]
    assert event_names(registration) == ["RegistrationDrafted"]


def test_a_draft_refuses_what_is_malformed_but_not_what_is_missing():
    with pytest.raises(InvalidArgument) as error:
        draft(Provider(), municipalities=["12"], languages=["finnish"], public_key=b"short")
    assert fields_of(error) == [
        "registration.municipalities[0]",
        "registration.languages[0]",
        "registration.public_key",
    ]


def test_a_submitted_draft_is_decided_like_a_one_call_registration():
    provider = Provider()
    terms = make_terms()
    registration = draft(provider, terms=terms)
    registration.pull_events()
    registration.update_draft(
        DraftChanges(
            ("display_name", "evidence"),
            display_name="Rekry Oy",
            evidence=(Evidence("prepayment-register", declared=True),),
        ),
        terms,
        NOW,
    )

    registration.submit(terms, provider.sign(terms), PROVIDER, NOW + timedelta(minutes=5))

    assert registration.state == RegistrationState.ADMITTED
    assert event_names(registration) == [
        "RegistrationDraftUpdated",
        "ProviderRegistered",
        "RegistrationAdmitted",
    ]
    assert [d.kind for d in registration.decisions] == [DecisionKind.DRAFT, DecisionKind.ADMISSION]
    assert registration.decisions[-1].actor == PROVIDER


def test_submitting_a_draft_with_a_bad_signature_or_no_name_is_refused_and_it_stays_a_draft():
    provider = Provider()
    terms = make_terms()
    registration = draft(provider, terms=terms)

    with pytest.raises(InvalidArgument) as error:
        registration.submit(terms, Provider().sign(terms), PROVIDER, NOW)

    assert fields_of(error) == ["registration.display_name", "terms_signature"]
    assert registration.state == RegistrationState.DRAFT


def test_only_a_draft_is_submitted_or_changed():
    registration = admitted()
    terms = make_terms()
    with pytest.raises(FailedPrecondition) as error:
        registration.submit(terms, b"", PROVIDER, NOW)
    assert error.value.reason == "NOT_DRAFT"
    with pytest.raises(FailedPrecondition):
        registration.update_draft(DraftChanges(("display_name",), display_name="X"), terms, NOW)


def test_a_draft_refuses_changes_to_fields_that_are_not_the_drafts():
    registration = draft(Provider())
    with pytest.raises(InvalidArgument) as error:
        registration.update_draft(DraftChanges(("state",)), make_terms(), NOW)
    assert fields_of(error) == ["update_mask"]


def test_a_draft_may_be_withdrawn():
    registration = draft(Provider())
    registration.withdraw(PROVIDER, NOW)
    assert registration.state == RegistrationState.WITHDRAWN


# -- attribute checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "attributes", "reason"),
    [
        pytest.param(
            check(Attribute.LANGUAGES, "fi", "sv"),
            {"languages": ["fi"]},
            "LANGUAGE_NOT_OFFERED",
            id="languages",
        ),
        pytest.param(
            check(Attribute.SERVICE_AREA, "837", "536"),
            {"municipalities": ["837", "091"]},
            "OUTSIDE_SERVICE_AREA",
            id="service-area",
        ),
        pytest.param(
            check(Attribute.SERVICE_AREA, "837"), {}, "OUTSIDE_SERVICE_AREA", id="service-area-none-named"
        ),
        pytest.param(
            check(Attribute.PRICE_CEILING, ceiling="80.00"),
            {"price": Decimal("80.01")},
            "PRICE_ABOVE_CEILING",
            id="price-ceiling",
        ),
        pytest.param(check(Attribute.PRICE_CEILING, ceiling="80"), {}, "PRICE_MISSING", id="price-missing"),
        pytest.param(
            check(Attribute.STAFF_QUALIFICATION, "career-counsellor", "psychologist"),
            {"qualifications": ["career-counsellor"]},
            "QUALIFICATION_NOT_DECLARED",
            id="staff-qualification",
        ),
    ],
)
def test_an_unmet_automatic_attribute_check_rejects_with_its_own_reason(requirement, attributes, reason):
    registration = decide(make_terms(requirement), [], **attributes)

    assert registration.state == RegistrationState.REJECTED
    assert [(r.code, r.subject) for r in registration.reasons] == [(reason, requirement.code)]
    rejected = [event for _, event in registration.pull_events()][-1]
    assert isinstance(rejected, RegistrationRejected)
    assert (rejected.reason_codes, rejected.reason_subjects) == ((reason,), (requirement.code,))


@pytest.mark.parametrize(
    ("requirement", "attributes"),
    [
        pytest.param(
            check(Attribute.LANGUAGES, "fi", "sv"), {"languages": ["sv", "fi", "en"]}, id="languages"
        ),
        pytest.param(
            check(Attribute.SERVICE_AREA, "837", "536"), {"municipalities": ["536"]}, id="service-area"
        ),
        pytest.param(
            check(Attribute.PRICE_CEILING, ceiling="80.00"), {"price": Decimal("80.00")}, id="price-ceiling"
        ),
        pytest.param(
            check(Attribute.STAFF_QUALIFICATION, "psychologist"),
            {"qualifications": ["psychologist", "career-counsellor"]},
            id="staff-qualification",
        ),
    ],
)
def test_a_met_automatic_attribute_check_admits(requirement, attributes):
    assert decide(make_terms(requirement), [], **attributes).state == RegistrationState.ADMITTED


def test_every_unmet_attribute_check_gets_a_reason_and_a_person_decided_one_goes_to_review():
    terms = make_terms(
        check(Attribute.LANGUAGES, "sv"),
        check(Attribute.PRICE_CEILING, ceiling="50"),
        check(Attribute.STAFF_QUALIFICATION, "psychologist", decided_by=Decider.PERSON),
    )
    rejected = decide(terms, [], languages=["fi"], price=Decimal(60))
    assert [r.code for r in rejected.reasons] == ["LANGUAGE_NOT_OFFERED", "PRICE_ABOVE_CEILING"]

    in_review = decide(terms, [], languages=["sv"], price=Decimal(50))
    assert in_review.state == RegistrationState.IN_REVIEW


def test_an_attribute_check_must_name_its_attribute_and_what_it_checks_against():
    with pytest.raises(InvalidArgument) as error:
        new_terms(
            "uusimaa",
            "recruitment",
            1,
            "T",
            [
                Requirement("a", "d", RequirementKind.ATTRIBUTE_CHECK),
                check(Attribute.LANGUAGES),
                check(Attribute.SERVICE_AREA, "999"),
                check(Attribute.PRICE_CEILING),
                Requirement("b", "d", RequirementKind.DECLARATION, values=("fi",)),
            ],
        )
    assert fields_of(error) == [
        "terms.requirements[0].attribute",
        "terms.requirements[1].values",
        "terms.requirements[2].values[0]",
        "terms.requirements[3].price_ceiling",
        "terms.requirements[4].values",
    ]


def test_attribute_checks_are_part_of_the_signed_content_and_other_kinds_hash_as_before():
    plain = make_terms(declaration())
    assert b"attribute" not in plain.canonical_json
    narrower = make_terms(check(Attribute.LANGUAGES, "fi"))
    wider = make_terms(check(Attribute.LANGUAGES, "fi", "sv"))
    assert narrower.content_hash != wider.content_hash
    assert b'"attribute":"LANGUAGES","code"' in narrower.canonical_json


# -- municipalities -----------------------------------------------------------------------------


def test_the_municipality_list_holds_the_official_codes_with_both_names():
    assert MUNICIPALITIES["091"] == ("Helsinki", "Helsingfors")
    assert MUNICIPALITIES["837"] == ("Tampere", "Tammerfors")
    assert all(len(code) == 3 and code.isdigit() for code in MUNICIPALITIES)
    assert "999" not in MUNICIPALITIES


def test_an_unknown_municipality_code_is_refused():
    with pytest.raises(InvalidArgument) as error:
        decide(make_terms(), [Evidence("prepayment-register", declared=True)], municipalities=["837", "999"])
    assert fields_of(error) == ["registration.municipalities[1]"]


# -- reinstatement when a breach is resolved ----------------------------------------------------


def test_a_resolved_breach_reinstates_what_it_suspended_citing_the_breach_and_the_event():
    registration = admitted()
    registration.suspend("regions/uusimaa/breaches/b1", NOW)

    assert not registration.resolve_breach("regions/uusimaa/breaches/other", "system:e1", NOW)
    assert registration.resolve_breach("regions/uusimaa/breaches/b1", "system:e1", NOW, causes=["e1"])

    decision = registration.decisions[-1]
    assert (decision.kind, decision.state, decision.causes, decision.actor) == (
        DecisionKind.REINSTATEMENT,
        RegistrationState.ADMITTED,
        ("regions/uusimaa/breaches/b1", "e1"),
        "system:e1",
    )
    assert [r.code for r in decision.reasons] == ["BREACH_RESOLVED"]
    assert not registration.resolve_breach("regions/uusimaa/breaches/b1", "system:e1", NOW)


def test_a_suspension_by_a_person_is_not_ended_by_a_breachs_resolution():
    registration = admitted()
    registration.suspend("", NOW, reasons=REASON, actor="supervisor:uusimaa:s")
    assert not registration.resolve_breach("", "system:e1", NOW)
    assert registration.state == RegistrationState.SUSPENDED


def test_reinstatement_on_resolution_is_the_regions_policy_and_off_by_default():
    assert not BreachPolicy("uusimaa").reinstate_on_resolution
    policy = new_breach_policy("uusimaa", ["SERIOUS"], [], 0, reinstate_on_resolution=True)
    assert policy.reinstate_on_resolution

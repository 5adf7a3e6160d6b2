"""Renewing a document behind an admission, in the pure model: what moves, what it records, and
what it refuses (too old, not newer, already expired, not a document, not admitted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.registry.model import (
    DecisionKind,
    Evidence,
    EvidenceRenewed,
    Reason,
    Registration,
    RegistrationState,
    Requirement,
    RequirementKind,
    Terms,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_registry_model import NOW, TODAY, decide, declaration, make_terms

PROVIDER = "provider:0737546-2:p"
ISSUED = TODAY - timedelta(days=10)


def certificate(code: str = "tax", *, max_age_days: int = 90, valid_days: int = 100) -> Requirement:
    return Requirement(
        code, "Tax debt certificate", RequirementKind.DOCUMENT, max_age_days, valid_days=valid_days
    )


def terms_with_documents() -> Terms:
    return make_terms(declaration(), certificate("tax"), certificate("insurance", valid_days=300))


def admitted(terms: Terms) -> Registration:
    registration = decide(
        terms,
        [
            Evidence("prepayment-register", declared=True),
            Evidence("tax", issued_on=ISSUED),
            Evidence("insurance", issued_on=ISSUED),
        ],
    )
    assert registration.state is RegistrationState.ADMITTED
    registration.pull_events()
    return registration


def helsinki_midnight(year: int, month: int, day: int) -> datetime:
    """The start of a day in Helsinki in March-October (UTC+3), as UTC."""
    return datetime(year, month, day, tzinfo=UTC) - timedelta(hours=3)


def test_a_renewal_replaces_the_document_and_moves_the_admissions_expiry():
    terms = terms_with_documents()
    registration = admitted(terms)
    later = NOW + timedelta(days=60)
    renewed_on = later.date()

    expires = registration.renew_evidence(terms, Evidence("tax", issued_on=renewed_on), PROVIDER, later)

    # ISSUED (4 March) + 100 days was the tax certificate's expiry (12 June); the renewal
    # (13 May) stands until 21 August, and the insurance (300 days) expires later still.
    assert expires == helsinki_midnight(2025, 8, 21)
    assert {e.requirement_code: e.issued_on for e in registration.evidence} == {
        "prepayment-register": None,
        "tax": renewed_on,
        "insurance": ISSUED,
    }
    assert registration.state is RegistrationState.ADMITTED


def test_a_renewal_records_a_decision_and_an_event_of_identifiers_only():
    terms = terms_with_documents()
    registration = admitted(terms)
    sha = "ab" * 32

    registration.renew_evidence(terms, Evidence("tax", issued_on=TODAY, document_sha256=sha), PROVIDER, NOW)

    decision = registration.decisions[-1]
    assert (decision.kind, decision.state, decision.actor, decision.decide_time) == (
        DecisionKind.EVIDENCE_RENEWAL,
        RegistrationState.ADMITTED,
        PROVIDER,
        NOW,
    )
    assert [(r.code, r.subject) for r in decision.reasons] == [("EVIDENCE_RENEWED", "tax")]
    assert registration.reasons == []  # the admission's own (none) stand
    [(_, event)] = registration.pull_events()
    assert isinstance(event, EvidenceRenewed)
    assert (event.registration, event.requirement_code, event.expire_time, event.renew_time) == (
        registration.name,
        "tax",
        helsinki_midnight(2025, 6, 22),
        NOW,
    )
    assert sha not in repr(event)


def test_a_suspended_provider_may_renew_too():
    terms = terms_with_documents()
    registration = admitted(terms)
    registration.suspend("b-1", NOW)
    registration.renew_evidence(terms, Evidence("tax", issued_on=TODAY), PROVIDER, NOW)
    assert registration.state is RegistrationState.SUSPENDED


def test_a_renewal_past_the_requirements_maximum_age_is_refused_naming_the_age_allowed():
    terms = terms_with_documents()
    registration = admitted(terms)
    later = NOW + timedelta(days=95)
    with pytest.raises(FailedPrecondition) as error:
        registration.renew_evidence(
            terms, Evidence("tax", issued_on=later.date() - timedelta(days=91)), PROVIDER, later
        )
    assert error.value.reason == "EVIDENCE_TOO_OLD"
    assert [(v.field, v.description) for v in error.value.violations] == [
        ("evidence.issued_on", "is 91 days old; requirement 'tax' allows at most 90 days")
    ]
    assert_unchanged(registration)


def test_a_renewal_no_newer_than_the_document_held_is_refused():
    terms = terms_with_documents()
    registration = admitted(terms)
    with pytest.raises(FailedPrecondition) as error:
        registration.renew_evidence(terms, Evidence("tax", issued_on=ISSUED), PROVIDER, NOW)
    assert error.value.reason == "EVIDENCE_NOT_NEWER"
    assert [v.field for v in error.value.violations] == ["evidence.issued_on"]
    assert_unchanged(registration)


def test_a_document_that_has_expired_can_no_longer_be_renewed():
    terms = terms_with_documents()
    registration = admitted(terms)
    expired = helsinki_midnight(2025, 6, 12)  # ISSUED + 100 days: the lapse is due
    with pytest.raises(FailedPrecondition) as error:
        registration.renew_evidence(terms, Evidence("tax", issued_on=expired.date()), PROVIDER, expired)
    assert error.value.reason == "EVIDENCE_EXPIRED"
    assert_unchanged(registration)


@pytest.mark.parametrize(
    ("evidence", "fields"),
    [
        (Evidence("prepayment-register", issued_on=TODAY), ["evidence.requirement_code"]),
        (Evidence("no-such", issued_on=TODAY), ["evidence.requirement_code"]),
        (Evidence("tax"), ["evidence.issued_on"]),
        (Evidence("tax", issued_on=TODAY + timedelta(days=1)), ["evidence.issued_on"]),
        (Evidence("tax", issued_on=TODAY, document_sha256="xyz"), ["evidence.document_sha256"]),
    ],
    ids=["a-declaration", "unknown", "no-date", "future", "bad-digest"],
)
def test_a_malformed_renewal_is_invalid_argument_naming_the_field(evidence, fields):
    terms = terms_with_documents()
    registration = admitted(terms)
    with pytest.raises(InvalidArgument) as error:
        registration.renew_evidence(terms, evidence, PROVIDER, NOW)
    assert [v.field for v in error.value.violations] == fields
    future = evidence.issued_on is not None and evidence.issued_on > TODAY
    assert error.value.reason == ("EVIDENCE_FROM_FUTURE" if future else "")
    assert_unchanged(registration)


def test_only_an_admitted_or_suspended_registration_renews():
    terms = terms_with_documents()
    registration = admitted(terms)
    registration.lapse(Reason("EVIDENCE_EXPIRED", "tax", "Expired."), "system:timer:t", NOW)
    registration.pull_events()
    with pytest.raises(FailedPrecondition) as error:
        registration.renew_evidence(terms, Evidence("tax", issued_on=TODAY), PROVIDER, NOW)
    assert error.value.reason == "NOT_ADMITTED"
    assert registration.pull_events() == []


def assert_unchanged(registration: Registration) -> None:
    assert {e.requirement_code: e.issued_on for e in registration.evidence}["tax"] == ISSUED
    assert [d.kind for d in registration.decisions] == [DecisionKind.ADMISSION]
    assert registration.pull_events() == []

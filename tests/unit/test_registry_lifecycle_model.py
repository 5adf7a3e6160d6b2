"""The registration lifecycle in the pure model: each transition, what it refuses, the decision
record it leaves, and the rules (market failure, breach policy, evidence expiry, terms diff)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.registry.model import (
    DESCRIPTION_MAX_LENGTH,
    BreachPolicy,
    Decider,
    DecisionKind,
    Evidence,
    LegalForm,
    MarketFailure,
    Reason,
    Registration,
    RegistrationState,
    Requirement,
    RequirementKind,
    diff_terms,
    evidence_expiry,
    new_breach_policy,
    new_terms,
    require_market_failure,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_registry_model import NOW, Provider, decide, declaration, document, make_terms

REASON = (Reason("QUALITY", "b-1", "Late service need assessments."),)
TIMER = "system:timer:registry:evidence:reg-1"


def admitted() -> Registration:
    registration = decide(make_terms(), [Evidence("prepayment-register", declared=True)])
    registration.pull_events()
    return registration


def event_names(registration: Registration) -> list[str]:
    return [type(event).__name__ for _, event in registration.pull_events()]


def test_a_person_decided_requirement_leaves_the_registration_in_review():
    person = Requirement("staff", "Qualified staff", RequirementKind.DECLARATION, decided_by=Decider.PERSON)
    registration = decide(make_terms(person), [Evidence("staff", declared=True)])

    assert registration.state == RegistrationState.IN_REVIEW
    assert event_names(registration) == ["ProviderRegistered", "RegistrationInReview"]


def test_an_unmet_automatic_requirement_rejects_even_when_a_person_would_decide_the_rest():
    person = Requirement("staff", "Qualified staff", RequirementKind.DECLARATION, decided_by=Decider.PERSON)
    registration = decide(make_terms(person, declaration()), [Evidence("staff", declared=True)])

    assert registration.state == RegistrationState.REJECTED
    assert [r.subject for r in registration.reasons] == ["prepayment-register"]


def test_a_review_is_rejected_only_with_reasons_and_never_decided_twice():
    person = Requirement("staff", "Qualified staff", RequirementKind.DECLARATION, decided_by=Decider.PERSON)
    registration = decide(make_terms(person), [Evidence("staff", declared=True)])
    with pytest.raises(InvalidArgument):
        registration.decide_review(False, (), "region_admin:uusimaa:a", NOW)

    registration.decide_review(False, REASON, "region_admin:uusimaa:a", NOW)

    assert registration.state == RegistrationState.REJECTED
    with pytest.raises(FailedPrecondition):
        registration.decide_review(True, (), "region_admin:uusimaa:a", NOW)


def test_an_admission_after_review_may_give_no_reasons_but_those_it_gives_are_checked():
    person = Requirement("staff", "Qualified staff", RequirementKind.DECLARATION, decided_by=Decider.PERSON)
    registration = decide(make_terms(person), [Evidence("staff", declared=True)])
    with pytest.raises(InvalidArgument) as refused:
        registration.decide_review(
            True, (Reason("", "staff", "m" * (DESCRIPTION_MAX_LENGTH + 1)),), "region_admin:uusimaa:a", NOW
        )
    assert [v.field for v in refused.value.violations] == ["reasons[0].code", "reasons[0].message"]
    assert registration.state == RegistrationState.IN_REVIEW

    registration.decide_review(True, (), "region_admin:uusimaa:a", NOW)

    assert registration.state == RegistrationState.ADMITTED
    assert registration.decisions[-1].reasons == ()


def test_a_suspension_records_who_why_what_caused_it_and_when_it_lifts():
    registration = admitted()
    lift = NOW + timedelta(days=90)

    assert registration.suspend("", NOW, reasons=REASON, actor="supervisor:uusimaa:s", lift_time=lift)

    decision = registration.decisions[-1]
    assert (decision.kind, decision.state, decision.actor, decision.lift_time) == (
        DecisionKind.SUSPENSION,
        RegistrationState.SUSPENDED,
        "supervisor:uusimaa:s",
        lift,
    )
    assert decision.reasons == REASON
    assert decision.terms_version == 1
    assert not registration.listed


def test_a_lift_time_that_is_not_in_the_future_is_refused():
    registration = admitted()
    with pytest.raises(InvalidArgument) as error:
        registration.suspend("", NOW, reasons=REASON, lift_time=NOW)
    assert [v.field for v in error.value.violations] == ["lift_time"]
    assert registration.state == RegistrationState.ADMITTED


def test_only_a_suspended_registration_is_reinstated():
    registration = admitted()
    with pytest.raises(FailedPrecondition) as error:
        registration.reinstate(REASON, "region_admin:uusimaa:a", NOW)
    assert error.value.reason == "NOT_SUSPENDED"

    registration.suspend("b-1", NOW)
    registration.reinstate(REASON, "region_admin:uusimaa:a", NOW)
    assert registration.state == RegistrationState.ADMITTED
    assert event_names(registration) == ["ProviderSuspended", "ProviderReinstated"]


@pytest.mark.parametrize("end", ["revoke", "withdraw", "lapse"])
def test_a_registration_that_ended_is_neither_listed_nor_active(end):
    registration = admitted()
    if end == "revoke":
        registration.revoke(REASON, "region_admin:uusimaa:a", NOW)
    elif end == "withdraw":
        registration.withdraw("provider:0737546-2:p", NOW)
    else:
        assert registration.lapse(Reason("EVIDENCE_EXPIRED", "tax", "Expired."), TIMER, NOW)

    assert not registration.listed
    assert not registration.active
    assert not registration.lapse(Reason("EVIDENCE_EXPIRED", "tax", "Expired."), TIMER, NOW)  # late: no-op


def test_a_withdrawal_keeps_its_reasons_in_the_decision_and_only_their_codes_in_the_event():
    registration = admitted()
    why = (Reason("MOVING_ABROAD", "", "The company closes its Finnish office."),)

    registration.withdraw("provider:0737546-2:p", NOW, why)

    decision = registration.decisions[-1]
    assert (decision.kind, decision.state, decision.reasons) == (
        DecisionKind.WITHDRAWAL,
        RegistrationState.WITHDRAWN,
        why,
    )
    [(_, event)] = registration.pull_events()
    assert type(event).__name__ == "RegistrationWithdrawn"
    assert event.reason_codes == ("MOVING_ABROAD",)  # type: ignore[attr-defined]
    assert "Finnish office" not in repr(event)


def test_a_withdrawal_without_reasons_records_none():
    registration = admitted()
    registration.withdraw("provider:0737546-2:p", NOW)
    assert registration.decisions[-1].reasons == ()
    [(_, event)] = registration.pull_events()
    assert event.reason_codes == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reasons", "fields"),
    [
        ((Reason(" ", "", "Closing."),), ["reasons[0].code"]),
        ((Reason("CLOSING", "", ""),), ["reasons[0].message"]),
        ((Reason("CLOSING", "", "x" * (DESCRIPTION_MAX_LENGTH + 1)),), ["reasons[0].message"]),
        ((Reason("C" * 101, "", "Closing."),), ["reasons[0].code"]),
        (tuple(Reason(f"R{i}", "", "Closing.") for i in range(101)), ["reasons"]),
    ],
    ids=["blank-code", "no-message", "long-message", "long-code", "too-many"],
)
def test_a_withdrawal_with_a_malformed_reason_is_refused_and_changes_nothing(reasons, fields):
    registration = admitted()
    with pytest.raises(InvalidArgument) as error:
        registration.withdraw("provider:0737546-2:p", NOW, reasons)
    assert [v.field for v in error.value.violations] == fields
    assert registration.state == RegistrationState.ADMITTED
    assert [d.kind for d in registration.decisions] == [DecisionKind.ADMISSION]
    assert registration.pull_events() == []


def test_a_lapse_names_what_lapsed_it_as_its_actor():
    registration = admitted()
    assert registration.lapse(Reason("EVIDENCE_EXPIRED", "tax", "Expired."), TIMER, NOW, causes=["t"])
    decision = registration.decisions[-1]
    assert (decision.kind, decision.actor, decision.causes) == (DecisionKind.LAPSE, TIMER, ("t",))


def test_recommitting_needs_the_registered_key_over_the_newer_terms():
    provider = Provider()
    first = make_terms()
    registration = decide(first, [Evidence("prepayment-register", declared=True)], provider)
    second = make_terms(declaration(), version=2)
    with pytest.raises(InvalidArgument):
        registration.recommit(second, (), Provider().sign(second), "provider:x:p", NOW)
    with pytest.raises(FailedPrecondition):
        registration.recommit(first, (), provider.sign(first), "provider:x:p", NOW)

    registration.recommit(second, (), provider.sign(second), "provider:x:p", NOW)

    assert registration.terms_version == 2
    assert registration.decisions[-1].kind == DecisionKind.RECOMMITMENT


def test_evidence_expires_at_the_start_of_the_finnish_day_after_its_validity():
    terms = make_terms(Requirement("tax", "Tax certificate", RequirementKind.DOCUMENT, valid_days=100))
    expiry = evidence_expiry(terms, [Evidence("tax", issued_on=date(2025, 3, 1))])
    assert expiry is not None
    code, moment = expiry
    assert code == "tax"
    assert moment == datetime(2025, 6, 8, 21, 0, tzinfo=UTC)  # 9 June 00:00 in Helsinki (UTC+3)


def test_a_municipal_provider_needs_a_valid_finding_for_every_municipality():
    finding = MarketFailure(
        "f1", "uusimaa", "recruitment", ("091",), NOW - timedelta(days=1), NOW + timedelta(days=9)
    )
    require_market_failure(LegalForm.MUNICIPAL_IN_HOUSE, ["091"], [finding], NOW)
    require_market_failure(LegalForm.COMPANY, ["049"], [], NOW)
    for municipalities, now in ((["091", "049"], NOW), (["091"], NOW + timedelta(days=9))):
        with pytest.raises(FailedPrecondition):
            require_market_failure(LegalForm.MUNICIPALITY, municipalities, [finding], now)
    with pytest.raises(InvalidArgument):
        require_market_failure(LegalForm.MUNICIPALITY, [], [finding], NOW)


def test_the_breach_policy_defaults_to_serious_breaches_everywhere_until_reinstated():
    default = BreachPolicy("uusimaa")
    assert default.suspends("SERIOUS", "recruitment") and not default.suspends("WARNING", "recruitment")
    assert default.lift_time(NOW) is None
    narrow = new_breach_policy("uusimaa", ["WARNING"], ["career-guidance"], 90)
    assert narrow.suspends("WARNING", "career-guidance") and not narrow.suspends("WARNING", "recruitment")
    assert narrow.lift_time(NOW) == NOW + timedelta(days=90)
    with pytest.raises(InvalidArgument):
        new_breach_policy("uusimaa", [], [], 0)


def test_a_diff_names_requirements_added_removed_and_changed_by_code():
    old = make_terms(declaration("a"), document("b"))
    new = new_terms("uusimaa", "recruitment", 2, "Rekrytointipalvelut", (document("b", 60), declaration("c")))
    diff = diff_terms(old, new)
    assert (diff.added, diff.removed, diff.changed, diff.title_changed) == (("c",), ("a",), ("b",), False)


def test_legal_basis_and_decider_are_part_of_the_signed_content():
    plain = make_terms(declaration())
    based = make_terms(
        Requirement(
            "prepayment-register",
            "Entered in the prepayment register",
            RequirementKind.DECLARATION,
            legal_basis="569/2009 5 §",
        )
    )
    assert plain.content_hash != based.content_hash
    assert "569/2009 5 §".encode() in based.canonical_json

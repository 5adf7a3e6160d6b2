"""Tendering's award decision as pure domain: the call is AWARDED until the decision is served to
every bidder, the standstill counts from the day served, appeals against the decision are taken
while it stands, and nothing concludes before the standstill's end."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.runtime.errors import FailedPrecondition
from services.tendering import model
from tests.unit.test_tendering_rules_model import evaluated_call

AWARDED_AT = datetime(2026, 11, 12, 10, tzinfo=UTC)  # a Thursday
SERVED_AT = datetime(2026, 12, 11, 10, tzinfo=UTC)  # a Friday: 14 days on is Christmas Day
SERVED_END = date(2026, 12, 28)  # Christmas Day and Boxing Day (a Saturday), then Sunday: Monday


def awarded() -> model.Call:
    call = evaluated_call(model.CallKind.FRAMEWORK, ("north", 2, 3), ("south", 1, 1))
    call.award("Best price-quality ratio per lot.", AWARDED_AT)
    return call


def test_the_award_decision_holds_the_call_awarded_with_no_standstill_until_it_is_served() -> None:
    call = awarded()
    assert call.state == model.CallState.AWARDED
    assert (call.awarded_at, call.served_at, call.standstill_end) == (AWARDED_AT, None, None)
    [event] = [e for _, e in call.pull_events()]
    assert isinstance(event, model.CallAwarded) and event.award_time == AWARDED_AT
    # However long the decision waits unserved, no standstill runs out and nothing concludes.
    assert not call.may_conclude(AWARDED_AT + timedelta(days=365))


def test_serving_the_decision_starts_the_standstill_from_the_day_served_and_names_every_bidder() -> None:
    call = awarded()
    call.pull_events()
    served = call.serve_decision(SERVED_AT)
    # Every bidder whose bid was opened is served, the excluded ones and those not awarded too.
    assert served == tuple(sorted({s.bidder for s in call.scores}))
    assert {"north-bidder-2", "north-bidder-3", "south-bidder-1"} <= set(served)
    assert (call.state, call.served_at, call.standstill_end) == (
        model.CallState.STANDSTILL,
        SERVED_AT,
        SERVED_END,
    )
    assert call.standstill_end != model.standstill_end(AWARDED_AT.date())  # not from the decision
    [event] = [e for _, e in call.pull_events()]
    assert isinstance(event, model.AwardDecisionServed)
    assert (event.bidders, event.served_on, event.standstill_end, event.serve_time) == (
        served,
        date(2026, 12, 11),
        SERVED_END,
        SERVED_AT,
    )


def test_the_day_served_is_the_day_in_finland() -> None:
    call = awarded()
    # 23:30 UTC on 10 December is already 11 December in Helsinki.
    call.serve_decision(datetime(2026, 12, 10, 23, 30, tzinfo=UTC))
    assert call.standstill_end == SERVED_END


def test_a_decision_is_served_once_and_only_once_it_is_made() -> None:
    evaluated = evaluated_call(model.CallKind.FRAMEWORK, ("north", 2, 3))
    with pytest.raises(FailedPrecondition) as unmade:
        evaluated.serve_decision(SERVED_AT)
    assert unmade.value.reason == "CALL_STATE" and evaluated.state == model.CallState.EVALUATED
    call = awarded()
    call.serve_decision(SERVED_AT)
    call.pull_events()
    with pytest.raises(FailedPrecondition) as twice:
        call.serve_decision(SERVED_AT + timedelta(days=3))
    assert twice.value.reason == "CALL_STATE"
    assert (call.served_at, call.standstill_end) == (SERVED_AT, SERVED_END)
    assert call.pull_events() == []


def test_a_cancelled_award_is_never_served() -> None:
    call = awarded()
    call.end(model.CallState.CANCELLED, "The award was found unlawful.", AWARDED_AT + timedelta(days=1))
    call.pull_events()
    with pytest.raises(FailedPrecondition):
        call.serve_decision(SERVED_AT)
    assert (call.state, call.served_at, call.standstill_end) == (model.CallState.CANCELLED, None, None)
    assert call.pull_events() == []


def test_nothing_concludes_before_the_standstill_ends_and_an_appeal_holds_it_after() -> None:
    call = awarded()
    # A rectification request may come as soon as the decision is made, before it is served.
    call.record_appeal(model.Appeal("a1", "RECTIFICATION"), AWARDED_AT + timedelta(hours=2))
    call.serve_decision(SERVED_AT)
    last_day_ends = datetime(2026, 12, 28, 22, tzinfo=UTC)  # midnight in Helsinki (UTC+2)
    call.resolve_appeal("a1", SERVED_AT + timedelta(days=1))
    assert not call.may_conclude(last_day_ends - timedelta(seconds=1))
    assert call.may_conclude(last_day_ends)
    call.record_appeal(model.Appeal("a2", "MARKET_COURT"), last_day_ends - timedelta(hours=1))
    assert not call.may_conclude(last_day_ends + timedelta(days=30))
    call.resolve_appeal("a2", last_day_ends + timedelta(days=30))
    assert call.may_conclude(last_day_ends + timedelta(days=30))


def _ended(state: model.CallState) -> model.Call:
    call = awarded()
    call.record_appeal(model.Appeal("pending", "MARKET_COURT"), AWARDED_AT + timedelta(hours=1))
    call.serve_decision(SERVED_AT)
    if state == model.CallState.CONCLUDED:
        call.resolve_appeal("pending", SERVED_AT)
        call.conclude("regions/pirkanmaa/frameworks/c1", datetime(2026, 12, 29, tzinfo=UTC))
    else:
        call.end(state, "The award was found unlawful.", SERVED_AT + timedelta(days=1))
    call.pull_events()
    return call


@pytest.mark.parametrize("state", [model.CallState.CANCELLED, model.CallState.CONCLUDED])
def test_no_appeal_is_resolved_or_recorded_once_the_call_has_ended(state: model.CallState) -> None:
    call = _ended(state)
    appeals = call.appeals
    with pytest.raises(FailedPrecondition) as resolving:
        call.resolve_appeal("pending", SERVED_AT + timedelta(days=2))
    assert resolving.value.reason == "CALL_STATE"
    assert f"is {state}: resolving an appeal" in str(resolving.value)
    with pytest.raises(FailedPrecondition) as recording:
        call.record_appeal(model.Appeal("late", "RECTIFICATION"), SERVED_AT + timedelta(days=2))
    assert recording.value.reason == "CALL_STATE"
    assert (call.state, call.appeals, call.pull_events()) == (state, appeals, [])


@pytest.mark.parametrize(
    "state",
    [
        model.CallState.PUBLISHED,
        model.CallState.CLOSED,
        model.CallState.EVALUATED,
        model.CallState.UNSUCCESSFUL,
    ],
)
def test_no_appeal_is_recorded_or_resolved_where_no_award_decision_stands(state: model.CallState) -> None:
    call = evaluated_call(model.CallKind.FRAMEWORK, ("north", 2, 3))
    call.state = state
    with pytest.raises(FailedPrecondition) as recording:
        call.record_appeal(model.Appeal("a1", "RECTIFICATION"), AWARDED_AT)
    with pytest.raises(FailedPrecondition) as resolving:
        call.resolve_appeal("a1", AWARDED_AT)
    assert (recording.value.reason, resolving.value.reason) == ("CALL_STATE", "CALL_STATE")
    assert (call.appeals, call.pull_events()) == ((), [])

"""Tendering's pure rules: dated thresholds and durations, the holiday calendar and standstill,
call validation, scoring and ranking in exact decimals, call-offs by ranking order."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import holidays
import pytest

from services.runtime.errors import InvalidArgument
from services.tendering import model

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)


def spec(**changes: object) -> model.CallSpec:
    values: dict[str, object] = {
        "title": "Rekrytointipalvelut",
        "service": "recruitment",
        "kind": model.CallKind.FRAMEWORK,
        "lots": (model.Lot("north", "North", ("79600000-0",), Decimal(200_000), 2),),
        "criteria": (
            model.Criterion("price", model.CriterionKind.PRICE, Decimal(60)),
            model.Criterion("plan", model.CriterionKind.QUALITY, Decimal(40), 5),
        ),
        "declarations": (model.Declaration("no-tax-debt", model.DeclarationPart.EXCLUSION, "No tax debt"),),
        "questions_deadline": NOW + timedelta(days=5),
        "submission_deadline": NOW + timedelta(days=10),
        "framework": model.FrameworkTerms(duration_months=48),
        "committee": (model.CommitteeMember("a", b"\x01" * 32),),
        "opening_threshold": 1,
    }
    values.update(changes)
    return model.CallSpec(**values)  # type: ignore[arg-type]


def test_the_finnish_holiday_calendar_matches_the_holidays_package() -> None:
    for year in range(2024, 2031):
        expected = set(holidays.Finland(years=year))  # type: ignore[attr-defined]
        ours = model.finnish_holidays(year)
        # The package lists Sundays that are holidays (Easter, Pentecost) too; ours must hold all it has.
        assert expected <= ours, sorted(expected - ours)


def test_standstill_is_14_days_and_a_holiday_or_weekend_moves_its_end_to_the_next_working_day() -> None:
    assert model.standstill_end(date(2026, 11, 2)) == date(2026, 11, 16)  # Monday -> Monday
    # 14 days after 2026-12-10 is Thursday 24 December (Christmas Eve): 24, 25, 26, 27 are out.
    assert model.standstill_end(date(2026, 12, 10)) == date(2026, 12, 28)
    # Ends on Saturday 2026-11-21 -> Monday 23rd.
    assert model.standstill_end(date(2026, 11, 7)) == date(2026, 11, 23)


def test_thresholds_decide_the_regime_as_dated_data() -> None:
    day = date(2026, 1, 1)
    assert model.regime_for(Decimal(750_000), False, day) == model.Regime.EU
    assert model.regime_for(Decimal(350_000), False, day) == model.Regime.NATIONAL
    assert model.regime_for(Decimal(350_000), True, day) == model.Regime.BELOW_THRESHOLD
    with pytest.raises(ValueError):
        model.thresholds_on(date(2000, 1, 1))


def test_a_framework_longer_than_four_years_needs_a_recorded_justification() -> None:
    with pytest.raises(InvalidArgument) as refused:
        model.validate_spec(spec(framework=model.FrameworkTerms(duration_months=60)), NOW)
    assert [v.field for v in refused.value.violations] == ["call.framework.justification"]
    justified = model.FrameworkTerms(duration_months=60, justification="Training cycles take five years.")
    model.validate_spec(spec(framework=justified), NOW)


def test_every_violation_of_a_call_is_reported_at_once() -> None:
    bad = spec(
        lots=(model.Lot("North", "", ("796",), Decimal(0), 0),),
        criteria=(model.Criterion("plan", model.CriterionKind.QUALITY, Decimal(40), 0),),
        submission_deadline=NOW - timedelta(days=1),
        opening_threshold=2,
    )
    with pytest.raises(InvalidArgument) as refused:
        model.validate_spec(bad, NOW)
    fields = {v.field for v in refused.value.violations}
    assert {
        "call.lots[0].lot",
        "call.lots[0].title",
        "call.lots[0].cpv_codes",
        "call.lots[0].estimated_value",
        "call.lots[0].max_suppliers",
        "call.criteria[0].scale_max",
        "call.criteria",
        "call.submission_deadline",
        "call.opening_threshold",
    } <= fields


def candidate(bid: str, price: str, plan: int, declared: bool = True, minute: int = 0) -> model.Candidate:
    content = model.BidContent(Decimal(price), {"plan": plan}, {"no-tax-debt": declared})
    return model.Candidate(bid, "north", f"bidder-{bid}", NOW + timedelta(minutes=minute), content)


def test_scores_are_exact_decimals_relative_to_the_lowest_price_and_by_scale() -> None:
    scores = model.evaluate_lot("north", [candidate("a", "100", 5), candidate("b", "80", 2)], spec())
    by_bid = {s.bid: s for s in scores}
    # a: 60 x 80/100 = 48.00 + 40 x 5/5 = 40.00 -> 88.00; b: 60.00 + 16.00 -> 76.00
    assert by_bid["a"].total == Decimal("88.00") and by_bid["a"].rank == 1
    assert by_bid["b"].price_points == Decimal("60.00") and by_bid["b"].total == Decimal("76.00")
    # 60 x 70/90 = 46.666.. -> 46.67
    three = model.evaluate_lot("north", [candidate("a", "90", 0), candidate("b", "70", 0)], spec())
    assert {s.bid: s.price_points for s in three}["a"] == Decimal("46.67")


def test_ties_go_to_quality_then_price_then_the_earlier_submission() -> None:
    # Same price, same quality: the earlier final submission ranks first.
    tied = model.evaluate_lot(
        "north", [candidate("late", "100", 3, minute=5), candidate("early", "100", 3, minute=1)], spec()
    )
    assert [s.bid for s in tied] == ["early", "late"]
    assert [s.rank for s in tied] == [1, 2]


def test_excluded_and_unopenable_bids_are_unranked_with_reasons_and_low_prices_are_flagged() -> None:
    unopenable = model.Candidate("x", "north", "bidder-x", NOW, None)
    scores = model.evaluate_lot(
        "north",
        [
            candidate("a", "100", 5),
            candidate("b", "110", 5),
            candidate("c", "50", 1),
            candidate("d", "90", 5, False),
            unopenable,
        ],
        spec(),
    )
    by_bid = {s.bid: s for s in scores}
    assert by_bid["d"].rank == 0 and "no-tax-debt" in by_bid["d"].excluded_reason
    assert by_bid["x"].rank == 0 and "opened" in by_bid["x"].excluded_reason
    assert by_bid["c"].abnormally_low and not by_bid["a"].abnormally_low


def framework() -> model.Framework:
    suppliers = tuple(model.Supplier("north", f"p{i}", i) for i in (1, 2, 3))
    return model.Framework(
        "f1",
        "pirkanmaa",
        "c1",
        "recruitment",
        suppliers,
        model.CallOffMethod.RANKING,
        24,
        date(2026, 1, 1),
        date(2029, 12, 31),
        NOW,
    )


def test_a_call_off_skips_a_suspended_supplier_and_moves_on_when_an_offer_is_declined() -> None:
    call_off = model.CallOff(
        "o1",
        "pirkanmaa",
        "f1",
        "north",
        "Rekrytointi",
        Decimal(1000),
        model.CallOffState.OFFERED,
        "",
        (),
        (),
        None,
        NOW,
        NOW,
    )
    call_off.offer_next(framework(), frozenset({"p1"}), NOW)
    assert (call_off.offered_to, call_off.skipped) == ("p2", ("p1",))
    assert call_off.offer_expires == NOW + timedelta(hours=24)
    call_off.offer_next(framework(), frozenset(), NOW)  # p2 declined; p1 reinstated meanwhile
    assert call_off.offered_to == "p1"
    call_off.offer_next(framework(), frozenset(), NOW)
    assert call_off.offered_to == "p3"
    call_off.offer_next(framework(), frozenset(), NOW)
    assert call_off.state == model.CallOffState.FAILED

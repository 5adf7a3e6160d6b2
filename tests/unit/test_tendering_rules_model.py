"""Tendering's award rules as pure domain: the tie tiers of quality and price, the winners per lot of
a contract and of a framework, and a call ending unsuccessful with its reason."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from services.runtime.errors import FailedPrecondition
from services.tendering import model
from tests.unit.test_tendering_model import NOW, candidate, spec


def test_equal_totals_go_to_the_higher_quality_points_before_price_time_or_id() -> None:
    # "z" (price 120, plan 5): 60 x 40/120 = 20.00 + 40.00 = 60.00; "a" (price 40, plan 0): 60.00 + 0.
    # "z" loses on every later tier (dearer, later, later id): only quality can rank it first.
    tied = model.evaluate_lot(
        "north", [candidate("a", "40", 0, minute=1), candidate("z", "120", 5, minute=9)], spec()
    )
    by_bid = {s.bid: s for s in tied}
    assert by_bid["a"].total == by_bid["z"].total == Decimal("60.00")
    assert (by_bid["z"].quality_points, by_bid["a"].quality_points) == (Decimal("40.00"), Decimal("0.00"))
    assert [(s.bid, s.rank) for s in tied] == [("z", 1), ("a", 2)]


def test_equal_totals_and_quality_go_to_the_lower_price_before_time_or_id() -> None:
    # 60 x 1 000 000 / 1 000 001 = 59.99994.. rounds to 60.00: the same points for different prices.
    # "z" is cheaper but later and has the later id: only the price tier ranks it first.
    tied = model.evaluate_lot(
        "north",
        [candidate("a", "1000001", 3, minute=1), candidate("z", "1000000", 3, minute=9)],
        spec(),
    )
    by_bid = {s.bid: s for s in tied}
    assert by_bid["a"].total == by_bid["z"].total == Decimal("84.00")
    assert by_bid["a"].quality_points == by_bid["z"].quality_points
    assert [(s.bid, s.rank) for s in tied] == [("z", 1), ("a", 2)]


def evaluated_call(kind: model.CallKind, *lots: tuple[str, int, int]) -> model.Call:
    """A call after opening, with `(lot, max_suppliers, admissible bids)` per lot and one excluded
    bid in each lot that undercuts everyone."""
    call_spec = spec(
        kind=kind,
        lots=tuple(
            model.Lot(lot, lot.title(), ("79600000-0",), Decimal(100_000), cap) for lot, cap, _ in lots
        ),
    )
    scores = []
    for lot, _, count in lots:
        candidates = [
            model.Candidate(f"{lot}-{i}", lot, f"{lot}-bidder-{i}", NOW, content)
            for i, content in enumerate(
                [
                    *(
                        model.BidContent(Decimal(1000 + 100 * i), {"plan": 3}, {"no-tax-debt": True})
                        for i in range(count)
                    ),
                    model.BidContent(Decimal(1), {"plan": 5}, {"no-tax-debt": False}),
                ]
            )
        ]
        scores.extend(model.evaluate_lot(lot, candidates, call_spec))
    return model.Call(
        "c1",
        "pirkanmaa",
        call_spec,
        model.CallState.EVALUATED,
        NOW,
        NOW,
        scores=tuple(scores),
    )


def test_a_single_contract_awards_one_winner_per_lot_whatever_the_lot_allows() -> None:
    call = evaluated_call(model.CallKind.CONTRACT, ("north", 3, 4), ("south", 2, 3))
    assert [(w.lot, w.bid, w.rank) for w in call.winners()] == [
        ("north", "north-0", 1),
        ("south", "south-0", 1),
    ]
    names = call.award("Lowest price at equal quality.", NOW)
    assert names == (
        model.BID.format(region="pirkanmaa", call="c1", bid="north-0"),
        model.BID.format(region="pirkanmaa", call="c1", bid="south-0"),
    )
    [awarded] = [event for _, event in call.pull_events()]
    assert isinstance(awarded, model.CallAwarded) and awarded.winners == names


def test_a_framework_takes_only_the_top_ranked_admissible_bids_up_to_each_lots_maximum() -> None:
    call = evaluated_call(model.CallKind.FRAMEWORK, ("north", 3, 5), ("south", 2, 2), ("east", 4, 1))
    assert [(w.lot, w.bid, w.rank) for w in call.winners()] == [
        ("north", "north-0", 1),
        ("north", "north-1", 2),
        ("north", "north-2", 3),
        ("south", "south-0", 1),
        ("south", "south-1", 2),
        ("east", "east-0", 1),
    ]


def test_a_call_closed_with_no_bids_ends_unsuccessful_with_its_reason() -> None:
    call = model.Call("c1", "pirkanmaa", spec(), model.CallState.PUBLISHED, NOW, NOW)
    deadline = call.spec.submission_deadline
    assert not call.close(0, deadline - timedelta(seconds=1))
    assert call.state == model.CallState.PUBLISHED
    assert call.close(0, deadline)
    assert (call.state, call.end_reason) == (
        model.CallState.UNSUCCESSFUL,
        "No bids were received by the deadline.",
    )
    events = [event for _, event in call.pull_events()]
    assert [type(e) for e in events] == [model.CallClosed, model.CallEnded]
    assert isinstance(events[1], model.CallEnded) and events[1].state == "UNSUCCESSFUL"


def test_an_award_with_no_admissible_bid_ends_the_call_unsuccessful_with_its_reason() -> None:
    call = evaluated_call(model.CallKind.FRAMEWORK, ("north", 3, 0))
    assert call.scores and all(s.rank == 0 for s in call.scores)
    assert call.award("Best price-quality ratio.", NOW) == ()
    assert (call.state, call.end_reason) == (
        model.CallState.UNSUCCESSFUL,
        "No bid passed the exclusion and selection checks.",
    )
    assert call.standstill_end is None and call.awarded_at is None
    assert [type(e) for _, e in call.pull_events()] == [model.CallEnded]
    # The decision is served to every bidder all the same, once, with no standstill.
    served_at = NOW + timedelta(days=1)
    assert call.serve_decision(served_at) == tuple(sorted({s.bidder for s in call.scores}))
    assert call.state == model.CallState.UNSUCCESSFUL
    assert (call.served_at, call.standstill_end) == (served_at, None)
    [event] = [e for _, e in call.pull_events()]
    assert isinstance(event, model.AwardDecisionServed) and event.standstill_end is None
    with pytest.raises(FailedPrecondition):
        call.serve_decision(served_at)
    assert not call.may_conclude(served_at + timedelta(days=365))

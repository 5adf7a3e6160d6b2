"""The alliance's pure rules: pain/gain always sums to the difference and never takes more than
the providers' fee (property-based), exact allocation by shares, consortium bids signed by every
member, selection stages, unanimous decisions, a period closed once, and market failure."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.tendering import alliance as al
from services.tendering import alliance_ocds, sealing
from services.tendering import market_failure as mf
from tests.tendering_ocds import validate_packages

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
D = Decimal

amounts = st.integers(min_value=0, max_value=10**13).map(lambda c: D(c) / 100)
signed_amounts = st.integers(min_value=-(10**13), max_value=10**13).map(lambda c: D(c) / 100)
ratios = st.integers(min_value=0, max_value=10_000).map(lambda r: D(r) / 100)


@given(target=amounts, actual=amounts, ratio=ratios, fee=amounts)
def test_pain_gain_always_sums_to_the_difference_and_never_takes_more_than_the_fee(
    target: Decimal, actual: Decimal, ratio: Decimal, fee: Decimal
) -> None:
    split = al.share_difference(target, actual, ratio, fee)
    assert split.difference == target - actual
    assert split.providers + split.buyers == split.difference
    assert split.providers >= -fee, "the providers' loss is capped at their fee"
    assert al.is_cents(split.providers) and al.is_cents(split.buyers)
    if split.difference >= 0:  # a saving is shared: neither side loses on it
        assert 0 <= split.providers <= split.difference
        assert split.buyers >= 0
    else:  # an overrun: neither side gains on it, and the buyers bear at least their ratio
        assert split.difference <= split.providers <= 0
        assert split.buyers <= 0


@given(
    total=signed_amounts,
    weights=st.lists(st.integers(min_value=0, max_value=10_000).map(D), min_size=1, max_size=12).filter(
        lambda ws: sum(ws) > 0
    ),
)
def test_an_allocation_sums_exactly_and_each_part_is_within_a_cent_of_its_share(
    total: Decimal, weights: list[Decimal]
) -> None:
    parts = al.allocate(total, weights)
    assert sum(parts, D(0)) == total
    weight_sum = sum(weights, D(0))
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - total * weight / weight_sum) < D("0.01")


@given(
    target=st.integers(min_value=1, max_value=10**10).map(lambda c: D(c) / 100),
    costs=st.lists(st.integers(min_value=1, max_value=10**9).map(lambda c: D(c) / 100), max_size=8),
    fee_percentage=st.integers(min_value=0, max_value=3000).map(lambda c: D(c) / 100),
    ratio=ratios,
    met=st.booleans(),
)
def test_the_buyers_pay_exactly_what_the_providers_receive(
    target: Decimal, costs: list[Decimal], fee_percentage: Decimal, ratio: Decimal, met: bool
) -> None:
    members = (member(A1, D(60), lead=True), member(A2, D(40)))
    entries = [al.CostEntry(i, "p1", (A1, A2)[i % 2], amount, "work", NOW) for i, amount in enumerate(costs)]
    closing = al.close(
        al.Period("p1", date(2027, 1, 1), date(2027, 12, 31), target, D(1000)),
        entries,
        buyers=BUYERS,
        members=members,
        fee_percentage=fee_percentage,
        provider_ratio=ratio,
        kpis=KPIS,
        kpi_results={"employed": D(70) if met else D(10), "satisfaction": D(1)},
        now=NOW,
    )
    paid = sum((s.net for s in closing.statements if s.role == al.PartyRole.BUYER), D(0))
    received = sum((s.net for s in closing.statements if s.role == al.PartyRole.PROVIDER), D(0))
    assert paid == received == closing.actual_cost + closing.fee + closing.incentive + closing.providers_part
    assert closing.providers_part >= -closing.fee


# -- a worked alliance -----------------------------------------------------------------------------

A1, A2, B1 = "1234561-2", "1234562-0", "1234563-9"
KEYS = {bid: Ed25519PrivateKey.generate() for bid in (A1, A2, B1)}
ENROLLED = frozenset((b, sealing.key_fingerprint(sealing.raw_public(k))) for b, k in KEYS.items())
"""Every member's own key, live-enrolled for it."""
BUYERS = (
    al.JointBuyer("pirkanmaa", D(50), True, al.BuyerKind.REGION, ("recruitment",)),
    al.JointBuyer("tampere", D(30), False, al.BuyerKind.MUNICIPALITY, ("business-policy",)),
    al.JointBuyer("nokia", D(20), False, al.BuyerKind.MUNICIPALITY, ("employment",)),
)
KPIS = (
    al.Kpi("employed", "employment", "Share employed within 6 months, %", D(60), D(60)),
    al.Kpi("satisfaction", "customers", "Customer satisfaction 1-5", D(4), D(40)),
)
PERIODS = (
    al.Period("p1", date(2027, 1, 1), date(2028, 12, 31), D("1000000.00"), D("50000.00")),
    al.Period("p2", date(2029, 1, 1), date(2030, 12, 31), D("1200000.00"), D("50000.00")),
)


def member(business_id: str, share: Decimal, *, lead: bool = False) -> al.Member:
    return al.Member(
        business_id, "lead" if lead else "partner", sealing.raw_public(KEYS[business_id]), share, lead
    )


def spec() -> al.AllianceSpec:
    return al.AllianceSpec(
        "Pirkanmaan kasvuallianssi",
        "recruitment",
        "Growth services and vitality tasks as one alliance",
        BUYERS,
        NOW + timedelta(days=30),
        D(70),
    )


def bid(
    alliance: al.Alliance,
    bid_id: str,
    members: tuple[al.Member, ...],
    fee: str,
    estimate: str,
    *,
    signers: tuple[str, ...] | None = None,
) -> al.ConsortiumBid:
    proposal = al.Proposal(
        alliance.name, tuple(m.business_id for m in members), "Our plan", D(fee), D(estimate)
    )
    document = proposal.encode()
    signatures = tuple(
        al.Signature(b, KEYS[b].sign(document)) for b in (signers or [m.business_id for m in members])
    )
    return al.ConsortiumBid(bid_id, f"Consortium {bid_id}", members, document, signatures, proposal, NOW)


def selected_alliance() -> al.Alliance:
    alliance = al.Alliance.tender("a1", "pirkanmaa", al.validate_spec(spec(), "pirkanmaa", NOW), NOW)
    alliance.receive(
        bid(alliance, "x", (member(A1, D(60), lead=True), member(A2, D(40))), "8", "2000000"), NOW, ENROLLED
    )
    alliance.receive(bid(alliance, "y", (member(B1, D(100), lead=True),), "5", "2100000"), NOW, ENROLLED)
    later = NOW + timedelta(days=31)
    alliance.shortlist(["x", "y"], "Both plans meet the qualitative minimum.", later)
    alliance.score_workshops({"x": D(90), "y": D(60)}, "Workshop scores by the panel.", later)
    winner = alliance.select("Best total of workshop and price points.", later)
    assert winner.bid == "x"
    return alliance


def everyone(alliance: al.Alliance) -> tuple[str, ...]:
    return alliance.parties()


def implementing() -> al.Alliance:
    alliance = selected_alliance()
    alliance.decide(
        al.Decision(
            al.DecisionKind.FIX_TARGETS, everyone(alliance), "Fixed together.", ("Jobs",), KPIS, PERIODS
        ),
        NOW,
    )
    alliance.decide(al.Decision(al.DecisionKind.START_IMPLEMENTATION, everyone(alliance), "Ready."), NOW)
    return alliance


def test_selection_scores_workshops_and_price_components_and_records_reasons_at_each_stage() -> None:
    alliance = selected_alliance()
    assert [s.stage for s in alliance.stages] == [al.Stage.SHORTLIST, al.Stage.WORKSHOP, al.Stage.DEVELOPMENT]
    assert all(s.reasons for s in alliance.stages)
    x, y = alliance.bid("x"), alliance.bid("y")
    assert x is not None and y is not None
    # x: 2 000 000 + 8 % fee = 2 160 000, the lowest: 70 x 90/100 + 30 x 1;
    # y: 2 100 000 + 5 % = 2 205 000: 70 x 60/100 + 30 x 2 160 000 / 2 205 000 = 29.387.. -> 29.39
    assert x.price() == D("2160000")
    assert x.total == D("63.00") + D("30.00")
    assert y.total == D("42.00") + D("29.39")
    assert alliance.parties() == ("pirkanmaa", "tampere", "nokia", A1, A2)


def test_a_period_closing_matches_the_hand_computed_table_overrun_then_saving() -> None:
    alliance = implementing()
    alliance.record_cost("p1", A1, D("700000.00"), "Coaching", NOW)
    alliance.record_cost("p1", A2, D("400000.00"), "Training", NOW)
    first = alliance.close_period("p1", {"employed": D(65), "satisfaction": D("3.9")}, NOW)
    assert (first.actual_cost, first.fee, first.incentive) == (D("1100000.00"), D("80000.00"), D("30000.00"))
    assert (first.difference, first.providers_part, first.buyers_part) == (
        D("-100000.00"),
        D("-50000.00"),
        D("-50000.00"),
    )
    table = {s.party: (s.costs, s.fee, s.incentive, s.pain_gain, s.net) for s in first.statements}
    assert table == {
        "pirkanmaa": (D("550000.00"), D("40000.00"), D("15000.00"), D("-25000.00"), D("580000.00")),
        "tampere": (D("330000.00"), D("24000.00"), D("9000.00"), D("-15000.00"), D("348000.00")),
        "nokia": (D("220000.00"), D("16000.00"), D("6000.00"), D("-10000.00"), D("232000.00")),
        A1: (D("700000.00"), D("48000.00"), D("18000.00"), D("-30000.00"), D("736000.00")),
        A2: (D("400000.00"), D("32000.00"), D("12000.00"), D("-20000.00"), D("424000.00")),
    }
    alliance.record_cost("p2", A1, D("600000.00"), "Coaching", NOW)
    alliance.record_cost("p2", A2, D("499999.99"), "Training", NOW)
    second = alliance.close_period("p2", {"employed": D(61), "satisfaction": D("4.2")}, NOW)
    # 100 000.01 saved: the providers' half 50 000.005 rounds half-even to 50 000.00.
    assert (second.difference, second.providers_part, second.buyers_part) == (
        D("100000.01"),
        D("50000.00"),
        D("50000.01"),
    )
    table = {s.party: (s.costs, s.fee, s.incentive, s.pain_gain, s.net) for s in second.statements}
    assert table == {
        # the buyers' extra cent goes to the largest remainder (pirkanmaa's .5)
        "pirkanmaa": (D("549999.99"), D("48000.00"), D("25000.00"), D("25000.01"), D("647999.99")),
        "tampere": (D("330000.00"), D("28800.00"), D("15000.00"), D("15000.00"), D("388800.00")),
        "nokia": (D("220000.00"), D("19200.00"), D("10000.00"), D("10000.00"), D("259200.00")),
        A1: (D("600000.00"), D("57600.00"), D("30000.00"), D("30000.00"), D("717600.00")),
        A2: (D("499999.99"), D("38400.00"), D("20000.00"), D("20000.00"), D("578399.99")),
    }


def test_a_large_overrun_costs_the_providers_no_more_than_their_fee() -> None:
    alliance = implementing()
    alliance.record_cost("p1", A1, D("1300000.00"), "Everything", NOW)
    closing = alliance.close_period("p1", {"employed": D(0), "satisfaction": D(0)}, NOW)
    assert closing.providers_part == D("-80000.00") == -closing.fee
    assert closing.buyers_part == D("-220000.00")


def test_a_period_is_closed_once() -> None:
    alliance = implementing()
    alliance.close_period("p1", {"employed": D(0), "satisfaction": D(0)}, NOW)
    before = alliance.closings
    with pytest.raises(FailedPrecondition, match="closed already"):
        alliance.close_period("p1", {"employed": D(0), "satisfaction": D(0)}, NOW)
    with pytest.raises(FailedPrecondition, match="closed already"):
        alliance.record_cost("p1", A1, D(1), "late", NOW)
    assert alliance.closings == before


def test_a_decision_without_every_party_is_refused_and_changes_nothing() -> None:
    alliance = selected_alliance()
    without_nokia = tuple(p for p in everyone(alliance) if p != "nokia")
    with pytest.raises(FailedPrecondition, match="nokia has not approved") as refused:
        alliance.decide(
            al.Decision(al.DecisionKind.FIX_TARGETS, without_nokia, "Fixed.", ("Jobs",), KPIS, PERIODS), NOW
        )
    assert refused.value.reason == "NOT_UNANIMOUS"
    assert (alliance.periods, alliance.decisions) == ((), ())


def test_a_new_buyer_joins_by_unanimous_amendment_and_shares_the_next_period() -> None:
    alliance = implementing()
    buyers = (
        *BUYERS[:2],
        replace(BUYERS[2], cost_share=D(10)),
        al.JointBuyer("ylojarvi", D(10), False, al.BuyerKind.MUNICIPALITY, ("wellbeing",)),
    )
    made = alliance.decide(
        al.Decision(al.DecisionKind.ADMIT_BUYER, everyone(alliance), "Joins.", buyers=buyers), NOW
    )
    assert (made.decision, alliance.amendment) == (3, 1)
    assert "ylojarvi" in alliance.parties()
    closing = alliance.close_period("p1", {"employed": D(0), "satisfaction": D(0)}, NOW)
    assert {s.party for s in closing.statements} >= {"ylojarvi"}


def test_cost_shares_not_summing_to_100_are_refused() -> None:
    uneven = replace(spec(), buyers=(*BUYERS[:2], replace(BUYERS[2], cost_share=D("19.99"))))
    with pytest.raises(InvalidArgument, match=r"cost shares must sum to 100 %, not 99.99 %"):
        al.validate_spec(uneven, "pirkanmaa", NOW)


def test_a_consortium_bid_without_every_members_signature_is_refused() -> None:
    alliance = al.Alliance.tender("a1", "pirkanmaa", spec(), NOW)
    members = (member(A1, D(60), lead=True), member(A2, D(40)))
    with pytest.raises(InvalidArgument, match=f"member {A2} has not signed the bid"):
        alliance.receive(bid(alliance, "x", members, "8", "2000000", signers=(A1,)), NOW, ENROLLED)
    forged = bid(alliance, "x", members, "8", "2000000", signers=(A1, A1))
    forged = replace(
        forged, signatures=(forged.signatures[0], al.Signature(A2, forged.signatures[0].signature))
    )
    with pytest.raises(InvalidArgument, match="does not verify"):
        alliance.receive(forged, NOW, ENROLLED)
    assert alliance.bids == ()


def test_a_consortium_bid_with_a_members_key_not_enrolled_for_that_member_is_refused_naming_it() -> None:
    alliance = al.Alliance.tender("a1", "pirkanmaa", spec(), NOW)
    members = (member(A1, D(60), lead=True), member(A2, D(40)))
    signed = bid(alliance, "x", members, "8", "2000000")
    # A2's key enrolled for A1 instead, or not at all: its signature says nothing about A2.
    a2_key = sealing.key_fingerprint(sealing.raw_public(KEYS[A2]))
    for enrolled in (ENROLLED - {(A2, a2_key)}, (ENROLLED - {(A2, a2_key)}) | {(A1, a2_key)}):
        with pytest.raises(InvalidArgument) as refused:
            alliance.receive(signed, NOW, enrolled)
        assert refused.value.reason == "BIDDER_KEY_NOT_ENROLLED"
        assert [v.field for v in refused.value.violations] == ["bid.members[1].public_key"]
    assert not alliance.bids
    alliance.receive(signed, NOW, ENROLLED)
    assert [received.bid for received in alliance.bids] == ["x"]


def test_bids_close_at_the_deadline_and_stages_wait_for_it() -> None:
    alliance = al.Alliance.tender("a1", "pirkanmaa", spec(), NOW)
    members = (member(B1, D(100), lead=True),)
    alliance.receive(bid(alliance, "y", members, "5", "1000"), NOW, ENROLLED)
    with pytest.raises(FailedPrecondition, match="received until"):
        alliance.shortlist(["y"], "Early", NOW)
    with pytest.raises(FailedPrecondition, match="deadline"):
        alliance.receive(bid(alliance, "z", members, "5", "1000"), NOW + timedelta(days=30), ENROLLED)


# -- market failure --------------------------------------------------------------------------------


def finding_spec(**changes: object) -> mf.FindingSpec:
    values: dict[str, object] = {
        "service": "recruitment",
        "municipalities": ("837", "536"),
        "evidence": (mf.Evidence(mf.EvidenceKind.MARKET_SURVEY_NOTICE, "Hilma 2026-123", "No responses"),),
        "valid_from": NOW,
        "valid_until": NOW + timedelta(days=365),
        "review_date": date(2027, 6, 1),
        "criteria": "Sufficiency: no provider in the area",
    }
    values.update(changes)
    return mf.FindingSpec(**values)  # type: ignore[arg-type]


def award_spec(municipality: str = "837") -> mf.DirectAwardSpec:
    return mf.DirectAwardSpec(
        "recruitment", municipality, mf.AwardeeKind.IN_HOUSE_ENTITY, "1234564-7", D("90000.00"), "Only one"
    )


def test_a_direct_award_rests_on_a_valid_finding_and_records_it() -> None:
    finding = mf.Finding.declare("f1", "pirkanmaa", mf.validate_finding(finding_spec(), NOW), NOW)
    award = mf.DirectAward.make("d1", "pirkanmaa", award_spec(), [finding], NOW)
    assert award.finding == "regions/pirkanmaa/marketFailures/f1"
    with pytest.raises(FailedPrecondition, match="no valid market-failure finding"):
        mf.DirectAward.make("d2", "pirkanmaa", award_spec("091"), [finding], NOW)
    finding.lift("Two providers registered.", NOW)
    with pytest.raises(FailedPrecondition, match="no valid market-failure finding"):
        mf.DirectAward.make("d3", "pirkanmaa", award_spec(), [finding], NOW)


def test_a_finding_lapses_at_the_end_of_its_validity_once() -> None:
    finding = mf.Finding.declare("f1", "pirkanmaa", finding_spec(), NOW)
    assert not finding.expire(NOW + timedelta(days=364))
    assert finding.expire(NOW + timedelta(days=365))
    assert not finding.expire(NOW + timedelta(days=366))
    events = [type(e).__name__ for _, e in finding.pull_events()]
    assert events == ["MarketFailureDeclared", "MarketFailureLifted"]


def test_a_finding_needs_evidence_and_a_review_date_within_its_validity() -> None:
    with pytest.raises(InvalidArgument) as refused:
        mf.validate_finding(finding_spec(evidence=(), review_date=date(2030, 1, 1)), NOW)
    assert {v.field for v in refused.value.violations} == {"finding.evidence", "finding.review_date"}


def test_the_ocds_export_lists_every_buyer_and_the_consortium_and_validates_after_an_amendment() -> None:
    alliance = implementing()
    buyers = (
        *BUYERS[:2],
        replace(BUYERS[2], cost_share=D(10)),
        al.JointBuyer("ylojarvi", D(10), False, al.BuyerKind.MUNICIPALITY, ("wellbeing",)),
    )
    alliance.decide(
        al.Decision(al.DecisionKind.ADMIT_BUYER, everyone(alliance), "Joins.", buyers=buyers), NOW
    )
    releases, records = alliance_ocds.packages(alliance)
    validate_packages(releases, records)
    last = json.loads(releases)["releases"][-1]
    assert last["tag"] == ["contractAmendment"]
    roles = {p["name"]: p["roles"] for p in last["parties"]}
    assert roles["pirkanmaa"] == ["buyer", "procuringEntity"]
    assert roles["ylojarvi"] == roles["tampere"] == ["buyer"]
    assert [s["name"] for s in last["awards"][0]["suppliers"]] == [A1, A2]

# ruff: noqa: F811 - the tendering fixture is test_tendering's
"""Tendering's award rules over gRPC against real SQLite and PostgreSQL: one winner per lot of a
contract, a framework's cap of suppliers per lot, calls ending unsuccessful with their reason, the
questions deadline, the events a run leaves in the outbox, and award reasons every bidder reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from kasvu.tendering.v1 import events_pb2, tendering_pb2
from sqlmodel import col, select

from services.runtime.db import Database
from services.runtime.tables import OutboxEvent
from services.tendering import handlers, model
from tests.integration.helpers import business_ids, count_rows, error_reason, outbox_counts
from tests.integration.test_tendering import (  # noqa: F401 - the fixture
    DEADLINE,
    REGION,
    T0,
    Member,
    Provider,
    World,
    all_rows_text,
    call_message,
    content,
    euros,
    share_of,
    world,
)
from tests.tendering_ocds import validate_packages

AWARDED_ON = datetime(2026, 11, 12, 10, tzinfo=UTC)  # a Thursday: served then, standstill to the 26th
AFTER_STANDSTILL = datetime(2026, 11, 27, 12, tzinfo=UTC)
REASONS = "Paras hinta-laatusuhde: the best price-quality ratio per lot."


def declaring(price: int, plan: int, *, no_tax_debt: bool = True, turnover: bool = True) -> bytes:
    """A bid's plaintext with its own ESPD declarations (content() declares everything)."""
    declarations = {"no-tax-debt": no_tax_debt, "turnover": turnover}
    return model.BidContent(Decimal(price), {"plan": plan}, declarations).encode()


async def publish(world: World, call: tendering_pb2.Call) -> tendering_pb2.Call:
    draft = await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=call), metadata=world.admin()
    )
    return await world.stub.PublishCall(
        tendering_pb2.PublishCallRequest(name=draft.name), metadata=world.admin()
    )


async def open_after_deadline(
    world: World, call: tendering_pb2.Call, members: list[Member]
) -> tendering_pb2.Call:
    """The deadline's timer closes the call; the first two members' shares open it."""
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    await share_of(world, call, members, 0)
    opened = await share_of(world, call, members, 1)
    assert opened.state == tendering_pb2.CALL_STATE_EVALUATED
    return opened


async def award(world: World, call: tendering_pb2.Call, reasons: str = REASONS) -> tendering_pb2.Call:
    world.clock.set(AWARDED_ON)
    return await world.stub.AwardCall(
        tendering_pb2.AwardCallRequest(name=call.name, reasons=reasons), metadata=world.admin()
    )


async def serve(world: World, call: tendering_pb2.Call) -> tendering_pb2.Call:
    """The award decision served to every bidder the day it was made: the standstill starts."""
    world.clock.set(AWARDED_ON)
    return await world.stub.ServeAwardDecision(
        tendering_pb2.ServeAwardDecisionRequest(name=call.name), metadata=world.admin()
    )


async def concluded(world: World, call: tendering_pb2.Call) -> tendering_pb2.Framework:
    await serve(world, call)
    world.clock.set(AFTER_STANDSTILL)
    await world.tick()
    done = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert done.state == tendering_pb2.CALL_STATE_CONCLUDED
    return await world.stub.GetFramework(tendering_pb2.GetFrameworkRequest(name=done.framework_agreement))


async def tendering_payloads(db: Database, event: str) -> list[bytes]:
    async with db.read_session() as session:
        rows = await session.exec(
            select(OutboxEvent)
            .where(col(OutboxEvent.event_type) == f"kasvu.tendering.v1.{event}")
            .order_by(col(OutboxEvent.seq))
        )
        return [row.payload for row in rows.all()]


def ranked(opened: tendering_pb2.Call, lot: str) -> list[tendering_pb2.Score]:
    return sorted((s for s in opened.scores if s.lot == lot and s.rank > 0), key=lambda s: s.rank)


async def test_a_single_contract_call_awards_one_winner_per_lot_even_where_the_lot_takes_more(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(5_100_000)
    providers = [Provider(next_id()) for _ in range(3)]
    # The lots allow 3 and 2 suppliers: a contract ignores that and takes the best bid only.
    call = await publish(world, call_message(members, kind=tendering_pb2.CALL_KIND_CONTRACT))
    assert [lot.max_suppliers for lot in call.lots] == [3, 2]
    for i, provider in enumerate(providers):
        await world.bid(call, provider, "north", content(100_000 + 5_000 * i, 4))
    await world.bid(call, providers[1], "south", content(200_000, 4))
    await world.bid(call, providers[2], "south", content(210_000, 3))
    opened = await open_after_deadline(world, call, members)
    north, south = ranked(opened, "north"), ranked(opened, "south")
    assert (len(north), len(south)) == (3, 2)

    awarded = await award(world, call)
    assert awarded.state == tendering_pb2.CALL_STATE_AWARDED and not awarded.HasField("standstill_end")
    [event] = await tendering_payloads(world.db, "CallAwarded")
    assert list(events_pb2.CallAwarded.FromString(event).winners) == [north[0].bid, south[0].bid]
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    [award_release] = [
        r for r in json.loads(exported.release_package_json)["releases"] if r["tag"] == ["award"]
    ]
    assert [[s["name"] for s in a["suppliers"]] for a in award_release["awards"]] == [
        [north[0].bidder],
        [south[0].bidder],
    ]
    validate_packages(exported.release_package_json, exported.record_package_json)

    contract = await concluded(world, call)
    assert [(s.lot, s.business_id, s.rank) for s in contract.suppliers] == [
        ("north", north[0].bidder, 1),
        ("south", south[0].bidder, 1),
    ]


async def test_a_framework_lot_with_more_admissible_bidders_than_its_maximum_takes_only_the_top_ranked(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(5_200_000)
    providers = [Provider(next_id()) for _ in range(5)]
    call = await publish(world, call_message(members))
    assert [(lot.lot, lot.max_suppliers) for lot in call.lots] == [("north", 3), ("south", 2)]
    # North: four admissible bids for three places, and the cheapest bid excluded (tax debt).
    for i, provider in enumerate(providers[:4]):
        await world.bid(call, provider, "north", content(100_000 + 10_000 * i, 3))
    await world.bid(call, providers[4], "north", declaring(50_000, 5, no_tax_debt=False))
    # South: three admissible bids for two places, best last.
    for i, provider in enumerate(providers[:3]):
        await world.bid(call, provider, "south", content(300_000 - 20_000 * i, 3))
    opened = await open_after_deadline(world, call, members)
    north, south = ranked(opened, "north"), ranked(opened, "south")
    assert [s.bidder for s in north] == [p.business_id for p in providers[:4]]
    assert [s.bidder for s in south] == [p.business_id for p in reversed(providers[:3])]
    excluded = next(s for s in opened.scores if s.bidder == providers[4].business_id)
    assert excluded.rank == 0 and "no-tax-debt" in excluded.excluded_reason

    await award(world, call)
    [event] = await tendering_payloads(world.db, "CallAwarded")
    assert list(events_pb2.CallAwarded.FromString(event).winners) == [s.bid for s in north[:3] + south[:2]]
    framework = await concluded(world, call)
    assert [(s.lot, s.business_id, s.rank) for s in framework.suppliers] == [
        *(("north", s.bidder, s.rank) for s in north[:3]),
        *(("south", s.bidder, s.rank) for s in south[:2]),
    ]

    # The fourth-ranked in north is no supplier: when the three decline, the call-off fails.
    call_off = await world.stub.CreateCallOff(
        tendering_pb2.CreateCallOffRequest(
            parent=framework.name,
            call_off=tendering_pb2.CallOff(lot="north", description="3 rekrytointia", value=euros(9_000)),
        ),
        metadata=world.admin(),
    )
    for supplier in north[:3]:
        assert call_off.offered_to == supplier.bidder
        call_off = await world.stub.DeclineCallOff(
            tendering_pb2.DeclineCallOffRequest(name=call_off.name), metadata=world.provider(supplier.bidder)
        )
    assert call_off.state == tendering_pb2.CALL_OFF_STATE_FAILED
    assert list(call_off.tried) == [s.bidder for s in north[:3]]


async def test_a_call_closed_with_no_bids_ends_unsuccessful_with_its_reason(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    call = await publish(world, call_message(members))
    world.clock.set(DEADLINE - timedelta(minutes=1))
    await world.tick()
    still = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert still.state == tendering_pb2.CALL_STATE_PUBLISHED
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    ended = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert ended.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    assert ended.end_reason == "No bids were received by the deadline."
    [closed] = await tendering_payloads(world.db, "CallClosed")
    assert events_pb2.CallClosed.FromString(closed).bid_count == 0
    [end] = await tendering_payloads(world.db, "CallEnded")
    assert (events_pb2.CallEnded.FromString(end).state, events_pb2.CallEnded.FromString(end).reason) == (
        "UNSUCCESSFUL",
        "No bids were received by the deadline.",
    )
    with pytest.raises(grpc.aio.AioRpcError) as nothing_to_open:
        await share_of(world, call, members, 0)
    assert error_reason(nothing_to_open.value) == "CALL_STATE"
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    last = json.loads(exported.release_package_json)["releases"][-1]
    assert last["tag"] == ["tenderCancellation"]
    assert (last["tender"]["status"], last["tender"]["statusDetails"]) == (
        "unsuccessful",
        "No bids were received by the deadline.",
    )
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_an_award_with_no_admissible_bid_ends_the_call_unsuccessful_with_its_reason(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(5_300_000)
    indebted, small = Provider(next_id()), Provider(next_id())
    call = await publish(world, call_message(members))
    await world.bid(call, indebted, "north", declaring(90_000, 5, no_tax_debt=False))
    await world.bid(call, small, "south", declaring(80_000, 4, turnover=False))
    opened = await open_after_deadline(world, call, members)
    assert [s.rank for s in opened.scores] == [0, 0]
    assert {s.bidder: s.excluded_reason for s in opened.scores} == {
        indebted.business_id: "Exclusion ground no-tax-debt is not declared absent.",
        small.business_id: "Selection criterion turnover is not declared met.",
    }

    ended = await award(world, call)
    assert ended.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    assert ended.end_reason == "No bid passed the exclusion and selection checks."
    assert ended.award_reasons == REASONS  # the organiser's own reasons are kept
    assert not ended.HasField("standstill_end")
    assert await tendering_payloads(world.db, "CallAwarded") == []
    [end] = await tendering_payloads(world.db, "CallEnded")
    assert events_pb2.CallEnded.FromString(end).state == "UNSUCCESSFUL"
    # No standstill, so nothing concludes and no framework exists.
    world.clock.set(AFTER_STANDSTILL)
    await world.tick()
    later = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert later.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL and not later.framework_agreement
    assert later.award_reasons == REASONS
    assert await count_rows(world.db, "tendering_frameworks") == 0
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    releases = json.loads(exported.release_package_json)["releases"]
    assert [r["tag"] for r in releases] == [["tender"], ["tenderCancellation"]]
    assert (releases[-1]["tender"]["status"], releases[-1]["tender"]["statusDetails"]) == (
        "unsuccessful",
        "No bid passed the exclusion and selection checks.",
    )
    validate_packages(exported.release_package_json, exported.record_package_json)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await world.stub.AwardCall(
            tendering_pb2.AwardCallRequest(name=call.name, reasons=REASONS), metadata=world.admin()
        )
    assert error_reason(again.value) == "CALL_STATE"


async def test_a_question_after_the_questions_deadline_is_refused_and_nothing_is_stored(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    asker = Provider(business_ids(5_400_000)())
    call = await publish(world, call_message(members))
    questions_deadline = T0 + timedelta(days=5)
    assert call.questions_deadline.ToDatetime(tzinfo=UTC) == questions_deadline

    def ask(question: str) -> tendering_pb2.AskQuestionRequest:
        return tendering_pb2.AskQuestionRequest(
            parent=call.name, clarification=tendering_pb2.Clarification(question=question)
        )

    world.clock.set(questions_deadline - timedelta(seconds=1))
    await world.stub.AskQuestion(
        ask("Kysymys-ajoissa: is Lapland in north?"), metadata=world.provider(asker.business_id)
    )
    stored_before = await count_rows(world.db, "audit_log")
    for moment in (questions_deadline, questions_deadline + timedelta(days=1)):
        world.clock.set(moment)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await world.stub.AskQuestion(
                ask("Kysymys-myohassa: may we bid for both lots?"), metadata=world.provider(asker.business_id)
            )
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(late.value) == "DEADLINE_PASSED"
    rows = await all_rows_text(world.db)
    assert "Kysymys-ajoissa" in rows and "Kysymys-myohassa" not in rows
    assert await count_rows(world.db, "audit_log") == stored_before
    assert (await outbox_counts(world.db)).get("kasvu.tendering.v1.ClarificationAsked") == 1
    # It is the questions deadline that passed, not the call: bids are still taken.
    bid = await world.bid(call, asker, "north", content(100_000, 3))
    assert bid.state == tendering_pb2.BID_STATE_SEALED


async def test_the_outbox_holds_an_event_for_every_transition_of_a_tender(world: World) -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    next_id = business_ids(5_500_000)
    providers = [Provider(next_id()) for _ in range(3)]
    cancelled = await publish(world, call_message(members))
    await world.stub.CancelCall(
        tendering_pb2.CancelCallRequest(name=cancelled.name, reason="The need changed."),
        metadata=world.admin(),
    )
    call = await publish(world, call_message(members))
    asked = await world.stub.AskQuestion(
        tendering_pb2.AskQuestionRequest(
            parent=call.name, clarification=tendering_pb2.Clarification(question="Lapland?")
        ),
        metadata=world.provider(providers[0].business_id),
    )
    await world.stub.AnswerQuestion(
        tendering_pb2.AnswerQuestionRequest(name=asked.name, answer="North."), metadata=world.admin()
    )
    invalidated = await world.bid(call, providers[0], "north", content(100_000, 3))
    amended = await world.stub.AmendCall(
        tendering_pb2.AmendCallRequest(name=call.name, call=call_message(members)), metadata=world.admin()
    )
    assert amended.state == tendering_pb2.CALL_STATE_AMENDED
    for i, provider in enumerate(providers):
        await world.bid(call, provider, "north", content(100_000 + 10_000 * i, 3))
    withdrawn = await world.bid(call, providers[0], "south", content(200_000, 3))
    await world.stub.WithdrawBid(
        tendering_pb2.WithdrawBidRequest(name=withdrawn.name),
        metadata=world.provider(providers[0].business_id),
    )
    await open_after_deadline(world, call, members)
    await award(world, call)
    await serve(world, call)
    appealed = await world.stub.RecordAppeal(
        tendering_pb2.RecordAppealRequest(name=call.name, kind="RECTIFICATION"), metadata=world.admin()
    )
    world.clock.set(AFTER_STANDSTILL)
    done = await world.stub.ResolveAppeal(
        tendering_pb2.ResolveAppealRequest(name=call.name, appeal=appealed.appeals[0].appeal),
        metadata=world.admin(),
    )
    assert done.state == tendering_pb2.CALL_STATE_CONCLUDED
    await world.dispatcher.handle(
        handlers.SetSupplierEligibility(REGION, "recruitment", providers[0].business_id, False, "breach-1")
    )
    call_off = await world.stub.CreateCallOff(
        tendering_pb2.CreateCallOffRequest(
            parent=done.framework_agreement,
            call_off=tendering_pb2.CallOff(lot="north", description="2 rekrytointia", value=euros(5_000)),
        ),
        metadata=world.admin(),
    )
    await world.stub.AcceptCallOff(
        tendering_pb2.AcceptCallOffRequest(name=call_off.name), metadata=world.provider(call_off.offered_to)
    )

    def tendering(event: str) -> str:
        return f"kasvu.tendering.v1.{event}"

    assert await outbox_counts(world.db) == {
        tendering("CallDrafted"): 2,
        tendering("CallPublished"): 2,
        tendering("ClarificationAsked"): 1,
        tendering("ClarificationAnswered"): 1,
        tendering("CallAmended"): 1,
        tendering("BidReceived"): 5,
        tendering("BidWithdrawn"): 1,
        tendering("CallClosed"): 1,
        tendering("OpeningShareSubmitted"): 2,
        tendering("BidsOpened"): 1,
        tendering("CallAwarded"): 1,
        tendering("AwardDecisionServed"): 1,
        tendering("AppealRecorded"): 1,
        tendering("AppealResolved"): 1,
        tendering("CallConcluded"): 1,
        tendering("SupplierEligibilityChanged"): 1,
        tendering("CallOffOffered"): 1,
        tendering("CallOffDecided"): 1,
        tendering("CallEnded"): 1,
        tendering("BidderKeyEnrolled"): 3,  # each of the three bidders' keys, once
    }
    [amendment] = await tendering_payloads(world.db, "CallAmended")
    assert events_pb2.CallAmended.FromString(amendment).invalidated_bids == 1
    received = [
        events_pb2.BidReceived.FromString(p) for p in await tendering_payloads(world.db, "BidReceived")
    ]
    assert received[0].bid == invalidated.name and received[-1].bid == withdrawn.name
    # A bid's event names no bidder: who bid stays sealed until opening, like the bid itself.
    assert not any(p.business_id in str(received) for p in providers)
    [opened] = await tendering_payloads(world.db, "BidsOpened")
    assert (
        events_pb2.BidsOpened.FromString(opened).opened,
        events_pb2.BidsOpened.FromString(opened).unopenable,
    ) == (
        3,
        0,
    )
    [offered] = await tendering_payloads(world.db, "CallOffOffered")
    assert list(events_pb2.CallOffOffered.FromString(offered).skipped) == [providers[0].business_id]
    async with world.db.reader.connect() as connection:
        subjects = (await connection.execute(select(OutboxEvent.subject, OutboxEvent.event_type))).all()
    # Every event is addressed by its organiser, but a bidder's keys serve it in every region:
    # theirs by the bidder.
    bidders = {p.business_id for p in providers}
    assert all(
        subject
        in (
            {f"{event_type}.{b}" for b in bidders}
            if "BidderKey" in event_type
            else {f"{event_type}.{REGION}"}
        )
        for subject, event_type in subjects
    )


async def test_the_award_decision_and_its_reasons_reach_every_bidder(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(5_600_000)
    winner, runner_up, excluded = (Provider(next_id()) for _ in range(3))
    call = await publish(world, call_message(members, kind=tendering_pb2.CALL_KIND_CONTRACT))
    await world.bid(call, winner, "north", content(100_000, 5))
    await world.bid(call, runner_up, "north", content(120_000, 3))
    await world.bid(call, excluded, "south", declaring(90_000, 5, turnover=False))
    await open_after_deadline(world, call, members)
    before = await world.stub.GetCall(
        tendering_pb2.GetCallRequest(name=call.name), metadata=world.provider(winner.business_id)
    )
    assert before.award_reasons == ""
    await award(world, call)
    await serve(world, call)
    # Served to every bidder, the one excluded and the one not awarded too.
    [served] = map(
        events_pb2.AwardDecisionServed.FromString, await tendering_payloads(world.db, "AwardDecisionServed")
    )
    assert list(served.bidders) == sorted(p.business_id for p in (winner, runner_up, excluded))

    for bidder in (winner, runner_up, excluded):
        seen = await world.stub.GetCall(
            tendering_pb2.GetCallRequest(name=call.name), metadata=world.provider(bidder.business_id)
        )
        assert seen.state == tendering_pb2.CALL_STATE_STANDSTILL
        assert seen.award_reasons == REASONS
        assert (seen.standstill_end.year, seen.standstill_end.month, seen.standstill_end.day) == (
            2026,
            11,
            26,
        )
        [own] = [s for s in seen.scores if s.bidder == bidder.business_id]
        assert (own.rank, bool(own.excluded_reason)) == {
            winner.business_id: (1, False),
            runner_up.business_id: (2, False),
            excluded.business_id: (0, True),
        }[bidder.business_id]
        listed = await world.stub.ListCalls(
            tendering_pb2.ListCallsRequest(parent=f"regions/{REGION}"),
            metadata=world.provider(bidder.business_id),
        )
        assert [c.award_reasons for c in listed.calls] == [REASONS]
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    [award_release] = [
        r for r in json.loads(exported.release_package_json)["releases"] if r["tag"] == ["award"]
    ]
    assert [a["description"] for a in award_release["awards"]] == [REASONS]
    validate_packages(exported.release_package_json, exported.record_package_json)

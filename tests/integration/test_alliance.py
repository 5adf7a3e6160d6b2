"""Alliances and market failure over gRPC against real databases (SQLite file and PostgreSQL):
findings emit MarketFailureDeclared / MarketFailureLifted (on lift and, by the scheduler's
timer, on expiry) with their fields; direct awards only under a valid finding; and bad alliance
input refused with its reason and nothing stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2
from kasvu.tendering.v1 import alliance_pb2, alliance_pb2_grpc, events_pb2, tendering_pb2, tendering_pb2_grpc
from sqlalchemy import text

from services.runtime.clock import ManualClock
from services.runtime.db import Database
from services.runtime.dispatch import Dispatcher
from services.runtime.worker import Scheduler, Worker
from services.runtime.writer import write_path_for
from services.tendering import alliance, alliance_store, bootstrap, sealing
from services.tendering.alliance_api import AllianceServicer
from services.tendering.grpc_api import TenderingServicer
from tests.conftest import MigratedDatabases
from tests.integration.helpers import Tokens, count_rows, error_reason, field_violations, proto_date, serving
from tests.tendering_ocds import validate_packages

REGION = "pirkanmaa"
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def euros(text_amount: str) -> money_pb2.Money:
    units, _, fraction = text_amount.partition(".")
    return money_pb2.Money(currency_code="EUR", units=int(units), nanos=int((fraction + "0" * 9)[:9]))


@dataclass
class World:
    stub: alliance_pb2_grpc.AllianceServiceStub
    worker: Worker
    clock: ManualClock
    db: Database
    tokens: Tokens
    tendering: tendering_pb2_grpc.TenderingServiceStub
    """Where members enrol the keys they sign consortium bids with."""

    def admin(self, region: str = REGION) -> tuple[tuple[str, str], ...]:
        return self.tokens.admin(region)

    async def enrol_members(self) -> None:
        """The consortium members sign with keys they enrolled, as every bidder must."""
        for business_id, signing in KEYS.items():
            await self.enrol(business_id, signing)

    async def enrol(self, business_id: str, key: Ed25519PrivateKey) -> tendering_pb2.BidderKey:
        bidder_key = tendering_pb2.BidderKey(
            public_key=sealing.raw_public(key), proof=sealing.sign_bidder_key(business_id, key)
        )
        return await self.tendering.EnrolBidderKey(
            tendering_pb2.EnrolBidderKeyRequest(parent=f"bidders/{business_id}", bidder_key=bidder_key),
            metadata=self.tokens.provider(business_id),
        )


@pytest.fixture
async def world(
    database_url: str, tmp_path: Path, migrated_databases: MigratedDatabases
) -> AsyncIterator[World]:
    await migrated_databases.migrate(database_url, bootstrap.MIGRATIONS)
    db = Database(database_url)
    write_path = write_path_for(db)
    clock = ManualClock(T0)
    key = bootstrap.receipt_key(tmp_path / "data")
    dispatcher = Dispatcher(
        service="tendering",
        db=db,
        write_path=write_path,
        unit_of_work=alliance_store.unit_of_work_factory(key),
        event_types=bootstrap.EVENT_TYPES,
        clock=clock,
    )
    dispatcher.register_all(bootstrap.HANDLERS)
    worker = Worker(write_path, service="tendering", jobs=[Scheduler(db, dispatcher)])
    tokens = Tokens.generate(tmp_path / "keys")

    def add_servicers(servicers: tuple[AllianceServicer, TenderingServicer], server: grpc.aio.Server) -> None:
        alliance_pb2_grpc.add_AllianceServiceServicer_to_server(servicers[0], server)
        tendering_pb2_grpc.add_TenderingServiceServicer_to_server(servicers[1], server)

    servicers = (AllianceServicer(dispatcher), TenderingServicer(dispatcher, key.public))
    try:
        async with serving(tokens, add_servicers, servicers) as channel:
            world = World(
                alliance_pb2_grpc.AllianceServiceStub(channel),
                worker,
                clock,
                db,
                tokens,
                tendering_pb2_grpc.TenderingServiceStub(channel),
            )
            yield world
    finally:
        await write_path.close()
        await db.dispose()


async def outbox(db: Database, event_type: str) -> list[bytes]:
    async with db.reader.connect() as connection:
        rows = await connection.execute(
            text("SELECT payload FROM outbox WHERE event_type = :t ORDER BY seq"), {"t": event_type}
        )
        return [bytes(row[0]) for row in rows.all()]


def finding_message(
    valid_until: datetime, *, without_evidence: bool = False
) -> alliance_pb2.MarketFailureFinding:
    finding = alliance_pb2.MarketFailureFinding(
        service="recruitment",
        municipalities=["837", "536"],
        evidence=[
            alliance_pb2.MarketFailureEvidence(
                kind=alliance_pb2.EVIDENCE_KIND_MARKET_SURVEY_NOTICE,
                reference="Hilma 2026-041234",
                summary="Market-survey notice: no qualifying responses in four weeks.",
            )
        ],
        valid_from=ts(T0),
        valid_until=ts(valid_until),
        review_date=proto_date((T0 + (valid_until - T0) / 2).date()),
        criteria="Sufficiency and accessibility: no provider serves the area.",
    )
    if without_evidence:
        finding.ClearField("evidence")
    return finding


async def declare(world: World, valid_until: datetime) -> alliance_pb2.MarketFailureFinding:
    request = alliance_pb2.DeclareMarketFailureRequest(
        parent=f"regions/{REGION}", finding=finding_message(valid_until)
    )
    return await world.stub.DeclareMarketFailure(request, metadata=world.admin())


async def test_findings_emit_declared_and_lifted_events_on_lift_and_on_expiry_by_timer(world: World) -> None:
    until = T0 + timedelta(days=365)
    lifted = await declare(world, until)
    expiring = await declare(world, T0 + timedelta(days=30))
    declared = [
        events_pb2.MarketFailureDeclared.FromString(p)
        for p in await outbox(world.db, "kasvu.tendering.v1.MarketFailureDeclared")
    ]
    assert [e.finding for e in declared] == [lifted.name, expiring.name]
    first = declared[0]
    assert (first.region, first.service, list(first.municipalities)) == (
        REGION,
        "recruitment",
        ["536", "837"],
    )
    assert (first.valid_from.ToDatetime(UTC), first.valid_until.ToDatetime(UTC)) == (T0, until)
    assert first.declare_time.ToDatetime(UTC) == T0

    world.clock.advance(timedelta(days=1))
    request = alliance_pb2.LiftMarketFailureRequest(name=lifted.name, reason="Two providers registered.")
    after = await world.stub.LiftMarketFailure(request, metadata=world.admin())
    assert after.state == alliance_pb2.FINDING_STATE_LIFTED
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await world.stub.LiftMarketFailure(request, metadata=world.admin())
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    world.clock.advance(timedelta(days=29))  # the second finding's validity runs out
    await world.worker.run_once()
    await world.worker.run_once()
    expired = await world.stub.GetMarketFailure(alliance_pb2.GetMarketFailureRequest(name=expiring.name))
    assert expired.state == alliance_pb2.FINDING_STATE_EXPIRED

    events = [
        events_pb2.MarketFailureLifted.FromString(p)
        for p in await outbox(world.db, "kasvu.tendering.v1.MarketFailureLifted")
    ]
    assert [(e.finding, e.lift_time.ToDatetime(UTC)) for e in events] == [
        (lifted.name, T0 + timedelta(days=1)),
        (expiring.name, T0 + timedelta(days=30)),
    ]
    assert all(
        e.region == REGION and e.service == "recruitment" and list(e.municipalities) == ["536", "837"]
        for e in events
    )
    # The lifted finding's timer was cancelled: it lapses once, not again at its own end.
    world.clock.advance(timedelta(days=400))
    await world.worker.run_once()
    assert len(await outbox(world.db, "kasvu.tendering.v1.MarketFailureLifted")) == 2


async def test_a_finding_without_evidence_or_by_another_region_is_refused_and_nothing_stored(
    world: World,
) -> None:
    request = alliance_pb2.DeclareMarketFailureRequest(
        parent=f"regions/{REGION}", finding=finding_message(T0 + timedelta(days=9), without_evidence=True)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.stub.DeclareMarketFailure(request, metadata=world.admin())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finding.evidence" in field_violations(refused.value)
    request = alliance_pb2.DeclareMarketFailureRequest(
        parent=f"regions/{REGION}", finding=finding_message(T0 + timedelta(days=9))
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await world.stub.DeclareMarketFailure(request, metadata=world.admin("uusimaa"))
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_rows(world.db, "tendering_market_failure_findings") == 0
    assert await count_rows(world.db, "outbox") == 0


def award_request(municipality: str = "837") -> alliance_pb2.CreateDirectAwardRequest:
    return alliance_pb2.CreateDirectAwardRequest(
        parent=f"regions/{REGION}",
        direct_award=alliance_pb2.DirectAward(
            service="recruitment",
            municipality=municipality,
            awardee_kind=alliance_pb2.AWARDEE_KIND_IN_HOUSE_ENTITY,
            awardee="1234564-7",
            value=euros("90000.00"),
            reasons="The only producer in the area under the finding.",
        ),
    )


async def test_a_direct_award_to_a_municipality_needs_a_valid_finding_and_records_it(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.stub.CreateDirectAward(award_request(), metadata=world.admin())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused.value) == "NO_MARKET_FAILURE"
    assert await count_rows(world.db, "tendering_market_failure_direct_awards") == 0

    finding = await declare(world, T0 + timedelta(days=365))
    award = await world.stub.CreateDirectAward(award_request(), metadata=world.admin())
    assert award.finding == finding.name
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:  # a municipality outside the finding's area
        await world.stub.CreateDirectAward(award_request("091"), metadata=world.admin())
    assert error_reason(elsewhere.value) == "NO_MARKET_FAILURE"

    lift = alliance_pb2.LiftMarketFailureRequest(name=finding.name, reason="Providers came.")
    await world.stub.LiftMarketFailure(lift, metadata=world.admin())
    with pytest.raises(grpc.aio.AioRpcError) as lapsed:
        await world.stub.CreateDirectAward(award_request(), metadata=world.admin())
    assert error_reason(lapsed.value) == "NO_MARKET_FAILURE"
    assert await count_rows(world.db, "tendering_market_failure_direct_awards") == 1
    assert await count_rows(world.db, "outbox", "event_type = 'kasvu.tendering.v1.DirectAwardMade'") == 1


# -- alliances: bad input refused, nothing stored ------------------------------------------------

A1, A2 = "1234561-2", "1234562-0"
KEYS = {A1: Ed25519PrivateKey.generate(), A2: Ed25519PrivateKey.generate()}


def alliance_message(shares: tuple[str, str, str] = ("50", "30", "20")) -> alliance_pb2.Alliance:
    kinds = (
        alliance_pb2.BUYER_KIND_REGION,
        alliance_pb2.BUYER_KIND_MUNICIPALITY,
        alliance_pb2.BUYER_KIND_MUNICIPALITY,
    )
    return alliance_pb2.Alliance(
        title="Pirkanmaan kasvuallianssi",
        service="recruitment",
        description="Growth services and vitality tasks together.",
        buyers=[
            alliance_pb2.JointBuyer(
                organisation=org, cost_share=share, lead=org == REGION, kind=kind, tasks=[task]
            )
            for org, share, kind, task in zip(
                (REGION, "tampere", "nokia"),
                shares,
                kinds,
                ("recruitment", "business-policy", "employment"),
                strict=True,
            )
        ],
        bid_deadline=ts(T0 + timedelta(days=30)),
        quality_weight="70",
    )


def signed_bid(alliance_name: str, signers: tuple[str, ...]) -> alliance_pb2.ConsortiumBid:
    proposal = alliance.Proposal(alliance_name, (A1, A2), "Plan", Decimal(8), Decimal("2000000.00"))
    document = proposal.encode()
    return alliance_pb2.ConsortiumBid(
        consortium="Kasvu Oy & Osaaja Oy",
        members=[
            alliance_pb2.ConsortiumMember(
                business_id=A1, role="lead", public_key=sealing.raw_public(KEYS[A1]), share="60", lead=True
            ),
            alliance_pb2.ConsortiumMember(
                business_id=A2, role="training", public_key=sealing.raw_public(KEYS[A2]), share="40"
            ),
        ],
        document=document,
        signatures=[
            alliance_pb2.MemberSignature(business_id=b, signature=KEYS[b].sign(document)) for b in signers
        ],
    )


async def test_bad_alliance_input_is_refused_with_its_reason_and_nothing_is_stored(world: World) -> None:
    parent = f"regions/{REGION}"
    with pytest.raises(grpc.aio.AioRpcError) as uneven:
        await world.stub.CreateAlliance(
            alliance_pb2.CreateAllianceRequest(
                parent=parent, alliance=alliance_message(("50", "30", "19.99"))
            ),
            metadata=world.admin(),
        )
    assert uneven.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cost shares must sum to 100 %" in (uneven.value.details() or "")
    assert "alliance.buyers" in field_violations(uneven.value)
    assert await count_rows(world.db, "tendering_alliance_alliances") == 0

    created = await world.stub.CreateAlliance(
        alliance_pb2.CreateAllianceRequest(parent=parent, alliance=alliance_message()), metadata=world.admin()
    )
    await world.enrol_members()
    before = await count_rows(world.db, "outbox")
    with pytest.raises(grpc.aio.AioRpcError) as unsigned:
        await world.stub.SubmitConsortiumBid(
            alliance_pb2.SubmitConsortiumBidRequest(parent=created.name, bid=signed_bid(created.name, (A1,))),
            metadata=world.tokens.provider(A1),
        )
    assert unsigned.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"member {A2} has not signed the bid" in (unsigned.value.details() or "")
    assert await count_rows(world.db, "outbox") == before
    two_leads = signed_bid(created.name, (A1, A2))
    two_leads.members[1].lead = True
    with pytest.raises(grpc.aio.AioRpcError) as ambiguous:
        await world.stub.SubmitConsortiumBid(
            alliance_pb2.SubmitConsortiumBidRequest(parent=created.name, bid=two_leads),
            metadata=world.tokens.provider(A2),
        )
    assert ambiguous.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one member must lead" in (ambiguous.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as not_lead:
        await world.stub.SubmitConsortiumBid(
            alliance_pb2.SubmitConsortiumBidRequest(
                parent=created.name, bid=signed_bid(created.name, (A1, A2))
            ),
            metadata=world.tokens.provider(A2),
        )
    assert not_lead.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bid = await world.stub.SubmitConsortiumBid(
        alliance_pb2.SubmitConsortiumBidRequest(parent=created.name, bid=signed_bid(created.name, (A1, A2))),
        metadata=world.tokens.provider(A1),
    )
    assert bid.document_sha256 == sealing.digest(bid.document)
    exported = await world.stub.ExportAllianceOcds(
        alliance_pb2.ExportAllianceOcdsRequest(name=created.name), metadata=world.admin()
    )
    validate_packages(exported.release_package_json, exported.record_package_json)
    assert '"roles": ["buyer"]' in exported.release_package_json


async def test_a_consortium_bid_signed_with_a_key_not_enrolled_for_its_member_is_refused_and_nothing_kept(
    world: World,
) -> None:
    created = await world.stub.CreateAlliance(
        alliance_pb2.CreateAllianceRequest(parent=f"regions/{REGION}", alliance=alliance_message()),
        metadata=world.admin(),
    )
    await world.enrol_members()
    stranger = Ed25519PrivateKey.generate()
    # A1's own key enrolled by A2 is A1's still: one key, one bidder; so is a fresh key nobody
    # enrolled. Either way A2's signature names a key that says nothing about who made it.
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await world.enrol(A2, KEYS[A1])
    assert (taken.value.code(), error_reason(taken.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BIDDER_KEY_TAKEN",
    )
    tables = ("outbox", "idempotency_keys", "audit_log")
    before = {table: await count_rows(world.db, table) for table in tables}
    for attempt, key in enumerate((stranger, KEYS[A1])):
        bid = signed_bid(created.name, (A1, A2))
        bid.members[1].public_key = sealing.raw_public(key)
        bid.signatures[1].signature = key.sign(bid.document)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.stub.SubmitConsortiumBid(
                alliance_pb2.SubmitConsortiumBidRequest(
                    parent=created.name, bid=bid, request_id=f"consortium-{attempt}"
                ),
                metadata=world.tokens.provider(A1),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(refused.value) == "BIDDER_KEY_NOT_ENROLLED"
        assert field_violations(refused.value) == ["bid.members[1].public_key"]
    assert {table: await count_rows(world.db, table) for table in tables} == before
    listed = await world.stub.ListConsortiumBids(
        alliance_pb2.ListConsortiumBidsRequest(parent=created.name), metadata=world.tokens.provider(A1)
    )
    assert not listed.bids


async def implementing(world: World) -> str:
    """An alliance with consortium A1+A2 selected and implementation started; its name."""
    admin = world.admin()
    created = await world.stub.CreateAlliance(
        alliance_pb2.CreateAllianceRequest(parent=f"regions/{REGION}", alliance=alliance_message()),
        metadata=admin,
    )
    await world.enrol_members()
    bid = await world.stub.SubmitConsortiumBid(
        alliance_pb2.SubmitConsortiumBidRequest(parent=created.name, bid=signed_bid(created.name, (A1, A2))),
        metadata=world.tokens.provider(A1),
    )
    world.clock.advance(timedelta(days=31))
    name = created.name
    await world.stub.ShortlistBids(
        alliance_pb2.ShortlistBidsRequest(name=name, bids=[bid.name], reasons="Meets the minimum."),
        metadata=admin,
    )
    score = alliance_pb2.WorkshopScore(bid=bid.name, score="80")
    await world.stub.ScoreWorkshops(
        alliance_pb2.ScoreWorkshopsRequest(name=name, scores=[score], reasons="Panel."), metadata=admin
    )
    await world.stub.SelectConsortium(
        alliance_pb2.SelectConsortiumRequest(name=name, reasons="Only one."), metadata=admin
    )
    parties = [REGION, "tampere", "nokia", A1, A2]
    kpi = alliance_pb2.Kpi(
        code="employed", result_area="jobs", description="Employed, %", target="60", weight="100"
    )
    period = alliance_pb2.ContractPeriod(
        period="p1",
        start=proto_date(T0.date() + timedelta(days=60)),
        end=proto_date(T0.date() + timedelta(days=425)),
        target_cost=euros("1000000.00"),
        incentive_pool=euros("0.00"),
    )
    for decision in (
        alliance_pb2.LeadershipDecision(
            kind=alliance_pb2.DECISION_KIND_FIX_TARGETS,
            approvals=parties,
            reasons="Together.",
            goals=["Jobs"],
            kpis=[kpi],
            periods=[period],
        ),
        alliance_pb2.LeadershipDecision(
            kind=alliance_pb2.DECISION_KIND_START_IMPLEMENTATION, approvals=parties, reasons="Go."
        ),
    ):
        await world.stub.DecideInLeadershipGroup(
            alliance_pb2.DecideInLeadershipGroupRequest(name=name, decision=decision), metadata=admin
        )
    return name


async def test_a_period_closed_twice_at_once_closes_once(world: World) -> None:
    name = await implementing(world)
    cost = alliance_pb2.CostEntry(period="p1", amount=euros("900000.00"), description="Coaching")
    await world.stub.RecordCost(
        alliance_pb2.RecordCostRequest(parent=name, cost=cost), metadata=world.tokens.provider(A2)
    )
    close = alliance_pb2.ClosePeriodRequest(
        name=f"{name}/periods/p1", kpi_results=[alliance_pb2.KpiResult(code="employed", value="70")]
    )
    outcomes = await asyncio.gather(
        *(world.stub.ClosePeriod(close, metadata=world.admin()) for _ in range(2)), return_exceptions=True
    )
    closed = [o for o in outcomes if isinstance(o, alliance_pb2.PeriodClosing)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(closed) == 1 and len(refused) == 1, outcomes
    assert refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused[0]) == "PERIOD_CLOSED"
    # 100 000.00 saved: half to the providers; A2 recorded every cost, A1 none.
    statements = {s.party: s for s in closed[0].statements}
    assert (statements[A1].net.units, statements[A2].net.units) == (
        80_000 * 60 // 100 + 30_000,
        900_000 + 32_000 + 20_000,
    )
    assert await count_rows(world.db, "outbox", "event_type = 'kasvu.tendering.v1.AlliancePeriodClosed'") == 1

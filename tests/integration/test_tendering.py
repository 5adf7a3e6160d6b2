"""Tendering over gRPC against real databases (SQLite file and PostgreSQL): a framework call from
draft to concluded agreement with sealed bids, the committee's k-of-n opening, scoring, award,
standstill held by an appeal, call-offs past a suspended supplier, and OCDS export."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2
from kasvu.tendering.v1 import tendering_pb2, tendering_pb2_grpc
from sqlalchemy import text

from services.runtime.auth import Principal, Role, mint_token
from services.runtime.clock import ManualClock
from services.runtime.db import Database
from services.runtime.dispatch import Dispatcher
from services.runtime.worker import Scheduler, Worker
from services.runtime.writer import write_path_for
from services.tendering import bootstrap, handlers, model, sealing, store
from services.tendering.grpc_api import TenderingServicer, receipt_of
from tests.conftest import MigratedDatabases
from tests.integration.helpers import (
    Tokens,
    business_ids,
    count_rows,
    error_reason,
    field_violations,
    serving,
)
from tests.tendering_ocds import validate_packages

REGION = "pirkanmaa"
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)  # a Monday
DEADLINE = T0 + timedelta(days=10)
SECRET_MARKER = "SALAINEN-TARJOUS-7f3a"


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def euros(amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", units=amount)


@dataclass
class Member:
    subject: str
    key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)


@dataclass
class Provider:
    business_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    enrolled: bool = False
    """Whether World.bid has enrolled `key` for the provider (bids verify only with such keys)."""

    @property
    def public_key(self) -> bytes:
        return sealing.raw_public(self.key)


def call_message(members: list[Member], **changes: Any) -> tendering_pb2.Call:
    call = tendering_pb2.Call(
        title="Rekrytointipalvelut 2027-2030",
        service="recruitment",
        kind=tendering_pb2.CALL_KIND_FRAMEWORK,
        lots=[
            tendering_pb2.Lot(
                lot="north",
                title="Pohjoinen",
                cpv_codes=["79600000-0"],
                estimated_value=euros(400_000),
                max_suppliers=3,
            ),
            tendering_pb2.Lot(
                lot="south",
                title="Etelä",
                cpv_codes=["79600000-0", "80530000-8"],
                estimated_value=euros(450_000),
                max_suppliers=2,
            ),
        ],
        criteria=[
            tendering_pb2.Criterion(code="price", kind=tendering_pb2.CRITERION_KIND_PRICE, weight="60"),
            tendering_pb2.Criterion(
                code="plan", kind=tendering_pb2.CRITERION_KIND_QUALITY, weight="40", scale_max=5
            ),
        ],
        declarations=[
            tendering_pb2.Declaration(
                code="no-tax-debt", part=tendering_pb2.DECLARATION_PART_EXCLUSION, description="No tax debt"
            ),
            tendering_pb2.Declaration(
                code="turnover",
                part=tendering_pb2.DECLARATION_PART_SELECTION,
                description="Turnover ≥ 100 k€",
            ),
        ],
        questions_deadline=ts(T0 + timedelta(days=5)),
        submission_deadline=ts(DEADLINE),
        framework=tendering_pb2.FrameworkTerms(duration_months=48, offer_hours=24),
        committee=[
            tendering_pb2.CommitteeMember(member=m.subject, public_key=sealing.raw_public(m.key))
            for m in members
        ],
        opening_threshold=2,
    )
    for name, value in changes.items():
        setattr(call, name, value)
    return call


def content(price: int, plan: int, marker: str = SECRET_MARKER) -> bytes:
    document = json.loads(
        model.BidContent(Decimal(price), {"plan": plan}, {"no-tax-debt": True, "turnover": True}).encode()
    )
    document["note"] = marker
    return json.dumps(document, sort_keys=True).encode()


@dataclass
class World:
    stub: tendering_pb2_grpc.TenderingServiceStub
    dispatcher: Dispatcher
    worker: Worker
    clock: ManualClock
    db: Database
    tokens: Tokens
    receipt_key: store.ReceiptKey

    def admin(self, subject: str = "admin") -> tuple[tuple[str, str], ...]:
        token = mint_token(self.tokens.private_pem, Principal(Role.REGION_ADMIN, REGION, subject))
        return (("authorization", f"Bearer {token}"),)

    def provider(self, business_id: str) -> tuple[tuple[str, str], ...]:
        return self.tokens.provider(business_id)

    async def tick(self) -> None:
        await self.worker.run_once()
        await self.worker.run_once()

    async def enrol(
        self, provider: Provider, key: Ed25519PrivateKey | None = None, **overrides: Any
    ) -> tendering_pb2.BidderKey:
        """Enrols `key` (the provider's own by default) for the provider, with its proof."""
        signing = key or provider.key
        bidder_key = tendering_pb2.BidderKey(
            public_key=sealing.raw_public(signing),
            proof=sealing.sign_bidder_key(provider.business_id, signing),
        )
        for name, value in overrides.items():
            setattr(bidder_key, name, value)
        request = tendering_pb2.EnrolBidderKeyRequest(
            parent=f"bidders/{provider.business_id}", bidder_key=bidder_key
        )
        return await self.stub.EnrolBidderKey(request, metadata=self.provider(provider.business_id))

    async def bid(
        self,
        call: tendering_pb2.Call,
        provider: Provider,
        lot: str,
        plaintext: bytes,
        *,
        enrol: bool = True,
        **overrides: Any,
    ) -> tendering_pb2.Bid:
        """The provider's bid, its key enrolled first (once per provider) unless `enrol` is False."""
        if enrol and not provider.enrolled:
            await self.enrol(provider)
            provider.enrolled = True
        sealed = sealing.seal_bid(plaintext, call.opening_public_key, call.name, lot, provider.business_id)
        bid = tendering_pb2.Bid(
            lot=lot,
            public_key=provider.public_key,
            sealed_bid=sealed,
            signature=provider.key.sign(sealed),
            opening_key_sha256=sealing.key_fingerprint(call.opening_public_key),
        )
        for name, value in overrides.items():
            setattr(bid, name, value)
        request = tendering_pb2.SubmitBidRequest(parent=call.name, bid=bid)
        return await self.stub.SubmitBid(request, metadata=self.provider(provider.business_id))


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
        unit_of_work=store.unit_of_work_factory(key),
        event_types=bootstrap.EVENT_TYPES,
        clock=clock,
    )
    dispatcher.register_all(handlers.HANDLERS)
    worker = Worker(write_path, service="tendering", jobs=[Scheduler(db, dispatcher)])
    tokens = Tokens.generate(tmp_path / "keys")
    servicer = TenderingServicer(dispatcher, key.public)
    try:
        async with serving(
            tokens, tendering_pb2_grpc.add_TenderingServiceServicer_to_server, servicer
        ) as channel:
            yield World(
                tendering_pb2_grpc.TenderingServiceStub(channel), dispatcher, worker, clock, db, tokens, key
            )
    finally:
        await write_path.close()
        await db.dispose()


async def all_rows_text(db: Database) -> str:
    """Every row of every table, bytes and text alike, as one searchable string."""
    async with db.reader.connect() as connection:
        if connection.dialect.name == "sqlite":
            names = (
                (await connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'")))
                .scalars()
                .all()
            )
        else:
            names = (
                (
                    await connection.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                )
                .scalars()
                .all()
            )
        dump = []
        for name in names:
            for row in (await connection.execute(text(f'SELECT * FROM "{name}"'))).all():
                for value in row:
                    dump.append(
                        bytes(value).decode("latin-1")
                        if isinstance(value, bytes | memoryview)
                        else str(value)
                    )
    return "\n".join(dump)


@contextlib.asynccontextmanager
async def published(world: World, members: list[Member]) -> AsyncIterator[tendering_pb2.Call]:
    draft = await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=call_message(members)),
        metadata=world.admin(),
    )
    assert draft.state == tendering_pb2.CALL_STATE_DRAFT
    call = await world.stub.PublishCall(
        tendering_pb2.PublishCallRequest(name=draft.name), metadata=world.admin()
    )
    yield call


async def share_of(
    world: World, call: tendering_pb2.Call, members: list[Member], index: int
) -> tendering_pb2.Call:
    member = members[index]
    share = sealing.open_share(call.committee[index].sealed_share, member.key, call.name, index)
    request = tendering_pb2.SubmitOpeningShareRequest(name=call.name, share=share)
    return await world.stub.SubmitOpeningShare(request, metadata=world.admin(member.subject))


async def test_a_framework_tender_runs_from_draft_to_agreement_and_call_offs_skip_a_suspended_supplier(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    members = [Member("alice"), Member("bob"), Member("carol")]
    next_id = business_ids()
    providers = [Provider(next_id()) for _ in range(3)]
    async with published(world, members) as call:
        assert call.state == tendering_pb2.CALL_STATE_PUBLISHED and call.regime == "EU"
        listing = await world.stub.ListCalls(tendering_pb2.ListCallsRequest(parent=f"regions/{REGION}"))
        assert [c.name for c in listing.calls] == [call.name]

        # A question, answered to all without its asker.
        asked = await world.stub.AskQuestion(
            tendering_pb2.AskQuestionRequest(
                parent=call.name,
                clarification=tendering_pb2.Clarification(question="Is Lapland in lot north?"),
            ),
            metadata=world.provider(providers[0].business_id),
        )
        await world.stub.AnswerQuestion(
            tendering_pb2.AnswerQuestionRequest(name=asked.name, answer="Yes."), metadata=world.admin()
        )
        answers = await world.stub.ListClarifications(
            tendering_pb2.ListClarificationsRequest(parent=call.name)
        )
        assert [(c.question, c.answer) for c in answers.clarifications] == [
            ("Is Lapland in lot north?", "Yes.")
        ]
        assert providers[0].business_id not in str(answers)

        # Three bidders, both lots; the first replaces its bid for the north lot.
        first = await world.bid(call, providers[0], "north", content(120_000, 3))
        replaced = await world.bid(call, providers[0], "north", content(100_000, 5))
        await world.bid(call, providers[1], "north", content(90_000, 3))
        await world.bid(call, providers[2], "north", content(110_000, 4))
        await world.bid(call, providers[1], "south", content(200_000, 4))
        await world.bid(call, providers[2], "south", content(180_000, 2))
        withdrawn = await world.bid(call, providers[0], "south", content(150_000, 1))
        await world.stub.WithdrawBid(
            tendering_pb2.WithdrawBidRequest(name=withdrawn.name),
            metadata=world.provider(providers[0].business_id),
        )
        assert sealing.verify_receipt(
            receipt_of(replaced), replaced.receipt.signature, call.receipt_public_key
        )
        own = await world.stub.ListBids(
            tendering_pb2.ListBidsRequest(parent=call.name), metadata=world.provider(providers[0].business_id)
        )
        assert {b.name: b.state for b in own.bids} == {
            first.name: tendering_pb2.BID_STATE_REPLACED,
            replaced.name: tendering_pb2.BID_STATE_SEALED,
            withdrawn.name: tendering_pb2.BID_STATE_WITHDRAWN,
        }

        # Before the deadline: no row, no log line, no API answer holds a bid's plaintext.
        with pytest.raises(grpc.aio.AioRpcError) as sealed_for_admin:
            await world.stub.ListBids(tendering_pb2.ListBidsRequest(parent=call.name), metadata=world.admin())
        assert sealed_for_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert SECRET_MARKER not in await all_rows_text(world.db)
        assert SECRET_MARKER not in caplog.text
        assert SECRET_MARKER not in str(own) + str(
            await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
        )

        # k shares before the deadline open nothing, and are not kept.
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await share_of(world, call, members, 0)
        assert error_reason(early.value) == "DEADLINE_NOT_PASSED"
        assert await count_rows(world.db, "tendering_opening_shares") == 0

        # The deadline timer closes the call; a late bid is refused.
        world.clock.set(DEADLINE + timedelta(minutes=1))
        await world.tick()
        closed = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
        assert closed.state == tendering_pb2.CALL_STATE_CLOSED
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await world.bid(call, providers[0], "south", content(1, 1))
        assert error_reason(late.value) == "DEADLINE_PASSED"

        # k - 1 shares open nothing; the k-th opens every bid at once.
        after_one = await share_of(world, call, members, 2)
        assert after_one.state == tendering_pb2.CALL_STATE_CLOSED and not after_one.scores
        assert SECRET_MARKER not in await all_rows_text(world.db)
        opened = await share_of(world, call, members, 0)
        assert opened.state == tendering_pb2.CALL_STATE_EVALUATED
        assert await count_rows(world.db, "tendering_opening_shares") == 0

    ranking = {(s.lot, s.bidder): (s.rank, s.total) for s in opened.scores}
    # north: lowest 90 000. p0: 60x0.9=54 + 40 = 94; p1: 60 + 24 = 84; p2: 49.09 + 32 = 81.09
    assert ranking[("north", providers[0].business_id)] == (1, "94.00")
    assert ranking[("north", providers[1].business_id)] == (2, "84.00")
    assert ranking[("north", providers[2].business_id)] == (3, "81.09")
    # south: lowest 180 000. p1: 54 + 32 = 86; p2: 60 + 16 = 76
    assert ranking[("south", providers[1].business_id)] == (1, "86.00")
    assert ranking[("south", providers[2].business_id)] == (2, "76.00")

    # The bidder checks its bid opened unaltered: the receipt's ciphertext and its own plaintext.
    mine = await world.stub.GetBid(
        tendering_pb2.GetBidRequest(name=replaced.name), metadata=world.provider(providers[0].business_id)
    )
    assert mine.plaintext_sha256 == hashlib.sha256(content(100_000, 5)).hexdigest()
    assert mine.receipt.ciphertext_sha256 == replaced.receipt.ciphertext_sha256

    # The award on Thursday 12 November 2026 is decided, not yet served: no standstill runs.
    world.clock.set(datetime(2026, 11, 12, 10, tzinfo=UTC))
    awarded = await world.stub.AwardCall(
        tendering_pb2.AwardCallRequest(name=call.name, reasons="Best price-quality ratio per lot."),
        metadata=world.admin(),
    )
    assert awarded.state == tendering_pb2.CALL_STATE_AWARDED and not awarded.HasField("standstill_end")
    # Served to every bidder the next day: standstill to Friday 27 November, 14 days on.
    world.clock.set(datetime(2026, 11, 13, 9, tzinfo=UTC))
    served = await world.stub.ServeAwardDecision(
        tendering_pb2.ServeAwardDecisionRequest(name=call.name), metadata=world.admin()
    )
    assert served.state == tendering_pb2.CALL_STATE_STANDSTILL
    assert (served.standstill_end.year, served.standstill_end.month, served.standstill_end.day) == (
        2026,
        11,
        27,
    )
    appealed = await world.stub.RecordAppeal(
        tendering_pb2.RecordAppealRequest(name=call.name, kind="RECTIFICATION"), metadata=world.admin()
    )
    world.clock.set(datetime(2026, 11, 28, 12, tzinfo=UTC))
    await world.tick()
    held = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert held.state == tendering_pb2.CALL_STATE_STANDSTILL
    concluded = await world.stub.ResolveAppeal(
        tendering_pb2.ResolveAppealRequest(name=call.name, appeal=appealed.appeals[0].appeal),
        metadata=world.admin(),
    )
    assert concluded.state == tendering_pb2.CALL_STATE_CONCLUDED
    framework = await world.stub.GetFramework(
        tendering_pb2.GetFrameworkRequest(name=concluded.framework_agreement)
    )
    assert [(s.lot, s.business_id, s.rank) for s in framework.suppliers if s.lot == "north"] == [
        ("north", providers[0].business_id, 1),
        ("north", providers[1].business_id, 2),
        ("north", providers[2].business_id, 3),
    ]

    # The first-ranked supplier is suspended (a registry event): the call-off skips it.
    await world.dispatcher.handle(
        handlers.SetSupplierEligibility(REGION, "recruitment", providers[0].business_id, False, "breach-1")
    )
    marked = await world.stub.GetFramework(tendering_pb2.GetFrameworkRequest(name=framework.name))
    assert [s.business_id for s in marked.suppliers if s.suspended] == [providers[0].business_id]
    call_off = await world.stub.CreateCallOff(
        tendering_pb2.CreateCallOffRequest(
            parent=framework.name,
            call_off=tendering_pb2.CallOff(lot="north", description="20 rekrytointia", value=euros(30_000)),
        ),
        metadata=world.admin(),
    )
    assert (call_off.offered_to, list(call_off.skipped)) == (
        providers[1].business_id,
        [providers[0].business_id],
    )
    with pytest.raises(grpc.aio.AioRpcError) as not_offered:
        await world.stub.AcceptCallOff(
            tendering_pb2.AcceptCallOffRequest(name=call_off.name),
            metadata=world.provider(providers[0].business_id),
        )
    assert error_reason(not_offered.value) == "NOT_OFFERED"
    # The second lets the offer lapse: the timer offers it to the third, who accepts.
    world.clock.set(world.clock.now() + timedelta(hours=25))
    await world.tick()
    listed = await world.stub.ListCallOffs(
        tendering_pb2.ListCallOffsRequest(parent=framework.name), metadata=world.admin()
    )
    assert listed.call_offs[0].offered_to == providers[2].business_id
    accepted = await world.stub.AcceptCallOff(
        tendering_pb2.AcceptCallOffRequest(name=call_off.name),
        metadata=world.provider(providers[2].business_id),
    )
    assert accepted.state == tendering_pb2.CALL_OFF_STATE_ACCEPTED

    # Reinstated, the first-ranked supplier is offered the next call-off again.
    await world.dispatcher.handle(
        handlers.SetSupplierEligibility(REGION, "recruitment", providers[0].business_id, True)
    )
    again = await world.stub.CreateCallOff(
        tendering_pb2.CreateCallOffRequest(
            parent=framework.name,
            call_off=tendering_pb2.CallOff(lot="north", description="5 rekrytointia", value=euros(8_000)),
        ),
        metadata=world.admin(),
    )
    assert again.offered_to == providers[0].business_id and not again.skipped

    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    releases = json.loads(exported.release_package_json)["releases"]
    assert [r["tag"] for r in releases if r["ocid"].endswith(call.name.rsplit("/", 1)[1])] == [
        ["tender"],
        ["award"],
        ["awardUpdate"],
        ["contract"],
    ]
    assert sum(1 for r in releases if r.get("relatedProcesses")) == 2
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_bad_bids_are_refused_with_their_reason_and_nothing_is_stored(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    provider = Provider(business_ids()())
    async with published(world, members) as call, published(world, members) as other:

        async def refused(**kwargs: Any) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await world.bid(call, provider, kwargs.pop("lot", "north"), content(1000, 1), **kwargs)
            return error.value

        unknown_lot = await refused(lot="west")
        assert unknown_lot.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(unknown_lot) == [
            "bid.lot"
        ]
        # A key the bidder never enrolled: its signature is not even looked at.
        other_key = await refused(public_key=sealing.raw_public(Ed25519PrivateKey.generate()))
        assert field_violations(other_key) == ["bid.public_key"]
        assert error_reason(other_key) == "BIDDER_KEY_NOT_ENROLLED"
        tampered = await refused(sealed_bid=b"\x00" * 80)
        assert field_violations(tampered) == ["bid.signature"]
        sealed_elsewhere = sealing.seal_bid(
            b"x", other.opening_public_key, other.name, "north", provider.business_id
        )
        foreign = await refused(
            sealed_bid=sealed_elsewhere,
            signature=provider.key.sign(sealed_elsewhere),
            opening_key_sha256=sealing.key_fingerprint(other.opening_public_key),
        )
        assert field_violations(foreign) == ["bid.opening_key_sha256"]
        assert await count_rows(world.db, "tendering_bids") == 0

        with pytest.raises(grpc.aio.AioRpcError) as early_award:
            await world.stub.AwardCall(
                tendering_pb2.AwardCallRequest(name=call.name, reasons="x"), metadata=world.admin()
            )
        assert error_reason(early_award.value) == "CALL_STATE"


async def test_a_framework_longer_than_four_years_without_justification_is_refused_and_drafts_stay_private(
    world: World,
) -> None:
    members = [Member("alice")]
    too_long = call_message(members, opening_threshold=1)
    too_long.framework.duration_months = 60
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.stub.CreateCall(
            tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=too_long), metadata=world.admin()
        )
    assert field_violations(refused.value) == ["call.framework.justification"]
    assert await count_rows(world.db, "tendering_calls") == 0
    too_long.framework.justification = "Training programmes run five years."
    draft = await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=too_long), metadata=world.admin()
    )
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await world.stub.GetCall(tendering_pb2.GetCallRequest(name=draft.name))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    listing = await world.stub.ListCalls(tendering_pb2.ListCallsRequest(parent=f"regions/{REGION}"))
    assert not listing.calls


async def test_amending_invalidates_bids_and_moves_the_deadline_and_cancelling_ends_the_call(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    provider = Provider(business_ids()())
    async with published(world, members) as call:
        bid = await world.bid(call, provider, "north", content(1000, 1))
        amended_terms = call_message(members)
        amended_terms.submission_deadline.CopyFrom(ts(DEADLINE + timedelta(days=3)))
        amended = await world.stub.AmendCall(
            tendering_pb2.AmendCallRequest(name=call.name, call=amended_terms), metadata=world.admin()
        )
        assert amended.state == tendering_pb2.CALL_STATE_AMENDED and amended.amendment == 1
        again = await world.stub.GetBid(
            tendering_pb2.GetBidRequest(name=bid.name), metadata=world.provider(provider.business_id)
        )
        assert again.state == tendering_pb2.BID_STATE_INVALIDATED
        world.clock.set(DEADLINE + timedelta(hours=1))
        await world.tick()
        still_open = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
        assert still_open.state == tendering_pb2.CALL_STATE_AMENDED
        await world.bid(call, provider, "north", content(900, 2))
        exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
        tags = [r["tag"] for r in json.loads(exported.release_package_json)["releases"]]
        assert tags == [["tender"], ["tenderAmendment"]]
        validate_packages(exported.release_package_json, exported.record_package_json)
        cancelled = await world.stub.CancelCall(
            tendering_pb2.CancelCallRequest(name=call.name, reason="The need changed."),
            metadata=world.admin(),
        )
        assert (
            cancelled.state == tendering_pb2.CALL_STATE_CANCELLED
            and cancelled.end_reason == "The need changed."
        )
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await world.bid(call, provider, "north", content(800, 2))
        assert error_reason(late.value) == "CALL_STATE"
        exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
        releases = json.loads(exported.release_package_json)["releases"]
        assert (
            releases[-1]["tag"] == ["tenderCancellation"] and releases[-1]["tender"]["status"] == "cancelled"
        )
        validate_packages(exported.release_package_json, exported.record_package_json)


async def concluded_framework(
    world: World, members: list[Member], providers: list[Provider], method: int
) -> tendering_pb2.Framework:
    """A framework call run to conclusion with each provider bidding on lot north."""
    message = call_message(members)
    message.framework.call_off_method = method  # type: ignore[assignment]
    draft = await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=message), metadata=world.admin()
    )
    call = await world.stub.PublishCall(
        tendering_pb2.PublishCallRequest(name=draft.name), metadata=world.admin()
    )
    for rank, provider in enumerate(providers):
        await world.bid(call, provider, "north", content(100_000 + 10_000 * rank, 3))
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    await share_of(world, call, members, 0)
    await share_of(world, call, members, 1)
    world.clock.set(datetime(2026, 11, 12, 10, tzinfo=UTC))
    await world.stub.AwardCall(
        tendering_pb2.AwardCallRequest(name=call.name, reasons="Ranked."), metadata=world.admin()
    )
    await world.stub.ServeAwardDecision(
        tendering_pb2.ServeAwardDecisionRequest(name=call.name), metadata=world.admin()
    )
    world.clock.set(datetime(2026, 11, 27, 12, tzinfo=UTC))
    await world.tick()
    concluded = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name))
    assert concluded.state == tendering_pb2.CALL_STATE_CONCLUDED
    return await world.stub.GetFramework(
        tendering_pb2.GetFrameworkRequest(name=concluded.framework_agreement)
    )


async def test_a_mini_competition_is_a_sealed_round_among_the_eligible_framework_suppliers(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    next_id = business_ids(4_000_000)
    providers = [Provider(next_id()) for _ in range(3)]
    framework = await concluded_framework(
        world, members, providers, tendering_pb2.CALL_OFF_METHOD_MINI_COMPETITION
    )
    await world.dispatcher.handle(
        handlers.SetSupplierEligibility(REGION, "recruitment", providers[2].business_id, False, "breach-9")
    )
    with pytest.raises(grpc.aio.AioRpcError) as by_rank:
        await world.stub.CreateCallOff(
            tendering_pb2.CreateCallOffRequest(
                parent=framework.name,
                call_off=tendering_pb2.CallOff(lot="north", description="x", value=euros(1)),
            ),
            metadata=world.admin(),
        )
    assert error_reason(by_rank.value) == "CALL_OFF_METHOD"
    round_ = await world.stub.StartMiniCompetition(
        tendering_pb2.StartMiniCompetitionRequest(
            name=framework.name,
            call_off=tendering_pb2.CallOff(lot="north", description="12 rekrytointia", value=euros(20_000)),
        ),
        metadata=world.admin(),
    )
    assert round_.state == tendering_pb2.CALL_STATE_PUBLISHED and round_.parent_framework == framework.name
    assert list(round_.invited) == [providers[0].business_id, providers[1].business_id]
    with pytest.raises(grpc.aio.AioRpcError) as suspended:
        await world.bid(round_, providers[2], "north", content(1_000, 5))
    assert error_reason(suspended.value) == "NOT_INVITED"
    outsider = Provider(next_id())
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await world.bid(round_, outsider, "north", content(1_000, 5))
    assert error_reason(stranger.value) == "NOT_INVITED"
    await world.bid(round_, providers[0], "north", content(20_000, 2))
    await world.bid(round_, providers[1], "north", content(18_000, 4))
    world.clock.set(world.clock.now() + timedelta(hours=73))
    await world.tick()
    await share_of(world, round_, members, 1)
    opened = await share_of(world, round_, members, 2)
    assert [(s.bidder, s.rank) for s in opened.scores] == [
        (providers[1].business_id, 1),
        (providers[0].business_id, 2),
    ]
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=round_.name))
    releases = json.loads(exported.release_package_json)["releases"]
    assert all(r["relatedProcesses"][0]["relationship"] == ["framework"] for r in releases)
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_a_bid_changed_in_the_database_after_its_receipt_opens_as_unopenable_and_is_not_ranked(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    next_id = business_ids(3_456_780)
    honest, tampered = Provider(next_id()), Provider(next_id())
    async with published(world, members) as call:
        kept = await world.bid(call, honest, "north", content(100_000, 4))
        changed = await world.bid(call, tampered, "north", content(90_000, 5))
    # Someone with the database flips a byte of a stored ciphertext: the bidder's signature no
    # longer verifies, so opening refuses to read it rather than score what it was not sent.
    bid_id = model.BID.parse(changed.name, "name")["bid"]
    async with world.db.writer.begin() as connection:
        sealed = (
            await connection.execute(text("SELECT sealed FROM tendering_bids WHERE id = :id"), {"id": bid_id})
        ).scalar_one()
        altered = bytes([sealed[0] ^ 1]) + bytes(sealed[1:])
        await connection.execute(
            text("UPDATE tendering_bids SET sealed = :sealed WHERE id = :id"),
            {"sealed": altered, "id": bid_id},
        )
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    await share_of(world, call, members, 0)
    opened = await share_of(world, call, members, 1)
    assert opened.state == tendering_pb2.CALL_STATE_EVALUATED
    scores = {s.bidder: s for s in opened.scores}
    assert scores[honest.business_id].rank == 1
    assert scores[tampered.business_id].rank == 0
    assert "could not be opened" in scores[tampered.business_id].excluded_reason
    bids = await world.stub.ListBids(tendering_pb2.ListBidsRequest(parent=call.name), metadata=world.admin())
    assert {b.name: b.state for b in bids.bids} == {
        kept.name: tendering_pb2.BID_STATE_OPENED,
        changed.name: tendering_pb2.BID_STATE_UNOPENABLE,
    }
    assert {b.name: b.plaintext_sha256 for b in bids.bids} == {
        kept.name: hashlib.sha256(content(100_000, 4)).hexdigest(),
        changed.name: "",
    }

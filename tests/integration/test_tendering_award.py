# ruff: noqa: F811 - the tendering fixture is test_tendering's
"""Tendering's award decision and its service over gRPC against real SQLite and PostgreSQL: the call
is AWARDED until the decision is served to every bidder, the standstill and the conclusion's timer
count from the day served, serving is refused out of turn with nothing stored, a cancelled award is
never served, appeals are recorded and resolved only while the decision stands, and calls stored
before serving existed read as served at their award."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import grpc
from alembic import command
from kasvu.tendering.v1 import events_pb2, tendering_pb2
from sqlalchemy import text

from services.runtime import codec
from services.runtime.db import Database
from services.runtime.migrate import alembic_config, upgrade_async
from services.tendering import bootstrap, model, store
from tests.integration.helpers import business_ids, count_rows, error_reason
from tests.integration.test_tendering import (  # noqa: F401 - the fixture
    DEADLINE,
    Member,
    Provider,
    World,
    call_message,
    content,
    world,
)
from tests.integration.test_tendering_paths import cancel, get, refused
from tests.integration.test_tendering_rules import (
    AWARDED_ON,
    award,
    open_after_deadline,
    publish,
    tendering_payloads,
)
from tests.tendering_ocds import validate_packages
from tests.unit.test_tendering_model import spec

SERVED_ON = datetime(2026, 12, 11, 10, tzinfo=UTC)  # a Friday: 14 days on is Christmas Day
# Christmas Day, Boxing Day (a Saturday) and a Sunday: the last day is Monday 28 December, which
# runs out at midnight in Helsinki (UTC+2).
LAST_DAY_RUNS_OUT = datetime(2026, 12, 28, 22, tzinfo=UTC)


def serve_request(call: tendering_pb2.Call) -> tendering_pb2.ServeAwardDecisionRequest:
    return tendering_pb2.ServeAwardDecisionRequest(name=call.name)


async def evaluated(world: World, first_id: int) -> tuple[tendering_pb2.Call, list[Provider]]:
    """A framework call opened and scored: two bidders on north, one excluded on south."""
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(first_id)
    providers = [Provider(next_id()) for _ in range(3)]
    call = await publish(world, call_message(members))
    await world.bid(call, providers[0], "north", content(100_000, 4))
    await world.bid(call, providers[1], "north", content(110_000, 3))
    excluded = json.loads(content(90_000, 5))
    excluded["declarations"]["turnover"] = False
    await world.bid(call, providers[2], "south", json.dumps(excluded).encode())
    await open_after_deadline(world, call, members)
    return call, providers


async def test_the_standstill_counts_from_the_day_the_decision_is_served_not_from_the_award(
    world: World,
) -> None:
    call, providers = await evaluated(world, 7_100_000)
    awarded = await award(world, call)
    assert awarded.state == tendering_pb2.CALL_STATE_AWARDED
    assert not awarded.HasField("standstill_end") and not awarded.HasField("serve_time")
    assert awarded.award_time.ToDatetime(tzinfo=UTC) == AWARDED_ON
    [decided] = map(events_pb2.CallAwarded.FromString, await tendering_payloads(world.db, "CallAwarded"))
    assert len(decided.winners) == 2

    # A rectification request against the decision is taken before it is served, and resolved.
    appealed = await world.stub.RecordAppeal(
        tendering_pb2.RecordAppealRequest(name=call.name, kind="RECTIFICATION"), metadata=world.admin()
    )
    assert appealed.state == tendering_pb2.CALL_STATE_AWARDED
    resolved = await world.stub.ResolveAppeal(
        tendering_pb2.ResolveAppealRequest(name=call.name, appeal=appealed.appeals[0].appeal),
        metadata=world.admin(),
    )
    assert resolved.state == tendering_pb2.CALL_STATE_AWARDED

    # Fourteen days after the decision nothing has run out: it was not served.
    world.clock.set(AWARDED_ON + timedelta(days=20))
    await world.tick()
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_AWARDED
    assert await tendering_payloads(world.db, "CallConcluded") == []

    world.clock.set(SERVED_ON)
    served = await world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin())
    assert served.state == tendering_pb2.CALL_STATE_STANDSTILL
    assert (served.standstill_end.year, served.standstill_end.month, served.standstill_end.day) == (
        2026,
        12,
        28,
    )
    assert served.serve_time.ToDatetime(tzinfo=UTC) == SERVED_ON
    [event] = map(
        events_pb2.AwardDecisionServed.FromString, await tendering_payloads(world.db, "AwardDecisionServed")
    )
    assert list(event.bidders) == sorted(p.business_id for p in providers)
    assert (event.served_on.month, event.served_on.day) == (12, 11)
    assert (event.standstill_end.month, event.standstill_end.day) == (12, 28)

    # The conclusion's timer fires when the last day has run out, not before.
    world.clock.set(LAST_DAY_RUNS_OUT - timedelta(seconds=1))
    await world.tick()
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_STANDSTILL
    world.clock.set(LAST_DAY_RUNS_OUT)
    await world.tick()
    done = await get(world, call)
    assert done.state == tendering_pb2.CALL_STATE_CONCLUDED and done.framework_agreement

    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    releases = json.loads(exported.release_package_json)["releases"]
    assert [r["tag"] for r in releases] == [["tender"], ["award"], ["awardUpdate"], ["contract"]]
    assert "standstillPeriod" not in releases[1]["tender"]
    assert releases[2]["date"] == SERVED_ON.isoformat()
    assert releases[2]["tender"]["standstillPeriod"] == {
        "startDate": SERVED_ON.isoformat(),
        "endDate": "2026-12-28T23:59:59+02:00",
    }
    assert [a["status"] for a in releases[2]["awards"]] == ["pending"]
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_serving_out_of_turn_or_by_a_provider_is_refused_and_stores_nothing(world: World) -> None:
    call, providers = await evaluated(world, 7_200_000)
    audited = await count_rows(world.db, "audit_log")
    unmade = await refused(world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin()))
    assert unmade.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(unmade) == "CALL_STATE"
    assert "AWARDED" in (unmade.details() or "")
    await award(world, call)
    audited = await count_rows(world.db, "audit_log")
    bidder = await refused(
        world.stub.ServeAwardDecision(serve_request(call), metadata=world.provider(providers[0].business_id))
    )
    assert bidder.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_AWARDED
    assert await count_rows(world.db, "audit_log") == audited

    await world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin())
    audited = await count_rows(world.db, "audit_log")
    world.clock.set(AWARDED_ON + timedelta(days=3))
    twice = await refused(world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin()))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(twice) == "CALL_STATE"
    again = await get(world, call)
    assert again.serve_time.ToDatetime(tzinfo=UTC) == AWARDED_ON
    assert (again.standstill_end.month, again.standstill_end.day) == (11, 26)
    assert len(await tendering_payloads(world.db, "AwardDecisionServed")) == 1
    assert await count_rows(world.db, "audit_log") == audited


async def test_an_award_cancelled_before_it_is_served_is_never_served_and_never_concludes(
    world: World,
) -> None:
    call, _ = await evaluated(world, 7_300_000)
    await award(world, call)
    cancelled = await cancel(world, call, "The award rested on a miscounted score.")
    assert cancelled.state == tendering_pb2.CALL_STATE_CANCELLED
    late = await refused(world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin()))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(late) == "CALL_STATE"
    world.clock.set(AWARDED_ON + timedelta(days=30))
    await world.tick()
    later = await get(world, call)
    assert later.state == tendering_pb2.CALL_STATE_CANCELLED and not later.HasField("standstill_end")
    assert await tendering_payloads(world.db, "AwardDecisionServed") == []
    assert await count_rows(world.db, "tendering_frameworks") == 0
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    assert json.loads(exported.release_package_json)["releases"][-1]["tag"] == ["tenderCancellation"]
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_calls_stored_before_the_decision_was_served_apart_read_as_served_at_their_award(
    database_url: str,
) -> None:
    """The revision that added served_at fills it in for calls already stored, so they decode."""
    config = alembic_config(database_url, bootstrap.MIGRATIONS)
    await asyncio.to_thread(command.upgrade, config, "f962833c794b")
    stored = {
        "in-standstill": (model.CallState.STANDSTILL, True),
        "cancelled-in-standstill": (model.CallState.CANCELLED, True),
        "evaluated": (model.CallState.EVALUATED, False),
    }
    db = Database(database_url)
    try:
        async with db.writer.begin() as connection:
            for call_id, (state, was_awarded) in stored.items():
                call = model.Call(call_id, "pirkanmaa", spec(), state, AWARDED_ON, AWARDED_ON)
                if was_awarded:
                    call.awarded_at = AWARDED_ON
                    call.standstill_end = model.standstill_end(AWARDED_ON.date())
                document = json.loads(codec.dumps(call))
                del document["served_at"]  # as the older code wrote it
                await connection.execute(
                    store.CALLS.insert().values(
                        id=call_id,
                        region="pirkanmaa",
                        state=str(state),
                        listed=True,
                        created_at=AWARDED_ON,
                        document=json.dumps(document, sort_keys=True, separators=(",", ":")),
                        scores_json="[]",
                    )
                )
        await upgrade_async(database_url, bootstrap.MIGRATIONS)
        async with db.reader.connect() as connection:
            found = await connection.execute(text("SELECT id, document FROM tendering_calls"))
            rows: dict[str, str] = {call_id: document for call_id, document in found.all()}
    finally:
        await db.dispose()
    calls = {call_id: codec.loads(model.Call, document) for call_id, document in rows.items()}
    assert calls["in-standstill"].served_at == AWARDED_ON
    assert calls["cancelled-in-standstill"].served_at == AWARDED_ON
    assert calls["evaluated"].served_at is None


async def test_an_appeal_is_not_resolved_once_the_call_is_cancelled_and_nothing_is_stored(
    world: World,
) -> None:
    call, _ = await evaluated(world, 7_400_000)
    await award(world, call)
    appealed = await world.stub.RecordAppeal(
        tendering_pb2.RecordAppealRequest(name=call.name, kind="MARKET_COURT"), metadata=world.admin()
    )
    appeal = appealed.appeals[0].appeal
    await cancel(world, call, "The Market Court's ruling: procure again.")
    audited = await count_rows(world.db, "audit_log")

    resolving = await refused(
        world.stub.ResolveAppeal(
            tendering_pb2.ResolveAppealRequest(name=call.name, appeal=appeal), metadata=world.admin()
        )
    )
    assert resolving.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(resolving) == "CALL_STATE"
    assert "is CANCELLED: resolving an appeal" in (resolving.details() or "")
    recording = await refused(
        world.stub.RecordAppeal(
            tendering_pb2.RecordAppealRequest(name=call.name, kind="RECTIFICATION"), metadata=world.admin()
        )
    )
    assert recording.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(recording) == "CALL_STATE"

    later = await get(world, call)
    assert later.state == tendering_pb2.CALL_STATE_CANCELLED
    assert [(a.appeal, a.resolved) for a in later.appeals] == [(appeal, False)]
    assert await tendering_payloads(world.db, "AppealResolved") == []
    assert len(await tendering_payloads(world.db, "AppealRecorded")) == 1
    assert await count_rows(world.db, "audit_log") == audited


async def test_no_appeal_is_recorded_or_resolved_before_an_award_or_after_conclusion(world: World) -> None:
    call, _ = await evaluated(world, 7_500_000)

    async def both_refused() -> None:
        audited = await count_rows(world.db, "audit_log")
        record = tendering_pb2.RecordAppealRequest(name=call.name, kind="RECTIFICATION")
        resolve = tendering_pb2.ResolveAppealRequest(name=call.name, appeal="a1")
        for error in (
            await refused(world.stub.RecordAppeal(record, metadata=world.admin())),
            await refused(world.stub.ResolveAppeal(resolve, metadata=world.admin())),
        ):
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "CALL_STATE"
        assert await count_rows(world.db, "audit_log") == audited

    await both_refused()  # evaluated: no decision to contest yet
    await award(world, call)
    await world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin())
    world.clock.set(AWARDED_ON + timedelta(days=20))
    await world.tick()
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_CONCLUDED
    await both_refused()  # concluded: the contract stands
    assert await tendering_payloads(world.db, "AppealRecorded") == []


async def test_a_decision_that_no_bid_wins_is_served_once_to_every_bidder_and_may_be_appealed(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(7_600_000)
    providers = [Provider(next_id()) for _ in range(2)]
    call = await publish(world, call_message(members))
    excluded = json.loads(content(90_000, 5))
    excluded["declarations"]["turnover"] = False
    for provider, lot in zip(providers, ("north", "south"), strict=True):
        await world.bid(call, provider, lot, json.dumps(excluded).encode())
    await open_after_deadline(world, call, members)
    ended = await award(world, call)
    assert ended.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL and not ended.HasField("serve_time")

    world.clock.set(SERVED_ON)
    served = await world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin())
    assert served.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    assert served.serve_time.ToDatetime(tzinfo=UTC) == SERVED_ON
    assert not served.HasField("standstill_end")
    [event] = map(
        events_pb2.AwardDecisionServed.FromString, await tendering_payloads(world.db, "AwardDecisionServed")
    )
    assert sorted(event.bidders) == sorted(p.business_id for p in providers)
    assert (event.served_on.month, event.served_on.day) == (12, 11)
    assert not event.HasField("standstill_end")

    audited = await count_rows(world.db, "audit_log")
    twice = await refused(world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin()))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(twice) == "CALL_STATE"
    assert len(await tendering_payloads(world.db, "AwardDecisionServed")) == 1
    assert await count_rows(world.db, "audit_log") == audited

    # The bidders may contest it; the call stays ended and nothing is ever concluded.
    appealed = await world.stub.RecordAppeal(
        tendering_pb2.RecordAppealRequest(name=call.name, kind="MARKET_COURT"), metadata=world.admin()
    )
    assert appealed.state == tendering_pb2.CALL_STATE_UNSUCCESSFUL and len(appealed.appeals) == 1
    world.clock.set(SERVED_ON + timedelta(days=60))
    await world.tick()
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    assert await count_rows(world.db, "tendering_frameworks") == 0
    exported = await world.stub.ExportOcds(tendering_pb2.ExportOcdsRequest(name=call.name))
    validate_packages(exported.release_package_json, exported.record_package_json)


async def test_a_call_unsuccessful_for_want_of_bids_has_no_decision_to_serve(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    call = await publish(world, call_message(members))
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()  # the deadline closes it with no bids: unsuccessful, nothing to open
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    unserved = await refused(world.stub.ServeAwardDecision(serve_request(call), metadata=world.admin()))
    assert unserved.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(unserved) == "CALL_STATE"
    assert await tendering_payloads(world.db, "AwardDecisionServed") == []

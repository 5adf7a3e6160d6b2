"""The shared runtime against a real nats-server and real databases (SQLite file and
PostgreSQL): outbox relay, leases and inbox consumers, each effect once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from kasvu.registry.v1 import events_pb2
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from sqlmodel import col, select

from services.runtime.bus import (
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    EventConsumer,
    OutboxRelay,
    StreamSpec,
    connect,
    declare_stream,
)
from services.runtime.db import (
    Database,
    InboxEntry,
    OutboxEvent,
    UnitOfWork,
    acquire_lease,
    outbox_depth,
    pending_outbox,
    release_lease,
)
from services.runtime.errors import NotFound
from tests.conftest import NatsServer

STREAM = StreamSpec("TEST_EVENTS", ("test.>",))
SUBJECT = "test.terms"
EFFECT_SUBJECT = "effect.noted"
TERMS_TYPE = events_pb2.TermsPublished.DESCRIPTOR.full_name


class Boom(Exception):
    """An unexpected failure inside a handler (a bug, a lost connection)."""


def terms(tag: str) -> events_pb2.TermsPublished:
    return events_pb2.TermsPublished(terms=tag, region="pirkanmaa", service="home-care")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within} s: {what}")


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    state = (await js.stream_info(stream)).state
    if state.messages == 0:
        return []
    return [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]


async def stream_count(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def emit_committed(db: Database, tags: list[str]) -> list[str]:
    async with db.unit_of_work() as uow:
        ids = [uow.emit(SUBJECT, terms(tag)) for tag in tags]
        await uow.commit()
    return ids


async def effects(db: Database) -> Counter[str]:
    """How many times each consumed event's effect (an outbox row) was written, by terms tag."""
    async with db.read_session() as session:
        rows = (
            await session.exec(select(OutboxEvent).where(col(OutboxEvent.subject) == EFFECT_SUBJECT))
        ).all()
    return Counter(events_pb2.TermsPublished.FromString(row.payload).terms for row in rows)


async def inbox(db: Database, consumer: str) -> dict[str, str]:
    async with db.read_session() as session:
        rows = (await session.exec(select(InboxEntry).where(col(InboxEntry.consumer) == consumer))).all()
    return {row.event_id: row.outcome for row in rows}


async def publish_event(js: JetStreamContext, event_id: str, tag: str) -> int:
    ack = await js.publish(
        SUBJECT,
        terms(tag).SerializeToString(),
        headers={MSG_ID_HEADER: event_id, EVENT_TYPE_HEADER: TERMS_TYPE},
        timeout=1.0,
    )
    return int(ack.seq)


async def note_effect(uow: UnitOfWork, event_id: str, event: events_pb2.TermsPublished) -> None:
    uow.emit(EFFECT_SUBJECT, event)


def consumer_of(
    db: Database,
    js: JetStreamContext,
    handler: Callable[[UnitOfWork, str, events_pb2.TermsPublished], Awaitable[None]],
    durable: str = "test-consumer",
) -> EventConsumer[events_pb2.TermsPublished]:
    return EventConsumer(
        db,
        js,
        stream=STREAM.name,
        durable=durable,
        subject=SUBJECT,
        event_type=events_pb2.TermsPublished,
        handler=handler,
    )


async def all_acked(js: JetStreamContext, durable: str) -> bool:
    info = await js.consumer_info(STREAM.name, durable)
    return (
        info.num_ack_pending == 0
        and info.num_pending == 0
        and info.ack_floor is not None
        and info.delivered is not None
        and info.ack_floor.stream_seq == info.delivered.stream_seq
    )


@contextlib.asynccontextmanager
async def running(*runners: OutboxRelay | EventConsumer[events_pb2.TermsPublished]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(runner.run(stop)) for runner in runners]
    try:
        yield
    finally:
        stop.set()
        # A fetch waits at most 1 s and a relay poll at most 1 s before they see `stop`.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url, "runtime-test")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: NatsClient) -> JetStreamContext:
    context = nc.jetstream()
    await declare_stream(context, STREAM, replicas=1)
    return context


# -- outbox and relay -----------------------------------------------------------------------


async def test_committed_events_reach_the_stream_once_each_in_commit_order_with_their_ids(
    runtime_db: Database, js: JetStreamContext
) -> None:
    first = await emit_committed(runtime_db, ["t1", "t2"])
    second = await emit_committed(runtime_db, ["t3"])
    relay = OutboxRelay(runtime_db, js, service="test")

    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 0

    messages = await stream_messages(js, STREAM.name)
    assert [m.subject for m in messages] == [SUBJECT] * 3
    assert [events_pb2.TermsPublished.FromString(m.data or b"").terms for m in messages] == ["t1", "t2", "t3"]
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in messages] == first + second
    assert {(m.headers or {}).get(EVENT_TYPE_HEADER) for m in messages} == {TERMS_TYPE}
    assert await outbox_depth(runtime_db) == 0


async def test_events_of_a_unit_of_work_that_raised_leave_no_row_and_never_reach_the_stream(
    runtime_db: Database, js: JetStreamContext
) -> None:
    with pytest.raises(Boom):
        async with runtime_db.unit_of_work() as uow:
            uow.emit(SUBJECT, terms("rolled-back"))
            await uow.session.flush()  # the row existed inside the transaction
            raise Boom
    kept = await emit_committed(runtime_db, ["kept"])
    relay = OutboxRelay(runtime_db, js, service="test")

    assert await relay.relay_once() == 1

    async with runtime_db.read_session() as session:
        rows = (await session.exec(select(OutboxEvent))).all()
    assert [row.event_id for row in rows] == kept
    messages = await stream_messages(js, STREAM.name)
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in messages] == kept


async def test_a_relay_that_published_but_crashed_before_marking_does_not_duplicate_on_the_stream(
    runtime_db: Database, js: JetStreamContext
) -> None:
    ids = await emit_committed(runtime_db, ["a", "b", "c", "d"])
    # What relay_once does before mark_published, by a relay that then died.
    async with runtime_db.read_session() as session:
        rows = await pending_outbox(session, 100)
    for row in rows:
        await js.publish(
            row.subject, row.payload, headers={MSG_ID_HEADER: row.event_id, EVENT_TYPE_HEADER: row.event_type}
        )
    assert await stream_count(js, STREAM.name) == 4
    assert await outbox_depth(runtime_db) == 4

    assert await OutboxRelay(runtime_db, js, service="test").relay_once() == 4

    assert await stream_count(js, STREAM.name) == 4
    messages = await stream_messages(js, STREAM.name)
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in messages] == ids
    assert await outbox_depth(runtime_db) == 0


# -- leases -----------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(runtime_db: Database) -> None:
    ttl = timedelta(seconds=0.3)

    assert await acquire_lease(runtime_db, "job", "alpha", ttl)
    assert not await acquire_lease(runtime_db, "job", "beta", ttl)
    assert await acquire_lease(runtime_db, "job", "alpha", ttl)  # renewal
    assert not await acquire_lease(runtime_db, "job", "beta", ttl)
    # Another lease name is independent.
    assert await acquire_lease(runtime_db, "other-job", "beta", ttl)

    await asyncio.sleep(0.45)
    assert await acquire_lease(runtime_db, "job", "beta", timedelta(seconds=30))
    assert not await acquire_lease(runtime_db, "job", "alpha", ttl)

    await release_lease(runtime_db, "job", "beta")
    assert await acquire_lease(runtime_db, "job", "alpha", timedelta(seconds=30))
    assert not await acquire_lease(runtime_db, "job", "beta", ttl)


async def test_a_release_by_someone_who_does_not_hold_the_lease_changes_nothing(
    runtime_db: Database,
) -> None:
    assert await acquire_lease(runtime_db, "job", "alpha", timedelta(seconds=30))
    await release_lease(runtime_db, "job", "beta")
    assert not await acquire_lease(runtime_db, "job", "beta", timedelta(seconds=30))


async def test_replicas_racing_for_a_new_lease_end_with_exactly_one_holder(runtime_db: Database) -> None:
    for round_ in range(3):
        results = await asyncio.gather(
            *(
                acquire_lease(runtime_db, f"race-{round_}", f"replica-{n}", timedelta(seconds=30))
                for n in range(6)
            )
        )
        assert sum(results) == 1, results


async def test_replicas_racing_for_an_expired_lease_end_with_exactly_one_holder(runtime_db: Database) -> None:
    for round_ in range(3):
        name = f"expired-{round_}"
        assert await acquire_lease(runtime_db, name, "gone", timedelta(seconds=0.05))
        await asyncio.sleep(0.1)
        results = await asyncio.gather(
            *(acquire_lease(runtime_db, name, f"replica-{n}", timedelta(seconds=30)) for n in range(6))
        )
        assert sum(results) == 1, results
        assert not await acquire_lease(runtime_db, name, "gone", timedelta(seconds=30))


async def test_two_relays_running_together_publish_each_event_exactly_once(
    runtime_db: Database, nc: NatsClient, js: JetStreamContext
) -> None:
    # A core subscription sees every publish, also those JetStream would drop as duplicates.
    published: Counter[str] = Counter()

    async def seen(msg: object) -> None:
        headers = getattr(msg, "headers", None) or {}
        published[headers.get(MSG_ID_HEADER, "")] += 1

    subscription = await nc.subscribe("test.>", cb=seen)
    relays = [OutboxRelay(runtime_db, js, service="test", batch=5) for _ in range(2)]
    ids: list[str] = []
    async with running(*relays):
        for round_ in range(4):
            ids += await emit_committed(runtime_db, [f"r{round_}-{n}" for n in range(6)])
            for relay in relays:
                relay.wake()
            await asyncio.sleep(0.05)

        async def all_relayed() -> bool:
            return (
                await outbox_depth(runtime_db) == 0
                and await stream_count(js, STREAM.name) == len(ids)
                and sum(published.values()) >= len(ids)
            )

        await eventually(all_relayed, "all events relayed")
        await asyncio.sleep(0.3)  # room for a second relay's late double
    await nc.flush()
    await subscription.unsubscribe()

    assert published == Counter(dict.fromkeys(ids, 1))
    messages = await stream_messages(js, STREAM.name)
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in messages] == ids


async def test_when_the_relaying_replica_stops_another_takes_over(
    runtime_db: Database, js: JetStreamContext
) -> None:
    first, second = (OutboxRelay(runtime_db, js, service="test") for _ in range(2))
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first_task = asyncio.create_task(first.run(first_stop))
    second_task: asyncio.Task[None] | None = None
    try:
        early = await emit_committed(runtime_db, ["early"])
        first.wake()
        await eventually(lambda: _depth_is_zero(runtime_db), "first relay published")
        # The first relay holds the lease now; the second cannot relay while it runs.
        second_task = asyncio.create_task(second.run(second_stop))
        first_stop.set()
        await asyncio.wait_for(first_task, timeout=3)

        late = await emit_committed(runtime_db, ["late"])
        second.wake()
        await eventually(lambda: _depth_is_zero(runtime_db), "second relay published", within=3)
    finally:
        first_stop.set()
        second_stop.set()
        await asyncio.wait_for(asyncio.gather(first_task, *([second_task] if second_task else [])), 5)

    messages = await stream_messages(js, STREAM.name)
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in messages] == early + late


async def _depth_is_zero(db: Database) -> bool:
    return await outbox_depth(db) == 0


# -- consumers ---------------------------------------------------------------------------------


async def test_a_consumer_applies_each_event_once_and_a_redelivered_duplicate_once(
    runtime_db: Database, js: JetStreamContext
) -> None:
    # A tiny duplicate window lets the same Nats-Msg-Id be stored twice, as after a relay
    # crash that outlasted the window.
    await js.delete_stream(STREAM.name)
    await js.add_stream(
        StreamConfig(
            name=STREAM.name, subjects=list(STREAM.subjects), storage=StorageType.FILE, duplicate_window=0.2
        )
    )
    first = await publish_event(js, "event-dup", "dup")
    await asyncio.sleep(0.4)
    second = await publish_event(js, "event-dup", "dup")
    assert second != first
    for n in range(3):
        await publish_event(js, f"event-{n}", f"e{n}")
    assert await stream_count(js, STREAM.name) == 5

    consumer = consumer_of(runtime_db, js, note_effect)
    async with running(consumer):

        async def settled() -> bool:
            return sum((await effects(runtime_db)).values()) >= 4 and await all_acked(js, consumer.durable)

        await eventually(settled, "all events handled and acked")

    assert await effects(runtime_db) == Counter({"dup": 1, "e0": 1, "e1": 1, "e2": 1})
    assert await inbox(runtime_db, consumer.durable) == {
        "event-dup": "applied",
        "event-0": "applied",
        "event-1": "applied",
        "event-2": "applied",
    }
    assert await all_acked(js, consumer.durable)


async def test_two_consumer_replicas_apply_each_event_once_though_duplicates_reach_both(
    runtime_db: Database, js: JetStreamContext
) -> None:
    await js.delete_stream(STREAM.name)
    await js.add_stream(
        StreamConfig(
            name=STREAM.name, subjects=list(STREAM.subjects), storage=StorageType.FILE, duplicate_window=0.2
        )
    )
    tags = [f"x{n}" for n in range(8)]
    for tag in tags:
        await publish_event(js, f"event-{tag}", tag)
    await asyncio.sleep(0.3)
    for tag in tags:
        await publish_event(js, f"event-{tag}", tag)
    assert await stream_count(js, STREAM.name) == 2 * len(tags)

    replicas = [
        EventConsumer(
            runtime_db,
            js,
            stream=STREAM.name,
            durable="test-consumer",
            subject=SUBJECT,
            event_type=events_pb2.TermsPublished,
            handler=note_effect,
            batch=1,
        )
        for _ in range(2)
    ]
    async with running(*replicas):

        async def settled() -> bool:
            return len(await inbox(runtime_db, "test-consumer")) == len(tags) and await all_acked(
                js, "test-consumer"
            )

        await eventually(settled, "all events handled and acked", within=8)

    assert await effects(runtime_db) == Counter(dict.fromkeys(tags, 1))
    assert set((await inbox(runtime_db, "test-consumer")).values()) == {"applied"}


async def test_a_refused_event_is_recorded_with_its_reason_acked_and_has_no_effect(
    runtime_db: Database, js: JetStreamContext
) -> None:
    calls: Counter[str] = Counter()

    async def refuse_missing(uow: UnitOfWork, event_id: str, event: events_pb2.TermsPublished) -> None:
        calls[event_id] += 1
        uow.emit(EFFECT_SUBJECT, event)
        if event.terms == "missing":
            raise NotFound("no such terms")

    await publish_event(js, "event-missing", "missing")
    await publish_event(js, "event-present", "present")
    consumer = consumer_of(runtime_db, js, refuse_missing)
    async with running(consumer):

        async def settled() -> bool:
            return len(await inbox(runtime_db, consumer.durable)) == 2 and await all_acked(
                js, consumer.durable
            )

        await eventually(settled, "both events handled and acked")
        await asyncio.sleep(1.5)  # past the nak delay: a redelivery would show in `calls`

    outcomes = await inbox(runtime_db, consumer.durable)
    assert outcomes["event-missing"].startswith("refused:")
    assert "NotFound" in outcomes["event-missing"]
    assert outcomes["event-present"] == "applied"
    assert await effects(runtime_db) == Counter({"present": 1})
    assert calls == Counter({"event-missing": 1, "event-present": 1})
    assert await all_acked(js, consumer.durable)


async def test_an_unexpected_handler_failure_leaves_no_trace_and_the_event_is_redelivered(
    runtime_db: Database, js: JetStreamContext
) -> None:
    calls: Counter[str] = Counter()

    async def fail_once(uow: UnitOfWork, event_id: str, event: events_pb2.TermsPublished) -> None:
        calls[event_id] += 1
        uow.emit(EFFECT_SUBJECT, event)
        if calls[event_id] == 1:
            raise Boom("database went away")

    await publish_event(js, "event-flaky", "flaky")
    consumer = consumer_of(runtime_db, js, fail_once)
    async with running(consumer):
        await eventually(lambda: _first_attempt_done(calls), "first attempt", within=3)
        # The failed attempt committed nothing: no inbox row, no effect.
        assert await inbox(runtime_db, consumer.durable) == {}
        assert await effects(runtime_db) == Counter()

        async def settled() -> bool:
            return (await inbox(runtime_db, consumer.durable)).get("event-flaky") == "applied" and (
                await all_acked(js, consumer.durable)
            )

        await eventually(settled, "redelivered event applied", within=6)

    assert calls == Counter({"event-flaky": 2})
    assert await effects(runtime_db) == Counter({"flaky": 1})


async def _first_attempt_done(calls: Counter[str]) -> bool:
    return calls["event-flaky"] >= 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_consumer_keeps_consuming_after_the_nats_server_restarts(
    runtime_db: Database, nats_server: NatsServer, nc: NatsClient, js: JetStreamContext
) -> None:
    consumer = consumer_of(runtime_db, js, note_effect)
    async with running(consumer):
        await publish_event(js, "before-restart", "before")

        await eventually(effect_applied(runtime_db, "before"), "event before the restart applied")

        nats_server.stop()
        nats_server.start()
        await eventually(_connected(nc), "client reconnected", within=5)

        async def publish_after() -> bool:
            await publish_event(js, "after-restart", "after")
            return True

        # JetStream may need a moment after start before it answers publishes; the same
        # Nats-Msg-Id makes a retry of a publish that was stored but not acked harmless.
        await eventually(publish_after, "publish after restart", within=5)
        await eventually(effect_applied(runtime_db, "after"), "event after the restart applied", within=10)

    assert await effects(runtime_db) == Counter({"before": 1, "after": 1})
    assert await inbox(runtime_db, consumer.durable) == {
        "before-restart": "applied",
        "after-restart": "applied",
    }


def effect_applied(db: Database, tag: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await effects(db))[tag] == 1

    return check


def _connected(nc: NatsClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(nc.is_connected)

    return check

"""The event pipeline under hostile and faulty input, on a real nats-server and real databases:
poison messages, oversized events, unpublishable rows, a relay down past the duplicate window,
and PostgreSQL's commit order.

The nats-server is the one `kasvu run` starts, with a user per catalog service and their
permissions: the toy service gets a catalog entry of its own (its stream, its subjects, its
durable consumer), so every publish, consumer and stream call below is one its user is allowed,
and the breach test signs in as self-monitoring and the registry themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kasvu.registry.v1 import events_pb2
from kasvu.selfmonitoring.v1 import events_pb2 as breach_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from sqlalchemy import insert, text
from sqlmodel import col, select

from kasvuctl.cli import main as kasvu
from kasvuctl.natsauth import ADMIN_USER, AUTH_DIR, NatsAuth, ensure_auth
from services.registry import bootstrap as registry_bootstrap
from services.registry import handlers as registry_handlers
from services.registry import store as registry_store
from services.registry.consumers import suspension_for
from services.runtime import envelope
from services.runtime.bus import (
    DeadLetterReplayer,
    EventConsumer,
    OutboxRelay,
    Retention,
    StreamSpec,
    connect,
    declare_stream,
)
from services.runtime.catalog import CATALOG, Consumption, ServiceEntry, entry
from services.runtime.clock import SYSTEM_CLOCK, Clock
from services.runtime.db import Database
from services.runtime.dispatch import OUTBOX, Dispatcher
from services.runtime.domain import Command
from services.runtime.errors import InvalidArgument
from services.runtime.migrate import upgrade_async
from services.runtime.tables import DeadLetter, InboxEntry, Lease, OutboxEvent, Timer
from services.runtime.worker import Fence, LeaseLost, Scheduler, Worker
from services.runtime.writer import write_path_for
from tests.conftest import NatsServer
from tests.integration import toy
from tests.integration.helpers import dispatching

STREAM = "TEST_FAULTS"


async def eventually(check, what: str, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within} s: {what}")


async def notes(db: Database) -> Counter[str]:
    async with db.read_session() as session:
        rows = (
            await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_type) == toy.EVENT_TYPE))
        ).all()
    return Counter(events_pb2.TermsPublished.FromString(row.payload).terms for row in rows)


TOY_SERVICE = ServiceEntry(
    name="toy",
    grpc_port=0,
    stream=STREAM,
    # The toy's events travel as the registry's TermsPublished, on subjects of their own stream.
    event_package="kasvu.registry.v1",
    consumes=(Consumption(stream_of="toy", subject=f"{toy.EVENT_TYPE}.*", durable="faults"),),
)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> NatsAuth:
    """The suite's users and the toy's, as `kasvu run` makes them from a catalog."""
    return ensure_auth(tmp_path_factory.mktemp("faults-users") / AUTH_DIR, (*CATALOG, TOY_SERVICE))


@pytest.fixture
def server(tmp_path: Path, users: NatsAuth) -> Iterator[NatsServer]:
    nats_server = NatsServer(tmp_path / "nats", users)
    nats_server.start()
    yield nats_server
    nats_server.stop()


@contextlib.asynccontextmanager
async def signed_in(server: NatsServer, user: str) -> AsyncIterator[NatsClient]:
    client = await connect(server.url, f"faults-{user}", server.access(user))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[NatsClient]:
    """The toy service's own connection: it may use its stream and its consumer, nothing else."""
    async with signed_in(server, TOY_SERVICE.name) as client:
        yield client


@pytest.fixture
async def js(nc: NatsClient) -> JetStreamContext:
    context = nc.jetstream()
    await context.add_stream(
        StreamConfig(
            name=STREAM, subjects=list(TOY_SERVICE.subjects), storage=StorageType.FILE, duplicate_window=1.0
        )
    )
    return context


async def publish(
    js: JetStreamContext, tag: str, *, event_type: str = toy.EVENT_TYPE, event_id: str = ""
) -> None:
    message = events_pb2.TermsPublished(terms=tag, region=toy.REGION, service="toy")
    headers = {envelope.MSG_ID: event_id or uuid.uuid4().hex, envelope.EVENT_TYPE: event_type}
    await js.publish(toy.SUBJECT, message.SerializeToString(), headers=headers)


class Translator:
    """Poison tags explode while `poisoned` holds; then (after a fix) they are noted like any other."""

    def __init__(self) -> None:
        self.poisoned = True

    def __call__(self, event: events_pb2.TermsPublished, subject: str) -> Command | None:
        if event.terms.startswith("poison") and self.poisoned:
            return toy.Explode(event.terms)
        if event.terms.startswith("slow"):
            return toy.Linger(event.terms, seconds=3.0)
        return toy.Note(event.terms)


@contextlib.asynccontextmanager
async def consuming(
    db: Database, js: JetStreamContext, translate: Translator, **options: Any
) -> AsyncIterator[tuple[Dispatcher, EventConsumer[events_pb2.TermsPublished], Worker]]:
    """The toy service's consumer (and its worker, which replays dead letters), running."""
    write_path = write_path_for(db)
    dispatcher = toy.toy_dispatcher(db, write_path)
    consumer = EventConsumer(
        dispatcher,
        js,
        **{
            "stream": STREAM,
            "durable": "faults",
            "subject": f"{toy.EVENT_TYPE}.*",
            "event_type": events_pb2.TermsPublished,
            "translate": translate,
            "batch": 256,
            "ack_wait_s": 2.0,
            "max_deliveries": 2,
            "backoff_s": (0.2,),
            **options,
        },
    )
    worker = Worker(
        write_path, service="toy", jobs=[DeadLetterReplayer(db, write_path, lambda: [consumer])], poll_s=0.1
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        yield dispatcher, consumer, worker
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        await write_path.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_poison_messages_are_dead_lettered_and_never_hold_back_the_events_behind_them(
    runtime_db: Database,
    js: JetStreamContext,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    translate = Translator()
    async with consuming(runtime_db, js, translate):
        for index in range(300):
            await publish(js, f"poison-{index}")
        await publish(js, "valid")
        # The valid event behind 300 poison ones is applied while they are still being retried.
        await eventually(lambda: _noted(runtime_db, "valid"), "the valid event applied", within=5)
        await eventually(lambda: _dead(runtime_db, 300), "every poison message dead-lettered", within=20)
        # Bad by construction: no retry could apply them, so they are dead-lettered at once.
        await publish(js, "forged", event_type="kasvu.selfmonitoring.v1.BreachOpened")
        await eventually(lambda: _dead(runtime_db, 301), "the forged event dead-lettered", within=5)

        assert await notes(runtime_db) == Counter({"valid": 1})
        async with runtime_db.read_session() as session:
            rows = (await session.exec(select(DeadLetter).order_by(col(DeadLetter.id)))).all()
        assert {row.deliveries for row in rows[:300]} == {2}
        assert all("Boom" in row.error for row in rows[:300])
        assert "type header does not match" in rows[300].error
        # Each dead letter raises an operator's alert naming the event, not its content.
        alerts = [r for r in caplog.records if getattr(r, "alert", False)]
        assert sorted(r.event_id for r in alerts) == sorted(row.event_id for row in rows)  # type: ignore[attr-defined]
        assert {r.levelname for r in alerts} == {"ERROR"}
        assert {r.consumer for r in alerts} == {"faults"}  # type: ignore[attr-defined]

        # An operator fixes the cause and replays two of them: each is applied once.
        translate.poisoned = False
        first, second = rows[0].id, rows[1].id
        assert first is not None and second is not None
        url = database_url
        assert (
            await asyncio.to_thread(
                kasvu, ["deadletters", "replay", "registry", "--database-url", url, str(first), str(second)]
            )
            == 0
        )
        await eventually(lambda: _replayed(runtime_db, 2), "the replay ran", within=5)
        await asyncio.to_thread(
            kasvu, ["deadletters", "replay", "registry", "--database-url", url, str(first)]
        )
        await asyncio.sleep(0.5)

    assert await notes(runtime_db) == Counter({"valid": 1, "poison-0": 1, "poison-1": 1})
    capsys.readouterr()
    assert await asyncio.to_thread(kasvu, ["deadletters", "list", "registry", "--database-url", url]) == 0
    listed = capsys.readouterr().out
    assert "Boom" in listed and "type header does not match" in listed
    assert listed.count("\n") == 1 + 301 - 2  # a header line, and the dead letters not replayed


async def _dead_letters(db: Database) -> list[DeadLetter]:
    async with db.read_session() as session:
        return list((await session.exec(select(DeadLetter).order_by(col(DeadLetter.id)))).all())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_more_poison_than_the_consumer_may_hold_unacknowledged_drains_across_a_restart(
    runtime_db: Database, js: JetStreamContext
) -> None:
    """The fault run's wedge: more failing messages than the consumer's max_ack_pending (here
    40 against 100) once stopped every later one, even across a restart. Each is retried with
    back-off and dead-lettered, so the window keeps moving: the valid event behind them is
    applied, and a restart half-way neither loses a poison message nor keeps one twice."""
    translate = Translator()
    for index in range(100):
        await publish(js, f"poison-{index}")
    await publish(js, "valid")
    async with consuming(runtime_db, js, translate, max_ack_pending=40, batch=40):
        await eventually(lambda: _dead(runtime_db, 40), "the first window dead-lettered", within=10)
    assert not await _noted(runtime_db, "valid")  # still behind the poison when the service stopped

    async with consuming(runtime_db, js, translate, max_ack_pending=40, batch=40):
        await eventually(lambda: _noted(runtime_db, "valid"), "the valid event applied", within=15)
        await eventually(lambda: _dead(runtime_db, 100), "every poison message dead-lettered", within=10)
        await asyncio.sleep(0.5)  # a message kept twice would show up by now

    dead = await _dead_letters(runtime_db)
    assert sorted(row.stream_seq for row in dead) == list(range(1, 101))
    assert assert_each_once([row.event_id for row in dead])
    assert await notes(runtime_db) == Counter({"valid": 1})


def assert_each_once(ids: list[str]) -> bool:
    doubled = [event_id for event_id, times in Counter(ids).items() if times > 1]
    assert doubled == [], f"kept twice: {doubled}"
    return True


class TermLost:
    """A message whose terminate never reaches the server: the consumer dies (or NATS goes) just
    after its dead letter committed."""

    def __init__(self, consumer: EventConsumer[Any]) -> None:
        self.consumer = consumer
        self.lost = 0

    async def handle(self, msg: Any) -> None:
        async def lost() -> None:
            self.lost += 1
            raise ConnectionError("the connection went before the terminate was sent")

        msg.term = lost
        await self.consumer.handle(msg)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_dead_letter_kept_before_its_terminate_was_lost_is_not_kept_again_on_redelivery(
    runtime_db: Database, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    translate = Translator()
    await publish(js, "forged", event_type="kasvu.selfmonitoring.v1.BreachOpened")
    async with toy.toy(runtime_db) as dispatcher:
        consumer = EventConsumer(
            dispatcher,
            js,
            stream=STREAM,
            durable="faults",
            subject=f"{toy.EVENT_TYPE}.*",
            event_type=events_pb2.TermsPublished,
            translate=translate,
            ack_wait_s=1.0,
        )
        subscription = await consumer._subscribe()
        first = await subscription.fetch(1, timeout=5)
        losing = TermLost(consumer)
        with pytest.raises(ConnectionError):
            await losing.handle(first[0])
        assert losing.lost == 1 and len(await _dead_letters(runtime_db)) == 1

        # Not terminated, so JetStream delivers it again after the ack wait.
        again = await subscription.fetch(1, timeout=5)
        assert again[0].metadata.num_delivered == 2
        await consumer.handle(again[0])
        await subscription.unsubscribe()

    dead = await _dead_letters(runtime_db)
    assert len(dead) == 1 and "type header does not match" in dead[0].error
    # The operator was alerted once, for the one dead letter.
    assert len([r for r in caplog.records if getattr(r, "alert", False)]) == 1

    # Terminated the second time. A terminate is a publish with no reply, so the server may not
    # have applied it yet when this reads the consumer: wait for it, though not for ever.
    async def terminated() -> bool:
        info = await js.consumer_info(STREAM, "faults")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(terminated, "the redelivered dead letter terminated", within=5.0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_handler_slower_than_the_ack_wait_keeps_its_message_with_in_progress_acks(
    runtime_db: Database, js: JetStreamContext
) -> None:
    """Short ack waits make a dead consumer's messages come back soon (issue 6, item 11); a live
    one whose unit of work outlasts the wait (3 s against 1 s) says it is still working, so the
    message is not handed to the other replica meanwhile: delivered once, applied once."""
    async with (
        consuming(runtime_db, js, Translator(), ack_wait_s=1.0),
        consuming(runtime_db, js, Translator(), ack_wait_s=1.0),
    ):
        await publish(js, "slow")
        await publish(js, "quick")
        await eventually(lambda: _noted(runtime_db, "slow"), "the slow event applied", within=6)
        await eventually(lambda: _noted(runtime_db, "quick"), "the quick event applied", within=2)
        info = await js.consumer_info(STREAM, "faults")

    # The consumer's own sequence counts deliveries: two messages, each delivered once.
    assert info.delivered.consumer_seq == 2 and info.num_ack_pending == 0
    assert await notes(runtime_db) == Counter({"slow": 1, "quick": 1})


SELFMONITORING = entry("selfmonitoring")
BREACHES = next(c for c in entry("registry").consumes if c.durable == "registry-breaches")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_on_postgresql_a_breach_with_an_overlong_id_or_a_nul_is_dead_lettered_and_holds_back_nothing(
    database_url: str, server: NatsServer
) -> None:
    """The triggers PostgreSQL itself pulls: an event id longer than the inbox's id column, and a
    NUL in a text field (PostgreSQL cannot store one). Each fails in the database, not in the
    decoding, so it is retried with back-off and then dead-lettered, while the valid breach behind
    them takes effect at once, through the registry's real consumer and store, signed in as the
    registry on self-monitoring's stream. A breach with no name (the fault run's trigger) is
    refused as the event's outcome at once, never retried."""
    await upgrade_async(database_url, registry_bootstrap.MIGRATIONS)
    db = Database(database_url)
    subject = f"kasvu.selfmonitoring.v1.BreachOpened.{toy.REGION}"
    breach_type = breach_events.BreachOpened.DESCRIPTOR.full_name
    async with (
        signed_in(server, SELFMONITORING.name) as selfmonitoring,
        signed_in(server, "registry") as registry,
    ):
        publisher = selfmonitoring.jetstream()
        await publisher.add_stream(
            StreamConfig(
                name=SELFMONITORING.stream, subjects=list(SELFMONITORING.subjects), storage=StorageType.FILE
            )
        )
        await _poison_breaches(db, publisher, registry.jetstream(), subject, breach_type)


async def _poison_breaches(
    db: Database,
    js: JetStreamContext,
    registry_js: JetStreamContext,
    subject: str,
    breach_type: str,
) -> None:
    async def breach(name: str, event_id: str, service: str = "recruitment") -> None:
        message = breach_events.BreachOpened(
            region=toy.REGION,
            breach=selfmonitoring_pb2.Breach(
                name=name,
                indicator=f"regions/{toy.REGION}/indicators/need-assessment-14d",
                provider="0737546-2",  # not registered: the breach is remembered for its admission
                service=service,
                severity=selfmonitoring_pb2.SEVERITY_SERIOUS,
            ),
        )
        headers = {envelope.MSG_ID: event_id, envelope.EVENT_TYPE: breach_type}
        await js.publish(subject, message.SerializeToString(), headers=headers)

    overlong_id = "x" * 65
    empty_name_id, nul_id, valid_id = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    try:
        async with dispatching(
            db,
            service="registry",
            unit_of_work=registry_store.unit_of_work_factory(),
            event_types=registry_bootstrap.EVENT_TYPES,
            handlers=registry_handlers.HANDLERS,
        ) as dispatcher:
            consumer = EventConsumer(
                dispatcher,
                registry_js,
                stream=SELFMONITORING.stream,
                durable=BREACHES.durable,
                subject=BREACHES.subject,
                event_type=breach_events.BreachOpened,
                translate=suspension_for,
                ack_wait_s=2.0,
                max_deliveries=3,
                backoff_s=(1.0, 2.0),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.run(stop))
            try:
                # The fault run's trigger: a breach with no name, which once stopped every
                # later suspension. It is refused as the event's outcome, never retried.
                await breach("", empty_name_id)
                await breach(f"regions/{toy.REGION}/breaches/overlong-id", overlong_id)
                await breach(f"regions/{toy.REGION}/breaches/nul", nul_id, service="recruit\x00ment")
                await breach(f"regions/{toy.REGION}/breaches/valid", valid_id)
                # Applied while the two before it wait for their first redelivery.
                await eventually(lambda: _pending_breaches(db, 1), "the valid breach remembered", within=2)
                assert not await _dead(db, 1)
                await eventually(lambda: _dead(db, 2), "both poison breaches dead-lettered", within=15)
                await asyncio.sleep(0.5)  # a further delivery would show up by now
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=10)

        async with db.read_session() as session:
            dead = (await session.exec(select(DeadLetter).order_by(col(DeadLetter.id)))).all()
            inbox = (await session.exec(select(InboxEntry))).all()
        by_id = {row.event_id: row for row in dead}  # in either order: they failed side by side
        assert sorted(by_id) == sorted([overlong_id[:64], nul_id])
        assert {row.deliveries for row in dead} == {3}
        assert "value too long" in by_id[overlong_id[:64]].error
        assert "0x00" in by_id[nul_id].error
        # The whole id is kept with the headers, for a replay.
        assert json.loads(by_id[overlong_id[:64]].headers)[envelope.MSG_ID] == overlong_id
        outcomes = {row.event_id: row.outcome for row in inbox}
        assert outcomes.pop(valid_id) == "applied"
        assert outcomes.pop(empty_name_id).startswith("refused: InvalidArgument: must be a resource name")
        assert outcomes == {}
        assert await _pending_breaches(db, 1)
    finally:
        await db.dispose()


async def _pending_breaches(db: Database, count: int) -> bool:
    async with db.reader.connect() as connection:
        rows = (await connection.execute(text("SELECT breach FROM registry_pending_breaches"))).all()
    return [row.breach for row in rows] == [f"regions/{toy.REGION}/breaches/valid"] * count


async def _noted(db: Database, tag: str) -> bool:
    return (await notes(db))[tag] == 1


async def _dead(db: Database, count: int) -> bool:
    async with db.reader.connect() as connection:
        return (
            int((await connection.execute(text("SELECT count(*) FROM dead_letters"))).scalar_one()) >= count
        )


async def _replayed(db: Database, count: int) -> bool:
    async with db.reader.connect() as connection:
        done = (
            await connection.execute(text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL"))
        ).scalar_one()
    return int(done) >= count


async def test_a_change_whose_event_the_bus_could_not_carry_is_refused_and_stores_nothing(
    runtime_db: Database,
) -> None:
    async with toy.toy(runtime_db) as dispatcher:
        dispatcher.max_event_bytes = 10_000
        with pytest.raises(InvalidArgument) as refused:
            await dispatcher.handle(toy.Note("x" * 20_000))
        await dispatcher.handle(toy.Note("small"))

    assert refused.value.reason == "EVENT_TOO_LARGE"
    assert await notes(runtime_db) == Counter({"small": 1})
    async with runtime_db.reader.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM audit_log"))).scalar_one() == 1


async def _relay_worker(
    db: Database, js: JetStreamContext, **relay: object
) -> tuple[Worker, OutboxRelay, object]:
    write_path = write_path_for(db)
    relay_job = OutboxRelay(db, write_path, js, stream=STREAM, **relay)  # type: ignore[arg-type]
    return Worker(write_path, service="toy", jobs=[relay_job], poll_s=0.1), relay_job, write_path


async def stream_ids(js: JetStreamContext) -> list[str]:
    state = (await js.stream_info(STREAM)).state
    if not state.messages:
        return []
    messages = [await js.get_msg(STREAM, seq) for seq in range(state.first_seq, state.last_seq + 1)]
    return [str((m.headers or {}).get(envelope.MSG_ID)) for m in messages]


async def _event_ids(db: Database) -> list[str]:
    async with db.read_session() as session:
        rows = (await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all()
    return [row.event_id for row in rows]


async def test_a_row_that_can_never_be_published_is_set_aside_and_the_rows_behind_it_still_go(
    runtime_db: Database, js: JetStreamContext
) -> None:
    async with toy.toy(runtime_db) as dispatcher:
        await dispatcher.handle(toy.Note("before"))
        await dispatcher.handle(toy.Note("huge" + "x" * 5000))
        await dispatcher.handle(toy.Note("after"))
    before, huge, after = await _event_ids(runtime_db)
    worker, _, write_path = await _relay_worker(runtime_db, js, max_payload=lambda: 4096)
    for _ in range(4):
        await worker.run_once()
    await write_path.close()  # type: ignore[attr-defined]

    assert await stream_ids(js) == [before, after]
    async with runtime_db.read_session() as session:
        row = (await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_id) == huge))).one()
    assert row.set_aside_at is not None and row.published_at is None
    assert row.attempts == 3 and "PayloadTooLarge" in row.last_error


async def test_a_row_the_server_refuses_as_too_large_is_set_aside_and_the_relay_keeps_going_for_many_rounds(
    runtime_db: Database, js: JetStreamContext
) -> None:
    """The issue's own failure: a row over the server's 1 MiB maximum payload (written when no
    cap stopped it) made every relay round fail with nats-py's MaxPayloadError, so nothing
    behind it was ever published. Here the relay believes the server takes 8 MiB, so the
    refusal comes from the connection, as it did then; the row is set aside after three
    rounds, the rows behind it go, and fifty rounds later the relay still publishes."""
    async with toy.toy(runtime_db) as dispatcher:
        dispatcher.max_event_bytes = 4 * 1024 * 1024
        await dispatcher.handle(toy.Note("before"))
        await dispatcher.handle(toy.Note("huge" + "x" * (1024 * 1024 + 1)))
        await dispatcher.handle(toy.Note("after"))
    before, huge, after = await _event_ids(runtime_db)
    worker, _, write_path = await _relay_worker(runtime_db, js, max_payload=lambda: 8 * 1024 * 1024)
    try:
        for _ in range(50):
            await worker.run_once()
        async with toy.toy(runtime_db) as dispatcher:
            await dispatcher.handle(toy.Note("later"))
        (later,) = [
            event_id for event_id in await _event_ids(runtime_db) if event_id not in {before, huge, after}
        ]
        await worker.run_once()
    finally:
        await write_path.close()  # type: ignore[attr-defined]

    assert await stream_ids(js) == [before, after, later]
    async with runtime_db.read_session() as session:
        row = (await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_id) == huge))).one()
    assert row.set_aside_at is not None and row.published_at is None
    assert row.attempts == 3 and row.last_error.startswith("MaxPayloadError")


async def test_a_relay_down_longer_than_the_duplicate_window_never_stores_an_event_twice(
    runtime_db: Database, js: JetStreamContext
) -> None:
    async with toy.toy(runtime_db) as dispatcher:
        for tag in ("one", "two", "three"):
            await dispatcher.handle(toy.Note(tag))
    one, two, three = await _event_ids(runtime_db)
    # A relay published the first two and died before marking them; it stays down for longer
    # than the stream's duplicate window (1 s here), so JetStream would store them again.
    async with runtime_db.read_session() as session:
        rows = (await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all()
    for row in rows[:2]:
        await js.publish(
            row.subject,
            row.payload,
            headers={envelope.MSG_ID: row.event_id, envelope.EVENT_TYPE: row.event_type},
        )
    await asyncio.sleep(1.5)

    worker, _, write_path = await _relay_worker(runtime_db, js)
    assert await worker.run_once()
    assert await worker.run_once()
    await write_path.close()  # type: ignore[attr-defined]

    assert await stream_ids(js) == [one, two, three]
    async with runtime_db.reader.connect() as connection:
        assert (
            await connection.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        ).scalar_one() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_on_postgresql_events_reach_the_stream_in_commit_order_while_an_older_transaction_is_open(
    runtime_db: Database, js: JetStreamContext
) -> None:
    def row(tag: str) -> dict[str, object]:
        message = events_pb2.TermsPublished(terms=tag, region=toy.REGION, service="toy")
        return {
            "event_id": uuid.uuid4().hex,
            "subject": toy.SUBJECT,
            "event_type": toy.EVENT_TYPE,
            "payload": message.SerializeToString(),
            "headers": "{}",
            "created_at": datetime.now(UTC),
        }

    worker, _, write_path = await _relay_worker(runtime_db, js)
    async with runtime_db.writer.connect() as first:
        first_tx = await first.begin()
        await first.execute(insert(OUTBOX), [row("first")])  # seq 1, still open
        async with runtime_db.writer.begin() as second:
            await second.execute(insert(OUTBOX), [row("second")])  # seq 2, committed
        assert await worker.run_once()
        assert await stream_ids(js) == []  # "second" waits for the older transaction
        await first_tx.commit()
    assert await worker.run_once()
    await write_path.close()  # type: ignore[attr-defined]

    messages = [await js.get_msg(STREAM, seq) for seq in (1, 2)]
    assert [events_pb2.TermsPublished.FromString(m.data or b"").terms for m in messages] == [
        "first",
        "second",
    ]


async def test_a_restarting_service_keeps_the_limits_an_operator_set_on_its_stream(
    nc: NatsClient, server: NatsServer
) -> None:
    js = nc.jetstream()
    spec = StreamSpec(STREAM, TOY_SERVICE.subjects)
    await declare_stream(js, spec, replicas=1, retention=Retention(max_age_s=7 * 86_400))
    created = (await js.stream_info(spec.name)).config
    assert created.max_age == pytest.approx(7 * 86_400)
    async with signed_in(server, ADMIN_USER) as operator:  # an operator's choice, as the administrator
        await operator.jetstream().update_stream(replace(created, max_age=3600.0, max_msgs=1000))

    await declare_stream(js, spec, replicas=1, retention=Retention(max_age_s=7 * 86_400))

    kept = (await js.stream_info(spec.name)).config
    assert (kept.max_age, kept.max_msgs) == (pytest.approx(3600.0), 1000)


# -- two relays at once ----------------------------------------------------------------------


class AheadClock(Clock):
    """A replica's own clock, running `by` ahead of the others' and the database's."""

    def __init__(self, by: timedelta) -> None:
        self.by = by

    def now(self) -> datetime:
        return super().now() + self.by


class Witness:
    """A worker job that notes every round it is given: which holder ran it, with which token."""

    def __init__(self) -> None:
        self.rounds: list[tuple[str, int]] = []

    async def run_once(self, fence: Fence) -> None:
        self.rounds.append((fence.holder, fence.token))


@dataclass
class Replica:
    dispatcher: Dispatcher
    worker: Worker
    witness: Witness


@contextlib.asynccontextmanager
async def replica(
    db: Database, js: Any, holder: str, clock: Clock, lease_ttl: timedelta = timedelta(seconds=10)
) -> AsyncIterator[Replica]:
    """One replica of the toy service: its dispatcher on `clock`, and its leased worker (relay,
    scheduler, witness) on the shared database and stream."""
    write_path = write_path_for(db)
    dispatcher = toy.toy_dispatcher(db, write_path, clock)
    witness = Witness()
    worker = Worker(
        write_path,
        service="toy",
        jobs=[OutboxRelay(db, write_path, js, stream=STREAM), Scheduler(db, dispatcher), witness],
        lease_ttl=lease_ttl,
        poll_s=0.05,
        holder=holder,
    )
    dispatcher.after_commit = worker.wake
    try:
        yield Replica(dispatcher, worker, witness)
    finally:
        await write_path.close()


async def _lease_expiry(db: Database) -> datetime:
    async with db.read_session() as session:
        return (await session.exec(select(Lease))).one().expires_at


async def _timer_fired_at(db: Database, key: str) -> datetime | None:
    async with db.read_session() as session:
        return (await session.exec(select(Timer).where(col(Timer.key) == key))).one().fired_at


async def _all_published(db: Database) -> bool:
    async with db.reader.connect() as connection:
        waiting = await connection.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        return int(waiting.scalar_one()) == 0


AHEAD = timedelta(seconds=11)


async def test_a_replica_whose_clock_runs_11_s_ahead_never_takes_a_held_lease_and_no_event_goes_twice(
    runtime_db: Database, js: JetStreamContext
) -> None:
    ahead = AheadClock(AHEAD)
    async with (
        replica(runtime_db, js, "on-time", SYSTEM_CLOCK) as on_time,
        replica(runtime_db, js, "ahead", ahead) as early,
    ):
        assert await on_time.worker.run_once()
        # By its own clock the lease (10 s) lapsed a second ago; by the database's it is held.
        assert await _lease_expiry(runtime_db) < ahead.now()
        assert not await early.worker.run_once()

        stop = asyncio.Event()
        workers = [asyncio.create_task(r.worker.run(stop)) for r in (on_time, early)]
        try:
            await asyncio.gather(
                *(
                    r.dispatcher.handle(toy.Note(f"{r.worker.holder}-{i}"))
                    for i in range(60)
                    for r in (on_time, early)
                )
            )
            due = datetime.now(UTC) + timedelta(seconds=2)  # already due by the early replica's clock
            await early.dispatcher.handle(toy.Schedule("reminder", "reminded", due))
            await asyncio.sleep(1.0)
            assert await _timer_fired_at(runtime_db, "reminder") is None  # the early replica would have
            await eventually(lambda: _timer_fired_at(runtime_db, "reminder"), "the timer fired", within=5)
            await eventually(lambda: _all_published(runtime_db), "every event relayed", within=10)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=10)

    assert early.witness.rounds == []
    assert set(on_time.witness.rounds) == {("on-time", 1)}
    fired_at = await _timer_fired_at(runtime_db, "reminder")
    assert fired_at is not None and fired_at >= due
    # Each event on the stream once, in the outbox's order: 120 notes, the timer's one.
    assert await stream_ids(js) == await _event_ids(runtime_db)
    assert len(await stream_ids(js)) == 121


class StallAfterPublishing:
    """The relay's JetStream context, through which every publish of a round completes and then
    the relay stalls (a long GC pause, a frozen VM) in `stall`, before it can mark them."""

    def __init__(self, js: JetStreamContext, publishes: int, stall: Callable[[], Awaitable[None]]) -> None:
        self._js = js
        self._left = publishes
        self._stall = stall

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        ack = await self._js.publish(*args, **kwargs)
        self._left -= 1
        if self._left == 0:
            await self._stall()
        return ack

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


async def test_a_relay_that_stalls_past_its_lease_cannot_mark_and_its_successor_publishes_nothing_twice(
    runtime_db: Database, js: JetStreamContext
) -> None:
    ttl = timedelta(seconds=1)
    async with toy.toy(runtime_db) as dispatcher:
        for i in range(5):
            await dispatcher.handle(toy.Note(f"note-{i}"))

    async def stall() -> None:
        # Longer than the lease, by the database's clock: the replica whose clock runs ahead
        # takes over, finds the stalled relay's rows on the stream and marks them.
        await asyncio.sleep(ttl.total_seconds() + 0.5)
        assert await successor.worker.run_once()

    async with (
        replica(runtime_db, StallAfterPublishing(js, 5, stall), "stalled", SYSTEM_CLOCK, ttl) as stalled,
        replica(runtime_db, js, "ahead", AheadClock(AHEAD), ttl) as successor,
    ):
        with pytest.raises(LeaseLost):
            await stalled.worker.run_once()
        assert not await stalled.worker.run_once()  # its next round finds the lease elsewhere

    assert stalled.worker.fence is None
    assert successor.worker.fence is not None and successor.worker.fence.token == 2
    assert (stalled.witness.rounds, successor.witness.rounds) == ([], [("ahead", 2)])
    assert await stream_ids(js) == await _event_ids(runtime_db)  # five, each once
    assert len(await stream_ids(js)) == 5
    assert await _all_published(runtime_db)

"""The runtime kernel against a real nats-server and real databases (SQLite file and PostgreSQL):
the dispatcher's outbox and units of work on the write path, the leased worker's relay, leases
with fencing tokens, and inbox consumers that turn events into commands, each effect once. The
toy service (toy.py) stands in for a real one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from kasvu.registry.v1 import events_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo, RawStreamMsg, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from services.runtime import envelope
from services.runtime.bus import EventConsumer, OutboxRelay, StreamSpec, connect, declare_stream
from services.runtime.db import Database
from services.runtime.dispatch import OUTBOX, Dispatcher, InboxKey, Refused
from services.runtime.domain import Command
from services.runtime.errors import Aborted, FailedPrecondition
from services.runtime.fastinsert import TableInserter
from services.runtime.tables import InboxEntry, Lease, OutboxEvent
from services.runtime.uow import Context, UnitOfWork
from services.runtime.worker import Fence, LeaseLost, Worker, acquire_lease, release_lease
from services.runtime.writer import BatchStats, Job, WritePath, write_path_for
from tests.conftest import NatsServer
from tests.integration.toy import (
    EVENT_TYPE,
    REGION,
    SUBJECT,
    Boom,
    Explode,
    Note,
    Refuse,
    toy_dispatcher,
)

STREAM = StreamSpec("TEST_EVENTS", ("kasvu.registry.v1.>",))
WORKER_LEASE = "toy-worker"  # the lease Worker(service="toy") runs under
DURABLE = "test-consumer"
LONG = timedelta(seconds=30)
T = TypeVar("T")

Consumer = EventConsumer[events_pb2.TermsPublished]
Translate = Callable[[events_pb2.TermsPublished, str], Command | None]


# -- helpers ----------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within} s: {what}")


def terms(tag: str) -> events_pb2.TermsPublished:
    return events_pb2.TermsPublished(terms=tag, region=REGION, service="home-care")


def msg_id(message: RawStreamMsg) -> str:
    return str((message.headers or {}).get(envelope.MSG_ID, ""))


def tag_of(message: RawStreamMsg) -> str:
    return events_pb2.TermsPublished.FromString(message.data or b"").terms


async def stream_messages(js: JetStreamContext) -> list[RawStreamMsg]:
    state = (await js.stream_info(STREAM.name)).state
    if state.messages == 0:
        return []
    return [await js.get_msg(STREAM.name, seq) for seq in range(state.first_seq, state.last_seq + 1)]


async def stream_count(js: JetStreamContext) -> int:
    return int((await js.stream_info(STREAM.name)).state.messages)


async def outbox_rows(db: Database) -> list[OutboxEvent]:
    async with db.read_session() as session:
        return list((await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all())


async def pending(db: Database) -> int:
    """Outbox rows not yet marked published."""
    return sum(row.published_at is None for row in await outbox_rows(db))


async def nothing_pending(db: Database) -> bool:
    return await pending(db) == 0


async def effects(db: Database) -> Counter[str]:
    """How many times each toy event was written to the outbox, by terms tag: a consumed event's
    effect is the outbox row of the Note command it was translated to."""
    return Counter(events_pb2.TermsPublished.FromString(row.payload).terms for row in await outbox_rows(db))


async def inbox(db: Database, consumer: str = DURABLE) -> dict[str, str]:
    async with db.read_session() as session:
        rows = (await session.exec(select(InboxEntry).where(col(InboxEntry.consumer) == consumer))).all()
    return {row.event_id: row.outcome for row in rows}


async def lease_row(db: Database, name: str) -> Lease | None:
    async with db.read_session() as session:
        return await session.get(Lease, name)


async def eventually_acquired(
    write_path: WritePath, name: str, holder: str, ttl: timedelta, within: float = 3.0
) -> Fence:
    """Retries until `holder` takes the lease (once its holder's term has run out)."""
    taken: list[Fence] = []

    async def take() -> bool:
        fence = await acquire_lease(write_path, name, holder, ttl)
        if fence is not None:
            taken.append(fence)
        return fence is not None

    await eventually(take, f"{holder} takes lease {name}", within)
    return taken[0]


async def publish_event(
    js: JetStreamContext,
    event_id: str,
    tag: str,
    *,
    subject: str = SUBJECT,
    event_type: str = EVENT_TYPE,
    headers: dict[str, str] | None = None,
    payload: bytes | None = None,
) -> int:
    all_headers = {envelope.EVENT_TYPE: event_type, **(headers or {})}
    if event_id:
        all_headers[envelope.MSG_ID] = event_id
    data = terms(tag).SerializeToString() if payload is None else payload
    ack = await js.publish(subject, data, headers=all_headers, timeout=1.0)
    return int(ack.seq)


async def with_duplicate_window(js: JetStreamContext, seconds: float) -> None:
    """Recreates the stream with a tiny duplicate window, so the same Nats-Msg-Id can be stored
    twice, as after a relay crash that outlasted the window."""
    await js.delete_stream(STREAM.name)
    await js.add_stream(
        StreamConfig(
            name=STREAM.name,
            subjects=list(STREAM.subjects),
            storage=StorageType.FILE,
            duplicate_window=seconds,
        )
    )


async def consumer_info(js: JetStreamContext, durable: str = DURABLE) -> ConsumerInfo:
    return await js.consumer_info(STREAM.name, durable)


async def all_acked(js: JetStreamContext, durable: str = DURABLE) -> bool:
    info = await consumer_info(js, durable)
    return (
        info.num_ack_pending == 0
        and info.num_pending == 0
        and info.ack_floor is not None
        and info.delivered is not None
        and info.ack_floor.stream_seq == info.delivered.stream_seq
    )


async def deliveries(js: JetStreamContext, durable: str = DURABLE) -> int:
    """Every delivery the consumer made, redeliveries included."""
    delivered = (await consumer_info(js, durable)).delivered
    return int(delivered.consumer_seq or 0) if delivered is not None else 0


def noting(event: events_pb2.TermsPublished, subject: str) -> Command | None:
    return Note(event.terms)


def consumer_of(
    dispatcher: Dispatcher, js: JetStreamContext, translate: Translate = noting, **options: Any
) -> Consumer:
    options.setdefault("subject", SUBJECT)
    return EventConsumer(
        dispatcher,
        js,
        stream=STREAM.name,
        durable=DURABLE,
        event_type=events_pb2.TermsPublished,
        translate=translate,
        **options,
    )


@contextlib.asynccontextmanager
async def consuming(*consumers: Consumer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)) for consumer in consumers]
    try:
        yield
    finally:
        # Cancelled rather than stopped: a graceful stop waits out the consumer's 1 s fetch, and
        # these tests are about what was applied, which has settled by now.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Replica:
    """One process of the toy service: its own write path, dispatcher and leased worker, which
    relays the outbox. The worker runs only once started; commands wake it."""

    def __init__(self, db: Database, js: JetStreamContext, *, relay_batch: int = 200) -> None:
        self.write_path = write_path_for(db)
        self.dispatcher = toy_dispatcher(db, self.write_path)
        self.worker = Worker(
            self.write_path,
            service="toy",
            jobs=[relay_of(db, self.write_path, js, batch=relay_batch)],
            poll_s=0.2,
        )
        self.dispatcher.after_commit = self.worker.wake
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(self._stop))

    async def stop(self) -> None:
        """Stops the worker as a graceful shutdown does: it finishes its round and releases the lease."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=5)

    async def close(self) -> None:
        await self.stop()
        await self.write_path.close()


@contextlib.asynccontextmanager
async def replicas(
    db: Database, js: JetStreamContext, count: int, **options: Any
) -> AsyncIterator[list[Replica]]:
    group = [Replica(db, js, **options) for _ in range(count)]
    try:
        yield group
    finally:
        for replica in group:
            await replica.close()


@contextlib.asynccontextmanager
async def write_paths(db: Database, count: int) -> AsyncIterator[list[WritePath]]:
    """The write paths of `count` replicas of a service, each its own process's."""
    paths = [write_path_for(db) for _ in range(count)]
    try:
        yield paths
    finally:
        for path in paths:
            await path.close()


class DiesBeforeMarking(WritePath):
    """The relay's process dies between publishing and committing its mark: no write lands."""

    def __init__(self) -> None:
        self.stats = BatchStats()
        self.attempts = 0

    async def run(self, job: Job[T]) -> T:
        self.attempts += 1
        raise ConnectionError("the relay's process died before its mark committed")


# -- commands that write before they fail -----------------------------------------------------
#
# Each writes an effect (an outbox row of its own) as a service's repository would: through
# the ORM session and a flush, or with `fast` through the kernel's fast insert on the unit of
# work's connection, as the hot repositories write. Then it is refused, or fails.

FAST_OUTBOX_INSERT = TableInserter(OUTBOX)


@dataclass(frozen=True)
class WriteThenRefuse(Command):
    tag: str
    fast: bool = False


@dataclass(frozen=True)
class WriteThenExplode(Command):
    tag: str
    fast: bool = False


@dataclass(frozen=True)
class WriteTwice(Command):
    """A repository's bug: the same row twice, so the write fails on a unique key."""

    tag: str
    fast: bool = False


@dataclass(frozen=True)
class WriteTwiceThenRefuse(Command):
    """A repository that turns a unique-key violation of its flush into a refusal."""

    tag: str


async def _write(uow: UnitOfWork, tag: str, *, fast: bool, event_id: str = "", times: int = 1) -> None:
    row: dict[str, Any] = {
        "event_id": event_id or f"written-{uuid.uuid4().hex}",
        "subject": SUBJECT,
        "event_type": EVENT_TYPE,
        "payload": terms(tag).SerializeToString(),
        "created_at": uow.now,
    }
    if fast:
        await FAST_OUTBOX_INSERT.insert(uow.connection, [row] * times)
        return
    for _ in range(times):
        uow.session.add(OutboxEvent(**row))
    await uow.session.flush()  # the row exists inside the transaction


async def write_then_refuse(command: WriteThenRefuse, uow: UnitOfWork) -> None:
    await _write(uow, command.tag, fast=command.fast)
    raise FailedPrecondition(f"{command.tag} is refused after writing", reason="REFUSED")


async def write_then_explode(command: WriteThenExplode, uow: UnitOfWork) -> None:
    await _write(uow, command.tag, fast=command.fast)
    raise Boom(command.tag)


async def write_twice(command: WriteTwice, uow: UnitOfWork) -> None:
    await _write(uow, command.tag, fast=command.fast, event_id=f"twice-{command.tag}", times=2)


async def write_twice_then_refuse(command: WriteTwiceThenRefuse, uow: UnitOfWork) -> None:
    try:
        await _write(uow, command.tag, fast=False, event_id=f"twice-{command.tag}", times=2)
    except IntegrityError:
        raise FailedPrecondition(f"{command.tag} is refused after writing", reason="REFUSED") from None


def toy_that_writes(db: Database, write_path: WritePath) -> Dispatcher:
    """The toy service, plus the commands above."""
    dispatcher = toy_dispatcher(db, write_path)
    dispatcher.register_all(
        {
            WriteThenRefuse: write_then_refuse,
            WriteThenExplode: write_then_explode,
            WriteTwice: write_twice,
            WriteTwiceThenRefuse: write_twice_then_refuse,
        }
    )
    return dispatcher


def relay_of(db: Database, write_path: WritePath, js: JetStreamContext, **options: Any) -> OutboxRelay:
    """The relay as the service host builds it: it knows its stream."""
    return OutboxRelay(db, write_path, js, stream=STREAM.name, **options)


# -- fixtures ---------------------------------------------------------------------------------


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


@pytest.fixture
async def write_path(runtime_db: Database) -> AsyncIterator[WritePath]:
    path = write_path_for(runtime_db)
    yield path
    await path.close()


@pytest.fixture
def dispatcher(runtime_db: Database, write_path: WritePath) -> Dispatcher:
    return toy_that_writes(runtime_db, write_path)


# -- outbox and relay -------------------------------------------------------------------------


async def test_committed_events_reach_the_stream_once_each_in_commit_order_with_their_ids_and_envelope(
    runtime_db: Database, write_path: WritePath, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    await dispatcher.handle(Note("t1"), Context(correlation_id="chain-1"))
    await dispatcher.handle(Note("t2"), Context(correlation_id="chain-1"))
    await dispatcher.handle(Note("t3"))
    rows = await outbox_rows(runtime_db)
    fence = await acquire_lease(write_path, WORKER_LEASE, "test", LONG)
    assert fence is not None
    relay = relay_of(runtime_db, write_path, js, batch=2)

    await relay.run_once(fence)  # two batches: 2 + 1
    assert await relay.relay_batch(fence) == 0

    messages = await stream_messages(js)
    assert [m.subject for m in messages] == [SUBJECT] * 3
    assert [tag_of(m) for m in messages] == ["t1", "t2", "t3"]
    assert [msg_id(m) for m in messages] == [row.event_id for row in rows]
    headers = [m.headers or {} for m in messages]
    assert {h[envelope.EVENT_TYPE] for h in headers} == {EVENT_TYPE}
    assert {h[envelope.ACTOR] for h in headers} == {"system"}
    correlations = [h[envelope.CORRELATION_ID] for h in headers]
    assert correlations[:2] == ["chain-1", "chain-1"]
    assert correlations[2] not in ("", "chain-1")  # a call without one starts a chain of its own
    assert [datetime.fromisoformat(h[envelope.OCCURRED_AT]) for h in headers] == [
        row.created_at for row in rows
    ]
    assert await pending(runtime_db) == 0


async def test_events_of_a_command_that_raised_leave_no_row_never_reach_the_stream_and_the_caller_hears(
    runtime_db: Database, write_path: WritePath, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    # Together, so that on SQLite they share one batch: a failed unit rolls back alone, also
    # what it had written and flushed before it failed.
    results: tuple[Any, ...] = await asyncio.gather(
        dispatcher.handle(Refuse("refused")),
        dispatcher.handle(Explode("exploded")),
        dispatcher.handle(WriteThenRefuse("written-then-refused")),
        dispatcher.handle(WriteThenExplode("written-then-exploded")),
        dispatcher.handle(Note("kept")),
        return_exceptions=True,
    )
    refused, exploded, written_refused, written_exploded, kept = results
    assert isinstance(refused, FailedPrecondition)
    assert refused.reason == "REFUSED"
    assert isinstance(exploded, Boom)
    assert isinstance(written_refused, FailedPrecondition)
    assert isinstance(written_exploded, Boom)
    assert kept == "kept"
    fence = await acquire_lease(write_path, WORKER_LEASE, "test", LONG)
    assert fence is not None

    assert await relay_of(runtime_db, write_path, js).relay_batch(fence) == 1

    rows = await outbox_rows(runtime_db)
    assert await effects(runtime_db) == Counter({"kept": 1})
    assert [msg_id(m) for m in await stream_messages(js)] == [row.event_id for row in rows]


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        (WriteTwice("conflicting"), Aborted),
        (WriteTwice("conflicting", fast=True), Aborted),
        (WriteThenExplode("conflicting", fast=True), Boom),
    ],
    ids=["orm-conflict", "fast-insert-conflict", "fast-insert-then-boom"],
)
async def test_a_command_failing_amid_a_batch_leaves_nothing_the_caller_hears_why_and_its_batch_mates_commit(
    runtime_db: Database, dispatcher: Dispatcher, failing: Command, error: type[Exception]
) -> None:
    # Together, so that on SQLite they share one batch (one transaction, a savepoint each); the
    # failing one is not first in it. A unique-key conflict is told to retry (ABORTED).
    results: tuple[Any, ...] = await asyncio.gather(
        dispatcher.handle(Note("before")),
        dispatcher.handle(failing),
        dispatcher.handle(Note("after")),
        return_exceptions=True,
    )
    before, failed, after = results

    assert isinstance(failed, error), repr(failed)
    assert (before, after) == ("before", "after")
    assert await effects(runtime_db) == Counter({"before": 1, "after": 1})
    assert await dispatcher.handle(Note("later")) == "later"


@pytest.mark.parametrize(
    "command",
    [
        WriteThenRefuse("half-done"),
        WriteThenRefuse("half-done", fast=True),
        WriteTwiceThenRefuse("half-done"),
    ],
    ids=["orm-write", "fast-insert", "failed-orm-write"],
)
async def test_an_event_refused_after_writing_is_recorded_as_refused_with_nothing_of_its_writes(
    runtime_db: Database, dispatcher: Dispatcher, command: Command
) -> None:
    result = await dispatcher.handle(command, inbox=InboxKey(DURABLE, "event-half-done"))

    assert isinstance(result, Refused)
    assert await inbox(runtime_db) == {
        "event-half-done": "refused: FailedPrecondition: half-done is refused after writing"
    }
    assert await effects(runtime_db) == Counter()


@pytest.mark.parametrize("stream", [STREAM.name, ""], ids=["reading-the-stream-tail", "by-msg-id-dedup"])
async def test_a_relay_that_published_but_died_before_marking_does_not_duplicate_on_the_stream(
    runtime_db: Database, write_path: WritePath, dispatcher: Dispatcher, js: JetStreamContext, stream: str
) -> None:
    # With its stream named (as the service host builds it) a restarted relay finds the rows
    # on the stream and marks them; without, it publishes them again and JetStream drops them.
    for tag in "abcd":
        await dispatcher.handle(Note(tag))
    ids = [row.event_id for row in await outbox_rows(runtime_db)]
    fence = await acquire_lease(write_path, WORKER_LEASE, "test", LONG)
    assert fence is not None
    dying = DiesBeforeMarking()

    with pytest.raises(ConnectionError):
        await OutboxRelay(runtime_db, dying, js, stream=stream).relay_batch(fence)
    assert dying.attempts == 1  # it got as far as the mark
    assert await stream_count(js) == 4
    assert await pending(runtime_db) == 4

    assert await OutboxRelay(runtime_db, write_path, js, stream=stream).relay_batch(fence) == 4

    assert [msg_id(m) for m in await stream_messages(js)] == ids
    assert await pending(runtime_db) == 0


# -- leases -----------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_until_it_expires_or_is_released_and_its_token_grows_with_each_hand(
    write_path: WritePath,
) -> None:
    ttl = timedelta(seconds=0.5)

    alpha = await acquire_lease(write_path, "job", "alpha", ttl)
    assert alpha == Fence("job", "alpha", 1)
    assert await acquire_lease(write_path, "job", "beta", ttl) is None
    renewed_at = time.monotonic()
    assert await acquire_lease(write_path, "job", "alpha", ttl) == alpha  # a renewal keeps the token
    assert await acquire_lease(write_path, "job", "beta", ttl) is None
    # Another lease name is independent.
    assert await acquire_lease(write_path, "other-job", "beta", ttl) == Fence("other-job", "beta", 1)

    beta = await eventually_acquired(write_path, "job", "beta", LONG)
    assert time.monotonic() - renewed_at >= ttl.total_seconds() - 0.02  # not before the renewal ran out
    assert beta == Fence("job", "beta", 2)
    assert await acquire_lease(write_path, "job", "alpha", ttl) is None

    await release_lease(write_path, beta)
    assert await acquire_lease(write_path, "job", "alpha", LONG) == Fence("job", "alpha", 3)
    assert await acquire_lease(write_path, "job", "beta", ttl) is None


async def test_a_release_by_someone_who_does_not_hold_the_lease_or_with_a_stale_token_changes_nothing(
    write_path: WritePath,
) -> None:
    first = await acquire_lease(write_path, "job", "alpha", timedelta(seconds=0.05))
    assert first is not None
    await asyncio.sleep(0.1)
    beta = await acquire_lease(write_path, "job", "beta", timedelta(seconds=0.05))
    assert beta is not None
    await asyncio.sleep(0.1)
    alpha = await acquire_lease(write_path, "job", "alpha", LONG)
    assert alpha == Fence("job", "alpha", 3)

    await release_lease(write_path, Fence("job", "beta", alpha.token))  # not the holder
    await release_lease(write_path, beta)  # the holder before
    await release_lease(write_path, first)  # the holder, with a stale token

    assert await acquire_lease(write_path, "job", "beta", LONG) is None
    assert await acquire_lease(write_path, "job", "alpha", LONG) == alpha


async def test_replicas_racing_for_a_new_lease_end_with_exactly_one_holder(runtime_db: Database) -> None:
    async with write_paths(runtime_db, 6) as paths:
        for round_ in range(3):
            name = f"race-{round_}"
            fences = await asyncio.gather(
                *(acquire_lease(path, name, f"replica-{n}", LONG) for n, path in enumerate(paths))
            )
            held = [fence for fence in fences if fence is not None]
            assert len(held) == 1, fences
            assert held[0].token == 1
            row = await lease_row(runtime_db, name)
            assert row is not None
            assert row.holder == held[0].holder


async def test_replicas_racing_for_an_expired_lease_end_with_exactly_one_holder_with_the_next_token(
    runtime_db: Database,
) -> None:
    async with write_paths(runtime_db, 6) as paths:
        for round_ in range(3):
            name = f"expired-{round_}"
            assert await acquire_lease(paths[0], name, "gone", timedelta(seconds=0.05)) is not None
            await asyncio.sleep(0.1)
            fences = await asyncio.gather(
                *(acquire_lease(path, name, f"replica-{n}", LONG) for n, path in enumerate(paths))
            )
            held = [fence for fence in fences if fence is not None]
            assert len(held) == 1, fences
            assert held[0].token == 2
            row = await lease_row(runtime_db, name)
            assert row is not None
            assert (row.holder, row.token) == (held[0].holder, 2)
            assert await acquire_lease(paths[0], name, "gone", LONG) is None


async def test_a_relay_whose_lease_was_taken_over_gets_lease_lost_and_marks_nothing(
    runtime_db: Database, write_path: WritePath, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    await dispatcher.handle(Note("a"))
    await dispatcher.handle(Note("b"))
    ids = [row.event_id for row in await outbox_rows(runtime_db)]
    old = await acquire_lease(write_path, WORKER_LEASE, "old", timedelta(seconds=0.2))
    assert old is not None
    new = await eventually_acquired(write_path, WORKER_LEASE, "new", LONG)
    assert new.token == old.token + 1

    with pytest.raises(LeaseLost) as lost:
        await relay_of(runtime_db, write_path, js).relay_batch(old)
    assert lost.value.fence == old
    assert await pending(runtime_db) == 2

    assert await relay_of(runtime_db, write_path, js).relay_batch(new) == 2
    assert await pending(runtime_db) == 0
    assert [msg_id(m) for m in await stream_messages(js)] == ids


async def test_two_workers_running_together_publish_each_event_exactly_once(
    runtime_db: Database, nc: NatsClient, js: JetStreamContext
) -> None:
    # A core subscription sees every publish, also those JetStream would drop as duplicates.
    published: Counter[str] = Counter()

    async def seen(msg: Msg) -> None:
        published[(msg.headers or {}).get(envelope.MSG_ID, "")] += 1

    subscription = await nc.subscribe("kasvu.registry.v1.>", cb=seen)
    async with replicas(runtime_db, js, 2, relay_batch=5) as group:
        for replica in group:
            replica.start()
        for round_ in range(4):
            # One command after the other, alternating replicas (each wakes its own worker), so
            # that the commit order is defined while the relays run.
            for n in range(6):
                await group[n % 2].dispatcher.handle(Note(f"r{round_}-{n}"))
            await asyncio.sleep(0.05)  # lets a relay round run between the rounds of commands
        await eventually(lambda: nothing_pending(runtime_db), "all events relayed")
        assert sum(replica.worker.fence is not None for replica in group) == 1
        for replica in group:
            await replica.stop()  # each finishes its round: no publish is still in flight
    await nc.flush()
    await subscription.drain()  # type: ignore[no-untyped-call]  # every callback has run

    ids = [row.event_id for row in await outbox_rows(runtime_db)]
    assert len(ids) == 24
    assert published == Counter(dict.fromkeys(ids, 1))
    assert [msg_id(m) for m in await stream_messages(js)] == ids


async def test_when_the_relaying_worker_stops_another_takes_over_with_a_new_token(
    runtime_db: Database, js: JetStreamContext
) -> None:
    async with replicas(runtime_db, js, 2) as (first, second):
        first.start()
        await first.dispatcher.handle(Note("early"))
        await eventually(lambda: nothing_pending(runtime_db), "first worker relayed")
        first_fence = first.worker.fence
        assert first_fence is not None
        # The first holds the lease; the second cannot relay while it runs.
        second.start()
        await first.stop()

        await second.dispatcher.handle(Note("late"))
        await eventually(lambda: nothing_pending(runtime_db), "second worker relayed", within=3)
        second_fence = second.worker.fence
        assert second_fence is not None
        assert second_fence.token == first_fence.token + 1

    assert [tag_of(m) for m in await stream_messages(js)] == ["early", "late"]


# -- consumers --------------------------------------------------------------------------------


async def test_a_consumer_applies_each_event_once_and_a_redelivered_duplicate_once(
    runtime_db: Database, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    await with_duplicate_window(js, 0.2)
    first = await publish_event(js, "event-dup", "dup")
    await asyncio.sleep(0.4)
    second = await publish_event(js, "event-dup", "dup")
    assert second != first
    for n in range(3):
        await publish_event(js, f"event-{n}", f"e{n}")
    assert await stream_count(js) == 5

    async with consuming(consumer_of(dispatcher, js)):

        async def settled() -> bool:
            return await deliveries(js) == 5 and await all_acked(js)

        await eventually(settled, "all events handled and acked")

    assert await effects(runtime_db) == Counter({"dup": 1, "e0": 1, "e1": 1, "e2": 1})
    assert await inbox(runtime_db) == dict.fromkeys(["event-dup", "event-0", "event-1", "event-2"], "applied")


async def test_an_applied_event_passes_its_correlation_and_itself_as_cause_to_the_events_it_causes(
    runtime_db: Database, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    await publish_event(js, "event-chained", "chained", headers={envelope.CORRELATION_ID: "chain-7"})
    await publish_event(js, "event-first", "first")

    async with consuming(consumer_of(dispatcher, js)):
        await eventually(lambda: all_acked(js), "both events handled and acked")

    headers = {
        events_pb2.TermsPublished.FromString(row.payload).terms: json.loads(row.headers)
        for row in await outbox_rows(runtime_db)
    }
    assert headers["chained"][envelope.CORRELATION_ID] == "chain-7"
    assert headers["chained"][envelope.CAUSATION_ID] == "event:event-chained"
    assert headers["chained"][envelope.ACTOR] == "system:event:event-chained"
    assert headers["first"][envelope.CORRELATION_ID] == "event-first"  # the first of its chain


async def test_two_consumer_replicas_apply_each_event_once_though_duplicates_reach_both(
    runtime_db: Database, js: JetStreamContext
) -> None:
    await with_duplicate_window(js, 0.2)
    tags = [f"x{n}" for n in range(8)]
    for tag in tags:
        await publish_event(js, f"event-{tag}", tag)
    await asyncio.sleep(0.3)
    for tag in tags:
        await publish_event(js, f"event-{tag}", tag)
    assert await stream_count(js) == 2 * len(tags)

    async with replicas(runtime_db, js, 2) as group:
        consumers = [consumer_of(replica.dispatcher, js, batch=1) for replica in group]
        async with consuming(*consumers):

            async def settled() -> bool:
                return await deliveries(js) == 2 * len(tags) and await all_acked(js)

            await eventually(settled, "all events handled and acked", within=8)

    assert await effects(runtime_db) == Counter(dict.fromkeys(tags, 1))
    assert await inbox(runtime_db) == {f"event-{tag}": "applied" for tag in tags}


async def test_a_refused_event_is_recorded_with_its_reason_acked_and_has_no_effect(
    runtime_db: Database, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    calls: Counter[str] = Counter()

    def refuse_some(event: events_pb2.TermsPublished, subject: str) -> Command | None:
        calls[event.terms] += 1
        if event.terms == "missing":
            return Refuse(event.terms)
        if event.terms == "half-done":
            return WriteThenRefuse(event.terms)
        return Note(event.terms)

    for tag in ("missing", "half-done", "present"):
        await publish_event(js, f"event-{tag}", tag)
    async with consuming(consumer_of(dispatcher, js, refuse_some)):

        async def settled() -> bool:
            return len(await inbox(runtime_db)) == 3 and await all_acked(js)

        await eventually(settled, "all events handled and acked")

    outcomes = await inbox(runtime_db)
    assert outcomes["event-missing"] == "refused: FailedPrecondition: missing is refused"
    assert outcomes["event-half-done"] == "refused: FailedPrecondition: half-done is refused after writing"
    assert outcomes["event-present"] == "applied"
    # What the refused command had written before it was refused is gone; its inbox row stays.
    assert await effects(runtime_db) == Counter({"present": 1})
    # Acked, not nak'd: nothing is pending and nothing was delivered twice.
    assert calls == Counter({"missing": 1, "half-done": 1, "present": 1})
    assert await deliveries(js) == 3


async def test_an_unexpected_handler_failure_leaves_no_trace_and_the_event_is_redelivered(
    runtime_db: Database, dispatcher: Dispatcher, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    calls: Counter[str] = Counter()

    def explode_once(event: events_pb2.TermsPublished, subject: str) -> Command | None:
        calls[event.terms] += 1
        return WriteThenExplode(event.terms) if calls[event.terms] == 1 else Note(event.terms)

    def failed() -> bool:
        return any(
            record.exc_info is not None and isinstance(record.exc_info[1], Boom)
            for record in caplog.records
            if record.name == "services.runtime.bus"
        )

    async def first_attempt_failed() -> bool:
        return failed()

    await publish_event(js, "event-flaky", "flaky")
    async with consuming(consumer_of(dispatcher, js, explode_once)):
        await eventually(first_attempt_failed, "first attempt failed", within=3)
        # The failed attempt committed nothing: no inbox row, and not the effect it had written.
        assert calls == Counter({"flaky": 1})
        assert await inbox(runtime_db) == {}
        assert await effects(runtime_db) == Counter()

        async def settled() -> bool:
            return (await inbox(runtime_db)).get("event-flaky") == "applied" and await all_acked(js)

        await eventually(settled, "redelivered event applied", within=6)

    assert calls == Counter({"flaky": 2})
    assert await deliveries(js) == 2
    assert await effects(runtime_db) == Counter({"flaky": 1})


async def test_an_event_without_an_id_of_another_type_than_its_subject_says_or_undecodable_is_terminated(
    runtime_db: Database, dispatcher: Dispatcher, js: JetStreamContext
) -> None:
    translated: list[str] = []

    def note_and_remember(event: events_pb2.TermsPublished, subject: str) -> Command | None:
        translated.append(event.terms)
        return Note(event.terms)

    suspended = "kasvu.registry.v1.ProviderSuspended"
    await publish_event(js, "event-forged-header", "forged-header", event_type=suspended)
    await publish_event(js, "event-forged-subject", "forged-subject", subject=f"{suspended}.{REGION}")
    await publish_event(js, "", "anonymous")
    await publish_event(js, "event-undecodable", "undecodable", payload=b"not a protobuf")
    await publish_event(js, "event-genuine", "genuine")
    consumer = consumer_of(dispatcher, js, note_and_remember, subject="kasvu.registry.v1.>")
    async with consuming(consumer):

        async def settled() -> bool:
            return await deliveries(js) == 5 and await all_acked(js)

        await eventually(settled, "all events handled or terminated")

    assert translated == ["genuine"]
    assert await effects(runtime_db) == Counter({"genuine": 1})
    assert await inbox(runtime_db) == {"event-genuine": "applied"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_consumer_keeps_consuming_after_the_nats_server_restarts(
    runtime_db: Database,
    dispatcher: Dispatcher,
    nats_server: NatsServer,
    nc: NatsClient,
    js: JetStreamContext,
) -> None:
    async with consuming(consumer_of(dispatcher, js)):
        await publish_event(js, "before-restart", "before")
        await eventually(effect_applied(runtime_db, "before"), "event before the restart applied")

        nats_server.stop()
        nats_server.start()
        await eventually(connected(nc), "client reconnected", within=5)

        async def publish_after() -> bool:
            await publish_event(js, "after-restart", "after")
            return True

        # JetStream may need a moment after start before it answers publishes; the same
        # Nats-Msg-Id makes a retry of a publish that was stored but not acked harmless.
        await eventually(publish_after, "publish after restart", within=5)
        await eventually(effect_applied(runtime_db, "after"), "event after the restart applied", within=10)

    assert await effects(runtime_db) == Counter({"before": 1, "after": 1})
    assert await inbox(runtime_db) == {"before-restart": "applied", "after-restart": "applied"}


def effect_applied(db: Database, tag: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await effects(db))[tag] == 1

    return check


def connected(nc: NatsClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(nc.is_connected)

    return check

"""The event bus on NATS JetStream: connection, streams owned by their service, the outbox relay
(at-least-once, de-duplicated by Nats-Msg-Id, fenced by the worker's lease) and durable pull
consumers that turn events into commands for the dispatcher, applied once through the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import nats
import sqlalchemy as sa
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import ColumnElement, bindparam, exists, or_, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import envelope
from services.runtime.db import Database, connection_of, database_now
from services.runtime.dispatch import Dispatcher, InboxKey
from services.runtime.domain import Command
from services.runtime.natsaccess import NatsAccess
from services.runtime.prepared import Prepared
from services.runtime.tables import DeadLetter, Lease, OutboxEvent
from services.runtime.uow import Context
from services.runtime.worker import Fence, LeaseLost
from services.runtime.writer import Outcome, WritePath

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = timedelta(minutes=2)

E = TypeVar("E", bound=Message)


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream a service owns and declares at start-up."""

    name: str
    subjects: tuple[str, ...]


def crash_if(point: str, configured: str) -> None:
    """Fault injection for crash tests: exit at once, as SIGKILL would, at a named point."""
    if configured and configured == point:
        log.warning("crash point reached", extra={"crash_point": point})
        os._exit(137)


async def connect(url: str, name: str, access: NatsAccess | None = None) -> NatsClient:
    """Connects with callbacks that log and with unlimited reconnects: a service outlives
    a NATS restart instead of giving up after nats-py's default 60 attempts. `access` signs
    in as the service's own user (its inbox prefix with it), over TLS when it says so."""

    async def on_error(error: Exception) -> None:
        log.warning("nats error", extra={"error": type(error).__name__})

    client: NatsClient | None = None

    async def on_disconnect() -> None:
        if client is not None and client.is_closed:
            # Our own close or drain at shutdown, not a lost connection.
            log.info("nats connection closed")
            return
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    client = await nats.connect(
        # KASVU_NATS_URL may list a cluster's servers, comma-separated.
        [server.strip() for server in url.split(",") if server.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **(access or NatsAccess()).connect_options(),
    )
    return client


@dataclass(frozen=True)
class Retention:
    """How much of its history a stream keeps (0: no limit). Applied when the service creates
    the stream; an operator's later limits are left alone."""

    max_age_s: float = 0.0
    max_bytes: int = 0
    max_msgs: int = 0


async def declare_stream(
    js: JetStreamContext, spec: StreamSpec, replicas: int, retention: Retention = Retention()
) -> None:
    """Creates the stream, or brings an existing one's subjects and replicas up to date. File
    storage; fsync policy is the server's `sync_interval` (deploy/nats sets `always`:
    acknowledged means on disk). Limits an operator set on an existing stream (age, bytes,
    messages) are kept: only the fields the service owns are changed."""
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                storage=StorageType.FILE,
                num_replicas=replicas,
                duplicate_window=DUPLICATE_WINDOW.total_seconds(),
                max_age=retention.max_age_s or None,
                max_bytes=retention.max_bytes or None,
                max_msgs=retention.max_msgs or None,
            )
        )
        return
    config = info.config
    if sorted(config.subjects or []) == sorted(spec.subjects) and config.num_replicas == replicas:
        return
    await js.update_stream(replace(config, subjects=list(spec.subjects), num_replicas=replicas))


OUTBOX = OutboxEvent.__table__  # type: ignore[attr-defined]


def _pending_outbox(oldest_running_first: bool) -> Any:
    query = (
        sa.select(
            OUTBOX.c.seq,
            OUTBOX.c.event_id,
            OUTBOX.c.subject,
            OUTBOX.c.event_type,
            OUTBOX.c.payload,
            OUTBOX.c.headers,
        )
        .where(OUTBOX.c.published_at.is_(None), OUTBOX.c.set_aside_at.is_(None))
        .order_by(OUTBOX.c.seq)
        .limit(bindparam("limit"))
    )
    if oldest_running_first:
        oldest_running = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        query = query.where(or_(OUTBOX.c.txid.is_(None), OUTBOX.c.txid < oldest_running))
    return query


_PENDING_OUTBOX = Prepared(_pending_outbox(False), elsewhere=_pending_outbox(True))
"""The oldest rows still to publish, in seq order; rows set aside wait for an operator.

On PostgreSQL a row is ready only once every transaction that began before the one that
wrote it has ended: sequence numbers are taken at insert, so a transaction still open
with a smaller seq would otherwise commit its row after a larger one was relayed, and
the stream would no longer be in commit order. (Prepared: the relay asks after every
commit that wrote events.)
"""


async def pending_outbox(db: Database, limit: int) -> list[Any]:
    """Rows (seq, event_id, subject, event_type, payload, headers) to publish next."""
    async with db.reader.connect() as connection:
        return (await _PENDING_OUTBOX.execute(connection, {"limit": limit})).all()


def lease_held(fence: Fence, now: datetime) -> ColumnElement[bool]:
    """A SQL condition: `fence` still holds its lease at `now` (the database's clock)."""
    return exists(
        select(Lease.name).where(
            col(Lease.name) == fence.name,
            col(Lease.holder) == fence.holder,
            col(Lease.token) == fence.token,
            col(Lease.expires_at) > now,
        )
    )


LEASES = Lease.__table__  # type: ignore[attr-defined]
_MARK_ONE_BY_ONE = 16
_MARK_PUBLISHED = Prepared(
    sa.update(OUTBOX)
    .where(
        OUTBOX.c.seq == bindparam("seq"),
        sa.exists(
            sa.select(LEASES.c.name).where(
                LEASES.c.name == bindparam("lease"),
                LEASES.c.holder == bindparam("holder"),
                LEASES.c.token == bindparam("token"),
                LEASES.c.expires_at > bindparam("now"),
            )
        ),
    )
    .values(published_at=bindparam("now"))
)

EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
WRONG_LAST_MSG_ID = 10070  # JetStream's error code when the stream's tail is not the expected one
MAX_PUBLISH_ATTEMPTS = 3


class OutboxRelay:
    """Moves committed outbox rows to the service's stream, oldest first; a job of the leased worker.

    The stream never holds two messages with one event id, however long a relay was down:
    the relay is the stream's one writer, publishes each row with the id of the message it
    expects last on the stream (Nats-Expected-Last-Msg-Id), and after a restart first marks
    the rows it finds already stored (a relay that died between publishing and marking).
    Rows are marked published only while the worker's lease is still held with the same
    fencing token, so a replica that lost the lease stops at its next batch. A row that
    cannot be published (too large for the server, refused) is set aside after a few tries,
    so it never holds back the rows behind it.
    """

    def __init__(
        self,
        db: Database,
        write_path: WritePath,
        js: JetStreamContext,
        *,
        stream: str = "",
        batch: int = 200,
        ack_timeout_s: float = 10.0,
        max_payload: Callable[[], int] = lambda: 1024 * 1024,
        crash_point: str = "",
    ) -> None:
        self._db = db
        self._write_path = write_path
        self._js = js
        self._stream = stream
        self._batch = batch
        self._crash_point = crash_point
        self._max_payload = max_payload
        self.ack_timeout_s = ack_timeout_s
        self._tail: str | None = None
        """The event id last on the stream as this relay knows it; None: ask the stream."""

    async def _stream_tail(self) -> str:
        if not self._stream:
            return ""
        info = await self._js.stream_info(self._stream)
        if not info.state.last_seq:
            return ""
        last = await self._js.get_msg(self._stream, info.state.last_seq)
        return str((last.headers or {}).get(envelope.MSG_ID, ""))

    async def relay_batch(self, fence: Fence) -> int:
        rows = await pending_outbox(self._db, self._batch)
        if not rows:
            return 0
        if self._tail is None:
            self._tail = await self._stream_tail()
        ids = [row.event_id for row in rows]
        # Rows up to the stream's tail were stored before a crash and never marked.
        stored = ids.index(self._tail) + 1 if self._tail in ids else 0
        published = [row.seq for row in rows[:stored] if row.seq is not None]
        failures: dict[int, str] = {}
        outcomes = await asyncio.gather(
            *(
                self._publish(row, self._tail if i == stored else rows[i - 1].event_id)
                for i, row in enumerate(rows)
                if i >= stored
            ),
            return_exceptions=True,
        )
        for row, outcome in zip(rows[stored:], outcomes, strict=True):
            assert row.seq is not None
            if isinstance(outcome, BaseException):
                if isinstance(outcome, nats.js.errors.APIError) and outcome.err_code == WRONG_LAST_MSG_ID:
                    self._tail = None  # someone else wrote: ask the stream again next round
                failures[row.seq] = _describe(outcome)
                break  # the rows behind a failed one were published against the wrong tail
            published.append(row.seq)
            self._tail = row.event_id
        crash_if("relay_after_publish", self._crash_point)
        if published:
            await self._mark(fence, published)
        if failures:
            await self._count_failures(fence, failures)
        return len(published)

    async def _publish(self, row: Any, expected_last: str | None) -> object:
        headers = _headers(row)
        if expected_last:
            headers[EXPECTED_LAST_MSG_ID] = expected_last
        if len(row.payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) > self._max_payload():
            raise PayloadTooLarge(f"{len(row.payload)} bytes exceed the server's maximum payload")
        return await self._js.publish(
            row.subject, row.payload, headers=headers, stream=self._stream or None, timeout=self.ack_timeout_s
        )

    async def _mark(self, fence: Fence, seqs: list[int]) -> None:
        async def mark(session: AsyncSession) -> Outcome[int]:
            now = await database_now(session)
            connection = await connection_of(session)
            if connection.dialect.name == "sqlite" and len(seqs) <= _MARK_ONE_BY_ONE:
                # A few rows, as after most commits: one prepared statement each costs less than
                # building the IN list's statement.
                lease = {"lease": fence.name, "holder": fence.holder, "token": fence.token, "now": now}
                changed = 0
                for seq in seqs:
                    changed += (await _MARK_PUBLISHED.execute(connection, {"seq": seq, **lease})).rowcount
                return Outcome(changed)
            result = await session.exec(
                update(OutboxEvent)
                .where(col(OutboxEvent.seq).in_(seqs), lease_held(fence, now))
                .values(published_at=now)
            )
            return Outcome(int(result.rowcount))

        if await self._write_path.run(mark) == 0:
            raise LeaseLost(fence)

    async def _count_failures(self, fence: Fence, failures: dict[int, str]) -> None:
        async def count(session: AsyncSession) -> Outcome[None]:
            now = await database_now(session)
            for seq, error in failures.items():
                row = await session.get(OutboxEvent, seq)
                if row is None:
                    continue
                row.attempts += 1
                row.last_error = error[:255]
                if row.attempts >= MAX_PUBLISH_ATTEMPTS:
                    row.set_aside_at = now
                    log.error(
                        "outbox event set aside after failed publishes",
                        extra={
                            "event_id": row.event_id,
                            "event_type": row.event_type,
                            "error": row.last_error,
                            "alert": True,
                        },
                    )
                session.add(row)
            return Outcome(None)

        await self._write_path.run(count)

    async def run_once(self, fence: Fence) -> None:
        while await self.relay_batch(fence) == self._batch:
            pass


class PayloadTooLarge(Exception):
    """An event larger than the NATS server accepts; publishing it can never succeed."""


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:255]


def _headers(row: Any) -> dict[str, str]:
    headers: dict[str, str] = json.loads(row.headers or "{}")
    headers[envelope.MSG_ID] = row.event_id
    headers[envelope.EVENT_TYPE] = row.event_type
    return headers


Translate = Callable[[E, str], Command | None]
"""Turns a consumed event (and its subject) into the command it asks for, or None for no effect."""


class EventConsumer(Generic[E]):
    """A durable pull consumer shared by all replicas of a service.

    Each message becomes a command on the service's dispatcher, with the inbox key of the
    event: one transaction checks the inbox, applies the effect and records the event id;
    only then is the message acknowledged. A crash before the commit leaves nothing and the
    message is redelivered; a crash after it leaves the inbox row, so the redelivered
    message changes nothing. Messages of one fetch are handled together, so their units of
    work share the write path's batches.

    A message that cannot be applied is retried with back-off a few times, then kept as a
    dead letter (with its error, for `kasvu deadletters`) and terminated: it never holds back
    the messages behind it. One that can never be applied (no id, a type that does not match
    its subject, undecodable) is dead-lettered at once.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subject: str,
        event_type: type[E],
        translate: Translate[E],
        batch: int = 64,
        ack_wait_s: float = 5.0,
        max_deliveries: int = 5,
        backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
        max_ack_pending: int = 10_000,
        crash_point: str = "",
    ) -> None:
        self._dispatcher = dispatcher
        self._js = js
        self.stream = stream
        self.durable = durable
        self._subject = subject
        self._event_type = event_type
        self._type_name = event_type.DESCRIPTOR.full_name
        self._translate = translate
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self.max_deliveries = max_deliveries
        self._backoff_s = backoff_s
        self._max_ack_pending = max_ack_pending
        self._crash_point = crash_point

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            # Unlimited on the server: this consumer dead-letters at max_deliveries itself, so
            # nothing is dropped without a record.
            max_deliver=-1,
            # Messages waiting out their back-off count against this too; poison beyond it
            # slows the flow (by its back-off) but never stops it, as each is dead-lettered.
            max_ack_pending=self._max_ack_pending,
            filter_subject=self._subject,
        )
        return await self._js.pull_subscribe(
            self._subject, durable=self.durable, stream=self.stream, config=config
        )

    def _unusable(self, headers: dict[str, str], subject: str, data: bytes) -> tuple[str, E | None]:
        """Why the message can never be applied (empty when it can), and the decoded event."""
        if not headers.get(envelope.MSG_ID, ""):
            return "the event has no id (Nats-Msg-Id)", None
        if headers.get(envelope.EVENT_TYPE) != self._type_name or not subject.startswith(
            self._type_name + "."
        ):
            # The subject names the type; a header that disagrees is forged or broken.
            return f"the event's type header does not match its subject {subject}", None
        try:
            return "", self._event_type.FromString(data)
        except DecodeError:
            return f"the payload is not a {self._type_name}", None

    async def apply(self, headers: dict[str, str], subject: str, data: bytes) -> str:
        """Applies one event (from the stream or a replayed dead letter); its outcome's name."""
        problem, event = self._unusable(headers, subject, data)
        if event is None:
            raise UnusableEvent(problem)
        command = self._translate(event, subject)
        if command is None:
            return "ignored"
        event_id = headers[envelope.MSG_ID]
        context = Context(
            correlation_id=headers.get(envelope.CORRELATION_ID, "") or event_id,
            causation_id=f"event:{event_id}",
        )
        result = await self._dispatcher.handle(command, context, inbox=InboxKey(self.durable, event_id))
        return type(result).__name__

    async def handle(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        crash_if("consumer_after_fetch", self._crash_point)
        try:
            async with _in_progress(msg, self._ack_wait_s / 2):
                outcome = await self.apply(headers, msg.subject, msg.data)
        except UnusableEvent as problem:
            await self._dead_letter(msg, str(problem))
            return
        except Exception as error:
            deliveries = msg.metadata.num_delivered or 1
            if deliveries >= self.max_deliveries:
                log.exception("event failed its last delivery", extra={"consumer": self.durable})
                await self._dead_letter(msg, _describe(error))
                return
            delay = self._backoff_s[min(deliveries, len(self._backoff_s)) - 1]
            log.warning(
                "event handling failed; will be redelivered",
                extra={"consumer": self.durable, "deliveries": deliveries, "retry_in_s": delay},
                exc_info=True,
            )
            await msg.nak(delay=delay)
            return
        crash_if("consumer_after_commit", self._crash_point)
        await msg.ack()
        log.info(
            "event handled",
            extra={
                "consumer": self.durable,
                "event_id": headers.get(envelope.MSG_ID, ""),
                "outcome": outcome,
            },
        )

    async def _dead_letter(self, msg: Msg, error: str) -> None:
        headers = dict(msg.headers or {})
        meta = msg.metadata

        stream = meta.stream or self.stream
        stream_seq = meta.sequence.stream if meta.sequence else 0
        event_id = headers.get(envelope.MSG_ID, "")[:64]

        async def keep(session: AsyncSession) -> Outcome[bool]:
            kept = await session.exec(
                select(DeadLetter.id).where(
                    col(DeadLetter.consumer) == self.durable,
                    col(DeadLetter.stream) == stream,
                    col(DeadLetter.stream_seq) == stream_seq,
                    col(DeadLetter.event_id) == event_id,
                )
            )
            if kept.first() is not None:
                return Outcome(False)  # kept before a crash that left the message unterminated
            session.add(
                DeadLetter(
                    consumer=self.durable,
                    stream=stream,
                    stream_seq=stream_seq,
                    subject=msg.subject,
                    event_id=event_id,
                    headers=json.dumps(headers, separators=(",", ":")),
                    payload=msg.data,
                    error=error[:1000],
                    deliveries=meta.num_delivered or 1,
                    dead_at=await database_now(session),
                )
            )
            return Outcome(True)

        if not await self._dispatcher.write_path.run(keep):
            log.info("event already dead-lettered", extra={"consumer": self.durable, "event_id": event_id})
            await msg.term()
            return
        # An operator's alert: the event is kept and will not be retried until replayed.
        log.error(
            "event dead-lettered",
            extra={
                "consumer": self.durable,
                "event_id": headers.get(envelope.MSG_ID, ""),
                "error": error,
                "alert": True,
            },
        )
        await msg.term()

    async def _handle_or_leave(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:
            # The dead-letter write or the ack itself failed (database or NATS away): without an
            # ack JetStream redelivers after ack_wait.
            log.exception("event left for redelivery", extra={"consumer": self.durable})

    async def run(self, stop: asyncio.Event) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        while not stop.is_set():
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                try:
                    messages = await subscription.fetch(self._batch, timeout=1.0)
                except NatsTimeoutError:
                    continue
                await asyncio.gather(*(self._handle_or_leave(msg) for msg in messages))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Re-subscribe after errors: pull subscriptions can go stale after a
                # server restart (nats.py #504).
                log.warning(
                    "consumer will resubscribe",
                    extra={"consumer": self.durable, "error": type(error).__name__},
                )
                subscription = None
                await asyncio.sleep(0.5)
        if subscription is not None:
            # Ends only this client's interest; the durable consumer stays on the server.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


class UnusableEvent(Exception):
    """A message that no retry can apply: it is dead-lettered at once."""


@contextlib.asynccontextmanager
async def _in_progress(msg: Msg, every_s: float) -> AsyncIterator[None]:
    """Tells JetStream the message is being worked on, so a slow unit of work (a big batch, a
    slow disk) is not redelivered to another replica while it runs; a short ack wait then
    only delays messages whose consumer died."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


class DeadLetterReplayer:
    """Replays the dead letters an operator asked for (`kasvu deadletters replay`), through the
    consumer that dead-lettered them; the inbox still applies each event once. A job of the
    leased worker, so one replica replays."""

    def __init__(
        self, db: Database, write_path: WritePath, consumers: Callable[[], Sequence[EventConsumer[Any]]]
    ) -> None:
        self._db = db
        self._write_path = write_path
        self._consumers = consumers

    async def run_once(self, fence: Fence) -> None:
        async with self._db.read_session() as session:
            rows = list(
                (
                    await session.exec(
                        select(DeadLetter)
                        .where(
                            col(DeadLetter.replay_requested_at).is_not(None),
                            col(DeadLetter.replayed_at).is_(None),
                        )
                        .order_by(col(DeadLetter.id))
                        .limit(100)
                    )
                ).all()
            )
        by_name = {consumer.durable: consumer for consumer in self._consumers()}
        for row in rows:
            consumer = by_name.get(row.consumer)
            if consumer is None:
                continue
            try:
                outcome = await consumer.apply(json.loads(row.headers), row.subject, row.payload)
            except Exception as error:
                outcome = f"failed again: {_describe(error)}"
            await self._record(row.id, outcome)

    async def _record(self, dead_letter_id: int | None, outcome: str) -> None:
        async def record(session: AsyncSession) -> Outcome[None]:
            row = await session.get(DeadLetter, dead_letter_id)
            if row is not None:
                row.replayed_at = await database_now(session)
                row.replay_outcome = outcome[:255]
                session.add(row)
            return Outcome(None)

        await self._write_path.run(record)

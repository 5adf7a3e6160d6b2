"""The event bus on NATS JetStream: connection, streams owned by their service, the outbox relay
(at-least-once, de-duplicated by Nats-Msg-Id, fenced by the worker's lease) and durable pull
consumers that turn events into commands for the dispatcher, applied once through the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import ColumnElement, exists, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import envelope
from services.runtime.db import Database, database_now
from services.runtime.dispatch import Dispatcher, InboxKey
from services.runtime.domain import Command
from services.runtime.tables import Lease, OutboxEvent
from services.runtime.uow import Context
from services.runtime.worker import Fence, LeaseLost
from services.runtime.writer import Outcome, WritePath

log = logging.getLogger(__name__)

# Kept for callers that name the headers through the bus.
EVENT_TYPE_HEADER = envelope.EVENT_TYPE
MSG_ID_HEADER = envelope.MSG_ID
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


async def connect(url: str, name: str) -> NatsClient:
    """Connects with callbacks that log and with unlimited reconnects: a service outlives
    a NATS restart instead of giving up after nats-py's default 60 attempts."""

    async def on_error(error: Exception) -> None:
        log.warning("nats error", extra={"error": type(error).__name__})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        # KASVU_NATS_URL may list a cluster's servers, comma-separated.
        [server.strip() for server in url.split(",") if server.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def declare_stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> None:
    """Creates or updates the stream. File storage; fsync policy is the server's
    `sync_interval` (deploy/nats sets `always`: acknowledged means on disk)."""
    config = StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW.total_seconds(),
    )
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


async def pending_outbox(session: AsyncSession, limit: int) -> list[OutboxEvent]:
    result = await session.exec(
        select(OutboxEvent)
        .where(col(OutboxEvent.published_at).is_(None))
        .order_by(col(OutboxEvent.seq))
        .limit(limit)
    )
    return list(result.all())


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


class OutboxRelay:
    """Moves committed outbox rows to JetStream, oldest first; a job of the leased worker.

    A crash after publishing but before marking re-publishes with the same Nats-Msg-Id,
    which JetStream drops inside its duplicate window, and consumers' inboxes drop after
    it. Rows are marked published only while the worker's lease is still held with the
    same fencing token, so a replica that lost the lease stops at its next batch.
    """

    def __init__(
        self,
        db: Database,
        write_path: WritePath,
        js: JetStreamContext,
        *,
        batch: int = 200,
        ack_timeout_s: float = 10.0,
        crash_point: str = "",
    ) -> None:
        self._db = db
        self._write_path = write_path
        self._js = js
        self._batch = batch
        self._crash_point = crash_point
        self.ack_timeout_s = ack_timeout_s

    async def relay_batch(self, fence: Fence) -> int:
        async with self._db.read_session() as session:
            rows = await pending_outbox(session, self._batch)
        if not rows:
            return 0
        futures = [
            await self._js.publish_async(row.subject, row.payload, headers=_headers(row)) for row in rows
        ]
        # A bounded wait: with NATS gone the acks never come; the rows stay and go next round.
        await asyncio.wait_for(asyncio.gather(*futures), timeout=self.ack_timeout_s)
        crash_if("relay_after_publish", self._crash_point)
        seqs = [row.seq for row in rows if row.seq is not None]

        async def mark(session: AsyncSession) -> Outcome[int]:
            now = await database_now(session)
            result = await session.exec(
                update(OutboxEvent)
                .where(col(OutboxEvent.seq).in_(seqs), lease_held(fence, now))
                .values(published_at=now)
            )
            return Outcome(int(result.rowcount))

        if await self._write_path.run(mark) == 0:
            raise LeaseLost(fence)
        return len(rows)

    async def run_once(self, fence: Fence) -> None:
        while await self.relay_batch(fence) == self._batch:
            pass


def _headers(row: OutboxEvent) -> dict[str, str]:
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
        ack_wait_s: float = 30.0,
        crash_point: str = "",
    ) -> None:
        self._dispatcher = dispatcher
        self._js = js
        self._stream = stream
        self.durable = durable
        self._subject = subject
        self._event_type = event_type
        self._type_name = event_type.DESCRIPTOR.full_name
        self._translate = translate
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._crash_point = crash_point

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_ack_pending=1000,
            filter_subject=self._subject,
        )
        return await self._js.pull_subscribe(
            self._subject, durable=self.durable, stream=self._stream, config=config
        )

    async def handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        event_id = headers.get(envelope.MSG_ID, "")
        if not event_id:
            log.error("event without id terminated", extra={"subject": msg.subject})
            await msg.term()
            return
        if headers.get(envelope.EVENT_TYPE) != self._type_name or not msg.subject.startswith(
            self._type_name + "."
        ):
            # The subject names the type; a header that disagrees is forged or broken.
            log.error(
                "event of the wrong type terminated", extra={"event_id": event_id, "subject": msg.subject}
            )
            await msg.term()
            return
        try:
            event = self._event_type.FromString(msg.data)
        except DecodeError:
            log.error("undecodable event terminated", extra={"event_id": event_id, "subject": msg.subject})
            await msg.term()
            return
        command = self._translate(event, msg.subject)
        outcome = "ignored"
        if command is not None:
            context = Context(
                correlation_id=headers.get(envelope.CORRELATION_ID, "") or event_id,
                causation_id=f"event:{event_id}",
            )
            result = await self._dispatcher.handle(command, context, inbox=InboxKey(self.durable, event_id))
            outcome = type(result).__name__
            crash_if("consumer_after_commit", self._crash_point)
        await msg.ack()
        log.info("event handled", extra={"consumer": self.durable, "event_id": event_id, "outcome": outcome})

    async def _handle_or_nak(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:
            # Unexpected (database down, a bug): no ack, so JetStream redelivers.
            log.exception("event handling failed; will be redelivered", extra={"consumer": self.durable})
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

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
                await asyncio.gather(*(self._handle_or_nak(msg) for msg in messages))
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

"""The event bus on NATS JetStream: connection, streams owned by their service, the outbox
relay (at-least-once, de-duplicated by Nats-Msg-Id) and durable pull consumers whose effects
are applied once through the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from services.runtime.db import (
    Database,
    UnitOfWork,
    acquire_lease,
    mark_published,
    pending_outbox,
    prune_published,
    release_lease,
)
from services.runtime.errors import DomainError

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "Kasvu-Event-Type"
MSG_ID_HEADER = "Nats-Msg-Id"
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


class OutboxRelay:
    """Moves committed outbox rows to JetStream, oldest first.

    One replica relays at a time (a lease in the service's database); a crash after
    publishing but before marking re-publishes with the same Nats-Msg-Id, which
    JetStream drops inside its duplicate window, and consumers' inboxes drop after it.
    """

    def __init__(
        self, db: Database, js: JetStreamContext, *, service: str, batch: int = 200, crash_point: str = ""
    ) -> None:
        self._db = db
        self._js = js
        self._lease = f"{service}-outbox-relay"
        self._holder = f"{service}-{uuid.uuid4().hex[:12]}"
        self._batch = batch
        self._crash_point = crash_point
        self._wake = asyncio.Event()
        self.lease_ttl = timedelta(seconds=10)
        self.ack_timeout_s = 10.0

    def wake(self) -> None:
        """Called after a commit that emitted events, so they leave without waiting for a poll."""
        self._wake.set()

    async def relay_once(self) -> int:
        async with self._db.read_session() as session:
            rows = await pending_outbox(session, self._batch)
        if not rows:
            return 0
        futures = [
            await self._js.publish_async(
                row.subject,
                row.payload,
                headers={MSG_ID_HEADER: row.event_id, EVENT_TYPE_HEADER: row.event_type},
            )
            for row in rows
        ]
        # A bounded wait: with NATS gone the acks never come; the rows stay and go next round.
        await asyncio.wait_for(asyncio.gather(*futures), timeout=self.ack_timeout_s)
        crash_if("relay_after_publish", self._crash_point)
        await mark_published(self._db, [row.seq for row in rows if row.seq is not None])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        polls = 0
        held_until = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                # Renew only past half the lease: a renewal is a write, and writes are what
                # the service's database has least of.
                if loop.time() >= held_until - self.lease_ttl.total_seconds() / 2:
                    asked_at = loop.time()  # the lease runs from before the request, never longer
                    acquired = await acquire_lease(self._db, self._lease, self._holder, self.lease_ttl)
                    held_until = asked_at + self.lease_ttl.total_seconds() if acquired else 0.0
                if loop.time() < held_until:
                    while await self.relay_once() == self._batch and not stop.is_set():
                        pass
                    polls += 1
                    if polls % 600 == 0:
                        await prune_published(self._db, timedelta(hours=1))
            except (OSError, NatsTimeoutError, nats.errors.Error) as error:
                log.warning("outbox relay will retry", extra={"error": type(error).__name__})
            except Exception:
                log.exception("outbox relay failed; will retry")
            self._wake.clear()
            wait = asyncio.ensure_future(self._wake.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({wait, stopped}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            wait.cancel()
            stopped.cancel()
        await release_lease(self._db, self._lease, self._holder)


EventHandler = Callable[[UnitOfWork, str, E], Awaitable[None]]


class EventConsumer(Generic[E]):
    """A durable pull consumer shared by all replicas of a service.

    For each message: one transaction checks the inbox, applies the handler's effect
    and records the event id; only then is the message acknowledged. A crash before
    the commit leaves nothing and the message is redelivered; a crash after it leaves
    the inbox row, so the redelivered message changes nothing.
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subject: str,
        event_type: type[E],
        handler: EventHandler[E],
        batch: int = 64,
        ack_wait_s: float = 30.0,
        on_committed: Callable[[], None] | None = None,
        crash_point: str = "",
    ) -> None:
        self._db = db
        self._js = js
        self._stream = stream
        self.durable = durable
        self._subject = subject
        self._event_type = event_type
        self._handler = handler
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._on_committed = on_committed
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
        event_id = headers.get(MSG_ID_HEADER, "")
        if not event_id:
            log.error("event without id terminated", extra={"subject": msg.subject})
            await msg.term()
            return
        try:
            event = self._event_type.FromString(msg.data)
        except DecodeError:
            log.error("undecodable event terminated", extra={"event_id": event_id, "subject": msg.subject})
            await msg.term()
            return
        async with self._db.unit_of_work() as uow:
            if await uow.already_handled(self.durable, event_id):
                outcome = "duplicate"
            else:
                try:
                    await self._handler(uow, event_id, event)
                    outcome = "applied"
                except DomainError as refusal:
                    # A permanent refusal (e.g. no registration to suspend) is a decision,
                    # recorded in the inbox with its reason rather than retried forever.
                    await uow.session.rollback()
                    await uow.session.begin()
                    outcome = f"refused: {type(refusal).__name__}: {refusal.message}"
                uow.mark_handled(self.durable, event_id, outcome)
                await uow.commit()
                crash_if("consumer_after_commit", self._crash_point)
                if self._on_committed is not None and uow.emitted:
                    self._on_committed()
        await msg.ack()
        log.info("event handled", extra={"consumer": self.durable, "event_id": event_id, "outcome": outcome})

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
                for msg in messages:
                    try:
                        await self.handle(msg)
                    except Exception:
                        # Unexpected (database down, a bug): no ack, so JetStream redelivers.
                        log.exception(
                            "event handling failed; will be redelivered", extra={"consumer": self.durable}
                        )
                        await msg.nak(delay=1.0)
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

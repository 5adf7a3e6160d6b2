"""The supervisors' live alert feed: the breach events of one region (opened, escalated,
resolved) read back from the stream, filtered by severity, service and provider, so a
reconnecting supervisor resumes after the last sequence it saw, without gaps or repeats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from services.runtime.dispatch import subject_for
from services.selfmonitoring import model
from services.selfmonitoring.alert_hub import (
    FLUSH_S,
    MAX_BATCH,
    QUEUE_LIMIT,
    Delivery,
    RegionHub,
    RememberedIds,
)

REPLAY_IDLE_S = 2.0
"""How long a replay waits for the next stored event before it asks whether it was removed."""
_EVENT_CLASSES: dict[str, Any] = {name: getattr(events_pb2, name) for name in model.ALERT_EVENTS}


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts a subscriber wants; empty values match every alert."""

    severity: int = 0
    service: str = ""
    provider: str = ""

    @property
    def everything(self) -> bool:
        return not (self.severity or self.service or self.provider)

    def admits(self, breach: selfmonitoring_pb2.Breach) -> bool:
        return (
            (not self.severity or breach.severity == self.severity)
            and (not self.service or breach.service == self.service)
            and (not self.provider or breach.provider == self.provider)
        )


def alert_of(type_name: str, payload: bytes, sequence: int) -> selfmonitoring_pb2.Alert | None:
    """The alert an event on the stream is, or None when the event is no alert."""
    kind = model.ALERT_EVENTS.get(type_name)
    if kind is None:
        return None
    event = _EVENT_CLASSES[type_name].FromString(payload)
    breach = event.breach
    parts = model.BREACH.parse(breach.name, "breach.name")
    alert_id = model.alert_id(parts["breach"], kind)
    # An escalated breach is a suspension request: it carries SERIOUS whatever it opened as.
    return selfmonitoring_pb2.Alert(
        sequence=sequence,
        breach=breach,
        name=model.ALERT.format(region=parts["region"], alert=alert_id),
        kind=selfmonitoring_pb2.AlertKind.Value(f"ALERT_KIND_{kind}"),
        evidence=f"{breach.name}/observations",
    )


def delivery_of(msg: Msg) -> Delivery | None:
    """The alert a message of the stream is, with its sequence and event id; None for other events."""
    sequence = msg.metadata.sequence.stream
    alert = alert_of(msg.subject.split(".")[-2], msg.data, sequence)
    if alert is None:
        return None
    return Delivery.of(sequence, (msg.headers or {}).get("Nats-Msg-Id", ""), alert)


class AlertFeed:
    """Alerts from JetStream: one shared hub per region for the live feed, and a short-lived
    ordered consumer per resuming subscriber for the part it missed."""

    def __init__(
        self, js: Callable[[], JetStreamContext], queue_limit: int = QUEUE_LIMIT, flush_s: float = FLUSH_S
    ) -> None:
        self._js = js
        self._queue_limit = queue_limit
        self._flush_s = flush_s
        self._hubs: dict[str, RegionHub] = {}

    def hub_subscribers(self, region: str) -> int:
        """Subscribers of the region's hub in this process (0 when it has none running)."""
        hub = self._hubs.get(region)
        return hub.subscribers if hub is not None else 0

    def _hub(self, region: str) -> RegionHub:
        hub = self._hubs.get(region)
        if hub is None:
            # Every event of the region; the alert events are picked out when decoded.
            subject = subject_for(f"{events_pb2.DESCRIPTOR.package}.*", region)

            def idle(stopped: RegionHub) -> None:
                if self._hubs.get(region) is stopped:
                    del self._hubs[region]

            hub = RegionHub(
                self._js(), subject, delivery_of, idle, queue_limit=self._queue_limit, flush_s=self._flush_s
            )
            self._hubs[region] = hub
            hub.begin()
        return hub

    async def follow(
        self,
        region: str,
        resume_after: int | None,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
        only: AlertFilter = AlertFilter(),
    ) -> AsyncIterator[list[Delivery]]:
        """From the alert after `resume_after`, or from now on when it is None: batches of
        alerts (MAX_BATCH at most, in sequence order), each what arrived since the last.

        `on_subscribed` runs once the region's hub follows the stream, so a caller can tell its
        client that alerts from this moment on will arrive (the gRPC servicer sends its headers
        then). Raises `Overflowed` when the subscriber falls too far behind.
        """
        hub = self._hub(region)
        subscriber = hub.join(None if only.everything else only.admits)
        try:
            await hub.started()
            if on_subscribed is not None:
                await on_subscribed()
            replayed = RememberedIds()
            last = subscriber.joined_at if resume_after is None else resume_after
            if last < subscriber.joined_at:
                # Missed while away: replayed from the stream up to where the live queue begins.
                missed: list[Delivery] = []
                async for delivery in self._replay(hub.stream, hub.subject, last, subscriber.joined_at):
                    if replayed.first_time(delivery.event_id) and only.admits(delivery.alert.breach):
                        missed.append(delivery)
                    if len(missed) == MAX_BATCH:
                        yield missed
                        missed = []
                if missed:
                    yield missed
                last = subscriber.joined_at
            while True:
                # The hub delivers each event id once; only the replayed ones can come again.
                batch = [
                    delivery
                    for delivery in await subscriber.next_batch()
                    if delivery.sequence > last and delivery.event_id not in replayed
                ]
                if batch:
                    last = batch[-1].sequence
                    yield batch
        finally:
            hub.leave(subscriber)

    async def _replay(self, stream: str, subject: str, after: int, up_to: int) -> AsyncIterator[Delivery]:
        """The alerts of `subject` with sequences after `after`, up to and including `up_to`
        (the sequence of one of the subject's events, so the replay reaches it)."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        subscription = await self._js().subscribe(subject, ordered_consumer=True, config=config)
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=REPLAY_IDLE_S)
                except NatsTimeoutError:
                    # Everything up to `up_to` was stored when the consumer was made: a pause
                    # means a slow server, unless the stream's limits have removed it since.
                    if await self._removed(stream, up_to):
                        return
                    continue
                sequence = msg.metadata.sequence.stream
                if sequence > up_to:
                    return
                delivery = delivery_of(msg)
                if delivery is not None:
                    yield delivery
                if sequence == up_to or msg.metadata.num_pending == 0:
                    return
        finally:
            await subscription.unsubscribe()

    async def _removed(self, stream: str, sequence: int) -> bool:
        try:
            await self._js().get_msg(stream, sequence)
        except NotFoundError:
            return True
        return False

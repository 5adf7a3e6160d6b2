"""The supervisors' live alert feed: the breach events of one region (opened, escalated,
resolved) read back from the stream, filtered by severity, service and provider, so a
reconnecting supervisor resumes after the last sequence it saw, without gaps or repeats."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from services.runtime.dispatch import subject_for
from services.selfmonitoring import model

_EVENT_CLASSES: dict[str, Any] = {name: getattr(events_pb2, name) for name in model.ALERT_EVENTS}
_REMEMBERED_IDS = 4096
"""Event ids a subscriber remembers, so an event published twice (a relay that outlived the
stream's duplicate window) is delivered once."""


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts a subscriber wants; empty values match every alert."""

    severity: int = 0
    service: str = ""
    provider: str = ""

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


class AlertFeed:
    """Reads alerts from JetStream with an ordered, ephemeral consumer per subscriber."""

    def __init__(self, js: Callable[[], JetStreamContext]) -> None:
        self._js = js

    async def follow(
        self,
        region: str,
        resume_after: int | None,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
        only: AlertFilter = AlertFilter(),
    ) -> AsyncIterator[selfmonitoring_pb2.Alert]:
        """From the alert after `resume_after`, or from now on when it is None.

        `on_subscribed` runs once the consumer exists, so a caller can tell its client that
        alerts from this moment on will arrive (the gRPC servicer sends its headers then).
        """
        if resume_after is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=resume_after + 1
            )
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        # Every event of the region; the ordered consumer keeps stream order, and the alert
        # events are picked out here (one filter subject per consumer on older servers).
        subject = subject_for(f"{events_pb2.DESCRIPTOR.package}.*", region)
        subscription = await self._js().subscribe(subject, ordered_consumer=True, config=config)
        seen: OrderedDict[str, None] = OrderedDict()
        try:
            if on_subscribed is not None:
                await on_subscribed()
            while True:
                try:
                    msg = await subscription.next_msg(timeout=5.0)
                except NatsTimeoutError:
                    await asyncio.sleep(0)
                    continue
                event_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                if event_id:
                    if event_id in seen:
                        continue
                    seen[event_id] = None
                    if len(seen) > _REMEMBERED_IDS:
                        seen.popitem(last=False)
                alert = alert_of(msg.subject.split(".")[-2], msg.data, msg.metadata.sequence.stream)
                if alert is not None and only.admits(alert.breach):
                    yield alert
        finally:
            await subscription.unsubscribe()

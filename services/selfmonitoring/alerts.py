"""The supervisors' live alert feed: BreachOpened events of one region read back from the
stream, so a reconnecting supervisor resumes after the last sequence it saw, without gaps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from services.runtime.dispatch import subject_for


class AlertFeed:
    """Reads alerts from JetStream with an ordered, ephemeral consumer per subscriber."""

    def __init__(self, js: Callable[[], JetStreamContext]) -> None:
        self._js = js

    async def follow(
        self,
        region: str,
        resume_after: int | None,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
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
        subscription = await self._js().subscribe(
            subject_for(events_pb2.BreachOpened.DESCRIPTOR.full_name, region),
            ordered_consumer=True,
            config=config,
        )
        try:
            if on_subscribed is not None:
                await on_subscribed()
            while True:
                try:
                    msg = await subscription.next_msg(timeout=5.0)
                except NatsTimeoutError:
                    await asyncio.sleep(0)
                    continue
                event = events_pb2.BreachOpened.FromString(msg.data)
                yield selfmonitoring_pb2.Alert(sequence=msg.metadata.sequence.stream, breach=event.breach)
        finally:
            await subscription.unsubscribe()

"""One JetStream subscription per region, shared by every supervisor following that region's
alerts in this process: each event is read and decoded once and handed to the subscribers'
bounded queues, so 200 subscribers cost one consumer on the stream, not 200.

A hub starts with the region's first subscriber and stops when its last one leaves. It knows
its live position (the stream sequence of the region's last event it read, or of the region's
last event when it started), so a subscriber resuming from an earlier sequence replays from the stream up
to that position and then takes the live queue, which has been filling since it joined: no gap,
and nothing twice (sequences at or before the last delivered one are skipped). A subscriber
whose queue overflows is told so (`Overflowed`), rather than silently losing alerts.

Events are handed on in batches, every FLUSH_S at most: 200 subscribers of 500 alerts a second
would otherwise wake 100 000 times a second, each to write one small message. Each alert is
encoded once, as a one-alert StreamAlertsResponse, for every subscriber: a batch's message is
those encodings joined (concatenated protobuf messages are their merge, so the repeated field
holds every alert of the batch)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

QUEUE_LIMIT = 2048
"""Alerts a subscriber may have waiting (about 4 s at 500 alerts/s) before it is disconnected."""
FLUSH_S = 0.02
"""How long the hub gathers events before it hands them to the subscribers: a bound on the
delay it adds, and on how often a busy subscriber wakes."""
MAX_BATCH = 256
"""Alerts in one stream message at most (well inside gRPC's 4 MiB message limit)."""
REMEMBERED_IDS = 4096
"""Event ids remembered, so an event published twice (a relay that outlived the stream's
duplicate window) is delivered once."""

Decode = Callable[[Msg], "Delivery | None"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An alert as read from the stream, with the event id it was published under and its
    encoding as a one-alert StreamAlertsResponse."""

    sequence: int
    event_id: str
    alert: selfmonitoring_pb2.Alert
    encoded: bytes

    @classmethod
    def of(cls, sequence: int, event_id: str, alert: selfmonitoring_pb2.Alert) -> Delivery:
        encoded = selfmonitoring_pb2.StreamAlertsResponse(alerts=[alert]).SerializeToString()
        return cls(sequence, event_id, alert, encoded)


def encoded_batch(deliveries: list[Delivery]) -> bytes:
    """The StreamAlertsResponse holding `deliveries`' alerts, in order, already encoded."""
    return b"".join(delivery.encoded for delivery in deliveries)


class Overflowed(Exception):
    """A subscriber fell so far behind that its queue filled; it should resume from the last
    alert it saw."""


class HubStopped(Exception):
    """The hub's subscription failed; subscribers should reconnect."""


class RememberedIds:
    """The last `REMEMBERED_IDS` event ids seen, oldest forgotten first."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return bool(event_id) and event_id in self._ids

    def first_time(self, event_id: str) -> bool:
        if not event_id:
            return True
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > REMEMBERED_IDS:
            self._ids.popitem(last=False)
        return True


@dataclass(eq=False, slots=True)
class Subscriber:
    """One follower's live queue; `joined_at` is the hub's position when it joined (every later
    event reaches the queue)."""

    admits: Callable[[selfmonitoring_pb2.Breach], bool] | None
    """None: every alert."""
    limit: int
    joined_at: int = 0
    items: deque[Delivery] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failure: Exception | None = None

    def offer(self, deliveries: list[Delivery]) -> bool:
        """Queues the `deliveries` it admits; False (and the subscriber failed) when its queue
        was full already (a subscriber that keeps up takes any one batch)."""
        admits = self.admits
        wanted = deliveries if admits is None else [d for d in deliveries if admits(d.alert.breach)]
        if not wanted:
            return True
        if len(self.items) >= self.limit:
            self.fail(Overflowed(f"more than {self.limit} alerts waiting for this subscriber"))
            return False
        self.items.extend(wanted)
        self.ready.set()
        return True

    def fail(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
        self.ready.set()

    async def next_batch(self) -> list[Delivery]:
        """The queued deliveries, MAX_BATCH at most (waiting for one when none is); raises the
        subscriber's failure."""
        while True:
            if self.failure is not None:
                raise self.failure
            if self.items:
                if len(self.items) <= MAX_BATCH:
                    batch = list(self.items)
                    self.items.clear()
                else:
                    batch = [self.items.popleft() for _ in range(MAX_BATCH)]
                return batch
            self.ready.clear()
            await self.ready.wait()


class RegionHub:
    """The one subscription of a region's events in this process, fanned out to subscribers."""

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        decode: Decode,
        on_idle: Callable[[RegionHub], None],
        *,
        queue_limit: int = QUEUE_LIMIT,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._js = js
        self.subject = subject
        self.stream = ""
        """The stream holding `subject`, once the hub has started."""
        self._decode = decode
        self._on_idle = on_idle
        self._queue_limit = queue_limit
        self._flush_s = flush_s
        self._pending: list[Delivery] = []
        self._flush: asyncio.TimerHandle | None = None
        self._subscribers: set[Subscriber] = set()
        self._seen = RememberedIds()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stopped = False
        self.position = 0
        """Stream sequence of the region's event the hub read last (or that was the region's
        last when the hub started): every later one reaches the queues of the subscribers."""

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def join(self, admits: Callable[[selfmonitoring_pb2.Breach], bool] | None) -> Subscriber:
        subscriber = Subscriber(admits, self._queue_limit, joined_at=self.position)
        self._subscribers.add(subscriber)
        return subscriber

    async def started(self) -> None:
        """Returns once the hub's consumer exists (raises if it could not be made)."""
        await asyncio.shield(self._started)

    def leave(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers:
            self._on_idle(self)
            self.stop()

    def begin(self) -> None:
        """Starts making the hub's consumer; `started()` says when it exists."""
        self._starting = asyncio.create_task(self._start())
        # A failed start is reported to the subscribers; the task's own error is not.
        self._starting.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _start(self) -> None:
        try:
            stream = self.stream = await self._js.find_stream_name_by_subject(self.subject)
            # The region's last event so far: it and all before it are history (a resuming
            # subscriber replays them), every later one is live.
            try:
                self.position = (await self._js.get_last_msg(stream, self.subject)).seq or 0
            except NotFoundError:
                self.position = 0
            for subscriber in self._subscribers:
                subscriber.joined_at = self.position
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.position + 1
            )
            subscription = await self._js.subscribe(self.subject, ordered_consumer=True, config=config)
        except Exception as error:
            self._fail_all(HubStopped(f"the alert stream could not be followed: {error}"))
            self._started.set_exception(error)
            self._on_idle(self)
            raise
        if self._stopped:
            await subscription.unsubscribe()
            self._started.set_result(None)
            return
        self._reader = asyncio.create_task(self._read(subscription))
        self._started.set_result(None)

    def stop(self) -> None:
        self._stopped = True
        if self._flush is not None:
            self._flush.cancel()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, subscription: JetStreamContext.PushSubscription) -> None:
        try:
            async for msg in subscription.messages:
                sequence = msg.metadata.sequence.stream
                delivery = self._decode(msg)
                self.position = sequence
                if delivery is None or not self._seen.first_time(delivery.event_id):
                    continue
                self._pending.append(delivery)
                if self._flush is None:
                    self._flush = asyncio.get_running_loop().call_later(self._flush_s, self._hand_on)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the subscription broke: every follower must reconnect
            self._fail_all(HubStopped(f"the alert stream broke off: {error}"))
            self._on_idle(self)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(subscription.unsubscribe())

    def _hand_on(self) -> None:
        """Hands the events gathered since the last time to every subscriber."""
        self._flush = None
        pending, self._pending = self._pending, []
        overflowed = [subscriber for subscriber in self._subscribers if not subscriber.offer(pending)]
        for subscriber in overflowed:
            self._subscribers.discard(subscriber)

    def _fail_all(self, failure: Exception) -> None:
        for subscriber in self._subscribers:
            subscriber.fail(failure)
        self._subscribers.clear()

"""The alert hub against a real nats-server: one subscription per region shared by every
subscriber of this process, every alert to every subscriber in order, a slow subscriber
disconnected (RESOURCE_EXHAUSTED) without holding the others back, and a resume that crosses
from the replayed part to the live queue without a gap or a repeat."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2, selfmonitoring_pb2_grpc
from nats.js.client import JetStreamContext

from services.runtime import catalog
from services.runtime.auth import TokenVerifier
from services.runtime.bus import StreamSpec, connect, declare_stream
from services.runtime.db import Database
from services.runtime.dispatch import subject_for
from services.runtime.grpc_server import EdgeInterceptor
from services.runtime.migrate import upgrade_async
from services.selfmonitoring import bootstrap, handlers, store
from services.selfmonitoring.alert_hub import Delivery, Overflowed
from services.selfmonitoring.alerts import AlertFeed, AlertFilter
from services.selfmonitoring.grpc_api import SelfMonitoringServicer
from tests.integration.helpers import AlertReader, Tokens, dispatching

REGION = "pirkanmaa"
STREAM = StreamSpec(catalog.entry("selfmonitoring").stream, catalog.entry("selfmonitoring").subjects)
SUBJECT = subject_for(events_pb2.BreachOpened.DESCRIPTOR.full_name, REGION)
SERIOUS, WARNING = selfmonitoring_pb2.SEVERITY_SERIOUS, selfmonitoring_pb2.SEVERITY_WARNING


@pytest.fixture
async def js(nats_server) -> AsyncIterator[JetStreamContext]:  # type: ignore[no-untyped-def]
    nc = await connect(nats_server.url, "alert-hub-test")
    js = nc.jetstream()
    await declare_stream(js, STREAM, replicas=1)
    yield js
    await nc.close()


async def publish(js: JetStreamContext, index: int, severity: int = WARNING, padding: int = 0) -> int:
    """A BreachOpened numbered `index` (in its sample size), its indicator `padding` bytes
    longer; its stream sequence."""
    event = events_pb2.BreachOpened(
        breach=selfmonitoring_pb2.Breach(
            name=f"regions/{REGION}/breaches/b{index}",
            indicator=f"regions/{REGION}/indicators/i" + "x" * padding,
            provider="1000001-4",
            severity=severity,  # type: ignore[arg-type]
            sample_size=index,
        ),
        region=REGION,
    )
    ack = await js.publish(
        SUBJECT,
        event.SerializeToString(),
        stream=STREAM.name,
        headers={"Nats-Msg-Id": uuid.uuid4().hex},
    )
    return ack.seq


async def collect(
    alerts: AsyncIterator[selfmonitoring_pb2.Alert], count: int, into: list[selfmonitoring_pb2.Alert]
) -> None:
    async for alert in alerts:
        into.append(alert)
        if len(into) == count:
            return


EVERY_ALERT = AlertFilter()


async def one_by_one(
    batches: AsyncIterator[list[Delivery]],
) -> AsyncGenerator[selfmonitoring_pb2.Alert, None]:
    """The feed's batches as single alerts, checking each batch is in sequence order."""
    try:
        async for batch in batches:
            assert batch, "an empty batch"
            sequences = [delivery.sequence for delivery in batch]
            assert sequences == sorted(set(sequences))
            for delivery in batch:
                yield delivery.alert
    finally:
        await cast(AsyncGenerator[list[Delivery], None], batches).aclose()


async def subscribed(
    feed: AlertFeed, resume_after: int | None = None, only: AlertFilter = EVERY_ALERT
) -> AsyncGenerator[selfmonitoring_pb2.Alert, None]:
    """A follower that has subscribed (the feed said so) before this returns."""
    ready = asyncio.Event()

    async def on_subscribed() -> None:
        ready.set()

    alerts = one_by_one(feed.follow(REGION, resume_after, on_subscribed=on_subscribed, only=only))
    first = asyncio.ensure_future(anext(alerts))
    done, _ = await asyncio.wait({first, asyncio.ensure_future(ready.wait())}, return_when="FIRST_COMPLETED")
    assert ready.is_set() or first in done

    async def rest() -> AsyncGenerator[selfmonitoring_pb2.Alert, None]:
        try:
            yield await first
            async for alert in alerts:
                yield alert
        finally:
            first.cancel()
            await alerts.aclose()

    return rest()


async def test_many_subscribers_share_one_consumer_and_each_gets_every_alert_in_order(js):
    feed = AlertFeed(lambda: js)
    followers = [await subscribed(feed) for _ in range(30)]
    assert feed.hub_subscribers(REGION) == 30
    assert (await js.stream_info(STREAM.name)).state.consumer_count == 1

    received: list[list[selfmonitoring_pb2.Alert]] = [[] for _ in followers]
    reading = [
        asyncio.create_task(collect(alerts, 200, into))
        for alerts, into in zip(followers, received, strict=True)
    ]
    sequences = [await publish(js, index) for index in range(200)]
    await asyncio.wait_for(asyncio.gather(*reading), 20)

    for got in received:
        assert [a.breach.sample_size for a in got] == list(range(200))
        assert [a.sequence for a in got] == sequences
    for follower in followers:
        await follower.aclose()
    assert feed.hub_subscribers(REGION) == 0  # the last one out stopped the hub


async def test_filters_apply_per_subscriber_on_the_shared_feed(js):
    feed = AlertFeed(lambda: js)
    everything = await subscribed(feed)
    serious_only = await subscribed(feed, only=AlertFilter(severity=SERIOUS))
    for index in range(6):
        await publish(js, index, SERIOUS if index % 3 == 0 else WARNING)
    all_alerts: list[selfmonitoring_pb2.Alert] = []
    serious: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(everything, 6, all_alerts), 10)
    await asyncio.wait_for(collect(serious_only, 2, serious), 10)
    assert [a.breach.sample_size for a in all_alerts] == [0, 1, 2, 3, 4, 5]
    assert [a.breach.sample_size for a in serious] == [0, 3]


async def test_a_subscriber_that_does_not_read_is_disconnected_and_the_others_get_everything(js):
    feed = AlertFeed(lambda: js, queue_limit=20)
    slow = await subscribed(feed)
    readers = [await subscribed(feed) for _ in range(3)]
    received: list[list[selfmonitoring_pb2.Alert]] = [[] for _ in readers]

    async def everyone_reads(count: int) -> None:
        reading = (collect(alerts, count, into) for alerts, into in zip(readers, received, strict=True))
        await asyncio.wait_for(asyncio.gather(*reading), 20)

    publishing = asyncio.create_task(publish_many(js, range(100)))
    await everyone_reads(100)
    await publishing
    # However the hub batched those, the slow queue now holds all 100 (more than its 20): the
    # next hand-on meets it full and lets it go.
    await publish(js, 100)
    await everyone_reads(101)

    assert all([a.breach.sample_size for a in alerts] == list(range(101)) for alerts in received)
    assert feed.hub_subscribers(REGION) == 3  # the slow one was let go
    # The slow one learns it fell behind (after the alert it had already taken).
    with pytest.raises(Overflowed):
        async for _ in slow:
            pass


async def test_a_resume_across_the_replay_and_live_boundary_has_no_gap_and_no_repeat(js):
    feed = AlertFeed(lambda: js)
    keeper = await subscribed(feed)  # keeps the hub running, so the resume meets a live position
    sequences = [await publish(js, index) for index in range(50)]
    kept: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(keeper, 50, kept), 10)

    # Resumes from the 10th while more are being published: 40 are replayed from the stream,
    # the rest come live, and those published while it joined are in exactly one of the two.
    publishing = asyncio.create_task(publish_many(js, range(50, 150)))
    await asyncio.sleep(0.01)
    resumed = await subscribed(feed, resume_after=sequences[9])
    received: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(resumed, 140, received), 20)
    await publishing

    assert [a.breach.sample_size for a in received] == list(range(10, 150))
    numbers = [a.sequence for a in received]
    assert numbers == sorted(set(numbers))


async def publish_many(js: JetStreamContext, indexes: range) -> None:
    for index in indexes:
        await publish(js, index)
        await asyncio.sleep(0.001)


async def test_a_resume_when_no_hub_runs_replays_then_follows_live(js):
    sequences = [await publish(js, index) for index in range(5)]
    feed = AlertFeed(lambda: js)
    resumed = await subscribed(feed, resume_after=sequences[1])
    await publish(js, 5)
    received: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(resumed, 4, received), 10)
    assert [a.breach.sample_size for a in received] == [2, 3, 4, 5]


async def test_a_resume_into_history_the_stream_has_removed_goes_on_live(js):
    sequences = [await publish(js, index) for index in range(5)]
    feed = AlertFeed(lambda: js)
    keeper = await subscribed(feed)  # the hub's position is now the 5th
    for sequence in sequences[1:]:
        await js.delete_msg(STREAM.name, sequence)  # as the stream's limits would
    resumed = await subscribed(feed, resume_after=sequences[0])
    await publish(js, 5)
    received: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(resumed, 1, received), 10)
    assert [a.breach.sample_size for a in received] == [5]
    await keeper.aclose()


@contextlib.asynccontextmanager
async def alert_server(
    tmp_path: Path, tokens: Tokens, feed: AlertFeed
) -> AsyncIterator[selfmonitoring_pb2_grpc.SelfMonitoringServiceStub]:
    """The servicer behind the edge interceptor, and a client whose HTTP/2 window stays small
    (no BDP probing), so a client that does not read soon stops the server's writes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'selfmonitoring.db'}"
    await upgrade_async(url, bootstrap.MIGRATIONS)
    db = Database(url)
    server = grpc.aio.server(interceptors=[EdgeInterceptor(TokenVerifier(tokens.public_key_file))])
    try:
        async with dispatching(
            db,
            service="selfmonitoring",
            unit_of_work=store.unit_of_work_factory(),
            event_types=bootstrap.EVENT_TYPES,
            handlers=handlers.HANDLERS,
        ) as dispatcher:
            servicer = SelfMonitoringServicer(dispatcher, feed)
            selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            options = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                yield selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel)
    finally:
        await server.stop(grace=None)
        await db.dispose()


async def test_a_grpc_stream_that_falls_behind_ends_with_resource_exhausted_and_resumes(tmp_path, js):
    tokens = Tokens.generate(tmp_path / "keys")
    feed = AlertFeed(lambda: js, queue_limit=5)
    count = 600
    async with alert_server(tmp_path, tokens, feed) as stub:
        request = selfmonitoring_pb2.StreamAlertsRequest(parent=f"regions/{REGION}")
        slow = AlertReader(stub.StreamAlerts(request, metadata=tokens.supervisor(REGION)))
        await slow.call.initial_metadata()
        # 600 alerts of 1 kB: more than the client's 64 kB window and the server's queue hold.
        for index in range(count):
            await publish(js, index, padding=1000)
        seen: list[selfmonitoring_pb2.Alert] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                seen.append(await slow.next(10))
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "resume after the last sequence" in (ended.value.details() or "")
        status = rpc_status.from_call(ended.value)  # the gateway passes a rich status on as it is
        assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        assert 0 < len(seen) < count
        assert [a.breach.sample_size for a in seen] == list(range(len(seen)))

        resumed = AlertReader(
            stub.StreamAlerts(
                selfmonitoring_pb2.StreamAlertsRequest(
                    parent=f"regions/{REGION}", resume_after=seen[-1].sequence
                ),
                metadata=tokens.supervisor(REGION),
            )
        )
        rest = [await resumed.next(10) for _ in range(len(seen), count)]
        resumed.cancel()
        assert [a.breach.sample_size for a in rest] == list(range(len(seen), count))


async def test_alerts_of_a_burst_reach_a_grpc_stream_in_few_messages_in_order_each_once(tmp_path, js):
    """200 subscribers of 500 alerts a second cannot each get a message per alert: the hub hands
    on what gathered since the last time, and each message carries all of it."""
    tokens = Tokens.generate(tmp_path / "keys")
    feed = AlertFeed(lambda: js)
    count = 300
    async with alert_server(tmp_path, tokens, feed) as stub:
        request = selfmonitoring_pb2.StreamAlertsRequest(parent=f"regions/{REGION}")
        call = stub.StreamAlerts(request, metadata=tokens.supervisor(REGION))
        await call.initial_metadata()
        sequences = [await publish(js, index) for index in range(count)]
        messages: list[selfmonitoring_pb2.StreamAlertsResponse] = []
        while sum(len(message.alerts) for message in messages) < count:
            message = await asyncio.wait_for(call.read(), 10)
            assert message is not grpc.aio.EOF
            messages.append(message)
        call.cancel()
    received = [alert for message in messages for alert in message.alerts]
    assert [alert.sequence for alert in received] == sequences
    assert [alert.breach.sample_size for alert in received] == list(range(count))
    assert all(message.alerts for message in messages)
    assert len(messages) <= count // 10, f"{len(messages)} messages for {count} alerts"


async def test_an_event_stored_twice_past_the_duplicate_window_is_one_alert_live_and_on_resume(js):
    """A relay that outlived the stream's duplicate window once stored an event twice; the
    alert feed de-duplicates by event id, so a supervisor sees it once, live or resuming."""
    config = (await js.stream_info(STREAM.name)).config
    config.duplicate_window = 1.0
    await js.update_stream(config)
    feed = AlertFeed(lambda: js)
    live = await subscribed(feed)
    event = events_pb2.BreachOpened(
        breach=selfmonitoring_pb2.Breach(
            name=f"regions/{REGION}/breaches/twice", provider="1000001-4", severity=WARNING, sample_size=7
        ),
        region=REGION,
    )
    event_id = uuid.uuid4().hex
    first = await js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event_id})
    await asyncio.sleep(1.5)  # past the window: JetStream stores it again
    second = await js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event_id})
    assert not second.duplicate and second.seq == first.seq + 1
    after = await publish(js, 8)

    received: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(live, 2, received), 10)
    assert [(a.sequence, a.breach.sample_size) for a in received] == [(first.seq, 7), (after, 8)]
    await live.aclose()

    resumed: list[selfmonitoring_pb2.Alert] = []
    await asyncio.wait_for(collect(await subscribed(feed, resume_after=0), 2, resumed), 10)
    assert [(a.sequence, a.breach.sample_size) for a in resumed] == [(first.seq, 7), (after, 8)]

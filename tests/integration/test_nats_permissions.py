"""The bus is closed to strangers: nats-server started with the config `kasvu run` renders lets
each service do exactly what the catalog says it does, and nothing else.

Every refusal is checked twice: the client is told (a permissions violation) and nothing
changed on the server (the stream holds no message, the stream is still there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import nats
import pytest
from kasvu.selfmonitoring.v1 import events_pb2
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from kasvuctl.natsauth import ADMIN_USER
from services.registry import consumers as registry_consumers
from services.runtime import bus, envelope
from services.runtime.catalog import CATALOG, entry
from services.selfmonitoring.alert_hub import Delivery
from services.selfmonitoring.alerts import AlertFeed
from tests.conftest import NatsServer

SELFMONITORING = entry("selfmonitoring")
BREACH_SUBJECT = f"{events_pb2.BreachOpened.DESCRIPTOR.full_name}.pirkanmaa"
BREACH_FILTER = registry_consumers.BREACHES_SUBJECT
REGISTRY_DURABLE = registry_consumers.BREACHES_DURABLE
REFUSED_WITHIN_S = 0.5


class Violations:
    """The errors the server reports to one client asynchronously (permissions violations)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def record(self, error: Exception) -> None:
        self.messages.append(str(error))

    async def wait_for(self, text: str) -> None:
        for _ in range(50):
            if any(text in message for message in self.messages):
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"no violation mentioning {text!r}; got {self.messages}")


@asynccontextmanager
async def signed_in(
    server: NatsServer, user: str, violations: Violations | None = None
) -> AsyncIterator[NatsClient]:
    options = server.access(user).connect_options()
    if violations is not None:
        options["error_cb"] = violations.record
    client = await nats.connect(server.url, allow_reconnect=False, **options)
    try:
        yield client
    finally:
        await client.close()


async def declare_own_streams(server: NatsServer) -> None:
    """Each service declares its stream as its own user, as ServiceHost does at start-up."""
    for service in CATALOG:
        async with signed_in(server, service.name) as client:
            await bus.declare_stream(client.jetstream(), bus.StreamSpec(service.stream, service.subjects), 1)


async def messages_in(server: NatsServer, stream: str) -> int:
    async with signed_in(server, ADMIN_USER) as admin:
        return (await admin.jetstream().stream_info(stream)).state.messages


def breach(region: str = "pirkanmaa") -> bytes:
    event = events_pb2.BreachOpened(region=region)
    event.breach.name = f"regions/{region}/breaches/b1"
    event.breach.provider = "0737546-2"
    return event.SerializeToString()


def event_headers(event_id: str) -> dict[str, str]:
    return {envelope.MSG_ID: event_id, envelope.EVENT_TYPE: events_pb2.BreachOpened.DESCRIPTOR.full_name}


async def test_an_anonymous_client_is_refused(secured_nats_server: NatsServer) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(secured_nats_server.url, allow_reconnect=False, connect_timeout=2)


async def test_a_wrong_password_is_refused(secured_nats_server: NatsServer) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            secured_nats_server.url,
            user="registry",
            password=secured_nats_server.access("selfmonitoring").password,
            allow_reconnect=False,
            connect_timeout=2,
        )


async def test_a_service_cannot_publish_on_another_services_subjects(secured_nats_server: NatsServer) -> None:
    await declare_own_streams(secured_nats_server)
    violations = Violations()
    async with signed_in(secured_nats_server, "registry", violations) as registry:
        # The forgery of issue 6: a serious breach that would suspend a provider.
        with pytest.raises(NatsError):
            await registry.jetstream(timeout=REFUSED_WITHIN_S).publish(
                BREACH_SUBJECT, breach(), headers=event_headers("forged-1")
            )
        await registry.publish(BREACH_SUBJECT, breach(), headers=event_headers("forged-2"))
        await registry.flush()
        await violations.wait_for(f'publish to "{BREACH_SUBJECT.lower()}"')

    assert await messages_in(secured_nats_server, SELFMONITORING.stream) == 0


async def test_a_service_cannot_delete_or_purge_another_services_stream_nor_its_own(
    secured_nats_server: NatsServer,
) -> None:
    await declare_own_streams(secured_nats_server)
    async with signed_in(secured_nats_server, "selfmonitoring") as owner:
        await owner.jetstream().publish(BREACH_SUBJECT, breach(), headers=event_headers("e1"))

    for user in ("registry", "tendering", "selfmonitoring"):
        violations = Violations()
        async with signed_in(secured_nats_server, user, violations) as client:
            js = client.jetstream(timeout=REFUSED_WITHIN_S)
            with pytest.raises(NatsError):
                await js.delete_stream(SELFMONITORING.stream)
            with pytest.raises(NatsError):
                await js.purge_stream(SELFMONITORING.stream)
            await violations.wait_for(f"$js.api.stream.delete.{SELFMONITORING.stream.lower()}")

    assert await messages_in(secured_nats_server, SELFMONITORING.stream) == 1


async def test_a_service_cannot_create_a_stream_that_would_own_another_services_events(
    secured_nats_server: NatsServer,
) -> None:
    # Squatting before the owner starts: a stream named like self-monitoring's, or one of another
    # name over its subjects, would hold the breaches the registry consumes.
    violations = Violations()
    async with signed_in(secured_nats_server, "registry", violations) as registry:
        js = registry.jetstream(timeout=REFUSED_WITHIN_S)
        for name in (SELFMONITORING.stream, "KASVU_SQUAT"):
            with pytest.raises(NatsError):
                await js.add_stream(StreamConfig(name=name, subjects=list(SELFMONITORING.subjects)))
        await violations.wait_for("$js.api.stream.create.kasvu_squat")
    assert await stream_names(secured_nats_server) == set()

    # The owner can still declare its stream, and it alone holds its subjects.
    await declare_own_streams(secured_nats_server)
    assert await stream_names(secured_nats_server) == {service.stream for service in CATALOG}


async def stream_names(server: NatsServer) -> set[str]:
    async with signed_in(server, ADMIN_USER) as admin:
        return {str(info.config.name) for info in await admin.jetstream().streams_info()}


async def test_a_service_reads_nothing_it_does_not_consume(secured_nats_server: NatsServer) -> None:
    await declare_own_streams(secured_nats_server)
    async with signed_in(secured_nats_server, "registry") as registry:
        await registry.jetstream().pull_subscribe(
            registry_consumers.BREACHES_SUBJECT,
            durable=registry_consumers.BREACHES_DURABLE,
            stream=registry_consumers.BREACHES_STREAM,
        )
    async with signed_in(secured_nats_server, "selfmonitoring") as owner:
        await owner.jetstream().publish(BREACH_SUBJECT, breach(), headers=event_headers("e1"))

    violations = Violations()
    async with signed_in(secured_nats_server, "tendering", violations) as tendering:
        # Neither the raw subjects, nor another user's replies and pulled messages ...
        await tendering.subscribe("kasvu.>")
        await tendering.subscribe("_INBOX.registry.>")
        await tendering.flush()
        await violations.wait_for('subscription to "kasvu.>"')
        await violations.wait_for('subscription to "_inbox.registry.>"')
        # ... nor a consumer of its own on self-monitoring's stream, nor the registry's.
        js = tendering.jetstream(timeout=REFUSED_WITHIN_S)
        with pytest.raises(NatsError):
            await js.pull_subscribe(
                registry_consumers.BREACHES_SUBJECT,
                durable="tendering-breaches",
                stream=SELFMONITORING.stream,
            )
        with pytest.raises(NatsError):
            await js.consumer_info(SELFMONITORING.stream, registry_consumers.BREACHES_DURABLE)
        stolen = await js.pull_subscribe_bind(
            registry_consumers.BREACHES_DURABLE, stream=SELFMONITORING.stream
        )
        with pytest.raises(NatsError):
            await stolen.fetch(1, timeout=REFUSED_WITHIN_S)
        await violations.wait_for("$js.api.consumer.msg.next")

    async with signed_in(secured_nats_server, ADMIN_USER) as admin:
        info = await admin.jetstream().consumer_info(
            SELFMONITORING.stream, registry_consumers.BREACHES_DURABLE
        )
        assert (info.num_pending, info.delivered.stream_seq) == (1, 0)  # still waiting for the registry


async def test_the_registry_cannot_widen_its_consumer_to_other_subjects(
    secured_nats_server: NatsServer,
) -> None:
    await declare_own_streams(secured_nats_server)
    async with signed_in(secured_nats_server, "registry") as registry:
        js = registry.jetstream(timeout=REFUSED_WITHIN_S)
        wider = "kasvu.selfmonitoring.v1.>"
        with pytest.raises(NatsError):
            await js.add_consumer(
                SELFMONITORING.stream,
                ConsumerConfig(
                    name=registry_consumers.BREACHES_DURABLE,
                    durable_name=registry_consumers.BREACHES_DURABLE,
                    filter_subject=wider,
                ),
            )


async def test_each_service_can_do_what_it_needs(secured_nats_server: NatsServer) -> None:
    # Every service declares (creates, then on a restart updates) its own stream.
    await declare_own_streams(secured_nats_server)
    await declare_own_streams(secured_nats_server)

    selfmonitoring = await bus.connect(
        secured_nats_server.url, "selfmonitoring", secured_nats_server.access("selfmonitoring")
    )
    registry = await bus.connect(secured_nats_server.url, "registry", secured_nats_server.access("registry"))
    try:
        # Self-monitoring's live alert feed: an ordered consumer on its own stream.
        subscribed = asyncio.Event()

        async def on_subscribed() -> None:
            subscribed.set()

        feed = cast(
            AsyncGenerator[list[Delivery], None],
            AlertFeed(selfmonitoring.jetstream).follow("pirkanmaa", None, on_subscribed),
        )
        first_batch = asyncio.ensure_future(anext(feed))
        await asyncio.wait_for(subscribed.wait(), 5)

        # Its relay publishes its events on its own subjects.
        ack = await selfmonitoring.jetstream().publish(BREACH_SUBJECT, breach(), headers=event_headers("e1"))
        assert ack.stream == SELFMONITORING.stream and not ack.duplicate
        [delivery] = await asyncio.wait_for(first_batch, 5)
        assert delivery.alert.sequence == ack.seq
        await feed.aclose()

        # The registry's durable consumer of breaches, as the catalog declares it: created,
        # looked up again, pulled from and acknowledged.
        config = ConsumerConfig(
            durable_name=registry_consumers.BREACHES_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=registry_consumers.BREACHES_SUBJECT,
        )
        js = registry.jetstream()
        for _ in range(2):
            pull = await js.pull_subscribe(
                registry_consumers.BREACHES_SUBJECT,
                durable=registry_consumers.BREACHES_DURABLE,
                stream=registry_consumers.BREACHES_STREAM,
                config=config,
            )
        [message] = await pull.fetch(1, timeout=5)
        assert message.headers is not None and message.headers[envelope.MSG_ID] == "e1"
        await message.in_progress()
        await message.ack_sync()
        info = await js.consumer_info(registry_consumers.BREACHES_STREAM, registry_consumers.BREACHES_DURABLE)
        assert (info.num_ack_pending, info.delivered.stream_seq) == (0, ack.seq)
    finally:
        await registry.close()
        await selfmonitoring.close()

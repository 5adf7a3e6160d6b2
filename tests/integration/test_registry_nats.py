# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""Self-monitoring's breach events reach the registry through real NATS JetStream and the kernel's
EventConsumer, as bootstrap wires them: a serious BreachOpened suspends, and its BreachResolved
reinstates when the region's breach policy says so, with a decision that cites the event."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from kasvu.registry.v1 import registry_pb2
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from nats.js import JetStreamContext

from services.registry import bootstrap, consumers
from services.runtime import catalog, envelope
from services.runtime.bus import EventConsumer, StreamSpec, connect, declare_stream
from tests.conftest import NatsServer
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    BREACH,
    REGION,
    SERVICE,
    Registry,
    next_business_id,
    payloads,
    registry,
)

SELFMONITORING = catalog.entry("selfmonitoring")


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await connect(nats_server.url, "registry-nats-test")
    context = client.jetstream()
    await declare_stream(context, StreamSpec(SELFMONITORING.stream, SELFMONITORING.subjects), replicas=1)
    yield context
    await client.close()


@contextlib.asynccontextmanager
async def consuming(registry: Registry, js: JetStreamContext) -> AsyncIterator[None]:
    """The registry's consumers of self-monitoring's events, as bootstrap lists them."""
    built: list[EventConsumer[Any]] = [
        EventConsumer(
            registry.dispatcher,
            js,
            stream=stream,
            durable=durable,
            subject=subject,
            event_type=event_type,
            translate=translate,
            ack_wait_s=2.0,
            max_deliveries=3,
        )
        for stream, durable, subject, event_type, translate in bootstrap.CONSUMERS
        if stream == consumers.BREACHES_STREAM
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)) for consumer in built]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def publish(js: JetStreamContext, event: Any, event_id: str) -> None:
    event_type = event.DESCRIPTOR.full_name
    await js.publish(
        f"{event_type}.{REGION}",
        event.SerializeToString(),
        headers={envelope.MSG_ID: event_id, envelope.EVENT_TYPE: event_type},
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {within} s: {what}")


def breach(business_id: str) -> selfmonitoring_pb2.Breach:
    return selfmonitoring_pb2.Breach(
        name=BREACH, provider=business_id, service=SERVICE, severity=selfmonitoring_pb2.SEVERITY_SERIOUS
    )


async def test_a_breach_resolved_on_nats_reinstates_the_provider_when_the_policy_says_so(
    registry, js, next_business_id
):
    await registry.stub.SetBreachPolicy(
        registry_pb2.SetBreachPolicyRequest(
            name=f"regions/{REGION}/breachPolicy",
            suspending_severities=["SERIOUS"],
            suspend_days=90,
            reinstate_on_resolution=True,
        ),
        metadata=registry.tokens.admin(REGION),
    )
    business_id = next_business_id()
    registration = await registry.register(await registry.publish(), business_id)
    opened_id, resolved_id = f"opened-{uuid.uuid4().hex}", f"resolved-{uuid.uuid4().hex}"

    async with consuming(registry, js):
        await publish(
            js, selfmonitoring_events.BreachOpened(region=REGION, breach=breach(business_id)), opened_id
        )

        async def suspended() -> bool:
            return await registry.state(registration) == "SUSPENDED"

        await eventually(suspended, "the breach suspended the provider")
        resolution = selfmonitoring_events.BreachResolved(region=REGION, breach=breach(business_id))
        await publish(js, resolution, resolved_id)

        async def reinstated() -> bool:
            return await registry.state(registration) == "ADMITTED"

        await eventually(reinstated, "the resolution reinstated the provider")
        # The same event again (a redelivery past the duplicate window) changes nothing.
        await publish(js, resolution, resolved_id)
        await asyncio.sleep(1.0)

    after = await registry.get(registration)
    assert [d.kind for d in after.decisions] == ["ADMISSION", "SUSPENSION", "REINSTATEMENT"]
    decision = after.decisions[-1]
    assert list(decision.causes) == [BREACH, f"event:{resolved_id}"]
    assert decision.actor == f"system:event:{resolved_id}"
    assert [(r.code, r.subject) for r in decision.reasons] == [("BREACH_RESOLVED", BREACH)]
    assert not after.HasField("lift_time")
    assert len(await payloads(registry.db, "ProviderReinstated")) == 1
    assert await registry.listed() == [business_id]

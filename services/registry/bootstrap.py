"""Wires the registry: settings → database, NATS, dispatcher with its handlers, servicer,
consumers. The one place where the registry's parts meet."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from kasvu.registry.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.tendering.v1 import events_pb2 as tendering_events
from nats.js import JetStreamContext

from services.registry import consumers, handlers, model, store
from services.registry.grpc_api import RegistryServicer
from services.runtime.bus import EventConsumer
from services.runtime.dispatch import Dispatcher, EventTypes
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
EVENT_TYPES = EventTypes.by_name(model.EVENTS, events_pb2)

CONSUMERS: tuple[tuple[str, str, str, Any, Any], ...] = (
    (
        consumers.BREACHES_STREAM,
        consumers.BREACHES_DURABLE,
        consumers.BREACHES_SUBJECT,
        selfmonitoring_events.BreachOpened,
        consumers.suspension_for,
    ),
    (
        consumers.RESOLUTIONS_STREAM,
        consumers.RESOLUTIONS_DURABLE,
        consumers.RESOLUTIONS_SUBJECT,
        selfmonitoring_events.BreachResolved,
        consumers.reinstatement_for,
    ),
    (
        consumers.TENDERING_STREAM,
        consumers.MARKET_FAILURES_DECLARED_DURABLE,
        consumers.MARKET_FAILURES_DECLARED_SUBJECT,
        tendering_events.MarketFailureDeclared,
        consumers.market_failure_declared,
    ),
    (
        consumers.TENDERING_STREAM,
        consumers.MARKET_FAILURES_LIFTED_DURABLE,
        consumers.MARKET_FAILURES_LIFTED_SUBJECT,
        tendering_events.MarketFailureLifted,
        consumers.market_failure_lifted,
    ),
)
"""What the registry consumes: (stream, durable, subject, event type, translate), as wired in run()."""


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, migrations=MIGRATIONS)
    dispatcher = host.dispatcher(
        unit_of_work=store.unit_of_work_factory(), event_types=EVENT_TYPES, handlers=handlers.HANDLERS
    )
    await host.start_server(
        [
            (
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                RegistryServicer(dispatcher),
                SERVICE_NAME,
            )
        ]
    )
    try:
        await host.start_infrastructure()
        for stream, durable, subject, event_type, translate in CONSUMERS:
            host.add_consumer(
                partial(
                    _consumer,
                    dispatcher,
                    settings,
                    stream=stream,
                    durable=durable,
                    subject=subject,
                    event_type=event_type,
                    translate=translate,
                )
            )
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()


def _consumer(
    dispatcher: Dispatcher,
    settings: Settings,
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    subject: str,
    event_type: Any,
    translate: Any,
) -> EventConsumer[Any]:
    return EventConsumer(
        dispatcher,
        js,
        stream=stream,
        durable=durable,
        subject=subject,
        event_type=event_type,
        translate=translate,
        batch=settings.consumer_batch,
        ack_wait_s=settings.consumer_ack_wait_s,
        max_deliveries=settings.consumer_max_deliveries,
        crash_point=settings.crash_point,
    )

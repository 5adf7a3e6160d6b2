"""Wires the registry: settings → database, NATS, dispatcher with its handlers, servicer,
consumers. The one place where the registry's parts meet."""

from __future__ import annotations

from pathlib import Path

from kasvu.registry.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events

from services.registry import consumers, handlers, model, store
from services.registry.grpc_api import RegistryServicer
from services.runtime.bus import EventConsumer
from services.runtime.dispatch import EventTypes
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
EVENT_TYPES = EventTypes.by_name(model.EVENTS, events_pb2)


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
        host.add_consumer(
            lambda js: EventConsumer(
                dispatcher,
                js,
                stream=consumers.BREACHES_STREAM,
                durable=consumers.BREACHES_DURABLE,
                subject=consumers.BREACHES_SUBJECT,
                event_type=selfmonitoring_events.BreachOpened,
                translate=consumers.suspension_for,
                batch=settings.consumer_batch,
                ack_wait_s=settings.consumer_ack_wait_s,
                max_deliveries=settings.consumer_max_deliveries,
                crash_point=settings.crash_point,
            )
        )
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

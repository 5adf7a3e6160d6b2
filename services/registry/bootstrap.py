"""Wires the registry: settings → database, NATS, handlers, servicer, consumers. The one
place where the registry's parts meet."""

from __future__ import annotations

from pathlib import Path

from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events

from services.registry import consumers
from services.registry.grpc_api import RegistryServicer
from services.registry.handlers import RegistryHandlers
from services.runtime.bus import EventConsumer, StreamSpec
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings

STREAM = StreamSpec(name="KASVU_REGISTRY", subjects=("kasvu.registry.v1.>",))
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, stream=STREAM, migrations=MIGRATIONS)
    use_cases = RegistryHandlers(host.db, after_commit=host.wake_relay)
    await host.start_server(
        [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(use_cases), SERVICE_NAME)]
    )
    try:
        await host.start_infrastructure()
        host.add_consumer(
            EventConsumer(
                host.db,
                host.js,
                stream=consumers.BREACHES_STREAM,
                durable=consumers.BREACHES_DURABLE,
                subject=consumers.BREACHES_SUBJECT,
                event_type=selfmonitoring_events.BreachOpened,
                handler=consumers.on_breach_opened(use_cases),
                batch=settings.consumer_batch,
                ack_wait_s=settings.consumer_ack_wait_s,
                on_committed=host.wake_relay,
                crash_point=settings.crash_point,
            )
        )
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

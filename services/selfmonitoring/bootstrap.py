"""Wires self-monitoring: settings → database, NATS, handlers, servicer, alert feed."""

from __future__ import annotations

from pathlib import Path

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2, selfmonitoring_pb2_grpc

from services.runtime.dispatch import EventTypes
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings
from services.selfmonitoring import handlers, model, store
from services.selfmonitoring.alerts import AlertFeed
from services.selfmonitoring.grpc_api import SelfMonitoringServicer

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = selfmonitoring_pb2.DESCRIPTOR.services_by_name["SelfMonitoringService"].full_name
EVENT_TYPES = EventTypes.by_name(model.EVENTS, events_pb2)


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, migrations=MIGRATIONS)
    dispatcher = host.dispatcher(
        unit_of_work=store.unit_of_work_factory(), event_types=EVENT_TYPES, handlers=handlers.HANDLERS
    )
    servicer = SelfMonitoringServicer(dispatcher, AlertFeed(lambda: host.js))
    await host.start_server(
        [(selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server, servicer, SERVICE_NAME)]
    )
    try:
        await host.start_infrastructure()
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

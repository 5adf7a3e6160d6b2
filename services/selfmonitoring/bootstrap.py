"""Wires self-monitoring: settings → database, NATS, handlers, servicer, alert feed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2, selfmonitoring_pb2_grpc
from nats.js.client import JetStreamContext

from services.runtime.bus import EventConsumer
from services.runtime.dispatch import Dispatcher, EventTypes
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings
from services.selfmonitoring import consumers, handlers, model, store
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
        for followed in consumers.REGISTRY_EVENTS:
            host.add_consumer(following(followed, dispatcher, settings))
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()


def following(
    followed: consumers.Followed, dispatcher: Dispatcher, settings: Settings
) -> Callable[[JetStreamContext], EventConsumer[Any]]:
    """The kernel's consumer of one registry event type (inbox, dead letters, ack/nak)."""

    def make(js: JetStreamContext) -> EventConsumer[Any]:
        return EventConsumer(
            dispatcher,
            js,
            stream=consumers.REGISTRY_STREAM,
            durable=followed.durable,
            subject=followed.subject,
            event_type=followed.event_type,
            translate=followed.translate,
            batch=settings.consumer_batch,
            ack_wait_s=settings.consumer_ack_wait_s,
            max_deliveries=settings.consumer_max_deliveries,
            crash_point=settings.crash_point,
        )

    return make

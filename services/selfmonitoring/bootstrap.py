"""Wires self-monitoring: settings → database, NATS, handlers, servicer, alert feed."""

from __future__ import annotations

from pathlib import Path

from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from services.runtime.bus import StreamSpec
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings
from services.selfmonitoring.alerts import AlertFeed
from services.selfmonitoring.grpc_api import SelfMonitoringServicer
from services.selfmonitoring.handlers import SelfMonitoringHandlers

STREAM = StreamSpec(name="KASVU_SELFMONITORING", subjects=("kasvu.selfmonitoring.v1.>",))
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = selfmonitoring_pb2.DESCRIPTOR.services_by_name["SelfMonitoringService"].full_name


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, stream=STREAM, migrations=MIGRATIONS)
    use_cases = SelfMonitoringHandlers(host.db, after_commit=host.wake_relay)
    servicer = SelfMonitoringServicer(use_cases, AlertFeed(lambda: host.js))
    await host.start_server(
        [(selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server, servicer, SERVICE_NAME)]
    )
    try:
        await host.start_infrastructure()
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

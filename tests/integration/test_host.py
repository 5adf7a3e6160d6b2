"""A service host's gRPC port is its own: a second process asking for it fails to start,
rather than sharing the port's connections with the first (gRPC's SO_REUSEPORT default)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.registry.bootstrap import MIGRATIONS
from services.runtime.host import PortInUse, ServiceHost
from services.runtime.settings import Settings


def host_on(address: str, data_dir: Path) -> ServiceHost:
    settings = Settings(service="registry", data_dir=data_dir, grpc_address=address)
    return ServiceHost(settings, migrations=MIGRATIONS)


async def test_a_second_host_on_a_taken_grpc_port_fails_to_start_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    first = host_on("127.0.0.1:0", tmp_path / "first")
    await first.start_server([])
    try:
        address = f"127.0.0.1:{first.port}"
        second = host_on(address, tmp_path / "second")
        with pytest.raises(PortInUse, match=address):
            await second.start_server([])
        assert second.server is not None
        await second.server.stop(None)

        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        assert first.server is not None
        await first.server.stop(None)

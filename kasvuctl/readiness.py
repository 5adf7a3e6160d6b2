"""Is the suite up? A service is when its gRPC health says SERVING (database migrated, NATS
connected); the gateway is when /healthz answers. Shared by `kasvu run` and the local suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.catalog import GATEWAY
from services.runtime.host import BUS_HEALTH

PROBE_TIMEOUT_S = 1.0
POLL_S = 0.1


async def grpc_serving(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the standard health service at `address` reports SERVING both for taking
    writes ("") and for events flowing (`kasvu.bus`), so a first event does not wait on the
    service's connection to NATS."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for entry in ("", BUS_HEALTH):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=entry), timeout=timeout_s)
            except grpc.aio.AioRpcError:
                return False
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True


async def http_ok(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when GET `url` answers 200."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def wait_until_ready(
    services: Mapping[str, str],
    gateway_url: str,
    timeout_s: float,
    give_up: Callable[[], bool] = lambda: False,
) -> list[str]:
    """Polls every service (name to gRPC address) and the gateway until all are ready, the
    time is up or `give_up()` says so; returns the names not ready (empty: all are)."""
    waiting = {**services, GATEWAY: gateway_url}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline and not give_up():
        names = list(waiting)
        answers = await asyncio.gather(
            *(
                http_ok(f"{waiting[name]}/healthz") if name == GATEWAY else grpc_serving(waiting[name])
                for name in names
            )
        )
        for name, ready in zip(names, answers, strict=True):
            if ready:
                del waiting[name]
        if waiting:
            await asyncio.sleep(POLL_S)
    return list(waiting)

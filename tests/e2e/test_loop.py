"""The loop end to end through the gateway's HTTP API: terms, registration, indicator,
breach, suspension in that region only, and the supervisor's live alert stream."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from services.runtime.catalog import CATALOG
from tests.e2e.flows import Api, read_sse

pytestmark = pytest.mark.e2e

PROVIDER = "0737546-2"


async def collect_alerts(
    api: Api,
    region: str,
    found: asyncio.Queue[tuple[str, dict[str, object]]],
    last_event_id: str = "",
    opened: asyncio.Event | None = None,
) -> None:
    headers = api.auth(Role.SUPERVISOR, region)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with api.client.stream(
        "GET", f"/v1/regions/{region}/alerts:stream", headers=headers, timeout=httpx.Timeout(5.0, read=None)
    ) as response:
        assert response.status_code == 200
        if opened is not None:
            opened.set()
        async for event in read_sse(response):
            await found.put(event)


async def test_breach_suspends_provider_in_that_region_only(suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10.0) as client:
        api = Api(suite, client)
        key = Ed25519PrivateKey.generate()
        pirkanmaa_terms = await api.publish_terms("pirkanmaa")
        uusimaa_terms = await api.publish_terms("uusimaa")

        admitted = {}
        for region, terms in (("pirkanmaa", pirkanmaa_terms), ("uusimaa", uusimaa_terms)):
            response = await api.register(region, api.registration_body(terms, PROVIDER, key), PROVIDER)
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "REGISTRATION_STATE_ADMITTED"
            admitted[region] = response.json()["name"]
        assert await api.listed("pirkanmaa") == [PROVIDER]
        assert await api.listed("uusimaa") == [PROVIDER]

        alerts: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        opened = asyncio.Event()
        stream = asyncio.create_task(collect_alerts(api, "pirkanmaa", alerts, opened=opened))
        # The gateway answers 200 once the backend has taken the stream (subscribed from now on).
        await asyncio.wait_for(opened.wait(), timeout=15)

        indicator = await api.create_indicator("pirkanmaa")
        breach = await api.breach_until_opened("pirkanmaa", indicator, PROVIDER)

        await api.wait_for_state(admitted["pirkanmaa"], PROVIDER, "REGISTRATION_STATE_SUSPENDED")
        assert await api.registration_state(admitted["uusimaa"], PROVIDER) == "REGISTRATION_STATE_ADMITTED"
        assert await api.listed("pirkanmaa") == []
        assert await api.listed("uusimaa") == [PROVIDER]
        suspended = (
            await client.get(f"/v1/{admitted['pirkanmaa']}", headers=api.auth(Role.PROVIDER, PROVIDER))
        ).json()
        assert suspended["reasons"] == [
            {"code": "QUALITY_BREACH", "subject": breach, "message": suspended["reasons"][0]["message"]}
        ]

        event_id, alert = await asyncio.wait_for(alerts.get(), timeout=15)
        stream.cancel()
        assert alert["breach"]["name"] == breach  # type: ignore[index]
        assert alert["breach"]["provider"] == PROVIDER  # type: ignore[index]
        assert int(event_id) == int(alert["sequence"])  # type: ignore[call-overload]

        # A supervisor who reconnects with the last id it saw before this one gets it again.
        resumed: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        again = asyncio.create_task(collect_alerts(api, "pirkanmaa", resumed, str(int(event_id) - 1)))
        replay_id, replay = await asyncio.wait_for(resumed.get(), timeout=15)
        again.cancel()
        assert (replay_id, replay["breach"]["name"]) == (event_id, breach)  # type: ignore[index]


async def test_bad_input_gets_a_clear_error_and_changes_nothing(sqlite_suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        key = Ed25519PrivateKey.generate()
        terms = await api.publish_terms("pirkanmaa")
        body = api.registration_body(terms, PROVIDER, key)

        wrong_id = api.registration_body(terms, "0737546-3", key)
        response = await api.register("pirkanmaa", wrong_id, PROVIDER)
        assert response.status_code == 400
        assert "registration.businessId" in response.text

        other_terms = dict(terms, contentHash="00" * 32)
        response = await api.register(
            "pirkanmaa", api.registration_body(other_terms, PROVIDER, key), PROVIDER
        )
        assert response.status_code == 400
        assert "registration.termsSignature" in response.text

        unknown = api.registration_body(
            dict(terms, name="regions/pirkanmaa/services/recruitment/terms/9"), PROVIDER, key
        )
        response = await api.register("pirkanmaa", unknown, PROVIDER)
        assert response.status_code == 404

        response = await api.register("pirkanmaa", body, "2617416-4")  # another provider's token
        assert response.status_code == 403

        response = await client.post(
            "/v1/regions/pirkanmaa/services/recruitment/registrations",
            content=b"{not json",
            headers=api.auth(Role.PROVIDER, PROVIDER),
        )
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"

        response = await client.post(
            "/v1/regions/uusimaa/services/recruitment/terms",
            json={"title": "x"},
            headers=api.auth(Role.REGION_ADMIN, "pirkanmaa"),
        )
        assert response.status_code == 403
        assert await api.listed("pirkanmaa") == []

        first = await api.register("pirkanmaa", body, PROVIDER, idempotency_key="retry-1")
        retried = await api.register("pirkanmaa", body, PROVIDER, idempotency_key="retry-1")
        assert first.status_code == retried.status_code == 200
        assert first.json()["name"] == retried.json()["name"]

        duplicate = await api.register("pirkanmaa", api.registration_body(terms, PROVIDER, key), PROVIDER)
        assert duplicate.status_code == 409
        assert await api.listed("pirkanmaa") == [PROVIDER]


async def test_health_and_reflection_answer_on_every_service(sqlite_suite: LocalSuite) -> None:
    for service in CATALOG:
        async with grpc.aio.insecure_channel(sqlite_suite.address(service.name)) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            services = {s.name async for reply in replies for s in reply.list_services_response.service}
            assert "grpc.health.v1.Health" in services
            assert set(service.grpc_services) <= services
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url) as client:
        document = (await client.get("/openapi.json")).json()
        assert "/v1/regions/{region}/services/{service}/registrations" in document["paths"]

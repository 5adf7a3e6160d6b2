"""The gateway against real grpc.aio backends: JSON calls, errors, metadata and Server-Sent Events."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc
from starlette.applications import Starlette

from services.gateway.app import GatewayServer, create_app
from services.runtime.auth import Principal, Role, mint_token


def well_formed_token(organisation: str = "pirkanmaa", ttl: timedelta = timedelta(hours=1)) -> str:
    """A token the gateway can read; these fake backends do not verify it, the real ones do."""
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return mint_token(key, Principal(Role.REGION_ADMIN, organisation, f"admin@{organisation}"), ttl)


TOKEN = well_formed_token()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Seen:
    """What the backends received."""

    requests: list[Any] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    lingering: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.requests.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        self.time_remaining.append(context.time_remaining())


class Registry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def PublishTerms(self, request, context):
        self.seen.record(request, context)
        terms = registry_pb2.Terms()
        terms.CopyFrom(request.terms)
        terms.name = f"{request.parent}/terms/1"
        terms.version = 1
        return terms

    async def GetTerms(self, request, context):
        self.seen.record(request, context)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")

    async def RegisterProvider(self, request, context):
        self.seen.record(request, context)
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="registration.business_id", description="check digit does not match"
                    )
                ]
            )
        )
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="invalid registration", details=[detail]
        )
        await context.abort_with_status(rpc_status.to_status(status))

    async def ListProviders(self, request, context):
        self.seen.record(request, context)
        if request.page_token == "boom":
            raise RuntimeError("database password is hunter2")
        if request.page_token == "cancelled":
            # What a backend's call cut off inside its shutdown (a cancelled task) reports.
            await context.abort(grpc.StatusCode.CANCELLED, "call cancelled by shutdown")
        if request.page_token == "linger":
            self.seen.lingering.set()
            await asyncio.sleep(3600)
        return registry_pb2.ListProvidersResponse(
            providers=[registry_pb2.AdmittedProvider(business_id="0737546-2", display_name="Oy Apu Ab")],
            next_page_token=f"after-{request.page_size}",
        )


def alert(sequence: int) -> selfmonitoring_pb2.Alert:
    return selfmonitoring_pb2.Alert(
        sequence=sequence, breach=selfmonitoring_pb2.Breach(name=f"regions/1/breaches/{sequence}")
    )


class SelfMonitoring(selfmonitoring_pb2_grpc.SelfMonitoringServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def StreamAlerts(self, request, context):
        self.seen.record(request, context)
        if request.parent == "regions/unknown":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such region")
        endless = request.parent == "regions/endless"
        try:
            if endless:
                yield selfmonitoring_pb2.StreamAlertsResponse(alerts=[alert(request.resume_after + 1)])
                await asyncio.sleep(3600)
            # Batches of two and one: each alert is an SSE event of its own.
            first = request.resume_after + 1
            yield selfmonitoring_pb2.StreamAlertsResponse(alerts=[alert(first), alert(first + 1)])
            yield selfmonitoring_pb2.StreamAlertsResponse(alerts=[alert(first + 2)])
        except asyncio.CancelledError:
            self.seen.stream_cancelled.set()
            raise


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()
    server = grpc.aio.server()
    # The test backends implement only the RPCs the tests call; the rest stay UNIMPLEMENTED.
    registry = Registry(seen)  # type: ignore[abstract]
    selfmonitoring = SelfMonitoring(seen)  # type: ignore[abstract]
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server(selfmonitoring, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", seen
    await server.stop(None)


def make_app(address: str, **kwargs: Any) -> Starlette:
    return create_app({"registry": address, "selfmonitoring": address, "tendering": address}, **kwargs)


@pytest.fixture
async def client(backend: tuple[str, Seen]) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(backend[0], max_body_bytes=4096)
    # ASGITransport runs no lifespan: enter it by hand so the channels open and close.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


@pytest.fixture
async def served(backend: tuple[str, Seen]) -> AsyncIterator[str]:
    """The gateway under a real uvicorn on a free port, for streaming."""
    app = make_app(backend[0], heartbeat_s=0.2)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = GatewayServer(config, on_shutdown=app.state.begin_shutdown)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_post_reaches_backend_with_path_params_and_body(client, backend):
    _, seen = backend
    response = await client.post(
        "/v1/regions/13/services/recruitment/terms",
        json={
            "title": "Recruitment 2027",
            "requirements": [{"code": "insurance", "kind": "REQUIREMENT_KIND_DOCUMENT"}],
        },
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "regions/13/services/recruitment/terms/1"
    assert response.json()["requirements"][0]["code"] == "insurance"
    request = seen.requests[-1]
    assert request.parent == "regions/13/services/recruitment"
    assert request.terms.title == "Recruitment 2027"


async def test_headers_become_metadata_and_calls_have_a_deadline(client, backend):
    _, seen = backend
    response = await client.post(
        "/v1/regions/13/services/recruitment/terms",
        json={"title": "T"},
        headers={**AUTH, "Idempotency-Key": "key-7", "X-Request-Id": "req-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    metadata = seen.metadata[-1]
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert metadata["x-request-id"] == "req-42"
    assert seen.requests[-1].request_id == "key-7"  # Idempotency-Key fills request_id (AIP-155)
    remaining = seen.time_remaining[-1]
    # The deadline is 10 s; clocks on both ends read it a little differently.
    assert remaining is not None and 0 < remaining <= 10.5


async def test_request_id_is_generated_when_missing_or_malformed(client, backend):
    _, seen = backend
    response = await client.get("/v1/regions/1/services/s/providers", headers={"X-Request-Id": "evil\tid"})
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert generated != "evil\tid" and len(generated) == 36
    assert seen.metadata[-1]["x-request-id"] == generated
    assert "authorization" not in seen.metadata[-1]


async def test_query_parameters_set_request_fields(client, backend):
    _, seen = backend
    params = {"pageSize": "7", "page_token": "p"}
    response = await client.get("/v1/regions/1/services/s/providers", params=params)
    assert response.status_code == 200
    # Fields at their defaults are printed too (registration, terms: "").
    assert response.json() == {
        "providers": [
            {
                "businessId": "0737546-2",
                "displayName": "Oy Apu Ab",
                "registration": "",
                "terms": "",
                "municipalities": [],
                "languages": [],
            }
        ],
        "nextPageToken": "after-7",
    }
    assert seen.requests[-1].page_token == "p"


async def test_unknown_field_is_a_json_400_that_never_reaches_the_backend(client, backend):
    _, seen = backend
    response = await client.post(
        "/v1/regions/13/services/s/terms", json={"title": "T", "colour": "red"}, headers=AUTH
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["fieldViolations"] == [
        {"field": "terms.colour", "description": "no such field"}
    ]
    assert seen.requests == []


def violations(response: httpx.Response) -> list[dict[str, str]]:
    """The field violations of a JSON error answer."""
    details = response.json()["error"]["details"]
    return [v for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


async def test_malformed_json_and_wrong_types_are_400_naming_the_field_in_plain_words(client):
    malformed = await client.post(
        "/v1/regions/13/services/s/terms",
        content=b'{"title": ',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in violations(malformed)] == ["terms"]
    wrong_types = {
        "terms.title": {"title": ["not", "a", "string"]},
        "terms.requirements[1].kind": {"requirements": [{"code": "a"}, {"kind": "KIND_OF_BLUE"}]},
        "terms.requirements[0].maxAgeDays": {"requirements": [{"maxAgeDays": 1.5}]},
        "terms.requirements": {"requirements": {"code": "a"}},
    }
    for field_path, body in wrong_types.items():
        response = await client.post("/v1/regions/13/services/s/terms", json=body, headers=AUTH)
        assert response.status_code == 400, response.text
        assert [v["field"] for v in violations(response)] == [field_path]
        # No protobuf internals: message type names, Python type names.
        assert "kasvu." not in response.text and "'list'" not in response.text, response.text


async def test_json_nested_past_the_limit_is_400_not_500(backend):
    address, seen = backend
    app = make_app(address)  # the default 1 MiB body limit: room for very deep nesting
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        # 40 deep: past the gateway's limit; 100 000 deep: past Python's own recursion limit.
        for depth in (40, 100_000):
            body = b'{"title": ' + b"[" * depth + b"]" * depth + b"}"
            response = await http.post(
                "/v1/regions/13/services/s/terms",
                content=body,
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert response.status_code == 400, response.text
            assert "nested more than 32 levels" in response.json()["error"]["message"]
            assert violations(response)[0]["field"].startswith("terms")
            assert response.headers["x-request-id"]
    assert seen.requests == []


async def test_body_over_the_limit_is_413(client):
    response = await client.post("/v1/regions/13/services/s/terms", json={"title": "x" * 5000}, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


async def test_backend_invalid_argument_carries_field_violations(client):
    response = await client.post(
        "/v1/regions/13/services/s/registrations",
        json={"businessId": "0737546-3", "displayName": "Oy Apu Ab", "publicKey": "AAAA"},
        headers=AUTH,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "invalid registration"
    # The backend names the proto field; the client reads the JSON name it sent.
    assert error["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [
                {"field": "registration.businessId", "description": "check digit does not match"}
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.RequestInfo",
            "requestId": response.headers["x-request-id"],
        },
    ]


async def test_backend_not_found_is_404(client):
    response = await client.get("/v1/regions/13/services/s/terms/9", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": 404,
        "status": "NOT_FOUND",
        "message": "regions/13/services/s/terms/9 not found",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.RequestInfo",
                "requestId": response.headers["x-request-id"],
            }
        ],
    }


async def test_backend_crash_is_500_without_its_message(client):
    response = await client.get("/v1/regions/1/services/s/providers", params={"pageToken": "boom"})
    assert response.status_code == 500
    assert "hunter2" not in response.text
    assert response.json()["error"]["status"] == "UNKNOWN"
    assert response.headers["x-request-id"] in response.json()["error"]["message"]


async def test_unexpected_gateway_error_is_a_json_500_with_the_request_id(client, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("services.gateway.app.build_request", broken)
    response = await client.get("/v1/regions/1/services/s/providers", headers={"X-Request-Id": "req-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    error = response.json()["error"]
    assert error["status"] == "INTERNAL" and "secret" not in response.text
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "req-500"}
    ]


async def test_unknown_route_is_404_and_wrong_verb_405_in_json(client):
    missing = await client.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"
    wrong = await client.delete("/v1/regions/13/services/s/terms")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"  # ListTerms and PublishTerms
    # google.rpc.Code has no "method not allowed"; not UNIMPLEMENTED (a server's gap, HTTP 501).
    assert (wrong.json()["error"]["code"], wrong.json()["error"]["status"]) == (405, "INVALID_ARGUMENT")
    assert "allowed: GET, POST" in wrong.json()["error"]["message"]
    # The catch-all transcoding route sees it first: still a JSON error, never a 500.
    wrong_builtin = await client.post("/healthz")
    assert wrong_builtin.json()["error"]["code"] == wrong_builtin.status_code == 404


async def test_health_and_openapi_are_served(client):
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/regions/{region}/alerts:stream" in document["paths"]


async def test_unreachable_backend_is_503():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    app = make_app(address)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        response = await http.get("/v1/regions/1/services/s/providers")
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"
    assert response.headers["retry-after"] == "1"
    # The channel's transport text (addresses, "failed to connect") is not for the client.
    assert "127.0.0.1" not in response.text


async def test_backend_cancelled_is_503_with_retry_after_not_499(client):
    # google.rpc maps CANCELLED to 499 (client closed request), a status clients rarely retry;
    # but the gateway's client is still there, so it was the backend that gave up on the call.
    response = await client.get("/v1/regions/1/services/s/providers", params={"pageToken": "cancelled"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["status"] == "UNAVAILABLE"
    assert response.headers["retry-after"] == "1"


async def test_call_in_flight_when_a_backend_stops_is_503_with_retry_after():
    """grpc.aio's server.stop(grace) ends the calls still running when the grace period is over;
    the client is told to retry, without the transport's text."""
    seen = Seen()
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(Registry(seen), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = make_app(f"127.0.0.1:{port}")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            call = asyncio.create_task(
                http.get("/v1/regions/1/services/s/providers", params={"pageToken": "linger"})
            )
            await asyncio.wait_for(seen.lingering.wait(), 5)
            await server.stop(0.2)
            response = await asyncio.wait_for(call, 5)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["status"] == "UNAVAILABLE"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"]
    assert "Cancelling" not in response.text


async def read_events(response: httpx.Response, count: int) -> list[str]:
    events: list[str] = []
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            events.append(event)
            if len(events) == count:
                return events
    return events


async def test_alert_stream_is_sse_with_ids_and_resumes_after_last_event_id(served, backend):
    _, seen = backend
    async with (
        httpx.AsyncClient(base_url=served, timeout=10) as http,
        http.stream(
            "GET", "/v1/regions/1/alerts:stream", headers={"Last-Event-ID": "41", **AUTH}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_events(response, 10)
    assert seen.requests[-1].resume_after == 41
    assert seen.requests[-1].parent == "regions/1"
    assert seen.metadata[-1]["authorization"] == f"Bearer {TOKEN}"
    assert seen.time_remaining[-1] is None  # streams carry no deadline
    assert [event.split("\n")[0] for event in events] == ["id: 42", "id: 43", "id: 44"]
    first = json.loads(events[0].split("\ndata: ", 1)[1])
    assert first["sequence"] == "42"
    assert first["breach"]["name"] == "regions/1/breaches/42"
    assert (first["breach"]["value"], first["breach"]["provider"]) == (0, "")  # defaults printed


async def test_stream_refused_by_backend_is_a_plain_http_error(served):
    async with httpx.AsyncClient(base_url=served, timeout=10) as http:
        response = await http.get("/v1/regions/unknown/alerts:stream", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no such region"


async def test_quiet_stream_sends_keepalives_and_client_disconnect_cancels_backend(served, backend):
    _, seen = backend
    async with (
        httpx.AsyncClient(base_url=served, timeout=10) as http,
        http.stream("GET", "/v1/regions/endless/alerts:stream", headers=AUTH) as response,
    ):
        events = await read_events(response, 2)
    assert events[0].startswith("id: 1\n")
    assert events[1] == ": keepalive"
    await asyncio.wait_for(seen.stream_cancelled.wait(), timeout=5)

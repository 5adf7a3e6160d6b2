"""The gateway's ASGI app: HTTP/JSON and Server-Sent Events in front of the gRPC services."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from services.gateway.bearer import Bearer, read_bearer
from services.gateway.comments import load_comments
from services.gateway.errors import GatewayError, error_body, grpc_error, invalid_argument
from services.gateway.fields import json_field_path
from services.gateway.jsonmap import build_request, message_to_json
from services.gateway.openapi import build_openapi
from services.gateway.routes import Route, build_routes, match_route
from services.gateway.sse import EventStreamResponse, StreamSlots, open_stream
from services.runtime.catalog import CATALOG, ServiceEntry, load_protos, public_methods, resource_names
from services.runtime.logging import request_id_var

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
STREAMS_PER_PRINCIPAL = 5
# Resource names here are a few short segments; a longer path is a mistake or an attack, refused
# before it reaches a service (whose error would echo it back).
MAX_PATH_LENGTH = 2048
MAX_SEGMENT_LENGTH = 256
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(
        error_body(error, request_id_var.get()), status_code=error.http_status, headers=error.headers
    )


def _internal_error() -> GatewayError:
    return GatewayError(500, "INTERNAL", f"internal error (request id {request_id_var.get()})")


class _Channels:
    """One grpc.aio channel per backend service, opened in the app's event loop."""

    def __init__(self, backends: dict[str, str]) -> None:
        self._backends = dict(backends)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def open(self) -> None:
        for service in self._backends:
            self.get(service)

    def get(self, service: str) -> grpc.aio.Channel:
        # Also lazily, for hosts that skip the lifespan; no await here, so no race.
        channel = self._channels.get(service)
        if channel is None:
            channel = self._channels[service] = grpc.aio.insecure_channel(self._backends[service])
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class _RequestContext:
    """Request id in and out, and one log line per request: method, route, status, duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # Only well-formed ids are trusted: they end up in logs and backend metadata.
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: ASGIMessage) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Here, not in an exception handler of Starlette's: those run outside this
            # middleware, where the answer would lose its request id.
            logger.exception("unhandled error", extra={"request_id": request_id})
            if response_started:
                raise
            await _error_response(_internal_error())(scope, receive, send_with_id)
        finally:
            # The route template, not the path: paths carry resource ids, bodies are never logged.
            route = scope.get("state", {}).get("route", "-")
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            logger.info(
                "%s %s %s %.2f ms",
                scope["method"],
                route,
                status,
                duration_ms,
                extra={
                    "http_method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                    "request_id": request_id,
                },
            )
            request_id_var.reset(token)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = GatewayError(413, "INVALID_ARGUMENT", f"request body exceeds {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _metadata(request_id: str, authorization: str | None) -> tuple[tuple[str, str], ...]:
    metadata = [("x-request-id", request_id)]
    if authorization:
        metadata.append(("authorization", authorization.strip()))
    return tuple(metadata)


def _raw_path(request: Request) -> str:
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    return raw.decode("latin-1").split("?", 1)[0]


def _check_path_lengths(route: Route, path_vars: Mapping[str, str]) -> None:
    for field_path, value in path_vars.items():
        if any(len(segment) > MAX_SEGMENT_LENGTH for segment in value.split("/")):
            json_path = json_field_path(route.method.input_type, field_path)
            description = f"each segment must be at most {MAX_SEGMENT_LENGTH} characters"
            raise invalid_argument(f"{json_path}: {description}", [(json_path, description)])


class GatewayServer(uvicorn.Server):
    """uvicorn's server, which on shutdown first ends the app's open event streams (each with a
    final event), since uvicorn's graceful shutdown waits for every response to finish."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


def backends_of(catalog: Sequence[ServiceEntry], addresses: Mapping[str, str]) -> dict[str, str]:
    """gRPC service full name -> "host:port", for every public gRPC service of the catalog."""
    missing = [service.name for service in catalog if service.grpc_services and service.name not in addresses]
    if missing:
        raise ValueError(f"no address for {', '.join(missing)}: the gateway calls every catalog service")
    return {name: addresses[service.name] for service in catalog for name in service.grpc_services}


class _Gateway:
    """The HTTP endpoints in front of the backends: each request to its route's RPC."""

    def __init__(
        self,
        backends: dict[str, str],
        public: frozenset[str],
        *,
        call_timeout_s: float,
        max_body_bytes: int,
        heartbeat_s: float,
        streams_per_principal: int,
    ) -> None:
        self.routes = build_routes(backends)
        self.channels = _Channels(backends)
        self.public = public
        self.call_timeout_s = call_timeout_s
        self.max_body_bytes = max_body_bytes
        self.heartbeat_s = heartbeat_s
        self.slots = StreamSlots(streams_per_principal)
        self.closing = asyncio.Event()

    def stub(self, route: Route) -> Callable[..., Any]:
        # A multi-callable is a cheap handle on the channel; no per-method stub classes needed.
        channel = self.channels.get(route.service)
        factory = channel.unary_stream if route.server_streaming else channel.unary_unary
        return factory(  # type: ignore[no-any-return]
            route.rpc_path,
            request_serializer=route.request_class.SerializeToString,
            response_deserializer=route.response_class.FromString,
        )

    async def stream(self, route: Route, message: Any, metadata: Any, bearer: Bearer | None) -> Response:
        principal = bearer.principal if bearer is not None else ("", "", "")
        if self.slots.full(principal):
            raise self.slots.refusal()
        call = self.stub(route)(message, metadata=metadata)
        try:
            first = await open_stream(call)
        except BaseException:
            call.cancel()
            raise
        # Counted once the backend has accepted the stream, so has verified the token whose
        # principal this is; checked again, as another stream may have opened meanwhile.
        if self.slots.full(principal):
            first.cancel()
            call.cancel()
            raise self.slots.refusal()
        return EventStreamResponse(
            call,
            first,
            heartbeat_s=self.heartbeat_s,
            closing=self.closing,
            expires_at=bearer.expires_at if bearer is not None else None,
            on_close=self.slots.take(principal),
        )

    async def handle(self, request: Request) -> Response:
        request_id: str = request.state.request_id
        raw_path = _raw_path(request)
        route: Route | None = None
        try:
            if len(raw_path) > MAX_PATH_LENGTH:
                too_long = f"the path is longer than {MAX_PATH_LENGTH} characters"
                raise GatewayError(414, "INVALID_ARGUMENT", too_long)
            route, path_vars = match_route(self.routes, request.method, raw_path)
            request.state.route = route.template.template
            # Who is calling, before what they send: an anonymous caller learns nothing about
            # a method's input (401, not 400), and no body is read for it.
            authorization = request.headers.get("authorization")
            bearer = read_bearer(authorization, required=route.full_name not in self.public)
            _check_path_lengths(route, path_vars)
            body = await _read_body(request, self.max_body_bytes) if route.body else b""
            message = build_request(
                route,
                path_vars,
                request.query_params.multi_items(),
                body,
                last_event_id=request.headers.get("last-event-id") if route.server_streaming else None,
                idempotency_key=request.headers.get("idempotency-key"),
            )
            metadata = _metadata(request_id, authorization)
            if route.server_streaming:
                return await self.stream(route, message, metadata, bearer)
            reply = await self.stub(route)(message, metadata=metadata, timeout=self.call_timeout_s)
            return JSONResponse(message_to_json(reply))
        except GatewayError as error:
            return _error_response(error)
        except grpc.aio.AioRpcError as error:
            request_type = route.method.input_type if route is not None else None
            return _error_response(grpc_error(error, request_id, request_type))

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.closing.clear()
        self.channels.open()
        try:
            yield
        finally:
            self.closing.set()
            await self.channels.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a wrong method on /healthz, say) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code >= 500:
        return _error_response(_internal_error())
    status = "NOT_FOUND" if exc.status_code == 404 else "INVALID_ARGUMENT"
    return _error_response(
        GatewayError(exc.status_code, status, str(exc.detail), headers=dict(exc.headers or {}))
    )


def create_app(
    addresses: Mapping[str, str],
    *,
    catalog: Sequence[ServiceEntry] = CATALOG,
    call_timeout_s: float = 10.0,
    max_body_bytes: int = 1 << 20,
    heartbeat_s: float = HEARTBEAT_S,
    streams_per_principal: int = STREAMS_PER_PRINCIPAL,
) -> Starlette:
    """The gateway in front of `catalog`, whose services are at `addresses`: catalog name -> "host:port".

    Every annotated RPC of the catalog's gRPC services is served at its google.api.http binding.
    `app.state.begin_shutdown()` ends the open event streams (GatewayServer calls it).
    """
    backends = backends_of(catalog, addresses)
    load_protos(catalog)
    public = public_methods(catalog)
    gateway = _Gateway(
        backends,
        public,
        call_timeout_s=call_timeout_s,
        max_body_bytes=max_body_bytes,
        heartbeat_s=heartbeat_s,
        streams_per_principal=streams_per_principal,
    )
    openapi = build_openapi(
        gateway.routes, load_comments(), public_methods=public, resource_names=resource_names(catalog)
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    app = Starlette(
        routes=[
            StarletteRoute("/healthz", healthz, methods=["GET"]),
            StarletteRoute("/openapi.json", openapi_json, methods=["GET"]),
            StarletteRoute("/{path:path}", gateway.handle, methods=_ALL_METHODS),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=gateway.lifespan,
    )
    app.add_middleware(_RequestContext)
    app.state.routes = gateway.routes
    app.state.begin_shutdown = gateway.closing.set
    return app

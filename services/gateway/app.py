"""The gateway's ASGI app: HTTP/JSON and Server-Sent Events in front of the gRPC services."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from services.gateway.comments import load_comments
from services.gateway.errors import GatewayError, error_body, grpc_error
from services.gateway.jsonmap import build_request, message_to_json
from services.gateway.openapi import build_openapi
from services.gateway.routes import Route, build_routes, match_route
from services.runtime.catalog import CATALOG, ServiceEntry, load_protos, public_methods
from services.runtime.logging import request_id_var

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# How long an SSE request waits for the backend to accept the stream before the
# 200 goes out; a stream refused within it (e.g. NOT_FOUND) becomes a plain HTTP error.
STREAM_OPEN_WAIT_S = 1.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.http_status, headers=error.headers)


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

        async def send_with_id(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
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


def _metadata(request: Request, request_id: str) -> tuple[tuple[str, str], ...]:
    metadata = [("x-request-id", request_id)]
    authorization = request.headers.get("authorization")
    if authorization:
        metadata.append(("authorization", authorization))
    return tuple(metadata)


def _sse_event(message: Message) -> str:
    data = json.dumps(message_to_json(message), separators=(",", ":"))
    sequence = message.DESCRIPTOR.fields_by_name.get("sequence")
    if sequence is not None:
        return f"id: {getattr(message, sequence.name)}\ndata: {data}\n\n"
    return f"data: {data}\n\n"


async def _open_stream(call: Any) -> asyncio.Task[Any]:
    """Starts reading the stream; raises AioRpcError when the backend refuses it at once."""
    first_read: asyncio.Task[Any] = asyncio.ensure_future(call.read())
    headers = asyncio.ensure_future(call.initial_metadata())
    try:
        await asyncio.wait(
            {first_read, headers}, timeout=STREAM_OPEN_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        headers.cancel()
    if first_read.done() or call.done():
        # A refusal comes trailers-only: headers and status at once, the read right after.
        await asyncio.wait({first_read})
        first_read.result()  # raises the backend's refusal, if it refused
    return first_read


async def _sse_body(call: Any, pending: asyncio.Task[Any], heartbeat_s: float) -> AsyncIterator[str]:
    """Events from the gRPC stream, keepalive comments while it is quiet."""
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=heartbeat_s)
            if not done:
                yield ": keepalive\n\n"
                continue
            try:
                item = pending.result()
            except grpc.aio.AioRpcError as error:
                body = error_body(grpc_error(error, request_id_var.get()))
                yield f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
                return
            if item is grpc.aio.EOF:
                return
            yield _sse_event(item)
            pending = asyncio.ensure_future(call.read())
    finally:
        # The client went away or the stream ended: stop the backend stream either way.
        pending.cancel()
        call.cancel()


def backends_of(catalog: Sequence[ServiceEntry], addresses: Mapping[str, str]) -> dict[str, str]:
    """gRPC service full name -> "host:port", for every public gRPC service of the catalog."""
    missing = [service.name for service in catalog if service.grpc_services and service.name not in addresses]
    if missing:
        raise ValueError(f"no address for {', '.join(missing)}: the gateway calls every catalog service")
    return {name: addresses[service.name] for service in catalog for name in service.grpc_services}


def create_app(
    addresses: Mapping[str, str],
    *,
    catalog: Sequence[ServiceEntry] = CATALOG,
    call_timeout_s: float = 10.0,
    max_body_bytes: int = 1 << 20,
    heartbeat_s: float = HEARTBEAT_S,
) -> Starlette:
    """The gateway in front of `catalog`, whose services are at `addresses`: catalog name -> "host:port".

    Every annotated RPC of the catalog's gRPC services is served at its google.api.http binding.
    """
    backends = backends_of(catalog, addresses)
    load_protos(catalog)
    routes = build_routes(backends)
    channels = _Channels(backends)
    openapi = build_openapi(routes, load_comments(), public_methods=public_methods(catalog))

    def stub(route: Route) -> Callable[..., Any]:
        # A multi-callable is a cheap handle on the channel; no per-method stub classes needed.
        channel = channels.get(route.service)
        factory = channel.unary_stream if route.server_streaming else channel.unary_unary
        return factory(  # type: ignore[no-any-return]
            route.rpc_path,
            request_serializer=route.request_class.SerializeToString,
            response_deserializer=route.response_class.FromString,
        )

    async def gateway(request: Request) -> Response:
        request_id: str = request.state.request_id
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1").split("?", 1)[0]
        try:
            route, path_vars = match_route(routes, request.method, raw_path)
            request.state.route = route.template.template
            body = await _read_body(request, max_body_bytes) if route.body else b""
            message = build_request(
                route,
                path_vars,
                request.query_params.multi_items(),
                body,
                last_event_id=request.headers.get("last-event-id") if route.server_streaming else None,
                idempotency_key=request.headers.get("idempotency-key"),
            )
            metadata = _metadata(request, request_id)
            if route.server_streaming:
                call = stub(route)(message, metadata=metadata)
                try:
                    first = await _open_stream(call)
                except BaseException:
                    call.cancel()
                    raise
                return StreamingResponse(
                    _sse_body(call, first, heartbeat_s),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            reply = await stub(route)(message, metadata=metadata, timeout=call_timeout_s)
            return JSONResponse(message_to_json(reply))
        except GatewayError as error:
            return _error_response(error)
        except grpc.aio.AioRpcError as error:
            return _error_response(grpc_error(error, request_id))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
        error = GatewayError(exc.status_code, status, str(exc.detail), headers=dict(exc.headers or {}))
        return _error_response(error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        request_id = request_id_var.get()
        logger.exception("unhandled error", extra={"request_id": request_id})
        return _error_response(GatewayError(500, "INTERNAL", f"internal error (request id {request_id})"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channels.open()
        try:
            yield
        finally:
            await channels.close()

    app = Starlette(
        routes=[
            StarletteRoute("/healthz", healthz, methods=["GET"]),
            StarletteRoute("/openapi.json", openapi_json, methods=["GET"]),
            StarletteRoute("/{path:path}", gateway, methods=_ALL_METHODS),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
        lifespan=lifespan,
    )
    app.add_middleware(_RequestContext)
    app.state.routes = routes
    return app

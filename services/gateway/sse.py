"""Server-Sent Events from server-streaming RPCs: events, keep-alive comments, and the final
event that says why a stream ends (the backend's error, the token's expiry, the gateway's
shutdown); and the cap on streams one principal may hold open."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.gateway.errors import GatewayError, error_body, grpc_error
from services.gateway.fields import is_repeated
from services.gateway.jsonmap import message_to_json
from services.runtime.logging import request_id_var

# How long an SSE request waits for the backend to accept the stream before the
# 200 goes out; a stream refused within it (e.g. NOT_FOUND) becomes a plain HTTP error.
STREAM_OPEN_WAIT_S = 1.0
# What a client that follows the SSE spec waits before it reconnects after the gateway's shutdown.
RECONNECT_MS = 1000


class StreamSlots:
    """Open streams per principal, at most `per_principal` each, so no one caller can hold
    the gateway's (and the backends') resources with streams it never reads."""

    def __init__(self, per_principal: int) -> None:
        self.per_principal = per_principal
        self._open: Counter[Hashable] = Counter()

    def full(self, principal: Hashable) -> bool:
        return self._open[principal] >= self.per_principal

    def take(self, principal: Hashable) -> Callable[[], None]:
        """Counts one more stream for `principal`; returns what gives it back (once)."""
        self._open[principal] += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self._open[principal] -= 1
                if self._open[principal] <= 0:
                    del self._open[principal]

        return give_back

    def refusal(self) -> GatewayError:
        message = (
            f"too many open streams: at most {self.per_principal} at once per caller; "
            "close one before opening another"
        )
        return GatewayError(429, "RESOURCE_EXHAUSTED", message, headers={"Retry-After": "5"})


def batch_field(descriptor: Any) -> FieldDescriptor | None:
    """The one repeated message field of a stream message that batches items (StreamAlerts's
    `alerts`): each item is an event of its own. None for other messages."""
    fields: Sequence[FieldDescriptor] = descriptor.fields
    if len(fields) == 1 and is_repeated(fields[0]) and fields[0].message_type is not None:
        return fields[0]
    return None


def event_type(descriptor: Descriptor) -> Descriptor:
    """What each event's data is: the batched item, or the stream message itself."""
    batched = batch_field(descriptor)
    if batched is None or batched.message_type is None:
        return descriptor
    return batched.message_type


def sse_events(message: Message) -> str:
    """One event per item of a batch, or one for the message."""
    batched = batch_field(message.DESCRIPTOR)
    if batched is None:
        return sse_event(message)
    return "".join(sse_event(item) for item in getattr(message, batched.name))


def sse_event(message: Message) -> str:
    data = json.dumps(message_to_json(message), separators=(",", ":"))
    sequence = message.DESCRIPTOR.fields_by_name.get("sequence")
    if sequence is not None:
        return f"id: {getattr(message, sequence.name)}\ndata: {data}\n\n"
    return f"data: {data}\n\n"


def final_event(error: GatewayError, *, retry_ms: int | None = None) -> str:
    """The last event of a stream: `event: error` with Google's error shape saying why it ends."""
    data = json.dumps(error_body(error, request_id_var.get()), separators=(",", ":"))
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{retry}event: error\ndata: {data}\n\n"


def token_expired() -> GatewayError:
    return GatewayError(
        401,
        "UNAUTHENTICATED",
        "the bearer token expired: reconnect with a fresh token and Last-Event-ID to resume",
    )


def shutting_down() -> GatewayError:
    return GatewayError(
        503, "UNAVAILABLE", "the gateway is shutting down: reconnect with Last-Event-ID to resume"
    )


async def open_stream(call: Any) -> asyncio.Task[Any]:
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


async def sse_body(
    call: Any,
    pending: asyncio.Task[Any],
    *,
    heartbeat_s: float,
    closing: asyncio.Event,
    expires_at: float | None = None,
    on_close: Callable[[], None] = lambda: None,
) -> AsyncIterator[str]:
    """Events from the gRPC stream, keep-alive comments while it is quiet, and a final event
    when the backend ends it with an error, when the token expires (`expires_at`, POSIX
    seconds) or when the gateway shuts down (`closing` is set)."""
    shutdown = asyncio.ensure_future(closing.wait())
    try:
        while True:
            timeout = heartbeat_s
            if expires_at is not None:
                timeout = min(timeout, max(expires_at - time.time(), 0.0))
            done, _ = await asyncio.wait({pending, shutdown}, timeout=timeout, return_when="FIRST_COMPLETED")
            if shutdown in done:
                yield final_event(shutting_down(), retry_ms=RECONNECT_MS)
                return
            if not done:
                if expires_at is not None and time.time() >= expires_at:
                    yield final_event(token_expired())
                    return
                yield ": keepalive\n\n"
                continue
            try:
                item = pending.result()
            except grpc.aio.AioRpcError as error:
                yield final_event(grpc_error(error, request_id_var.get()))
                return
            if item is grpc.aio.EOF:
                return
            yield sse_events(item)
            pending = asyncio.ensure_future(call.read())
    finally:
        # The client went away or the stream ended: stop the backend stream either way.
        shutdown.cancel()
        pending.cancel()
        call.cancel()
        on_close()


class EventStreamResponse(StreamingResponse):
    """A server-streaming call as text/event-stream. Whatever ends the response (the stream's
    end, the client's leaving, an error before the first byte) cancels the backend call and
    runs `on_close` once."""

    def __init__(
        self,
        call: Any,
        first: asyncio.Task[Any],
        *,
        heartbeat_s: float,
        closing: asyncio.Event,
        expires_at: float | None,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(
            sse_body(
                call,
                first,
                heartbeat_s=heartbeat_s,
                closing=closing,
                expires_at=expires_at,
                on_close=on_close,
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._call = call
        self._first = first
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The body's own cleanup runs only if it was started; this runs always.
            self._first.cancel()
            self._call.cancel()
            self._on_close()

"""gRPC edge shared by every service: request id, caller identity, logging and the mapping
of domain errors to status codes with google.rpc details."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from services.runtime.auth import InvalidToken, Principal, TokenVerifier
from services.runtime.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.runtime.logging import request_id_var
from services.runtime.uow import Context

log = logging.getLogger(__name__)

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)

ERROR_DOMAIN = "kasvu.fi"

_CODES: list[tuple[type[DomainError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Aborted, grpc.StatusCode.ABORTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def current_principal() -> Principal | None:
    """Who is calling, as proved by the bearer token; None for anonymous calls."""
    return principal_var.get()


def call_context(idempotency_key: str = "") -> Context:
    """The dispatcher's context for the gRPC call being served: its principal, its request id
    (which also starts the correlation of what the call causes) and the client's retry key."""
    request_id = request_id_var.get()
    return Context(
        actor=principal_var.get(),
        request_id=request_id,
        idempotency_key=idempotency_key,
        correlation_id=request_id,
    )


def status_code_for(error: DomainError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


# A status travels in trailers, which gRPC clients refuse above 8 KiB (the soft limit; 16 KiB
# hard). A request with thousands of bad fields, or one echoing a huge value, would otherwise
# reach its caller as RESOURCE_EXHAUSTED about metadata instead of its own error. The message is
# percent-encoded (up to 3 bytes a character) and the details base64-encoded (4/3), so these
# bounds keep the two under about 6 KiB.
_MESSAGE_LIMIT = 512
_TEXT_LIMIT = 200
_DETAILS_BUDGET = 3072


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def rich_status(error: DomainError) -> status_pb2.Status:
    """google.rpc.Status with BadRequest field violations and an ErrorInfo reason, small
    enough for any client to receive: long texts are clipped, and violations past the budget
    are counted in the message instead of listed."""
    code = status_code_for(error)
    details: list[any_pb2.Any] = []
    if error.reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=_clip(error.reason, _TEXT_LIMIT), domain=ERROR_DOMAIN))
        details.append(packed)
    note = ""
    if error.violations:
        bad_request = error_details_pb2.BadRequest()
        used = sum(detail.ByteSize() for detail in details)
        for listed, violation in enumerate(error.violations):
            entry = error_details_pb2.BadRequest.FieldViolation(
                field=_clip(violation.field, _TEXT_LIMIT),
                description=_clip(violation.description, _TEXT_LIMIT),
            )
            if used + bad_request.ByteSize() + entry.ByteSize() + 8 > _DETAILS_BUDGET:
                note = f" ({len(error.violations) - listed} more violations not listed)"
                break
            bad_request.field_violations.append(entry)
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.insert(0, packed)
    message = _clip(error.message, _MESSAGE_LIMIT - len(note)) + note
    return status_pb2.Status(code=code.value[0], message=message, details=details)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    status = rich_status(error)
    await context.abort(
        status_code_for(error),
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


@dataclass(frozen=True)
class _MalformedRequest:
    """Stands in for a request whose bytes are not the method's message."""

    error: str


@dataclass(frozen=True)
class _TextWithNul:
    """Stands in for a request with NUL characters in its text, naming the fields."""

    violations: list[FieldViolation]


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers an undecodable request with INTERNAL; it is the client's mistake, so
    decode leniently and let the wrapper answer INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except DecodeError as error:
            return _MalformedRequest(str(error))
        # Text is stored as its UTF-8 bytes, so without a zero byte no text holds a NUL: the
        # walk over every field (thousands in a stream of observations) is for the rest only.
        if b"\0" in data and isinstance(message, Message):
            violations = _nul_violations(message)
            if violations:
                return _TextWithNul(violations)
        return message

    return parse


def _nul_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every text field of `message`, at any depth, that holds a NUL character: PostgreSQL
    cannot store one, and no name, id or text of the suite has a use for it."""
    found: list[FieldViolation] = []
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            # Keys are text too.
            items = [(f"{path}[{key!r}]", item) for key, item in value.items()] + [(path, k) for k in value]
        elif fd.is_repeated:
            items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(path, value)]
        for item_path, item in items:
            if isinstance(item, Message):
                found.extend(_nul_violations(item, item_path + "."))
            elif isinstance(item, str) and "\0" in item:
                found.append(FieldViolation(item_path, "must not contain NUL characters"))
    return found


def _refuse_bad_request(request: Any) -> None:
    """Refuses what no handler should see: bytes that are not the method's message, and text
    with NUL characters."""
    if isinstance(request, _MalformedRequest):
        raise InvalidArgument(f"the request is not a valid protobuf message of this method: {request.error}")
    if isinstance(request, _TextWithNul):
        fields = ", ".join(v.field for v in request.violations[:5])
        raise InvalidArgument(f"text must not contain NUL characters: {fields}", request.violations)


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _refuse_bad_request(request)
        yield request


def _encoded_passes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A stream's serializer that lets messages the servicer encoded itself (bytes) through: a
    fan-out encodes a message once for all its subscribers."""
    if serialize is None:
        return None
    encode = serialize

    def serialize_or_pass(message: Any) -> bytes:
        return message if isinstance(message, bytes) else encode(message)

    return serialize_or_pass


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id and principal for the call, logs it, and turns DomainError
    into a status; any other exception is logged and answered INTERNAL without detail."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Method -> (the servicer's handler, its wrapped handler): grpc asks for the handler on
        every call, and wrapping it anew each time is work done once per method at most."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            # Client streaming (self-monitoring's observation ingestion): the same edge as unary.
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, client_streaming=True),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=_encoded_passes(handler.response_serializer),
            )
        return handler

    async def _enter(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = _metadata(context)
        request_id_var.set(metadata.get("x-request-id") or uuid.uuid4().hex)
        principal_var.set(None)
        authorization = metadata.get("authorization", "")
        if authorization:
            if self._verifier is None:
                await abort_with(context, Unauthenticated("this service accepts no tokens"))
                return
            try:
                principal_var.set(self._verifier.verify(authorization))
            except InvalidToken as error:
                await abort_with(context, Unauthenticated(f"invalid bearer token: {error}"))

    @contextlib.asynccontextmanager
    async def _answering(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], log_message: str
    ) -> AsyncIterator[None]:
        """Around a call's work: a DomainError becomes its status; any other exception is logged
        and answered INTERNAL without its text, which may name internals; one log line at the end."""
        started = time.perf_counter()
        outcome = "OK"
        try:
            yield
        except DomainError as error:
            outcome = status_code_for(error).name
            await abort_with(context, error)
        except Exception:
            if context.code() not in (None, grpc.StatusCode.OK):
                outcome = str(context.code())
                raise
            outcome = "INTERNAL"
            log.exception("unexpected error", extra={"method": method})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            log.info(
                log_message,
                extra={
                    "method": method,
                    "code": outcome,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    def _wrap_unary(self, method: str, behavior: Any, *, client_streaming: bool = False) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self._enter(context)
            async with self._answering(method, context, "rpc"):
                if client_streaming:
                    return await behavior(_checked_stream(request), context)
                _refuse_bad_request(request)
                return await behavior(request, context)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await self._enter(context)
            log.info("stream opened", extra={"method": method})
            # As for unary calls: an unexpected failure is INTERNAL, never UNKNOWN with its text.
            async with self._answering(method, context, "stream closed"):
                _refuse_bad_request(request)
                async for item in behavior(request, context):
                    yield item

        return wrapper


__all__ = [
    "EdgeInterceptor",
    "abort_with",
    "call_context",
    "current_principal",
    "principal_var",
    "rich_status",
]

"""gRPC edge shared by every service: request id, caller identity, logging and the mapping
of domain errors to status codes with google.rpc details."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from services.runtime.auth import InvalidToken, Principal, TokenVerifier
from services.runtime.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
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


def rich_status(error: DomainError) -> status_pb2.Status:
    """google.rpc.Status with BadRequest field violations and an ErrorInfo reason."""
    code = status_code_for(error)
    details: list[any_pb2.Any] = []
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    if error.reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    status = rich_status(error)
    await context.abort(
        status_code_for(error),
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


@dataclass(frozen=True)
class _MalformedRequest:
    """Stands in for a request whose bytes are not the method's message."""

    error: str


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers an undecodable request with INTERNAL; it is the client's mistake, so
    decode leniently and let the wrapper answer INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _MalformedRequest(str(error))

    return parse


def _refuse_if_malformed(request: Any) -> None:
    if isinstance(request, _MalformedRequest):
        raise InvalidArgument(f"the request is not a valid protobuf message of this method: {request.error}")


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _refuse_if_malformed(request)
        yield request


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id and principal for the call, logs it, and turns DomainError
    into a status; any other exception is logged and answered INTERNAL without detail."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        method = details.method
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
                response_serializer=handler.response_serializer,
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

    def _wrap_unary(self, method: str, behavior: Any, *, client_streaming: bool = False) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            await self._enter(context)
            outcome = "OK"
            try:
                if client_streaming:
                    return await behavior(_checked_stream(request), context)
                _refuse_if_malformed(request)
                return await behavior(request, context)
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
                    "rpc",
                    extra={
                        "method": method,
                        "code": outcome,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await self._enter(context)
            log.info("stream opened", extra={"method": method})
            try:
                _refuse_if_malformed(request)
                async for item in behavior(request, context):
                    yield item
            except DomainError as error:
                await abort_with(context, error)
            finally:
                log.info("stream closed", extra={"method": method})

        return wrapper


__all__ = [
    "EdgeInterceptor",
    "abort_with",
    "call_context",
    "current_principal",
    "principal_var",
    "rich_status",
]

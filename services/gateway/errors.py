"""Errors answered to HTTP clients in Google's JSON error shape, and backend gRPC statuses mapped to them."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

# error_details_pb2 also registers the google.rpc detail types, so grpc_error can render a backend's details.
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# google.rpc code -> HTTP status, as in google/rpc/code.proto.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Backend messages for these codes may describe internals (stack traces, SQL):
# the client gets a generic message and the request id instead.
_OPAQUE_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status google.rpc prescribes for a gRPC status code."""
    return _HTTP_STATUS.get(code, 500)


@dataclass
class GatewayError(Exception):
    """An error answered to the HTTP client in Google's JSON error shape."""

    http_status: int
    status: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.http_status} {self.status}: {self.message}"


def invalid_argument(message: str, violations: Sequence[tuple[str, str]] = ()) -> GatewayError:
    """A 400 for a client's mistake, with google.rpc.BadRequest field violations when known."""
    details: list[dict[str, Any]] = []
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        details.append(_detail_to_json(bad))
    return GatewayError(400, "INVALID_ARGUMENT", message, details)


def error_body(error: GatewayError) -> dict[str, Any]:
    """Google's JSON error representation."""
    return {
        "error": {
            "code": error.http_status,
            "status": error.status,
            "message": error.message,
            "details": error.details,
        }
    }


def _detail_to_json(detail: Message) -> dict[str, Any]:
    body = json_format.MessageToDict(detail)
    return {"@type": "type.googleapis.com/" + detail.DESCRIPTOR.full_name, **body}


def grpc_error(error: grpc.aio.AioRpcError, request_id: str) -> GatewayError:
    """Translates a backend's status, with its google.rpc.Status details, to an HTTP error."""
    code = error.code()
    message = error.details() or ""
    if code in _OPAQUE_CODES:
        message = f"internal error (request id {request_id})"
    details: list[dict[str, Any]] = []
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:
        # Rich status inconsistent with the call's code: report the code alone.
        status = None
    if status is not None and code not in _OPAQUE_CODES:
        for any_detail in status.details:
            try:
                # MessageToDict renders an Any with its "@type" when the type is known.
                details.append(json_format.MessageToDict(any_detail))
            except (TypeError, KeyError):
                details.append({"@type": any_detail.type_url})
    return GatewayError(http_status_for(code), code.name, message, details)

"""Errors answered to HTTP clients in Google's JSON error shape, and backend gRPC statuses mapped to them."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

# error_details_pb2 also registers the google.rpc detail types, so grpc_error can render a backend's details.
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.gateway.fields import json_field_path

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
    # google.rpc says 499 (client closed request), but the gateway never answers a client that
    # went away: a backend CANCELLED is a call cut off by its graceful shutdown, to be retried.
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Backend messages for these codes may describe internals (stack traces, SQL):
# the client gets a generic message and the request id instead.
_OPAQUE_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}

# A backend that is starting, stopping or restarting refuses calls; the client should retry soon.
_RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
RETRY_AFTER_S = 1

# Codes that gRPC itself gives, with transport text (addresses, metadata sizes) that means nothing
# to an HTTP client: without a service's own status, the client reads one of these instead.
_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable (starting, restarting or shutting down); retry",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the service's answer was too large to pass on",
}


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


def error_body(error: GatewayError, request_id: str) -> dict[str, Any]:
    """Google's JSON error representation, with the request id in a google.rpc.RequestInfo
    detail (as in the X-Request-Id header) so a client can quote it from the body alone."""
    request_info = _detail_to_json(error_details_pb2.RequestInfo(request_id=request_id))
    return {
        "error": {
            "code": error.http_status,
            "status": error.status,
            "message": error.message,
            "details": [*error.details, request_info],
        }
    }


def _detail_to_json(detail: Message) -> dict[str, Any]:
    body = json_format.MessageToDict(detail)
    return {"@type": "type.googleapis.com/" + detail.DESCRIPTOR.full_name, **body}


def _json_paths(bad_request: error_details_pb2.BadRequest, request: Descriptor, message: str) -> str:
    """Rewrites the violations' proto field paths, and the message's mentions of them, in JSON names."""
    for violation in bad_request.field_violations:
        spelled = json_field_path(request, violation.field)
        if spelled != violation.field:
            # Whole paths only: "page_token" in "page_token is not…", not inside another name.
            mention = re.compile(rf"(?<![\w.\[]){re.escape(violation.field)}(?![\w\[])")
            message = mention.sub(spelled.replace("\\", r"\\"), message)
            violation.field = spelled
    return message


def grpc_error(
    error: grpc.aio.AioRpcError, request_id: str, request: Descriptor | None = None
) -> GatewayError:
    """Translates a backend's status, with its google.rpc.Status details, to an HTTP error.

    With the `request` message's descriptor, BadRequest field paths are given in the JSON names
    the client used (registration.businessId), not the proto names the services report.
    """
    code = error.code()
    message = error.details() or ""
    headers: dict[str, str] = {}
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:
        # Rich status inconsistent with the call's code: report the code alone.
        status = None
    if code in _RETRY_CODES:
        code = grpc.StatusCode.UNAVAILABLE
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if code in _OPAQUE_CODES:
        message = f"internal error (request id {request_id})"
    elif status is None and code in _TRANSPORT_MESSAGES:
        message = _TRANSPORT_MESSAGES[code]
    details: list[dict[str, Any]] = []
    if status is not None and code not in _OPAQUE_CODES:
        for any_detail in status.details:
            if request is not None and any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                any_detail.Unpack(bad_request)
                message = _json_paths(bad_request, request, message)
                details.append(_detail_to_json(bad_request))
                continue
            try:
                # MessageToDict renders an Any with its "@type" when the type is known.
                details.append(json_format.MessageToDict(any_detail))
            except (TypeError, KeyError):
                details.append({"@type": any_detail.type_url})
    return GatewayError(http_status_for(code), code.name, message, details, headers)

"""HTTP requests (path variables, query, JSON body, headers) to gRPC request messages, and
replies to JSON, by the proto3 JSON mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.gateway.errors import invalid_argument
from services.gateway.fields import is_repeated, resolve_field_path
from services.gateway.routes import Route

# Well-known types whose JSON form is a string, so a query parameter can set them.
_STRING_JSON_TYPES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.BoolValue",
}


def _query_value(fd: FieldDescriptor, raw: str, name: str) -> Any:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if raw not in ("true", "false"):
            raise invalid_argument(f"query parameter {name!r} must be true or false", [(name, "not a bool")])
        return raw == "true"
    # Strings are valid proto3 JSON for every other scalar, enum and the string-shaped
    # well-known types, so ParseDict does the conversion and the checking.
    return raw


def _set_path(target: dict[str, Any], names: Sequence[str], value: Any) -> None:
    for name in names[:-1]:
        nested = target.setdefault(name, {})
        if not isinstance(nested, dict):
            raise invalid_argument(f"field {name!r} must be an object", [(name, "must be an object")])
        target = nested
    target[names[-1]] = value


def _set_field(message: Message, fields: Sequence[FieldDescriptor], value: str, name: str) -> None:
    for fd in fields[:-1]:
        message = getattr(message, fd.name)
    last = fields[-1]
    try:
        if last.type == FieldDescriptor.TYPE_STRING:
            setattr(message, last.name, value)
        else:
            json_format.ParseDict({last.json_name: value}, message)
    except (json_format.ParseError, ValueError) as exc:
        raise invalid_argument(f"bad value for {name}", [(name, str(exc))]) from exc


def _parse_json(body: bytes) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        return json.loads(body, parse_constant=reject)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise invalid_argument(f"malformed JSON body: {exc}") from exc


def _add_query(descriptor: Descriptor, query: Sequence[tuple[str, str]], document: dict[str, Any]) -> None:
    """Adds query parameters, by proto or JSON field path, to the JSON document of a request."""
    repeated: dict[str, list[Any]] = {}
    for name, raw in query:
        fields = resolve_field_path(descriptor, name)
        if fields is None:
            raise invalid_argument(f"unknown query parameter {name!r}", [(name, "no such field")])
        last = fields[-1]
        if last.message_type is not None and last.message_type.full_name not in _STRING_JSON_TYPES:
            message = f"query parameter {name!r} must name a scalar field"
            raise invalid_argument(message, [(name, "not a scalar")])
        value = _query_value(last, raw, name)
        if is_repeated(last):
            repeated.setdefault(name, []).append(value)
        else:
            _set_path(document, name.split("."), value)
    for name, values in repeated.items():
        _set_path(document, name.split("."), values)


def build_request(
    route: Route,
    path_vars: dict[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    *,
    last_event_id: str | None = None,
    idempotency_key: str | None = None,
) -> Message:
    """The gRPC request for an HTTP request; raises GatewayError(400) for any client mistake."""
    descriptor = route.method.input_type
    document: dict[str, Any] = {}
    if route.body and body.strip():
        parsed = _parse_json(body)
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise invalid_argument("the JSON body must be an object")
            document = parsed
        else:
            document = {route.body: parsed}
    _add_query(descriptor, query, document)

    request = route.request_class()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise invalid_argument(f"invalid request: {exc}") from exc

    # Path variables win over the body: the URL names the resource.
    for field_path, value in path_vars.items():
        fields = resolve_field_path(descriptor, field_path)
        assert fields is not None  # checked by build_routes
        _set_field(request, fields, value, field_path)

    if last_event_id is not None and "resume_after" in descriptor.fields_by_name:
        resume_after = descriptor.fields_by_name["resume_after"]
        _set_field(request, [resume_after], last_event_id.strip(), "Last-Event-ID")
    # AIP-155: an Idempotency-Key header fills the request_id of requests that have one,
    # unless the body already names one.
    request_id_field = descriptor.fields_by_name.get("request_id")
    if idempotency_key and request_id_field is not None and not getattr(request, request_id_field.name):
        _set_field(request, [request_id_field], idempotency_key.strip(), "Idempotency-Key")
    return request


def message_to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping (lowerCamelCase names)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=False)

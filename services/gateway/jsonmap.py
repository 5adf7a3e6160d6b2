"""HTTP requests (path variables, query, JSON body, headers) to gRPC request messages, and
replies to JSON, by the proto3 JSON mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.gateway.errors import GatewayError, invalid_argument
from services.gateway.fields import is_repeated, resolve_field_path
from services.gateway.routes import Route

# No request of the suite nests a tenth as deep; a deeper document is a mistake or an attack,
# refused before protobuf's parser (or Python's) recurses through it.
MAX_JSON_DEPTH = 32

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
            raise invalid_argument(
                f"query parameter {name!r} must be true or false", [(name, "must be true or false")]
            )
        return raw == "true"
    # Strings are valid proto3 JSON for every other scalar, enum and the string-shaped
    # well-known types, so ParseDict does the conversion and the checking.
    return raw


def _set_path(target: dict[str, Any], names: Sequence[str], value: Any) -> None:
    for name in names[:-1]:
        nested = target.setdefault(name, {})
        if not isinstance(nested, dict):
            raise invalid_argument(f"field {name!r} must be an object", [(name, "must be a JSON object")])
        target = nested
    target[names[-1]] = value


_F = FieldDescriptor
_INT_RANGES = {
    _F.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    _F.CPPTYPE_UINT32: (0, 2**32 - 1),
    _F.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    _F.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_WELL_KNOWN_FORMS = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp such as 2025-01-31T12:00:00Z",
    "google.protobuf.Duration": "a duration in seconds such as 1.5s",
    "google.protobuf.FieldMask": "a comma-separated list of field paths",
}


def expected_form(fd: FieldDescriptor) -> str:
    """What a JSON value of the field must look like, in words for a client (no internal type names)."""
    if fd.message_type is not None:
        full_name = fd.message_type.full_name
        if full_name in _WELL_KNOWN_FORMS:
            return _WELL_KNOWN_FORMS[full_name]
        wrapped = fd.message_type.fields_by_name.get("value")
        if full_name.startswith("google.protobuf.") and full_name.endswith("Value") and wrapped is not None:
            return expected_form(wrapped)
        return "an object"
    if fd.enum_type is not None:
        names = ", ".join(value.name for value in fd.enum_type.values)
        return f"one of {names}"
    if fd.cpp_type in _INT_RANGES:
        low, high = _INT_RANGES[fd.cpp_type]
        return f"a whole number from {low} to {high}"
    if fd.cpp_type in (_F.CPPTYPE_DOUBLE, _F.CPPTYPE_FLOAT):
        return "a number"
    if fd.cpp_type == _F.CPPTYPE_BOOL:
        return "true or false"
    if fd.type == _F.TYPE_BYTES:
        return "base64-encoded bytes"
    return "a string"


def _refuse_value(path: str, fd: FieldDescriptor) -> GatewayError:
    description = f"must be {expected_form(fd)}"
    return invalid_argument(f"{path}: {description}", [(path, description)])


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
        raise _refuse_value(name, last) from exc


def _parse_json(body: bytes, field: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        return json.loads(body, parse_constant=reject)
    except RecursionError:
        description = f"is nested more than {MAX_JSON_DEPTH} levels deep"
        raise invalid_argument(f"the JSON body {description}", [(field, description)]) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        description = f"is not valid JSON: {exc}"
        raise invalid_argument(f"malformed JSON body: {exc}", [(field, description)]) from None


def _too_deep(document: Any) -> str | None:
    """The JSON path of the first value nested deeper than MAX_JSON_DEPTH, or None. Iterative,
    so it cannot itself run out of stack."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend(
                (item, f"{path}.{key}" if path else str(key), depth + 1) for key, item in value.items()
            )
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))
    return None


def _find_field(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    return next((f for f in descriptor.fields if key in (f.json_name, f.name)), None)


def _plain_message(fd: FieldDescriptor) -> Descriptor | None:
    """The message type of a field whose JSON is an object of its fields; None for scalars,
    enums and the well-known types, which have JSON forms of their own."""
    message = fd.message_type
    if message is None or message.full_name.startswith("google.protobuf."):
        return None
    return message


def _plainly_valid(fd: FieldDescriptor, value: Any) -> bool:
    """The common cases, decided without protobuf's (slower) parser: a string for a string
    field, a bool for a bool, a known name for an enum, an in-range int for an integer."""
    if fd.type == _F.TYPE_STRING:
        return isinstance(value, str)
    if fd.type == _F.TYPE_BOOL:
        return isinstance(value, bool)
    if fd.enum_type is not None:
        return isinstance(value, str) and value in fd.enum_type.values_by_name
    if fd.cpp_type in _INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = _INT_RANGES[fd.cpp_type]
        return low <= value <= high
    return False


def _check_leaf(descriptor: Descriptor, fd: FieldDescriptor, value: Any, path: str) -> None:
    """Lets protobuf's own JSON parser judge one scalar, enum or well-known value, on a scratch
    message, so its message (which names internal types) never reaches the client."""
    plain = value[0] if is_repeated(fd) and isinstance(value, list) and len(value) == 1 else value
    if fd.message_type is None and _plainly_valid(fd, plain):
        return
    scratch = message_factory.GetMessageClass(descriptor)()
    try:
        json_format.ParseDict({fd.json_name: value}, scratch)
    except (json_format.ParseError, TypeError, ValueError):
        raise _refuse_value(path, fd) from None


def _refuse_shape(path: str, shape: str) -> GatewayError:
    return invalid_argument(f"{path}: must be a JSON {shape}", [(path, f"must be a JSON {shape}")])


def _check_document(descriptor: Descriptor, document: Any, path: str = "") -> None:
    """Checks a request's JSON against its message, field by field, and refuses the first
    mistake with a violation naming its JSON path (registration.evidence[0].issuedOn)."""
    if not isinstance(document, dict):
        raise _refuse_shape(path, "object")
    for key, value in document.items():
        fd = _find_field(descriptor, key)
        if fd is None:
            here = f"{path}.{key}" if path else key
            raise invalid_argument(f"{here}: no such field", [(here, "no such field")])
        if value is not None:  # proto3 JSON: null is the field's default
            _check_value(descriptor, fd, value, f"{path}.{fd.json_name}" if path else fd.json_name)


def _check_value(descriptor: Descriptor, fd: FieldDescriptor, value: Any, path: str) -> None:
    entry = fd.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise _refuse_shape(path, "object")
        value_type = _plain_message(entry.fields_by_name["value"])
        if value_type is None:
            _check_leaf(descriptor, fd, value, path)
            return
        for map_key, item in value.items():
            _check_document(value_type, item, f"{path}[{map_key!r}]")
    elif is_repeated(fd):
        if not isinstance(value, list):
            raise _refuse_shape(path, "array")
        item_type = _plain_message(fd)
        for index, item in enumerate(value):
            if item_type is not None:
                _check_document(item_type, item, f"{path}[{index}]")
            else:
                _check_leaf(descriptor, fd, [item], f"{path}[{index}]")
    elif (message_type := _plain_message(fd)) is not None:
        _check_document(message_type, value, path)
    else:
        _check_leaf(descriptor, fd, value, path)


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
            raise invalid_argument(message, [(name, "must name a field that holds a single value")])
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
        body_field = descriptor.fields_by_name[route.body].json_name if route.body != "*" else ""
        parsed = _parse_json(body, body_field)
        too_deep = _too_deep(parsed)
        if too_deep is not None:
            where = ".".join(part for part in (body_field, too_deep) if part)
            description = f"is nested more than {MAX_JSON_DEPTH} levels deep"
            raise invalid_argument(f"the JSON body {description}", [(where, description)])
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise invalid_argument("the JSON body must be an object", [("", "must be a JSON object")])
            document = parsed
        else:
            document = {route.body: parsed}
    _add_query(descriptor, query, document)
    _check_document(descriptor, document)

    request = route.request_class()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError):
        # _check_document found nothing wrong, so this is a case it does not foresee.
        raise invalid_argument("the request does not match its message") from None

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
    """The proto3 JSON mapping (lowerCamelCase names), printing fields at their default values
    (an empty list as [], a zero as 0, false as false) as grpc-gateway's EmitUnpopulated does,
    so clients need not know proto3's defaults. Unset message fields stay absent."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=False, always_print_fields_with_no_presence=True
    )

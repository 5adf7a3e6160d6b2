"""HTTP/JSON to gRPC transcoding, derived from the protos' google.api.http annotations at run time."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import kasvu
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "GatewayError",
    "PathTemplate",
    "Route",
    "build_request",
    "build_routes",
    "error_body",
    "grpc_error",
    "http_status_for",
    "load_comments",
    "match_route",
    "message_to_json",
]

DESCRIPTOR_SET = Path(kasvu.__file__).parent / "descriptors.binpb"

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


# ---------------------------------------------------------------------------
# Path templates (google/api/http.proto grammar)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """A template variable: a request field path bound to one or more path segments."""

    field_path: str
    segments: tuple[str, ...]


Segment = str | Variable


def _split_top(text: str, sep: str) -> list[str]:
    """Splits at `sep` outside braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _singular(collection: str) -> str:
    if collection.endswith(("ches", "shes", "sses", "xes")):
        return collection[:-2]
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith("s") and len(collection) > 1:
        return collection[:-1]
    return collection + "Id"


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template such as `/v1/{parent=regions/*}/alerts:stream`."""

    template: str
    segments: tuple[Segment, ...]
    verb: str | None
    regex: re.Pattern[str]
    group_fields: tuple[str, ...]
    """Field path of each regex group, in group order (groups are named v0, v1, ...)."""

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        if not template.startswith("/"):
            raise ValueError(f"path template must start with '/': {template!r}")
        rest = template[1:]
        verb: str | None = None
        last = _split_top(rest, "/")[-1]
        colon_parts = _split_top(last, ":")
        if len(colon_parts) == 2:
            verb = colon_parts[1]
            rest = rest[: len(rest) - len(verb) - 1]
        elif len(colon_parts) > 2:
            raise ValueError(f"more than one custom verb in {template!r}")
        segments: list[Segment] = []
        for part in _split_top(rest, "/"):
            if part.startswith("{"):
                if not part.endswith("}"):
                    raise ValueError(f"unbalanced braces in {template!r}")
                field_path, _, sub = part[1:-1].partition("=")
                if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field_path):
                    raise ValueError(f"bad field path {field_path!r} in {template!r}")
                segments.append(Variable(field_path, tuple((sub or "*").split("/"))))
            elif not part or "{" in part or "}" in part:
                raise ValueError(f"bad segment {part!r} in {template!r}")
            else:
                segments.append(part)
        regex, fields = cls._compile(segments, verb)
        return cls(template, tuple(segments), verb, regex, fields)

    @staticmethod
    def _compile(segments: Iterable[Segment], verb: str | None) -> tuple[re.Pattern[str], tuple[str, ...]]:
        def plain(seg: str) -> str:
            # A `*` is exactly one segment; `**` the rest of the path.
            return {"*": "[^/]+", "**": ".+"}.get(seg, re.escape(seg))

        fields: list[str] = []
        parts: list[str] = []
        for seg in segments:
            if isinstance(seg, Variable):
                parts.append(f"(?P<v{len(fields)}>{'/'.join(plain(s) for s in seg.segments)})")
                fields.append(seg.field_path)
            else:
                parts.append(plain(seg))
        pattern = "/" + "/".join(parts) + (":" + re.escape(verb) if verb else "")
        return re.compile(pattern), tuple(fields)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Field path -> percent-decoded value, or None when the path does not match."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        return {f: unquote(found.group(f"v{i}")) for i, f in enumerate(self.group_fields)}

    def openapi_path(self) -> tuple[str, list[tuple[str, str]]]:
        """An OpenAPI path with one parameter per `*` segment, and (parameter, field path) pairs.

        `{name=regions/*/services/*}` becomes `regions/{region}/services/{service}`: each
        parameter is named after the collection before it, singularised, so the
        document stays valid OpenAPI (parameters cannot hold '/') and reads as the
        resource name it builds. A `**` becomes one parameter named after its field.
        """
        params: list[tuple[str, str]] = []
        used: set[str] = set()

        def param(base: str, field_path: str) -> str:
            name, n = base, 2
            while name in used:
                name, n = f"{base}{n}", n + 1
            used.add(name)
            params.append((name, field_path))
            return "{" + name + "}"

        out: list[str] = []
        for seg in self.segments:
            subs = seg.segments if isinstance(seg, Variable) else (seg,)
            field_path = seg.field_path if isinstance(seg, Variable) else ""
            for i, sub in enumerate(subs):
                if sub == "*":
                    before = subs[i - 1] if i > 0 else (out[-1] if out else "")
                    literal = before not in ("*", "**") and not before.startswith("{")
                    fallback = field_path.replace(".", "_") or "segment"
                    base = _singular(before) if before and literal else fallback
                    out.append(param(base, field_path))
                elif sub == "**":
                    out.append(param(field_path.replace(".", "_") or "path", field_path))
                else:
                    out.append(sub)
        return "/" + "/".join(out) + (":" + self.verb if self.verb else ""), params


# ---------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: PathTemplate
    method: MethodDescriptor
    body: str
    request_class: type[Message]
    response_class: type[Message]

    @property
    def service(self) -> str:
        return self.method.containing_service.full_name

    @property
    def rpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def full_name(self) -> str:
        return self.method.full_name


def _bindings(rule: Any) -> Iterable[Any]:
    yield rule
    yield from rule.additional_bindings


def build_routes(services: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None) -> list[Route]:
    """Routes for every annotated method of the named services.

    Routes with a custom verb come first so `/v1/{name=x/*}` cannot swallow `x/1:verb`.
    """
    pool = pool or descriptor_pool.Default()
    routes: list[Route] = []
    for service_name in services:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            if method.client_streaming:
                continue  # HTTP/JSON has no client streaming.
            if not method.GetOptions().HasExtension(annotations_pb2.http):
                continue
            for rule in _bindings(method.GetOptions().Extensions[annotations_pb2.http]):
                kind = rule.WhichOneof("pattern")
                if kind is None:
                    continue
                custom = kind == "custom"
                verb, path = (rule.custom.kind, rule.custom.path) if custom else (kind, getattr(rule, kind))
                if rule.response_body:
                    raise ValueError(f"{method.full_name}: response_body is not supported")
                if rule.body not in ("", "*") and rule.body not in method.input_type.fields_by_name:
                    raise ValueError(f"{method.full_name}: body field {rule.body!r} does not exist")
                template = PathTemplate.parse(path)
                for field_path in template.group_fields:
                    fields = _resolve(method.input_type, field_path)
                    if fields is None or fields[-1].message_type is not None or _is_repeated(fields[-1]):
                        raise ValueError(f"{method.full_name}: {field_path!r} is not a singular scalar field")
                routes.append(
                    Route(
                        http_method=verb.upper(),
                        template=template,
                        method=method,
                        body=rule.body,
                        request_class=message_factory.GetMessageClass(method.input_type),
                        response_class=message_factory.GetMessageClass(method.output_type),
                    )
                )
    routes.sort(key=lambda r: r.template.verb is None)
    return routes


def match_route(routes: Sequence[Route], http_method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request, or a 404/405 GatewayError."""
    allowed: list[str] = []
    for route in routes:
        variables = route.template.match(raw_path)
        if variables is None:
            continue
        if route.http_method == http_method:
            return route, variables
        allowed.append(route.http_method)
    if allowed:
        allow = ", ".join(sorted(set(allowed)))
        message = f"method {http_method} not allowed here"
        raise GatewayError(405, "UNIMPLEMENTED", message, headers={"Allow": allow})
    raise GatewayError(404, "NOT_FOUND", "no such route")


# ---------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------


def _resolve(descriptor: Descriptor, dotted: str) -> list[FieldDescriptor] | None:
    """The fields along a dotted path, accepting proto or JSON names; None if there is no such path."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in dotted.split("."):
        if current is None:
            return None
        found = current.fields_by_name.get(name) or next(
            (f for f in current.fields if f.json_name == name), None
        )
        if found is None:
            return None
        fields.append(found)
        current = found.message_type
    return fields


def _is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


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
        fields = _resolve(descriptor, name)
        if fields is None:
            raise invalid_argument(f"unknown query parameter {name!r}", [(name, "no such field")])
        last = fields[-1]
        if last.message_type is not None and last.message_type.full_name not in _STRING_JSON_TYPES:
            message = f"query parameter {name!r} must name a scalar field"
            raise invalid_argument(message, [(name, "not a scalar")])
        value = _query_value(last, raw, name)
        if _is_repeated(last):
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
        fields = _resolve(descriptor, field_path)
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


# ---------------------------------------------------------------------------
# Proto comments, for OpenAPI descriptions
# ---------------------------------------------------------------------------

# Field numbers in descriptor.proto used in SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


def load_comments(path: Path = DESCRIPTOR_SET) -> dict[str, str]:
    """Full name of every message, field, enum, value, service and method -> its leading comment."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    comments: dict[str, str] = {}
    for file in files:
        by_path = {
            tuple(loc.path): loc.leading_comments.strip()
            for loc in file.source_code_info.location
            if loc.leading_comments.strip()
        }
        prefix = file.package + "." if file.package else ""

        def note(name: str, loc: tuple[int, ...], by_path: dict[tuple[int, ...], str] = by_path) -> None:
            if loc in by_path:
                comments[name] = " ".join(line.strip() for line in by_path[loc].splitlines())

        def walk_enum(enum: Any, name: str, loc: tuple[int, ...]) -> None:
            note(name, loc)
            for i, value in enumerate(enum.value):
                note(f"{name}.{value.name}", (*loc, _ENUM_VALUE, i))

        def walk_message(msg: Any, name: str, loc: tuple[int, ...]) -> None:
            note(name, loc)
            for i, fd in enumerate(msg.field):
                note(f"{name}.{fd.name}", (*loc, _MESSAGE_FIELD, i))
            for i, nested in enumerate(msg.nested_type):
                walk_message(nested, f"{name}.{nested.name}", (*loc, _MESSAGE_NESTED, i))
            for i, enum in enumerate(msg.enum_type):
                walk_enum(enum, f"{name}.{enum.name}", (*loc, _MESSAGE_ENUM, i))

        for i, msg in enumerate(file.message_type):
            walk_message(msg, prefix + msg.name, (_FILE_MESSAGE, i))
        for i, enum in enumerate(file.enum_type):
            walk_enum(enum, prefix + enum.name, (_FILE_ENUM, i))
        for i, service in enumerate(file.service):
            note(prefix + service.name, (_FILE_SERVICE, i))
            for j, method in enumerate(service.method):
                note(f"{prefix}{service.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j))
    return comments

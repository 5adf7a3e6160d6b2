"""OpenAPI 3.1 document generated from the same routes and descriptors the gateway serves."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from services.gateway.paths import PathTemplate, Variable
from services.gateway.routes import Route
from services.gateway.sse import event_type
from services.runtime import catalog
from services.runtime.domain import ResourcePattern, segment_rule

_F = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    _F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    # proto3 JSON writes 64-bit integers as strings: JavaScript numbers cannot hold them.
    _F.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _F.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "null"]},
    "google.protobuf.UInt64Value": {"type": ["string", "null"]},
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Google's JSON error shape (google.rpc.Status).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The google.rpc.Code name."},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "google.rpc error details such as BadRequest, each with its @type.",
                    "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
                },
            },
        }
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    """Collects component schemas for the messages and enums reachable from the routes."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def _describe(self, schema: dict[str, Any], full_name: str) -> dict[str, Any]:
        if full_name in self.comments:
            schema["description"] = self.comments[full_name]
        return schema

    def enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name not in self.components:
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.values]}
            values = [
                f"{v.name}: {self.comments[f'{enum.full_name}.{v.name}']}"
                for v in enum.values
                if f"{enum.full_name}.{v.name}" in self.comments
            ]
            self._describe(schema, enum.full_name)
            if values:
                schema["description"] = "\n".join([schema.get("description", ""), *values]).strip()
            self.components[enum.full_name] = schema
        return _ref(enum.full_name)

    def message(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placeholder: recursion stops here
            properties: dict[str, Any] = {}
            required: list[str] = []
            for fd in message.fields:
                prop = self._describe(self.field(fd), fd.full_name)
                behaviors = fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]
                if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                    prop["readOnly"] = True
                if field_behavior_pb2.REQUIRED in behaviors:
                    required.append(fd.json_name)
                properties[fd.json_name] = prop
            schema: dict[str, Any] = {"type": "object", "properties": properties}
            if required:
                schema["required"] = required
            self.components[message.full_name] = self._describe(schema, message.full_name)
        return _ref(message.full_name)

    def singular(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.message_type is not None:
            return self.message(fd.message_type)
        if fd.enum_type is not None:
            return self.enum(fd.enum_type)
        return dict(_SCALARS[fd.type])

    def field(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value = self.singular(fd.message_type.fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        if fd.is_repeated:
            return {"type": "array", "items": self.singular(fd)}
        return self.singular(fd)


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _segment_kinds(template: PathTemplate, patterns: dict[str, ResourcePattern]) -> list[str | None]:
    """The kind of each path parameter of `template` (in PathTemplate.openapi_path's order), from
    the resource name pattern its variable binds; None where no pattern says."""
    kinds: list[str | None] = []
    for segment in template.segments:
        subs = segment.segments if isinstance(segment, Variable) else (segment,)
        pattern = patterns.get("/".join(subs)) if isinstance(segment, Variable) else None
        variable_kinds = iter(pattern.variables.values()) if pattern is not None else iter(())
        kinds.extend(next(variable_kinds, None) for sub in subs if sub == "*")
        kinds.extend(None for sub in subs if sub == "**")
    return kinds


def _path_parameter(name: str, field_path: str, template: str, kind: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    description = f"Segment of `{field_path}` ({template})."
    if kind is not None:
        regex, rule = segment_rule(kind)
        schema["pattern"] = f"^{regex}$"
        description = f"Segment of `{field_path}` ({template}): {rule}."
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query_fields(route: Route) -> list[FieldDescriptor]:
    """Top-level fields a client may set as query parameters."""
    if route.body == "*":
        return []
    bound = {path.split(".")[0] for path in route.template.group_fields} | {route.body}
    return [
        fd
        for fd in route.method.input_type.fields
        if fd.name not in bound and (fd.message_type is None or fd.message_type.full_name in _WELL_KNOWN)
    ]


def build_openapi(
    routes: Sequence[Route],
    comments: dict[str, str],
    *,
    public_methods: Collection[str] | None = None,
    resource_names: Collection[str] | None = None,
    title: str = "Kasvu API",
    version: str = "v1",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`.

    Paths spell every `*` of a template as its own parameter (see PathTemplate.openapi_path),
    with the pattern of its segment kind from `resource_names` (default: the catalog's).
    Operations in `public_methods` (default: the catalog's) need no bearer token.
    """
    if public_methods is None:
        public_methods = catalog.public_methods()
    if resource_names is None:
        resource_names = catalog.resource_names()
    patterns = {pattern.shape: pattern for pattern in map(ResourcePattern, resource_names)}
    schemas = _Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path, params = route.template.openapi_path()
        kinds = _segment_kinds(route.template, patterns)
        parameters: list[dict[str, Any]] = [
            _path_parameter(name, field_path, route.template.template, kind)
            for (name, field_path), kind in zip(params, kinds, strict=True)
        ]
        for fd in _query_fields(route):
            schema = schemas.field(fd)
            if fd.name == "page_size":
                schema = {**schema, "minimum": 0}  # AIP-158: negative sizes are refused
            behaviors = fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            required = field_behavior_pb2.REQUIRED in behaviors
            parameters.append(
                schemas._describe(
                    {"name": fd.json_name, "in": "query", "required": required, "schema": schema},
                    fd.full_name,
                )
            )
        output = route.method.output_type
        if route.server_streaming:
            if "resume_after" in route.method.input_type.fields_by_name:
                parameters.append(
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Sets resume_after: the stream resumes after this event id.",
                    }
                )
            item = event_type(output)
            ok = {
                "description": f"Server-Sent Events; each event's data is a JSON {item.name}, "
                "its id the item's sequence; `: keepalive` comments every 15 s.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-data": schemas.message(item),
                    }
                },
            }
        else:
            ok = {"description": output.name, "content": _json_content(schemas.message(output))}
        operation: dict[str, Any] = {
            "operationId": f"{route.method.containing_service.name}_{route.method.name}",
            "tags": [route.method.containing_service.name],
            "summary": route.method.name,
            "parameters": parameters,
            "responses": {
                "200": ok,
                "4XX": {"$ref": "#/components/responses/Error"},
                "5XX": {"$ref": "#/components/responses/Error"},
            },
        }
        if route.full_name in comments:
            operation["description"] = comments[route.full_name]
        if route.body:
            body_schema = (
                schemas.message(route.method.input_type)
                if route.body == "*"
                else schemas.field(route.method.input_type.fields_by_name[route.body])
            )
            operation["requestBody"] = {"required": True, "content": _json_content(body_schema)}
        if route.full_name in public_methods:
            operation["security"] = []
        paths.setdefault(path, {})[route.http_method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "tags": [
            {"name": name.rsplit(".", 1)[-1], "description": comments.get(name, "")}
            for name in dict.fromkeys(route.service for route in routes)
        ],
        "paths": paths,
        "security": [{"bearerAuth": []}],
        "components": {
            "schemas": schemas.components,
            "responses": {
                "Error": {
                    "description": "An error in Google's JSON error shape.",
                    "content": _json_content(_ref("Error")),
                }
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }

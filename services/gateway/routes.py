"""Routes: one per google.api.http binding of the served RPCs, and the route of a request."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from services.gateway.errors import GatewayError
from services.gateway.fields import is_repeated, resolve_field_path
from services.gateway.paths import PathTemplate


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
                    fields = resolve_field_path(method.input_type, field_path)
                    if fields is None or fields[-1].message_type is not None or is_repeated(fields[-1]):
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
        message = f"method {http_method} is not allowed on this path; allowed: {allow}"
        # google.rpc.Code has no "method not allowed"; the mistake is the client's request, not a
        # missing implementation (UNIMPLEMENTED, which HTTP spells 501), so INVALID_ARGUMENT.
        raise GatewayError(405, "INVALID_ARGUMENT", message, headers={"Allow": allow})
    raise GatewayError(404, "NOT_FOUND", "no such route")

"""Unit tests of path templates, request building and the OpenAPI document."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import re
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pool
from kasvu.registry.v1 import registry_pb2
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2

from services.gateway.comments import load_comments
from services.gateway.errors import GatewayError
from services.gateway.jsonmap import build_request
from services.gateway.openapi import build_openapi
from services.gateway.paths import PathTemplate
from services.gateway.routes import Route, build_routes, match_route
from services.runtime.catalog import grpc_services, load_protos


@pytest.fixture(scope="module")
def routes() -> list[Route]:
    # As the gateway does at start-up: the default pool holds only the protos imported so far.
    load_protos()
    return build_routes(grpc_services())


@pytest.fixture(scope="module")
def document(routes: list[Route]) -> dict[str, Any]:
    return build_openapi(routes, load_comments())


def route_for(routes: list[Route], name: str) -> Route:
    return next(r for r in routes if r.method.name == name)


def test_variable_with_sub_template_binds_the_whole_resource_name():
    template = PathTemplate.parse("/v1/{name=regions/*/services/*/terms/*}")
    assert template.match("/v1/regions/13/services/recruitment/terms/4") == {
        "name": "regions/13/services/recruitment/terms/4"
    }
    assert template.match("/v1/regions/13/services/recruitment/terms") is None
    assert template.match("/v1/regions/13/services/recruitment/terms/4/extra") is None


def test_star_matches_exactly_one_segment_and_double_star_several():
    assert PathTemplate.parse("/v1/{parent}/items").match("/v1/a/b/items") is None
    assert PathTemplate.parse("/v1/{parent}/items").match("/v1/a/items") == {"parent": "a"}
    assert PathTemplate.parse("/v1/{path=files/**}").match("/v1/files/a/b/c") == {"path": "files/a/b/c"}


def test_custom_verb_is_parsed_and_required():
    template = PathTemplate.parse("/v1/{parent=regions/*}/alerts:stream")
    assert template.verb == "stream"
    assert template.match("/v1/regions/13/alerts:stream") == {"parent": "regions/13"}
    assert template.match("/v1/regions/13/alerts") is None


def test_dotted_field_paths_and_percent_decoding():
    template = PathTemplate.parse("/v1/{indicator.name=regions/*/indicators/*}")
    assert template.group_fields == ("indicator.name",)
    assert template.match("/v1/regions/13/indicators/need%20assessment") == {
        "indicator.name": "regions/13/indicators/need assessment"
    }


@pytest.mark.parametrize("bad", ["v1/x", "/v1/{name", "/v1/{na-me}", "/v1//x", "/v1/x:a:b"])
def test_malformed_templates_are_refused(bad: str):
    with pytest.raises(ValueError):
        PathTemplate.parse(bad)


def test_openapi_path_spells_each_star_as_a_named_parameter():
    template = PathTemplate.parse("/v1/{name=regions/*/breaches/*}")
    assert template.openapi_path() == (
        "/v1/regions/{region}/breaches/{breach}",
        [("region", "name"), ("breach", "name")],
    )


def test_routes_cover_every_annotated_rpc(routes: list[Route]):
    pool = descriptor_pool.Default()
    annotated = {
        method.full_name
        for service in grpc_services()
        for method in pool.FindServiceByName(service).methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }
    assert {r.full_name for r in routes} == annotated
    assert len(annotated) == 50 + 29 + 16  # registry and self-monitoring, tendering, alliances


def test_match_route_distinguishes_404_and_405(routes: list[Route]):
    route, variables = match_route(routes, "GET", "/v1/regions/13/alerts:stream")
    assert route.method.name == "StreamAlerts"
    assert variables == {"parent": "regions/13"}
    with pytest.raises(GatewayError) as not_allowed:
        match_route(routes, "DELETE", "/v1/regions/13/indicators")
    assert not_allowed.value.http_status == 405
    assert not_allowed.value.headers == {"Allow": "GET, POST"}  # ListIndicators and CreateIndicator
    with pytest.raises(GatewayError) as missing:
        match_route(routes, "GET", "/v1/nowhere")
    assert missing.value.http_status == 404


def test_body_field_and_path_variable_fill_the_request(routes: list[Route]):
    route = route_for(routes, "PublishTerms")
    request = build_request(
        route,
        {"parent": "regions/13/services/recruitment"},
        [],
        b'{"title": "T", "requirements": '
        b'[{"code": "c", "kind": "REQUIREMENT_KIND_DOCUMENT", "maxAgeDays": 90}]}',
    )
    assert isinstance(request, registry_pb2.PublishTermsRequest)
    assert request.parent == "regions/13/services/recruitment"
    assert request.terms.title == "T"
    assert request.terms.requirements[0].kind == registry_pb2.REQUIREMENT_KIND_DOCUMENT
    assert request.terms.requirements[0].max_age_days == 90


def test_query_parameters_accept_camel_and_snake_case(routes: list[Route]):
    route = route_for(routes, "ListProviders")
    query = [("pageSize", "5"), ("page_token", "t")]
    request = build_request(route, {"parent": "regions/1/services/s"}, query, b"")
    assert isinstance(request, registry_pb2.ListProvidersRequest)
    assert (request.page_size, request.page_token) == (5, "t")


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ([("colour", "red")], b""),
        ([("pageSize", "many")], b""),
    ],
)
def test_bad_query_is_a_400(routes: list[Route], query, body):
    route = route_for(routes, "ListProviders")
    with pytest.raises(GatewayError) as error:
        build_request(route, {"parent": "regions/1/services/s"}, query, body)
    assert error.value.http_status == 400
    assert error.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"title": 5}', b'{"colour": "red"}', b"[1]", b'{"title": NaN}', b"\xff"],
)
def test_bad_bodies_are_a_400(routes: list[Route], body: bytes):
    route = route_for(routes, "PublishTerms")
    with pytest.raises(GatewayError) as error:
        build_request(route, {"parent": "regions/1/services/s"}, [], body)
    assert error.value.http_status == 400


def test_last_event_id_sets_resume_after_and_must_be_a_number(routes: list[Route]):
    route = route_for(routes, "StreamAlerts")
    request = build_request(route, {"parent": "regions/1"}, [("resumeAfter", "3")], b"", last_event_id="41")
    assert isinstance(request, selfmonitoring_pb2.StreamAlertsRequest)
    assert request.resume_after == 41
    with pytest.raises(GatewayError):
        build_request(route, {"parent": "regions/1"}, [], b"", last_event_id="forty")


def test_openapi_lists_every_route_and_nothing_else(routes: list[Route], document: dict[str, Any]):
    operations = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    assert len(operations) == len(routes)
    for verb, path in operations:
        # Filling the documented parameters must give a URL the gateway serves with that RPC.
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        route, _ = match_route(routes, verb, concrete)
        operation = document["paths"][path][verb.lower()]
        assert operation["operationId"] == f"{route.method.containing_service.name}_{route.method.name}"
        assert route.template.openapi_path()[0] == path
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"\{([^}]+)\}", path))


def test_openapi_security_exempts_only_the_catalogs_public_methods(document: dict[str, Any]):
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    exempt = [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if op.get("security") == []
    ]
    assert sorted(exempt) == [
        "AllianceService_GetMarketFailure",
        "RegistryService_ListMunicipalities",
        "RegistryService_ListOrganisers",
        "RegistryService_ListProviders",
        "RegistryService_ListServices",
        "SelfMonitoringService_GetAvailabilityReport",
        "SelfMonitoringService_GetProgramme",
        "SelfMonitoringService_ListProgrammes",
        "TenderingService_ExportOcds",
        "TenderingService_GetCall",
        "TenderingService_GetFramework",
        "TenderingService_ListCalls",
        "TenderingService_ListClarifications",
        "TenderingService_ListFrameworks",
    ]


def test_openapi_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]):
    schemas = document["components"]["schemas"]
    registration = schemas["kasvu.registry.v1.Registration"]
    assert registration["properties"]["publicKey"]["contentEncoding"] == "base64"
    assert registration["properties"]["createTime"]["format"] == "date-time"
    assert registration["properties"]["name"]["readOnly"] is True
    assert "businessId" in registration["required"]
    assert registration["description"].startswith("A provider's registration")
    assert schemas["kasvu.selfmonitoring.v1.Alert"]["properties"]["sequence"]["type"] == "string"
    assert "REGISTRATION_STATE_ADMITTED" in schemas["kasvu.registry.v1.RegistrationState"]["enum"]
    assert set(schemas["google.type.Date"]["properties"]) == {"year", "month", "day"}
    assert schemas["Error"]["properties"]["error"]["required"] == ["code", "status", "message"]


def test_openapi_documents_query_and_last_event_id(document: dict[str, Any]):
    providers = document["paths"]["/v1/regions/{region}/services/{service}/providers"]["get"]
    assert {p["name"] for p in providers["parameters"] if p["in"] == "query"} == {
        "pageSize",
        "pageToken",
        "municipality",
        "language",
    }
    alerts = document["paths"]["/v1/regions/{region}/alerts:stream"]["get"]
    assert "text/event-stream" in alerts["responses"]["200"]["content"]
    assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in alerts["parameters"])
    terms = document["paths"]["/v1/regions/{region}/services/{service}/terms"]["post"]
    assert terms["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/kasvu.registry.v1.Terms"
    }
    assert terms["description"].startswith("Publishes a new, immutable version")


def test_openapi_path_parameters_carry_the_pattern_of_their_segment_kind(document: dict[str, Any]):
    def pattern_of(path: str, name: str) -> str:
        parameters = document["paths"][path]["get"]["parameters"]
        pattern: str = next(p for p in parameters if p["name"] == name)["schema"]["pattern"]
        return pattern

    terms = "/v1/regions/{region}/services/{service}/terms/{term}"
    version = pattern_of(terms, "term")
    # What the services refuse (ResourcePattern's int kind), the document refuses too.
    assert re.fullmatch(version, "12") and not re.search(version, "01")
    assert not re.search(version, "\N{SUPERSCRIPT TWO}") and not re.search(version, "9" * 30)
    region = pattern_of(terms, "region")
    assert re.search(region, "pirkanmaa") and not re.search(region, "Pirkanmaa")
    registration = pattern_of(
        "/v1/regions/{region}/services/{service}/registrations/{registration}", "registration"
    )
    assert re.search(registration, "3f2a9c") and not re.search(registration, "a/b")
    assert pattern_of("/v1/regions/{region}/breaches/{breach}", "breach") == registration


def test_openapi_query_parameters_say_which_are_required_and_bounded(document: dict[str, Any]):
    create = document["paths"]["/v1/regions/{region}/indicators"]["post"]["parameters"]
    assert next(p for p in create if p["name"] == "indicatorId")["required"] is True
    providers = document["paths"]["/v1/regions/{region}/services/{service}/providers"]["get"]["parameters"]
    page_size = next(p for p in providers if p["name"] == "pageSize")
    assert (page_size["required"], page_size["schema"]["minimum"]) == (False, 0)


def test_openapi_documents_contact_details_as_a_provider_singleton_that_needs_sign_in(
    document: dict[str, Any],
):
    path = document["paths"]["/v1/providers/{provider}/contactDetails"]
    assert set(path) == {"get", "patch"}
    for operation in path.values():
        [provider] = [p for p in operation["parameters"] if p["in"] == "path"]
        assert provider["name"] == "provider"
        # The business ID kind of the catalog's providers/{business_id}/contactDetails.
        assert re.search(provider["schema"]["pattern"], "0737546-2")
        assert not re.search(provider["schema"]["pattern"], "737546-2")
        assert operation.get("security") != []  # not among the public methods
    patch = path["patch"]
    assert {p["name"] for p in patch["parameters"] if p["in"] == "query"} == {"updateMask", "requestId"}
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/kasvu.registry.v1.ContactDetails"
    }
    schema = document["components"]["schemas"]["kasvu.registry.v1.ContactDetails"]
    assert set(schema["properties"]) == {"name", "contactPerson", "email", "phone", "updateTime"}
    assert schema["required"] == ["contactPerson", "email", "phone"]
    assert schema["properties"]["updateTime"]["readOnly"] is True

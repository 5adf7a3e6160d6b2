"""The gateway fuzzed from its own OpenAPI document (schemathesis), against the real suite: for
requests that fit the document and requests that do not, with a token of each role and none,
no answer is a 5xx and every answer is one the document describes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from kasvuctl.localsuite import LocalSuite
from services.gateway.routes import build_routes
from services.runtime.auth import Role
from services.runtime.catalog import grpc_services, load_protos
from tests.e2e.flows import SERVICE, Api

pytestmark = pytest.mark.e2e

# Enough to pass every operation's validation and reach its handler many times, in about a
# minute on two cores; `derandomize` makes every run send the same requests.
MAX_EXAMPLES = 20
REGION = "pirkanmaa"
PROVIDER = "0737546-2"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # A request the document calls wrong must not succeed, nor one without the token it asks for.
    negative_data_rejection,
    ignored_auth,
]


def _operation_ids() -> list[str]:
    """Every operation but the event stream: a stream that is accepted never ends, so it has
    tests of its own (test_alert_streams.py)."""
    load_protos()
    routes = build_routes(grpc_services())
    return [
        f"{route.method.containing_service.name}_{route.method.name}"
        for route in routes
        if not route.server_streaming
    ]


@dataclass(frozen=True)
class Target:
    """The running gateway as the fuzzer sees it."""

    base_url: str
    document: OpenApiSchema
    """The OpenAPI document as the gateway serves it."""
    callers: list[dict[str, str]]
    """Headers of each role, for the region and provider requests are steered to, and none."""
    existing: dict[str, str]
    """Path parameter values that name existing resources."""

    def operation(self, operation_id: str) -> APIOperation[Any, Any, Any, Any]:
        return self.document.find_operation_by_id(operation_id)


async def _seed(suite: LocalSuite) -> dict[str, str]:
    """One of each resource in REGION (terms, an admitted provider, an indicator, a breach),
    so fuzzed requests that name them reach the services' answers, not only their refusals."""
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=15.0) as client:
        api = Api(suite, client)
        terms = await api.publish_terms(REGION)
        registered = await api.register(
            REGION, api.registration_body(terms, PROVIDER, Ed25519PrivateKey.generate()), PROVIDER
        )
        assert registered.status_code == 200, registered.text
        indicator = await api.create_indicator(REGION)
        breach = await api.breach_until_opened(REGION, indicator, PROVIDER)
    return {
        "region": REGION,
        "service": SERVICE,
        "term": str(terms["version"]),
        "registration": registered.json()["name"].rsplit("/", 1)[1],
        "indicator": indicator.rsplit("/", 1)[1],
        "breach": breach.rsplit("/", 1)[1],
    }


@pytest.fixture(scope="module")
def target(module_suite: LocalSuite) -> Target:
    principals = [(Role.REGION_ADMIN, REGION), (Role.SUPERVISOR, REGION), (Role.PROVIDER, PROVIDER)]
    tokens = [module_suite.token(role, organisation) for role, organisation in principals]
    return Target(
        base_url=module_suite.gateway_url,
        document=schemathesis.openapi.from_url(f"{module_suite.gateway_url}/openapi.json"),
        callers=[{"Authorization": f"Bearer {token}"} for token in tokens] + [{}],
        existing=asyncio.run(_seed(module_suite)),
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("operation_id", _operation_ids())
def test_no_fuzzed_request_gets_a_5xx_or_an_answer_the_document_does_not_describe(
    operation_id: str, mode: GenerationMode, target: Target
) -> None:
    operation = target.operation(operation_id)
    # Generated names seldom name anything: half the requests name existing resources of the
    # callers' region, so they also get past authorization and lookup to the services' answers.
    steered = {name: value for name, value in target.existing.items() if f"{{{name}}}" in operation.path}
    cases = st.one_of(operation.as_strategy(mode), operation.as_strategy(mode, path_parameters=steered))

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def answered_as_documented(case: Case[Any]) -> None:
        for headers in target.callers:
            case.call_and_validate(base_url=target.base_url, headers=headers, checks=CHECKS, timeout=15)

    answered_as_documented()


def test_the_fuzzed_document_is_the_one_the_gateway_serves(module_suite: LocalSuite) -> None:
    served = httpx.get(f"{module_suite.gateway_url}/openapi.json", timeout=10).json()
    fuzzed = {op["operationId"] for item in served["paths"].values() for op in item.values()}
    assert set(_operation_ids()) | {"SelfMonitoringService_StreamAlerts"} == fuzzed

"""Client mistakes and hostile input through the gateway and the real services: each gets a
clear 4xx in Google's JSON error shape that names the field (in the JSON's spelling), carries
the request id, and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kasvuctl.demo import EXAMPLE_TERMS
from kasvuctl.localsuite import LocalSuite
from services.registry.model import MAX_REQUIREMENTS
from services.runtime.auth import Role
from services.runtime.domain import business_id_check_digit
from services.runtime.names import next_page_token
from tests.e2e.flows import Api, as_date, today_in_finland

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(module_suite: LocalSuite) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=module_suite.gateway_url, timeout=15.0) as http:
        yield http


def auth(suite: LocalSuite, role: Role, organisation: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {suite.token(role, organisation)}"}


def terms_path(region: str) -> str:
    return f"/v1/regions/{region}/services/recruitment/terms"


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error of a JSON error answer, after checking it carries its request id twice: in the
    X-Request-Id header and in a google.rpc.RequestInfo detail."""
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == response.status_code
    request_id = response.headers["x-request-id"]
    assert {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id} in error[
        "details"
    ]
    return error


def fields_of(response: httpx.Response) -> list[str]:
    details = error_of(response)["details"]
    return [v["field"] for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]


async def assert_no_terms(client: httpx.AsyncClient, suite: LocalSuite, region: str) -> None:
    response = await client.get(f"{terms_path(region)}/1", headers=auth(suite, Role.REGION_ADMIN, region))
    assert response.status_code == 404, response.text


async def test_json_nested_a_thousand_deep_is_a_400_naming_the_body_with_the_request_id(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-nested"
    body = b'{"title": "x", "requirements": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    response = await client.post(
        terms_path(region),
        content=body,
        headers={**auth(module_suite, Role.REGION_ADMIN, region), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert error_of(response)["message"] == "the JSON body is nested more than 32 levels deep"
    assert fields_of(response)[0].startswith("terms")
    await assert_no_terms(client, module_suite, region)


async def test_an_overlong_path_is_414_and_an_overlong_segment_400_naming_the_field(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    headers = auth(module_suite, Role.REGION_ADMIN, "edge-long")
    long_path = await client.get(f"{terms_path('edge-long')}/{'1' * 5000}", headers=headers)
    assert long_path.status_code == 414
    assert "RESOURCE_EXHAUSTED" not in long_path.text and "metadata" not in long_path.text
    assert error_of(long_path)["status"] == "INVALID_ARGUMENT"

    long_segment = await client.get(f"{terms_path('edge-long')}/{'1' * 300}", headers=headers)
    assert long_segment.status_code == 400
    assert fields_of(long_segment) == ["name"]

    public = await client.get(f"/v1/regions/{'a' * 300}/services/recruitment/providers")
    assert public.status_code == 400
    assert fields_of(public) == ["parent"]


async def test_a_non_ascii_or_malformed_authorization_header_is_401(client: httpx.AsyncClient) -> None:
    for value in ("Bearer tökeni".encode(), b"Bearer not-a-jwt", b"Basic dXNlcjpwYXNz"):
        response = await client.get(f"{terms_path('edge-auth')}/1", headers={b"Authorization": value})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(response)["status"] == "UNAUTHENTICATED"


async def test_a_foreign_or_forged_page_token_for_list_breaches_is_400_naming_page_token(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-pages"
    headers = auth(module_suite, Role.SUPERVISOR, region)
    # What ListBreaches would bind to this query (its filters unset), so that only the position is wrong.
    bound = {"list": "selfmonitoring.ListBreaches", "state": "0", "severity": "0", "provider": ""}
    tokens = {
        "garbage": "garbage",
        "another query's": next_page_token({"parent": "regions/elsewhere"}, {"opened_at": "x", "id": "y"}),
        # The checksum tells damage from a token the service wrote, not forgery: the
        # position inside must be checked as any client input is.
        "forged position": next_page_token(
            {**bound, "parent": f"regions/{region}"}, {"opened_at": "nope", "id": "y"}
        ),
        "missing position": next_page_token({**bound, "parent": f"regions/{region}"}, {"id": "y"}),
    }
    for kind, token in tokens.items():
        response = await client.get(
            f"/v1/regions/{region}/breaches", params={"pageToken": token}, headers=headers
        )
        assert response.status_code == 400, (kind, response.text)
        assert fields_of(response) == ["pageToken"], kind
    anonymous = await client.get(f"/v1/regions/{region}/breaches", params={"pageToken": "garbage"})
    assert anonymous.status_code == 401


async def test_a_nul_character_in_any_text_is_refused_naming_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-nul"
    headers = auth(module_suite, Role.REGION_ADMIN, region)
    in_title = await client.post(
        terms_path(region), json=dict(EXAMPLE_TERMS, title="Rekry\u0000"), headers=headers
    )
    assert in_title.status_code == 400
    assert fields_of(in_title) == ["terms.title"]
    requirements = [dict(EXAMPLE_TERMS["requirements"][0], code="a\u0000b")]  # type: ignore[index]
    in_list = await client.post(
        terms_path(region), json=dict(EXAMPLE_TERMS, requirements=requirements), headers=headers
    )
    assert in_list.status_code == 400
    assert fields_of(in_list) == ["terms.requirements[0].code"]
    in_query = await client.post(
        f"/v1/regions/{region}/indicators", params={"indicatorId": "x\u0000"}, json={}, headers=headers
    )
    assert in_query.status_code == 400
    assert fields_of(in_query) == ["indicatorId"]
    await assert_no_terms(client, module_suite, region)


async def test_an_anonymous_bad_body_is_401_not_400(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-anonymous"
    for body in (b"{not json", b'{"title": 5}', b'{"colour": "red"}'):
        response = await client.post(
            terms_path(region), content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401, response.text
        assert error_of(response)["status"] == "UNAUTHENTICATED"
    await assert_no_terms(client, module_suite, region)


async def test_error_field_paths_are_in_the_json_spelling(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-paths"
    headers = auth(module_suite, Role.REGION_ADMIN, region)
    requirements = [dict(EXAMPLE_TERMS["requirements"][1], maxAgeDays=100_000)]  # type: ignore[index]
    response = await client.post(
        terms_path(region), json=dict(EXAMPLE_TERMS, requirements=requirements), headers=headers
    )
    assert response.status_code == 400
    assert fields_of(response) == ["terms.requirements[0].maxAgeDays"]
    assert "terms.requirements[0].maxAgeDays:" in error_of(response)["message"]

    await assert_no_terms(client, module_suite, region)

    api = Api(module_suite, client)
    terms = await api.publish_terms("edge-paths-registry")
    wrong_check_digit = "0737546-3"
    body = api.registration_body(terms, wrong_check_digit, Ed25519PrivateKey.generate())
    # Signed in as the provider the ID was meant to be: tokens exist only for valid IDs.
    response = await api.register("edge-paths-registry", body, "0737546-2")
    assert response.status_code == 400
    assert fields_of(response) == ["registration.businessId"]
    assert await api.listed("edge-paths-registry") == []


async def test_json_type_mistakes_name_the_field_in_plain_words(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-types"
    headers = auth(module_suite, Role.REGION_ADMIN, region)
    cases = {
        "terms.title": ({"title": 5}, "must be a string"),
        "terms.requirements[0].kind": (
            {"title": "t", "requirements": [{"kind": "SOMETIMES"}]},
            "must be one of",
        ),
        "terms.requirements": ({"title": "t", "requirements": "all of them"}, "must be a JSON array"),
        "terms.colour": ({"title": "t", "colour": "red"}, "no such field"),
    }
    for field_path, (body, description) in cases.items():
        response = await client.post(terms_path(region), json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert fields_of(response) == [field_path]
        assert description in response.text
        # Nothing from protobuf's internals: message type names, Python types, parser messages.
        for internal in ("kasvu.", "'int'", "Failed to parse", "Message type"):
            assert internal not in response.text, response.text
    malformed = await client.post(
        terms_path(region), content=b'{"title": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert fields_of(malformed) == ["terms"]
    await assert_no_terms(client, module_suite, region)


async def test_a_wrong_method_is_405_with_allow_and_a_google_rpc_code(client: httpx.AsyncClient) -> None:
    response = await client.delete(f"{terms_path('edge-method')}/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    error = error_of(response)
    assert error["status"] == "INVALID_ARGUMENT"
    assert "DELETE" in error["message"]


async def test_answers_print_fields_at_their_default_values(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    empty = await client.get("/v1/regions/edge-defaults/services/recruitment/providers")
    assert empty.status_code == 200
    assert empty.json() == {"providers": [], "nextPageToken": ""}

    region = "edge-defaults"
    headers = auth(module_suite, Role.REGION_ADMIN, region)
    indicator = {
        "displayName": "Assessment within 14 days",
        "service": "recruitment",
        "shareWithinDeadline": {"deadlineDays": 14, "minimumShare": 0.8},
        "windowDays": 90,
        "minimumSample": 50,
        "severity": "SEVERITY_WARNING",
    }
    created = await client.post(
        f"/v1/regions/{region}/indicators",
        params={"indicatorId": "assessment"},
        json=indicator,
        headers=headers,
    )
    assert created.status_code == 200, created.text
    late = {
        "observationId": "obs-1",
        "provider": "0737546-2",
        "caseKey": "case-1",
        "startedOn": as_date(today_in_finland() - timedelta(days=30)),
        "completedOn": as_date(today_in_finland()),
    }
    observations = f"/v1/regions/{region}/indicators/assessment/observations"
    first = await client.post(observations, json=late, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"recorded": True, "value": 0, "sampleSize": 1, "breach": ""}
    again = await client.post(observations, json=late, headers=headers)
    assert again.json()["recorded"] is False


async def test_every_answer_carries_the_request_id(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    headers = auth(module_suite, Role.REGION_ADMIN, "edge-ids")
    answers = [
        await client.get("/v1/no/such/route"),
        await client.put(terms_path("edge-ids"), headers=headers),
        await client.post(terms_path("edge-ids"), content=b"x" * (2 << 20), headers=headers),
        await client.get(f"{terms_path('edge-ids')}/{'1' * 3000}", headers=headers),
        await client.post(terms_path("edge-ids"), content=b"[", headers=headers),
        await client.get(f"{terms_path('edge-ids')}/1"),
        await client.get(f"{terms_path('edge-ids')}/1", headers=headers),
    ]
    assert [answer.status_code for answer in answers] == [404, 405, 413, 414, 400, 401, 404]
    for answer in answers:
        error_of(answer)
    kept = await client.get(f"{terms_path('edge-ids')}/1", headers={**headers, "X-Request-Id": "mine-42"})
    assert kept.headers["x-request-id"] == "mine-42"
    assert error_of(kept)["details"][-1]["requestId"] == "mine-42"
    ok = await client.get("/v1/regions/edge-ids/services/recruitment/providers")
    assert ok.status_code == 200 and ok.headers["x-request-id"]


async def test_calls_refused_by_a_stopping_service_are_503_with_retry_after(sqlite_suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=15.0) as client:
        path = "/v1/regions/edge-stop/services/recruitment/providers"
        assert (await client.get(path)).status_code == 200
        stopping = asyncio.create_task(asyncio.to_thread(sqlite_suite.stop_process, "registry"))
        answers: list[httpx.Response] = []
        while not stopping.done() or not answers:
            answers.append(await client.get(path))
        assert await stopping == 0
        answers.append(await client.get(path))  # the registry is gone now
    refused = [answer for answer in answers if answer.status_code != 200]
    assert refused, "no call was refused"
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        error = error_of(answer)
        assert error["status"] == "UNAVAILABLE"
        assert "127.0.0.1" not in error["message"]


def valid_business_id(body: str) -> str:
    check = business_id_check_digit(body)
    assert check is not None
    return f"{body}-{check}"


@pytest.mark.parametrize(
    "segment",
    [
        "%C2%B2",  # a superscript two, which int() would take for 2
        "9" * 23,  # past every integer column
        "%EF%BC%91",  # a fullwidth one, which int() would take for 1
        "01",  # not the canonical spelling of terms/1
    ],
)
async def test_a_terms_version_that_is_not_a_plain_number_is_400_naming_the_name(
    client: httpx.AsyncClient, module_suite: LocalSuite, segment: str
) -> None:
    region = "edge-version"
    headers = auth(module_suite, Role.REGION_ADMIN, region)
    published = await client.post(terms_path(region), json=EXAMPLE_TERMS, headers=headers)
    assert published.status_code == 200, published.text
    response = await client.get(f"{terms_path(region)}/{segment}", headers=headers)
    assert response.status_code == 400, response.text
    assert fields_of(response) == ["name"]


async def test_more_requirements_than_terms_may_hold_are_refused_naming_the_list(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-requirements"
    requirement = EXAMPLE_TERMS["requirements"][0]  # type: ignore[index]
    requirements = [dict(requirement, code=f"declaration-{index}") for index in range(MAX_REQUIREMENTS + 1)]
    response = await client.post(
        terms_path(region),
        json=dict(EXAMPLE_TERMS, requirements=requirements),
        headers=auth(module_suite, Role.REGION_ADMIN, region),
    )
    assert response.status_code == 400, response.text
    assert "terms.requirements" in fields_of(response)
    await assert_no_terms(client, module_suite, region)


async def test_a_fullwidth_business_id_in_a_registration_is_400_naming_it(
    client: httpx.AsyncClient, module_suite: LocalSuite
) -> None:
    region = "edge-fullwidth"
    api = Api(module_suite, client)
    terms = await api.publish_terms(region)
    business_id = valid_business_id("1000010")
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in business_id)
    body = api.registration_body(terms, fullwidth, Ed25519PrivateKey.generate())
    response = await client.post(
        f"/v1/regions/{region}/services/recruitment/registrations",
        json=body,
        headers=auth(module_suite, Role.PROVIDER, business_id),
    )
    assert response.status_code == 400, response.text
    assert fields_of(response) == ["registration.businessId"]
    listed = await client.get(
        f"/v1/regions/{region}/services/recruitment/registrations",
        headers=auth(module_suite, Role.REGION_ADMIN, region),
    )
    assert listed.status_code == 200, listed.text
    assert listed.json().get("registrations", []) == []


async def test_an_overlong_idempotency_key_version_or_a_nul_is_400_on_both_databases(
    suite: LocalSuite,
) -> None:
    """On PostgreSQL an overlong key, an overlong version and a NUL once reached the database (a 500)."""
    region = "edge-idempotency"
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=15.0) as client:
        headers = {**auth(suite, Role.REGION_ADMIN, region), "Idempotency-Key": "k" * 129}
        response = await client.post(terms_path(region), json=EXAMPLE_TERMS, headers=headers)
        assert response.status_code == 400, response.text
        assert error_of(response)["status"] == "INVALID_ARGUMENT"
        assert "128" in error_of(response)["message"]
        await assert_no_terms(client, suite, region)
        overflow = await client.get(f"{terms_path(region)}/{'9' * 23}", headers=headers)
        assert overflow.status_code == 400, overflow.text
        assert fields_of(overflow) == ["name"]
        # A NUL, which PostgreSQL cannot store, is the client's mistake on both databases.
        nul = await client.post(
            terms_path(region), json=dict(EXAMPLE_TERMS, title="a\u0000b"), headers=headers
        )
        assert nul.status_code == 400, nul.text
        assert fields_of(nul) == ["terms.title"]
        await assert_no_terms(client, suite, region)
        headers["Idempotency-Key"] = "k" * 128
        accepted = await client.post(terms_path(region), json=EXAMPLE_TERMS, headers=headers)
        assert accepted.status_code == 200, accepted.text

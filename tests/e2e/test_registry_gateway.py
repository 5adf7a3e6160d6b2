"""The registry's catalogue and its person-made decisions over HTTP, through the gateway and the
real services: the organisers, services and municipalities listed; a review rejected with
reasons; a key rotated and the admission revoked; keys added and retired; an admission withdrawn
by its provider; a certificate renewed; a provider's contact details, read by it and its region's
admin only; and the client mistakes on these routes answered as 4xx JSON naming the problem.

The tests share one suite and keep apart by region."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kasvuctl.demo import EXAMPLE_TERMS, today_in_finland
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from tests.e2e.flows import SERVICE, Api, as_date

pytestmark = pytest.mark.e2e

PROVIDER = "0737546-2"
PERSON_DECIDED = {
    "code": "staff-qualification",
    "description": "Counsellors hold a relevant degree",
    "kind": "REQUIREMENT_KIND_DECLARATION",
    "decidedBy": "DECIDER_PERSON",
    "legalBasis": "569/2009 5 §",
}
SNAKE_CASE = re.compile(r"^[a-z]+_[a-z_]+$")


@pytest.fixture
async def api(module_suite: LocalSuite) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=module_suite.gateway_url, timeout=15.0) as client:
        yield Api(module_suite, client)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def keys_of(value: Any) -> set[str]:
    """Every object key in a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def problem_of(response: httpx.Response, status: int) -> tuple[str, set[str], set[str]]:
    """A 4xx answer in Google's JSON error shape: its message, its ErrorInfo reasons and the fields
    its BadRequest names."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == status, error
    details = error.get("details", [])
    reasons = {d["reason"] for d in details if d["@type"].endswith("google.rpc.ErrorInfo")}
    fields = {
        v["field"]
        for d in details
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    }
    return str(error["message"]), reasons, fields


async def register(
    api: Api, region: str, *, person_decided: bool = False, business_id: str = PROVIDER
) -> tuple[dict[str, Any], Ed25519PrivateKey]:
    """Publishes terms in `region` (with a person-decided requirement when asked) and registers
    the provider against them; returns the registration's JSON and the provider's key."""
    requirements = list(EXAMPLE_TERMS["requirements"])  # type: ignore[call-overload]
    if person_decided:
        requirements.append(PERSON_DECIDED)
    published = await api.client.post(
        f"/v1/regions/{region}/services/{SERVICE}/terms",
        json=dict(EXAMPLE_TERMS, requirements=requirements),
        headers=api.auth(Role.REGION_ADMIN, region),
    )
    assert published.status_code == 200, published.text
    key = Ed25519PrivateKey.generate()
    body = api.registration_body(published.json(), business_id, key)
    if person_decided:
        body["evidence"].append({"requirementCode": "staff-qualification", "declared": True})  # type: ignore[attr-defined]
    response = await api.register(region, body, business_id)
    assert response.status_code == 200, response.text
    return dict(response.json()), key


async def test_the_catalogue_lists_over_http_in_json_names(api: Api) -> None:
    client = api.client
    organisers: list[dict[str, Any]] = []
    token, pages = "", 0
    while True:
        response = await client.get("/v1/regions", params={"pageSize": 7, "pageToken": token})
        assert response.status_code == 200, response.text
        body = response.json()
        assert not {k for k in keys_of(body) if SNAKE_CASE.match(k)}, body
        organisers += body["organisers"]
        pages += 1
        token = body.get("nextPageToken", "")
        if not token:
            break
        assert pages < 10, "the organisers never end"
    assert pages == 3  # 19 organisers, 7 a page
    assert len(organisers) == 19
    assert len({o["name"] for o in organisers}) == 19
    assert {"name": "regions/pirkanmaa", "displayName": "Pirkanmaa", "kind": "REGION"} in organisers
    assert {
        "name": "regions/uusimaa-joint-authority",
        "displayName": "Uusimaan kasvupalvelujen kuntayhtymä",
        "kind": "JOINT_MUNICIPAL_AUTHORITY",
    } in organisers

    services = await client.get("/v1/regions/pirkanmaa/services")
    assert services.status_code == 200, services.text
    listed = services.json()["services"]
    assert [s["name"] for s in listed] == [
        f"regions/pirkanmaa/services/{s}"
        for s in (
            "recruitment",
            "competence-development",
            "career-guidance",
            "business-development",
            "internationalisation",
            "integration",
        )
    ]
    assert listed[0] == {
        "name": "regions/pirkanmaa/services/recruitment",
        "displayName": "Recruitment and job matching",
        "national": True,
    }

    # A region's own service follows the national ones, in its catalogue only.
    created = await client.post(
        "/v1/regions/kainuu/services",
        params={"serviceId": "forest-work"},
        json={"displayName": "Forest work placements"},
        headers=api.auth(Role.REGION_ADMIN, "kainuu"),
    )
    assert created.status_code == 200, created.text
    own = (await client.get("/v1/regions/kainuu/services")).json()["services"]
    assert own[-1]["name"] == "regions/kainuu/services/forest-work"
    assert own[-1]["displayName"] == "Forest work placements"
    assert not own[-1].get("national", False)
    assert len(own) == 7
    assert len((await client.get("/v1/regions/pirkanmaa/services")).json()["services"]) == 6
    _, reasons, _ = problem_of(await client.get("/v1/regions/atlantis/services"), 404)
    assert reasons == {"ORGANISER_NOT_FOUND"}

    municipalities: list[dict[str, Any]] = []
    token = ""
    for _ in range(10):
        response = await client.get("/v1/municipalities", params={"pageSize": 100, "pageToken": token})
        assert response.status_code == 200, response.text
        body = response.json()
        assert not {k for k in keys_of(body) if SNAKE_CASE.match(k)}, body
        municipalities += body["municipalities"]
        token = body.get("nextPageToken", "")
        if not token:
            break
    assert not token, "the municipalities never end"
    codes = [m["code"] for m in municipalities]
    assert len(codes) == 309
    assert codes == sorted(set(codes))
    assert {"code": "837", "finnishName": "Tampere", "swedishName": "Tammerfors"} in municipalities
    assert {"code": "091", "finnishName": "Helsinki", "swedishName": "Helsingfors"} in municipalities


async def test_the_region_admin_rejects_a_registration_in_review_with_reasons(api: Api) -> None:
    region = "satakunta"
    client = api.client
    admin = api.auth(Role.REGION_ADMIN, region)
    registration, _ = await register(api, region, person_decided=True)
    name = registration["name"]
    assert registration["state"] == "REGISTRATION_STATE_IN_REVIEW"
    decide = f"/v1/{name}:decide"

    # Mistakes: a rejection without reasons; the provider deciding its own; another region's admin.
    message, _, fields = problem_of(await client.post(decide, json={"admit": False}, headers=admin), 400)
    assert fields == {"reasons"}, message
    provider = api.auth(Role.PROVIDER, PROVIDER)
    _, reasons, _ = problem_of(await client.post(decide, json={"admit": True}, headers=provider), 403)
    assert reasons == {"TENANT_MISMATCH"}
    stranger = api.auth(Role.REGION_ADMIN, "lappi")
    problem_of(await client.post(decide, json={"admit": True}, headers=stranger), 403)
    assert await api.registration_state(name, PROVIDER) == "REGISTRATION_STATE_IN_REVIEW"

    why = [
        {"code": "QUALIFICATION_UNPROVEN", "subject": "staff-qualification", "message": "No degrees shown"}
    ]
    decided = await client.post(decide, json={"admit": False, "reasons": why}, headers=admin)
    assert decided.status_code == 200, decided.text
    rejected = decided.json()
    assert rejected["state"] == "REGISTRATION_STATE_REJECTED"
    assert rejected["reasons"] == why
    assert [d["kind"] for d in rejected["decisions"]] == ["REVIEW", "REJECTION"]
    assert rejected["decisions"][-1]["reasons"] == why
    assert rejected["decisions"][-1]["state"] == "REGISTRATION_STATE_REJECTED"
    assert (await client.get(f"/v1/{name}", headers=provider)).json()[
        "state"
    ] == "REGISTRATION_STATE_REJECTED"
    assert await api.listed(region) == []

    # Decided once: a second decision is refused, naming why.
    message, reasons, _ = problem_of(await client.post(decide, json={"admit": True}, headers=admin), 400)
    assert reasons == {"NOT_IN_REVIEW"}
    assert name in message


async def test_a_provider_rotates_its_key_then_the_region_revokes_it(api: Api) -> None:
    region = "kainuu"
    client = api.client
    admin = api.auth(Role.REGION_ADMIN, region)
    provider = api.auth(Role.PROVIDER, PROVIDER)
    registration, first = await register(api, region)
    name = registration["name"]
    assert registration["state"] == "REGISTRATION_STATE_ADMITTED"
    assert registration["publicKey"] == b64(raw_public(first))
    assert await api.listed(region) == [PROVIDER]
    rotate = f"/v1/{name}:rotateKey"

    second = Ed25519PrivateKey.generate()
    new_key = raw_public(second)
    rotated = await client.post(
        rotate, json={"publicKey": b64(new_key), "keySignature": b64(first.sign(new_key))}, headers=provider
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["publicKey"] == b64(new_key)
    assert rotated.json()["state"] == "REGISTRATION_STATE_ADMITTED"
    assert (await client.get(f"/v1/{name}", headers=provider)).json()["publicKey"] == b64(new_key)

    # The old key no longer speaks for the registration; the new one does.
    third = raw_public(Ed25519PrivateKey.generate())
    message, _, fields = problem_of(
        await client.post(
            rotate, json={"publicKey": b64(third), "keySignature": b64(first.sign(third))}, headers=provider
        ),
        400,
    )
    assert fields == {"keySignature"}, message
    message, _, fields = problem_of(
        await client.post(
            rotate,
            json={"publicKey": b64(b"short"), "keySignature": b64(second.sign(b"short"))},
            headers=provider,
        ),
        400,
    )
    assert "publicKey" in fields, message
    _, reasons, _ = problem_of(
        await client.post(
            rotate, json={"publicKey": b64(third), "keySignature": b64(second.sign(third))}, headers=admin
        ),
        403,
    )
    assert reasons == {"TENANT_MISMATCH"}
    assert (await client.get(f"/v1/{name}", headers=provider)).json()["publicKey"] == b64(new_key)

    # Revocation: reasons are required, the provider cannot revoke itself.
    revoke = f"/v1/{name}:revoke"
    message, _, fields = problem_of(await client.post(revoke, json={}, headers=admin), 400)
    assert fields == {"reasons"}, message
    message, _, fields = problem_of(
        await client.post(revoke, json={"reasons": [{"code": "FRAUD"}]}, headers=admin), 400
    )
    assert fields == {"reasons[0].message"}, message
    why = [{"code": "FRAUD", "subject": "invoicing", "message": "Invoiced sessions never held"}]
    _, reasons, _ = problem_of(await client.post(revoke, json={"reasons": why}, headers=provider), 403)
    assert reasons == {"TENANT_MISMATCH"}
    assert await api.listed(region) == [PROVIDER]

    revoked = await client.post(revoke, json={"reasons": why}, headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "REGISTRATION_STATE_REVOKED"
    assert revoked.json()["reasons"] == why
    assert [d["kind"] for d in revoked.json()["decisions"]] == ["ADMISSION", "REVOCATION"]
    assert await api.listed(region) == []

    # Over for good: neither revoked again nor withdrawn, nor given a new key.
    _, reasons, _ = problem_of(await client.post(revoke, json={"reasons": why}, headers=admin), 400)
    assert reasons == {"NOT_ADMITTED"}
    message, reasons, _ = problem_of(
        await client.post(f"/v1/{name}:withdraw", json={}, headers=provider), 400
    )
    assert reasons == {"NOT_ACTIVE"}
    assert "revoked" in message
    _, reasons, _ = problem_of(
        await client.post(
            rotate, json={"publicKey": b64(third), "keySignature": b64(second.sign(third))}, headers=provider
        ),
        400,
    )
    assert reasons == {"NOT_ACTIVE"}


async def test_a_provider_withdraws_its_admission(api: Api) -> None:
    region = "lappi"
    client = api.client
    provider = api.auth(Role.PROVIDER, PROVIDER)
    registration, _ = await register(api, region)
    name = registration["name"]
    assert registration["state"] == "REGISTRATION_STATE_ADMITTED"
    assert await api.listed(region) == [PROVIDER]
    withdraw = f"/v1/{name}:withdraw"

    # Only the provider withdraws: not the region's admin, not another provider.
    _, reasons, _ = problem_of(
        await client.post(withdraw, json={}, headers=api.auth(Role.REGION_ADMIN, region)), 403
    )
    assert reasons == {"TENANT_MISMATCH"}
    problem_of(await client.post(withdraw, json={}, headers=api.auth(Role.PROVIDER, "0000001-9")), 403)
    assert await api.listed(region) == [PROVIDER]

    why = [{"code": "CLOSING", "message": "The office closes"}]
    _, _, fields = problem_of(
        await client.post(withdraw, json={"reasons": [{"code": "CLOSING"}]}, headers=provider), 400
    )
    assert fields == {"reasons[0].message"}
    withdrawn = await client.post(withdraw, json={"reasons": why}, headers=provider)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["state"] == "REGISTRATION_STATE_WITHDRAWN"
    assert withdrawn.json()["decisions"][-1]["reasons"] == [{**why[0], "subject": ""}]
    assert [d["kind"] for d in withdrawn.json()["decisions"]] == ["ADMISSION", "WITHDRAWAL"]
    assert withdrawn.json()["decisions"][-1]["state"] == "REGISTRATION_STATE_WITHDRAWN"
    assert await api.registration_state(name, PROVIDER) == "REGISTRATION_STATE_WITHDRAWN"
    assert await api.listed(region) == []

    message, reasons, _ = problem_of(await client.post(withdraw, json={}, headers=provider), 400)
    assert reasons == {"NOT_ACTIVE"}
    assert "withdrawn" in message
    missing = f"/v1/regions/{region}/services/{SERVICE}/registrations/no-such-registration:withdraw"
    _, reasons, _ = problem_of(await client.post(missing, json={}, headers=provider), 404)
    assert reasons == {"REGISTRATION_NOT_FOUND"}


async def test_a_provider_renews_its_certificate_before_it_expires(api: Api) -> None:
    region = "kymenlaakso"
    client = api.client
    provider = api.auth(Role.PROVIDER, PROVIDER)
    registration, _ = await register(api, region)
    name = registration["name"]
    renew = f"/v1/{name}:renewEvidence"
    today = today_in_finland()

    def body(issued_on: date) -> dict[str, Any]:
        return {"evidence": {"requirementCode": "liability-insurance", "issuedOn": as_date(issued_on)}}

    # Past its age: refused naming the field in its JSON name; not for the region's admin either.
    message, reasons, fields = problem_of(
        await client.post(renew, json=body(today - timedelta(days=91)), headers=provider), 400
    )
    assert (reasons, fields) == ({"EVIDENCE_TOO_OLD"}, {"evidence.issuedOn"})
    assert "at most 90 days" in message
    admin = api.auth(Role.REGION_ADMIN, region)
    _, reasons, _ = problem_of(await client.post(renew, json=body(today), headers=admin), 403)
    assert reasons == {"TENANT_MISMATCH"}

    renewed = await client.post(renew, json=body(today), headers=provider)
    assert renewed.status_code == 200, renewed.text
    answer = renewed.json()
    assert answer["state"] == "REGISTRATION_STATE_ADMITTED"
    assert {e["requirementCode"]: e.get("issuedOn") for e in answer["evidence"]}["liability-insurance"] == (
        as_date(today)
    )
    assert [d["kind"] for d in answer["decisions"]] == ["ADMISSION", "EVIDENCE_RENEWAL"]
    assert answer["decisions"][-1]["reasons"][0]["code"] == "EVIDENCE_RENEWED"
    assert await api.listed(region) == [PROVIDER]


async def test_a_general_part_over_http_binds_every_services_terms_and_bad_clauses_are_400(api: Api) -> None:
    region = "keski-suomi"
    client = api.client
    admin = api.auth(Role.REGION_ADMIN, region)
    general_terms = {
        "title": "Yleiset ehdot",
        "requirements": [
            {"code": "good-standing", "description": "No tax arrears", "kind": "REQUIREMENT_KIND_DECLARATION"}
        ],
        "sections": [
            {"topic": "SECTION_TOPIC_PRICE_AND_INVOICING", "text": "Invoices monthly, 14 days net."}
        ],
    }
    for sections, field in (
        ([{"topic": "SECTION_TOPIC_UNSPECIFIED", "text": "x"}], "generalTerms.sections[0].topic"),
        ([{"topic": "SECTION_TOPIC_CONTENT", "text": " "}], "generalTerms.sections[0].text"),
    ):
        bad = await client.post(
            f"/v1/regions/{region}/generalTerms", json=dict(general_terms, sections=sections), headers=admin
        )
        _, _, fields = problem_of(bad, 400)
        assert fields == {field}
    published = await client.post(f"/v1/regions/{region}/generalTerms", json=general_terms, headers=admin)
    assert published.status_code == 200, published.text
    general = published.json()
    assert general["name"] == f"regions/{region}/generalTerms/1"
    listed = await client.get(f"/v1/regions/{region}/generalTerms", headers=admin)
    assert [g["name"] for g in listed.json()["generalTerms"]] == [general["name"]]

    terms = await api.publish_terms(region)
    assert terms["generalTerms"] == general["name"]
    key = Ed25519PrivateKey.generate()
    body = api.registration_body(terms, PROVIDER, key)
    short = await api.register(region, body, PROVIDER)
    assert short.status_code == 200, short.text
    assert short.json()["state"] == "REGISTRATION_STATE_REJECTED"
    assert [r["subject"] for r in short.json()["reasons"]] == ["good-standing"]


async def test_contact_details_over_http_are_for_the_provider_and_the_admin_of_its_region_only(
    api: Api,
) -> None:
    region, provider_id, other_id = "pohjois-savo", "3456780-6", "3456781-4"
    client = api.client
    await register(api, region, business_id=provider_id)
    path = f"/v1/providers/{provider_id}/contactDetails"
    provider = api.auth(Role.PROVIDER, provider_id)
    details = {
        "contactPerson": "Maija Meikäläinen",
        "email": "maija@Tyopolku.fi",
        "phone": "+358 40 765 4321",
    }

    # Bad input: 400 naming each field by its JSON name, and nothing stored.
    _, _, fields = problem_of(
        await client.patch(
            path, json={"contactPerson": " ", "email": "maija", "phone": "040 765 4321"}, headers=provider
        ),
        400,
    )
    assert fields == {"contactDetails.contactPerson", "contactDetails.email", "contactDetails.phone"}
    _, reasons, _ = problem_of(await client.get(path, headers=provider), 404)
    assert reasons == {"CONTACT_DETAILS_NOT_FOUND"}

    stored = await client.patch(path, json=details, headers={**provider, "Idempotency-Key": "contact-1"})
    assert stored.status_code == 200, stored.text
    answer = stored.json()
    assert {k: answer[k] for k in ("name", "contactPerson", "email", "phone")} == {
        "name": f"providers/{provider_id}/contactDetails",
        "contactPerson": "Maija Meikäläinen",
        "email": "maija@tyopolku.fi",
        "phone": "+358407654321",
    }
    assert "updateTime" in answer
    changed = await client.patch(
        path, params={"updateMask": "phone"}, json={"phone": "+358 50 111 2223"}, headers=provider
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["email"], changed.json()["phone"]) == ("maija@tyopolku.fi", "+358501112223")

    # Read by the provider and by the admin of the region where it registered.
    for reader in (provider, api.auth(Role.REGION_ADMIN, region)):
        response = await client.get(path, headers=reader)
        assert response.status_code == 200, response.text
        assert response.json() == changed.json()
    # Refused to another provider, another region's admin and the region's supervisor; and only
    # the provider changes them.
    for stranger in (
        api.auth(Role.PROVIDER, other_id),
        api.auth(Role.REGION_ADMIN, "pohjois-karjala"),
        api.auth(Role.SUPERVISOR, region),
    ):
        message, reasons, _ = problem_of(await client.get(path, headers=stranger), 403)
        assert reasons == {"TENANT_MISMATCH"}
        assert region not in message and "Maija" not in message
    _, reasons, _ = problem_of(
        await client.patch(path, json=details, headers=api.auth(Role.REGION_ADMIN, region)), 403
    )
    assert reasons == {"TENANT_MISMATCH"}
    problem_of(await client.get(path), 401)

    # Never on the public list.
    listing = await client.get(f"/v1/regions/{region}/services/{SERVICE}/providers")
    assert [p["businessId"] for p in listing.json()["providers"]] == [provider_id]
    assert [part for part in ("Maija", "maija@", "407654321", "501112223") if part in listing.text] == []


async def test_a_provider_adds_and_retires_its_registration_keys_over_http(api: Api) -> None:
    region = "pohjois-karjala"
    client = api.client
    provider = api.auth(Role.PROVIDER, PROVIDER)
    registration, first = await register(api, region)
    name = registration["name"]
    add, retire = f"/v1/{name}:addKey", f"/v1/{name}:retireKey"
    second = Ed25519PrivateKey.generate()
    new_key = raw_public(second)
    body = {
        "publicKey": b64(new_key),
        "keySignature": b64(first.sign(new_key)),
        "possessionSignature": b64(second.sign(name.encode())),
    }

    # Mistakes: a possession not proved by the new key; the region's admin adding a key.
    forged = dict(body, possessionSignature=b64(first.sign(name.encode())))
    _, _, fields = problem_of(await client.post(add, json=forged, headers=provider), 400)
    assert fields == {"possessionSignature"}
    _, reasons, _ = problem_of(
        await client.post(add, json=body, headers=api.auth(Role.REGION_ADMIN, region)), 403
    )
    assert reasons == {"TENANT_MISMATCH"}

    added = await client.post(add, json=body, headers={**provider, "Idempotency-Key": "add-second"})
    assert added.status_code == 200, added.text
    keys = added.json()["keys"]
    assert [(k["publicKey"], "retireTime" in k) for k in keys] == [
        (b64(raw_public(first)), False),
        (b64(new_key), False),
    ]
    assert keys[1]["fingerprint"] == hashlib.sha256(new_key).hexdigest()
    # The same key again, under another key or none: no change.
    again = await client.post(add, json=body, headers={**provider, "Idempotency-Key": "add-second-again"})
    assert again.status_code == 200, again.text
    assert again.json() == added.json()

    # Retire the first key, the second agreeing; then the second, now the last, is refused.
    first_key = raw_public(first)
    _, _, fields = problem_of(
        await client.post(
            retire,
            json={"keyFingerprint": "0" * 64, "keySignature": b64(second.sign(first_key))},
            headers=provider,
        ),
        400,
    )
    assert fields == {"keyFingerprint"}
    retired = await client.post(
        retire,
        json={"keyFingerprint": keys[0]["fingerprint"], "keySignature": b64(second.sign(first_key))},
        headers=provider,
    )
    assert retired.status_code == 200, retired.text
    assert ["retireTime" in k for k in retired.json()["keys"]] == [True, False]
    assert retired.json()["publicKey"] == b64(new_key)
    message, reasons, _ = problem_of(
        await client.post(
            retire,
            json={"keyFingerprint": keys[1]["fingerprint"], "keySignature": b64(second.sign(new_key))},
            headers=provider,
        ),
        400,
    )
    assert reasons == {"LAST_LIVE_KEY"}, message
    assert (await client.get(f"/v1/{name}", headers=provider)).json()["keys"] == retired.json()["keys"]

"""A registration's whole life through the gateway: register → in review → admitted → new terms →
re-commit → breach → suspended → timed lift → admitted → evidence expiry → lapsed.

The registry runs as a real process; days pass by moving its timers' due times into the past in
its own database, so the scheduler fires them as it would once the days had gone by."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, update

from kasvuctl.demo import EXAMPLE_TERMS
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from services.runtime.db import Database
from services.runtime.tables import Timer
from tests.e2e.flows import Api

pytestmark = pytest.mark.e2e

PROVIDER = "0737546-2"
REGION = "pirkanmaa"
SERVICE_PATH = f"/v1/regions/{REGION}/services/recruitment"
STAFF = {
    "code": "staff-qualification",
    "description": "Counsellors hold a relevant degree",
    "kind": "REQUIREMENT_KIND_DECLARATION",
    "decidedBy": "DECIDER_PERSON",
    "legalBasis": "569/2009 5 §",
}


async def make_timer_due(suite: LocalSuite, prefix: str) -> None:
    """As if the timer's day had come: its due time moves to a second ago."""
    db = Database(f"sqlite+aiosqlite:///{suite.data_dir / 'registry.db'}")
    try:
        # A test's own write from outside the service, as an operator's SQL would be.
        async with db.writer.begin() as connection:
            result = await connection.execute(
                update(Timer)
                .where(col(Timer.key).startswith(prefix), col(Timer.fired_at).is_(None))
                .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            assert result.rowcount == 1, f"no pending timer {prefix}"
    finally:
        await db.dispose()


async def publish(api: Api, title: str) -> dict[str, object]:
    requirements = list(EXAMPLE_TERMS["requirements"])  # type: ignore[call-overload]
    body = dict(EXAMPLE_TERMS, title=title, requirements=[*requirements, STAFF])
    response = await api.client.post(
        f"{SERVICE_PATH}/terms", json=body, headers=api.auth(Role.REGION_ADMIN, REGION)
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_registration_lives_its_whole_life_through_the_gateway(sqlite_suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        admin = api.auth(Role.REGION_ADMIN, REGION)
        provider = api.auth(Role.PROVIDER, PROVIDER)
        policy = await client.post(
            f"/v1/regions/{REGION}/breachPolicy:set",
            json={"suspendingSeverities": ["SERIOUS"], "suspendDays": 90},
            headers=admin,
        )
        assert policy.status_code == 200, policy.text

        key = Ed25519PrivateKey.generate()
        first = await publish(api, "Rekrytointi 2026")
        body = api.registration_body(first, PROVIDER, key)
        body["evidence"].append({"requirementCode": "staff-qualification", "declared": True})  # type: ignore[attr-defined]
        body.update(municipalities=["837"], languages=["fi"])
        response = await api.register(REGION, body, PROVIDER)
        assert response.status_code == 200, response.text
        registration = response.json()
        name = registration["name"]
        assert registration["state"] == "REGISTRATION_STATE_IN_REVIEW"
        assert await api.listed(REGION) == []

        decided = await client.post(f"/v1/{name}:decide", json={"admit": True}, headers=admin)
        assert decided.status_code == 200, decided.text
        assert decided.json()["state"] == "REGISTRATION_STATE_ADMITTED"
        listed = await client.get(
            f"{SERVICE_PATH}/providers", params={"municipality": "837", "language": "fi"}
        )
        assert [p["businessId"] for p in listed.json()["providers"]] == [PROVIDER]

        second = await publish(api, "Rekrytointi 2027")
        waiting = (await client.get(f"/v1/{name}", headers=provider)).json()
        assert "recommitDeadline" in waiting
        signature = base64.b64encode(key.sign(bytes.fromhex(str(second["contentHash"])))).decode()
        recommitted = await client.post(
            f"/v1/{name}:recommit",
            json={"terms": second["name"], "termsSignature": signature},
            headers=provider,
        )
        assert recommitted.status_code == 200, recommitted.text
        assert recommitted.json()["terms"] == second["name"]

        indicator = await api.create_indicator(REGION)
        breach = await api.breach_until_opened(REGION, indicator, PROVIDER)
        await api.wait_for_state(name, PROVIDER, "REGISTRATION_STATE_SUSPENDED")
        suspended = (await client.get(f"/v1/{name}", headers=provider)).json()
        assert suspended["decisions"][-1]["kind"] == "SUSPENSION"
        assert suspended["decisions"][-1]["causes"] == [breach]
        assert "liftTime" in suspended
        assert await api.listed(REGION) == []

        await make_timer_due(sqlite_suite, "registry:lift:")
        await api.wait_for_state(name, PROVIDER, "REGISTRATION_STATE_ADMITTED")
        assert await api.listed(REGION) == [PROVIDER]

        await make_timer_due(sqlite_suite, "registry:evidence:")
        await api.wait_for_state(name, PROVIDER, "REGISTRATION_STATE_LAPSED")
        lapsed = (await client.get(f"/v1/{name}", headers=provider)).json()
        assert lapsed["reasons"][0]["code"] == "EVIDENCE_EXPIRED"
        assert [d["kind"] for d in lapsed["decisions"]] == [
            "REVIEW",
            "ADMISSION",
            "RECOMMITMENT",
            "SUSPENSION",
            "REINSTATEMENT",
            "LAPSE",
        ]
        assert await api.listed(REGION) == []


async def test_a_timed_suspension_lifts_itself_after_the_registry_restarts(sqlite_suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        terms = await api.publish_terms(REGION)
        response = await api.register(
            REGION, api.registration_body(terms, PROVIDER, Ed25519PrivateKey.generate()), PROVIDER
        )
        assert response.status_code == 200, response.text
        name = response.json()["name"]
        lift = (datetime.now(UTC) + timedelta(days=90)).isoformat().replace("+00:00", "Z")
        suspended = await client.post(
            f"/v1/{name}:suspend",
            json={"reasons": [{"code": "QUALITY", "message": "Late assessments"}], "liftTime": lift},
            headers=api.auth(Role.SUPERVISOR, REGION),
        )
        assert suspended.status_code == 200, suspended.text

        assert sqlite_suite.stop_process("registry") is not None
        await make_timer_due(sqlite_suite, "registry:lift:")
        sqlite_suite.start_service("registry")
        await sqlite_suite.wait_ready("registry")

        # The gateway's channel may still be backing off from the restart: 503s until it reconnects.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            reply = await client.get(f"/v1/{name}", headers=api.auth(Role.PROVIDER, PROVIDER))
            if reply.status_code == 200 and reply.json()["state"] == "REGISTRATION_STATE_ADMITTED":
                break
            assert reply.status_code in {200, 503}, reply.text
            assert asyncio.get_running_loop().time() < deadline, reply.text
            await asyncio.sleep(0.1)
        assert reply.json()["decisions"][-1]["reasons"][0]["code"] == "SUSPENSION_LIFTED"


async def test_a_draft_is_changed_and_submitted_through_the_gateway(sqlite_suite: LocalSuite) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        provider = api.auth(Role.PROVIDER, PROVIDER)
        terms = await publish(api, "Rekrytointi 2026")
        key = Ed25519PrivateKey.generate()
        body = api.registration_body(terms, PROVIDER, key)
        signature = body.pop("termsSignature")
        evidence = list(body.pop("evidence"))  # type: ignore[call-overload]
        body.pop("displayName")

        created = await client.post(
            f"{SERVICE_PATH}/registrations", params={"draft": "true"}, json=body, headers=provider
        )
        assert created.status_code == 200, created.text
        draft = created.json()
        assert draft["state"] == "REGISTRATION_STATE_DRAFT"
        name = draft["name"]

        changed = await client.patch(
            f"/v1/{name}",
            params={"updateMask": "displayName,evidence,municipalities"},
            json={
                "displayName": "Työpolku Oy",
                "evidence": [*evidence, {"requirementCode": "staff-qualification", "declared": True}],
                "municipalities": ["837"],
                "languages": ["sv"],  # not in the mask: left as it was
            },
            headers=provider,
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["displayName"], changed.json()["municipalities"]) == ("Työpolku Oy", ["837"])
        assert changed.json().get("languages", []) == []

        unknown = await client.patch(f"/v1/{name}", json={"municipalities": ["999"]}, headers=provider)
        assert unknown.status_code == 400, unknown.text

        submitted = await client.post(
            f"/v1/{name}:submit", json={"termsSignature": signature}, headers=provider
        )
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["state"] == "REGISTRATION_STATE_IN_REVIEW"
        assert [d["kind"] for d in submitted.json()["decisions"]] == ["DRAFT", "REVIEW"]

        again = await client.post(f"/v1/{name}:submit", json={"termsSignature": signature}, headers=provider)
        assert again.status_code == 400, again.text
        assert "NOT_DRAFT" in again.text

"""The loop's steps as HTTP calls through the gateway, shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kasvuctl.demo import EXAMPLE_TERMS
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role

SERVICE = "recruitment"


def today_in_finland() -> date:
    return datetime.now(ZoneInfo("Europe/Helsinki")).date()


def as_date(day: date) -> dict[str, int]:
    return {"year": day.year, "month": day.month, "day": day.day}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Api:
    """Calls the gateway as a region admin, a provider or a supervisor."""

    def __init__(self, suite: LocalSuite, client: httpx.AsyncClient) -> None:
        self.suite = suite
        self.client = client

    def auth(self, role: Role, organisation: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.suite.token(role, organisation)}"}

    async def publish_terms(self, region: str, request_id: str = "") -> dict[str, object]:
        body = EXAMPLE_TERMS
        headers = self.auth(Role.REGION_ADMIN, region)
        if request_id:
            headers["Idempotency-Key"] = request_id
        response = await self.client.post(
            f"/v1/regions/{region}/services/{SERVICE}/terms", json=body, headers=headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def registration_body(
        self,
        terms: dict[str, object],
        business_id: str,
        key: Ed25519PrivateKey,
        *,
        certificate_age_days: int = 10,
    ) -> dict[str, object]:
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        signature = key.sign(bytes.fromhex(str(terms["contentHash"])))
        return {
            "terms": terms["name"],
            "businessId": business_id,
            "displayName": "Työpolku Oy",
            "evidence": [
                {"requirementCode": "prepayment-register", "declared": True},
                {
                    "requirementCode": "liability-insurance",
                    "issuedOn": as_date(today_in_finland() - timedelta(days=certificate_age_days)),
                },
            ],
            "publicKey": b64(public),
            "termsSignature": b64(signature),
        }

    async def register(
        self, region: str, body: dict[str, object], business_id: str, idempotency_key: str = ""
    ) -> httpx.Response:
        headers = self.auth(Role.PROVIDER, business_id)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self.client.post(
            f"/v1/regions/{region}/services/{SERVICE}/registrations", json=body, headers=headers
        )

    async def listed(self, region: str) -> list[str]:
        response = await self.client.get(f"/v1/regions/{region}/services/{SERVICE}/providers")
        assert response.status_code == 200, response.text
        return [p["businessId"] for p in response.json().get("providers", [])]

    async def registration_state(self, name: str, business_id: str) -> str:
        response = await self.client.get(f"/v1/{name}", headers=self.auth(Role.PROVIDER, business_id))
        assert response.status_code == 200, response.text
        return str(response.json()["state"])

    async def wait_for_state(self, name: str, business_id: str, state: str, timeout_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (current := await self.registration_state(name, business_id)) != state:
            assert asyncio.get_running_loop().time() < deadline, f"{name} stayed {current}, expected {state}"
            await asyncio.sleep(0.05)

    async def create_indicator(self, region: str, minimum_sample: int = 3) -> str:
        body = {
            "displayName": "Service-need assessment within 14 days of job-search start",
            "service": SERVICE,
            "shareWithinDeadline": {"deadlineDays": 14, "minimumShare": 0.8},
            "windowDays": 90,
            "minimumSample": minimum_sample,
            "severity": "SEVERITY_SERIOUS",
        }
        response = await self.client.post(
            f"/v1/regions/{region}/indicators?indicatorId=need-assessment-14d",
            json=body,
            headers=self.auth(Role.REGION_ADMIN, region),
        )
        assert response.status_code == 200, response.text
        return str(response.json()["name"])

    async def observe_late_case(
        self, region: str, indicator: str, business_id: str, n: int
    ) -> dict[str, object]:
        completed = today_in_finland()
        body = {
            "observationId": f"obs-{business_id}-{n}",
            "provider": business_id,
            "caseKey": f"case-{n}",
            "startedOn": as_date(completed - timedelta(days=30)),
            "completedOn": as_date(completed),
        }
        response = await self.client.post(
            f"/v1/{indicator}/observations", json=body, headers=self.auth(Role.REGION_ADMIN, region)
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def breach_until_opened(self, region: str, indicator: str, business_id: str) -> str:
        for n in range(10):
            result = await self.observe_late_case(region, indicator, business_id, n)
            if result.get("breach"):
                return str(result["breach"])
        raise AssertionError("no breach opened")


async def read_sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object]]]:
    """Yields (id, data) for each event of a Server-Sent Events response."""
    event_id, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield event_id, json.loads(data)
            event_id, data = "", ""

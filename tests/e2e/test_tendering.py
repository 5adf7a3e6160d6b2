"""A framework tender end to end through the gateway's HTTP API: draft, publication, sealed bids
from three providers on two lots, the committee's opening after the deadline, award, the decision
served to the bidders, standstill, concluded framework; then a provider suspended by a quality
breach (selfmonitoring → registry → tendering) is skipped by a call-off, and once the registry
reinstates it (ProviderReinstated → tendering) a later call-off reaches it again. Tendering runs
on a test clock the test moves forward."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Principal, Role, mint_token
from services.tendering import sealing
from services.tendering.bootstrap import TEST_CLOCK_VARIABLE
from tests.e2e.flows import Api, b64
from tests.integration.helpers import business_ids
from tests.tendering_ocds import validate_packages

pytestmark = pytest.mark.e2e

REGION = "pirkanmaa"
MEMBERS = ("alice", "bob", "carol")


@pytest.fixture
async def clocked_suite(tmp_path: Path) -> AsyncIterator[tuple[LocalSuite, Path]]:
    clock_file = tmp_path / "tendering-clock-offset"
    clock_file.write_text("0", encoding="ascii")
    running = LocalSuite(tmp_path / "suite", extra_env={TEST_CLOCK_VARIABLE: str(clock_file)})
    try:
        await running.start()
        yield running, clock_file
    finally:
        running.stop()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


MARKER = "SALAINEN-HINTA-91c2"


def bid_plaintext(price: int, plan: int) -> bytes:
    document = {
        "price": str(price),
        "quality": {"plan": plan},
        "declarations": {"no-tax-debt": True},
        "note": MARKER,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class Tendering:
    def __init__(self, suite: LocalSuite, client: httpx.AsyncClient, clock_file: Path) -> None:
        self.suite = suite
        self.client = client
        self.clock_file = clock_file
        self.offset = timedelta(0)

    def headers(self, role: Role, organisation: str, subject: str = "test") -> dict[str, str]:
        token = mint_token(self.suite.private_key(), Principal(role, organisation, subject))
        return {"Authorization": f"Bearer {token}"}

    def admin(self, subject: str = "admin") -> dict[str, str]:
        return self.headers(Role.REGION_ADMIN, REGION, subject)

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        response = await self.client.post(f"/v1/{path}", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def get(self, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.client.get(f"/v1/{path}", headers=headers or {})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def enrol(self, provider: str, key: Ed25519PrivateKey) -> dict[str, Any]:
        """Enrols the provider's bid-signing key, with its proof of possession."""
        body = {
            "publicKey": b64(sealing.raw_public(key)),
            "proof": b64(sealing.sign_bidder_key(provider, key)),
        }
        return await self.post(f"bidders/{provider}/keys", body, self.headers(Role.PROVIDER, provider))

    def advance(self, by: timedelta) -> None:
        self.offset += by
        self.clock_file.write_text(str(self.offset.total_seconds()), encoding="ascii")

    async def wait_for(self, path: str, key: str, value: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = await self.get(path, self.admin())
            if found.get(key) == value:
                return found
            assert asyncio.get_running_loop().time() < deadline, f"{path} {key} stayed {found.get(key)}"
            await asyncio.sleep(0.1)


def call_off_body(hires: int) -> dict[str, Any]:
    return {
        "lot": "north",
        "description": f"{hires} rekrytointia",
        "value": {"currencyCode": "EUR", "units": str(1500 * hires)},
    }


async def wait_for_suspended(tendering: Tendering, framework: str, expected: set[str]) -> None:
    """Until tendering's framework shows exactly `expected` suspended (learned from the registry's
    events, which arrive asynchronously)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        suppliers = (await tendering.get(framework))["suppliers"]
        suspended = {s["businessId"] for s in suppliers if s.get("suspended")}
        if suspended == expected:
            return
        assert asyncio.get_running_loop().time() < deadline, f"suspended stayed {suspended}, not {expected}"
        await asyncio.sleep(0.1)


async def test_a_framework_tender_to_agreement_then_call_offs_skip_a_suspended_provider_until_reinstated(
    clocked_suite: tuple[LocalSuite, Path],
) -> None:
    suite, clock_file = clocked_suite
    next_id = business_ids(2_345_670)
    providers = [next_id() for _ in range(3)]
    signing = {p: Ed25519PrivateKey.generate() for p in providers}
    members = {m: X25519PrivateKey.generate() for m in MEMBERS}
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=15.0) as client:
        api = Api(suite, client)
        tendering = Tendering(suite, client, clock_file)

        # The providers are admitted in the registry, so a breach can suspend them there.
        terms = await api.publish_terms(REGION)
        registrations = {}
        for provider in providers:
            response = await api.register(
                REGION, api.registration_body(terms, provider, signing[provider]), provider
            )
            assert response.json()["state"] == "REGISTRATION_STATE_ADMITTED", response.text
            registrations[provider] = response.json()["name"]

        now = datetime.now(UTC)
        call_body = {
            "title": "Rekrytointipalvelut 2027-2030",
            "service": "recruitment",
            "kind": "CALL_KIND_FRAMEWORK",
            "lots": [
                {
                    "lot": "north",
                    "title": "Pohjoinen",
                    "cpvCodes": ["79600000-0"],
                    "estimatedValue": {"currencyCode": "EUR", "units": "400000"},
                    "maxSuppliers": 3,
                },
                {
                    "lot": "south",
                    "title": "Etelä",
                    "cpvCodes": ["79600000-0"],
                    "estimatedValue": {"currencyCode": "EUR", "units": "450000"},
                    "maxSuppliers": 2,
                },
            ],
            "criteria": [
                {"code": "price", "kind": "CRITERION_KIND_PRICE", "weight": "60"},
                {"code": "plan", "kind": "CRITERION_KIND_QUALITY", "weight": "40", "scaleMax": 5},
            ],
            "declarations": [
                {"code": "no-tax-debt", "part": "DECLARATION_PART_EXCLUSION", "description": "No tax debt"}
            ],
            "questionsDeadline": rfc3339(now + timedelta(days=1)),
            "submissionDeadline": rfc3339(now + timedelta(days=2)),
            "framework": {"durationMonths": 48, "offerHours": 24},
            "committee": [
                {"member": m, "publicKey": b64(sealing.raw_public(key))} for m, key in members.items()
            ],
            "openingThreshold": 2,
        }
        draft = await tendering.post(f"regions/{REGION}/calls", call_body, tendering.admin())
        assert draft["state"] == "CALL_STATE_DRAFT"
        call = await tendering.post(f"{draft['name']}:publish", {}, tendering.admin())
        assert call["state"] == "CALL_STATE_PUBLISHED"
        public = await client.get(f"/v1/regions/{REGION}/calls")
        assert [c["name"] for c in public.json()["calls"]] == [call["name"]]

        opening_key = base64.b64decode(call["openingPublicKey"])
        prices = {
            ("north", providers[0]): (100_000, 5),
            ("north", providers[1]): (90_000, 3),
            ("north", providers[2]): (110_000, 4),
            ("south", providers[1]): (200_000, 4),
            ("south", providers[2]): (180_000, 2),
        }
        # A bid verifies only with a key its bidder enrolled: one signed with any other is refused.
        stranger = Ed25519PrivateKey.generate()
        sealed = sealing.seal_bid(bid_plaintext(1, 1), opening_key, call["name"], "north", providers[0])
        unenrolled = await client.post(
            f"/v1/{call['name']}/bids",
            json={
                "lot": "north",
                "publicKey": b64(sealing.raw_public(stranger)),
                "sealedBid": b64(sealed),
                "signature": b64(stranger.sign(sealed)),
                "openingKeySha256": sealing.key_fingerprint(opening_key),
            },
            headers=tendering.headers(Role.PROVIDER, providers[0]),
        )
        assert unenrolled.status_code == 400, unenrolled.text
        details = unenrolled.json()["error"]["details"]
        assert {"reason": "BIDDER_KEY_NOT_ENROLLED"}.items() <= next(
            d for d in details if d["@type"].endswith("ErrorInfo")
        ).items()
        assert [
            v["field"] for d in details if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]
        ] == ["bid.publicKey"]
        for provider in providers:
            enrolled = await tendering.enrol(provider, signing[provider])
            assert enrolled["state"] == "BIDDER_KEY_STATE_LIVE", enrolled
        own = await tendering.get(
            f"bidders/{providers[0]}/keys", tendering.headers(Role.PROVIDER, providers[0])
        )
        assert [k["fingerprint"] for k in own["bidderKeys"]] == [
            sealing.key_fingerprint(sealing.raw_public(signing[providers[0]]))
        ]
        receipts = {}
        for (lot, provider), (price, plan) in prices.items():
            sealed = sealing.seal_bid(bid_plaintext(price, plan), opening_key, call["name"], lot, provider)
            bid = {
                "lot": lot,
                "publicKey": b64(sealing.raw_public(signing[provider])),
                "sealedBid": b64(sealed),
                "signature": b64(signing[provider].sign(sealed)),
                "openingKeySha256": sealing.key_fingerprint(opening_key),
            }
            receipts[(lot, provider)] = (
                await tendering.post(f"{call['name']}/bids", bid, tendering.headers(Role.PROVIDER, provider))
            )["receipt"]
        receipt = receipts[("north", providers[0])]
        signed = sealing.Receipt(
            receipt["bid"],
            receipt["call"],
            receipt["lot"],
            receipt["bidder"],
            receipt["ciphertextSha256"],
            receipt["receiveTime"],
        )
        assert sealing.verify_receipt(
            signed, base64.b64decode(receipt["signature"]), base64.b64decode(call["receiptPublicKey"])
        )

        # The deadline passes (the test clock); two of three committee members open the bids.
        # Sealed until the deadline: no process of the suite has logged a bid's content.
        assert all(MARKER not in suite.log_text(name) for name in suite.process_names)
        tendering.advance(timedelta(days=2, minutes=1))
        await tendering.wait_for(call["name"], "state", "CALL_STATE_CLOSED")
        for index, member in enumerate(MEMBERS[:2]):
            sealed_share = base64.b64decode(call["committee"][index]["sealedShare"])
            share = sealing.open_share(sealed_share, members[member], call["name"], index)
            opened = await tendering.post(
                f"{call['name']}:submitOpeningShare", {"share": b64(share)}, tendering.admin(member)
            )
        assert opened["state"] == "CALL_STATE_EVALUATED"
        ranks = {(s["lot"], s["bidder"]): s.get("rank", 0) for s in opened["scores"]}
        assert ranks[("north", providers[0])] == 1 and ranks[("south", providers[1])] == 1

        awarded = await tendering.post(
            f"{call['name']}:award", {"reasons": "Best price-quality ratio per lot."}, tendering.admin()
        )
        # Decided, not yet served: no standstill runs, and time passing concludes nothing.
        assert awarded["state"] == "CALL_STATE_AWARDED" and "standstillEnd" not in awarded
        tendering.advance(timedelta(days=20))
        await asyncio.sleep(1.5)  # the worker polls every second
        assert (await tendering.get(call["name"]))["state"] == "CALL_STATE_AWARDED"
        served = await tendering.post(f"{call['name']}:serveAwardDecision", {}, tendering.admin())
        assert served["state"] == "CALL_STATE_STANDSTILL" and "standstillEnd" in served
        tendering.advance(timedelta(days=20))
        concluded = await tendering.wait_for(call["name"], "state", "CALL_STATE_CONCLUDED")
        framework_name = concluded["frameworkAgreement"]
        framework = await tendering.get(framework_name)
        assert [s["businessId"] for s in framework["suppliers"] if s["lot"] == "north"] == providers

        # A serious quality breach suspends the first-ranked provider in the registry; tendering
        # learns it from the registry's event and the call-off skips it.
        indicator = await api.create_indicator(REGION)
        await api.breach_until_opened(REGION, indicator, providers[0])
        await api.wait_for_state(registrations[providers[0]], providers[0], "REGISTRATION_STATE_SUSPENDED")
        await wait_for_suspended(tendering, framework_name, {providers[0]})
        call_off = await tendering.post(f"{framework_name}/callOffs", call_off_body(20), tendering.admin())
        assert call_off["offeredTo"] == providers[1]
        assert call_off["skipped"] == [providers[0]]
        accepted = await tendering.post(
            f"{call_off['name']}:accept", {}, tendering.headers(Role.PROVIDER, providers[1])
        )
        assert accepted["state"] == "CALL_OFF_STATE_ACCEPTED"

        # The region reinstates the provider in the registry (the breach was corrected); the
        # registry publishes ProviderReinstated, tendering consumes it, and the next call-off is
        # offered to the first-ranked supplier again, skipping no one.
        reinstated = await tendering.post(
            f"{registrations[providers[0]]}:reinstate",
            {"reasons": [{"code": "CORRECTED", "message": "Arviointien viive korjattu; seuranta jatkuu."}]},
            tendering.admin(),
        )
        assert reinstated["state"] == "REGISTRATION_STATE_ADMITTED"
        await wait_for_suspended(tendering, framework_name, set())
        later = await tendering.post(f"{framework_name}/callOffs", call_off_body(12), tendering.admin())
        assert later["offeredTo"] == providers[0]
        assert later.get("skipped", []) == []
        accepted = await tendering.post(
            f"{later['name']}:accept", {}, tendering.headers(Role.PROVIDER, providers[0])
        )
        assert accepted["state"] == "CALL_OFF_STATE_ACCEPTED"

        exported = await tendering.get(f"{call['name']}:exportOcds")
        validate_packages(exported["releasePackageJson"], exported["recordPackageJson"])

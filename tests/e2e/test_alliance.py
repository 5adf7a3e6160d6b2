"""An alliance end to end through the gateway's HTTP API: a region and two municipalities tender
together, two consortia bid (each signed by all its members), one is selected through the
shortlist, workshop and price stages, the leadership group fixes the targets in the development
phase, and two contract periods close, one over its target cost and one under it; every party's
statement matches the table computed by hand below. Tendering runs on a test clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from services.tendering import alliance, sealing
from tests.e2e.flows import b64
from tests.e2e.test_tendering import Tendering, clocked_suite, rfc3339  # noqa: F401 - the fixture
from tests.tendering_ocds import validate_packages

pytestmark = pytest.mark.e2e

REGION = "pirkanmaa"
A1, A2, B1 = "1234561-2", "1234562-0", "1234563-9"
BUYERS = (
    (REGION, "50", "BUYER_KIND_REGION"),
    ("tampere", "30", "BUYER_KIND_MUNICIPALITY"),
    ("nokia", "20", "BUYER_KIND_MUNICIPALITY"),
)
D = Decimal

# Target cost p1 1 000 000.00, p2 1 200 000.00; fee 8 % of target (80 000.00, 96 000.00); incentive
# pool 50 000.00 a period, KPI weights 60/40; ratio 50/50; buyers 50/30/20 %, members 60/40 %.
# p1: actual 1 100 000.00 (overrun 100 000.00): providers -50 000.00 (within the fee), buyers
#     -50 000.00; only "employed" met: incentive 30 000.00.
#     buyer net = share x (target + fee + incentive) - its part of the buyers' part.
# p2: actual 1 099 999.99 (saving 100 000.01): providers' half 50 000.005 -> 50 000.00 (half-even),
#     buyers 50 000.01 (the odd cent to pirkanmaa, the largest remainder); both KPIs met: 50 000.00.
EXPECTED = {
    "p1": {
        REGION: ("550000.00", "40000.00", "15000.00", "-25000.00", "580000.00"),
        "tampere": ("330000.00", "24000.00", "9000.00", "-15000.00", "348000.00"),
        "nokia": ("220000.00", "16000.00", "6000.00", "-10000.00", "232000.00"),
        A1: ("700000.00", "48000.00", "18000.00", "-30000.00", "736000.00"),
        A2: ("400000.00", "32000.00", "12000.00", "-20000.00", "424000.00"),
    },
    "p2": {
        REGION: ("549999.99", "48000.00", "25000.00", "25000.01", "647999.99"),
        "tampere": ("330000.00", "28800.00", "15000.00", "15000.00", "388800.00"),
        "nokia": ("220000.00", "19200.00", "10000.00", "10000.00", "259200.00"),
        A1: ("600000.00", "57600.00", "30000.00", "30000.00", "717600.00"),
        A2: ("499999.99", "38400.00", "20000.00", "20000.00", "578399.99"),
    },
}


def money(amount: str) -> dict[str, Any]:
    units, _, fraction = amount.partition(".")
    return {"currencyCode": "EUR", "units": units, "nanos": int((fraction + "0" * 9)[:9])}


def amount(value: dict[str, Any] | None) -> Decimal:
    value = value or {}
    return (D(value.get("units", "0")) + D(value.get("nanos", 0)) / D(10**9)).quantize(D("0.01"))


def consortium_bid(
    alliance_name: str,
    name: str,
    members: list[tuple[str, str, str, bool]],
    *,
    keys: dict[str, Ed25519PrivateKey],
    fee: str,
    estimate: str,
) -> dict[str, Any]:
    ids = tuple(m[0] for m in members)
    document = alliance.Proposal(alliance_name, ids, f"{name}: our plan", D(fee), D(estimate)).encode()
    return {
        "consortium": name,
        "members": [
            {
                "businessId": b,
                "role": role,
                "publicKey": b64(sealing.raw_public(keys[b])),
                "share": share,
                "lead": lead,
            }
            for b, role, share, lead in members
        ],
        "document": b64(document),
        "signatures": [{"businessId": b, "signature": b64(keys[b].sign(document))} for b in ids],
    }


async def test_an_alliance_is_tendered_selected_and_runs_two_periods_with_statements_for_every_party(
    clocked_suite: tuple[LocalSuite, Path],  # noqa: F811 - pytest's fixture
) -> None:
    suite, clock_file = clocked_suite
    keys = {b: Ed25519PrivateKey.generate() for b in (A1, A2, B1)}
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=15.0) as client:
        api = Tendering(suite, client, clock_file)
        admin = api.admin()
        now = datetime.now(UTC)
        body: dict[str, Any] = {
            "title": "Pirkanmaan kasvuallianssi",
            "service": "recruitment",
            "description": "The region's growth services and two municipalities' vitality tasks together.",
            "buyers": [
                {
                    "organisation": org,
                    "costShare": share,
                    "lead": org == REGION,
                    "kind": kind,
                    "tasks": ["growth"],
                }
                for org, share, kind in BUYERS
            ],
            "bidDeadline": rfc3339(now + timedelta(days=1)),
            "qualityWeight": "70",
        }
        uneven = await client.post(
            f"/v1/regions/{REGION}/alliances",
            json={**body, "buyers": [{**b, "costShare": "10"} for b in body["buyers"]]},
            headers=admin,
        )
        assert uneven.status_code == 400 and "cost shares must sum to 100 %" in uneven.text
        tendered = await api.post(f"regions/{REGION}/alliances", body, admin)
        name = tendered["name"]
        assert tendered["stage"] == "ALLIANCE_STAGE_QUALITATIVE"

        x = consortium_bid(
            name,
            "Kasvu-konsortio",
            [(A1, "lead", "60", True), (A2, "training", "40", False)],
            keys=keys,
            fee="8",
            estimate="2000000.00",
        )
        y = consortium_bid(
            name, "Yksin Oy", [(B1, "all", "100", True)], keys=keys, fee="5", estimate="2100000.00"
        )
        # Every member signs with a key it enrolled; A2's not yet enrolled refuses the bid.
        await api.enrol(A1, keys[A1])
        await api.enrol(B1, keys[B1])
        unenrolled = await client.post(f"/v1/{name}/bids", json=x, headers=api.headers(Role.PROVIDER, A1))
        assert unenrolled.status_code == 400 and "BIDDER_KEY_NOT_ENROLLED" in unenrolled.text
        await api.enrol(A2, keys[A2])
        unsigned = {**x, "signatures": x["signatures"][:1]}
        refused = await client.post(f"/v1/{name}/bids", json=unsigned, headers=api.headers(Role.PROVIDER, A1))
        assert refused.status_code == 400 and f"member {A2} has not signed the bid" in refused.text
        bid_x = await api.post(f"{name}/bids", x, api.headers(Role.PROVIDER, A1))
        bid_y = await api.post(f"{name}/bids", y, api.headers(Role.PROVIDER, B1))

        early = await client.get(f"/v1/{name}/bids", headers=admin)
        assert early.status_code == 403, early.text  # no buyer reads a bid before the deadline
        own = await api.get(f"{name}/bids", api.headers(Role.PROVIDER, A2))
        assert [b["name"] for b in own["bids"]] == [bid_x["name"]]
        api.advance(timedelta(days=1, minutes=1))  # the bid deadline passes
        listed = await api.get(f"{name}/bids", api.headers(Role.REGION_ADMIN, "tampere"))
        assert [b["name"] for b in listed["bids"]] == [bid_x["name"], bid_y["name"]]
        await api.post(
            f"{name}:shortlist",
            {"bids": [bid_x["name"], bid_y["name"]], "reasons": "Both meet the minimum."},
            admin,
        )
        scores = [{"bid": bid_x["name"], "score": "90"}, {"bid": bid_y["name"], "score": "60"}]
        await api.post(f"{name}:scoreWorkshops", {"scores": scores, "reasons": "Panel scores."}, admin)
        selected = await api.post(f"{name}:select", {"reasons": "Best workshop and price points."}, admin)
        assert selected["selected"] == bid_x["name"]
        assert selected["stage"] == "ALLIANCE_STAGE_DEVELOPMENT"
        parties = [REGION, "tampere", "nokia", A1, A2]
        assert selected["parties"] == parties

        kpis = [
            {
                "code": "employed",
                "resultArea": "employment",
                "description": "Employed in 6 months, %",
                "target": "60",
                "weight": "60",
                "higherIsBetter": True,
            },
            {
                "code": "satisfaction",
                "resultArea": "customers",
                "description": "Satisfaction 1-5",
                "target": "4",
                "weight": "40",
                "higherIsBetter": True,
            },
        ]
        periods = [
            {
                "period": "p1",
                "start": {"year": 2027, "month": 1, "day": 1},
                "end": {"year": 2028, "month": 12, "day": 31},
                "targetCost": money("1000000.00"),
                "incentivePool": money("50000.00"),
            },
            {
                "period": "p2",
                "start": {"year": 2029, "month": 1, "day": 1},
                "end": {"year": 2030, "month": 12, "day": 31},
                "targetCost": money("1200000.00"),
                "incentivePool": money("50000.00"),
            },
        ]
        targets = {
            "kind": "DECISION_KIND_FIX_TARGETS",
            "approvals": parties,
            "reasons": "Fixed together.",
            "goals": ["More jobs"],
            "kpis": kpis,
            "periods": periods,
        }
        not_unanimous = await client.post(
            f"/v1/{name}:decide", json={"decision": {**targets, "approvals": parties[:-1]}}, headers=admin
        )
        assert not_unanimous.status_code == 400 and f"{A2} has not approved" in not_unanimous.text
        await api.post(f"{name}:decide", {"decision": targets}, admin)
        start = {"kind": "DECISION_KIND_START_IMPLEMENTATION", "approvals": parties, "reasons": "Ready."}
        await api.post(f"{name}:decide", {"decision": start}, admin)

        costs = {"p1": ((A1, "700000.00"), (A2, "400000.00")), "p2": ((A1, "600000.00"), (A2, "499999.99"))}
        results = {"p1": ("65", "3.9"), "p2": ("61", "4.2")}
        for period in ("p1", "p2"):
            for member, value in costs[period]:
                cost = {"period": period, "amount": money(value), "description": "Coaching and training"}
                await api.post(f"{name}/costs", cost, api.headers(Role.PROVIDER, member))
            employed, satisfaction = results[period]
            kpi_results = [
                {"code": "employed", "value": employed},
                {"code": "satisfaction", "value": satisfaction},
            ]
            await api.post(f"{name}/periods/{period}:close", {"kpiResults": kpi_results}, admin)
        again = await client.post(
            f"/v1/{name}/periods/p1:close", json={"kpiResults": kpi_results}, headers=admin
        )
        assert again.status_code == 400 and "closed already" in again.text

        for period, expected in EXPECTED.items():
            closing = await api.get(f"{name}/periods/{period}", api.headers(Role.REGION_ADMIN, "nokia"))
            table = {
                s["party"]: tuple(
                    str(amount(s.get(k))) for k in ("costs", "fee", "incentive", "painGain", "net")
                )
                for s in closing["statements"]
            }
            assert table == expected, period
        p1 = await api.get(f"{name}/periods/p1", api.headers(Role.PROVIDER, A2))
        assert (amount(p1["providersPart"]), amount(p1["buyersPart"])) == (D("-50000.00"), D("-50000.00"))

        exported = await api.get(f"{name}:exportOcds", admin)
        validate_packages(exported["releasePackageJson"], exported["recordPackageJson"])

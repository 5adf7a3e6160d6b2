"""OCDS 1.1 export of an alliance, on tendering's OCDS helpers (ocds.py): several buyers as
parties with the "buyer" role (the lead one also the release's `buyer` and the procuring
entity), and the selected consortium's members as the award's suppliers.

Releases: "tender" when tendered; "award" at the selection; "contract" when implementation
starts; "contractAmendment" for each new buyer joining by amendment.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from services.tendering import alliance, ocds


def _buyer_party(buyer: alliance.JointBuyer) -> dict[str, Any]:
    roles = ["buyer", "procuringEntity"] if buyer.lead else ["buyer"]
    return {
        "id": f"kasvu-{buyer.kind.value.lower()}-{buyer.organisation}",
        "name": buyer.organisation,
        "roles": roles,
        "details": {"costSharePercent": str(buyer.cost_share), "tasks": list(buyer.tasks)},
    }


def _member_party(member: alliance.Member, consortium: str) -> dict[str, Any]:
    return {
        **ocds._party(member.business_id),
        "details": {"consortium": consortium, "role": member.role, "lead": member.lead},
    }


def _reference(party: dict[str, Any]) -> dict[str, Any]:
    return {"id": party["id"], "name": party["name"]}


def packages(found: alliance.Alliance) -> tuple[str, str]:
    """(release package JSON, record package JSON) of the alliance's one process."""
    buyers = [_buyer_party(b) for b in found.buyers]
    lead = next(p for p in buyers if "procuringEntity" in p["roles"])
    tender: dict[str, Any] = {
        "id": found.id,
        "title": found.spec.title,
        "description": found.spec.description,
        "status": "active" if found.stage == alliance.Stage.QUALITATIVE else "complete",
        "procuringEntity": _reference(lead),
        "procurementMethod": "selective",
        "procurementMethodDetails": "Alliance: qualitative tender, shortlist, workshops, price components",
        "mainProcurementCategory": "services",
        "awardCriteria": "ratedCriteria",
        "tenderPeriod": {
            "startDate": ocds._time(found.created_at),
            "endDate": ocds._time(found.spec.bid_deadline),
        },
    }
    body: dict[str, Any] = {"buyer": _reference(lead), "tender": tender}
    releases = [ocds._release(found.id, 1, "tender", found.created_at, buyers, body)]
    winner = found.winner
    if winner is not None:
        members = [_member_party(m, winner.consortium) for m in winner.members]
        selection = found.stages[-1] if found.stages else None
        award = {
            "id": f"{found.id}-award",
            "title": winner.consortium,
            "description": selection.reasons if selection else "",
            "status": "active",
            "date": ocds._time(selection.decided_at) if selection else None,
            "value": {"amount": ocds._amount(winner.proposal.cost_estimate), "currency": "EUR"},
            "suppliers": [_reference(p) for p in members],
        }
        tender = {**tender, "numberOfTenderers": len(found.bids)}
        moment = selection.decided_at if selection else found.updated_at
        body = {"buyer": _reference(lead), "tender": tender, "awards": [award]}
        releases.append(ocds._release(found.id, 2, "award", moment, [*buyers, *members], body))
        if found.stage == alliance.Stage.IMPLEMENTATION:
            total = sum((p.target_cost for p in found.periods), Decimal(0))
            contract: dict[str, Any] = {
                "id": f"{found.id}-agreement",
                "awardID": award["id"],
                "title": found.spec.title,
                "status": "active",
                "value": {"amount": ocds._amount(total), "currency": "EUR"},
            }
            admissions = [d for d in found.decisions if d.kind == alliance.DecisionKind.ADMIT_BUYER]
            if admissions:
                contract["amendments"] = [
                    {"id": str(n), "date": ocds._time(d.decided_at), "rationale": d.reasons}
                    for n, d in enumerate(admissions, start=1)
                    if d.decided_at is not None
                ]
            tag = "contractAmendment" if admissions else "contract"
            body = {**body, "contracts": [contract]}
            releases.append(ocds._release(found.id, 3, tag, found.updated_at, [*buyers, *members], body))
    common = {
        "uri": f"{ocds.BASE_URI}/{found.region}/alliances/{found.id}",
        "version": ocds.VERSION,
        "publisher": ocds.PUBLISHER,
        "publishedDate": releases[-1]["date"],
    }
    release_package = {**common, "releases": releases}
    record_package = {**common, "records": [ocds._record(found.id, releases)]}
    return json.dumps(release_package, ensure_ascii=False), json.dumps(record_package, ensure_ascii=False)

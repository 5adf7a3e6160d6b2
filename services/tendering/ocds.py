"""Open Contracting Data Standard 1.1 export: release and record packages for a call and, as
their own processes linked back by `relatedProcesses`, its framework's call-offs.

Releases: one "tender" release at publication, one "tenderAmendment" per amendment, a
"tenderCancellation" when cancelled, "award" at the award decision, "awardUpdate" when the
decision is served to the bidders (the tender's standstillPeriod from then to the end of its
last day), "contract" at conclusion. Records: per process its releases (embedded) and a
compiled release of its current state. Lots are tender items (one per lot, CPV-classified), so
the core schema suffices without extensions. Bidders appear by business ID (scheme FI-PRO),
never by person.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from services.runtime.domain import FINLAND
from services.tendering import model

OCID_PREFIX = "ocds-kvs001"
"""A placeholder prefix until the operator registers one with the Open Contracting Partnership."""
VERSION = "1.1"
PUBLISHER = {"name": "Kasvu tendering"}
BASE_URI = "https://kasvu.example/ocds"


def ocid(process_id: str) -> str:
    return f"{OCID_PREFIX}-{process_id}"


def _amount(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _time(moment: datetime) -> str:
    return moment.isoformat()


def _party(business_id: str) -> dict[str, Any]:
    return {
        "id": f"FI-PRO-{business_id}",
        "name": business_id,
        "identifier": {"scheme": "FI-PRO", "id": business_id},
        "roles": ["supplier", "tenderer"],
    }


def _buyer(call: model.Call) -> dict[str, Any]:
    return {"id": f"kasvu-region-{call.region}", "name": call.region}


def _tender(call: model.Call, status: str) -> dict[str, Any]:
    spec = call.spec
    total = sum((lot.estimated_value for lot in spec.lots), Decimal(0))
    tender: dict[str, Any] = {
        "id": call.id,
        "title": spec.title,
        "status": status,
        "procuringEntity": _buyer(call),
        "items": [
            {
                "id": lot.lot,
                "description": lot.title,
                "classification": {"scheme": "CPV", "id": lot.cpv_codes[0]},
                "additionalClassifications": [{"scheme": "CPV", "id": code} for code in lot.cpv_codes[1:]],
            }
            for lot in spec.lots
        ],
        "value": {"amount": _amount(total), "currency": "EUR"},
        "procurementMethod": "open",
        "mainProcurementCategory": "services",
        "awardCriteria": "ratedCriteria",
        "awardCriteriaDetails": "; ".join(f"{c.code} {c.weight}" for c in spec.criteria),
        "submissionMethod": ["electronicSubmission"],
        "tenderPeriod": {"endDate": _time(spec.submission_deadline)},
        "enquiryPeriod": {"endDate": _time(spec.questions_deadline)},
        "hasEnquiries": bool(call.clarifications),
    }
    if call.published_at is not None:
        tender["tenderPeriod"]["startDate"] = _time(call.published_at)
        tender["enquiryPeriod"]["startDate"] = _time(call.published_at)
    if call.scores:
        tender["numberOfTenderers"] = len({s.bidder for s in call.scores})
        tender["tenderers"] = [
            {"id": f"FI-PRO-{b}", "name": b} for b in sorted({s.bidder for s in call.scores})
        ]
    if call.amendment:
        tender["amendments"] = [
            {"id": str(number), "date": _time(moment), "rationale": "The call's terms were amended."}
            for number, moment in enumerate(call.amended_at, start=1)
        ]
    return tender


def _served_tender(call: model.Call) -> dict[str, Any]:
    """The tender once the award decision is served: its standstill period is known."""
    tender = _tender(call, "complete")
    if call.served_at is not None and call.standstill_end is not None:
        last_moment = datetime.combine(call.standstill_end, time(23, 59, 59), tzinfo=FINLAND)
        tender["standstillPeriod"] = {"startDate": _time(call.served_at), "endDate": _time(last_moment)}
    return tender


def _release(  # noqa: PLR0917 - the parts of every release
    process: str,
    number: int,
    tag: str,
    moment: datetime,
    parties: Sequence[dict[str, Any]],
    body: dict[str, Any],
) -> dict[str, Any]:
    return {
        "ocid": ocid(process),
        "id": f"{ocid(process)}-{number:02d}-{tag}",
        "date": _time(moment),
        "tag": [tag],
        "initiationType": "tender",
        "language": "fi",
        "parties": list(parties),
        **body,
    }


def _call_releases(call: model.Call, framework: model.Framework | None) -> list[dict[str, Any]]:
    releases = _process_releases(call, framework)
    if call.spec.parent_framework:
        # A mini-competition is a call-off: its own process, pointing at its framework.
        for release in releases:
            release["relatedProcesses"] = [_framework_link(call.spec.title, call.spec.parent_framework)]
    return releases


def _framework_link(title: str, framework_call_id: str) -> dict[str, Any]:
    return {
        "id": "1",
        "relationship": ["framework"],
        "title": title,
        "scheme": "ocid",
        "identifier": ocid(framework_call_id),
    }


def _process_releases(call: model.Call, framework: model.Framework | None) -> list[dict[str, Any]]:
    buyer = {**_buyer(call), "roles": ["buyer", "procuringEntity"]}
    releases: list[dict[str, Any]] = []
    if call.published_at is None:
        return releases
    first = _tender(call, "active")
    first.pop("amendments", None)
    releases.append(
        _release(call.id, 1, "tender", call.published_at, [buyer], {"buyer": _buyer(call), "tender": first})
    )
    for number, moment in enumerate(call.amended_at, start=1):
        releases.append(
            _release(
                call.id,
                1 + number,
                "tenderAmendment",
                moment,
                [buyer],
                {"buyer": _buyer(call), "tender": _tender(call, "active")},
            )
        )
    n = len(releases)
    if call.state in (model.CallState.CANCELLED, model.CallState.UNSUCCESSFUL):
        status = "cancelled" if call.state == model.CallState.CANCELLED else "unsuccessful"
        tender = {**_tender(call, status), "statusDetails": call.end_reason}
        releases.append(
            _release(
                call.id,
                n + 1,
                "tenderCancellation",
                call.updated_at,
                [buyer],
                {"buyer": _buyer(call), "tender": tender},
            )
        )
        return releases
    if call.awarded_at is not None:
        winners = call.winners()
        parties = [buyer, *(_party(b) for b in sorted({w.bidder for w in winners}))]
        releases.append(
            _release(
                call.id,
                n + 1,
                "award",
                call.awarded_at,
                parties,
                {
                    "buyer": _buyer(call),
                    "tender": _tender(call, "complete"),
                    "awards": _awards(call, "pending"),
                },
            )
        )
        if call.served_at is not None:
            releases.append(
                _release(
                    call.id,
                    len(releases) + 1,
                    "awardUpdate",
                    call.served_at,
                    parties,
                    {
                        "buyer": _buyer(call),
                        "tender": _served_tender(call),
                        "awards": _awards(call, "pending"),
                    },
                )
            )
    if framework is not None:
        parties = [buyer, *(_party(s) for s in sorted({s.business_id for s in framework.suppliers}))]
        contracts = [
            {
                "id": f"{framework.id}-{lot.lot}",
                "awardID": f"{call.id}-{lot.lot}",
                "title": f"{call.spec.title}: {lot.title}",
                "status": "active",
                "period": {
                    "startDate": f"{framework.start.isoformat()}T00:00:00+02:00",
                    "endDate": f"{framework.end.isoformat()}T23:59:59+02:00",
                },
            }
            for lot in call.spec.lots
            if framework.ranked(lot.lot)
        ]
        releases.append(
            _release(
                call.id,
                len(releases) + 1,
                "contract",
                framework.created_at,
                parties,
                {
                    "buyer": _buyer(call),
                    "tender": _served_tender(call),
                    "awards": _awards(call, "active"),
                    "contracts": contracts,
                },
            )
        )
    return releases


def _awards(call: model.Call, status: str) -> list[dict[str, Any]]:
    awards = []
    for lot in call.spec.lots:
        winners = [w for w in call.winners() if w.lot == lot.lot]
        if not winners:
            continue
        awards.append(
            {
                "id": f"{call.id}-{lot.lot}",
                "title": lot.title,
                "description": call.award_reasons,
                "status": status,
                "date": _time(call.awarded_at) if call.awarded_at else None,
                "value": {"amount": _amount(min(w.price for w in winners)), "currency": "EUR"},
                "suppliers": [{"id": f"FI-PRO-{w.bidder}", "name": w.bidder} for w in winners],
                "items": [
                    {
                        "id": lot.lot,
                        "description": lot.title,
                        "classification": {"scheme": "CPV", "id": lot.cpv_codes[0]},
                    }
                ],
            }
        )
    return awards


def _call_off_release(
    call: model.Call, framework: model.Framework, call_off: model.CallOff
) -> dict[str, Any]:
    buyer = {**_buyer(call), "roles": ["buyer", "procuringEntity"]}
    parties = [buyer]
    body: dict[str, Any] = {
        "buyer": _buyer(call),
        "relatedProcesses": [_framework_link(call.spec.title, call.id)],
        "tender": {
            "id": call_off.id,
            "title": call_off.description,
            "status": "complete" if call_off.state == model.CallOffState.ACCEPTED else "active",
            "value": {"amount": _amount(call_off.value), "currency": "EUR"},
            "procurementMethod": "limited",
            "procurementMethodDetails": "Call-off from a framework agreement by ranking order",
            "mainProcurementCategory": "services",
        },
    }
    tag = "tender"
    if call_off.state == model.CallOffState.ACCEPTED:
        parties.append(_party(call_off.offered_to))
        award_id = f"{call_off.id}-award"
        body["awards"] = [
            {
                "id": award_id,
                "status": "active",
                "date": _time(call_off.updated_at),
                "value": {"amount": _amount(call_off.value), "currency": "EUR"},
                "suppliers": [{"id": f"FI-PRO-{call_off.offered_to}", "name": call_off.offered_to}],
            }
        ]
        body["contracts"] = [{"id": f"{call_off.id}-contract", "awardID": award_id, "status": "active"}]
        tag = "contract"
    elif call_off.state == model.CallOffState.FAILED:
        body["tender"]["status"] = "unsuccessful"
        tag = "tenderCancellation"
    return _release(call_off.id, 1, tag, call_off.updated_at, parties, body)


def _record(process: str, releases: list[dict[str, Any]]) -> dict[str, Any]:
    compiled = {**releases[-1], "id": f"{ocid(process)}-compiled", "tag": ["compiled"]}
    return {"ocid": ocid(process), "releases": releases, "compiledRelease": compiled}


def packages(
    call: model.Call, framework: model.Framework | None, call_offs: Sequence[model.CallOff]
) -> tuple[str, str]:
    """(release package JSON, record package JSON) for the call and its call-offs."""
    processes: list[tuple[str, list[dict[str, Any]]]] = [(call.id, _call_releases(call, framework))]
    if framework is not None:
        processes.extend((c.id, [_call_off_release(call, framework, c)]) for c in call_offs)
    processes = [(process, releases) for process, releases in processes if releases]
    all_releases = [release for _, releases in processes for release in releases]
    published = max((r["date"] for r in all_releases), default=_time(call.updated_at))
    common = {
        "uri": f"{BASE_URI}/{call.region}/{call.id}",
        "version": VERSION,
        "publisher": PUBLISHER,
        "publishedDate": published,
    }
    release_package = {**common, "releases": all_releases}
    record_package = {**common, "records": [_record(process, releases) for process, releases in processes]}
    return json.dumps(release_package, ensure_ascii=False), json.dumps(record_package, ensure_ascii=False)

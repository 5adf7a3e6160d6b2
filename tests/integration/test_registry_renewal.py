# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""Renewing the evidence behind an admission over gRPC against real SQLite and PostgreSQL: the
expiry and reminder timers move, the event and the audit record are written, and a renewal past
its age, or by anyone but the provider, is refused with nothing stored."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import grpc
from kasvu.registry.v1 import events_pb2, registry_pb2
from sqlalchemy import text

from tests.integration.helpers import count_rows, error_reason, field_violations, issued, proto_date
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    REGION,
    START,
    Registry,
    next_business_id,
    payloads,
    refused,
    registry,
)

FINLAND = ZoneInfo("Europe/Helsinki")
VALID_DAYS = 100


def certificate() -> registry_pb2.Requirement:
    return registry_pb2.Requirement(
        code="tax-certificate",
        description="Tax debt certificate",
        kind=registry_pb2.REQUIREMENT_KIND_DOCUMENT,
        max_age_days=90,
        valid_days=VALID_DAYS,
    )


def expiry_of(issued_on: date) -> datetime:
    return datetime.combine(issued_on + timedelta(days=VALID_DAYS), time(0), FINLAND)


async def admitted(registry: Registry, business_id: str) -> registry_pb2.Registration:
    terms = await registry.publish(certificate())
    issued_on = START.date() - timedelta(days=10)
    registration = await registry.register(
        terms, business_id, evidence=[issued("tax-certificate", issued_on)]
    )
    assert registration.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    return registration


async def renew(
    registry: Registry, registration: registry_pb2.Registration, issued_on: date, business_id: str = ""
) -> registry_pb2.Registration:
    return await registry.stub.RenewEvidence(
        registry_pb2.RenewEvidenceRequest(
            name=registration.name,
            evidence=registry_pb2.Evidence(
                requirement_code="tax-certificate", issued_on=proto_date(issued_on)
            ),
        ),
        metadata=registry.tokens.provider(business_id or registration.business_id),
    )


async def timer_due(registry: Registry, kind: str, registration: registry_pb2.Registration) -> datetime:
    key = f"registry:{kind}:{registration.name.rsplit('/', 1)[1]}"
    async with registry.db.reader.connect() as connection:
        due = (
            await connection.execute(
                text("SELECT due_at FROM timers WHERE key = :key AND fired_at IS NULL"), {"key": key}
            )
        ).scalar_one()
    moment = due if isinstance(due, datetime) else datetime.fromisoformat(due)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def test_a_renewal_before_expiry_moves_the_lapse_and_the_reminder_and_the_admission_stands(
    registry, next_business_id
):
    registration = await admitted(registry, next_business_id())
    first_expiry = expiry_of(START.date() - timedelta(days=10))
    assert await timer_due(registry, "evidence", registration) == first_expiry

    registry.clock.advance(timedelta(days=40))
    renewed_on = (START + timedelta(days=40)).date()
    renewed = await renew(registry, registration, renewed_on)

    new_expiry = expiry_of(renewed_on)
    assert await timer_due(registry, "evidence", registration) == new_expiry
    assert await timer_due(registry, "evidence-reminder", registration) == new_expiry - timedelta(days=30)
    assert [(e.requirement_code, e.issued_on.day) for e in renewed.evidence] == [
        ("tax-certificate", renewed_on.day)
    ]
    decision = renewed.decisions[-1]
    assert (decision.kind, decision.state) == ("EVIDENCE_RENEWAL", registry_pb2.REGISTRATION_STATE_ADMITTED)
    assert decision.actor.startswith(f"provider:{registration.business_id}:")

    # Past the first document's expiry and its old reminder: nothing lapses, nothing reminds.
    registry.clock.set(first_expiry + timedelta(days=1))
    await registry.run_timers()
    assert await registry.state(registration) == "ADMITTED"
    assert await payloads(registry.db, "EvidenceRenewalDue") == []

    registry.clock.set(new_expiry - timedelta(days=29))
    await registry.run_timers()
    [reminder] = await payloads(registry.db, "EvidenceRenewalDue")
    assert events_pb2.EvidenceRenewalDue.FromString(reminder).expire_time.ToDatetime(UTC) == new_expiry
    registry.clock.set(new_expiry)
    await registry.run_timers()
    assert await registry.state(registration) == "LAPSED"


async def test_a_renewal_writes_its_event_of_identifiers_and_an_audit_record_naming_its_decision(
    registry, next_business_id
):
    registration = await admitted(registry, next_business_id())
    registry.clock.advance(timedelta(days=5))
    renewed_on = (START + timedelta(days=5)).date()
    await renew(registry, registration, renewed_on)

    [payload] = await payloads(registry.db, "EvidenceRenewed")
    event = events_pb2.EvidenceRenewed.FromString(payload)
    assert (
        event.registration,
        event.region,
        event.business_id,
        event.requirement_code,
        event.expire_time.ToDatetime(UTC),
        event.renew_time.ToDatetime(UTC),
    ) == (
        registration.name,
        REGION,
        registration.business_id,
        "tax-certificate",
        expiry_of(renewed_on),
        START + timedelta(days=5),
    )
    assert {d.name for d, _ in event.ListFields()} == {
        "registration",
        "terms",
        "region",
        "service",
        "business_id",
        "requirement_code",
        "expire_time",
        "renew_time",
    }
    async with registry.db.reader.connect() as connection:
        command, actor, resources, events = (
            await connection.execute(
                text("SELECT command, actor, resources, events FROM audit_log ORDER BY seq DESC LIMIT 1")
            )
        ).one()
    assert command == "RenewEvidence"
    assert actor.startswith(f"provider:{registration.business_id}:")
    registration_id = registration.name.rsplit("/", 1)[1]
    assert registration.name in json.loads(resources)
    assert any(r.startswith(f"decision:{registration_id}:1:") for r in json.loads(resources))
    # The event, and the expiry and reminder timers it moved.
    assert [kind for _, kind, _ in json.loads(events)] == [
        "kasvu.registry.v1.EvidenceRenewed",
        "timer.set",
        "timer.set",
    ]


async def test_a_renewal_past_its_age_from_the_future_or_by_another_provider_is_refused_and_nothing_stored(
    registry, next_business_id
):
    registration = await admitted(registry, next_business_id())
    registry.clock.advance(timedelta(days=60))
    tables = ("outbox", "audit_log", "idempotency_keys")
    before = [await count_rows(registry.db, table) for table in tables]
    timers = await timer_due(registry, "evidence", registration)

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as too_old:
        await renew(registry, registration, (START + timedelta(days=60)).date() - timedelta(days=91))
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as future:
        await renew(registry, registration, (START + timedelta(days=61)).date())
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as not_newer:
        await renew(registry, registration, START.date() - timedelta(days=10))
    async with refused(grpc.StatusCode.PERMISSION_DENIED) as stranger:
        await renew(registry, registration, START.date(), business_id=next_business_id())

    assert (error_reason(too_old[0]), field_violations(too_old[0])) == (
        "EVIDENCE_TOO_OLD",
        ["evidence.issued_on"],
    )
    assert "at most 90 days" in (too_old[0].details() or "")
    assert (error_reason(future[0]), field_violations(future[0])) == (
        "EVIDENCE_FROM_FUTURE",
        ["evidence.issued_on"],
    )
    assert error_reason(not_newer[0]) == "EVIDENCE_NOT_NEWER"
    assert error_reason(stranger[0]) == "TENANT_MISMATCH"
    assert [await count_rows(registry.db, table) for table in tables] == before
    assert await timer_due(registry, "evidence", registration) == timers
    kept = await registry.get(registration)
    assert [d.kind for d in kept.decisions] == ["ADMISSION"]

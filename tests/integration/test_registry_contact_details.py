# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""A provider's contact details over gRPC against real SQLite and PostgreSQL: set and changed by
the provider alone, idempotently, with an audit record and an event that name the provider only;
read by the provider and by the admins of the regions where it has registered; bad input refused
by field with nothing stored; and the details themselves in no event, audit record, log line or
public list."""

from __future__ import annotations

import json
import logging
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from kasvu.registry.v1 import events_pb2, registry_pb2
from sqlalchemy import text

from services.runtime.db import Database
from tests.integration.helpers import count_rows, error_reason, field_violations
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    REGION,
    Registry,
    next_business_id,
    payloads,
    refused,
    registry,
)

PERSON, EMAIL, PHONE = "Maija Meikäläinen", "maija.meikalainen@tyopolku.fi", "+358 40 765 4321"
STORED_PHONE = "+358407654321"
NEW_PHONE = "+358501112223"
PRIVATE = ("Meikäläinen", "meikalainen", "tyopolku", "407654321", "501112223")
"""Fragments of the details given in these tests: none may show outside their own table."""
TABLES = ("registry_contact_details", "outbox", "audit_log", "idempotency_keys")
EVENT_TYPE = "kasvu.registry.v1.ProviderContactDetailsChanged"


def contact_name(business_id: str) -> str:
    return f"providers/{business_id}/contactDetails"


async def update(
    registry: Registry,
    business_id: str,
    *,
    paths: tuple[str, ...] = (),
    metadata: Any = None,
    request_id: str = "",
    name: str = "",
    **fields: str,
) -> registry_pb2.ContactDetails:
    given = registry_pb2.ContactDetails(name=name or contact_name(business_id))
    for field, value in (fields or {"contact_person": PERSON, "email": EMAIL, "phone": PHONE}).items():
        setattr(given, field, value)
    request = registry_pb2.UpdateContactDetailsRequest(contact_details=given, request_id=request_id)
    if paths:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return await registry.stub.UpdateContactDetails(
        request, metadata=registry.tokens.provider(business_id) if metadata is None else metadata
    )


async def get(registry: Registry, business_id: str, metadata: Any) -> registry_pb2.ContactDetails:
    return await registry.stub.GetContactDetails(
        registry_pb2.GetContactDetailsRequest(name=contact_name(business_id)), metadata=metadata
    )


async def rows(registry: Registry) -> list[int]:
    return [await count_rows(registry.db, table) for table in TABLES]


async def text_of(db: Database, table: str) -> str:
    """Every column of every row of `table`, as text, payload bytes decoded leniently."""
    async with db.reader.connect() as connection:
        found = (await connection.execute(text(f"SELECT * FROM {table}"))).all()
    return "\n".join(
        " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
        for row in found
    )


def leaked(haystack: str) -> list[str]:
    return [fragment for fragment in PRIVATE if fragment.lower() in haystack.lower()]


async def registered(registry: Registry, business_id: str) -> registry_pb2.Registration:
    return await registry.register(await registry.publish(), business_id)


async def test_a_provider_sets_and_changes_its_contact_details_with_an_audited_event_of_identifiers_only(
    registry, next_business_id, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    business_id = next_business_id()
    await registered(registry, business_id)
    name = contact_name(business_id)

    first = await update(registry, business_id, request_id="contact-1")
    assert (first.name, first.contact_person, first.email, first.phone) == (name, PERSON, EMAIL, STORED_PHONE)
    assert first.update_time.ToDatetime(UTC) == registry.clock.now()
    assert await get(registry, business_id, registry.tokens.provider(business_id)) == first
    after_first = await rows(registry)

    # A retry answers the first result; the same details under a new key change nothing: neither
    # writes an event or an audit record.
    assert await update(registry, business_id, request_id="contact-1") == first
    registry.clock.advance(timedelta(hours=1))
    assert await update(registry, business_id, request_id="contact-2") == first
    assert await update(registry, business_id) == first
    assert await rows(registry) == [*after_first[:3], after_first[3] + 1]  # only the second key's answer

    # Only the field the mask names changes.
    changed = await update(registry, business_id, paths=("phone",), phone=NEW_PHONE, email="ignored@x.fi")
    assert (changed.contact_person, changed.email, changed.phone) == (PERSON, EMAIL, NEW_PHONE)
    assert changed.update_time.ToDatetime() > first.update_time.ToDatetime()

    # Two events, two audit records: identifiers only, on a subject that ends in the provider.
    events = [
        events_pb2.ProviderContactDetailsChanged.FromString(p)
        for p in await payloads(registry.db, "ProviderContactDetailsChanged")
    ]
    assert [(e.contact_details, e.business_id) for e in events] == [(name, business_id)] * 2
    assert {d.name for d, _ in events[0].ListFields()} == {"contact_details", "business_id", "change_time"}
    async with registry.db.reader.connect() as connection:
        outbox = (
            await connection.execute(
                text("SELECT subject, headers FROM outbox WHERE event_type = :type"), {"type": EVENT_TYPE}
            )
        ).all()
        audited = (
            await connection.execute(
                text("SELECT actor, resources, events FROM audit_log WHERE command = :c ORDER BY seq"),
                {"c": "UpdateContactDetails"},
            )
        ).all()
    assert {subject for subject, _ in outbox} == {f"{EVENT_TYPE}.{business_id}"}
    assert all(json.loads(headers)["Kasvu-Event-Type"] == EVENT_TYPE for _, headers in outbox)
    assert len(audited) == 2
    for actor, resources, audited_events in audited:
        assert actor.startswith(f"provider:{business_id}:")
        assert json.loads(resources) == [name]
        assert [kind for _, kind, _ in json.loads(audited_events)] == [EVENT_TYPE]

    # The details are in their own table and nowhere else: no event, header, audit record, log
    # line or public list holds any part of them.
    assert leaked(await text_of(registry.db, "registry_contact_details"))
    tables = ("outbox", "audit_log", "idempotency_keys", "registry_registrations", "registry_listings")
    for table in (*tables, "inbox", "timers"):
        assert leaked(await text_of(registry.db, table)) == [], table
    assert leaked(caplog.text) == []
    assert leaked(" ".join(str(vars(r)) for r in caplog.records)) == []
    listed = await registry.stub.ListProviders(
        registry_pb2.ListProvidersRequest(parent=f"regions/{REGION}/services/recruitment")
    )
    assert [p.business_id for p in listed.providers] == [business_id]
    assert leaked(str(listed)) == []


async def test_contact_details_are_read_by_the_provider_and_the_admins_of_its_regions_only(
    registry, next_business_id
):
    business_id, other = next_business_id(), next_business_id()
    registration = await registered(registry, business_id)
    tokens = registry.tokens

    # Never given: the provider and its region's admin hear so; anyone else is refused first.
    async with refused(grpc.StatusCode.NOT_FOUND) as missing:
        await get(registry, business_id, tokens.provider(business_id))
    assert error_reason(missing[0]) == "CONTACT_DETAILS_NOT_FOUND"
    async with refused(grpc.StatusCode.NOT_FOUND):
        await get(registry, business_id, tokens.admin(REGION))
    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await get(registry, business_id, tokens.provider(other))

    given = await update(registry, business_id)
    assert await get(registry, business_id, tokens.provider(business_id)) == given
    assert await get(registry, business_id, tokens.admin(REGION)) == given

    for stranger in (
        tokens.provider(other),
        tokens.admin("lappi"),  # a region where it has not registered
        tokens.supervisor(REGION),  # the region's admin reads them, not its supervisors
    ):
        async with refused(grpc.StatusCode.PERMISSION_DENIED) as denied:
            await get(registry, business_id, stranger)
        assert error_reason(denied[0]) == "TENANT_MISMATCH"
        # The refusal names neither the details nor where the provider has registered.
        assert REGION not in (denied[0].details() or "")
        assert leaked(denied[0].details() or "") == []
    async with refused(grpc.StatusCode.UNAUTHENTICATED):
        await registry.stub.GetContactDetails(
            registry_pb2.GetContactDetailsRequest(name=contact_name(business_id))
        )

    # Only the provider changes them: not its region's admin, not another provider.
    before = await rows(registry)
    for stranger in (tokens.admin(REGION), tokens.provider(other)):
        async with refused(grpc.StatusCode.PERMISSION_DENIED):
            await update(registry, business_id, metadata=stranger, phone=NEW_PHONE, paths=("phone",))
    assert await rows(registry) == before
    assert (await get(registry, business_id, tokens.provider(business_id))).phone == STORED_PHONE

    # A registration in any state counts: withdrawn, the region still reaches the provider.
    await registry.stub.WithdrawRegistration(
        registry_pb2.WithdrawRegistrationRequest(name=registration.name),
        metadata=tokens.provider(business_id),
    )
    assert await get(registry, business_id, tokens.admin(REGION)) == given


async def test_bad_contact_details_are_refused_by_field_and_nothing_is_stored(registry, next_business_id):
    business_id = next_business_id()
    before = await rows(registry)

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(
            registry,
            business_id,
            contact_person=" ",
            email="maija.meikalainen-at-tyopolku",
            phone="040 765 4321",
        )
    assert field_violations(caught[0]) == [
        "contact_details.contact_person",
        "contact_details.email",
        "contact_details.phone",
    ]
    assert leaked(caught[0].details() or "") == []

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(registry, business_id, contact_person=PERSON, email=EMAIL, phone="+358" + "4" * 20)
    assert field_violations(caught[0]) == ["contact_details.phone"]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(registry, business_id, paths=("email",), email=EMAIL)
    # A mask naming one field of details never given: the others are still required.
    assert field_violations(caught[0]) == ["contact_details.contact_person", "contact_details.phone"]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(registry, business_id, paths=("email", "business_id"), email=EMAIL)
    assert field_violations(caught[0]) == ["update_mask"]
    body, digit = business_id.split("-")
    wrong = f"{body}-{(int(digit) + 1) % 10}"
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(registry, business_id, name=contact_name(wrong))
    assert field_violations(caught[0]) == ["contact_details.name"]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await update(registry, business_id, name=f"regions/{REGION}/contactDetails")
    assert field_violations(caught[0]) == ["contact_details.name"]

    assert await rows(registry) == before

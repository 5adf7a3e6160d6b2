# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""A registration's keys on real SQLite and PostgreSQL: the migration that gave registrations a set
of keys carries each one's single key over as its one live key; keys are added and retired over
gRPC with events of fingerprints only."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import grpc
import sqlalchemy as sa
from alembic import command
from kasvu.registry.v1 import events_pb2, registry_pb2
from sqlalchemy import text

from services.registry.bootstrap import MIGRATIONS
from services.registry.store import registration_from_row
from services.runtime.db import Database
from services.runtime.migrate import alembic_config, upgrade_async
from services.runtime.tables import UTCDateTime
from tests.integration.helpers import ProviderKey, count_rows, error_reason, field_violations
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    next_business_id,
    payloads,
    refused,
    registry,
)

BEFORE_KEYS = "1374fc943248"
KEY = bytes(range(32))
CREATED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# The registrations' columns as they were before the keys: the table as the model has it now
# would insert keys_json, which the database does not have yet.
BEFORE = sa.table(
    "registry_registrations",
    *(sa.column(name, sa.String()) for name in ("id", "region", "service", "business_id", "display_name")),
    *(
        sa.column(name, sa.String())
        for name in ("evidence_json", "state", "reasons_json", "suspended_by_breach")
    ),
    sa.column("terms_version", sa.Integer()),
    sa.column("public_key", sa.LargeBinary()),
    sa.column("created_at", UTCDateTime(timezone=True)),
    sa.column("updated_at", UTCDateTime(timezone=True)),
)


async def test_the_keys_migration_carries_each_registrations_key_over_as_its_one_live_key(
    database_url: str,
) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(database_url, MIGRATIONS), BEFORE_KEYS)
    db = Database(database_url)
    try:
        async with db.writer.begin() as connection:
            await connection.execute(
                BEFORE.insert().values(
                    id="r-1",
                    region="uusimaa",
                    service="recruitment",
                    terms_version=1,
                    business_id="0737546-2",
                    display_name="Rekry Oy",
                    public_key=KEY,
                    evidence_json="[]",
                    state="ADMITTED",
                    reasons_json="[]",
                    suspended_by_breach="",
                    created_at=CREATED,
                    updated_at=CREATED,
                )
            )
        await upgrade_async(database_url, MIGRATIONS)
        async with db.reader.connect() as connection:
            row = (await connection.execute(text("SELECT * FROM registry_registrations"))).one()
        assert json.loads(row.keys_json) == [
            {"public_key": KEY.hex(), "add_time": CREATED.isoformat(), "retire_time": None}
        ]
        registration = registration_from_row(row)
        assert registration.key_history[0].public_key == KEY
        assert registration.live_keys == (KEY,)
    finally:
        await db.dispose()


async def test_a_provider_adds_a_key_commits_with_it_and_retires_the_first_with_events_of_fingerprints_only(
    registry, next_business_id
):
    first, second = ProviderKey(), ProviderKey()
    terms = await registry.publish()
    registration = await registry.register(terms, next_business_id(), key=first)
    provider = registry.tokens.provider(registration.business_id)
    add = registry_pb2.AddRegistrationKeyRequest(
        name=registration.name,
        public_key=second.public_key,
        key_signature=first.key.sign(second.public_key),
        possession_signature=second.key.sign(registration.name.encode()),
        request_id="add-second",
    )
    tables = ("outbox", "audit_log", "idempotency_keys")
    before = [await count_rows(registry.db, table) for table in tables]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        forged = registry_pb2.AddRegistrationKeyRequest()
        forged.CopyFrom(add)
        forged.key_signature = second.key.sign(second.public_key)
        await registry.stub.AddRegistrationKey(forged, metadata=provider)
    assert field_violations(caught[0]) == ["key_signature"]
    assert [await count_rows(registry.db, table) for table in tables] == before

    with_two = await registry.stub.AddRegistrationKey(add, metadata=provider)
    again = await registry.stub.AddRegistrationKey(add, metadata=provider)
    assert [k.public_key for k in with_two.keys] == [first.public_key, second.public_key]
    assert again == with_two
    [payload] = await payloads(registry.db, "RegistrationKeyAdded")
    event = events_pb2.RegistrationKeyAdded.FromString(payload)
    assert event.key_fingerprint == hashlib.sha256(second.public_key).hexdigest()
    assert second.public_key not in payload

    first_fingerprint = hashlib.sha256(first.public_key).hexdigest()
    retired = await registry.stub.RetireRegistrationKey(
        registry_pb2.RetireRegistrationKeyRequest(
            name=registration.name,
            key_fingerprint=first_fingerprint,
            key_signature=second.key.sign(first.public_key),
        ),
        metadata=provider,
    )
    assert [k.HasField("retire_time") for k in retired.keys] == [True, False]
    [payload] = await payloads(registry.db, "RegistrationKeyRetired")
    assert events_pb2.RegistrationKeyRetired.FromString(payload).key_fingerprint == first_fingerprint
    async with registry.db.reader.connect() as connection:
        commands = (
            (await connection.execute(text("SELECT command FROM audit_log ORDER BY seq"))).scalars().all()
        )
    assert commands[-2:] == ["AddRegistrationKey", "RetireRegistrationKey"]

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as last:
        await registry.stub.RetireRegistrationKey(
            retire_request(registration, second, second), metadata=provider
        )
    assert error_reason(last[0]) == "LAST_LIVE_KEY"
    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await registry.stub.AddRegistrationKey(add, metadata=registry.tokens.provider(next_business_id()))


def add_request(
    registration: registry_pb2.Registration, signer: ProviderKey, new: ProviderKey, request_id: str = ""
) -> registry_pb2.AddRegistrationKeyRequest:
    """Adds `new`, the live key `signer` agreeing; `new` proves it is held by signing the name."""
    return registry_pb2.AddRegistrationKeyRequest(
        name=registration.name,
        public_key=new.public_key,
        key_signature=signer.key.sign(new.public_key),
        possession_signature=new.key.sign(registration.name.encode()),
        request_id=request_id,
    )


def retire_request(
    registration: registry_pb2.Registration, retired: ProviderKey, signer: ProviderKey, request_id: str = ""
) -> registry_pb2.RetireRegistrationKeyRequest:
    """Retires `retired` by its fingerprint, the live key `signer` signing its raw bytes."""
    return registry_pb2.RetireRegistrationKeyRequest(
        name=registration.name,
        key_fingerprint=hashlib.sha256(retired.public_key).hexdigest(),
        key_signature=signer.key.sign(retired.public_key),
        request_id=request_id,
    )


async def unchanged_rows(registry) -> list[int]:
    return [await count_rows(registry.db, table) for table in ("outbox", "audit_log", "timers")]


async def test_adding_a_key_already_live_is_no_change_with_no_event_and_no_audit_record(
    registry, next_business_id
):
    first, second = ProviderKey(), ProviderKey()
    registration = await registry.register(await registry.publish(), next_business_id(), key=first)
    provider = registry.tokens.provider(registration.business_id)
    with_two = await registry.stub.AddRegistrationKey(
        add_request(registration, first, second), metadata=provider
    )
    before = await unchanged_rows(registry)
    registry.clock.advance(timedelta(hours=1))

    # Not a retry (a new request id each time, or none): the key is live already, so nothing is
    # recorded, whichever live key agrees, and the answer is the registration as it stands.
    for signer, request_id in ((first, "again-1"), (second, "again-2"), (first, "")):
        again = await registry.stub.AddRegistrationKey(
            add_request(registration, signer, second, request_id), metadata=provider
        )
        assert again == with_two
    assert await unchanged_rows(registry) == before
    assert len(await payloads(registry.db, "RegistrationKeyAdded")) == 1
    async with registry.db.reader.connect() as connection:
        commands = (await connection.execute(text("SELECT command FROM audit_log"))).scalars().all()
    assert commands.count("AddRegistrationKey") == 1
    assert (await registry.get(registration)).update_time == with_two.update_time


async def test_a_registration_holds_at_most_ten_live_keys_and_a_retired_one_makes_room(
    registry, next_business_id
):
    first = ProviderKey()
    registration = await registry.register(await registry.publish(), next_business_id(), key=first)
    provider = registry.tokens.provider(registration.business_id)
    held = [first]
    for _ in range(9):
        held.append(ProviderKey())
        await registry.stub.AddRegistrationKey(add_request(registration, first, held[-1]), metadata=provider)
    full = await registry.get(registration)
    assert [k.public_key for k in full.keys if not k.HasField("retire_time")] == [k.public_key for k in held]
    before = await unchanged_rows(registry)

    eleventh = ProviderKey()
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.stub.AddRegistrationKey(
            add_request(registration, first, eleventh, "eleventh"), metadata=provider
        )
    assert error_reason(caught[0]) == "TOO_MANY_KEYS"
    assert await unchanged_rows(registry) == before
    assert await count_rows(registry.db, "idempotency_keys", "key = :key", key="eleventh") == 0
    assert await registry.get(registration) == full
    # A key already live is no change even at the cap, not a refusal.
    assert (
        await registry.stub.AddRegistrationKey(add_request(registration, first, held[5]), metadata=provider)
        == full
    )

    # Retiring one makes room; the refused request, sent again, then adds the key.
    await registry.stub.RetireRegistrationKey(retire_request(registration, held[9], first), metadata=provider)
    added = await registry.stub.AddRegistrationKey(
        add_request(registration, first, eleventh, "eleventh"), metadata=provider
    )
    live = [k.public_key for k in added.keys if not k.HasField("retire_time")]
    assert live == [k.public_key for k in held[:9]] + [eleventh.public_key]
    assert len(added.keys) == 11  # the retired key stays for the record


async def test_the_last_live_key_is_never_retired_and_the_refusal_stores_nothing(registry, next_business_id):
    only = ProviderKey()
    registration = await registry.register(await registry.publish(), next_business_id(), key=only)
    provider = registry.tokens.provider(registration.business_id)
    before = await unchanged_rows(registry)

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.stub.RetireRegistrationKey(
            retire_request(registration, only, only, "retire-only"), metadata=provider
        )

    assert error_reason(caught[0]) == "LAST_LIVE_KEY"
    assert "add one before retiring" in (caught[0].details() or "")
    assert await unchanged_rows(registry) == before
    assert await count_rows(registry.db, "idempotency_keys", "key = :key", key="retire-only") == 0
    kept = await registry.get(registration)
    assert [(k.public_key, k.HasField("retire_time")) for k in kept.keys] == [(only.public_key, False)]
    assert kept.public_key == only.public_key

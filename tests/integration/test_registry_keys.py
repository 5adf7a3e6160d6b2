"""A registration's keys on real SQLite and PostgreSQL: the migration that gave registrations a set
of keys carries each one's single key over as its one live key."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import text

from services.registry.bootstrap import MIGRATIONS
from services.registry.store import registration_from_row
from services.runtime.db import Database
from services.runtime.migrate import alembic_config, upgrade_async
from services.runtime.tables import UTCDateTime

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

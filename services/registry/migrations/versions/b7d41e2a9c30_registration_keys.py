"""registration keys: a registration holds a set of keys, not one

Revision ID: b7d41e2a9c30
Revises: 1374fc943248
Create Date: 2026-12-07 11:20:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import services.runtime.tables

revision: str = "b7d41e2a9c30"
down_revision: str | None = "1374fc943248"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("registry_registrations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("keys_json", sqlmodel.sql.sqltypes.AutoString(), server_default="[]", nullable=False)
        )
    # Each existing registration's one key becomes its one live key, added when it was created,
    # in the shape store.keys_json writes (the migration keeps its own copy: store may change).
    registrations = sa.table(
        "registry_registrations",
        sa.column("id", sa.String()),
        sa.column("public_key", sa.LargeBinary()),
        sa.column("created_at", services.runtime.tables.UTCDateTime(timezone=True)),
        sa.column("keys_json", sa.String()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(registrations.c.id, registrations.c.public_key, registrations.c.created_at)
    ).all()
    for id, public_key, created_at in rows:
        if not public_key:
            continue
        keys = [
            {"public_key": bytes(public_key).hex(), "add_time": created_at.isoformat(), "retire_time": None}
        ]
        connection.execute(
            registrations.update().where(registrations.c.id == id).values(keys_json=json.dumps(keys))
        )


def downgrade() -> None:
    with op.batch_alter_table("registry_registrations", schema=None) as batch_op:
        batch_op.drop_column("keys_json")

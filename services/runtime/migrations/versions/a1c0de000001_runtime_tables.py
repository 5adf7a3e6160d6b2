"""runtime tables: outbox, inbox, leases, idempotency keys, timers, audit log

Revision ID: a1c0de000001
Revises:
Create Date: 2026-11-23 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import services.runtime.tables

revision: str = "a1c0de000001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("runtime",)
depends_on: str | Sequence[str] | None = None

AutoString = sqlmodel.sql.sqltypes.AutoString
UTC = services.runtime.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_id", AutoString(length=64), nullable=False),
        sa.Column("subject", AutoString(length=255), nullable=False),
        sa.Column("event_type", AutoString(length=255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", AutoString(), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("published_at", UTC(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"], unique=False)
    op.create_table(
        "inbox",
        sa.Column("consumer", AutoString(length=128), nullable=False),
        sa.Column("event_id", AutoString(length=64), nullable=False),
        sa.Column("outcome", AutoString(length=255), nullable=False),
        sa.Column("handled_at", UTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_index("ix_inbox_handled_at", "inbox", ["handled_at"], unique=False)
    op.create_table(
        "leases",
        sa.Column("name", AutoString(length=128), nullable=False),
        sa.Column("holder", AutoString(length=128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("expires_at", UTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", AutoString(length=255), nullable=False),
        sa.Column("key", AutoString(length=128), nullable=False),
        sa.Column("fingerprint", AutoString(length=64), nullable=False),
        sa.Column("response", AutoString(), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False)
    op.create_table(
        "timers",
        sa.Column("key", AutoString(length=255), nullable=False),
        sa.Column("due_at", UTC(timezone=True), nullable=False),
        sa.Column("command_type", AutoString(length=255), nullable=False),
        sa.Column("command", AutoString(), nullable=False),
        sa.Column("correlation_id", AutoString(length=128), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("fired_at", UTC(timezone=True), nullable=True),
        sa.Column("outcome", AutoString(length=255), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_timers_pending", "timers", ["fired_at", "due_at"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("recorded_at", UTC(timezone=True), nullable=False),
        sa.Column("actor", AutoString(length=255), nullable=False),
        sa.Column("command", AutoString(length=255), nullable=False),
        sa.Column("resources", AutoString(), nullable=False),
        sa.Column("events", AutoString(), nullable=False),
        sa.Column("correlation_id", AutoString(length=128), nullable=False),
        sa.Column("prev_hash", AutoString(length=64), nullable=False),
        sa.Column("hash", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("ix_timers_pending", table_name="timers")
    op.drop_table("timers")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_table("leases")
    op.drop_index("ix_inbox_handled_at", table_name="inbox")
    op.drop_table("inbox")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")

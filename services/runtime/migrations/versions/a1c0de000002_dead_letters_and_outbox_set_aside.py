"""dead letters; outbox rows can be set aside and carry their PostgreSQL transaction id

Revision ID: a1c0de000002
Revises: a1c0de000001
Create Date: 2026-11-23 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import services.runtime.tables

revision: str = "a1c0de000002"
down_revision: str | None = "a1c0de000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AutoString = sqlmodel.sql.sqltypes.AutoString
UTC = services.runtime.tables.UTCDateTime


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("set_aside_at", UTC(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_error", AutoString(length=255), nullable=False, server_default=""))
        # On PostgreSQL every row records the transaction that wrote it, so the relay can hold
        # back rows while an older transaction is still running (commit order, not seq order).
        batch.add_column(
            sa.Column(
                "txid",
                sa.BigInteger(),
                nullable=True,
                server_default=sa.text("pg_current_xact_id()::text::bigint") if postgresql else None,
            )
        )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("consumer", AutoString(length=128), nullable=False),
        sa.Column("stream", AutoString(length=64), nullable=False),
        sa.Column("stream_seq", sa.Integer(), nullable=False),
        sa.Column("subject", AutoString(length=255), nullable=False),
        sa.Column("event_id", AutoString(length=64), nullable=False),
        sa.Column("headers", AutoString(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", AutoString(length=1000), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("dead_at", UTC(timezone=True), nullable=False),
        sa.Column("replay_requested_at", UTC(timezone=True), nullable=True),
        sa.Column("replayed_at", UTC(timezone=True), nullable=True),
        sa.Column("replay_outcome", AutoString(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_consumer", "dead_letters", ["consumer"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dead_letters_consumer", table_name="dead_letters")
    op.drop_table("dead_letters")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("txid")
        batch.drop_column("last_error")
        batch.drop_column("set_aside_at")
        batch.drop_column("attempts")

"""a dead letter is kept once per message and consumer

Revision ID: a1c0de000003
Revises: a1c0de000002
Create Date: 2026-12-06 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a1c0de000003"
down_revision: str | None = "a1c0de000002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ux_dead_letters_message",
        "dead_letters",
        ["consumer", "stream", "stream_seq", "event_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_dead_letters_message", table_name="dead_letters")

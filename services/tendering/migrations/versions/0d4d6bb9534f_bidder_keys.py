"""bidder keys: the Ed25519 keys providers enrol to sign their bids

Revision ID: 0d4d6bb9534f
Revises: 33158f0ebb18
Create Date: 2026-12-09 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import services.runtime.tables

revision: str = "0d4d6bb9534f"
down_revision: str | None = "33158f0ebb18"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# No keys are taken over from the bids stored before: the key a bid carried was never shown to
# be its bidder's, which is the gap this table closes. Those bids still open (opening checks
# their signatures, not enrolment); a bidder enrols a key before its next bid.


def upgrade() -> None:
    op.create_table(
        "tendering_bidder_keys",
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bidder", sqlmodel.sql.sqltypes.AutoString(length=9), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("enrolled_at", services.runtime.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retired_at", services.runtime.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint"),
    )
    with op.batch_alter_table("tendering_bidder_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tendering_bidder_keys_bidder", ["bidder", "enrolled_at", "fingerprint"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tendering_bidder_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_tendering_bidder_keys_bidder")
    op.drop_table("tendering_bidder_keys")

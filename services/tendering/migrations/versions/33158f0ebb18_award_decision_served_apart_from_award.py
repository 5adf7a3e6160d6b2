"""the award decision is served apart from the award: calls record when (served_at)

Revision ID: 33158f0ebb18
Revises: f962833c794b
Create Date: 2026-12-08 10:00:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "33158f0ebb18"
down_revision: str | None = "f962833c794b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CALLS = sa.table("tendering_calls", sa.column("id", sa.String), sa.column("document", sa.String))
# Before this revision an award was served the moment it was decided: a call that reached the
# standstill was served at its award time.
_SERVED_AT_AWARD = ("STANDSTILL", "CONCLUDED", "CANCELLED")


def _canonical(document: dict[str, object]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def upgrade() -> None:
    # Calls are stored whole as JSON documents, and decoding needs every field of the aggregate.
    connection = op.get_bind()
    for call_id, text in connection.execute(sa.select(_CALLS.c.id, _CALLS.c.document)).all():
        document = json.loads(text)
        if "served_at" in document:
            continue
        served = document.get("standstill_end") is not None and document["state"] in _SERVED_AT_AWARD
        document["served_at"] = document.get("awarded_at") if served else None
        connection.execute(
            _CALLS.update().where(_CALLS.c.id == call_id).values(document=_canonical(document))
        )


def downgrade() -> None:
    # The older code knows the AWARDED state (it never held it) but not served_at.
    connection = op.get_bind()
    for call_id, text in connection.execute(sa.select(_CALLS.c.id, _CALLS.c.document)).all():
        document = json.loads(text)
        if document.pop("served_at", "absent") == "absent":
            continue
        connection.execute(
            _CALLS.update().where(_CALLS.c.id == call_id).values(document=_canonical(document))
        )

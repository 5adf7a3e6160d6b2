"""Migrations run at every start-up, so running them again must change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.registry.bootstrap import MIGRATIONS
from services.runtime.db import Database
from services.runtime.migrate import upgrade_async


@pytest.mark.parametrize("runs", [2])
async def test_migrating_twice_changes_nothing(database_url: str, runs: int) -> None:
    for _ in range(runs):
        await upgrade_async(database_url, MIGRATIONS)
    db = Database(database_url)
    try:
        async with db.read_session() as session:
            rows = (await session.exec(text("SELECT count(*) FROM registry_terms"))).one()  # type: ignore[call-overload]
        assert rows[0] == 0
    finally:
        await db.dispose()

"""The kernel's fast insert (services.runtime.fastinsert) against real SQLite files and
PostgreSQL: the rows and values SQLAlchemy would store, and its adding upsert summing into rows
already there, through the inline sqlite3 path and through the Core statement alike."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Date, Float, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import Database
from services.runtime.fastinsert import TableInserter
from services.runtime.sqlite_inline import inline_of
from services.runtime.tables import UTCDateTime
from services.runtime.writer import Outcome, write_path_for

METADATA = MetaData()
SUMS = Table(
    "test_fast_sums",
    METADATA,
    Column("scope", String(16), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("total", Float, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
)
ADD = TableInserter(SUMS, add_on_conflict=(("scope", "day"), ("count", "total")))
MONDAY = date(2026, 12, 7)
AT = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


def _row(scope: str, day: date, count: int, total: float, seen_at: datetime = AT) -> dict[str, object]:
    return {"scope": scope, "day": day, "count": count, "total": total, "seen_at": seen_at}


async def _stored(engine: AsyncEngine) -> list[tuple[str, date, int, float, datetime]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(SUMS).order_by(SUMS.c.scope, SUMS.c.day))
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def _created(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)


async def test_rows_whose_key_is_there_add_their_sums_and_the_others_are_inserted(
    runtime_db: Database,
) -> None:
    await _created(runtime_db.writer)
    write_path = write_path_for(runtime_db)
    used_inline: list[bool] = []

    async def insert(rows: list[dict[str, object]]) -> None:
        async def job(session: AsyncSession) -> Outcome[None]:
            connection = await session.connection()
            used_inline.append(await inline_of(connection) is not None)
            await ADD.insert(connection, rows)
            return Outcome(None)

        await write_path.run(job)

    try:
        # One batch whose rows share their time and a day: each is converted right, not only the first.
        await insert(
            [_row("a", MONDAY, 2, 1.5), _row("b", MONDAY, 1, 1.0), _row("a", MONDAY + timedelta(1), 1, 0.5)]
        )
        await insert([_row("a", MONDAY, 3, 2.0), _row("c", MONDAY, 4, 4.0, AT + timedelta(hours=1))])
    finally:
        await write_path.close()

    assert used_inline == [runtime_db.is_sqlite] * 2
    assert await _stored(runtime_db.reader) == [
        ("a", MONDAY, 5, 3.5, AT),
        ("a", MONDAY + timedelta(1), 1, 0.5, AT),
        ("b", MONDAY, 1, 1.0, AT),
        ("c", MONDAY, 4, 4.0, AT + timedelta(hours=1)),
    ]


async def test_on_sqlite_without_the_inline_path_the_core_statement_adds_alike(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    try:
        await _created(engine)
        for rows in ([_row("a", MONDAY, 2, 1.5)], [_row("a", MONDAY, 3, 2.0), _row("b", MONDAY, 1, 1.0)]):
            async with engine.begin() as connection:
                assert await inline_of(connection) is None
                await ADD.insert(connection, rows)
        assert await _stored(engine) == [("a", MONDAY, 5, 3.5, AT), ("b", MONDAY, 1, 1.0, AT)]
    finally:
        await engine.dispose()

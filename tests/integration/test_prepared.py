"""Prepared statements and raw savepoints (services.runtime.prepared) against real SQLite files
and PostgreSQL: the same rows, values and counts as SQLAlchemy's own execution, and a unit's
savepoint that contains its failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, exc, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import Database
from services.runtime.migrate import upgrade_async
from services.runtime.prepared import Prepared, savepoint, with_lists
from services.runtime.tables import Timer
from services.runtime.writer import Outcome, WritePath, write_path_for
from services.tendering.bootstrap import MIGRATIONS

TIMERS = Timer.__table__  # type: ignore[attr-defined]
T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

DUE = Prepared(
    select(TIMERS.c.key, TIMERS.c.due_at, TIMERS.c.fired_at)
    .where(TIMERS.c.due_at <= bindparam("now"))
    .order_by(TIMERS.c.due_at)
    .limit(bindparam("limit"))
)
FIRST_DUE = Prepared(select(TIMERS.c.key).order_by(TIMERS.c.due_at).limit(1))
FIRE = Prepared(update(TIMERS).where(TIMERS.c.key == bindparam("timer")).values(fired_at=bindparam("at")))
COUNT = Prepared(select(func.count()).select_from(TIMERS))
KEYS_IN = with_lists(
    lambda one_of: select(TIMERS.c.key).where(one_of(TIMERS.c.key, "keys")).order_by(TIMERS.c.key)
)


def _timer_insert(insert: object) -> object:
    statement = insert(TIMERS).values(  # type: ignore[operator]
        key=bindparam("key"),
        due_at=bindparam("due_at"),
        command_type="Toy",
        command="{}",
        correlation_id="",
        created_at=bindparam("due_at"),
        outcome="",
    )
    return statement.on_conflict_do_nothing(index_elements=[TIMERS.c.key])


ADD = Prepared(_timer_insert(sqlite_insert), elsewhere=_timer_insert(pg_insert))  # type: ignore[arg-type]


async def _write(write_path: WritePath, *keys_and_due: tuple[str, datetime]) -> None:
    async def job(session: AsyncSession) -> Outcome[None]:
        connection = await session.connection()
        for key, due in keys_and_due:
            await ADD.execute(connection, {"key": key, "due_at": due})
        return Outcome(None)

    await write_path.run(job)


@pytest.fixture
async def write_path(runtime_db: Database) -> WritePath:
    return write_path_for(runtime_db)


async def test_a_prepared_select_returns_typed_rows_in_order_with_its_defaults_and_limits(
    runtime_db: Database, write_path: WritePath
) -> None:
    await _write(write_path, ("b", T + timedelta(hours=2)), ("a", T + timedelta(hours=1)), ("c", T))

    async with runtime_db.reader.connect() as connection:
        rows = (await DUE.execute(connection, {"now": T + timedelta(hours=1), "limit": 10})).all()
        first = (await FIRST_DUE.execute(connection)).scalar()
        count = (await COUNT.execute(connection)).scalar()

    assert [(row.key, row.due_at, row.fired_at) for row in rows] == [
        ("c", T, None),
        ("a", T + timedelta(hours=1), None),
    ]
    assert rows[0].due_at.tzinfo is not None  # the column type's own conversion ran
    assert (first, count) == ("c", 3)


async def test_a_prepared_write_reports_how_many_rows_it_changed(
    runtime_db: Database, write_path: WritePath
) -> None:
    await _write(write_path, ("a", T))
    changed: list[int] = []

    async def fire(session: AsyncSession) -> Outcome[None]:
        connection = await session.connection()
        for key in ("a", "missing"):
            changed.append((await FIRE.execute(connection, {"timer": key, "at": T})).rowcount)
        return Outcome(None)

    await write_path.run(fire)

    assert changed == [1, 0]
    async with runtime_db.reader.connect() as connection:
        assert [row.fired_at for row in (await DUE.execute(connection, {"now": T, "limit": 5})).all()] == [T]


async def test_a_list_parameter_takes_lists_of_any_length_in_one_prepared_statement(
    runtime_db: Database, write_path: WritePath
) -> None:
    await _write(write_path, *((f"k{index:04d}", T) for index in range(1200)))
    wanted = [f"k{index:04d}" for index in range(0, 1200, 2)] + ["missing"]

    async with runtime_db.reader.connect() as connection:
        found = [row.key for row in (await KEYS_IN.execute(connection, {"keys": wanted})).all()]
        none = (await KEYS_IN.execute(connection, {"keys": []})).all()

    # 600 values in one parameter: beyond what one bound parameter per value would allow per chunk.
    assert found == wanted[:-1]
    assert none == []


async def test_on_a_sqlite_engine_without_the_inline_path_a_prepared_statement_runs_its_sqlite_form(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    await upgrade_async(url, MIGRATIONS)
    db = Database(url)
    try:
        await _write(write_path_for(db), ("a", T), ("b", T))
    finally:
        await db.dispose()
    plain = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    try:
        async with plain.connect() as connection:
            rows = (await KEYS_IN.execute(connection, {"keys": ["b", "c"]})).all()
    finally:
        await plain.dispose()
    assert [row.key for row in rows] == ["b"]


async def test_a_prepared_statement_names_a_missing_value_and_refuses_in_lists(runtime_db: Database) -> None:
    with pytest.raises(ValueError, match="expanding"):
        Prepared(select(TIMERS.c.key).where(TIMERS.c.key.in_(bindparam("keys", expanding=True))))
    if runtime_db.is_sqlite:
        async with runtime_db.reader.connect() as connection:
            with pytest.raises(KeyError, match="now"):
                await DUE.execute(connection, {"limit": 1})


async def test_a_unit_that_fails_inside_its_savepoint_leaves_nothing_and_its_batch_mates_commit(
    runtime_db: Database, write_path: WritePath
) -> None:
    async def units(session: AsyncSession) -> Outcome[None]:
        connection = await session.connection()
        async with savepoint(session):
            await ADD.execute(connection, {"key": "kept", "due_at": T})
        with pytest.raises(RuntimeError):
            async with savepoint(session):
                await ADD.execute(connection, {"key": "dropped", "due_at": T})
                raise RuntimeError("the unit fails after writing")
        async with savepoint(session):
            await ADD.execute(connection, {"key": "also-kept", "due_at": T})
        return Outcome(None)

    await write_path.run(units)

    async with runtime_db.reader.connect() as connection:
        keys = {row.key for row in (await DUE.execute(connection, {"now": T, "limit": 10})).all()}
    assert keys == {"kept", "also-kept"}


async def test_on_sqlite_a_raw_write_outside_a_transaction_is_refused_rather_than_committed_alone(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'raw.db'}"
    await upgrade_async(url, MIGRATIONS)
    db = Database(url)
    try:
        async with db.writer.connect() as connection:
            await connection.rollback()  # as SQLAlchemy leaves it after a failed flush
            with pytest.raises(exc.OperationalError, match="no transaction"):
                await ADD.execute(connection, {"key": "stray", "due_at": T})
        async with db.reader.connect() as connection:
            assert (await COUNT.execute(connection)).scalar() == 0
    finally:
        await db.dispose()

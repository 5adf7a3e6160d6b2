"""Statements built once and run with the least overhead each database allows, for hot paths.

A Core statement executed through SQLAlchemy costs about 150 µs of Python on these machines
(cache key, execution context, result metadata), while SQLite itself answers a keyed lookup
in a few µs; a unit of work runs several. On SQLite through services.runtime.sqlite_inline,
a `Prepared` statement is compiled once by SQLAlchemy's own compiler and then runs straight
on the sqlite3 connection of the open transaction, its values converted by the same bind
and result processors SQLAlchemy would use. Elsewhere (PostgreSQL) it is a plain Core
execution. Either way the caller gets rows with attribute access and a rowcount.

Also here: `savepoint`, the same bargain for SAVEPOINT / RELEASE, which the write path takes
for every unit of work.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from sqlalchemy import JSON, ColumnElement, String, any_, bindparam, exc, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import connection_of
from services.runtime.sqlite_inline import inline_of

_SQLITE = sqlite.dialect()

CAREFUL = "kasvu.careful_savepoints"
"""A session.info flag: take SQLAlchemy's own savepoints even on SQLite (see `savepoint`)."""

Processor = Callable[[Any], Any] | None


class Rows:
    """What a prepared statement returns: its rows (attribute access by column name) and, for
    writes, how many rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any | None:
        return self._rows[0][0] if self._rows else None


class Prepared:
    """A Core statement with bind parameters (`bindparam("name")`), compiled once for SQLite.

    `elsewhere` is the statement other databases run instead, for SQLite-only syntax (an
    upsert built with the sqlite dialect's insert); by default the same statement.
    """

    def __init__(self, statement: ClauseElement, *, elsewhere: ClauseElement | None = None) -> None:
        self.sqlite_statement = statement
        self.statement = statement if elsewhere is None else elsewhere
        compiled = statement.compile(dialect=_SQLITE)
        assert isinstance(compiled, SQLCompiler)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("a prepared statement cannot have expanding (IN list) parameters")
        self._sql = compiled.string
        processors: Mapping[str, Any] = compiled._bind_processors
        # Keyed by the names in positiontup, anonymous ones (a literal, a LIMIT) included.
        binds = compiled.binds
        self._parameters: list[tuple[str, Processor, Any, bool]] = [
            (
                name,
                processors.get(name),
                binds[name].value if name in binds else None,
                bool(binds[name].required) if name in binds else True,
            )
            for name in compiled.positiontup or ()
        ]
        columns = compiled._result_columns
        self._row: Any = (
            namedtuple("Row", [column[0] for column in columns], rename=True) if columns else None
        )
        self._results: list[Processor] = [
            column[3]._cached_result_processor(_SQLITE, None) for column in columns
        ]
        self._converts = any(processor is not None for processor in self._results)

    async def execute(self, connection: AsyncConnection, values: Mapping[str, Any] | None = None) -> Rows:
        values = values or {}
        inline = await inline_of(connection)
        if inline is None:
            # By dialect, not by the inline path: a SQLite engine made without it still runs
            # the SQLite statement, never another database's syntax.
            sqlite_here = connection.dialect.name == "sqlite"
            statement: Any = self.sqlite_statement if sqlite_here else self.statement
            result = await connection.execute(statement, dict(values))
            rows = list(result.all()) if result.returns_rows else []
            return Rows(rows, result.rowcount if not result.returns_rows else len(rows))
        arguments = []
        for name, processor, default, required in self._parameters:
            if name in values:
                value = values[name]
            elif required:
                raise KeyError(f"the statement needs a value for {name!r}")
            else:
                value = default
            arguments.append(processor(value) if processor is not None else value)
        try:
            cursor = inline.in_transaction().execute(self._sql, arguments)
        except sqlite3.IntegrityError as error:
            # As SQLAlchemy would raise them, so the write path classifies them the same way.
            raise exc.IntegrityError(self._sql, arguments, error) from error
        except sqlite3.OperationalError as error:
            raise exc.OperationalError(self._sql, arguments, error) from error
        if self._row is None:
            return Rows([], cursor.rowcount)
        raw = cursor.fetchall()
        if self._converts:
            results = self._results
            raw = [
                tuple(
                    processor(value) if processor is not None else value
                    for processor, value in zip(results, row, strict=True)
                )
                for row in raw
            ]
        make = self._row._make
        return Rows([make(row) for row in raw], len(raw))


OneOf = Callable[[Any, str], ColumnElement[bool]]
"""`one_of(column, name)`: the condition "column is one of the values of list parameter `name`"."""


def with_lists(build: Callable[[OneOf], ClauseElement]) -> Prepared:
    """A statement whose conditions take lists of values, prepared once for lists of any length.

    `build(one_of)` makes the statement. On SQLite a list is one JSON parameter read by
    json_each; elsewhere (PostgreSQL) one array parameter, compared with = ANY. An expanding IN
    would need a statement per length, and chunks under SQLite's limit on bound parameters.
    Pass the values as a list (or tuple) of strings.
    """
    return Prepared(build(_in_json_list), elsewhere=build(_in_array))


def _in_json_list(column: Any, name: str) -> ColumnElement[bool]:
    values = func.json_each(bindparam(name, type_=JSON)).table_valued("value")
    return column.in_(select(values.c.value))  # type: ignore[no-any-return]


def _in_array(column: Any, name: str) -> ColumnElement[bool]:
    return column == any_(bindparam(name, type_=postgresql.ARRAY(String)))  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def savepoint(session: AsyncSession, name: str = "kasvu_unit") -> AsyncIterator[None]:
    """Runs the block in a savepoint of the session's transaction: an exception rolls back the
    block's writes alone and propagates.

    On inline SQLite the SAVEPOINT, RELEASE and ROLLBACK TO go straight to sqlite3. The ORM
    session is not told of them, so what it has in memory is flushed before the release and
    forgotten after a rollback (objects of the rolled-back block would otherwise be written
    later by a batch-mate's flush). A failed ORM flush, though, makes SQLAlchemy roll back the
    whole transaction, which a raw savepoint cannot prevent; the write path then runs the batch
    again with the session's CAREFUL flag, and here takes SQLAlchemy's nested transaction, as
    on PostgreSQL.
    """
    connection = await connection_of(session)
    inline = None if session.info.get(CAREFUL) else await inline_of(connection)
    if inline is None:
        nested = await session.begin_nested()
        # SQLAlchemy sends SAVEPOINT when the session next hands out its connection; units
        # write through the cached Core connection, so ask for it now or they would write
        # outside their savepoint.
        await session.connection()
        try:
            yield
            await session.flush()
        except BaseException:
            # Also when a failed flush left it inactive: it must still be ended, or the whole
            # transaction's commit fails.
            with contextlib.suppress(Exception):
                await nested.rollback()
            raise
        await nested.commit()
        return
    raw = inline.in_transaction()
    raw.execute(f"SAVEPOINT {name}")
    try:
        yield
        if _has_changes(session):
            await session.flush()
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            raw.execute(f"ROLLBACK TO {name}")
            raw.execute(f"RELEASE {name}")
        session.expunge_all()
        raise
    raw.execute(f"RELEASE {name}")


def _has_changes(session: AsyncSession) -> bool:
    sync = session.sync_session
    return bool(sync.new or sync.dirty or sync.deleted)

"""An aiosqlite-compatible connection that runs SQLite statements in the event loop's own thread.

aiosqlite sends every statement to a helper thread and back: about 200 µs a statement here,
against about 1 µs for the statement itself, and a unit of work is several statements. A
local SQLite statement rarely waits on anything, so this connection runs them inline. The
two that can wait run in a thread instead: BEGIN (on another process's write lock, up to
busy_timeout) and COMMIT (on the fsync). SQLAlchemy's aiosqlite dialect drives it through
`create_async_engine(..., async_creator=...)`, unchanged otherwise.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

_MAY_WAIT = ("BEGIN", "COMMIT", "END")


def _may_wait(sql: str) -> bool:
    return sql.lstrip()[:6].upper().startswith(_MAY_WAIT)


class InlineCursor:
    """The subset of aiosqlite.Cursor SQLAlchemy uses."""

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection.raw.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        arguments = () if parameters is None else parameters
        if self._connection.writes and _may_wait(sql):
            if not (sql.lstrip()[:5].upper() == "BEGIN" and self._connection.try_begin(self._cursor, sql)):
                await asyncio.to_thread(self._cursor.execute, sql, arguments)
        else:
            self._cursor.execute(sql, arguments)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _ImmediateQueue:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set isolation_level."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Any]) -> None:
        future, function = item
        try:
            function()
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(None)


class InlineConnection:
    """The subset of aiosqlite.Connection SQLAlchemy uses, over a plain sqlite3 connection."""

    def __init__(self, database: str, *, timeout: float = 30.0, writes: bool = True) -> None:
        # A reader's deferred BEGIN takes no lock in WAL mode and its COMMIT writes nothing,
        # so only a writer's BEGIN IMMEDIATE and COMMIT can wait and go to a thread.
        self.writes = writes
        # check_same_thread=False: BEGIN and COMMIT run in a worker thread, never at the same
        # time as anything else on this connection (SQLAlchemy serialises its use).
        self.raw = sqlite3.connect(database, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._busy_ms = int(timeout * 1000)
        self._tx = _ImmediateQueue()

    # aiosqlite's internals that SQLAlchemy's adapter reads.
    @property
    def _conn(self) -> sqlite3.Connection:
        return self.raw

    @property
    def _connection(self) -> sqlite3.Connection | None:
        return self.raw

    @property
    def isolation_level(self) -> str | None:
        return self.raw.isolation_level

    def try_begin(self, cursor: sqlite3.Cursor, sql: str) -> bool:
        """BEGIN inline when the write lock is free, as it is unless another process writes;
        False when it is taken, and the caller waits for it in a thread."""
        self.raw.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute(sql)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            return False
        finally:
            self.raw.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return True

    def in_transaction(self) -> sqlite3.Connection:
        """The sqlite3 connection, for statements that bypass SQLAlchemy; refused on a writer
        outside a transaction, where sqlite3 would commit each statement on its own (after
        SQLAlchemy rolled a failed transaction back, say)."""
        if self.writes and not self.raw.in_transaction:
            raise sqlite3.OperationalError("no transaction is open on this connection")
        return self.raw

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        cursor = InlineCursor(self)
        return await cursor.execute(sql, parameters)

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self.raw.create_function(*args, **kwargs)

    async def commit(self) -> None:
        if self.writes:
            await asyncio.to_thread(self.raw.commit)
        else:
            self.raw.commit()

    async def rollback(self) -> None:
        self.raw.rollback()

    async def close(self) -> None:
        self.raw.close()

    def stop(self) -> None:
        self.raw.close()


def creator(database: str, *, timeout: float = 30.0, writes: bool = True) -> Any:
    """The `async_creator` for create_async_engine with the sqlite+aiosqlite dialect."""

    async def connect() -> InlineConnection:
        return InlineConnection(database, timeout=timeout, writes=writes)

    return connect


async def inline_of(connection: AsyncConnection) -> InlineConnection | None:
    """The inline SQLite connection under a SQLAlchemy connection, or None (PostgreSQL, or an
    engine made without `creator`); looked up once per connection."""
    if connection.dialect.name != "sqlite":
        return None
    if "kasvu.inline" not in connection.info:
        driver = (await connection.get_raw_connection()).driver_connection
        connection.info["kasvu.inline"] = driver if isinstance(driver, InlineConnection) else None
    inline: InlineConnection | None = connection.info["kasvu.inline"]
    return inline

"""Async storage: engines (SQLite WAL + BEGIN IMMEDIATE, or PostgreSQL), read sessions, and the
database's own clock for leases."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, event, func, make_url, or_, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import sqlite_inline
from services.runtime.tables import (
    RUNTIME_TABLES,
    AuditRecord,
    IdempotencyKey,
    InboxEntry,
    Lease,
    OutboxEvent,
    Timer,
    UTCDateTime,
    utc_field,
    utcnow,
)

__all__ = [
    "RUNTIME_TABLES",
    "AuditRecord",
    "Database",
    "IdempotencyKey",
    "InboxEntry",
    "Lease",
    "OutboxEvent",
    "Timer",
    "UTCDateTime",
    "async_url",
    "is_sqlite",
    "utc_field",
    "utcnow",
]

log = logging.getLogger(__name__)


def async_url(url: str) -> str:
    """Accepts plain postgresql:// and sqlite:// URLs and names the async driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_sqlite(url: str) -> bool:
    return async_url(url).startswith("sqlite")


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    database = make_url(url).database or ":memory:"
    # Statements run in the event loop's thread: see services.runtime.sqlite_inline for why.
    engine = create_async_engine(
        url, async_creator=sqlite_inline.creator(database, timeout=30, writes=immediate)
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's deferred one; this
        # is also what makes SAVEPOINT work, which the batched write path relies on.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, which the outbox promise needs.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so two writers never deadlock on upgrade
        # and SQLite answers "busy" (retried by busy_timeout) instead of "locked".
        if immediate:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # A reader's BEGIN takes no lock and cannot wait: straight to sqlite3, without the
        # statement machinery, since every query opens one.
        inline = getattr(conn.connection.dbapi_connection, "_connection", None)
        if isinstance(inline, sqlite_inline.InlineConnection):
            inline.raw.execute("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


class Database:
    """The service's database: a writer engine and a reader engine (the same on PostgreSQL).

    Writes go through the service's write path (services.runtime.writer), never through
    ad-hoc sessions on the writer engine, so that on SQLite one task in the process holds
    the write lock and commits many units of work at once.
    """

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        if is_sqlite(self.url):
            self.writer = _sqlite_engine(self.url, immediate=True)
            self.reader = _sqlite_engine(self.url, immediate=False)
        else:
            self.writer = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self.reader = self.writer

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def read_session(self) -> AsyncSession:
        return AsyncSession(self.reader, expire_on_commit=False)

    async def ping(self) -> None:
        async with self.reader.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


async def database_now(session: AsyncSession) -> datetime:
    """The database server's clock: the one time every replica agrees on.

    On SQLite the database is a file on this host, so its clock is this host's clock.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        value = (await session.exec(text("SELECT clock_timestamp()"))).one()  # type: ignore[call-overload]
        moment: datetime = value[0]
        return UTCDateTime().process_result_value(moment, bind.dialect) or utcnow()
    return utcnow()


async def serialize_on(session: AsyncSession, key: str) -> None:
    """Makes concurrent transactions that name the same key take turns until they commit.

    For decisions that read "what is there" before adding to it (the next version number,
    "no active registration yet"), where no row exists yet to lock. On PostgreSQL a
    transaction-scoped advisory lock on the key's hash; on SQLite a no-op, since the write
    path already has one writer.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.exec(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))").bindparams(key=key)
        )  # type: ignore[call-overload]


CONNECTION = "kasvu.connection"
"""session.info key of the Core connection of the session's transaction."""


async def connection_of(session: AsyncSession) -> AsyncConnection:
    """The Core connection of the session's transaction, cached on the session: asking the
    session for it again for every unit of a batch costs more than the statements themselves."""
    connection: AsyncConnection | None = session.info.get(CONNECTION)
    if connection is None:
        connection = session.info[CONNECTION] = await session.connection()
    return connection


async def outbox_backlog(db: Database) -> tuple[int, float]:
    """How many committed events wait to be published, and how long the oldest has waited (s)."""
    async with db.read_session() as session:
        count, oldest = (
            await session.exec(
                select(func.count(), func.min(OutboxEvent.created_at)).where(
                    col(OutboxEvent.published_at).is_(None), col(OutboxEvent.set_aside_at).is_(None)
                )
            )
        ).one()
    if oldest is None:
        return 0, 0.0
    # min() keeps the column's type, so this is an aware UTC datetime like the column's values.
    return int(count), max(0.0, (utcnow() - oldest).total_seconds())


def older_than(instant: Any, key: Any, position: tuple[datetime, str]) -> ColumnElement[bool]:
    """Keyset pagination, newest first: the rows after `position` (an instant and a tie-breaking
    key) when ordered by (instant, key) descending. Stable while rows are added."""
    at, last = position
    return or_(instant < at, and_(instant == at, key < last))

"""Async storage: engines (SQLite WAL + BEGIN IMMEDIATE, or PostgreSQL), the unit of work,
and the tables every service database has (outbox, inbox, leases, idempotency keys)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from google.protobuf.message import Message
from sqlalchemy import DateTime, Dialect, event, func, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.errors import FailedPrecondition

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL (timestamptz) and SQLite (naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_field(**kwargs: Any) -> Any:
    """A SQLModel field for an aware UTC datetime."""
    return Field(sa_type=UTCDateTime, **kwargs)


class OutboxEvent(SQLModel, table=True):
    """An event written in the same transaction as the state change it reports."""

    __tablename__ = "outbox"

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    subject: str = Field(max_length=255)
    event_type: str = Field(max_length=255)
    payload: bytes
    created_at: datetime = utc_field(default_factory=utcnow)
    published_at: datetime | None = utc_field(default=None, index=True)


class InboxEntry(SQLModel, table=True):
    """An event a consumer has applied, written in the same transaction as its effect."""

    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True, max_length=128)
    event_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(default="applied", max_length=255)
    handled_at: datetime = utc_field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """Who among a service's replicas does a singleton job (the outbox relay) right now."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(max_length=128)
    expires_at: datetime = utc_field()


class IdempotencyKey(SQLModel, table=True):
    """A client's request id and the resource its first attempt created."""

    __tablename__ = "idempotency_keys"

    scope: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=128)
    resource: str = Field(max_length=512)
    created_at: datetime = utc_field(default_factory=utcnow)


RUNTIME_TABLES = ("outbox", "inbox", "leases", "idempotency_keys")


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
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's deferred one.
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
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """The service's database: a writer engine and a reader engine (the same on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        # SQLite has one writer at a time. Waiting writers in this process queue on an
        # asyncio lock instead of inside SQLite's busy handler, whose back-off sleeps
        # (up to 100 ms) collapse throughput under concurrent requests. Other processes
        # (replicas, migrations) are still arbitrated by BEGIN IMMEDIATE and busy_timeout.
        self.write_lock: asyncio.Lock | None = None
        if is_sqlite(self.url):
            self.writer = _sqlite_engine(self.url, immediate=True)
            self.reader = _sqlite_engine(self.url, immediate=False)
            self.write_lock = asyncio.Lock()
        else:
            self.writer = create_async_engine(self.url, pool_size=10, max_overflow=10, pool_pre_ping=True)
            self.reader = self.writer

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self)

    def read_session(self) -> AsyncSession:
        return AsyncSession(self.reader, expire_on_commit=False)

    async def ping(self) -> None:
        async with self.reader.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


class UnitOfWork:
    """One transaction: the state change, its outbox events, its inbox entry and its
    idempotency key commit together or not at all."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.session: AsyncSession
        self.committed = False
        self._events = 0

    async def __aenter__(self) -> Self:
        if self._db.write_lock is not None:
            await self._db.write_lock.acquire()
        try:
            self.session = AsyncSession(self._db.writer, expire_on_commit=False)
            await self.session.begin()
        except BaseException:
            if self._db.write_lock is not None:
                self._db.write_lock.release()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if not self.committed:
                if exc_type is None:
                    # Nothing to write (an idempotent retry, a refusal decided by reading): keep
                    # what was read usable after the transaction, which rollback would expire.
                    self.session.expunge_all()
                await self.session.rollback()
        finally:
            await self.session.close()
            if self._db.write_lock is not None:
                self._db.write_lock.release()

    async def commit(self, conflict: str = "a concurrent request changed the same record; retry") -> None:
        """Commits; losing a race on a unique key (two writers creating the same thing) is
        the client's to retry, not a server fault: nothing was written."""
        try:
            await self.session.commit()
        except IntegrityError:
            raise FailedPrecondition(conflict, reason="CONCURRENT_WRITE") from None
        self.committed = True

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def emit(self, subject: str, message: Message, event_id: str | None = None) -> str:
        """Adds an event to the outbox of this transaction; returns its id."""
        eid = event_id or uuid.uuid4().hex
        self.session.add(
            OutboxEvent(
                event_id=eid,
                subject=subject,
                event_type=message.DESCRIPTOR.full_name,
                payload=message.SerializeToString(),
            )
        )
        self._events += 1
        return eid

    @property
    def emitted(self) -> int:
        return self._events

    async def already_handled(self, consumer: str, event_id: str) -> bool:
        row = await self.session.get(InboxEntry, (consumer, event_id))
        return row is not None

    def mark_handled(self, consumer: str, event_id: str, outcome: str = "applied") -> None:
        self.session.add(InboxEntry(consumer=consumer, event_id=event_id, outcome=outcome[:255]))

    async def idempotent_resource(self, scope: str, key: str) -> str | None:
        """The resource a first attempt with this key created, if there was one."""
        if not key:
            return None
        row = await self.session.get(IdempotencyKey, (scope, key))
        return row.resource if row else None

    def remember_idempotency(self, scope: str, key: str, resource: str) -> None:
        if key:
            self.session.add(IdempotencyKey(scope=scope, key=key, resource=resource))


async def pending_outbox(session: AsyncSession, limit: int) -> Sequence[OutboxEvent]:
    result = await session.exec(
        select(OutboxEvent)
        .where(col(OutboxEvent.published_at).is_(None))
        .order_by(col(OutboxEvent.seq))
        .limit(limit)
    )
    return result.all()


async def mark_published(db: Database, seqs: list[int]) -> None:
    async with db.unit_of_work() as uow:
        await uow.session.exec(
            update(OutboxEvent).where(col(OutboxEvent.seq).in_(seqs)).values(published_at=utcnow())
        )
        await uow.commit()


async def prune_published(db: Database, older_than: timedelta) -> None:
    """Published events are kept a while for operators, then dropped."""
    from sqlalchemy import delete

    cutoff = utcnow() - older_than
    async with db.unit_of_work() as uow:
        await uow.session.exec(delete(OutboxEvent).where(col(OutboxEvent.published_at) < cutoff))
        await uow.commit()


async def outbox_depth(db: Database) -> int:
    async with db.read_session() as session:
        result = await session.exec(
            select(func.count()).select_from(OutboxEvent).where(col(OutboxEvent.published_at).is_(None))
        )
        return int(result.one())


async def acquire_lease(db: Database, name: str, holder: str, ttl: timedelta) -> bool:
    """Takes or renews a lease; True when `holder` holds it until now + ttl.

    An UPDATE guarded by expiry (or by being the holder) is atomic on both SQLite
    and PostgreSQL, so two replicas can never both believe they hold it.
    """
    now = utcnow()
    async with db.unit_of_work() as uow:
        result = await uow.session.exec(
            update(Lease)
            .where(col(Lease.name) == name)
            .where((col(Lease.holder) == holder) | (col(Lease.expires_at) < now))
            .values(holder=holder, expires_at=now + ttl)
        )
        if result.rowcount == 1:
            await uow.commit()
            return True
        existing = await uow.session.get(Lease, name)
        if existing is not None:
            return False
        uow.session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        try:
            await uow.commit()
        except FailedPrecondition:  # another replica created it first
            return False
        return True


async def release_lease(db: Database, name: str, holder: str) -> None:
    async with db.unit_of_work() as uow:
        await uow.session.exec(
            update(Lease)
            .where(col(Lease.name) == name, col(Lease.holder) == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await uow.commit()

"""The tables every service database has, owned by the runtime and migrated by its own Alembic
branch: outbox, inbox, leases, idempotency keys, timers and the audit chain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Index
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


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
    headers: str = Field(default="{}", description="The envelope as JSON: time, actor, correlation.")
    created_at: datetime = utc_field(default_factory=utcnow)
    published_at: datetime | None = utc_field(default=None, index=True)
    attempts: int = Field(default=0, description="Failed publish rounds so far.")
    set_aside_at: datetime | None = utc_field(
        default=None, description="When the relay gave up on the row; it no longer holds back later rows."
    )
    last_error: str = Field(default="", max_length=255)
    txid: int | None = Field(
        default=None,
        sa_type=BigInteger,
        description="PostgreSQL: the writing transaction's id; rows are relayed only once every "
        "transaction that began before theirs has ended, so the stream keeps commit order.",
    )


class DeadLetter(SQLModel, table=True):
    """An event a consumer could not apply after its retries: kept with its error, for an
    operator to inspect and replay (`kasvu deadletters`), so it never holds back later events."""

    __tablename__ = "dead_letters"
    # One row per message and consumer: a consumer that died after keeping a dead letter but
    # before terminating the message gets it again, and must not keep it twice.
    __table_args__ = (
        Index("ux_dead_letters_message", "consumer", "stream", "stream_seq", "event_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    consumer: str = Field(max_length=128, index=True)
    stream: str = Field(max_length=64)
    stream_seq: int
    subject: str = Field(max_length=255)
    event_id: str = Field(max_length=64)
    headers: str
    payload: bytes
    error: str = Field(max_length=1000)
    deliveries: int
    dead_at: datetime = utc_field()
    replay_requested_at: datetime | None = utc_field(default=None)
    replayed_at: datetime | None = utc_field(default=None)
    replay_outcome: str = Field(default="", max_length=255)


class InboxEntry(SQLModel, table=True):
    """An event a consumer has applied, written in the same transaction as its effect."""

    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True, max_length=128)
    event_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(default="applied", max_length=255)
    handled_at: datetime = utc_field(default_factory=utcnow, index=True)


class Lease(SQLModel, table=True):
    """Who among a service's replicas runs its singleton jobs right now.

    `token` grows by one each time the lease changes hands: a fencing token that writes
    made under the lease check, so a replica that lost the lease cannot act on it.
    """

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(max_length=128)
    token: int = Field(default=1)
    expires_at: datetime = utc_field()


class IdempotencyKey(SQLModel, table=True):
    """A client's request id, the fingerprint of the request it came with, and the first answer."""

    __tablename__ = "idempotency_keys"

    scope: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=128)
    fingerprint: str = Field(max_length=64)
    response: str
    created_at: datetime = utc_field(default_factory=utcnow, index=True)


class Timer(SQLModel, table=True):
    """A command to run at a moment: set, moved or cancelled by a handler in its unit of work,
    fired once by the scheduler in a unit of work that also marks it fired."""

    __tablename__ = "timers"
    __table_args__ = (Index("ix_timers_pending", "fired_at", "due_at"),)

    key: str = Field(primary_key=True, max_length=255)
    due_at: datetime = utc_field()
    command_type: str = Field(max_length=255)
    command: str
    correlation_id: str = Field(default="", max_length=128)
    created_at: datetime = utc_field(default_factory=utcnow)
    fired_at: datetime | None = utc_field(default=None)
    outcome: str = Field(default="", max_length=255)


class AuditRecord(SQLModel, table=True):
    """One state-changing unit of work, linked to the one before it by hash: a chain per service."""

    __tablename__ = "audit_log"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    recorded_at: datetime = utc_field()
    actor: str = Field(max_length=255)
    command: str = Field(max_length=255)
    resources: str = Field(description="JSON list of the resource names the command touched.")
    events: str = Field(description="JSON list of [event id, event type, SHA-256 of the payload].")
    correlation_id: str = Field(default="", max_length=128)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


RUNTIME_TABLES = ("outbox", "inbox", "leases", "idempotency_keys", "timers", "audit_log", "dead_letters")

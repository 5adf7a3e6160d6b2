"""The unit of work a handler receives: who asks, the instant it happens at, repositories that
speak in domain objects, the events aggregates recorded, and timers to set or cancel.

Handlers never commit and never see a database session: the dispatcher opens the
transaction, runs the handler, turns what the unit of work collected into outbox rows,
timer rows and an audit record, and commits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, TypeVar

from services.runtime.auth import Principal
from services.runtime.db import connection_of
from services.runtime.domain import Aggregate, Command, Event, finnish_date

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlmodel.ext.asyncio.session import AsyncSession

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True)
class Context:
    """Where a command comes from: the door's facts, carried into logs, events and the audit trail."""

    actor: Principal | None = None
    """Who asks, as proved by a token; None for the system (events, timers)."""
    request_id: str = ""
    """The transport's request id, for logs."""
    idempotency_key: str = ""
    """The client's key for retries (AIP-155 request_id); empty when none was given."""
    correlation_id: str = ""
    """The first request of a chain of causes; events and timers carry it on."""
    causation_id: str = ""
    """The event or timer that caused this command; empty for a client's call."""

    @property
    def who(self) -> str:
        """The actor as the audit trail names it: an identifier, never a person's name."""
        if self.actor is not None:
            return f"{self.actor.role.value}:{self.actor.organisation}:{self.actor.subject}"
        return f"system:{self.causation_id}" if self.causation_id else "system"


@dataclass(frozen=True)
class TimerChange:
    """A timer to set (with its command and due time) or, with command None, to cancel."""

    key: str
    due_at: datetime | None
    command: Command | None


@dataclass
class TimerBook:
    """The timers a handler set, moved or cancelled; written in the handler's transaction."""

    changes: list[TimerChange] = field(default_factory=list)

    def set(self, key: str, due_at: datetime, command: Command) -> None:
        """Runs `command` once at `due_at`; setting a key again moves it (and re-arms a fired one)."""
        if due_at.tzinfo is None:
            raise ValueError("a timer's due time must be timezone-aware")
        self.changes.append(TimerChange(key, due_at, command))

    def cancel(self, key: str) -> None:
        """Cancels the timer if it has not fired; cancelling an unknown key changes nothing."""
        self.changes.append(TimerChange(key, None, None))


class UnitOfWork:
    """One command's view of the service's state. Services subclass it to add repositories
    (`bind` builds them on the transaction's session); tests subclass it with fakes."""

    def __init__(self, context: Context, now: datetime, *, read_only: bool = False) -> None:
        if now.tzinfo is None:
            raise ValueError("the unit of work's instant must be timezone-aware")
        self.context = context
        self.now = now
        """The instant of this unit of work: every change in it happens at this time."""
        self.read_only = read_only
        self.timers = TimerBook()
        self.resources: list[str] = []
        self._seen: list[Aggregate] = []
        self._direct = Aggregate()
        self.session: AsyncSession
        self.connection: AsyncConnection

    @property
    def actor(self) -> Principal | None:
        return self.context.actor

    @functools.cached_property
    def today(self) -> date:
        """Today in Finland, at this unit of work's instant (fixed for the unit's life; a batch
        of observations asks for it several times per record)."""
        return finnish_date(self.now)

    async def bind(self, session: AsyncSession) -> None:
        """Builds the repositories on the transaction's session; services extend it.

        `connection` is the transaction's Core connection: repositories on hot paths use it
        directly, since the ORM's per-statement bookkeeping costs more than SQLite does.
        """
        self.session = session
        self.connection = await connection_of(session)

    async def save(self) -> None:
        """Writes the changed aggregates back to storage before the events are collected;
        services whose repositories map rows by hand override it."""

    def track(self, aggregate: A, name: str = "") -> A:
        """Repositories call this for every aggregate they hand out or add, so its events are collected."""
        if not any(seen is aggregate for seen in self._seen):
            self._seen.append(aggregate)
        if name and name not in self.resources:
            self.resources.append(name)
        return aggregate

    def record(self, event: Event) -> None:
        """An event that belongs to no loaded aggregate (e.g. a decision to refuse)."""
        self._direct.record(event)

    def collect_events(self) -> list[Event]:
        """Every event recorded in this unit of work, in the order they happened."""
        ordered = self._direct.pull_events()
        for aggregate in self._seen:
            ordered.extend(aggregate.pull_events())
        return [event for _, event in sorted(ordered, key=lambda pair: pair[0])]

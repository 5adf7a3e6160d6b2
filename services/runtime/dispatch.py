"""The one way in: a gRPC call, a NATS event and a due timer all become a command handed to
`Dispatcher.handle`, which opens the unit of work, applies idempotency (or the inbox, or the
timer's claim), runs the command's one handler, writes the collected events, timers and audit
record, commits through the write path, and wakes the relay."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, delete, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import codec, envelope
from services.runtime.audit import AuditEntry
from services.runtime.clock import Clock
from services.runtime.db import CONNECTION, Database, connection_of
from services.runtime.domain import Command, Event, Query
from services.runtime.errors import DomainError, FieldViolation, InvalidArgument
from services.runtime.fastinsert import TableInserter
from services.runtime.prepared import Prepared, savepoint
from services.runtime.protoconv import to_message
from services.runtime.tables import IdempotencyKey, InboxEntry, OutboxEvent, Timer
from services.runtime.uow import Context, UnitOfWork
from services.runtime.writer import Outcome, WritePath

log = logging.getLogger(__name__)

OUTBOX = OutboxEvent.__table__  # type: ignore[attr-defined]
INBOX = InboxEntry.__table__  # type: ignore[attr-defined]
KEYS = IdempotencyKey.__table__  # type: ignore[attr-defined]
TIMERS = Timer.__table__  # type: ignore[attr-defined]
OUTBOX_ROWS = TableInserter(OUTBOX)
INBOX_ROWS = TableInserter(INBOX)
KEY_ROWS = TableInserter(KEYS)

U = TypeVar("U", bound=UnitOfWork)
Handler = Callable[[Any, U], Awaitable[Any]]

MAX_IDEMPOTENCY_KEY_LENGTH = 128

# The kernel's statements on every unit of work, prepared once (services.runtime.prepared).
_INBOX_HAS = Prepared(
    select(literal(1))
    .select_from(INBOX)
    .where(INBOX.c.consumer == bindparam("consumer"), INBOX.c.event_id == bindparam("event_id"))
    .limit(1)
)
_EARLIER_ANSWER = Prepared(
    select(KEYS.c.fingerprint, KEYS.c.response).where(
        KEYS.c.scope == bindparam("scope"), KEYS.c.key == bindparam("key")
    )
)
_CLAIM_TIMER = Prepared(
    update(TIMERS)
    .where(
        TIMERS.c.key == bindparam("timer"), TIMERS.c.fired_at.is_(None), TIMERS.c.due_at <= bindparam("now")
    )
    .values(fired_at=bindparam("fired_at"))
)
_TIMER_OUTCOME = Prepared(
    update(TIMERS).where(TIMERS.c.key == bindparam("timer")).values(outcome=bindparam("outcome"))
)
_CANCEL_TIMER = Prepared(
    delete(TIMERS).where(TIMERS.c.key == bindparam("timer"), TIMERS.c.fired_at.is_(None))
)
_TIMER_COLUMNS = (
    "key",
    "due_at",
    "command_type",
    "command",
    "correlation_id",
    "created_at",
    "fired_at",
    "outcome",
)
_TIMER_MOVES = ("due_at", "command_type", "command", "fired_at", "outcome")


def _timer_upsert(insert: Any) -> Any:
    # Setting a key again moves the timer and re-arms one that fired.
    statement = insert(TIMERS).values({name: bindparam(name) for name in _TIMER_COLUMNS})
    return statement.on_conflict_do_update(
        index_elements=[TIMERS.c.key], set_={name: statement.excluded[name] for name in _TIMER_MOVES}
    )


_SET_TIMER = Prepared(_timer_upsert(sqlite_insert), elsewhere=_timer_upsert(pg_insert))
_NO_SAVEPOINT = contextlib.nullcontext()


@dataclass(frozen=True)
class InboxKey:
    """The consumer and the event id of an event being applied; its inbox row commits with the effect."""

    consumer: str
    event_id: str


@dataclass(frozen=True)
class Duplicate:
    """The answer for an event (or timer) that was applied before: nothing was done."""


@dataclass(frozen=True)
class Refused:
    """The answer for an event (or timer) whose command was refused: recorded, not retried."""

    error: DomainError


DUPLICATE = Duplicate()
NO_CONTEXT = Context()


class EventTypes:
    """Maps the model's event classes to their proto messages, by class name.

    The subject of an event is derived here, and only here: the proto's full name and the
    organiser, e.g. `kasvu.registry.v1.ProviderSuspended.pirkanmaa`.
    """

    def __init__(self, pairs: Iterable[tuple[type[Event], type[Message]]]) -> None:
        self._protos: dict[type[Event], type[Message]] = dict(pairs)

    @classmethod
    def by_name(cls, events: Iterable[type[Event]], proto_module: Any) -> EventTypes:
        pairs = []
        for event in events:
            proto = getattr(proto_module, event.__name__, None)
            if proto is None:
                raise ValueError(f"{proto_module.__name__} has no message {event.__name__}")
            pairs.append((event, proto))
        return cls(pairs)

    def proto_class(self, event: Event) -> type[Message]:
        try:
            return self._protos[type(event)]
        except KeyError:
            raise ValueError(f"{type(event).__name__} has no proto message registered") from None

    def to_proto(self, event: Event) -> Message:
        return to_message(event, self.proto_class(event))

    def subject(self, event: Event, message: Message) -> str:
        return subject_for(message.DESCRIPTOR.full_name, event.subject_key)

    @property
    def protos(self) -> tuple[type[Message], ...]:
        return tuple(self._protos.values())


def subject_for(event_type: str, region: str) -> str:
    """Events are addressed by type and organiser, so consumers can filter by either."""
    return f"{event_type}.{region}"


class Dispatcher:
    """A service's handlers behind one door; built once, in the service's bootstrap."""

    def __init__(
        self,
        *,
        service: str,
        db: Database,
        write_path: WritePath,
        unit_of_work: Callable[[Context, datetime, bool], UnitOfWork],
        event_types: EventTypes,
        clock: Clock,
        after_commit: Callable[[], None] = lambda: None,
        max_event_bytes: int = 1024 * 1024 - 16 * 1024,
    ) -> None:
        self.service = service
        self._db = db
        self._write_path = write_path
        self._unit_of_work = unit_of_work
        self._event_types = event_types
        self._clock = clock
        self._handlers: dict[type[Any], Handler[Any]] = {}
        self._result_types: dict[type[Any], Any] = {}
        self._commands_by_name: dict[str, type[Command]] = {}
        self.after_commit = after_commit
        self.max_event_bytes = max_event_bytes

    # -- registration ---------------------------------------------------------------------

    def register(self, message_type: type[Any], handler: Handler[Any]) -> None:
        if message_type in self._handlers:
            raise ValueError(f"{message_type.__name__} has a handler already")
        self._handlers[message_type] = handler
        self._result_types[message_type] = _return_type(handler)
        if issubclass(message_type, Command):
            self._commands_by_name[command_type_name(message_type)] = message_type

    def register_all(self, handlers: Mapping[type[Any], Handler[Any]]) -> None:
        for message_type, handler in handlers.items():
            self.register(message_type, handler)

    def command_type(self, name: str) -> type[Command]:
        """The command class a timer row names."""
        return self._commands_by_name[name]

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def write_path(self) -> WritePath:
        return self._write_path

    # -- the doors ------------------------------------------------------------------------

    async def query(self, query: Query, context: Context = NO_CONTEXT) -> Any:
        """Runs a query's handler on a read-only unit of work, outside the write path."""
        handler = self._handler(query)
        # A Core connection first and a session bound to it: the session's own connection and
        # transaction bookkeeping cost more than most queries.
        async with self._db.reader.connect() as connection:
            session = AsyncSession(bind=connection, expire_on_commit=False)
            session.info[CONNECTION] = connection
            try:
                uow = self._unit_of_work(context, self._clock.now(), True)
                await uow.bind(session)
                return await handler(query, uow)
            finally:
                await session.close()

    async def handle(
        self,
        command: Command,
        context: Context = NO_CONTEXT,
        *,
        inbox: InboxKey | None = None,
        timer: str | None = None,
    ) -> Any:
        """Runs the command in one unit of work and returns its handler's result.

        With `inbox`, an event already applied returns DUPLICATE, and a refusal (a
        DomainError) is recorded as the event's outcome and returned as Refused instead of
        raised, so it is not redelivered forever. With `timer`, the timer is claimed in the
        same transaction, so it fires once however many replicas try.
        """
        handler = self._handler(command)
        if not context.correlation_id:
            context = _with_correlation(context)
        key = _checked_idempotency_key(context.idempotency_key)
        scope = f"{command_type_name(type(command))}:{_tenant(context)}"
        fingerprint = codec.fingerprint(command) if key else ""
        result_type = self._result_types[type(command)]

        wrote = False
        """Whether the committed run of the job wrote events or timers, which wake the worker."""

        async def job(session: AsyncSession) -> Outcome[Any]:
            nonlocal wrote
            wrote = False
            uow = self._unit_of_work(context, self._clock.now(), False)
            await uow.bind(session)
            connection = uow.connection
            if (
                inbox is not None
                and (
                    await _INBOX_HAS.execute(
                        connection, {"consumer": inbox.consumer, "event_id": inbox.event_id}
                    )
                ).first()
            ):
                return Outcome(DUPLICATE)
            if timer is not None and not await _claim_timer(connection, timer, uow.now):
                return Outcome(DUPLICATE)
            if key:
                earlier = (await _EARLIER_ANSWER.execute(connection, {"scope": scope, "key": key})).first()
                if earlier is not None:
                    return Outcome(
                        _replay(earlier.fingerprint, earlier.response, fingerprint, key, result_type)
                    )
            try:
                # An event's or a timer's refusal is kept as its outcome: the effect is rolled
                # back to this savepoint, and the inbox row or timer claim still commits.
                async with savepoint(session, "kasvu_effect") if inbox or timer else _NO_SAVEPOINT:
                    result = await handler(command, uow)
                    await uow.save()
                    written = await self._write_collected(session, uow, command)
            except DomainError as refusal:
                if inbox is None and timer is None:
                    raise
                outcome = f"refused: {type(refusal).__name__}: {refusal.message}"[:255]
                await self._mark(session, inbox, timer, uow.now, outcome)
                log.info(
                    "command refused",
                    extra={
                        "command": type(command).__name__,
                        "reason": refusal.reason or type(refusal).__name__,
                    },
                )
                return Outcome(Refused(refusal))
            await self._mark(session, inbox, timer, uow.now, "applied")
            if key:
                await KEY_ROWS.insert(
                    uow.connection,
                    [
                        {
                            "scope": scope,
                            "key": key,
                            "fingerprint": fingerprint,
                            "response": codec.dumps(result),
                            "created_at": uow.now,
                        }
                    ],
                )
            entry = None
            wrote = any(kind != "timer.cancelled" for _, kind, _ in written)
            if written:
                entry = AuditEntry(
                    recorded_at=uow.now,
                    actor=context.who,
                    command=command_type_name(type(command)),
                    resources=tuple(uow.resources),
                    events=tuple(written),
                    correlation_id=context.correlation_id,
                )
            return Outcome(result, entry)

        result = await self._write_path.run(job)
        if wrote:
            self.after_commit()
        return result

    # -- helpers --------------------------------------------------------------------------

    def _handler(self, message: Any) -> Handler[Any]:
        try:
            return self._handlers[type(message)]
        except KeyError:
            raise LookupError(f"{self.service} has no handler for {type(message).__name__}") from None

    @staticmethod
    async def _mark(
        session: AsyncSession, inbox: InboxKey | None, timer: str | None, now: datetime, outcome: str
    ) -> None:
        if inbox is not None:
            await INBOX_ROWS.insert(
                await connection_of(session),
                [
                    {
                        "consumer": inbox.consumer,
                        "event_id": inbox.event_id,
                        "outcome": outcome,
                        "handled_at": now,
                    }
                ],
            )
        if timer is not None:
            # Claimed (fired_at set) at the start of the unit; the outcome is kept for operators.
            await _TIMER_OUTCOME.execute(await connection_of(session), {"timer": timer, "outcome": outcome})

    async def _write_collected(
        self, session: AsyncSession, uow: UnitOfWork, command: Command
    ) -> list[tuple[str, str, str]]:
        """Outbox rows for the recorded events and rows for the timers; returns what the audit names."""
        written: list[tuple[str, str, str]] = []
        rows: list[dict[str, Any]] = []
        for event in uow.collect_events():
            message = self._event_types.to_proto(event)
            payload = message.SerializeToString()
            if len(payload) > self.max_event_bytes:
                # Refused here, in the transaction that would write it: the bus could never
                # carry it, and an outbox row that can never be published is a lost event.
                raise InvalidArgument(
                    f"the request would record a {type(event).__name__} event of {len(payload)} bytes; "
                    f"events may be at most {self.max_event_bytes} bytes",
                    reason="EVENT_TOO_LARGE",
                )
            event_id = uuid.uuid4().hex
            event_type = message.DESCRIPTOR.full_name
            headers = envelope.headers_for(
                event_id=event_id,
                event_type=event_type,
                occurred_at=uow.now,
                context=uow.context,
            )
            rows.append(
                {
                    "event_id": event_id,
                    "subject": self._event_types.subject(event, message),
                    "event_type": event_type,
                    "payload": payload,
                    "headers": json.dumps(headers, separators=(",", ":")),
                    "created_at": uow.now,
                    "published_at": None,
                }
            )
            written.append((event_id, event_type, hashlib.sha256(payload).hexdigest()))
        if rows:
            # Core, one statement for the unit's events: the ORM costs more than SQLite does here.
            await OUTBOX_ROWS.insert(uow.connection, rows)
        # Core statements: a handler may set several timers per unit (evidence expiry, reminders),
        # and the ORM's get-then-add costs more than the upsert itself.
        connection = uow.connection
        for change in uow.timers.changes:
            if change.command is None:
                cancelled = await _CANCEL_TIMER.execute(connection, {"timer": change.key})
                if cancelled.rowcount:
                    written.append((change.key, "timer.cancelled", ""))
                continue
            assert change.due_at is not None
            await _SET_TIMER.execute(
                connection,
                {
                    "key": change.key,
                    "due_at": change.due_at,
                    "command_type": command_type_name(type(change.command)),
                    "command": codec.dumps(change.command),
                    "correlation_id": uow.context.correlation_id,
                    "created_at": uow.now,
                    "fired_at": None,
                    "outcome": "",
                },
            )
            written.append((change.key, "timer.set", change.due_at.isoformat()))
        uow.timers.changes.clear()
        return written


def _return_type(handler: Handler[Any]) -> Any:
    """The handler's declared result type, which idempotent replays decode into.

    Only the return annotation is resolved: the unit of work's type is often imported for
    annotations only (under TYPE_CHECKING), and resolving it would fail at run time.
    """
    annotation = getattr(handler, "__annotations__", {}).get("return", Any)
    if isinstance(annotation, str):
        namespace = dict(getattr(handler, "__globals__", {}))
        # The handler module's own annotation text, evaluated in that module: trusted code.
        annotation = eval(annotation, namespace)
    return type(None) if annotation is None else annotation


def command_type_name(command_type: type[Any]) -> str:
    """How commands are named in timers, idempotency scopes and the audit trail."""
    return command_type.__name__


def _tenant(context: Context) -> str:
    # Keys are scoped by who asks: one tenant's key can never replay another tenant's answer.
    actor = context.actor
    return f"{actor.role.value}:{actor.organisation}" if actor is not None else "-"


def _with_correlation(context: Context) -> Context:
    from dataclasses import replace

    return replace(context, correlation_id=context.request_id or uuid.uuid4().hex)


def _checked_idempotency_key(key: str) -> str:
    key = key.strip()
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        description = f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"
        raise InvalidArgument(f"request_id {description}", [FieldViolation("request_id", description)])
    return key


def _replay(earlier_fingerprint: str, response: str, fingerprint: str, key: str, result_type: Any) -> Any:
    if earlier_fingerprint != fingerprint:
        description = f"the key {key!r} was used for a different request; use a new key for a new request"
        raise InvalidArgument(
            f"request_id {description}",
            [FieldViolation("request_id", description)],
            reason="IDEMPOTENCY_KEY_REUSED",
        )
    return codec.loads(result_type, response)


async def _claim_timer(connection: AsyncConnection, key: str, now: datetime) -> bool:
    result = await _CLAIM_TIMER.execute(connection, {"timer": key, "now": now, "fired_at": now})
    return result.rowcount == 1

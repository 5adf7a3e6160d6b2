"""A toy service for testing the runtime kernel on its own: commands that record an event, refuse,
fail unexpectedly, or set a timer; its events travel as the registry's TermsPublished message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kasvu.registry.v1 import events_pb2

from services.runtime.clock import SYSTEM_CLOCK, Clock
from services.runtime.db import Database
from services.runtime.dispatch import Dispatcher, EventTypes
from services.runtime.domain import Command, Event
from services.runtime.errors import FailedPrecondition
from services.runtime.uow import Context, UnitOfWork
from services.runtime.writer import WritePath, write_path_for

REGION = "pirkanmaa"
EVENT_TYPE = events_pb2.TermsPublished.DESCRIPTOR.full_name
SUBJECT = f"{EVENT_TYPE}.{REGION}"


class Boom(Exception):
    """An unexpected failure inside a handler (a bug, a lost connection)."""


@dataclass(frozen=True)
class Noted(Event):
    """What the toy's commands record; carried by the TermsPublished message, field by field."""

    terms: str
    region: str
    service: str
    content_hash: str
    publish_time: datetime


@dataclass(frozen=True)
class Note(Command):
    tag: str
    region: str = REGION


@dataclass(frozen=True)
class Refuse(Command):
    tag: str


@dataclass(frozen=True)
class Explode(Command):
    tag: str


@dataclass(frozen=True)
class Linger(Command):
    """Notes `tag` after `seconds` inside its unit of work: a slow handler (a big batch, a slow
    disk)."""

    tag: str
    seconds: float


@dataclass(frozen=True)
class Remind(Command):
    """Fired by a timer: notes `tag`."""

    tag: str


@dataclass(frozen=True)
class Schedule(Command):
    """Sets (or moves) the timer `key` to run Remind(tag) at `due_at`."""

    key: str
    tag: str
    due_at: datetime


@dataclass(frozen=True)
class Unschedule(Command):
    key: str


async def note(command: Note, uow: UnitOfWork) -> str:
    _record(uow, command.tag, command.region)
    return command.tag


async def refuse(command: Refuse, uow: UnitOfWork) -> str:
    _record(uow, command.tag)  # recorded, then refused: nothing of it may be stored
    raise FailedPrecondition(f"{command.tag} is refused", reason="REFUSED")


async def explode(command: Explode, uow: UnitOfWork) -> str:
    _record(uow, command.tag)
    raise Boom(command.tag)


async def linger(command: Linger, uow: UnitOfWork) -> str:
    await asyncio.sleep(command.seconds)
    _record(uow, command.tag)
    return command.tag


async def remind(command: Remind, uow: UnitOfWork) -> str:
    _record(uow, command.tag)
    return command.tag


async def schedule(command: Schedule, uow: UnitOfWork) -> None:
    uow.timers.set(command.key, command.due_at, Remind(command.tag))


async def unschedule(command: Unschedule, uow: UnitOfWork) -> None:
    uow.timers.cancel(command.key)


def _record(uow: UnitOfWork, tag: str, region: str = REGION) -> None:
    uow.resources.append(f"notes/{tag}")
    uow.record(Noted(terms=tag, region=region, service="toy", content_hash="", publish_time=uow.now))


HANDLERS: dict[type[Any], Any] = {
    Note: note,
    Refuse: refuse,
    Explode: explode,
    Linger: linger,
    Remind: remind,
    Schedule: schedule,
    Unschedule: unschedule,
}
EVENT_TYPES = EventTypes([(Noted, events_pb2.TermsPublished)])


def make_unit_of_work(context: Context, now: datetime, read_only: bool) -> UnitOfWork:
    return UnitOfWork(context, now, read_only=read_only)


def toy_dispatcher(db: Database, write_path: WritePath, clock: Clock = SYSTEM_CLOCK) -> Dispatcher:
    dispatcher = Dispatcher(
        service="toy",
        db=db,
        write_path=write_path,
        unit_of_work=make_unit_of_work,
        event_types=EVENT_TYPES,
        clock=clock,
    )
    dispatcher.register_all(HANDLERS)
    return dispatcher


@contextlib.asynccontextmanager
async def toy(db: Database, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Dispatcher]:
    """The toy service's dispatcher on its own write path, closed on the way out."""
    write_path = write_path_for(db)
    try:
        yield toy_dispatcher(db, write_path, clock)
    finally:
        await write_path.close()

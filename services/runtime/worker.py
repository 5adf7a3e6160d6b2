"""One leased worker per service for its singleton jobs (the outbox relay, the scheduler,
pruning): whichever replica holds the lease runs them; the others wait to take over.

The lease lives in the service's database and is timed by the database's clock, so a
replica whose own clock runs ahead cannot take a lease that is still held. Each change of
hands increments a fencing token, and jobs' writes check it: a replica that lost the lease
mid-job finds its writes refused and stops.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy import bindparam, delete, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import codec
from services.runtime.db import Database, database_now
from services.runtime.prepared import Prepared
from services.runtime.tables import IdempotencyKey, InboxEntry, Lease, OutboxEvent, Timer
from services.runtime.uow import Context
from services.runtime.writer import Outcome, WritePath

if TYPE_CHECKING:
    from services.runtime.dispatch import Dispatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fence:
    """A held lease: its name, its holder and the fencing token of this tenure."""

    name: str
    holder: str
    token: int


class LeaseLost(Exception):
    """A job's write found that its lease had passed to another replica."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"lease {fence.name} (token {fence.token}) is no longer held by {fence.holder}")
        self.fence = fence


async def acquire_lease(write_path: WritePath, name: str, holder: str, ttl: timedelta) -> Fence | None:
    """Takes, renews or fails to take the lease; the fence when `holder` holds it for `ttl` more."""

    async def take(session: AsyncSession) -> Outcome[Fence | None]:
        now = await database_now(session)
        lease = await session.get(Lease, name, with_for_update=True)
        if lease is None:
            session.add(Lease(name=name, holder=holder, token=1, expires_at=now + ttl))
            return Outcome(Fence(name, holder, 1))
        if lease.holder == holder:
            lease.expires_at = now + ttl
        elif lease.expires_at <= now:
            lease.holder, lease.token, lease.expires_at = holder, lease.token + 1, now + ttl
        else:
            return Outcome(None)
        session.add(lease)
        return Outcome(Fence(name, holder, lease.token))

    return await write_path.run(take)


async def release_lease(write_path: WritePath, fence: Fence) -> None:
    """Lets another replica take the lease at once (on a graceful stop)."""

    async def release(session: AsyncSession) -> Outcome[None]:
        now = await database_now(session)
        await session.exec(
            update(Lease)
            .where(
                col(Lease.name) == fence.name,
                col(Lease.holder) == fence.holder,
                col(Lease.token) == fence.token,
            )
            .values(expires_at=now - timedelta(seconds=1))
        )
        return Outcome(None)

    await write_path.run(release)


class WorkerJob(Protocol):
    async def run_once(self, fence: Fence) -> None:
        """Does what is due now; raises LeaseLost when a fenced write was refused."""


class Worker:
    """Runs the service's singleton jobs while it holds the service's lease."""

    def __init__(
        self,
        write_path: WritePath,
        *,
        service: str,
        jobs: Sequence[WorkerJob],
        lease_ttl: timedelta = timedelta(seconds=10),
        poll_s: float = 1.0,
        holder: str = "",
    ) -> None:
        self._write_path = write_path
        self._lease = f"{service}-worker"
        self.holder = holder or f"{service}-{uuid.uuid4().hex[:12]}"
        self._jobs = list(jobs)
        self._urgent: list[WorkerJob] = []
        """The jobs a wake-up runs (the relay, the scheduler); every round of the poll runs all."""
        self.lease_ttl = lease_ttl
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self.fence: Fence | None = None

    def wake(self) -> None:
        """Called after a commit that wrote events or timers, so they leave without waiting for a poll."""
        self._wake.set()

    def add_job(self, job: WorkerJob, *, on_wake: bool = False) -> None:
        """Adds a job to every round; `on_wake` also runs it as soon as a commit wakes the
        worker (what a commit can make due: events to relay, timers to fire)."""
        self._jobs.append(job)
        if on_wake:
            self._urgent.append(job)

    async def run_once(self) -> bool:
        """One round: take or renew the lease, then run every job; False when the lease is elsewhere."""
        self.fence = await acquire_lease(self._write_path, self._lease, self.holder, self.lease_ttl)
        if self.fence is None:
            return False
        for job in self._jobs:
            await job.run_once(self.fence)
        return True

    async def last_round(self, job: WorkerJob) -> bool:
        """A graceful stop's final pass: `job` once more under the lease (taken back if need be),
        which is then released; False when another replica holds it (and runs the job itself)."""
        fence = await acquire_lease(self._write_path, self._lease, self.holder, self.lease_ttl)
        if fence is None:
            return False
        try:
            await job.run_once(fence)
        finally:
            await release_lease(self._write_path, fence)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        held_until = 0.0
        ttl_s = self.lease_ttl.total_seconds()
        woken = False
        while not stop.is_set():
            self._wake.clear()
            try:
                # Renew only past half the lease: a renewal is a write.
                if loop.time() >= held_until - ttl_s / 2:
                    asked_at = loop.time()  # the lease runs from before the request, never longer
                    self.fence = await acquire_lease(
                        self._write_path, self._lease, self.holder, self.lease_ttl
                    )
                    held_until = asked_at + ttl_s if self.fence is not None else 0.0
                if self.fence is not None and loop.time() < held_until:
                    # A wake-up comes with every commit that wrote events or timers; the other
                    # jobs (pruning, dead-letter replays) keep to the poll.
                    for job in self._urgent if woken else self._jobs:
                        await job.run_once(self.fence)
            except LeaseLost as lost:
                log.warning("worker lost its lease", extra={"lease": lost.fence.name})
                self.fence, held_until = None, 0.0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "worker round failed; will retry", extra={"error": type(error).__name__}, exc_info=True
                )
            wake = asyncio.ensure_future(self._wake.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({wake, stopped}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            woken = wake.done() and not wake.cancelled()
            wake.cancel()
            stopped.cancel()
        if self.fence is not None:
            try:
                await release_lease(self._write_path, self.fence)
            except Exception:
                log.warning("could not release the worker lease", exc_info=True)


TIMERS = Timer.__table__  # type: ignore[attr-defined]
# Asked after every commit that set a timer, and on every poll: prepared once.
_DUE = Prepared(
    sa.select(TIMERS.c.key, TIMERS.c.command_type, TIMERS.c.command, TIMERS.c.correlation_id, TIMERS.c.due_at)
    .where(TIMERS.c.fired_at.is_(None), TIMERS.c.due_at <= bindparam("now"))
    .order_by(TIMERS.c.due_at, TIMERS.c.key)
    .limit(bindparam("limit"))
)


class Scheduler:
    """Fires due timers: each in a unit of work that claims it, so it runs once across replicas,
    after restarts and after downtime (overdue timers fire on the first round)."""

    def __init__(self, db: Database, dispatcher: Dispatcher, *, batch: int = 100) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._batch = batch

    async def due(self, now: datetime) -> list[Any]:
        """Timer rows (key, command_type, command, correlation_id, due_at) due at `now`."""
        async with self._db.reader.connect() as connection:
            return (await _DUE.execute(connection, {"now": now, "limit": self._batch})).all()

    async def run_once(self, fence: Fence) -> None:
        while True:
            timers = await self.due(self._dispatcher.clock.now())
            if not timers:
                return
            # One after another, in due order: a later timer may depend on an earlier one's effect.
            for timer in timers:
                await self._fire(timer)
            if len(timers) < self._batch:
                return

    async def _fire(self, timer: Any) -> None:
        try:
            command = codec.loads(self._dispatcher.command_type(timer.command_type), timer.command)
            context = Context(correlation_id=timer.correlation_id, causation_id=f"timer:{timer.key}")
            result = await self._dispatcher.handle(command, context, timer=timer.key)
            log.info("timer fired", extra={"timer": timer.key, "outcome": type(result).__name__})
        except Exception:
            # Left pending: the next round tries again.
            log.exception("timer failed; will retry", extra={"timer": timer.key})


@dataclass(frozen=True)
class Retention:
    """How long handled records are kept: longer than any redelivery or client retry."""

    published_events: timedelta = timedelta(hours=1)
    inbox: timedelta = timedelta(days=7)
    idempotency_keys: timedelta = timedelta(days=7)
    fired_timers: timedelta = timedelta(days=30)


class Pruner:
    """Deletes what has served its purpose, once every `every` rounds."""

    def __init__(
        self, write_path: WritePath, retention: Retention = Retention(), *, every: int = 600
    ) -> None:
        self._write_path = write_path
        self._retention = retention
        self._every = every
        self._rounds = 0

    async def run_once(self, fence: Fence) -> None:
        self._rounds += 1
        if self._rounds % self._every != 1 and self._every > 1:
            return
        await self.prune()

    async def prune(self) -> None:
        retention = self._retention

        async def prune(session: AsyncSession) -> Outcome[None]:
            now = await database_now(session)
            for statement in (
                delete(OutboxEvent).where(col(OutboxEvent.published_at) < now - retention.published_events),
                delete(InboxEntry).where(col(InboxEntry.handled_at) < now - retention.inbox),
                delete(IdempotencyKey).where(
                    col(IdempotencyKey.created_at) < now - retention.idempotency_keys
                ),
                delete(Timer).where(col(Timer.fired_at) < now - retention.fired_timers),
            ):
                await session.exec(statement)
            return Outcome(None)

        await self._write_path.run(prune)

"""The write path: every state change of a service process goes through here.

On SQLite, units of work that arrive together commit together: one writer task takes
what has queued, opens one transaction (one fsync), runs each unit in a savepoint of its
own, and commits. A unit that fails is rolled back to its savepoint alone; its batch-mates
commit. On PostgreSQL each unit gets its own transaction from the pool, so they run
concurrently, and a unit that loses a race (unique key, serialization failure, deadlock)
is run again. Either way a caller hears "done" only after its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import audit
from services.runtime.db import Database
from services.runtime.errors import Aborted, Unavailable
from services.runtime.prepared import CAREFUL, savepoint

log = logging.getLogger(__name__)

T = TypeVar("T")

# An arbitrary constant: serialises audit appends on PostgreSQL, per database.
AUDIT_LOCK_ID = 725_300_126
_PG_RETRYABLE = {"40001", "40P01", "23505"}  # serialization failure, deadlock, unique violation
PG_ATTEMPTS = 4


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a job returns: the caller's result, and the audit entry when state changed."""

    result: T
    audit: audit.AuditEntry | None = None


Job = Callable[[AsyncSession], Awaitable[Outcome[T]]]


@dataclass
class BatchStats:
    """Counts for tests and benchmarks: how many transactions carried how many units."""

    transactions: int = 0
    units: int = 0
    failed_units: int = 0


class WritePath:
    """Runs jobs (a unit of work's body) inside a transaction and returns their result."""

    stats: BatchStats

    async def run(self, job: Job[T]) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        """Finishes what is queued; later submissions are refused."""


def _sqlstate(error: DBAPIError) -> str:
    orig: Any = error.orig
    return str(getattr(orig, "sqlstate", "") or getattr(orig, "pgcode", "") or "")


class PooledWritePath(WritePath):
    """PostgreSQL: one transaction per unit, concurrent, retried when it loses a race."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.stats = BatchStats()

    async def run(self, job: Job[T]) -> T:
        for attempt in range(1, PG_ATTEMPTS + 1):
            try:
                return await self._attempt(job)
            except DBAPIError as error:
                if _sqlstate(error) not in _PG_RETRYABLE and not isinstance(error, IntegrityError):
                    raise
                if attempt == PG_ATTEMPTS:
                    raise Aborted(
                        "a concurrent request changed the same records; retry", reason="CONCURRENT_WRITE"
                    ) from None
                await asyncio.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    async def _attempt(self, job: Job[T]) -> T:
        async with AsyncSession(self._db.writer, expire_on_commit=False) as session:
            async with session.begin():
                outcome = await job(session)
                if outcome.audit is not None:
                    # Held to the commit: audit appends of concurrent units queue here, and
                    # only here, so the chain never forks.
                    await session.exec(text(f"SELECT pg_advisory_xact_lock({AUDIT_LOCK_ID})"))  # type: ignore[call-overload]
                    head = await audit.chain_head(session)
                    await audit.append(session, outcome.audit, head)
            self.stats.transactions += 1
            self.stats.units += 1
            return outcome.result


@dataclass
class _Queued:
    job: Job[Any]
    future: asyncio.Future[Any]


class BatchedWritePath(WritePath):
    """SQLite: one writer task, many units per transaction, a savepoint per unit."""

    def __init__(self, db: Database, *, max_batch: int = 128) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = BatchStats()

    async def run(self, job: Job[T]) -> T:
        if self._closing:
            raise Unavailable("the service is shutting down; retry", reason="SHUTTING_DOWN")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(job, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._writer(), name="write-path")
        # Shielded: a caller that goes away (a cancelled call) must not cancel a unit that may
        # already be inside the batch; it commits, and an idempotent retry finds it.
        return await asyncio.shield(future)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Queued]) -> None:
        pending, careful = batch, False
        while pending:
            pending = await self._try_batch(pending, careful=careful)
            careful = True

    async def _try_batch(self, batch: list[_Queued], *, careful: bool) -> list[_Queued]:
        """Runs the batch in one transaction; returns the units to run again in a new one.

        A unit that fails is rolled back to its savepoint alone. SQLite savepoints are taken
        on the raw connection, which SQLAlchemy does not see; so when a unit's failed ORM
        flush makes SQLAlchemy roll the whole transaction back, the batch runs again, this
        time `careful`: with SQLAlchemy's own savepoints, which contain such a failure. No
        unit of the batch has been told anything before its transaction commits.
        """
        done: list[tuple[asyncio.Future[Any], Any]] = []
        try:
            async with AsyncSession(self._db.writer, expire_on_commit=False) as session:
                session.info[CAREFUL] = careful
                await session.begin()
                head = await audit.chain_head(session)
                for item in batch:
                    head = await self._run_one(session, item, head, done)
                    if not _usable(session):
                        await session.rollback()
                        log.info("a unit of work spoilt its batch; the batch runs again, carefully")
                        if careful:
                            # Even SQLAlchemy's savepoint could not contain it: that unit fails.
                            item.future.set_exception(
                                Aborted("the request could not be applied; retry", reason="WRITE_FAILED")
                            )
                        return [queued for queued in batch if not queued.future.done()]
                await session.commit()
        except Exception as error:
            # The transaction itself failed (disk full, database gone): nothing of the batch
            # is stored, so every unit that had succeeded is told to retry.
            log.exception("a write batch failed to commit", extra={"units": len(batch)})
            for future, _ in done:
                if not future.done():
                    future.set_exception(
                        Unavailable("the database could not commit; retry", reason="COMMIT_FAILED")
                    )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return []
        self.stats.transactions += 1
        self.stats.units += len(done)
        for future, result in done:
            if not future.done():
                future.set_result(result)
        return []

    async def _run_one(
        self,
        session: AsyncSession,
        item: _Queued,
        head: audit.ChainHead,
        done: list[tuple[asyncio.Future[Any], Any]],
    ) -> audit.ChainHead:
        try:
            async with savepoint(session):
                outcome = await item.job(session)
                new_head = head
                if outcome.audit is not None:
                    new_head = await audit.append(session, outcome.audit, head)
        except BaseException as error:
            if not _usable(session) and isinstance(error, Exception):
                return head  # the batch runs again; this unit with it
            self.stats.failed_units += 1
            if isinstance(error, IntegrityError):
                error = Aborted(
                    "the request conflicts with a concurrent change; retry", reason="CONCURRENT_WRITE"
                )
            elif isinstance(error, OperationalError):
                raise  # the connection or the file is in trouble: fail the batch
            if not item.future.done():
                item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return head
        done.append((item.future, outcome.result))
        return new_head


def _usable(session: AsyncSession) -> bool:
    transaction = session.sync_session.get_transaction()
    return transaction is not None and transaction.is_active


def write_path_for(db: Database, *, max_batch: int = 128) -> WritePath:
    return BatchedWritePath(db, max_batch=max_batch) if db.is_sqlite else PooledWritePath(db)

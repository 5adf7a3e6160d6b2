"""The kernel every service shares, on real SQLite files and PostgreSQL: the scheduler fires a
timer once across replicas and restarts, the audit chain exposes tampering, and the write path
commits many units of work in one transaction while refusing only the unit that failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from kasvu.registry.v1 import events_pb2
from sqlalchemy import text
from sqlmodel import col, select

from kasvuctl.cli import main as kasvu
from services.registry import bootstrap, handlers, model, store
from services.runtime.audit import verify_chain
from services.runtime.auth import Principal, Role
from services.runtime.clock import ManualClock
from services.runtime.db import Database
from services.runtime.dispatch import Dispatcher
from services.runtime.errors import AlreadyExists, FailedPrecondition
from services.runtime.tables import OutboxEvent, Timer
from services.runtime.uow import Context
from services.runtime.worker import Pruner, Retention, Scheduler, Worker
from services.runtime.writer import BatchedWritePath, write_path_for
from tests.conftest import MigratedDatabases
from tests.integration import toy
from tests.integration.helpers import ProviderKey, business_ids, count_rows, dispatching

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def noted(db: Database) -> Counter[str]:
    """How many times each tag's event was written to the outbox."""
    async with db.read_session() as session:
        rows = (
            await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_type) == toy.EVENT_TYPE))
        ).all()
    return Counter(events_pb2.TermsPublished.FromString(row.payload).terms for row in rows)


@contextlib.asynccontextmanager
async def replica(db_url: str, clock: ManualClock) -> AsyncIterator[tuple[Dispatcher, Worker]]:
    """One replica of the toy service: its own database pool, write path, dispatcher and worker
    (scheduler only), as a separate process would have."""
    db = Database(db_url)
    write_path = write_path_for(db)
    dispatcher = toy.toy_dispatcher(db, write_path, clock)
    worker = Worker(write_path, service="toy", jobs=[Scheduler(db, dispatcher)], poll_s=0.05)
    try:
        yield dispatcher, worker
    finally:
        await write_path.close()
        await db.dispose()


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def eventually(check, what: str, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {within} s: {what}")


@pytest.fixture
async def migrated(database_url: str, migrated_databases: MigratedDatabases) -> str:
    await migrated_databases.migrate(database_url, bootstrap.MIGRATIONS)
    return database_url


# -- the scheduler ----------------------------------------------------------------------------------


async def test_a_timer_due_while_the_service_was_down_fires_once_across_two_restarted_replicas(
    migrated: str,
) -> None:
    clock = ManualClock(T - timedelta(hours=1))
    async with replica(migrated, clock) as (dispatcher, worker), running(worker):
        await dispatcher.handle(toy.Schedule("lift-1", "lifted", T))
        await asyncio.sleep(0.2)  # the scheduler runs, but nothing is due yet
    # Stopped before T; started again, twice over, after it.
    clock.set(T + timedelta(minutes=5))
    async with replica(migrated, clock) as (_, first), replica(migrated, clock) as (_, second):
        db = Database(migrated)
        try:
            async with running(first, second):
                await eventually(lambda: _fired(db, "lift-1"), "the overdue timer fired")
                await asyncio.sleep(0.3)  # room for a second firing, which must not come
            assert await noted(db) == Counter({"lifted": 1})
            async with db.read_session() as session:
                timer = await session.get(Timer, "lift-1")
            assert timer is not None and timer.outcome == "applied"
            assert timer.fired_at == T + timedelta(minutes=5)
        finally:
            await db.dispose()


async def _fired(db: Database, key: str) -> bool:
    async with db.read_session() as session:
        timer = await session.get(Timer, key)
    return timer is not None and timer.fired_at is not None


async def test_a_timer_does_not_fire_before_it_is_due_and_a_moved_timer_fires_at_its_new_time(
    migrated: str,
) -> None:
    clock = ManualClock(T - timedelta(hours=1))
    db = Database(migrated)
    async with replica(migrated, clock) as (dispatcher, worker):
        await dispatcher.handle(toy.Schedule("deadline", "first", T))
        await dispatcher.handle(toy.Schedule("deadline", "moved", T + timedelta(days=1)))
        clock.set(T + timedelta(hours=1))
        assert await worker.run_once()
        assert await noted(db) == Counter()
        clock.set(T + timedelta(days=1))
        assert await worker.run_once()
        assert await worker.run_once()
        assert await noted(db) == Counter({"moved": 1})
    await db.dispose()


async def test_a_cancelled_timer_never_fires(migrated: str) -> None:
    clock = ManualClock(T - timedelta(hours=1))
    db = Database(migrated)
    async with replica(migrated, clock) as (dispatcher, worker):
        await dispatcher.handle(toy.Schedule("reminder", "never", T))
        await dispatcher.handle(toy.Unschedule("reminder"))
        clock.set(T + timedelta(days=3))
        assert await worker.run_once()
        assert await noted(db) == Counter()
        assert await count_rows(db, "timers") == 0
    await db.dispose()


async def test_every_timer_missed_during_downtime_fires_once_in_due_order(migrated: str) -> None:
    clock = ManualClock(T)
    db = Database(migrated)
    async with replica(migrated, clock) as (dispatcher, worker):
        for hour in (3, 1, 2):
            await dispatcher.handle(toy.Schedule(f"t{hour}", f"h{hour}", T + timedelta(hours=hour)))
        clock.set(T + timedelta(days=2))
        assert await worker.run_once()
        assert await worker.run_once()
    async with db.read_session() as session:
        rows = (await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all()
    assert [events_pb2.TermsPublished.FromString(r.payload).terms for r in rows] == ["h1", "h2", "h3"]
    await db.dispose()


async def test_only_commits_that_wrote_events_or_timers_wake_the_worker(runtime_db: Database) -> None:
    # A wake-up runs the relay and the scheduler at once; commits with nothing for them must
    # not, or a busy service spends its time asking an empty outbox.
    wakes: list[str] = []
    async with toy.toy(runtime_db) as dispatcher:
        dispatcher.after_commit = lambda: wakes.append("woken")
        retry = Context(idempotency_key="note-1")

        await dispatcher.handle(toy.Note("event"), retry)
        await dispatcher.handle(toy.Note("event"), retry)  # an idempotent replay writes nothing
        await dispatcher.handle(toy.Schedule("timer-1", "later", T))
        await dispatcher.handle(toy.Unschedule("timer-unknown"))
        with pytest.raises(FailedPrecondition):
            await dispatcher.handle(toy.Refuse("refused"))

    assert wakes == ["woken", "woken"]


# -- the audit chain --------------------------------------------------------------------------------


async def _history(db: Database) -> None:
    async with toy.toy(db) as dispatcher:
        actor = Principal(Role.REGION_ADMIN, "pirkanmaa", "admin-1")
        for tag in ("a", "b", "c", "d"):
            await dispatcher.handle(toy.Note(tag), Context(actor=actor))
        with pytest.raises(FailedPrecondition):
            await dispatcher.handle(toy.Refuse("refused"))


async def _verify(db: Database):  # type: ignore[no-untyped-def]
    async with db.read_session() as session:
        return await verify_chain(session)


async def test_the_audit_chain_holds_one_record_per_state_change_and_verifies(runtime_db: Database) -> None:
    await _history(runtime_db)

    verdict = await _verify(runtime_db)

    assert verdict.intact and verdict.records == 4  # the refused command changed nothing
    async with runtime_db.reader.connect() as connection:
        actors = (
            await connection.execute(text("SELECT actor, command, resources FROM audit_log ORDER BY seq"))
        ).all()
    assert actors[0] == ("region_admin:pirkanmaa:admin-1", "Note", '["notes/a"]')


@pytest.mark.parametrize(
    ("tampering", "broken_at"),
    [
        pytest.param("UPDATE audit_log SET actor = 'system' WHERE seq = 2", 2, id="changed"),
        pytest.param("DELETE FROM audit_log WHERE seq = 2", 3, id="deleted"),
        pytest.param(
            "UPDATE audit_log SET seq = CASE seq WHEN 2 THEN 3 WHEN 3 THEN 2 END WHERE seq IN (2, 3)",
            2,
            id="reordered",
        ),
    ],
)
async def test_a_changed_deleted_or_reordered_record_breaks_the_chain_where_it_happened(
    runtime_db: Database, tampering: str, broken_at: int
) -> None:
    await _history(runtime_db)
    async with runtime_db.writer.begin() as connection:
        if "CASE" in tampering:
            # Through a free position, so the primary key never collides mid-update.
            await connection.execute(text("UPDATE audit_log SET seq = 100 WHERE seq = 2"))
            await connection.execute(text("UPDATE audit_log SET seq = 2 WHERE seq = 3"))
            await connection.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 100"))
        else:
            await connection.execute(text(tampering))

    verdict = await _verify(runtime_db)

    assert not verdict.intact
    assert verdict.broken_at == broken_at


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_kasvu_audit_verify_passes_a_clean_history_and_names_the_altered_record(
    runtime_db: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _history(runtime_db)
    assert (
        await asyncio.to_thread(kasvu, ["audit", "verify", "registry", "--database-url", database_url]) == 0
    )
    clean = capsys.readouterr().out
    assert "intact, 4 records" in clean
    head = clean.rsplit("head ", 1)[1].strip()

    async with runtime_db.writer.begin() as connection:
        await connection.execute(text("UPDATE audit_log SET command = 'Forged' WHERE seq = 3"))
    assert (
        await asyncio.to_thread(kasvu, ["audit", "verify", "registry", "--database-url", database_url]) == 1
    )
    assert "BROKEN at record 3" in capsys.readouterr().out

    async with runtime_db.writer.begin() as connection:
        await connection.execute(text("UPDATE audit_log SET command = 'Note' WHERE seq = 3"))
        await connection.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    # Cutting off the newest record leaves a sound chain: the head kept elsewhere tells.
    assert (
        await asyncio.to_thread(
            kasvu, ["audit", "verify", "registry", "--database-url", database_url, "--expect", head]
        )
        == 1
    )
    assert "cut short" in capsys.readouterr().out


# -- the write path ----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_concurrent_registrations_commit_in_few_transactions_and_only_the_failing_one_is_refused(
    migrated: str,
) -> None:
    db = Database(migrated)
    next_id = business_ids(2_000_000)
    async with dispatching(
        db,
        service="registry",
        unit_of_work=store.unit_of_work_factory(),
        event_types=bootstrap.EVENT_TYPES,
        handlers=handlers.HANDLERS,
    ) as dispatcher:
        admin = Context(actor=Principal(Role.REGION_ADMIN, "pirkanmaa", "admin"))
        requirement = model.Requirement(
            "prepayment-register", "Entered in the register", model.RequirementKind.DECLARATION
        )
        terms = await dispatcher.handle(
            handlers.PublishTerms("pirkanmaa", "recruitment", "Rekrytointi", (requirement,)), admin
        )
        business = [next_id() for _ in range(200)]
        business[137] = business[12]  # the same provider twice: the later one must be refused alone

        def registration(business_id: str) -> handlers.RegisterProvider:
            key = ProviderKey()
            return handlers.RegisterProvider(
                region="pirkanmaa",
                service="recruitment",
                terms_version=terms.version,
                business_id=business_id,
                display_name=f"Provider {business_id}",
                evidence=(model.Evidence("prepayment-register", declared=True),),
                public_key=key.public_key,
                terms_signature=key.sign(terms.content_hash),
            )

        write_path = dispatcher.write_path
        assert isinstance(write_path, BatchedWritePath)
        before = write_path.stats.transactions
        outcomes = await asyncio.gather(
            *(
                dispatcher.handle(
                    registration(business_id),
                    Context(actor=Principal(Role.PROVIDER, business_id, "provider")),
                )
                for business_id in business
            ),
            return_exceptions=True,
        )
        transactions = write_path.stats.transactions - before

    refused = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert refused in ([137], [12])
    assert isinstance(outcomes[refused[0]], AlreadyExists)
    assert transactions <= 20, f"{transactions} transactions for 200 registrations"
    assert await count_rows(db, "registry_registrations") == 199
    assert await count_rows(db, "outbox", "event_type = 'kasvu.registry.v1.RegistrationAdmitted'") == 199
    async with db.read_session() as session:
        verdict = await verify_chain(session)
    assert verdict.intact and verdict.records == 200  # the terms and 199 registrations
    await db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_concurrent_publications_of_terms_on_postgresql_all_succeed_with_distinct_versions(
    migrated: str,
) -> None:
    """Racing for the next version number is retried, not answered with an error."""
    db = Database(migrated)
    async with dispatching(
        db,
        service="registry",
        unit_of_work=store.unit_of_work_factory(),
        event_types=bootstrap.EVENT_TYPES,
        handlers=handlers.HANDLERS,
    ) as dispatcher:
        admin = Context(actor=Principal(Role.REGION_ADMIN, "pirkanmaa", "admin"))
        requirement = model.Requirement(
            "prepayment-register", "Entered in the register", model.RequirementKind.DECLARATION
        )
        published = await asyncio.gather(
            *(
                dispatcher.handle(
                    handlers.PublishTerms("pirkanmaa", "recruitment", f"v{n}", (requirement,)), admin
                )
                for n in range(10)
            )
        )
    assert sorted(t.version for t in published) == list(range(1, 11))
    async with db.read_session() as session:
        verdict = await verify_chain(session)
    assert verdict.intact and verdict.records == 10
    await db.dispose()


# -- pruning ------------------------------------------------------------------------------------


async def test_pruning_drops_handled_records_past_their_window_and_keeps_the_rest(
    runtime_db: Database,
) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=8), now - timedelta(hours=1)
    async with runtime_db.writer.begin() as connection:
        for age, tag in ((old, "old"), (recent, "recent")):
            await connection.execute(
                text(
                    "INSERT INTO inbox (consumer, event_id, outcome, handled_at) "
                    "VALUES ('c', :id, 'applied', :at)"
                ),
                {"id": tag, "at": _stored(runtime_db, age)},
            )
            await connection.execute(
                text(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, response, created_at) "
                    "VALUES ('s', :id, 'f', 'null', :at)"
                ),
                {"id": tag, "at": _stored(runtime_db, age)},
            )
    write_path = write_path_for(runtime_db)
    try:
        await Pruner(
            write_path, Retention(inbox=timedelta(days=7), idempotency_keys=timedelta(days=7))
        ).prune()
    finally:
        await write_path.close()
    async with runtime_db.reader.connect() as connection:
        inbox = [row[0] for row in (await connection.execute(text("SELECT event_id FROM inbox"))).all()]
        keys = [row[0] for row in (await connection.execute(text("SELECT key FROM idempotency_keys"))).all()]
    # A redelivery or a client's retry within the window still finds its record.
    assert inbox == ["recent"] and keys == ["recent"]


def _stored(db: Database, moment: datetime) -> object:
    # As the UTCDateTime column stores it: naive UTC text on SQLite, timestamptz on PostgreSQL.
    return moment.replace(tzinfo=None).isoformat(sep=" ") if db.is_sqlite else moment

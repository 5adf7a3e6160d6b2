"""Self-monitoring use cases: define indicators, record observations, open breaches."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2

from services.runtime.auth import Principal, Role
from services.runtime.db import Database, UnitOfWork, utcnow
from services.runtime.errors import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.runtime.timestamps import timestamp
from services.selfmonitoring import model, store

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "kasvu.selfmonitoring.v1"
FINLAND = ZoneInfo("Europe/Helsinki")


def subject(event: str, region: str) -> str:
    return f"{SUBJECT_PREFIX}.{event}.{region}"


def indicator_name(region: str, indicator_id: str) -> str:
    return f"regions/{region}/indicators/{indicator_id}"


def breach_name(region: str, breach_id: str) -> str:
    return f"regions/{region}/breaches/{breach_id}"


def breach_to_proto(row: store.BreachRow) -> selfmonitoring_pb2.Breach:
    return selfmonitoring_pb2.Breach(
        name=breach_name(row.region, row.id),
        indicator=indicator_name(row.region, row.indicator_id),
        provider=row.provider,
        service=row.service,
        severity=selfmonitoring_pb2.Severity.Value(f"SEVERITY_{row.severity}"),
        value=row.value,
        threshold=row.threshold,
        sample_size=row.sample_size,
        state=selfmonitoring_pb2.BreachState.Value(f"BREACH_STATE_{row.state}"),
        open_time=timestamp(row.opened_at),
    )


@dataclass(frozen=True)
class CreateIndicator:
    region: str
    indicator_id: str
    display_name: str
    service: str
    deadline_days: int
    minimum_share: float
    window_days: int
    minimum_sample: int
    severity: model.Severity
    actor: Principal | None


@dataclass(frozen=True)
class RecordObservation:
    region: str
    indicator_id: str
    observation_id: str
    provider: str
    case_key: str
    started_on: date
    completed_on: date
    actor: Principal | None


@dataclass(frozen=True)
class ObservationRecorded:
    recorded: bool
    stats: model.WindowStats
    open_breach: str


def _require_actor(actor: Principal | None, what: str) -> Principal:
    if actor is None:
        raise Unauthenticated(f"{what} needs a bearer token")
    return actor


def _deny(what: str) -> PermissionDenied:
    return PermissionDenied(f"{what}: the token's organisation may not act here", reason="TENANT_MISMATCH")


class SelfMonitoringHandlers:
    """The self-monitoring programme's use cases over its database."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._after_commit = after_commit

    async def create_indicator(self, command: CreateIndicator) -> store.IndicatorRow:
        actor = _require_actor(command.actor, "defining an indicator")
        if actor.role != Role.REGION_ADMIN or actor.organisation != command.region:
            raise _deny("defining an indicator is for the region's own admins")
        indicator = model.new_indicator(
            command.region,
            command.indicator_id,
            command.display_name,
            command.service,
            command.deadline_days,
            command.minimum_share,
            command.window_days,
            command.minimum_sample,
            command.severity,
        )
        async with self._db.unit_of_work() as uow:
            existing = await uow.session.get(store.IndicatorRow, (indicator.region, indicator.indicator_id))
            if existing is not None:
                if store.indicator_from_row(existing) == indicator:
                    return existing  # a retried create of the same definition
                raise AlreadyExists(
                    f"{indicator_name(indicator.region, indicator.indicator_id)} exists with "
                    "another definition",
                    reason="INDICATOR_EXISTS",
                )
            row = store.row_from_indicator(indicator, self._clock())
            uow.session.add(row)
            await self._commit(uow)
        return row

    async def record_observation(self, command: RecordObservation) -> ObservationRecorded:
        actor = _require_actor(command.actor, "recording an observation")
        now = self._clock()
        today = now.astimezone(FINLAND).date()
        observation = model.new_observation(
            command.observation_id,
            command.provider,
            command.case_key,
            command.started_on,
            command.completed_on,
            today=today,
        )
        own_region = actor.role == Role.REGION_ADMIN and actor.organisation == command.region
        own_cases = actor.role == Role.PROVIDER and actor.organisation == observation.provider
        if not (own_region or own_cases):
            raise _deny("observations come from the region or from the provider about its own cases")
        async with self._db.unit_of_work() as uow:
            # Locking the indicator serialises evaluations of it on PostgreSQL, so two
            # concurrent late cases cannot each miss the other and both skip the breach.
            # (SQLite's BEGIN IMMEDIATE already serialises writers.)
            indicator_row = await uow.session.get(
                store.IndicatorRow,
                (command.region, command.indicator_id),
                with_for_update=uow.dialect != "sqlite",
            )
            if indicator_row is None:
                raise NotFound(
                    f"no indicator {indicator_name(command.region, command.indicator_id)}",
                    reason="INDICATOR_NOT_FOUND",
                )
            indicator = store.indicator_from_row(indicator_row)
            key = (command.region, command.indicator_id, observation.observation_id)
            recorded = await uow.session.get(store.ObservationRow, key) is None
            if recorded:
                uow.session.add(
                    store.ObservationRow(
                        region=command.region,
                        indicator_id=command.indicator_id,
                        observation_id=observation.observation_id,
                        provider=observation.provider,
                        case_key=observation.case_key,
                        started_on=observation.started_on,
                        completed_on=observation.completed_on,
                        within_deadline=model.is_within_deadline(indicator, observation),
                        recorded_at=now,
                    )
                )
                await uow.session.flush()
            stats = await store.window_stats(uow.session, indicator, observation.provider, today)
            breach_row = await store.open_breach_of(
                uow.session, indicator.region, indicator.indicator_id, observation.provider
            )
            # A retried observation changes nothing: it reports, it never opens a breach
            # (which, not being committed, would be named but never stored).
            if recorded and model.evaluate(indicator, stats, breach_open=breach_row is not None):
                breach = model.open_breach(uuid.uuid4().hex, indicator, observation.provider, stats, now)
                breach_row = store.row_from_breach(breach)
                uow.session.add(breach_row)
                uow.emit(
                    subject("BreachOpened", breach.region),
                    events_pb2.BreachOpened(breach=breach_to_proto(breach_row), region=breach.region),
                )
                log.info(
                    "breach opened",
                    extra={
                        "breach": breach_name(breach.region, breach.id),
                        "indicator": indicator.indicator_id,
                    },
                )
            if recorded:
                await self._commit(uow)
        return ObservationRecorded(
            recorded=recorded,
            stats=stats,
            open_breach=breach_name(breach_row.region, breach_row.id) if breach_row is not None else "",
        )

    async def get_indicator(self, region: str, indicator_id: str) -> store.IndicatorRow:
        async with self._db.read_session() as session:
            row = await session.get(store.IndicatorRow, (region, indicator_id))
        if row is None:
            raise NotFound(
                f"no indicator {indicator_name(region, indicator_id)}", reason="INDICATOR_NOT_FOUND"
            )
        return row

    async def get_breach(self, region: str, breach_id: str, actor: Principal | None) -> store.BreachRow:
        self.require_supervision(region, actor)
        async with self._db.read_session() as session:
            row = await session.get(store.BreachRow, breach_id)
        if row is None or row.region != region:
            raise NotFound(f"no breach {breach_name(region, breach_id)}", reason="BREACH_NOT_FOUND")
        return row

    async def list_breaches(
        self, region: str, before: tuple[str, str] | None, limit: int, actor: Principal | None
    ) -> Sequence[store.BreachRow]:
        self.require_supervision(region, actor)
        async with self._db.read_session() as session:
            return await store.breaches_page(session, region, before, limit)

    @staticmethod
    def require_supervision(region: str, actor: Principal | None) -> Principal:
        """Breaches and alerts are for the region's supervisors and admins."""
        actor = _require_actor(actor, "reading breaches and alerts")
        if actor.role not in (Role.SUPERVISOR, Role.REGION_ADMIN) or actor.organisation != region:
            raise _deny("breaches and alerts are for the region's own supervisors")
        return actor

    async def _commit(self, uow: UnitOfWork) -> None:
        await uow.commit()
        self._after_commit()

"""Self-monitoring storage: tables for indicators, observations and breaches, repositories that
take and return domain objects, and the service's unit of work that carries them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from sqlalchemy import Index, case
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.tables import utc_field, utcnow
from services.runtime.uow import Context, UnitOfWork
from services.selfmonitoring import model


class IndicatorRow(SQLModel, table=True):
    __tablename__ = "selfmonitoring_indicators"

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    display_name: str = Field(max_length=200)
    service: str = Field(max_length=63)
    deadline_days: int
    minimum_share: float
    window_days: int
    minimum_sample: int
    severity: str = Field(max_length=16)
    created_at: datetime = utc_field(default_factory=utcnow)


class ObservationRow(SQLModel, table=True):
    """One case event; the case key is a pseudonym, never a person's identity."""

    __tablename__ = "selfmonitoring_observations"
    # Serves the window count of one provider on one indicator.
    __table_args__ = (
        Index("ix_selfmonitoring_observations_window", "region", "indicator_id", "provider", "completed_on"),
    )

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    observation_id: str = Field(primary_key=True, max_length=128)
    provider: str = Field(max_length=9)
    case_key: str = Field(max_length=128)
    started_on: date
    completed_on: date
    within_deadline: bool
    recorded_at: datetime = utc_field(default_factory=utcnow)


class BreachRow(SQLModel, table=True):
    __tablename__ = "selfmonitoring_breaches"

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    indicator_id: str = Field(max_length=63)
    provider: str = Field(max_length=9)
    service: str = Field(max_length=63)
    severity: str = Field(max_length=16)
    value: float
    threshold: float
    sample_size: int
    state: str = Field(default="OPEN", max_length=16)
    # Set while open: at most one open breach per indicator and provider, enforced by the database.
    open_key: str | None = Field(default=None, unique=True, max_length=140)
    opened_at: datetime = utc_field()


SELFMONITORING_TABLES = (
    "selfmonitoring_indicators",
    "selfmonitoring_observations",
    "selfmonitoring_breaches",
)


def indicator_from_row(row: IndicatorRow) -> model.Indicator:
    return model.Indicator(
        region=row.region,
        indicator_id=row.indicator_id,
        display_name=row.display_name,
        service=row.service,
        deadline_days=row.deadline_days,
        minimum_share=row.minimum_share,
        window_days=row.window_days,
        minimum_sample=row.minimum_sample,
        severity=model.Severity(row.severity),
        created_at=row.created_at,
    )


def open_key(region: str, indicator_id: str, provider: str) -> str:
    return f"{region}/{indicator_id}/{provider}"


def breach_from_row(row: BreachRow) -> model.Breach:
    return model.Breach(
        id=row.id,
        region=row.region,
        indicator_id=row.indicator_id,
        provider=row.provider,
        service=row.service,
        severity=model.Severity(row.severity),
        value=row.value,
        threshold=row.threshold,
        sample_size=row.sample_size,
        opened_at=row.opened_at,
        state=model.BreachState(row.state),
    )


class IndicatorRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def get(
        self, region: str, indicator_id: str, *, for_update: bool = False
    ) -> model.Indicator | None:
        # Locking the indicator serialises evaluations of it on PostgreSQL, so two concurrent
        # late cases cannot each miss the other and both skip the breach. (SQLite's single
        # writer serialises them already.)
        lock = for_update and not self._uow.read_only and self._session.bind is not None
        lock = lock and self._session.bind.dialect.name == "postgresql"  # type: ignore[union-attr]
        row = await self._session.get(IndicatorRow, (region, indicator_id), with_for_update=lock)
        return indicator_from_row(row) if row is not None else None

    def add(self, indicator: model.Indicator) -> None:
        assert indicator.created_at is not None, "only created indicators are stored"
        self._session.add(
            IndicatorRow(
                region=indicator.region,
                indicator_id=indicator.indicator_id,
                display_name=indicator.display_name,
                service=indicator.service,
                deadline_days=indicator.deadline_days,
                minimum_share=indicator.minimum_share,
                window_days=indicator.window_days,
                minimum_sample=indicator.minimum_sample,
                severity=str(indicator.severity),
                created_at=indicator.created_at,
            )
        )
        self._uow.track(indicator, indicator.name)


class ObservationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def exists(self, region: str, indicator_id: str, observation_id: str) -> bool:
        return await self._session.get(ObservationRow, (region, indicator_id, observation_id)) is not None

    def add(self, indicator: model.Indicator, observation: model.Observation, recorded_at: datetime) -> None:
        self._session.add(
            ObservationRow(
                region=indicator.region,
                indicator_id=indicator.indicator_id,
                observation_id=observation.observation_id,
                provider=observation.provider,
                case_key=observation.case_key,
                started_on=observation.started_on,
                completed_on=observation.completed_on,
                within_deadline=model.is_within_deadline(indicator, observation),
                recorded_at=recorded_at,
            )
        )

    async def window_stats(self, indicator: model.Indicator, provider: str, as_of: date) -> model.WindowStats:
        """Counts in the database, so evaluating one observation never rescans history in Python."""
        await self._session.flush()
        start, end = model.window_bounds(indicator, as_of)
        result = await self._session.exec(
            select(
                func.count(),
                func.coalesce(func.sum(case((col(ObservationRow.within_deadline), 1), else_=0)), 0),
            ).where(
                ObservationRow.region == indicator.region,
                ObservationRow.indicator_id == indicator.indicator_id,
                ObservationRow.provider == provider,
                col(ObservationRow.completed_on) >= start,
                col(ObservationRow.completed_on) <= end,
            )
        )
        total, within = result.one()
        return model.WindowStats(sample_size=int(total), within_deadline=int(within))


class BreachRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def get(self, breach_id: str) -> model.Breach | None:
        row = await self._session.get(BreachRow, breach_id)
        return breach_from_row(row) if row is not None else None

    async def open_of(self, region: str, indicator_id: str, provider: str) -> model.Breach | None:
        result = await self._session.exec(
            select(BreachRow).where(BreachRow.open_key == open_key(region, indicator_id, provider))
        )
        row = result.first()
        return breach_from_row(row) if row is not None else None

    def add(self, breach: model.Breach) -> None:
        self._session.add(
            BreachRow(
                id=breach.id,
                region=breach.region,
                indicator_id=breach.indicator_id,
                provider=breach.provider,
                service=breach.service,
                severity=str(breach.severity),
                value=breach.value,
                threshold=breach.threshold,
                sample_size=breach.sample_size,
                state=str(breach.state),
                open_key=open_key(breach.region, breach.indicator_id, breach.provider),
                opened_at=breach.opened_at,
            )
        )
        self._uow.track(breach, breach.name)

    async def page(self, region: str, before: tuple[datetime, str] | None, limit: int) -> list[model.Breach]:
        """Newest first; keyset on (opened_at, id) so pages stay stable as breaches open."""
        query = select(BreachRow).where(BreachRow.region == region)
        if before is not None:
            opened_at, breach_id = before
            query = query.where(
                (col(BreachRow.opened_at) < opened_at)
                | ((col(BreachRow.opened_at) == opened_at) & (col(BreachRow.id) < breach_id))
            )
        query = query.order_by(col(BreachRow.opened_at).desc(), col(BreachRow.id).desc()).limit(limit)
        return [breach_from_row(row) for row in (await self._session.exec(query)).all()]


class SelfMonitoringUnitOfWork(UnitOfWork):
    """Self-monitoring's unit of work: indicators, observations and breaches."""

    indicators: IndicatorRepository
    observations: ObservationRepository
    breaches: BreachRepository

    async def bind(self, session: AsyncSession) -> None:
        await super().bind(session)
        self.indicators = IndicatorRepository(session, self)
        self.observations = ObservationRepository(session)
        self.breaches = BreachRepository(session, self)


def unit_of_work_factory() -> Callable[[Context, datetime, bool], SelfMonitoringUnitOfWork]:
    def make(context: Context, now: datetime, read_only: bool) -> SelfMonitoringUnitOfWork:
        return SelfMonitoringUnitOfWork(context, now, read_only=read_only)

    return make

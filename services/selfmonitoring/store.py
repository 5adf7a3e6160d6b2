"""Self-monitoring storage: indicators, observations and breaches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import Index, case
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import utc_field, utcnow
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
    )


def row_from_indicator(indicator: model.Indicator, created_at: datetime) -> IndicatorRow:
    return IndicatorRow(
        region=indicator.region,
        indicator_id=indicator.indicator_id,
        display_name=indicator.display_name,
        service=indicator.service,
        deadline_days=indicator.deadline_days,
        minimum_share=indicator.minimum_share,
        window_days=indicator.window_days,
        minimum_sample=indicator.minimum_sample,
        severity=str(indicator.severity),
        created_at=created_at,
    )


def open_key(region: str, indicator_id: str, provider: str) -> str:
    return f"{region}/{indicator_id}/{provider}"


def row_from_breach(breach: model.Breach) -> BreachRow:
    return BreachRow(
        id=breach.id,
        region=breach.region,
        indicator_id=breach.indicator_id,
        provider=breach.provider,
        service=breach.service,
        severity=str(breach.severity),
        value=breach.value,
        threshold=breach.threshold,
        sample_size=breach.sample_size,
        open_key=open_key(breach.region, breach.indicator_id, breach.provider),
        opened_at=breach.opened_at,
    )


async def window_stats(
    session: AsyncSession, indicator: model.Indicator, provider: str, as_of: date
) -> model.WindowStats:
    """Counts in the database, so evaluating one observation never rescans history in Python."""
    start, end = model.window_bounds(indicator, as_of)
    result = await session.exec(
        select(
            func.count(), func.coalesce(func.sum(case((col(ObservationRow.within_deadline), 1), else_=0)), 0)
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


async def open_breach_of(
    session: AsyncSession, region: str, indicator_id: str, provider: str
) -> BreachRow | None:
    result = await session.exec(
        select(BreachRow).where(BreachRow.open_key == open_key(region, indicator_id, provider))
    )
    return result.first()


async def breaches_page(
    session: AsyncSession, region: str, before: tuple[str, str] | None, limit: int
) -> Sequence[BreachRow]:
    """Newest first; keyset on (opened_at, id) so pages stay stable as breaches open."""
    query = select(BreachRow).where(BreachRow.region == region)
    if before is not None:
        opened_at = datetime.fromisoformat(before[0])
        query = query.where(
            (col(BreachRow.opened_at) < opened_at)
            | ((col(BreachRow.opened_at) == opened_at) & (col(BreachRow.id) < before[1]))
        )
    query = query.order_by(col(BreachRow.opened_at).desc(), col(BreachRow.id).desc()).limit(limit)
    return (await session.exec(query)).all()

"""Storage of alliances, market-failure findings and direct awards: whole aggregates as JSON
documents (tendering's DocumentRepository) beside the columns they are found by, and the unit
of work that adds these repositories to tendering's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import serialize_on
from services.runtime.tables import utc_field
from services.runtime.uow import Context, UnitOfWork
from services.tendering import alliance, market_failure
from services.tendering.store import CallCache, DocumentRepository, ReceiptKey, TenderingUnitOfWork


class AllianceRow(SQLModel, table=True):
    """An alliance: its procurement and agreement; `document` is the whole aggregate."""

    __tablename__ = "tendering_alliance_alliances"

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    created_at: datetime = utc_field()
    document: str


class FindingRow(SQLModel, table=True):
    """A market-failure finding, found by region and service when a municipality is awarded."""

    __tablename__ = "tendering_market_failure_findings"

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    service: str = Field(max_length=63)
    state: str = Field(max_length=16)
    created_at: datetime = utc_field()
    document: str


class DirectAwardRow(SQLModel, table=True):
    __tablename__ = "tendering_market_failure_direct_awards"

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    created_at: datetime = utc_field()
    document: str


TABLES = (
    "tendering_alliance_alliances",
    "tendering_market_failure_findings",
    "tendering_market_failure_direct_awards",
)


class AllianceRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        super().__init__(session, uow, AllianceRow, alliance.Alliance)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        return {"region": aggregate.region, **super()._columns(aggregate)}

    async def lock(self, alliance_id: str) -> alliance.Alliance | None:
        """The alliance, with writers of the same alliance taking turns from here (PostgreSQL)."""
        if not self._uow.read_only:
            await serialize_on(self._session, f"tendering:alliance:{alliance_id}")
        found: alliance.Alliance | None = await self.get(alliance_id)
        return found


class FindingRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        super().__init__(session, uow, FindingRow, market_failure.Finding)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        return {
            "region": aggregate.region,
            "service": aggregate.spec.service,
            "state": str(aggregate.state),
            **super()._columns(aggregate),
        }

    async def serialize(self, region: str) -> None:
        """A region's findings and direct awards change one writer at a time: an award never
        rests on a finding being lifted in a concurrent transaction."""
        await serialize_on(self._session, f"tendering:market-failure:{region}")

    async def active(self, region: str, service: str) -> list[market_failure.Finding]:
        query = (
            select(FindingRow)
            .where(
                FindingRow.region == region,
                FindingRow.service == service,
                FindingRow.state == str(market_failure.FindingState.ACTIVE),
            )
            .order_by(FindingRow.id)
        )
        return [self._track(row) for row in (await self._session.exec(query)).all()]


class DirectAwardRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        super().__init__(session, uow, DirectAwardRow, market_failure.DirectAward)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        return {"region": aggregate.region, **super()._columns(aggregate)}


class AllianceUnitOfWork(TenderingUnitOfWork):
    """Tendering's unit of work with the alliance and market-failure repositories."""

    alliances: AllianceRepository
    findings: FindingRepository
    direct_awards: DirectAwardRepository

    async def bind(self, session: AsyncSession) -> None:
        await super().bind(session)
        self.alliances = AllianceRepository(session, self)
        self.findings = FindingRepository(session, self)
        self.direct_awards = DirectAwardRepository(session, self)

    async def save(self) -> None:
        await super().save()
        await self.alliances.save()
        await self.findings.save()
        await self.direct_awards.save()


def unit_of_work_factory(
    receipt_key: ReceiptKey, cache: CallCache | None = None
) -> Callable[[Context, datetime, bool], AllianceUnitOfWork]:
    shared = cache or CallCache()

    def make(context: Context, now: datetime, read_only: bool) -> AllianceUnitOfWork:
        return AllianceUnitOfWork(context, now, read_only, receipt_key=receipt_key, cache=shared)

    return make

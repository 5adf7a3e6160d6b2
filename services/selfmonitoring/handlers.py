"""Self-monitoring use cases: define indicators, record observations, open breaches; each a
`handler(message, uow)` reached through the dispatcher."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from services.runtime import access
from services.runtime.auth import Principal
from services.runtime.domain import Command, Query
from services.runtime.errors import AlreadyExists, NotFound
from services.selfmonitoring import model

if TYPE_CHECKING:
    from services.selfmonitoring.store import SelfMonitoringUnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateIndicator(Command):
    indicator: model.Indicator
    """Validated by model.new_indicator at the door."""


@dataclass(frozen=True)
class RecordObservation(Command):
    region: str
    indicator_id: str
    observation_id: str
    provider: str
    case_key: str
    started_on: date
    completed_on: date


@dataclass(frozen=True)
class ObservationRecorded:
    """The answer to RecordObservation: whether it was new, the provider's value, its open breach."""

    recorded: bool
    stats: model.WindowStats
    open_breach: str


@dataclass(frozen=True)
class GetIndicator(Query):
    region: str
    indicator_id: str


@dataclass(frozen=True)
class GetBreach(Query):
    region: str
    breach_id: str


@dataclass(frozen=True)
class ListBreaches(Query):
    region: str
    before: tuple[datetime, str] | None
    limit: int


def require_supervision(region: str, actor: Principal | None) -> Principal:
    """Breaches and alerts are for the region's supervisors and admins."""
    return access.require(
        actor,
        any_of=[access.supervisor(region), access.region_admin(region)],
        action="reading breaches and alerts",
    )


async def create_indicator(command: CreateIndicator, uow: SelfMonitoringUnitOfWork) -> model.Indicator:
    indicator = command.indicator
    access.require(uow.actor, any_of=[access.region_admin(indicator.region)], action="defining an indicator")
    existing = await uow.indicators.get(indicator.region, indicator.indicator_id)
    if existing is not None:
        if existing == indicator:
            return existing  # a retried create of the same definition
        raise AlreadyExists(f"{indicator.name} exists with another definition", reason="INDICATOR_EXISTS")
    created = model.create_indicator(indicator, uow.now)
    uow.indicators.add(created)
    return created


async def record_observation(
    command: RecordObservation, uow: SelfMonitoringUnitOfWork
) -> ObservationRecorded:
    observation = model.new_observation(
        command.observation_id,
        command.provider,
        command.case_key,
        command.started_on,
        command.completed_on,
        today=uow.today,
    )
    access.require(
        uow.actor,
        any_of=[access.region_admin(command.region), access.provider(observation.provider)],
        action="recording an observation (the region's own, or a provider's about its own cases)",
    )
    indicator = await uow.indicators.get(command.region, command.indicator_id, for_update=True)
    if indicator is None:
        name = model.INDICATOR.format(region=command.region, indicator=command.indicator_id)
        raise NotFound(f"no indicator {name}", reason="INDICATOR_NOT_FOUND")
    recorded = not await uow.observations.exists(
        command.region, command.indicator_id, observation.observation_id
    )
    if recorded:
        uow.observations.add(indicator, observation, uow.now)
    stats = await uow.observations.window_stats(indicator, observation.provider, uow.today)
    breach = await uow.breaches.open_of(indicator.region, indicator.indicator_id, observation.provider)
    # A retried observation changes nothing: it reports, it never opens a breach.
    if recorded and model.evaluate(indicator, stats, breach_open=breach is not None):
        breach = model.open_breach(uuid.uuid4().hex, indicator, observation.provider, stats, uow.now)
        uow.breaches.add(breach)
        log.info("breach opened", extra={"breach": breach.name, "indicator": indicator.indicator_id})
    return ObservationRecorded(recorded, stats, breach.name if breach is not None else "")


async def get_indicator(query: GetIndicator, uow: SelfMonitoringUnitOfWork) -> model.Indicator:
    indicator = await uow.indicators.get(query.region, query.indicator_id)
    if indicator is None:
        name = model.INDICATOR.format(region=query.region, indicator=query.indicator_id)
        raise NotFound(f"no indicator {name}", reason="INDICATOR_NOT_FOUND")
    return indicator


async def get_breach(query: GetBreach, uow: SelfMonitoringUnitOfWork) -> model.Breach:
    require_supervision(query.region, uow.actor)
    breach = await uow.breaches.get(query.breach_id)
    if breach is None or breach.region != query.region:
        name = model.BREACH.format(region=query.region, breach=query.breach_id)
        raise NotFound(f"no breach {name}", reason="BREACH_NOT_FOUND")
    return breach


async def list_breaches(query: ListBreaches, uow: SelfMonitoringUnitOfWork) -> list[model.Breach]:
    require_supervision(query.region, uow.actor)
    return await uow.breaches.page(query.region, query.before, query.limit)


HANDLERS: dict[type[Any], Any] = {
    CreateIndicator: create_indicator,
    RecordObservation: record_observation,
    GetIndicator: get_indicator,
    GetBreach: get_breach,
    ListBreaches: list_breaches,
}

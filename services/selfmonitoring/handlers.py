"""Self-monitoring use cases: define indicators, record observations, open breaches; each a
`handler(message, uow)` reached through the dispatcher."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from services.runtime import access
from services.runtime.auth import Principal, Role
from services.runtime.clock import FINLAND
from services.runtime.domain import Command, Query, validate_business_id
from services.runtime.errors import (
    AlreadyExists,
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
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
    started_on: date | None
    """None: the day it was completed or observed (refused for a share within a deadline)."""
    completed_on: date | None
    """None: a pending case (a share within a deadline), counted late once its deadline passes."""
    source: model.ObservationSource | None = None
    """None: the caller's own source (a region admin's case data, a provider's report)."""
    value: float | None = None
    service: str = ""
    municipality: str = ""
    """The scope keys besides the provider (which of them is required, the indicator's scope says)."""
    group: str = ""
    """The customer group, for equal treatment."""


@dataclass(frozen=True)
class RecordObservations(Command):
    """A batch of observations from a client stream, taken in one unit of work; a bad record
    is reported by its index and the rest go on."""

    items: tuple[RecordObservation, ...]
    first_index: int = 0
    """The stream position of items[0], so rejections name the record's place in the stream."""


@dataclass(frozen=True)
class SweepDeadlines(Command):
    """Set as a timer for each deadline a pending case has; counts the overdue ones late."""

    region: str
    indicator_id: str


@dataclass(frozen=True)
class EscalateCorrectiveAction(Command):
    """Set as a timer for a corrective action's deadline."""

    region: str
    action_id: str


@dataclass(frozen=True)
class RespondToCorrectiveAction(Command):
    region: str
    action_id: str
    response: str


@dataclass(frozen=True)
class ListCorrectiveActions(Query):
    region: str
    provider: str
    before: tuple[datetime, str] | None
    limit: int


@dataclass(frozen=True)
class RecordAdmission(Command):
    """From the registry's RegistrationAdmitted."""

    provider: model.AdmittedProvider
    at: datetime | None = None
    """When the registry admitted it (None: now)."""


@dataclass(frozen=True)
class RecordAvailabilityChange(Command):
    """From the registry's ProviderSuspended, ProviderReinstated, RegistrationLapsed,
    ProviderRevoked and RegistrationWithdrawn."""

    region: str
    service: str
    business_id: str
    change: model.AvailabilityChange
    at: datetime | None = None
    """When it happened in the registry (None: now); an older change than the last one applied
    changes nothing, so events followed by separate consumers may arrive in any order."""


@dataclass(frozen=True)
class GetAvailabilityReport(Query):
    region: str


@dataclass(frozen=True)
class GetIndicatorReport(Query):
    region: str
    as_of: date | None


@dataclass(frozen=True)
class IndicatorValue:
    indicator: model.Indicator
    provider: str
    """The scope's group: the provider's business ID for a provider-scoped indicator."""
    value: float
    sample_size: int
    window: tuple[date, date]


@dataclass(frozen=True)
class SweepResult:
    overdue: int
    opened_breaches: list[str]


@dataclass(frozen=True)
class ObservationRecorded:
    """The answer to RecordObservation: whether it was new, the provider's value, its open breach."""

    recorded: bool
    stats: model.WindowStats
    value: float
    open_breach: str


@dataclass(frozen=True)
class RejectedObservation:
    index: int
    observation_id: str
    code: str
    message: str
    fields: list[str]


@dataclass(frozen=True)
class ObservationsRecorded:
    """The answer to RecordObservations."""

    recorded: int
    duplicates: int
    rejected: list[RejectedObservation]
    opened_breaches: list[str]
    resolved_breaches: list[str]
    raised_warnings: list[str] = field(default_factory=list)
    cleared_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CreateProgramme(Command):
    draft: model.Programme
    """Validated by model.new_programme at the door; its version is set when created."""
    default_catalogue_service: str = ""


@dataclass(frozen=True)
class PublishProgramme(Command):
    region: str
    version: int


@dataclass(frozen=True)
class GetProgramme(Query):
    region: str
    version: int


@dataclass(frozen=True)
class ListProgrammes(Query):
    region: str
    before: int | None
    limit: int


@dataclass(frozen=True)
class ListAlerts(Query):
    region: str
    before: tuple[datetime, str] | None
    limit: int


@dataclass(frozen=True)
class AcknowledgeAlert(Command):
    region: str
    alert_id: str


@dataclass(frozen=True)
class AlertView:
    """An alert with its breach, as listed and acknowledged."""

    alert: model.Alert
    breach: model.Breach


@dataclass(frozen=True)
class ListBreachObservations(Query):
    region: str
    breach_id: str
    before: tuple[date, str, str] | None
    limit: int


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
    state: model.BreachState | None = None
    severity: model.Severity | None = None
    provider: str = ""


@dataclass(frozen=True)
class ListIndicators(Query):
    region: str
    after: str
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


_CODE_NAMES: dict[type[DomainError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    PermissionDenied: "PERMISSION_DENIED",
    Unauthenticated: "UNAUTHENTICATED",
}


@functools.lru_cache(maxsize=4096)
def _canonical(business_id: str) -> str:
    """The business ID in canonical form when it is one (the access check compares it with the
    token's); as given otherwise, for model validation to refuse."""
    try:
        return validate_business_id(business_id, "observation.provider")
    except InvalidArgument:
        return business_id


def _source_of(item: RecordObservation, actor: Principal | None) -> model.ObservationSource:
    """The observation's source, checked against who records it: the region records its own
    sources (and may relay a provider's report); a provider records only its own reports.
    `item.provider` in canonical form."""
    action = "recording an observation"
    if item.source is None:
        if actor is not None and access.region_admin(item.region).admits(actor):
            return model.ObservationSource.REGION_CASE_DATA
        access.require(
            actor,
            any_of=[access.region_admin(item.region), access.provider(item.provider)],
            action=f"{action} (the region's own, or a provider's report about its own cases)",
        )
        return model.ObservationSource.PROVIDER_REPORT
    if item.source in model.REGION_SOURCES:
        access.require(
            actor,
            any_of=[access.region_admin(item.region)],
            action=f"{action} from the region's own source {item.source}",
        )
    else:
        access.require(
            actor,
            any_of=[access.region_admin(item.region), access.provider(item.provider)],
            action=f"{action} reported by a provider (about its own cases only)",
        )
    return item.source


@dataclass
class _Batch:
    """A batch's accepted observations and pending cases, grouped by indicator."""

    indicators: dict[tuple[str, str], model.Indicator]
    accepted: dict[tuple[str, str], list[model.Observation]]
    rejected: list[RejectedObservation]
    pending: dict[tuple[str, str], list[model.PendingCase]] = field(default_factory=dict)
    completing: dict[tuple[str, str], list[model.PendingCase]] = field(default_factory=dict)
    """Pending cases the batch completes, by indicator."""
    duplicates: int = 0

    @property
    def recorded(self) -> int:
        return sum(len(o) for o in self.accepted.values()) + sum(len(p) for p in self.pending.values())


async def _indicator(
    batch: _Batch, uow: SelfMonitoringUnitOfWork, region: str, indicator_id: str
) -> model.Indicator:
    key = (region, indicator_id)
    if key not in batch.indicators:
        found = await uow.indicators.get(region, indicator_id, for_update=True)
        if found is None:
            name = model.INDICATOR.format(region=region, indicator=indicator_id)
            raise NotFound(f"no indicator {name}", reason="INDICATOR_NOT_FOUND")
        batch.indicators[key] = found
    return batch.indicators[key]


@dataclass(frozen=True)
class _Candidate:
    index: int
    indicator: model.Indicator
    observation: model.Observation
    pending: bool


def _pending_problem(item: RecordObservation, indicator: model.Indicator) -> None:
    """A case without completed_on is pending: only a share within a deadline has one."""
    if indicator.kind is not model.MetricKind.SHARE_WITHIN_DEADLINE:
        problem = f"is required for a {indicator.kind} indicator"
        raise InvalidArgument(
            f"observation.completed_on {problem}", [FieldViolation("observation.completed_on", problem)]
        )
    if item.started_on is None:
        problem = "is required for a pending case"
        raise InvalidArgument(
            f"observation.started_on {problem}", [FieldViolation("observation.started_on", problem)]
        )


async def _accept(
    items: tuple[RecordObservation, ...], first_index: int, uow: SelfMonitoringUnitOfWork, strict: bool
) -> _Batch:
    """Validate and authorise each record; a bad one is rejected (raised when strict)."""
    batch = _Batch({}, {}, [])
    candidates: list[_Candidate] = []
    # The source and its access check depend on the region, the source and the provider only:
    # decided once per batch for each, not per record (a batch is often one provider's).
    sources: dict[tuple[str, model.ObservationSource | None, str], model.ObservationSource | DomainError] = {}
    for offset, item in enumerate(items):
        try:
            decided = sources.get((item.region, item.source, item.provider))
            if decided is None:
                try:
                    decided = _source_of(replace(item, provider=_canonical(item.provider)), uow.actor)
                except DomainError as error:
                    decided = error
                sources[(item.region, item.source, item.provider)] = decided
            if isinstance(decided, DomainError):
                raise decided
            source = decided
            if item.completed_on is None and item.started_on is not None and item.started_on > uow.today:
                problem = "must not be in the future"
                raise InvalidArgument(
                    f"observation.started_on {problem}", [FieldViolation("observation.started_on", problem)]
                )
            day = item.completed_on or item.started_on or uow.today
            indicator = await _indicator(batch, uow, item.region, item.indicator_id)
            observation = model.new_observation(
                item.observation_id,
                item.provider,
                item.case_key,
                item.started_on or day,
                day,
                today=uow.today,
                source=source,
                value=item.value,
                service=item.service,
                municipality=item.municipality,
                scope=indicator.scope,
                group=item.group,
            )
            if item.completed_on is None:
                _pending_problem(item, indicator)
            else:
                indicator.check(observation, started=item.started_on is not None)
        except DomainError as error:
            if strict:
                raise
            batch.rejected.append(_rejection(first_index + offset, item.observation_id, error))
            continue
        candidates.append(_Candidate(first_index + offset, indicator, observation, item.completed_on is None))
    await _drop_repeats(batch, candidates, uow, strict)
    return batch


def _rejection(index: int, observation_id: str, error: DomainError) -> RejectedObservation:
    code = next((name for kind, name in _CODE_NAMES.items() if isinstance(error, kind)), "INVALID_ARGUMENT")
    return RejectedObservation(
        index, observation_id, code, error.message, [v.field for v in error.violations]
    )


_Key = tuple[str, str, model.ObservationSource, str]


async def _stored(
    candidates: list[_Candidate], uow: SelfMonitoringUnitOfWork
) -> tuple[dict[_Key, model.Observation], dict[_Key, model.PendingCase]]:
    """The observations and pending cases stored under the candidates' ids: one select per
    region for each (ids in chunks), whatever the batch's indicators and sources."""
    wanted: dict[str, set[str]] = {}
    for candidate in candidates:
        wanted.setdefault(candidate.indicator.region, set()).add(candidate.observation.observation_id)
    stored: dict[_Key, model.Observation] = {}
    pending: dict[_Key, model.PendingCase] = {}
    for region, ids in wanted.items():
        for indicator_id, found in await uow.observations.existing(region, sorted(ids)):
            stored[(region, indicator_id, found.source, found.observation_id)] = found
        for indicator_id, case in await uow.pending.existing(region, sorted(ids)):
            observation = case.observation
            pending[(region, indicator_id, observation.source, observation.observation_id)] = case
    return stored, pending


async def _drop_repeats(
    batch: _Batch, candidates: list[_Candidate], uow: SelfMonitoringUnitOfWork, strict: bool
) -> None:
    """Keep new observations; a repeat with the same content is a duplicate, one with other
    content under the same (source, id) is refused naming the fields that differ. A completed
    case completes the pending case of its id."""
    stored, pending = await _stored(candidates, uow)
    for candidate in candidates:
        indicator, observation = candidate.indicator, candidate.observation
        key = (indicator.region, indicator.indicator_id, observation.source, observation.observation_id)
        group = (indicator.region, indicator.indicator_id)
        earlier, waiting = stored.get(key), pending.get(key)
        if earlier is not None:
            differing = observation.differs_from(earlier, as_pending=candidate.pending)
        elif waiting is not None:
            differing = observation.differs_from(waiting.observation, as_pending=True)
        else:
            differing = []
        if differing:
            error = AlreadyExists(
                f"observation {observation.observation_id} from {observation.source} was recorded "
                f"with other content ({', '.join(differing)})",
                [
                    FieldViolation(path, "differs from the observation recorded under this id")
                    for path in differing
                ],
                reason="OBSERVATION_CONFLICT",
            )
            if strict:
                raise error
            batch.rejected.append(_rejection(candidate.index, observation.observation_id, error))
        elif earlier is not None or (waiting is not None and candidate.pending):
            batch.duplicates += 1
        elif candidate.pending:
            case = model.pending_case(indicator, observation)
            pending[key] = case
            batch.pending.setdefault(group, []).append(case)
        else:
            stored[key] = observation
            batch.accepted.setdefault(group, []).append(observation)
            if waiting is not None:
                batch.completing.setdefault(group, []).append(waiting)


def _deadline_passes(case: model.PendingCase) -> datetime:
    """The start of the first Finnish day past the case's deadline."""
    return datetime.combine(case.overdue_day, time(0), tzinfo=FINLAND)


async def _store(batch: _Batch, uow: SelfMonitoringUnitOfWork) -> None:
    """Insert the batch's observations and add them to the day buckets: one insert and one
    upsert for the whole batch. Keep its pending cases, each deadline with a sweep timer."""
    for key, cases in batch.pending.items():
        indicator = batch.indicators[key]
        for case in cases:
            uow.pending.add(indicator, case)
            uow.timers.set(
                f"selfmonitoring/deadline/{indicator.region}/{indicator.indicator_id}/{case.due_on}",
                _deadline_passes(case),
                SweepDeadlines(indicator.region, indicator.indicator_id),
            )
    rows: list[tuple[model.Indicator, model.Observation]] = []
    buckets: dict[tuple[str, str, str, date], model.DayBucket] = {}
    group_buckets: dict[tuple[str, str, str, str, date], model.DayBucket] = {}
    for key, observations in batch.accepted.items():
        indicator = batch.indicators[key]
        # A case the sweep counted late already is stored, not counted again.
        counted = {
            (c.observation.source, c.observation.observation_id)
            for c in batch.completing.get(key, [])
            if c.counted_on is not None
        }
        for case in batch.completing.get(key, []):
            await uow.pending.completed(indicator, case)
        for observation in observations:
            rows.append((indicator, observation))
            if (observation.source, observation.observation_id) in counted:
                continue
            day = (*key, indicator.scope_key(observation), observation.completed_on)
            buckets[day] = buckets.get(day, model.DayBucket()).add(indicator, observation)
            if indicator.kind is model.MetricKind.EQUAL_TREATMENT:
                group_day = (
                    *key,
                    indicator.scope_key(observation),
                    observation.group,
                    observation.completed_on,
                )
                group_buckets[group_day] = group_buckets.get(group_day, model.DayBucket()).add(
                    indicator, observation
                )
    await uow.observations.insert(rows, uow.now)
    await uow.buckets.add(buckets)
    await uow.group_buckets.add(group_buckets)


@dataclass
class _Evaluated:
    values: dict[str, model.WindowStats] = field(default_factory=dict)
    breaches: dict[str, model.Breach | None] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)


async def _evaluate_warnings(
    indicator: model.Indicator,
    stats: dict[str, model.WindowStats],
    uow: SelfMonitoringUnitOfWork,
    evaluated: _Evaluated,
) -> None:
    """Raise or clear each scope group's warning: alerts only, no policy, no suspension."""
    if indicator.warning_threshold is None:
        return
    providers = sorted(stats)
    open_now = await uow.breaches.open_of_many(
        indicator.region, indicator.indicator_id, providers, warning=True
    )
    for provider in providers:
        warning = open_now.get(provider)
        verdict = model.evaluate_warning(indicator, stats[provider], warning_open=warning is not None)
        if verdict is model.Verdict.OPEN:
            warning = model.raise_warning(
                uuid.uuid4().hex, indicator, provider, stats[provider], uow.now, as_of=uow.today
            )
            uow.alerts.add(model.Alert(warning.region, warning.id, model.AlertKind.WARNING_RAISED, uow.now))
            uow.breaches.add(warning)
            evaluated.warned.append(warning.name)
        elif verdict is model.Verdict.RESOLVE and warning is not None:
            value = indicator.value(stats[provider])
            await uow.breaches.update(model.resolve_breach(warning, value, stats[provider], uow.now))
            uow.alerts.add(model.Alert(warning.region, warning.id, model.AlertKind.WARNING_CLEARED, uow.now))
            evaluated.cleared.append(warning.name)


async def _evaluate_providers(
    indicator: model.Indicator, providers: list[str], uow: SelfMonitoringUnitOfWork
) -> _Evaluated:
    """Evaluate each scope group's window (each provider's, for a provider-scoped indicator):
    open a breach, resolve one, or leave it."""
    evaluated = _Evaluated()
    stats = await _windows(indicator, providers, uow.today, uow)
    open_now = await uow.breaches.open_of_many(indicator.region, indicator.indicator_id, providers)
    for provider in providers:
        provider_stats = stats.get(provider, model.WindowStats(0, 0.0, 0.0))
        breach = open_now.get(provider)
        verdict = model.evaluate(indicator, provider_stats, breach_open=breach is not None)
        if verdict is model.Verdict.OPEN:
            breach = model.open_breach(
                uuid.uuid4().hex, indicator, provider, provider_stats, uow.now, as_of=uow.today
            )
            uow.alerts.add(model.Alert(breach.region, breach.id, model.AlertKind.OPENED, uow.now))
            breach = await _apply_policy(breach, uow)
            uow.breaches.add(breach)
            evaluated.opened.append(breach.name)
            log.info("breach opened", extra={"breach": breach.name, "indicator": indicator.indicator_id})
        elif verdict is model.Verdict.RESOLVE and breach is not None:
            value = indicator.value(provider_stats)
            await uow.breaches.update(model.resolve_breach(breach, value, provider_stats, uow.now))
            uow.alerts.add(model.Alert(breach.region, breach.id, model.AlertKind.RESOLVED, uow.now))
            evaluated.resolved.append(breach.name)
            log.info("breach resolved", extra={"breach": breach.name, "indicator": indicator.indicator_id})
            breach = None
        evaluated.values[provider] = provider_stats
        evaluated.breaches[provider] = breach
    await _evaluate_warnings(indicator, evaluated.values, uow, evaluated)
    return evaluated


async def _windows(
    indicator: model.Indicator, keys: list[str] | None, as_of: date, uow: SelfMonitoringUnitOfWork
) -> dict[str, model.WindowStats]:
    """Each scope group's window (every group's when keys is None); for equal treatment, its
    worst customer group's, compared with the scope group's overall rate."""
    if keys is None:
        overall = await uow.buckets.window_of_all(indicator, as_of)
    else:
        overall = await uow.buckets.window(indicator, keys, as_of)
    if indicator.kind is not model.MetricKind.EQUAL_TREATMENT:
        return overall
    groups = await uow.group_buckets.window(indicator, keys, as_of)
    empty = model.WindowStats(0, 0.0, 0.0)
    return {key: model.worst_group(indicator, overall[key], groups.get(key, {})) for key in overall} | {
        key: empty for key in keys or [] if key not in overall
    }


async def _evaluate(batch: _Batch, uow: SelfMonitoringUnitOfWork) -> dict[tuple[str, str], _Evaluated]:
    """Store the batch, then evaluate each provider it touched, once per indicator."""
    await _store(batch, uow)
    evaluated: dict[tuple[str, str], _Evaluated] = {}
    for key, indicator in batch.indicators.items():
        providers = sorted({indicator.scope_key(o) for o in batch.accepted.get(key, [])})
        if providers:
            evaluated[key] = await _evaluate_providers(indicator, providers, uow)
    return evaluated


async def record_observations(
    command: RecordObservations, uow: SelfMonitoringUnitOfWork
) -> ObservationsRecorded:
    batch = await _accept(command.items, command.first_index, uow, strict=False)
    evaluated = await _evaluate(batch, uow)
    return ObservationsRecorded(
        recorded=batch.recorded,
        duplicates=batch.duplicates,
        rejected=sorted(batch.rejected, key=lambda r: r.index),
        opened_breaches=[name for e in evaluated.values() for name in e.opened],
        resolved_breaches=[name for e in evaluated.values() for name in e.resolved],
        raised_warnings=[name for e in evaluated.values() for name in e.warned],
        cleared_warnings=[name for e in evaluated.values() for name in e.cleared],
    )


async def record_observation(
    command: RecordObservation, uow: SelfMonitoringUnitOfWork
) -> ObservationRecorded:
    batch = await _accept((command,), 0, uow, strict=True)
    evaluated = (await _evaluate(batch, uow)).get((command.region, command.indicator_id), _Evaluated())
    indicator = batch.indicators[(command.region, command.indicator_id)]
    provider = model.scope_key(
        indicator.scope, _canonical(command.provider), command.service, command.municipality
    )
    if provider in evaluated.values:
        stats, breach = evaluated.values[provider], evaluated.breaches[provider]
    else:  # a repeat or a pending case: the provider's value as it stands
        stats = (await _windows(indicator, [provider], uow.today, uow)).get(
            provider, model.WindowStats(0, 0.0, 0.0)
        )
        breach = (await uow.breaches.open_of_many(command.region, command.indicator_id, [provider])).get(
            provider
        )
    return ObservationRecorded(
        batch.recorded > 0, stats, indicator.value(stats), breach.name if breach is not None else ""
    )


async def _apply_policy(breach: model.Breach, uow: SelfMonitoringUnitOfWork) -> model.Breach:
    """What the programme in force says a new breach leads to: a corrective-action request with
    a deadline timer, or, when it recurs within the policy's period, escalation at once."""
    if not breach.of_provider:
        return breach  # a service's, a municipality's or the region's: it alerts the region only
    programme = await uow.programmes.in_force(breach.region)
    if programme is None or breach.severity is model.Severity.SERIOUS:
        return breach  # a serious breach requests suspension by itself (BreachOpened)
    policy = programme.policy_for(breach.severity)
    if policy.recurrence_days:
        since = uow.now - timedelta(days=policy.recurrence_days)
        if await uow.breaches.resolved_since(breach.region, breach.indicator_id, breach.provider, since):
            uow.track(breach, breach.name)  # its BreachOpened goes out before the escalation
            uow.alerts.add(model.Alert(breach.region, breach.id, model.AlertKind.ESCALATED, uow.now))
            return model.escalate_breach(breach, model.EscalationReason.RECURRED, uow.now)
    if policy.action is model.PolicyAction.CORRECTIVE_ACTION:
        action = model.request_corrective_action(breach, policy.corrective_action_days, uow.now, uow.today)
        uow.corrective_actions.add(action)
        uow.timers.set(
            _action_timer(action),
            datetime.combine(action.due_on + timedelta(days=1), time(0), tzinfo=FINLAND),
            EscalateCorrectiveAction(action.region, action.id),
        )
    return breach


def _action_timer(action: model.CorrectiveAction) -> str:
    return f"selfmonitoring/corrective-action/{action.region}/{action.id}"


async def _corrective_action(
    uow: SelfMonitoringUnitOfWork, region: str, action_id: str
) -> model.CorrectiveAction:
    action = await uow.corrective_actions.get(region, action_id)
    if action is None:
        name = model.CORRECTIVE_ACTION.format(region=region, action=action_id)
        raise NotFound(f"no corrective action {name}", reason="CORRECTIVE_ACTION_NOT_FOUND")
    return action


async def escalate_corrective_action(
    command: EscalateCorrectiveAction, uow: SelfMonitoringUnitOfWork
) -> model.CorrectiveAction:
    """The deadline passed: an unanswered request on a breach still open is escalated to a
    suspension request. Run by its timer only."""
    access.require_system(uow.actor, "escalation runs on its timer only")
    action = await _corrective_action(uow, command.region, command.action_id)
    breach = await uow.breaches.get(action.breach_id)
    if action.state is not model.CorrectiveActionState.REQUESTED or breach is None:
        return action
    if breach.state is not model.BreachState.OPEN:
        return action  # the values recovered before the deadline: nothing to escalate
    escalated = replace(action, state=model.CorrectiveActionState.ESCALATED)
    await uow.corrective_actions.update(escalated)
    reason = model.EscalationReason.CORRECTIVE_ACTION_OVERDUE
    await uow.breaches.update(model.escalate_breach(breach, reason, uow.now))
    uow.alerts.add(model.Alert(breach.region, breach.id, model.AlertKind.ESCALATED, uow.now))
    log.info("breach escalated", extra={"breach": breach.name, "reason": str(reason)})
    return escalated


async def respond_to_corrective_action(
    command: RespondToCorrectiveAction, uow: SelfMonitoringUnitOfWork
) -> model.CorrectiveAction:
    action = await _corrective_action(uow, command.region, command.action_id)
    access.require(
        uow.actor,
        any_of=[access.provider(action.provider)],
        action="responding to a corrective-action request",
    )
    responded = model.respond_to_corrective_action(action, command.response, uow.now)
    if responded is not action:
        await uow.corrective_actions.update(responded)
        uow.timers.cancel(_action_timer(action))
    return responded


async def list_corrective_actions(
    query: ListCorrectiveActions, uow: SelfMonitoringUnitOfWork
) -> list[model.CorrectiveAction]:
    actor = uow.actor
    provider = query.provider
    if actor is not None and actor.role is Role.PROVIDER:
        provider = actor.organisation  # a provider sees its own requests only
    else:
        require_supervision(query.region, actor)
    return await uow.corrective_actions.page(query.region, provider, query.before, query.limit)


def _from_the_bus(uow: SelfMonitoringUnitOfWork, action: str) -> None:
    """The registry's events arrive through the kernel's consumer, with no caller."""
    access.require_system(uow.actor, f"{action} follows the registry's events only")


async def record_admission(command: RecordAdmission, uow: SelfMonitoringUnitOfWork) -> int:
    """Note the admission for the equal-availability view; a serious breach opened before the
    provider was admitted takes effect now (escalated again, so the registry suspends)."""
    _from_the_bus(uow, "recording an admission")
    provider = command.provider
    await uow.admitted.admitted(provider, command.at or uow.now, uow.now)
    waiting = await uow.breaches.open_serious(provider.region, provider.business_id, provider.service)
    for breach in waiting:
        reason = model.EscalationReason.PROVIDER_ADMITTED
        await uow.breaches.update(model.escalate_breach(breach, reason, uow.now))
        log.info("breach takes effect on admission", extra={"breach": breach.name})
    return len(waiting)


async def record_availability_change(
    command: RecordAvailabilityChange, uow: SelfMonitoringUnitOfWork
) -> bool:
    """Whether the change applied (False: a later one had been applied already)."""
    _from_the_bus(uow, f"recording a provider {command.change.lower()}")
    return await uow.admitted.changed(
        command.region, command.service, command.business_id, command.change, command.at or uow.now, uow.now
    )


async def get_availability_report(
    query: GetAvailabilityReport, uow: SelfMonitoringUnitOfWork
) -> list[model.AvailabilityCell]:
    """Public: what the ministry reads about equal availability in the region."""
    return model.availability(await uow.admitted.of_region(query.region))


async def get_indicator_report(
    query: GetIndicatorReport, uow: SelfMonitoringUnitOfWork
) -> list[IndicatorValue]:
    require_supervision(query.region, uow.actor)
    as_of = query.as_of or uow.today
    values: list[IndicatorValue] = []
    for indicator in await uow.indicators.of_region(query.region):
        window = model.window_bounds(indicator, as_of)
        for provider, stats in (await _windows(indicator, None, as_of, uow)).items():
            values.append(
                IndicatorValue(indicator, provider, indicator.value(stats), stats.sample_size, window)
            )
    return values


async def sweep_deadlines(command: SweepDeadlines, uow: SelfMonitoringUnitOfWork) -> SweepResult:
    """Count the indicator's pending cases whose deadline passed as late, and evaluate their
    providers: a breach can open with no new observation arriving. Run by timers only."""
    access.require_system(uow.actor, "the deadline sweep runs on its timers only")
    indicator = await uow.indicators.get(command.region, command.indicator_id, for_update=True)
    if indicator is None:
        return SweepResult(0, [])
    overdue = await uow.pending.overdue(indicator, uow.today)
    if not overdue:
        return SweepResult(0, [])
    overdue_buckets = model.count_overdue(indicator, overdue)
    await uow.buckets.add(
        {(indicator.region, indicator.indicator_id, p, day): b for (p, day), b in overdue_buckets.items()}
    )
    await uow.pending.mark_counted(indicator, overdue, uow.today)
    providers = sorted({indicator.scope_key(case.observation) for case in overdue})
    evaluated = await _evaluate_providers(indicator, providers, uow)
    log.info("deadlines swept", extra={"indicator": indicator.indicator_id, "overdue": len(overdue)})
    return SweepResult(len(overdue), evaluated.opened)


def _may_read_drafts(region: str, actor: Principal | None) -> bool:
    return actor is not None and any(
        grant.admits(actor) for grant in (access.region_admin(region), access.supervisor(region))
    )


async def create_programme(command: CreateProgramme, uow: SelfMonitoringUnitOfWork) -> model.Programme:
    draft = command.draft
    access.require(uow.actor, any_of=[access.region_admin(draft.region)], action="drafting a programme")
    watched = list(draft.indicators)
    if command.default_catalogue_service:
        listed = {item.indicator for item in watched}
        defaults: list[model.WatchedIndicator] = []
        for definition, risk in model.default_catalogue(draft.region, command.default_catalogue_service):
            # An indicator the region defined under a default's id is its own choice: kept.
            if await uow.indicators.get(draft.region, definition.indicator_id) is None:
                uow.indicators.add(model.create_indicator(definition, uow.now))
            if definition.indicator_id not in listed:
                defaults.append(model.WatchedIndicator(definition.indicator_id, risk))
        watched = defaults + watched
    missing = [
        FieldViolation(f"programme.indicators[{index}].indicator", "no such indicator in the region")
        for index, item in enumerate(draft.indicators)
        if await uow.indicators.get(draft.region, item.indicator) is None
    ]
    if missing:
        raise NotFound(
            "the programme lists indicators the region has not defined", missing, "INDICATOR_NOT_FOUND"
        )
    version = await uow.programmes.next_version(draft.region)
    created = model.create_programme(replace(draft, indicators=tuple(watched)), version, uow.now)
    uow.programmes.add(created)
    return created


async def publish_programme(command: PublishProgramme, uow: SelfMonitoringUnitOfWork) -> model.Programme:
    access.require(uow.actor, any_of=[access.region_admin(command.region)], action="publishing a programme")
    programme = await uow.programmes.get(command.region, command.version)
    if programme is None:
        name = model.PROGRAMME.format(region=command.region, programme=command.version)
        raise NotFound(f"no programme {name}", reason="PROGRAMME_NOT_FOUND")
    published = model.publish_programme(programme, uow.now, uow.today)
    if published is not programme:
        await uow.programmes.publish(published)
    return published


async def get_programme(query: GetProgramme, uow: SelfMonitoringUnitOfWork) -> model.Programme:
    programme = await uow.programmes.get(query.region, query.version)
    readable = programme is not None and (
        programme.state is model.ProgrammeState.PUBLISHED or _may_read_drafts(query.region, uow.actor)
    )
    if programme is None or not readable:
        name = model.PROGRAMME.format(region=query.region, programme=query.version)
        raise NotFound(f"no programme {name}", reason="PROGRAMME_NOT_FOUND")
    return programme


async def list_programmes(query: ListProgrammes, uow: SelfMonitoringUnitOfWork) -> list[model.Programme]:
    published_only = not _may_read_drafts(query.region, uow.actor)
    return await uow.programmes.page(query.region, query.before, query.limit, published_only)


async def list_alerts(query: ListAlerts, uow: SelfMonitoringUnitOfWork) -> list[AlertView]:
    require_supervision(query.region, uow.actor)
    return [AlertView(a, b) for a, b in await uow.alerts.page(query.region, query.before, query.limit)]


async def acknowledge_alert(command: AcknowledgeAlert, uow: SelfMonitoringUnitOfWork) -> AlertView:
    actor = require_supervision(command.region, uow.actor)
    alert = await uow.alerts.get(command.region, command.alert_id)
    breach = await uow.breaches.get(alert.breach_id) if alert is not None else None
    if alert is None or breach is None:
        name = model.ALERT.format(region=command.region, alert=command.alert_id)
        raise NotFound(f"no alert {name}", reason="ALERT_NOT_FOUND")
    acknowledged = model.acknowledge_alert(alert, actor.subject, uow.now)
    if acknowledged is not alert:
        await uow.alerts.acknowledge(acknowledged)
    return AlertView(acknowledged, breach)


async def list_breach_observations(
    query: ListBreachObservations, uow: SelfMonitoringUnitOfWork
) -> list[model.Observation]:
    breach = await get_breach(GetBreach(query.region, query.breach_id), uow)
    return await uow.observations.behind(breach, query.before, query.limit)


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
    return await uow.breaches.page(
        query.region,
        query.before,
        query.limit,
        state=query.state,
        severity=query.severity,
        provider=query.provider,
    )


async def list_indicators(query: ListIndicators, uow: SelfMonitoringUnitOfWork) -> list[model.Indicator]:
    return await uow.indicators.page(query.region, query.after, query.limit)


HANDLERS: dict[type[Any], Any] = {
    CreateIndicator: create_indicator,
    RecordObservation: record_observation,
    RecordObservations: record_observations,
    SweepDeadlines: sweep_deadlines,
    RecordAdmission: record_admission,
    RecordAvailabilityChange: record_availability_change,
    GetAvailabilityReport: get_availability_report,
    GetIndicatorReport: get_indicator_report,
    EscalateCorrectiveAction: escalate_corrective_action,
    RespondToCorrectiveAction: respond_to_corrective_action,
    ListCorrectiveActions: list_corrective_actions,
    GetIndicator: get_indicator,
    ListAlerts: list_alerts,
    AcknowledgeAlert: acknowledge_alert,
    ListBreachObservations: list_breach_observations,
    CreateProgramme: create_programme,
    PublishProgramme: publish_programme,
    GetProgramme: get_programme,
    ListProgrammes: list_programmes,
    GetBreach: get_breach,
    ListBreaches: list_breaches,
    ListIndicators: list_indicators,
}

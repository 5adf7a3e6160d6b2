"""The self-monitoring domain: indicators, observations, rolling-window evaluation and breaches."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum

from services.runtime.domain import (
    Aggregate,
    Event,
    ResourcePattern,
    check_text,
    raise_if_any,
    require_aware,
    validate_business_id,
    validate_resource_id,
)
from services.runtime.errors import FieldViolation, InvalidArgument

DISPLAY_NAME_MAX_LENGTH = 200
KEY_MAX_LENGTH = 128
MAX_DEADLINE_DAYS = 365
MAX_WINDOW_DAYS = 3660

# A Finnish personal identity code (henkilötunnus), DDMMYY, century sign, 3 digits,
# check character. Case keys must be pseudonyms, so one that is an identity code is refused.
_PERSONAL_IDENTITY_CODE = re.compile(r"\d{6}[-+A-FU-Y]\d{3}[0-9A-Y]", re.IGNORECASE)

REGION = ResourcePattern("regions/{region}")
INDICATOR = ResourcePattern("regions/{region}/indicators/{indicator}")
BREACH = ResourcePattern("regions/{region}/breaches/{breach:key}")


class Severity(StrEnum):
    """How serious a breach is: a warning alerts supervisors, a serious breach also suspends."""

    WARNING = "WARNING"
    SERIOUS = "SERIOUS"


def parse_severity(name: str, field: str = "indicator.severity") -> Severity:
    """The severity named "WARNING"/"SERIOUS" (the proto's "SEVERITY_" prefix allowed); else refused."""
    try:
        return Severity(name.removeprefix("SEVERITY_"))
    except ValueError:
        description = "must be WARNING or SERIOUS"
        raise InvalidArgument(description, [FieldViolation(field, description)]) from None


class BreachState(StrEnum):
    """Where a breach stands."""

    OPEN = "OPEN"


@dataclass(frozen=True)
class BreachFacts:
    """A breach as events and alerts carry it (the proto's Breach message, field by field)."""

    name: str
    indicator: str
    provider: str
    service: str
    severity: Severity
    value: float
    threshold: float
    sample_size: int
    state: BreachState
    open_time: datetime


@dataclass(frozen=True)
class BreachOpened(Event):
    """A provider crossed an indicator's threshold."""

    breach: BreachFacts
    region: str


@dataclass(frozen=True)
class IndicatorCreated(Event):
    """A region added an indicator to its self-monitoring programme."""

    indicator: str
    region: str
    service: str
    create_time: datetime


EVENTS: tuple[type[Event], ...] = (BreachOpened, IndicatorCreated)


@dataclass(frozen=True)
class Indicator(Aggregate):
    """An indicator of a region's self-monitoring programme (omavalvontaohjelma).

    The metric is the share of cases completed within deadline_days, over a rolling
    window of window_days ending today; below minimum_share, with at least
    minimum_sample cases in the window, the provider breaches the indicator.
    """

    region: str
    indicator_id: str
    display_name: str
    service: str
    deadline_days: int
    minimum_share: float
    window_days: int
    minimum_sample: int
    severity: Severity
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return INDICATOR.format(region=self.region, indicator=self.indicator_id)


def create_indicator(indicator: Indicator, now: datetime) -> Indicator:
    """The indicator, created at `now`; records IndicatorCreated."""
    created = replace(indicator, created_at=require_aware(now))
    created.record(IndicatorCreated(created.name, created.region, created.service, now))
    return created


def new_indicator(  # noqa: PLR0917 - mirrors the Indicator's fields in order
    region: str,
    indicator_id: str,
    display_name: str,
    service: str,
    deadline_days: int,
    minimum_share: float,
    window_days: int,
    minimum_sample: int,
    severity: Severity,
) -> Indicator:
    """Validate and build an indicator; every violation is reported at once."""
    violations: list[FieldViolation] = []
    for value, path in (
        (region, "parent"),
        (indicator_id, "indicator_id"),
        (service, "indicator.service"),
    ):
        try:
            validate_resource_id(value, path)
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violation := check_text(display_name, "indicator.display_name", DISPLAY_NAME_MAX_LENGTH):
        violations.append(violation)
    if not 1 <= deadline_days <= MAX_DEADLINE_DAYS:
        violations.append(
            FieldViolation(
                "indicator.share_within_deadline.deadline_days",
                f"must be between 1 and {MAX_DEADLINE_DAYS} days",
            )
        )
    # NaN compares false both ways, so it must be refused explicitly.
    if math.isnan(minimum_share) or not 0 < minimum_share <= 1:
        violations.append(
            FieldViolation(
                "indicator.share_within_deadline.minimum_share",
                "must be greater than 0 and at most 1",
            )
        )
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        violations.append(
            FieldViolation("indicator.window_days", f"must be between 1 and {MAX_WINDOW_DAYS} days")
        )
    if minimum_sample < 1:
        violations.append(FieldViolation("indicator.minimum_sample", "must be at least 1"))
    if not isinstance(severity, Severity):
        violations.append(FieldViolation("indicator.severity", "must be WARNING or SERIOUS"))
    raise_if_any(violations, "the indicator is invalid")
    return Indicator(
        region=region,
        indicator_id=indicator_id,
        display_name=display_name.strip(),
        service=service,
        deadline_days=deadline_days,
        minimum_share=minimum_share,
        window_days=window_days,
        minimum_sample=minimum_sample,
        severity=severity,
    )


@dataclass(frozen=True)
class Observation:
    """One case reported to the region: it started on one day and was completed on another."""

    observation_id: str
    provider: str
    """The provider's business ID, canonical form."""
    case_key: str
    """A pseudonym for the case; never a name or a personal identity code."""
    started_on: date
    completed_on: date


def new_observation(
    observation_id: str,
    provider: str,
    case_key: str,
    started_on: date,
    completed_on: date,
    *,
    today: date,
) -> Observation:
    """Validate and build an observation; the provider's business ID is returned in canonical form."""
    violations: list[FieldViolation] = []
    if violation := check_text(observation_id, "observation.observation_id", KEY_MAX_LENGTH):
        violations.append(violation)
    canonical_provider = provider
    try:
        canonical_provider = validate_business_id(provider, "observation.provider")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if violation := check_text(case_key, "observation.case_key", KEY_MAX_LENGTH):
        violations.append(violation)
    elif _PERSONAL_IDENTITY_CODE.fullmatch(case_key.strip()):
        violations.append(
            FieldViolation("observation.case_key", "must be a pseudonym, not a personal identity code")
        )
    if completed_on < started_on:
        violations.append(FieldViolation("observation.completed_on", "must not be before started_on"))
    if completed_on > today:
        violations.append(FieldViolation("observation.completed_on", "must not be in the future"))
    raise_if_any(violations, "the observation is invalid")
    return Observation(observation_id, canonical_provider, case_key, started_on, completed_on)


def is_within_deadline(indicator: Indicator, observation: Observation) -> bool:
    """Whether the case was completed within the indicator's deadline; the deadline day itself counts."""
    return (observation.completed_on - observation.started_on).days <= indicator.deadline_days


def window_bounds(indicator: Indicator, as_of: date) -> tuple[date, date]:
    """The rolling window over completed_on, both ends inclusive: window_days days ending on as_of."""
    return as_of - timedelta(days=indicator.window_days - 1), as_of


@dataclass(frozen=True)
class WindowStats:
    """One provider's cases in an indicator's window: how many, and how many within the deadline."""

    sample_size: int
    within_deadline: int

    def __post_init__(self) -> None:
        if not 0 <= self.within_deadline <= self.sample_size:
            raise ValueError(
                f"within_deadline {self.within_deadline} must be between 0 and sample_size {self.sample_size}"
            )

    @property
    def share(self) -> float:
        """The share within the deadline; 1.0 for an empty window, since no case has been late."""
        if self.sample_size == 0:
            return 1.0
        return self.within_deadline / self.sample_size


def window_stats(indicator: Indicator, observations: Iterable[Observation], as_of: date) -> WindowStats:
    """Count one provider's observations completed inside the window ending on as_of."""
    start, end = window_bounds(indicator, as_of)
    in_window = [o for o in observations if start <= o.completed_on <= end]
    return WindowStats(
        sample_size=len(in_window),
        within_deadline=sum(1 for o in in_window if is_within_deadline(indicator, o)),
    )


def evaluate(indicator: Indicator, stats: WindowStats, breach_open: bool) -> bool:
    """Whether a new breach should open.

    Too small a sample says nothing about quality, so it cannot breach; an open
    breach for the same indicator and provider is not opened again.
    """
    return (
        not breach_open
        and stats.sample_size >= indicator.minimum_sample
        and stats.share < indicator.minimum_share
    )


@dataclass(frozen=True)
class Breach(Aggregate):
    """A provider's crossing of an indicator's threshold: a quality event for supervisors."""

    id: str
    region: str
    indicator_id: str
    provider: str
    service: str
    severity: Severity
    value: float
    threshold: float
    sample_size: int
    opened_at: datetime
    state: BreachState = BreachState.OPEN

    @property
    def name(self) -> str:
        return BREACH.format(region=self.region, breach=self.id)

    @property
    def facts(self) -> BreachFacts:
        return BreachFacts(
            name=self.name,
            indicator=INDICATOR.format(region=self.region, indicator=self.indicator_id),
            provider=self.provider,
            service=self.service,
            severity=self.severity,
            value=self.value,
            threshold=self.threshold,
            sample_size=self.sample_size,
            state=self.state,
            open_time=self.opened_at,
        )

    @property
    def suspends_provider(self) -> bool:
        """Whether the breach suspends the provider in the region until it is reinstated."""
        return self.severity == Severity.SERIOUS


def open_breach(id: str, indicator: Indicator, provider: str, stats: WindowStats, now: datetime) -> Breach:
    """Open a breach recording the value, threshold and sample it was decided on."""
    require_aware(now)
    breach = Breach(
        id=id,
        region=indicator.region,
        indicator_id=indicator.indicator_id,
        provider=provider,
        service=indicator.service,
        severity=indicator.severity,
        value=stats.share,
        threshold=indicator.minimum_share,
        sample_size=stats.sample_size,
        opened_at=now,
    )
    breach.record(BreachOpened(breach.facts, breach.region))
    return breach

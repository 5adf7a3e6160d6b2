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
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

DISPLAY_NAME_MAX_LENGTH = 200
KEY_MAX_LENGTH = 128
MAX_DEADLINE_DAYS = 365
MAX_WINDOW_DAYS = 3660

# A Finnish personal identity code (henkilötunnus), DDMMYY, century sign, 3 digits,
# check character. Case keys must be pseudonyms, so one that is an identity code is refused.
_PERSONAL_IDENTITY_CODE = re.compile(r"\d{6}[-+A-FU-Y]\d{3}[0-9A-Y]", re.IGNORECASE)

REGION = ResourcePattern("regions/{region}")
AVAILABILITY_REPORT = ResourcePattern("regions/{region}/availabilityReport")
INDICATOR_REPORT = ResourcePattern("regions/{region}/indicatorReport")
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


class Scope(StrEnum):
    """What an indicator's observations are grouped by, and so what a breach is about."""

    PROVIDER = "PROVIDER"
    """Each provider (palveluntuottaja) apart: the only scope whose breach can lead to a
    corrective action or a suspension request."""
    SERVICE = "SERVICE"
    """Each growth service apart, all providers together (observations name their service)."""
    MUNICIPALITY = "MUNICIPALITY"
    """Each municipality (kunta) apart (observations name its three-digit code)."""
    REGION = "REGION"
    """The whole region (maakunta) together."""


SCOPE_FIELDS: dict[Scope, str] = {
    Scope.PROVIDER: "provider",
    Scope.SERVICE: "service",
    Scope.MUNICIPALITY: "municipality",
    Scope.REGION: "",
}
"""The observation field each scope groups by (none for the whole region)."""

_MUNICIPALITY_CODE = re.compile(r"\d{3}")
_GROUP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class BreachState(StrEnum):
    """Where a breach stands."""

    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


class ObservationSource(StrEnum):
    """Where an observation comes from: it decides who may record it and what it weighs."""

    REGION_CASE_DATA = "REGION_CASE_DATA"
    PROVIDER_REPORT = "PROVIDER_REPORT"
    CUSTOMER_FEEDBACK = "CUSTOMER_FEEDBACK"
    COMPLAINT = "COMPLAINT"
    AUDIT_FINDING = "AUDIT_FINDING"


REGION_SOURCES = frozenset(
    {
        ObservationSource.REGION_CASE_DATA,
        ObservationSource.CUSTOMER_FEEDBACK,
        ObservationSource.COMPLAINT,
        ObservationSource.AUDIT_FINDING,
    }
)
"""Sources only the region records: a provider can neither claim nor mask them."""

SOURCE_WEIGHTS: dict[ObservationSource, float] = {
    ObservationSource.REGION_CASE_DATA: 1.0,
    ObservationSource.PROVIDER_REPORT: 0.5,
    ObservationSource.CUSTOMER_FEEDBACK: 1.0,
    ObservationSource.COMPLAINT: 1.0,
    ObservationSource.AUDIT_FINDING: 1.0,
}
"""How much one observation of each source weighs in an indicator's value: a provider's report
about itself counts half as much as what the region saw."""


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
    resolve_time: datetime | None = None
    recovery_threshold: float = 0.0
    window_start: date | None = None
    window_end: date | None = None
    warning: bool = False
    """A warning (varoitus): the value is past the indicator's warning threshold, not (yet) its
    breach threshold; it alerts supervisors and asks nothing of the provider."""
    scope: Scope = Scope.PROVIDER
    scope_key: str = ""
    """The provider's business ID, the service, the municipality code; empty for the region."""
    group: str = ""
    """For equal treatment: the customer group whose outcome rate is compared (the lowest)."""


@dataclass(frozen=True)
class BreachOpened(Event):
    """A provider crossed an indicator's threshold."""

    breach: BreachFacts
    region: str


@dataclass(frozen=True)
class RegionBreachOpened(Event):
    """A service, a municipality or the whole region crossed an indicator's threshold: an
    alert for the region's supervisors, never a provider's suspension (the registry follows
    BreachOpened only, which is a provider's)."""

    breach: BreachFacts
    region: str


@dataclass(frozen=True)
class RegionBreachResolved(Event):
    """A RegionBreachOpened's value came back past the indicator's recovery threshold."""

    breach: BreachFacts
    region: str
    resolve_time: datetime


@dataclass(frozen=True)
class WarningRaised(Event):
    """A provider's value crossed an indicator's warning threshold (breach.warning is set)."""

    breach: BreachFacts
    region: str


@dataclass(frozen=True)
class WarningCleared(Event):
    """A warning's value came back past the indicator's recovery threshold."""

    breach: BreachFacts
    region: str
    resolve_time: datetime


@dataclass(frozen=True)
class IndicatorCreated(Event):
    """A region added an indicator to its self-monitoring programme."""

    indicator: str
    region: str
    service: str
    create_time: datetime


@dataclass(frozen=True)
class BreachResolved(Event):
    """An open breach's value came back past the indicator's recovery threshold."""

    breach: BreachFacts
    region: str
    resolve_time: datetime


@dataclass(frozen=True)
class BreachEscalated(Event):
    """A breach became a suspension request (its severity is then SERIOUS)."""

    breach: BreachFacts
    region: str
    reason: str
    escalate_time: datetime


class MetricKind(StrEnum):
    """What an indicator measures over the observations in its window (each weighted by source)."""

    SHARE_WITHIN_DEADLINE = "SHARE_WITHIN_DEADLINE"
    """Cases completed within deadline_days of their start (the 14-day assessment)."""
    RATE = "RATE"
    """Observations whose value is 1 (an outcome reached), of all: values 0 or 1."""
    MEAN = "MEAN"
    """The mean of the observations' values (a satisfaction score)."""
    COUNT_PER_100_CUSTOMERS = "COUNT_PER_100_CUSTOMERS"
    """Per 100 customers: one observation per customer, its value the count (complaints)."""
    EQUAL_TREATMENT = "EQUAL_TREATMENT"
    """Equal treatment (yhdenvertaisuus): each customer group's outcome rate (values 0 or 1,
    each observation naming its pseudonymous group) as a share of the overall rate; the value
    is the lowest share among the groups with at least minimum_sample observations."""


LOWER_IS_BETTER = frozenset({MetricKind.COUNT_PER_100_CUSTOMERS})
"""Kinds that breach above their threshold; the others breach below it."""


@dataclass(frozen=True)
class Indicator(Aggregate):
    """An indicator of a region's self-monitoring programme (omavalvontaohjelma).

    Its metric (a MetricKind) is computed over the source-weighted observations of one
    provider in a rolling window of window_days ending today. With at least
    minimum_sample observations, a value past the threshold (below it, or above it for
    lower-is-better kinds) opens a breach. An open breach resolves only when the value
    is back past recovery_threshold (hysteresis), so a value hovering at the threshold
    does not open and close breaches. With a warning_threshold, a value past it but not
    past the breach threshold raises a warning, which clears at the recovery threshold too.
    """

    region: str
    indicator_id: str
    display_name: str
    service: str
    deadline_days: int
    """Only for SHARE_WITHIN_DEADLINE; 0 for other kinds."""
    threshold: float
    window_days: int
    minimum_sample: int
    severity: Severity
    recovery_threshold: float = 0.0
    kind: MetricKind = MetricKind.SHARE_WITHIN_DEADLINE
    created_at: datetime | None = field(default=None, compare=False)
    warning_threshold: float | None = None
    """A value past this (and not past the breach threshold) raises a warning; None: no warnings."""
    scope: Scope = Scope.PROVIDER

    @property
    def name(self) -> str:
        return INDICATOR.format(region=self.region, indicator=self.indicator_id)

    @property
    def lower_is_better(self) -> bool:
        return self.kind in LOWER_IS_BETTER

    def scope_key(self, observation: Observation) -> str:
        """The group an observation counts in under this indicator's scope."""
        return scope_key(self.scope, observation.provider, observation.service, observation.municipality)

    def value(self, stats: WindowStats) -> float:
        """The metric over a window (0 for an empty one; a share of an empty window is 1, and so
        is a group's share when no one reached the outcome at all)."""
        if self.kind is MetricKind.EQUAL_TREATMENT:
            if stats.weight <= 0 or not stats.reference:
                return 1.0
            return stats.weighted_value / stats.weight / stats.reference
        if stats.weight <= 0:
            return 1.0 if self.kind is MetricKind.SHARE_WITHIN_DEADLINE else 0.0
        mean = stats.weighted_value / stats.weight
        return mean * 100 if self.kind is MetricKind.COUNT_PER_100_CUSTOMERS else mean

    def breached_by(self, value: float) -> bool:
        return value > self.threshold if self.lower_is_better else value < self.threshold

    def warned_by(self, value: float) -> bool:
        if self.warning_threshold is None:
            return False
        if self.lower_is_better:
            return value > self.warning_threshold
        return value < self.warning_threshold

    def recovered_at(self, value: float) -> bool:
        if self.lower_is_better:
            return value <= self.recovery_threshold
        return value >= self.recovery_threshold

    def observed_value(self, observation: Observation) -> float:
        """What one observation adds to the metric."""
        if self.kind is MetricKind.SHARE_WITHIN_DEADLINE:
            return 1.0 if is_within_deadline(self, observation) else 0.0
        return observation.value if observation.value is not None else 0.0

    def check(self, observation: Observation, *, started: bool = True) -> None:
        """Refuse an observation that does not fit this indicator's kind: a share within a
        deadline needs the day the case started, the other kinds a value."""
        value = observation.value
        if self.kind is MetricKind.SHARE_WITHIN_DEADLINE:
            if not started:
                problem = "is required for a SHARE_WITHIN_DEADLINE indicator"
                raise InvalidArgument(
                    f"observation.started_on {problem}", [FieldViolation("observation.started_on", problem)]
                )
            return
        if value is None or not math.isfinite(value):
            problem = f"is required for a {self.kind} indicator"
        elif self.kind in {MetricKind.RATE, MetricKind.EQUAL_TREATMENT} and value not in {0.0, 1.0}:
            problem = f"must be 0 or 1 for a {self.kind} indicator"
        elif self.kind is MetricKind.COUNT_PER_100_CUSTOMERS and (value < 0 or value != int(value)):
            problem = "must be a whole count of at least 0"
        elif self.kind is MetricKind.EQUAL_TREATMENT and not observation.group:
            problem = "is required for an EQUAL_TREATMENT indicator"
            raise InvalidArgument(
                f"observation.group {problem}", [FieldViolation("observation.group", problem)]
            )
        else:
            return
        raise InvalidArgument(f"observation.value {problem}", [FieldViolation("observation.value", problem)])


def scope_key(scope: Scope, provider: str, service: str, municipality: str) -> str:
    """The key of a scope's group: the field SCOPE_FIELDS names, empty for the whole region."""
    return {Scope.PROVIDER: provider, Scope.SERVICE: service, Scope.MUNICIPALITY: municipality}.get(scope, "")


def create_indicator(indicator: Indicator, now: datetime) -> Indicator:
    """The indicator, created at `now`; records IndicatorCreated."""
    created = replace(indicator, created_at=require_aware(now))
    created.record(IndicatorCreated(created.name, created.region, created.service, now))
    return created


def _threshold_violations(
    kind: MetricKind, threshold: float, recovery_threshold: float, warning_threshold: float | None = None
) -> tuple[list[FieldViolation], float]:
    """Thresholds' violations, and the recovery threshold (unset: the warning threshold when
    there is one, else the breach threshold). They must be ordered with the indicator's
    direction: breach, then warning, then recovery, each no worse than the one before."""
    share = kind is MetricKind.SHARE_WITHIN_DEADLINE
    path = "indicator.share_within_deadline" if share else "indicator.measure"
    names = (
        ("minimum_share", "recovery_share", "warning_share")
        if share
        else ("breach_threshold", "recovery_threshold", "warning_threshold")
    )
    bounded = kind in {MetricKind.SHARE_WITHIN_DEADLINE, MetricKind.RATE, MetricKind.EQUAL_TREATMENT}
    violations: list[FieldViolation] = []

    def in_range(value: float) -> bool:
        # NaN compares false both ways, so it must be refused explicitly.
        return math.isfinite(value) and (0 < value <= 1 if bounded else value >= 0)

    range_rule = "must be greater than 0 and at most 1" if bounded else "must be a number of at least 0"
    valid = in_range(threshold)
    if not valid:
        violations.append(FieldViolation(f"{path}.{names[0]}", range_rule))
    lower = kind in LOWER_IS_BETTER
    warning_valid = False
    if warning_threshold is not None:
        if not in_range(warning_threshold):
            violations.append(FieldViolation(f"{path}.{names[2]}", range_rule))
        else:
            warning_valid = True
            ordered = warning_threshold < threshold if lower else warning_threshold > threshold
            if valid and not ordered:
                side = "below" if lower else "above"
                violations.append(FieldViolation(f"{path}.{names[2]}", f"must be {side} {names[0]}"))
    floor_name, floor = names[0], threshold
    if warning_valid and warning_threshold is not None:
        floor_name, floor = names[2], warning_threshold
    recovery = recovery_threshold or floor
    if lower:
        fits = 0 <= recovery <= floor
        rule = f"must be at least 0 and at most {floor_name}"
    else:
        fits = floor <= recovery <= (1 if bounded else math.inf)
        rule = f"must be at least {floor_name}" + (" and at most 1" if bounded else "")
    if math.isnan(recovery_threshold) or (valid and not fits):
        violations.append(FieldViolation(f"{path}.{names[1]}", rule))
    return violations, recovery


def new_indicator(  # noqa: PLR0917 - mirrors the Indicator's fields in order
    region: str,
    indicator_id: str,
    display_name: str,
    service: str,
    deadline_days: int,
    threshold: float,
    window_days: int,
    minimum_sample: int,
    severity: Severity,
    recovery_threshold: float = 0.0,
    kind: MetricKind = MetricKind.SHARE_WITHIN_DEADLINE,
    warning_threshold: float | None = None,
    scope: Scope = Scope.PROVIDER,
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
    if kind is MetricKind.SHARE_WITHIN_DEADLINE and not 1 <= deadline_days <= MAX_DEADLINE_DAYS:
        violations.append(
            FieldViolation(
                "indicator.share_within_deadline.deadline_days",
                f"must be between 1 and {MAX_DEADLINE_DAYS} days",
            )
        )
    if not isinstance(kind, MetricKind):
        violations.append(FieldViolation("indicator.measure.kind", "must name a metric kind"))
        kind = MetricKind.SHARE_WITHIN_DEADLINE
    threshold_violations, recovery = _threshold_violations(
        kind, threshold, recovery_threshold, warning_threshold
    )
    violations.extend(threshold_violations)
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        violations.append(
            FieldViolation("indicator.window_days", f"must be between 1 and {MAX_WINDOW_DAYS} days")
        )
    if minimum_sample < 1:
        violations.append(FieldViolation("indicator.minimum_sample", "must be at least 1"))
    if not isinstance(severity, Severity):
        violations.append(FieldViolation("indicator.severity", "must be WARNING or SERIOUS"))
    if not isinstance(scope, Scope):
        violations.append(
            FieldViolation("indicator.scope", "must be PROVIDER, SERVICE, MUNICIPALITY or REGION")
        )
    raise_if_any(violations, "the indicator is invalid")
    return Indicator(
        region=region,
        indicator_id=indicator_id,
        display_name=display_name.strip(),
        service=service,
        deadline_days=deadline_days if kind is MetricKind.SHARE_WITHIN_DEADLINE else 0,
        threshold=threshold,
        window_days=window_days,
        minimum_sample=minimum_sample,
        severity=severity,
        recovery_threshold=recovery,
        kind=kind,
        warning_threshold=warning_threshold,
        scope=scope,
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
    source: ObservationSource = ObservationSource.REGION_CASE_DATA
    value: float | None = None
    """The measured value, for indicators other than a share within a deadline."""
    service: str = ""
    """The growth service, for a SERVICE-scoped indicator (optional otherwise)."""
    municipality: str = ""
    """The municipality's three-digit code, for a MUNICIPALITY-scoped indicator."""
    group: str = ""
    """A pseudonymous customer-group category (e.g. "age-55-plus"), for equal treatment; never
    a person's identity."""

    @property
    def weight(self) -> float:
        return SOURCE_WEIGHTS[self.source]

    def differs_from(self, other: Observation, *, as_pending: bool = False) -> list[str]:
        """The fields (as request paths) in which a record under the same id differs; a pending
        case and its completion agree on the case alone (provider, case key, start)."""
        names: tuple[str, ...] = ("provider", "case_key", "started_on", "service", "municipality", "group")
        if not as_pending:
            names += ("completed_on", "value")
        return [f"observation.{name}" for name in names if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class PendingCase:
    """A case started and not yet completed ("job search started on D", no assessment yet):
    once its deadline passes, the deadline sweep counts it late on the day after, with no
    new observation arriving; its completion later is stored but not counted twice."""

    observation: Observation
    """completed_on is the start day until the case completes."""
    due_on: date
    counted_on: date | None = None

    @property
    def overdue_day(self) -> date:
        """The day it counts late on: the first day past its deadline."""
        return self.due_on + timedelta(days=1)


def pending_case(indicator: Indicator, observation: Observation) -> PendingCase:
    return PendingCase(observation, observation.started_on + timedelta(days=indicator.deadline_days))


def count_overdue(indicator: Indicator, cases: Iterable[PendingCase]) -> dict[tuple[str, date], DayBucket]:
    """The late cases the sweep adds, per scope key and the day each deadline passed."""
    buckets: dict[tuple[str, date], DayBucket] = {}
    for case in cases:
        key = (indicator.scope_key(case.observation), case.overdue_day)
        # Past its deadline: it adds a case not within it (its weight, nothing to the value).
        bucket = buckets.get(key, DayBucket())
        weight = case.observation.weight
        buckets[key] = DayBucket(bucket.sample_size + 1, bucket.weight + weight, bucket.weighted_value)
    return buckets


def _key_violations(
    scope: Scope, provider: str, service: str, municipality: str, group: str
) -> tuple[str, list[FieldViolation]]:
    """An observation's grouping keys' violations (the one its scope needs must be there), and
    the provider's business ID in canonical form."""
    violations: list[FieldViolation] = []
    required = SCOPE_FIELDS[scope]
    for name, given in (("provider", provider), ("service", service), ("municipality", municipality)):
        if not given and name == required:
            violations.append(
                FieldViolation(f"observation.{name}", f"is required for a {scope}-scoped indicator")
            )
    canonical_provider = provider
    if provider:
        try:
            canonical_provider = validate_business_id(provider, "observation.provider")
        except InvalidArgument as error:
            violations.extend(error.violations)
    if service:
        try:
            validate_resource_id(service, "observation.service")
        except InvalidArgument as error:
            violations.extend(error.violations)
    if group and not _GROUP_KEY.fullmatch(group):
        violations.append(
            FieldViolation("observation.group", "must be a category key: 1-64 letters, digits, '-' or '_'")
        )
    elif _PERSONAL_IDENTITY_CODE.fullmatch(group):
        violations.append(
            FieldViolation("observation.group", "must be a category, not a personal identity code")
        )
    if municipality and not _MUNICIPALITY_CODE.fullmatch(municipality):
        violations.append(
            FieldViolation("observation.municipality", "must be a three-digit municipality code")
        )
    return canonical_provider, violations


def new_observation(
    observation_id: str,
    provider: str,
    case_key: str,
    started_on: date,
    completed_on: date,
    *,
    today: date,
    source: ObservationSource = ObservationSource.REGION_CASE_DATA,
    value: float | None = None,
    service: str = "",
    municipality: str = "",
    scope: Scope = Scope.PROVIDER,
    group: str = "",
) -> Observation:
    """Validate and build an observation; the provider's business ID is returned in canonical
    form. It must carry the key its indicator's scope groups by (a provider, a service, a
    municipality); a key it carries besides is checked too."""
    violations: list[FieldViolation] = []
    if violation := check_text(observation_id, "observation.observation_id", KEY_MAX_LENGTH):
        violations.append(violation)
    canonical_provider, key_violations = _key_violations(scope, provider, service, municipality, group)
    violations.extend(key_violations)
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
    return Observation(
        observation_id,
        canonical_provider,
        case_key,
        started_on,
        completed_on,
        source,
        value,
        service,
        municipality,
        group,
    )


def is_within_deadline(indicator: Indicator, observation: Observation) -> bool:
    """Whether the case was completed within the indicator's deadline; the deadline day itself counts."""
    return (observation.completed_on - observation.started_on).days <= indicator.deadline_days


def window_bounds(indicator: Indicator, as_of: date) -> tuple[date, date]:
    """The rolling window over completed_on, both ends inclusive: window_days days ending on as_of."""
    return as_of - timedelta(days=indicator.window_days - 1), as_of


@dataclass(frozen=True)
class WindowStats:
    """One provider's observations in an indicator's window: how many, their total weight, and
    the weighted sum of what each adds to the metric (1 for a case within its deadline)."""

    sample_size: int
    weight: float
    weighted_value: float
    reference: float | None = None
    """For equal treatment: the overall rate this group's window is compared with."""
    group: str = ""
    """For equal treatment: the customer group whose window this is."""

    def __post_init__(self) -> None:
        if self.sample_size < 0 or self.weight < 0:
            raise ValueError(f"a window of {self.sample_size} observations weighing {self.weight}")

    @property
    def rate(self) -> float:
        return self.weighted_value / self.weight if self.weight > 0 else 0.0


def worst_group(indicator: Indicator, overall: WindowStats, groups: dict[str, WindowStats]) -> WindowStats:
    """The window an equal-treatment indicator is evaluated on: the group with the lowest
    outcome rate among those with at least minimum_sample observations (a smaller group says
    nothing yet), compared with the overall rate of the whole window. With no such group, an
    empty window (too small a sample: no verdict)."""
    reference = overall.rate
    counted = [
        replace(stats, reference=reference, group=group)
        for group, stats in sorted(groups.items())
        if stats.sample_size >= indicator.minimum_sample
    ]
    if not counted:
        return WindowStats(0, 0.0, 0.0, reference)
    return min(counted, key=lambda stats: stats.rate)


@dataclass(frozen=True)
class DayBucket:
    """The observations of one provider on one indicator completed on one day: the unit the
    window is summed from, so evaluating never rescans observations."""

    sample_size: int = 0
    weight: float = 0.0
    weighted_value: float = 0.0

    def add(self, indicator: Indicator, observation: Observation) -> DayBucket:
        added = observation.weight * indicator.observed_value(observation)
        return DayBucket(self.sample_size + 1, self.weight + observation.weight, self.weighted_value + added)


def window_stats(indicator: Indicator, observations: Iterable[Observation], as_of: date) -> WindowStats:
    """Weigh one provider's observations completed inside the window ending on as_of."""
    start, end = window_bounds(indicator, as_of)
    bucket = DayBucket()
    for observation in observations:
        if start <= observation.completed_on <= end:
            bucket = bucket.add(indicator, observation)
    return WindowStats(bucket.sample_size, bucket.weight, bucket.weighted_value)


class Verdict(StrEnum):
    """What an evaluation decides for one provider on one indicator."""

    NONE = "NONE"
    OPEN = "OPEN"
    RESOLVE = "RESOLVE"


def evaluate(indicator: Indicator, stats: WindowStats, breach_open: bool) -> Verdict:
    """Whether a breach opens, resolves, or nothing changes.

    Too small a sample says nothing about quality, so it neither opens nor resolves a
    breach; an open breach is not opened again, and resolves only at the recovery share.
    """
    if stats.sample_size < indicator.minimum_sample:
        return Verdict.NONE
    value = indicator.value(stats)
    if not breach_open and indicator.breached_by(value):
        return Verdict.OPEN
    if breach_open and indicator.recovered_at(value):
        return Verdict.RESOLVE
    return Verdict.NONE


def evaluate_warning(indicator: Indicator, stats: WindowStats, warning_open: bool) -> Verdict:
    """Whether a warning is raised, cleared, or nothing changes.

    A warning is raised for a value past the warning threshold but not past the breach
    threshold (a value past both opens a breach, not a warning); an open warning stays open
    while the value is past the warning threshold (whether or not a breach opened since),
    and clears at the recovery threshold, as a breach resolves. Too small a sample decides
    nothing.
    """
    if indicator.warning_threshold is None or stats.sample_size < indicator.minimum_sample:
        return Verdict.NONE
    value = indicator.value(stats)
    if not warning_open and indicator.warned_by(value) and not indicator.breached_by(value):
        return Verdict.OPEN
    if warning_open and indicator.recovered_at(value):
        return Verdict.RESOLVE
    return Verdict.NONE


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
    recovery_threshold: float = 0.0
    resolved_at: datetime | None = None
    window_start: date | None = None
    window_end: date | None = None
    warning: bool = False
    """A warning: past the warning threshold only; it never leads to a suspension request."""
    scope: Scope = Scope.PROVIDER
    scope_key: str = ""
    """The group it is about (for the provider scope, the provider's business ID)."""
    group: str = ""
    """For equal treatment: the customer group with the lowest share of the overall rate."""

    def __post_init__(self) -> None:
        if self.scope is Scope.PROVIDER and not self.scope_key:
            object.__setattr__(self, "scope_key", self.provider)

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
            resolve_time=self.resolved_at,
            recovery_threshold=self.recovery_threshold,
            window_start=self.window_start,
            window_end=self.window_end,
            warning=self.warning,
            scope=self.scope,
            scope_key=self.scope_key,
            group=self.group,
        )

    @property
    def of_provider(self) -> bool:
        """A provider's breach, not a warning: only these ask a provider for corrective action
        or lead to its suspension; the others alert the region."""
        return self.scope is Scope.PROVIDER and not self.warning

    @property
    def suspends_provider(self) -> bool:
        """Whether the breach suspends the provider in the region until it is reinstated."""
        return self.severity == Severity.SERIOUS and self.of_provider


def open_breach(
    id: str,
    indicator: Indicator,
    key: str,
    stats: WindowStats,
    now: datetime,
    *,
    as_of: date | None = None,
) -> Breach:
    """Open a breach of the scope's group `key` (for the provider scope, the provider's
    business ID), recording the value, threshold, sample and window it was decided on: a
    provider's records BreachOpened, another scope's RegionBreachOpened."""
    require_aware(now)
    window = window_bounds(indicator, as_of) if as_of is not None else (None, None)
    breach = Breach(
        id=id,
        region=indicator.region,
        indicator_id=indicator.indicator_id,
        provider=key if indicator.scope is Scope.PROVIDER else "",
        service=indicator.service,
        severity=indicator.severity,
        value=indicator.value(stats),
        threshold=indicator.threshold,
        sample_size=stats.sample_size,
        opened_at=now,
        recovery_threshold=indicator.recovery_threshold,
        window_start=window[0],
        window_end=window[1],
        scope=indicator.scope,
        scope_key=key,
        group=stats.group,
    )
    if breach.of_provider:
        breach.record(BreachOpened(breach.facts, breach.region))
    else:
        breach.record(RegionBreachOpened(breach.facts, breach.region))
    return breach


def raise_warning(
    id: str, indicator: Indicator, key: str, stats: WindowStats, now: datetime, *, as_of: date
) -> Breach:
    """Raise a warning (a Breach with warning set, of WARNING severity, at the warning
    threshold) recording the value, sample and window; records WarningRaised."""
    if indicator.warning_threshold is None:
        raise ValueError(f"{indicator.name} has no warning threshold")
    require_aware(now)
    start, end = window_bounds(indicator, as_of)
    warning = Breach(
        id=id,
        region=indicator.region,
        indicator_id=indicator.indicator_id,
        provider=key if indicator.scope is Scope.PROVIDER else "",
        service=indicator.service,
        severity=Severity.WARNING,
        value=indicator.value(stats),
        threshold=indicator.warning_threshold,
        sample_size=stats.sample_size,
        opened_at=now,
        recovery_threshold=indicator.recovery_threshold,
        window_start=start,
        window_end=end,
        warning=True,
        scope=indicator.scope,
        scope_key=key,
        group=stats.group,
    )
    warning.record(WarningRaised(warning.facts, warning.region))
    return warning


def resolve_breach(breach: Breach, value: float, stats: WindowStats, now: datetime) -> Breach:
    """Resolve an open breach at the value that brought it back; records BreachResolved."""
    require_aware(now)
    if breach.state != BreachState.OPEN:
        raise ValueError(f"{breach.name} is not open")
    resolved = replace(
        breach,
        state=BreachState.RESOLVED,
        value=value,
        sample_size=stats.sample_size,
        resolved_at=now,
    )
    if resolved.warning:
        resolved.record(WarningCleared(resolved.facts, resolved.region, now))
    elif resolved.of_provider:
        resolved.record(BreachResolved(resolved.facts, resolved.region, now))
    else:
        resolved.record(RegionBreachResolved(resolved.facts, resolved.region, now))
    return resolved


# --- programmes ---------------------------------------------------------------------------------

PROGRAMME = ResourcePattern("regions/{region}/programmes/{programme:int}")
RISK_MAX_LENGTH = 500
MAX_PROGRAMME_INDICATORS = 100
MAX_CORRECTIVE_ACTION_DAYS = 365


class ProgrammeState(StrEnum):
    """A draft may be published once; a published version is never rewritten."""

    DRAFT = "DRAFT"
    PUBLISHED = "PUBLISHED"


class PolicyAction(StrEnum):
    """What a breach of a severity leads to under the programme."""

    ALERT_ONLY = "ALERT_ONLY"
    CORRECTIVE_ACTION = "CORRECTIVE_ACTION"
    """The provider is asked for corrective action within corrective_action_days; when the
    deadline passes unanswered, or the breach recurs, it is escalated to a suspension request."""
    SUSPENSION_REQUEST = "SUSPENSION_REQUEST"


@dataclass(frozen=True)
class SeverityPolicy:
    severity: Severity
    action: PolicyAction
    corrective_action_days: int = 0
    recurrence_days: int = 0
    """A breach that opens again within this many days of the last one resolving (same
    indicator and provider) is escalated at once; 0: never."""


@dataclass(frozen=True)
class WatchedIndicator:
    """An indicator in a programme, with the risk it watches."""

    indicator: str
    """The indicator's id within the region."""
    risk: str


DEFAULT_POLICIES = (
    SeverityPolicy(Severity.WARNING, PolicyAction.CORRECTIVE_ACTION, 30, 90),
    SeverityPolicy(Severity.SERIOUS, PolicyAction.SUSPENSION_REQUEST),
)


@dataclass(frozen=True)
class ProgrammeCreated(Event):
    """A region drafted a version of its self-monitoring programme."""

    programme: str
    region: str
    version: int
    indicators: list[str]
    create_time: datetime


@dataclass(frozen=True)
class ProgrammePublished(Event):
    """A version of the programme was published; from then on it is the one in force."""

    programme: str
    region: str
    version: int
    publish_time: datetime
    publication_date: date


@dataclass(frozen=True)
class Programme(Aggregate):
    """A version of a region's self-monitoring programme (omavalvontaohjelma): its indicators,
    the risks they watch, and what a breach of each severity leads to."""

    region: str
    version: int
    display_name: str
    indicators: tuple[WatchedIndicator, ...]
    policies: tuple[SeverityPolicy, ...]
    state: ProgrammeState = ProgrammeState.DRAFT
    created_at: datetime | None = None
    published_at: datetime | None = None
    publication_date: date | None = None

    @property
    def name(self) -> str:
        return PROGRAMME.format(region=self.region, programme=self.version)

    def policy_for(self, severity: Severity) -> SeverityPolicy:
        for policy in self.policies:
            if policy.severity == severity:
                return policy
        return SeverityPolicy(severity, PolicyAction.ALERT_ONLY)


def new_programme(
    region: str,
    display_name: str,
    indicators: Iterable[WatchedIndicator],
    policies: Iterable[SeverityPolicy],
    *,
    with_default_catalogue: bool = False,
) -> Programme:
    """Validate a draft (its version is given when it is created); every violation at once.
    Without the default catalogue, it must list an indicator of its own."""
    violations: list[FieldViolation] = []
    if violation := check_text(display_name, "programme.display_name", DISPLAY_NAME_MAX_LENGTH):
        violations.append(violation)
    watched = tuple(indicators)
    least = 0 if with_default_catalogue else 1
    if not least <= len(watched) <= MAX_PROGRAMME_INDICATORS:
        violations.append(
            FieldViolation("programme.indicators", f"must list 1 to {MAX_PROGRAMME_INDICATORS} indicators")
        )
    seen: set[str] = set()
    for index, item in enumerate(watched):
        path = f"programme.indicators[{index}]"
        try:
            validate_resource_id(item.indicator, f"{path}.indicator")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if item.indicator in seen:
            violations.append(FieldViolation(f"{path}.indicator", "is listed twice"))
        seen.add(item.indicator)
        if violation := check_text(item.risk, f"{path}.risk", RISK_MAX_LENGTH):
            violations.append(violation)
    rules = tuple(policies) or DEFAULT_POLICIES
    severities: set[Severity] = set()
    for index, policy in enumerate(rules):
        path = f"programme.policies[{index}]"
        if policy.severity in severities:
            violations.append(FieldViolation(f"{path}.severity", "has a policy already"))
        severities.add(policy.severity)
        if policy.severity is Severity.SERIOUS and policy.action is not PolicyAction.SUSPENSION_REQUEST:
            violations.append(FieldViolation(f"{path}.action", "a serious breach always requests suspension"))
        if not 0 <= policy.recurrence_days <= MAX_WINDOW_DAYS:
            violations.append(
                FieldViolation(f"{path}.recurrence_days", f"must be between 0 and {MAX_WINDOW_DAYS}")
            )
        days = policy.corrective_action_days
        if policy.action is PolicyAction.CORRECTIVE_ACTION and not 1 <= days <= MAX_CORRECTIVE_ACTION_DAYS:
            violations.append(
                FieldViolation(
                    f"{path}.corrective_action_days", f"must be between 1 and {MAX_CORRECTIVE_ACTION_DAYS}"
                )
            )
    raise_if_any(violations, "the programme is invalid")
    return Programme(region, 0, display_name.strip(), watched, rules)


def create_programme(draft: Programme, version: int, now: datetime) -> Programme:
    created = replace(draft, version=version, created_at=require_aware(now))
    created.record(
        ProgrammeCreated(
            created.name, created.region, version, [item.indicator for item in created.indicators], now
        )
    )
    return created


def publish_programme(programme: Programme, now: datetime, today: date) -> Programme:
    """Publish a draft; publishing a published version again changes nothing."""
    if programme.state is ProgrammeState.PUBLISHED:
        return programme
    published = replace(
        programme, state=ProgrammeState.PUBLISHED, published_at=require_aware(now), publication_date=today
    )
    published.record(ProgrammePublished(published.name, published.region, published.version, now, today))
    return published


def default_catalogue(region: str, service: str) -> list[tuple[Indicator, str]]:
    """The default indicators drawn from the law's customer rules, each with the risk it watches."""

    def make(  # noqa: PLR0917 - one indicator's definition
        indicator_id: str,
        display_name: str,
        kind: MetricKind,
        threshold: float,
        recovery: float,
        window_days: int,
        minimum_sample: int,
        severity: Severity = Severity.WARNING,
        deadline_days: int = 0,
    ) -> Indicator:
        return new_indicator(
            region,
            indicator_id,
            display_name,
            service,
            deadline_days,
            threshold,
            window_days,
            minimum_sample,
            severity,
            recovery_threshold=recovery,
            kind=kind,
        )

    share = MetricKind.SHARE_WITHIN_DEADLINE
    return [
        (
            make(
                "need-assessment-14d",
                "Service need assessed within 2 weeks of job search starting",
                share,
                0.9,
                0.95,
                90,
                10,
                Severity.SERIOUS,
                deadline_days=14,
            ),
            "Customers wait for the assessment their services follow from",
        ),
        (
            make(
                "reassessment-3m",
                "Service need re-assessed at least every 3 months",
                share,
                0.9,
                0.95,
                180,
                10,
                deadline_days=92,
            ),
            "Long unemployment goes without a fresh look at the service need",
        ),
        (
            make("customer-satisfaction", "Customer satisfaction (1-5)", MetricKind.MEAN, 3.5, 3.8, 180, 20),
            "Customers are poorly served",
        ),
        (
            make(
                "complaints-per-100",
                "Complaints per 100 customers",
                MetricKind.COUNT_PER_100_CUSTOMERS,
                5.0,
                3.0,
                365,
                30,
            ),
            "Service quality or treatment of customers causes complaints",
        ),
        (
            make("outcome-3m", "Employment or training within 3 months", MetricKind.RATE, 0.25, 0.3, 365, 20),
            "The service does not lead to work or training",
        ),
        (
            make(
                "language-fi-sv",
                "Service available in Finnish and Swedish where required",
                MetricKind.RATE,
                0.95,
                0.98,
                180,
                10,
            ),
            "Customers are not served in their own national language",
        ),
        (
            make(
                "equal-treatment",
                "Equal treatment: no customer group's outcome rate below 80 % of the overall rate",
                MetricKind.EQUAL_TREATMENT,
                0.8,
                0.9,
                365,
                5,
            ),
            "A customer group is treated unequally",
        ),
    ]


# --- corrective actions -------------------------------------------------------------------------

CORRECTIVE_ACTION = ResourcePattern("regions/{region}/correctiveActions/{action:key}")
RESPONSE_MAX_LENGTH = 4000


class CorrectiveActionState(StrEnum):
    REQUESTED = "REQUESTED"
    RESPONDED = "RESPONDED"
    ESCALATED = "ESCALATED"


class EscalationReason(StrEnum):
    CORRECTIVE_ACTION_OVERDUE = "CORRECTIVE_ACTION_OVERDUE"
    RECURRED = "RECURRED"
    PROVIDER_ADMITTED = "PROVIDER_ADMITTED"
    """A serious breach opened before its provider was admitted takes effect when it is."""


@dataclass(frozen=True)
class CorrectiveActionRequested(Event):
    """The provider is asked to correct what a breach shows, by a deadline."""

    corrective_action: str
    region: str
    breach: str
    provider: str
    due_date: date
    request_time: datetime


@dataclass(frozen=True)
class CorrectiveActionResponded(Event):
    """The provider answered a corrective-action request (the answer itself is not in the event)."""

    corrective_action: str
    region: str
    breach: str
    provider: str
    respond_time: datetime


@dataclass(frozen=True)
class CorrectiveAction(Aggregate):
    """A request to a provider for corrective action (korjaava toimenpide) on a breach."""

    region: str
    breach_id: str
    provider: str
    due_on: date
    requested_at: datetime
    state: CorrectiveActionState = CorrectiveActionState.REQUESTED
    response: str = ""
    responded_at: datetime | None = None

    @property
    def id(self) -> str:
        return self.breach_id

    @property
    def name(self) -> str:
        return CORRECTIVE_ACTION.format(region=self.region, action=self.id)

    @property
    def breach(self) -> str:
        return BREACH.format(region=self.region, breach=self.breach_id)


def request_corrective_action(breach: Breach, days: int, now: datetime, today: date) -> CorrectiveAction:
    action = CorrectiveAction(breach.region, breach.id, breach.provider, today + timedelta(days=days), now)
    action.record(
        CorrectiveActionRequested(
            action.name, action.region, action.breach, action.provider, action.due_on, now
        )
    )
    return action


def respond_to_corrective_action(action: CorrectiveAction, response: str, now: datetime) -> CorrectiveAction:
    """The provider's answer, once, before the request is escalated."""
    if violation := check_text(response, "response", RESPONSE_MAX_LENGTH):
        raise InvalidArgument(f"response {violation.description}", [violation])
    if action.state is CorrectiveActionState.RESPONDED and action.response == response.strip():
        return action
    if action.state is not CorrectiveActionState.REQUESTED:
        raise FailedPrecondition(
            f"{action.name} is {action.state.lower()}: it takes no response",
            reason="CORRECTIVE_ACTION_CLOSED",
        )
    responded = replace(
        action,
        state=CorrectiveActionState.RESPONDED,
        response=response.strip(),
        responded_at=require_aware(now),
    )
    responded.record(
        CorrectiveActionResponded(responded.name, responded.region, responded.breach, responded.provider, now)
    )
    return responded


def escalate_breach(breach: Breach, reason: EscalationReason, now: datetime) -> Breach:
    """An open breach becomes a suspension request: SERIOUS, with BreachEscalated. Only a
    provider's breach can be: a warning or another scope's breach has no provider to suspend."""
    if not breach.of_provider:
        raise ValueError(f"{breach.name} is no provider's breach")
    escalated = replace(breach, severity=Severity.SERIOUS)
    escalated.record(BreachEscalated(escalated.facts, escalated.region, str(reason), require_aware(now)))
    return escalated


# --- equal availability (from the registry's events) --------------------------------------------


@dataclass(frozen=True)
class AdmittedProvider:
    """A provider admitted to produce a service in a region, where and in which languages; a
    read model of the registry's events, for the equal-availability view."""

    region: str
    service: str
    business_id: str
    municipalities: tuple[str, ...]
    languages: tuple[str, ...]
    suspended: bool = False
    ended: bool = False
    """Its admission lapsed, was revoked or withdrawn: no longer admitted."""


class AvailabilityChange(StrEnum):
    """What a registry event after admission does to a provider's place in the view."""

    SUSPENDED = "SUSPENDED"
    """ProviderSuspended: still admitted, not active."""
    REINSTATED = "REINSTATED"
    """ProviderReinstated: active again."""
    ENDED = "ENDED"
    """RegistrationLapsed, ProviderRevoked, RegistrationWithdrawn: no longer admitted."""


@dataclass(frozen=True)
class AvailabilityCell:
    """Providers of one service in one municipality in one language: admitted, and of them active."""

    service: str
    municipality: str
    language: str
    admitted: int
    active: int


def availability(providers: Iterable[AdmittedProvider]) -> list[AvailabilityCell]:
    """Admitted (and active, i.e. not suspended) providers per service x municipality x language;
    a provider whose admission ended counts nowhere."""
    cells: dict[tuple[str, str, str], tuple[int, int]] = {}
    for provider in providers:
        if provider.ended:
            continue
        for municipality in provider.municipalities or ("",):
            for language in provider.languages or ("",):
                key = (provider.service, municipality, language)
                admitted, active = cells.get(key, (0, 0))
                cells[key] = (admitted + 1, active + (0 if provider.suspended else 1))
    return [AvailabilityCell(*key, admitted, active) for key, (admitted, active) in sorted(cells.items())]


# --- alerts -------------------------------------------------------------------------------------

ALERT = ResourcePattern("regions/{region}/alerts/{alert:key}")


class AlertKind(StrEnum):
    """What happened to the breach an alert is about."""

    OPENED = "OPENED"
    ESCALATED = "ESCALATED"
    RESOLVED = "RESOLVED"
    WARNING_RAISED = "WARNING_RAISED"
    WARNING_CLEARED = "WARNING_CLEARED"


ALERT_EVENTS: dict[str, AlertKind] = {
    "BreachOpened": AlertKind.OPENED,
    "BreachEscalated": AlertKind.ESCALATED,
    "BreachResolved": AlertKind.RESOLVED,
    "RegionBreachOpened": AlertKind.OPENED,
    "RegionBreachResolved": AlertKind.RESOLVED,
    "WarningRaised": AlertKind.WARNING_RAISED,
    "WarningCleared": AlertKind.WARNING_CLEARED,
}
"""The events that are alerts, by their type's short name."""


def alert_id(breach_id: str, kind: AlertKind) -> str:
    """A breach opens, escalates and resolves at most once each, so this names one alert."""
    return f"{breach_id}-{kind.lower()}"


@dataclass(frozen=True)
class AlertAcknowledged(Event):
    """A supervisor acknowledged an alert."""

    alert: str
    region: str
    breach: str
    acknowledge_time: datetime


@dataclass(frozen=True)
class Alert(Aggregate):
    """A supervisor's alert (hälytys) about a breach: its opening, escalation or resolution."""

    region: str
    breach_id: str
    kind: AlertKind
    created_at: datetime
    acknowledged_by: str = ""
    acknowledged_at: datetime | None = None

    @property
    def id(self) -> str:
        return alert_id(self.breach_id, self.kind)

    @property
    def name(self) -> str:
        return ALERT.format(region=self.region, alert=self.id)

    @property
    def breach(self) -> str:
        return BREACH.format(region=self.region, breach=self.breach_id)


def acknowledge_alert(alert: Alert, who: str, now: datetime) -> Alert:
    """Acknowledged once: acknowledging again changes nothing."""
    if alert.acknowledged_at is not None:
        return alert
    acknowledged = replace(alert, acknowledged_by=who, acknowledged_at=require_aware(now))
    acknowledged.record(AlertAcknowledged(acknowledged.name, acknowledged.region, acknowledged.breach, now))
    return acknowledged


EVENTS: tuple[type[Event], ...] = (
    BreachOpened,
    BreachResolved,
    BreachEscalated,
    WarningRaised,
    WarningCleared,
    RegionBreachOpened,
    RegionBreachResolved,
    IndicatorCreated,
    ProgrammeCreated,
    ProgrammePublished,
    AlertAcknowledged,
    CorrectiveActionRequested,
    CorrectiveActionResponded,
)

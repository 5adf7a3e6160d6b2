"""Market failure (markkinapuute): a region's finding that not enough providers meet the criteria
for a growth service in an area, and the direct awards that rest on one.

Only under a valid finding may a municipality or its in-house entity produce growth services
for the region: register (the registry learns findings from `MarketFailureDeclared` and
`MarketFailureLifted`) or be awarded directly (here). A finding holds from `valid_from` until
`valid_until`, unless lifted earlier; it lapses by itself when its validity runs out (a timer).
Pure: no storage, no transport.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from services.runtime.domain import (
    Aggregate,
    Event,
    ResourcePattern,
    check_text,
    raise_if_any,
    require_aware,
    validate_resource_id,
)
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

FINDING = ResourcePattern("regions/{region}/marketFailures/{finding:key}")
DIRECT_AWARD = ResourcePattern("regions/{region}/directAwards/{award:key}")

TEXT_MAX_LENGTH = 4000
MAX_EVIDENCE = 20
MAX_MUNICIPALITIES = 100
_MUNICIPALITY_CODE = re.compile(r"[0-9]{3}")


class EvidenceKind(StrEnum):
    """How the failure was established (DOMAIN.md, "Market failure")."""

    OPEN_CONSULTATION = "OPEN_CONSULTATION"
    OUTSIDE_ASSESSMENT = "OUTSIDE_ASSESSMENT"
    MARKET_SURVEY_NOTICE = "MARKET_SURVEY_NOTICE"
    """A market-survey notice on the public procurement notice portal with no qualifying responses."""


class FindingState(StrEnum):
    ACTIVE = "ACTIVE"
    LIFTED = "LIFTED"
    EXPIRED = "EXPIRED"


class AwardeeKind(StrEnum):
    MUNICIPALITY = "MUNICIPALITY"
    IN_HOUSE_ENTITY = "IN_HOUSE_ENTITY"


@dataclass(frozen=True)
class Evidence:
    kind: EvidenceKind
    reference: str
    """Where it can be read: a notice number, a report's address."""
    summary: str


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketFailureDeclared(Event):
    finding: str
    region: str
    service: str
    municipalities: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    declare_time: datetime


@dataclass(frozen=True)
class MarketFailureLifted(Event):
    """Lifted by the region, or lapsed when its validity ran out."""

    finding: str
    region: str
    service: str
    municipalities: tuple[str, ...]
    lift_time: datetime


@dataclass(frozen=True)
class DirectAwardMade(Event):
    award: str
    region: str
    service: str
    municipality: str
    awardee_kind: str
    finding: str
    """The market-failure finding the award rests on."""
    award_time: datetime


EVENTS: tuple[type[Event], ...] = (MarketFailureDeclared, MarketFailureLifted)
"""In events.proto (the registry consumes them); DirectAwardMade is in alliance_events.proto."""


# -- the finding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingSpec:
    service: str
    municipalities: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    valid_from: datetime
    valid_until: datetime
    review_date: date
    criteria: str
    """Which criteria the market fails: accessibility, sufficiency, affordability, effectiveness."""


def validate_finding(spec: FindingSpec, now: datetime) -> FindingSpec:
    """Every violation at once; returns the spec with municipalities sorted and deduplicated."""
    require_aware(now)
    violations: list[FieldViolation] = []
    try:
        validate_resource_id(spec.service, "finding.service")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if not 1 <= len(spec.municipalities) <= MAX_MUNICIPALITIES:
        violations.append(
            FieldViolation("finding.municipalities", f"must list 1 to {MAX_MUNICIPALITIES} municipalities")
        )
    for i, code in enumerate(spec.municipalities[:MAX_MUNICIPALITIES]):
        if _MUNICIPALITY_CODE.fullmatch(code) is None:
            violations.append(FieldViolation(f"finding.municipalities[{i}]", "must be a 3-digit code"))
    if not 1 <= len(spec.evidence) <= MAX_EVIDENCE:
        violations.append(
            FieldViolation("finding.evidence", f"must list 1 to {MAX_EVIDENCE} pieces of evidence")
        )
    for i, evidence in enumerate(spec.evidence[:MAX_EVIDENCE]):
        for name, value in (("reference", evidence.reference), ("summary", evidence.summary)):
            if (violation := check_text(value, f"finding.evidence[{i}].{name}", TEXT_MAX_LENGTH)) is not None:
                violations.append(violation)
    if (violation := check_text(spec.criteria, "finding.criteria", TEXT_MAX_LENGTH)) is not None:
        violations.append(violation)
    if spec.valid_until <= spec.valid_from:
        violations.append(FieldViolation("finding.valid_until", "must be after valid_from"))
    if spec.valid_until <= now:
        violations.append(FieldViolation("finding.valid_until", "must be in the future"))
    if not spec.valid_from.date() <= spec.review_date <= spec.valid_until.date():
        violations.append(FieldViolation("finding.review_date", "must fall within the validity period"))
    raise_if_any(violations, "the market-failure finding is invalid")
    return FindingSpec(
        spec.service,
        tuple(sorted(set(spec.municipalities))),
        spec.evidence,
        spec.valid_from,
        spec.valid_until,
        spec.review_date,
        spec.criteria.strip(),
    )


@dataclass
class Finding(Aggregate):
    """A market-failure finding (markkinapuutetta koskeva toteamus) for a service and area."""

    id: str
    region: str
    spec: FindingSpec
    state: FindingState
    created_at: datetime
    updated_at: datetime
    end_reason: str = ""

    @property
    def name(self) -> str:
        return FINDING.format(region=self.region, finding=self.id)

    @classmethod
    def declare(cls, finding_id: str, region: str, spec: FindingSpec, now: datetime) -> Finding:
        finding = cls(finding_id, region, spec, FindingState.ACTIVE, now, now)
        finding.record(
            MarketFailureDeclared(
                finding.name,
                region,
                spec.service,
                spec.municipalities,
                spec.valid_from,
                spec.valid_until,
                now,
            )
        )
        return finding

    def holds(self, service: str, municipality: str, at: datetime) -> bool:
        return (
            self.state == FindingState.ACTIVE
            and self.spec.service == service
            and municipality in self.spec.municipalities
            and self.spec.valid_from <= at < self.spec.valid_until
        )

    def lift(self, reason: str, now: datetime) -> None:
        if self.state != FindingState.ACTIVE:
            raise FailedPrecondition(
                f"{self.name} no longer holds: it is {self.state}", reason="FINDING_STATE"
            )
        if (violation := check_text(reason, "reason", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("lifting a finding needs a reason", [violation])
        self._end(FindingState.LIFTED, reason.strip(), now)

    def expire(self, now: datetime) -> bool:
        """At the end of the validity (a timer); False when it no longer held anyway."""
        if self.state != FindingState.ACTIVE or now < self.spec.valid_until:
            return False
        self._end(FindingState.EXPIRED, "The validity period ran out.", now)
        return True

    def _end(self, state: FindingState, reason: str, now: datetime) -> None:
        self.state = state
        self.end_reason = reason
        self.updated_at = now
        self.record(
            MarketFailureLifted(self.name, self.region, self.spec.service, self.spec.municipalities, now)
        )


def finding_for(findings: Sequence[Finding], service: str, municipality: str, at: datetime) -> Finding:
    """The finding a municipality's direct award or registration rests on, or FailedPrecondition."""
    for finding in findings:
        if finding.holds(service, municipality, at):
            return finding
    raise FailedPrecondition(
        f"no valid market-failure finding for {service} in municipality {municipality}: a municipality "
        "or its in-house entity may produce growth services only under market failure",
        [FieldViolation("award.municipality", "has no valid market-failure finding for the service")],
        reason="NO_MARKET_FAILURE",
    )


# -- direct award ----------------------------------------------------------------------------------


@dataclass
class DirectAward(Aggregate):
    """A direct award (suorahankinta) to a municipality or its in-house entity under market failure."""

    id: str
    region: str
    service: str
    municipality: str
    awardee_kind: AwardeeKind
    awardee: str
    """The municipality's code, or the in-house entity's business ID."""
    value: Decimal
    reasons: str
    finding: str
    created_at: datetime

    @property
    def name(self) -> str:
        return DIRECT_AWARD.format(region=self.region, award=self.id)

    @classmethod
    def make(
        cls,
        award_id: str,
        region: str,
        fields: DirectAwardSpec,
        findings: Sequence[Finding],
        now: datetime,
    ) -> DirectAward:
        violations: list[FieldViolation] = []
        try:
            validate_resource_id(fields.service, "award.service")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if _MUNICIPALITY_CODE.fullmatch(fields.municipality) is None:
            violations.append(FieldViolation("award.municipality", "must be a 3-digit code"))
        if (violation := check_text(fields.awardee, "award.awardee", 200)) is not None:
            violations.append(violation)
        if (violation := check_text(fields.reasons, "award.reasons", TEXT_MAX_LENGTH)) is not None:
            violations.append(violation)
        if fields.value <= 0 or fields.value != fields.value.quantize(Decimal("0.01")):
            violations.append(FieldViolation("award.value", "must be more than zero, in whole cents"))
        raise_if_any(violations, "the direct award is invalid")
        finding = finding_for(findings, fields.service, fields.municipality, now)
        award = cls(
            award_id,
            region,
            fields.service,
            fields.municipality,
            fields.awardee_kind,
            fields.awardee.strip(),
            fields.value,
            fields.reasons.strip(),
            finding.name,
            now,
        )
        award.record(
            DirectAwardMade(
                award.name,
                region,
                fields.service,
                fields.municipality,
                str(fields.awardee_kind),
                finding.name,
                now,
            )
        )
        return award


@dataclass(frozen=True)
class DirectAwardSpec:
    service: str
    municipality: str
    awardee_kind: AwardeeKind
    awardee: str
    value: Decimal
    reasons: str

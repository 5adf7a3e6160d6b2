"""Alliances (allianssi): joint procurement by a region and municipalities, consortia as bidders,
the alliance agreement, and its commercial model of target cost and pain/gain.

One aggregate, `Alliance`, carries the procurement and, once a consortium is selected, the
agreement: the buyers with their cost shares (summing to 100 %), the consortium bids signed
by every member, the selection stages with their reasons, the leadership group's unanimous
decisions, the phases and contract periods with their target costs, the cost ledger and the
closing of each period with a statement for every party. Pure: no storage, no transport.

Money is exact `Decimal` in whole cents. Rounding, written down:
- a period's fee is fee percentage x target cost, rounded half-even to the cent;
- the KPI incentive earned is the pool x the weights of the KPIs met / 100, half-even to the cent;
- the providers' part of the difference (target - actual) is the difference x their ratio,
  rounded half-even to the cent, then capped below at minus their fee (a loss never exceeds
  the fee); the buyers' part is the difference minus the providers' part, so the two always
  sum to the difference exactly;
- an amount shared among parties (buyers by cost share, members by consortium share) is split
  in cents by largest remainder (Hamilton's method), ties going to the party listed first,
  so the parts always sum to the amount exactly and each is within a cent of its exact share.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
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
from services.tendering import bidder_keys, sealing
from services.tendering.model import Buyer

ALLIANCE = ResourcePattern("regions/{region}/alliances/{alliance:key}")
ALLIANCE_BID = ResourcePattern("regions/{region}/alliances/{alliance:key}/bids/{bid:key}")
PERIOD = ResourcePattern("regions/{region}/alliances/{alliance:key}/periods/{period}")

CENT = Decimal("0.01")
HUNDRED = Decimal(100)
DEFAULT_PROVIDER_RATIO = Decimal(50)
"""Percent of the difference between target and actual cost that falls to the providers."""
TITLE_MAX_LENGTH = 200
TEXT_MAX_LENGTH = 4000
MAX_BUYERS = 50
MAX_MEMBERS = 20
MAX_KPIS = 30
MAX_PERIODS = 20
MAX_BID_BYTES = 64 * 1024


# -- exact money -------------------------------------------------------------------------------------


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def is_cents(value: Decimal) -> bool:
    return value.is_finite() and value == value.quantize(CENT)


def allocate(total: Decimal, weights: Sequence[Decimal]) -> tuple[Decimal, ...]:
    """`total` (whole cents) split by `weights` by largest remainder: the parts sum to `total`
    exactly, each within a cent of its exact share; ties go to the earlier weight."""
    if not weights or sum(weights, Decimal(0)) <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    if not is_cents(total):
        raise ValueError(f"{total} is not a whole number of cents")
    whole = int(total / CENT)
    weight_sum = sum(weights, Decimal(0))
    exact = [Decimal(whole) * w / weight_sum for w in weights]
    floors = [int(e.to_integral_value(rounding=ROUND_FLOOR)) for e in exact]
    left = whole - sum(floors)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in by_remainder[:left]:
        floors[i] += 1
    return tuple(Decimal(f) * CENT for f in floors)


@dataclass(frozen=True)
class PainGain:
    """The difference between target and actual cost (positive: a saving, negative: an overrun)
    and its split: `providers + buyers == difference`, `providers >= -fee`."""

    difference: Decimal
    providers: Decimal
    buyers: Decimal


def share_difference(target: Decimal, actual: Decimal, provider_ratio: Decimal, fee: Decimal) -> PainGain:
    """Splits target - actual by the providers' ratio (percent), the providers' loss capped at
    their fee; the buyers take the rest (module docstring: rounding)."""
    if not 0 <= provider_ratio <= HUNDRED:
        raise ValueError("the providers' ratio is a percentage")
    if fee < 0:
        raise ValueError("the fee cannot be negative")
    difference = target - actual
    providers = max(cents(difference * provider_ratio / HUNDRED), -fee)
    return PainGain(difference, providers, difference - providers)


# -- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllianceTendered(Event):
    alliance: str
    region: str
    title: str
    buyers: tuple[str, ...]
    bid_deadline: datetime
    create_time: datetime


@dataclass(frozen=True)
class AllianceBidReceived(Event):
    """Which consortium bid is not told until the selection: like tendering's sealed bids."""

    bid: str
    alliance: str
    region: str
    document_sha256: str
    receive_time: datetime


@dataclass(frozen=True)
class AllianceStageDecided(Event):
    alliance: str
    region: str
    stage: str
    bids: tuple[str, ...]
    """The bids that go on (the shortlist; the selected one)."""
    decide_time: datetime


@dataclass(frozen=True)
class AllianceDecisionMade(Event):
    """A leadership-group decision, unanimous by construction."""

    alliance: str
    region: str
    decision: int
    kind: str
    amendment: int
    decide_time: datetime


@dataclass(frozen=True)
class AllianceCostRecorded(Event):
    alliance: str
    region: str
    period: str
    entry: int
    member: str
    amount: Decimal
    record_time: datetime


@dataclass(frozen=True)
class AlliancePeriodClosed(Event):
    alliance: str
    region: str
    period: str
    target_cost: Decimal
    actual_cost: Decimal
    fee: Decimal
    incentive: Decimal
    providers_part: Decimal
    buyers_part: Decimal
    close_time: datetime


EVENTS: tuple[type[Event], ...] = (
    AllianceTendered,
    AllianceBidReceived,
    AllianceStageDecided,
    AllianceDecisionMade,
    AllianceCostRecorded,
    AlliancePeriodClosed,
)


# -- the joint procurement ---------------------------------------------------------------------------


class BuyerKind(StrEnum):
    REGION = "REGION"
    MUNICIPALITY = "MUNICIPALITY"


@dataclass(frozen=True)
class JointBuyer(Buyer):
    """A procuring unit of a joint procurement: tendering's buyer with its kind and the tasks it
    brings (growth services, municipal vitality tasks). `cost_share` is in percent."""

    kind: BuyerKind = BuyerKind.REGION
    tasks: tuple[str, ...] = ()


def check_buyers(buyers: Sequence[JointBuyer], organiser: str, path: str) -> list[FieldViolation]:
    """Shares sum to exactly 100 %, one lead, no buyer twice, the organiser among them."""
    violations: list[FieldViolation] = []
    if not 1 <= len(buyers) <= MAX_BUYERS:
        return [FieldViolation(path, f"must list 1 to {MAX_BUYERS} buyers")]
    seen: set[str] = set()
    for i, buyer in enumerate(buyers):
        try:
            validate_resource_id(buyer.organisation, f"{path}[{i}].organisation")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if buyer.organisation in seen:
            violations.append(FieldViolation(f"{path}[{i}].organisation", "is listed twice"))
        seen.add(buyer.organisation)
        if not buyer.cost_share.is_finite() or buyer.cost_share <= 0:
            violations.append(FieldViolation(f"{path}[{i}].cost_share", "must be more than zero"))
        if not buyer.tasks or any(check_text(t, "task", TITLE_MAX_LENGTH) for t in buyer.tasks):
            violations.append(FieldViolation(f"{path}[{i}].tasks", "must name the tasks the buyer brings"))
    total = sum((b.cost_share for b in buyers if b.cost_share.is_finite()), Decimal(0))
    if total != HUNDRED:
        violations.append(FieldViolation(f"{path}", f"cost shares must sum to 100 %, not {total} %"))
    if sum(1 for b in buyers if b.lead) != 1:
        violations.append(FieldViolation(f"{path}", "exactly one buyer must lead"))
    if organiser not in seen:
        violations.append(FieldViolation(f"{path}", f"the organiser {organiser} must be one of the buyers"))
    return violations


@dataclass(frozen=True)
class AllianceSpec:
    title: str
    service: str
    description: str
    buyers: tuple[JointBuyer, ...]
    bid_deadline: datetime
    quality_weight: Decimal
    """Points out of 100 for the workshop/interview stage; price components get the rest."""
    provider_ratio: Decimal = DEFAULT_PROVIDER_RATIO
    duration_months: int = 120


def validate_spec(spec: AllianceSpec, organiser: str, now: datetime) -> AllianceSpec:
    require_aware(now)
    violations: list[FieldViolation] = []
    if (violation := check_text(spec.title, "alliance.title", TITLE_MAX_LENGTH)) is not None:
        violations.append(violation)
    if (violation := check_text(spec.description, "alliance.description", TEXT_MAX_LENGTH)) is not None:
        violations.append(violation)
    try:
        validate_resource_id(spec.service, "alliance.service")
    except InvalidArgument as error:
        violations.extend(error.violations)
    violations.extend(check_buyers(spec.buyers, organiser, "alliance.buyers"))
    if spec.bid_deadline <= now:
        violations.append(FieldViolation("alliance.bid_deadline", "must be in the future"))
    if not 0 <= spec.quality_weight <= HUNDRED:
        violations.append(FieldViolation("alliance.quality_weight", "must be between 0 and 100"))
    if not 0 <= spec.provider_ratio <= HUNDRED:
        violations.append(FieldViolation("alliance.provider_ratio", "must be between 0 and 100"))
    if not 1 <= spec.duration_months <= 240:
        violations.append(FieldViolation("alliance.duration_months", "must be 1 to 240 months"))
    raise_if_any(violations, "the alliance is invalid")
    return spec


# -- consortia and their bids ------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A consortium member: a provider with its role, its Ed25519 key and its share (percent) of
    the consortium's fee, incentive and pain/gain."""

    business_id: str
    role: str
    public_key: bytes
    share: Decimal
    lead: bool = False


@dataclass(frozen=True)
class Proposal:
    """What a consortium bids: the signed document, UTF-8 JSON
    {"alliance": name, "members": [business IDs], "qualitative": text,
     "fee_percentage": "<decimal>", "cost_estimate": "<decimal euros>"}."""

    alliance: str
    members: tuple[str, ...]
    qualitative: str
    fee_percentage: Decimal
    cost_estimate: Decimal

    def encode(self) -> bytes:
        document = {
            "alliance": self.alliance,
            "members": list(self.members),
            "qualitative": self.qualitative,
            "fee_percentage": str(self.fee_percentage),
            "cost_estimate": str(self.cost_estimate),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Proposal:
        try:
            document = json.loads(data)
            return cls(
                str(document["alliance"]),
                tuple(str(m) for m in document["members"]),
                str(document["qualitative"]),
                Decimal(str(document["fee_percentage"])),
                Decimal(str(document["cost_estimate"])),
            )
        except (ValueError, KeyError, TypeError, InvalidOperation):
            raise InvalidArgument(
                "the bid document is not a proposal",
                [FieldViolation("bid.document", "must be the proposal's JSON document")],
            ) from None


@dataclass(frozen=True)
class Signature:
    business_id: str
    signature: bytes


@dataclass(frozen=True)
class ConsortiumBid:
    bid: str
    consortium: str
    members: tuple[Member, ...]
    document: bytes
    signatures: tuple[Signature, ...]
    proposal: Proposal
    received_at: datetime
    workshop_score: Decimal | None = None
    total: Decimal | None = None

    @property
    def lead(self) -> Member:
        return next(m for m in self.members if m.lead)

    def price(self) -> Decimal:
        """The comparison price: the cost estimate plus the fee on it."""
        return self.proposal.cost_estimate * (HUNDRED + self.proposal.fee_percentage) / HUNDRED


def _check_signatures(
    bid: ConsortiumBid, enrolled: Collection[tuple[str, str]], violations: list[FieldViolation]
) -> bool:
    """Adds a violation for each member whose key is not live-enrolled for it (its signature is
    not even checked: it would prove nothing), or whose signature is missing or does not verify;
    True when some member's key was not enrolled."""
    signatures = {s.business_id: s.signature for s in bid.signatures}
    unenrolled = False
    for i, member in enumerate(bid.members[:MAX_MEMBERS]):
        if not bidder_keys.is_enrolled(enrolled, member.business_id, member.public_key):
            violations.append(bidder_keys.not_enrolled(f"bid.members[{i}].public_key", member.business_id))
            unenrolled = True
            continue
        signature = signatures.get(member.business_id)
        if signature is None:
            violations.append(
                FieldViolation("bid.signatures", f"member {member.business_id} has not signed the bid")
            )
            continue
        try:
            sealing.verify_bid_signature(bid.document, signature, member.public_key)
        except sealing.SealingError as error:
            violations.append(FieldViolation("bid.signatures", f"member {member.business_id}: {error}"))
    strangers = sorted(set(signatures) - {m.business_id for m in bid.members})
    if strangers:
        violations.append(FieldViolation("bid.signatures", f"signed by non-members {', '.join(strangers)}"))
    return unenrolled


def check_consortium_bid(  # noqa: PLR0912 - one check per rule
    bid: ConsortiumBid, alliance_name: str, enrolled: Collection[tuple[str, str]]
) -> ConsortiumBid:
    """Members valid (one lead, shares summing to 100 %), the document this alliance's proposal
    for exactly these members, and a verifying signature of every member on it, by a key
    live-enrolled for that member (`enrolled`: the live (business ID, fingerprint) pairs among
    the members' keys; a key a bid merely names proves nothing about who signed)."""
    violations: list[FieldViolation] = []
    if (violation := check_text(bid.consortium, "bid.consortium", TITLE_MAX_LENGTH)) is not None:
        violations.append(violation)
    if not 1 <= len(bid.members) <= MAX_MEMBERS:
        violations.append(FieldViolation("bid.members", f"must list 1 to {MAX_MEMBERS} members"))
    ids: list[str] = []
    for i, member in enumerate(bid.members[:MAX_MEMBERS]):
        try:
            ids.append(validate_business_id(member.business_id, f"bid.members[{i}].business_id"))
        except InvalidArgument as error:
            violations.extend(error.violations)
        if (violation := check_text(member.role, f"bid.members[{i}].role", TITLE_MAX_LENGTH)) is not None:
            violations.append(violation)
        if not member.share.is_finite() or member.share <= 0:
            violations.append(FieldViolation(f"bid.members[{i}].share", "must be more than zero"))
    if len(set(ids)) != len(ids):
        violations.append(FieldViolation("bid.members", "a member is listed twice"))
    if sum(1 for m in bid.members if m.lead) != 1:
        violations.append(FieldViolation("bid.members", "exactly one member must lead"))
    total = sum((m.share for m in bid.members if m.share.is_finite()), Decimal(0))
    if total != HUNDRED:
        violations.append(FieldViolation("bid.members", f"members' shares must sum to 100 %, not {total} %"))
    if len(bid.document) > MAX_BID_BYTES:
        violations.append(FieldViolation("bid.document", f"must be at most {MAX_BID_BYTES} bytes"))
    proposal = bid.proposal
    if proposal.alliance != alliance_name:
        violations.append(FieldViolation("bid.document", f"is a proposal for {proposal.alliance!r}"))
    if sorted(proposal.members) != sorted(m.business_id for m in bid.members):
        violations.append(FieldViolation("bid.document", "does not name exactly the consortium's members"))
    if (
        violation := check_text(proposal.qualitative, "bid.document.qualitative", TEXT_MAX_LENGTH)
    ) is not None:
        violations.append(violation)
    if not 0 <= proposal.fee_percentage <= HUNDRED:
        violations.append(FieldViolation("bid.document.fee_percentage", "must be between 0 and 100"))
    if not is_cents(proposal.cost_estimate) or proposal.cost_estimate <= 0:
        violations.append(FieldViolation("bid.document.cost_estimate", "must be more than zero, in cents"))
    if _check_signatures(bid, enrolled, violations):
        raise InvalidArgument(
            "the consortium bid is refused: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations,
            reason=bidder_keys.NOT_ENROLLED,
        )
    raise_if_any(violations, "the consortium bid is refused")
    return bid


# -- the agreement -----------------------------------------------------------------------------------


class Stage(StrEnum):
    """Where an alliance is: the selection stages, then the agreement's phases."""

    QUALITATIVE = "QUALITATIVE"
    """Qualitative tenders are received until the deadline."""
    SHORTLIST = "SHORTLIST"
    WORKSHOP = "WORKSHOP"
    """Workshop and interview scores recorded; price components are compared at selection."""
    DEVELOPMENT = "DEVELOPMENT"
    """Selected: the parties fix the target cost and the KPIs together."""
    IMPLEMENTATION = "IMPLEMENTATION"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class StageRecord:
    stage: Stage
    reasons: str
    bids: tuple[str, ...]
    decided_at: datetime


@dataclass(frozen=True)
class Kpi:
    """A key performance indicator of a key result area, with its target and weight (percent of
    the incentive pool)."""

    code: str
    result_area: str
    description: str
    target: Decimal
    weight: Decimal
    higher_is_better: bool = True

    def met(self, value: Decimal) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target


@dataclass(frozen=True)
class Period:
    """A contract period of the implementation phase with its own target cost."""

    period: str
    start: date
    end: date
    target_cost: Decimal
    incentive_pool: Decimal


@dataclass(frozen=True)
class CostEntry:
    entry: int
    period: str
    member: str
    amount: Decimal
    description: str
    recorded_at: datetime


class PartyRole(StrEnum):
    BUYER = "BUYER"
    PROVIDER = "PROVIDER"


@dataclass(frozen=True)
class Statement:
    """One party's account of a closed period.

    Buyer: `costs`, `fee`, `incentive` are its cost share of the period's actual costs, fee and
    incentive earned; `pain_gain` its part of the buyers' part of the difference (positive: a
    saving it keeps); `net` = its share of (target cost + fee + incentive) - `pain_gain`, to pay.
    Provider member: `costs` its own recorded costs; `fee`, `incentive`, `pain_gain` its share of
    the consortium's; `net` = costs + fee + incentive + pain_gain, to receive. The buyers' nets
    and the members' nets sum to the same amount.
    """

    party: str
    role: PartyRole
    share: Decimal
    costs: Decimal
    fee: Decimal
    incentive: Decimal
    pain_gain: Decimal
    net: Decimal


@dataclass(frozen=True)
class PeriodClosing:
    period: str
    target_cost: Decimal
    actual_cost: Decimal
    fee: Decimal
    incentive: Decimal
    kpis_met: tuple[str, ...]
    difference: Decimal
    providers_part: Decimal
    buyers_part: Decimal
    statements: tuple[Statement, ...]
    closed_at: datetime


class DecisionKind(StrEnum):
    FIX_TARGETS = "FIX_TARGETS"
    """Development phase: goals, KPIs and the contract periods with their target costs."""
    START_IMPLEMENTATION = "START_IMPLEMENTATION"
    ADMIT_BUYER = "ADMIT_BUYER"
    """An amendment: a new buyer joins and the cost shares are set anew."""
    SET_PERIOD_TARGET = "SET_PERIOD_TARGET"
    """A new target cost for a period not yet closed."""


@dataclass(frozen=True)
class Decision:
    """A leadership-group (johtoryhmä) decision, with the parties that approved it."""

    kind: DecisionKind
    approvals: tuple[str, ...]
    """Organisations (buyers) and business IDs (members); every party must be among them."""
    reasons: str
    goals: tuple[str, ...] = ()
    kpis: tuple[Kpi, ...] = ()
    periods: tuple[Period, ...] = ()
    buyers: tuple[JointBuyer, ...] = ()
    decision: int = 0
    decided_at: datetime | None = None


def _check_periods(periods: Sequence[Period], path: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not 1 <= len(periods) <= MAX_PERIODS:
        return [FieldViolation(path, f"must list 1 to {MAX_PERIODS} contract periods")]
    seen: set[str] = set()
    previous_end: date | None = None
    for i, period in enumerate(periods):
        try:
            validate_resource_id(period.period, f"{path}[{i}].period")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if period.period in seen:
            violations.append(FieldViolation(f"{path}[{i}].period", "is listed twice"))
        seen.add(period.period)
        if period.end < period.start:
            violations.append(FieldViolation(f"{path}[{i}].end", "must not be before the start"))
        if previous_end is not None and period.start <= previous_end:
            violations.append(FieldViolation(f"{path}[{i}].start", "must be after the previous period"))
        previous_end = period.end
        if not is_cents(period.target_cost) or period.target_cost <= 0:
            violations.append(FieldViolation(f"{path}[{i}].target_cost", "must be more than zero, in cents"))
        if not is_cents(period.incentive_pool) or period.incentive_pool < 0:
            violations.append(FieldViolation(f"{path}[{i}].incentive_pool", "must not be negative, in cents"))
    return violations


def _check_kpis(kpis: Sequence[Kpi], path: str) -> list[FieldViolation]:
    if not 1 <= len(kpis) <= MAX_KPIS:
        return [FieldViolation(path, f"must list 1 to {MAX_KPIS} KPIs")]
    violations: list[FieldViolation] = []
    codes: set[str] = set()
    for i, kpi in enumerate(kpis):
        for name in ("code", "result_area", "description"):
            if (
                violation := check_text(getattr(kpi, name), f"{path}[{i}].{name}", TITLE_MAX_LENGTH)
            ) is not None:
                violations.append(violation)
        if kpi.code in codes:
            violations.append(FieldViolation(f"{path}[{i}].code", "is listed twice"))
        codes.add(kpi.code)
        if not kpi.target.is_finite():
            violations.append(FieldViolation(f"{path}[{i}].target", "must be a number"))
        if not kpi.weight.is_finite() or kpi.weight < 0:
            violations.append(FieldViolation(f"{path}[{i}].weight", "must not be negative"))
    if sum((k.weight for k in kpis if k.weight.is_finite()), Decimal(0)) != HUNDRED:
        violations.append(FieldViolation(path, "KPI weights must sum to 100"))
    return violations


@dataclass
class Alliance(Aggregate):
    """A joint procurement of an alliance and, from the selection on, its agreement
    (allianssisopimus): buyers and the selected consortium are its parties."""

    id: str
    region: str
    spec: AllianceSpec
    stage: Stage
    created_at: datetime
    updated_at: datetime
    bids: tuple[ConsortiumBid, ...] = ()
    stages: tuple[StageRecord, ...] = ()
    selected: str = ""
    """The selected bid's id."""
    buyers: tuple[JointBuyer, ...] = ()
    """The agreement's buyers now (amendments change them); the spec keeps the tendered ones."""
    goals: tuple[str, ...] = ()
    kpis: tuple[Kpi, ...] = ()
    periods: tuple[Period, ...] = ()
    decisions: tuple[Decision, ...] = ()
    amendment: int = 0
    ledger: tuple[CostEntry, ...] = ()
    closings: tuple[PeriodClosing, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return ALLIANCE.format(region=self.region, alliance=self.id)

    def bid_name(self, bid_id: str) -> str:
        return ALLIANCE_BID.format(region=self.region, alliance=self.id, bid=bid_id)

    @classmethod
    def tender(cls, alliance_id: str, region: str, spec: AllianceSpec, now: datetime) -> Alliance:
        alliance = cls(alliance_id, region, spec, Stage.QUALITATIVE, now, now, buyers=spec.buyers)
        alliance.record(
            AllianceTendered(
                alliance.name,
                region,
                spec.title,
                tuple(b.organisation for b in spec.buyers),
                spec.bid_deadline,
                now,
            )
        )
        return alliance

    def _require(self, stages: Sequence[Stage], action: str) -> None:
        if self.stage not in stages:
            raise FailedPrecondition(
                f"{self.name} is at {self.stage}: {action} needs {' or '.join(stages)}",
                reason="ALLIANCE_STAGE",
            )

    def bid(self, bid_id: str) -> ConsortiumBid | None:
        return next((b for b in self.bids if b.bid == bid_id), None)

    @property
    def winner(self) -> ConsortiumBid | None:
        return self.bid(self.selected) if self.selected else None

    # selection

    def receive(self, bid: ConsortiumBid, now: datetime, enrolled: Collection[tuple[str, str]]) -> None:
        """A consortium's bid; replaces an earlier bid of the same lead member. `enrolled`: the
        live-enrolled (business ID, fingerprint) pairs among the members' keys."""
        self._require([Stage.QUALITATIVE], "a bid")
        if now >= self.spec.bid_deadline:
            raise FailedPrecondition(
                f"the bid deadline of {self.name} passed at {self.spec.bid_deadline.isoformat()}",
                reason="DEADLINE_PASSED",
            )
        check_consortium_bid(bid, self.name, enrolled)
        self.bids = (*(b for b in self.bids if b.lead.business_id != bid.lead.business_id), bid)
        self.updated_at = now
        self.record(
            AllianceBidReceived(
                self.bid_name(bid.bid), self.name, self.region, sealing.digest(bid.document), now
            )
        )

    def _after_deadline(self, now: datetime) -> None:
        if now < self.spec.bid_deadline:
            raise FailedPrecondition(
                f"bids to {self.name} are received until {self.spec.bid_deadline.isoformat()}",
                reason="DEADLINE_NOT_PASSED",
            )

    def _stage(self, stage: Stage, reasons: str, bids: Sequence[str], now: datetime) -> None:
        if (violation := check_text(reasons, "reasons", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("each stage needs its reasons", [violation])
        self.stage = stage
        self.stages = (*self.stages, StageRecord(stage, reasons.strip(), tuple(bids), now))
        self.updated_at = now
        self.record(
            AllianceStageDecided(
                self.name, self.region, str(stage), tuple(self.bid_name(b) for b in bids), now
            )
        )

    def shortlist(self, bid_ids: Sequence[str], reasons: str, now: datetime) -> None:
        self._require([Stage.QUALITATIVE], "a shortlist")
        self._after_deadline(now)
        unknown = [b for b in bid_ids if self.bid(b) is None]
        violations = [FieldViolation("bids", f"{self.name} has no bid {b}") for b in unknown]
        if not bid_ids:
            violations.append(FieldViolation("bids", "the shortlist must name at least one bid"))
        raise_if_any(violations, "the shortlist is invalid")
        self.bids = tuple(b for b in self.bids if b.bid in bid_ids)
        self._stage(Stage.SHORTLIST, reasons, [b.bid for b in self.bids], now)

    def score_workshops(self, scores: Mapping[str, Decimal], reasons: str, now: datetime) -> None:
        """Workshop and interview scores, 0..100, for every shortlisted bid."""
        self._require([Stage.SHORTLIST], "workshop scores")
        violations = [
            FieldViolation(f"scores[{b.bid}]", "needs a score from 0 to 100")
            for b in self.bids
            if b.bid not in scores or not 0 <= scores[b.bid] <= HUNDRED
        ]
        violations += [
            FieldViolation(f"scores[{b}]", "is not a shortlisted bid") for b in scores if self.bid(b) is None
        ]
        raise_if_any(violations, "the workshop scores are invalid")
        self.bids = tuple(replace(b, workshop_score=scores[b.bid]) for b in self.bids)
        self._stage(Stage.WORKSHOP, reasons, [b.bid for b in self.bids], now)

    def select(self, reasons: str, now: datetime) -> ConsortiumBid:
        """Compares price components and selects the best total: quality weight x workshop
        score / 100 + price weight x lowest price / price, each to hundredths; ties to the
        higher workshop score, then the earlier bid."""
        self._require([Stage.WORKSHOP], "the selection")
        price_weight = HUNDRED - self.spec.quality_weight
        lowest = min(b.price() for b in self.bids)
        scored = []
        for b in self.bids:
            quality = cents(self.spec.quality_weight * (b.workshop_score or Decimal(0)) / HUNDRED)
            scored.append(replace(b, total=quality + cents(price_weight * lowest / b.price())))
        scored.sort(key=lambda b: (-(b.total or 0), -(b.workshop_score or 0), b.received_at, b.bid))
        winner = scored[0]
        self.bids = tuple(next(s for s in scored if s.bid == b.bid) for b in self.bids)
        self.selected = winner.bid
        self._stage(Stage.DEVELOPMENT, reasons, [winner.bid], now)
        return winner

    # the agreement

    def parties(self) -> tuple[str, ...]:
        """Every party of the agreement: its buyers, then the selected consortium's members."""
        winner = self.winner
        members = tuple(m.business_id for m in winner.members) if winner else ()
        return (*(b.organisation for b in self.buyers), *members)

    def decide(self, decision: Decision, now: datetime) -> Decision:
        """A leadership-group decision: unanimous (every party approves) or refused."""
        self._require([Stage.DEVELOPMENT, Stage.IMPLEMENTATION], "a leadership-group decision")
        parties = self.parties()
        missing = [p for p in parties if p not in decision.approvals]
        strangers = [a for a in decision.approvals if a not in parties]
        violations = [
            FieldViolation("decision.approvals", f"{p} has not approved: decisions are unanimous")
            for p in missing
        ]
        violations += [FieldViolation("decision.approvals", f"{a} is not a party") for a in strangers]
        if (violation := check_text(decision.reasons, "decision.reasons", TEXT_MAX_LENGTH)) is not None:
            violations.append(violation)
        violations += self._check_decision(decision)
        if missing:
            raise FailedPrecondition(
                "the leadership group decides unanimously: " + "; ".join(v.description for v in violations),
                violations,
                reason="NOT_UNANIMOUS",
            )
        raise_if_any(violations, "the decision is refused")
        if decision.kind == DecisionKind.FIX_TARGETS:
            self.goals, self.kpis, self.periods = decision.goals, decision.kpis, decision.periods
        elif decision.kind == DecisionKind.START_IMPLEMENTATION:
            self.stage = Stage.IMPLEMENTATION
        elif decision.kind == DecisionKind.ADMIT_BUYER:
            self.buyers = decision.buyers
            self.amendment += 1
        else:
            replaced = {p.period: p for p in decision.periods}
            self.periods = tuple(replaced.get(p.period, p) for p in self.periods)
        made = replace(decision, decision=len(self.decisions) + 1, decided_at=now)
        self.decisions = (*self.decisions, made)
        self.updated_at = now
        self.record(
            AllianceDecisionMade(self.name, self.region, made.decision, str(made.kind), self.amendment, now)
        )
        return made

    def _check_decision(self, decision: Decision) -> list[FieldViolation]:
        if decision.kind == DecisionKind.FIX_TARGETS:
            if self.stage != Stage.DEVELOPMENT:
                return [FieldViolation("decision.kind", "targets are fixed in the development phase")]
            violations = _check_periods(decision.periods, "decision.periods")
            violations += _check_kpis(decision.kpis, "decision.kpis")
            if not decision.goals or any(check_text(g, "goal", TEXT_MAX_LENGTH) for g in decision.goals):
                violations.append(FieldViolation("decision.goals", "must state the alliance's goals"))
            return violations
        if decision.kind == DecisionKind.START_IMPLEMENTATION:
            if self.stage != Stage.DEVELOPMENT or not self.periods:
                return [FieldViolation("decision.kind", "implementation starts after targets are fixed")]
            return []
        if decision.kind == DecisionKind.ADMIT_BUYER:
            violations = check_buyers(decision.buyers, self.region, "decision.buyers")
            current = {b.organisation for b in self.buyers}
            if not current <= {b.organisation for b in decision.buyers}:
                violations.append(FieldViolation("decision.buyers", "an amendment cannot drop a buyer"))
            if len(decision.buyers) <= len(self.buyers):
                violations.append(FieldViolation("decision.buyers", "must add a buyer"))
            return violations
        closed = {c.period for c in self.closings}
        known = {p.period for p in self.periods}
        violations = _check_periods(decision.periods, "decision.periods") if decision.periods else []
        for i, period in enumerate(decision.periods):
            if period.period not in known:
                violations.append(
                    FieldViolation(f"decision.periods[{i}]", "is not a period of the agreement")
                )
            if period.period in closed:
                violations.append(FieldViolation(f"decision.periods[{i}]", "is closed already"))
        return violations

    def period(self, period_id: str) -> Period:
        found = next((p for p in self.periods if p.period == period_id), None)
        if found is None:
            raise InvalidArgument(
                f"{self.name} has no period {period_id}",
                [FieldViolation("period", f"no period {period_id!r} in the agreement")],
            )
        return found

    def _open_period(self, period_id: str) -> Period:
        self._require([Stage.IMPLEMENTATION], "the cost ledger")
        period = self.period(period_id)
        if any(c.period == period_id for c in self.closings):
            raise FailedPrecondition(
                f"period {period_id} of {self.name} is closed already", reason="PERIOD_CLOSED"
            )
        return period

    def record_cost(
        self, period_id: str, member: str, amount: Decimal, description: str, now: datetime
    ) -> CostEntry:
        """A reimbursable actual cost of a member in an open period."""
        self._open_period(period_id)
        winner = self.winner
        violations: list[FieldViolation] = []
        if winner is None or member not in {m.business_id for m in winner.members}:
            violations.append(FieldViolation("cost.member", f"{member} is not a member of the alliance"))
        if not is_cents(amount) or amount <= 0:
            violations.append(FieldViolation("cost.amount", "must be more than zero, in cents"))
        if (violation := check_text(description, "cost.description", TEXT_MAX_LENGTH)) is not None:
            violations.append(violation)
        raise_if_any(violations, "the cost is refused")
        entry = CostEntry(len(self.ledger) + 1, period_id, member, amount, description.strip(), now)
        self.ledger = (*self.ledger, entry)
        self.updated_at = now
        self.record(AllianceCostRecorded(self.name, self.region, period_id, entry.entry, member, amount, now))
        return entry

    def close_period(
        self, period_id: str, kpi_results: Mapping[str, Decimal], now: datetime
    ) -> PeriodClosing:
        period = self._open_period(period_id)
        missing = [k.code for k in self.kpis if k.code not in kpi_results]
        raise_if_any(
            [FieldViolation("kpi_results", f"needs a result for KPI {code}") for code in missing]
            + [
                FieldViolation("kpi_results", f"{code} is not a KPI of the agreement")
                for code in kpi_results
                if code not in {k.code for k in self.kpis}
            ],
            "the period cannot be closed",
        )
        winner = self.winner
        assert winner is not None
        closing = close(
            period,
            [e for e in self.ledger if e.period == period_id],
            buyers=self.buyers,
            members=winner.members,
            fee_percentage=winner.proposal.fee_percentage,
            provider_ratio=self.spec.provider_ratio,
            kpis=self.kpis,
            kpi_results=kpi_results,
            now=now,
        )
        self.closings = (*self.closings, closing)
        self.updated_at = now
        self.record(
            AlliancePeriodClosed(
                self.name,
                self.region,
                period_id,
                closing.target_cost,
                closing.actual_cost,
                closing.fee,
                closing.incentive,
                closing.providers_part,
                closing.buyers_part,
                now,
            )
        )
        return closing

    def closing(self, period_id: str) -> PeriodClosing | None:
        return next((c for c in self.closings if c.period == period_id), None)


def close(
    period: Period,
    entries: Sequence[CostEntry],
    *,
    buyers: Sequence[JointBuyer],
    members: Sequence[Member],
    fee_percentage: Decimal,
    provider_ratio: Decimal,
    kpis: Sequence[Kpi],
    kpi_results: Mapping[str, Decimal],
    now: datetime,
) -> PeriodClosing:
    """A period's commercial closing and every party's statement (module docstring: rounding)."""
    actual = sum((e.amount for e in entries), Decimal(0))
    fee = cents(period.target_cost * fee_percentage / HUNDRED)
    met = tuple(k.code for k in kpis if k.met(kpi_results[k.code]))
    met_weight = sum((k.weight for k in kpis if k.code in met), Decimal(0))
    incentive = cents(period.incentive_pool * met_weight / HUNDRED)
    split = share_difference(period.target_cost, actual, provider_ratio, fee)
    shares = [b.cost_share for b in buyers]
    buyer_statements = zip(
        buyers,
        allocate(actual, shares),
        allocate(fee, shares),
        allocate(incentive, shares),
        allocate(split.buyers, shares),
        allocate(period.target_cost + fee + incentive, shares),
        strict=True,
    )
    statements = [
        Statement(b.organisation, PartyRole.BUYER, b.cost_share, c, f, i, pg, due - pg)
        for b, c, f, i, pg, due in buyer_statements
    ]
    member_shares = [m.share for m in members]
    member_statements = zip(
        members,
        allocate(fee, member_shares),
        allocate(incentive, member_shares),
        allocate(split.providers, member_shares),
        strict=True,
    )
    for m, f, i, pg in member_statements:
        own = sum((e.amount for e in entries if e.member == m.business_id), Decimal(0))
        statements.append(
            Statement(m.business_id, PartyRole.PROVIDER, m.share, own, f, i, pg, own + f + i + pg)
        )
    return PeriodClosing(
        period.period,
        period.target_cost,
        actual,
        fee,
        incentive,
        met,
        split.difference,
        split.providers,
        split.buyers,
        tuple(statements),
        now,
    )

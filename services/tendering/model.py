"""Tendering's domain: calls for tenders (tarjouspyyntö) with lots and criteria, sealed bids,
opening, evaluation, award and standstill (odotusaika), framework agreements
(puitejärjestely) and their call-offs.

Shaped so the alliance issue adds rather than rewrites: a call has buyers (one lead, each
with a cost share; today one buyer holding 100 %), a bid has a bidder whose members are
listed (a consortium later; today one provider), and the kinds of call are an enum.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

from services.runtime.domain import (
    FINLAND,
    Aggregate,
    Event,
    ResourcePattern,
    check_text,
    finnish_date,
    raise_if_any,
    require_aware,
    validate_resource_id,
)
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

REGION = ResourcePattern("regions/{region}")
CALL = ResourcePattern("regions/{region}/calls/{call:key}")
BID = ResourcePattern("regions/{region}/calls/{call:key}/bids/{bid:key}")
CLARIFICATION = ResourcePattern("regions/{region}/calls/{call:key}/clarifications/{clarification:key}")
FRAMEWORK = ResourcePattern("regions/{region}/frameworks/{framework:key}")
CALL_OFF = ResourcePattern("regions/{region}/frameworks/{framework:key}/callOffs/{call_off:key}")

TITLE_MAX_LENGTH = 200
TEXT_MAX_LENGTH = 4000
MAX_LOTS = 50
MAX_CRITERIA = 30
MAX_DECLARATIONS = 50
MAX_COMMITTEE = 15
MAX_BID_BYTES = 64 * 1024
POINTS = Decimal("0.01")
"""Scores are kept to hundredths of a point, rounded half up."""
TOTAL_WEIGHT = Decimal(100)


# -- dated rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Procurement thresholds for social and other specific services ("light regime"), in euros."""

    valid_from: date
    eu_light_regime: Decimal
    national_other_services: Decimal
    national_social_and_health: Decimal


THRESHOLDS: tuple[Thresholds, ...] = (
    Thresholds(date(2016, 4, 18), Decimal(750_000), Decimal(300_000), Decimal(400_000)),
)
"""Newest last; a change in the law is a new row, never an edit."""


@dataclass(frozen=True)
class TimeRules:
    """Durations set by law; a change in the law is a new row from its date."""

    valid_from: date
    standstill_days: int
    framework_max_years: int


TIME_RULES: tuple[TimeRules, ...] = (TimeRules(date(2017, 1, 1), 14, 4),)


def rules_on(day: date) -> TimeRules:
    valid = [row for row in TIME_RULES if row.valid_from <= day]
    if not valid:
        raise ValueError(f"no time rules in force on {day}")
    return valid[-1]


def thresholds_on(day: date) -> Thresholds:
    valid = [row for row in THRESHOLDS if row.valid_from <= day]
    if not valid:
        raise ValueError(f"no thresholds in force on {day}")
    return valid[-1]


class Regime(StrEnum):
    """Which rules a call's estimated value puts it under."""

    EU = "EU"
    NATIONAL = "NATIONAL"
    BELOW_THRESHOLD = "BELOW_THRESHOLD"


def regime_for(total_value: Decimal, social_and_health: bool, day: date) -> Regime:
    thresholds = thresholds_on(day)
    national = (
        thresholds.national_social_and_health if social_and_health else thresholds.national_other_services
    )
    if total_value >= thresholds.eu_light_regime:
        return Regime.EU
    if total_value >= national:
        return Regime.NATIONAL
    return Regime.BELOW_THRESHOLD


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 - the algorithm's own name
    m = (a + 11 * h + 19 * l) // 433
    month = (h + l - 7 * m + 90) // 25
    return date(year, month, (h + l - 7 * m + 33 * month + 19) % 32)


def _saturday_between(first: date) -> date:
    return first + timedelta(days=(5 - first.weekday()) % 7)


def finnish_holidays(year: int) -> frozenset[date]:
    """Finland's public holidays and the eves when offices close (Midsummer Eve, Christmas Eve).

    Written as the rules of the Act on Church holidays and the Holidays Act (1969/1966),
    valid since 1992; a change is a new rule here. Checked against the `holidays` package
    in the tests.
    """
    easter = _easter(year)
    midsummer_day = _saturday_between(date(year, 6, 20))
    return frozenset(
        {
            date(year, 1, 1),
            date(year, 1, 6),
            easter - timedelta(days=2),
            easter,
            easter + timedelta(days=1),
            date(year, 5, 1),
            easter + timedelta(days=39),
            easter + timedelta(days=49),
            midsummer_day - timedelta(days=1),
            midsummer_day,
            _saturday_between(date(year, 10, 31)),
            date(year, 12, 6),
            date(year, 12, 24),
            date(year, 12, 25),
            date(year, 12, 26),
        }
    )


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and day not in finnish_holidays(day.year)


def standstill_end(served_on: date) -> date:
    """The last day of the standstill: 14 days after the decision is served; when that day is a
    Saturday, Sunday or holiday, the next working day (Act on the Calculation of Time Limits)."""
    end = served_on + timedelta(days=rules_on(served_on).standstill_days)
    while not is_working_day(end):
        end += timedelta(days=1)
    return end


def start_of_next_day(day: date) -> datetime:
    """Midnight in Finland after `day`: when a period ending on `day` has run out."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=FINLAND)


# -- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallDrafted(Event):
    call: str
    region: str
    title: str
    create_time: datetime


@dataclass(frozen=True)
class CallPublished(Event):
    call: str
    region: str
    service: str
    regime: str
    submission_deadline: datetime
    publish_time: datetime


@dataclass(frozen=True)
class CallAmended(Event):
    call: str
    region: str
    amendment: int
    invalidated_bids: int
    submission_deadline: datetime
    amend_time: datetime


@dataclass(frozen=True)
class CallEnded(Event):
    """A call was cancelled or found unsuccessful, with its reason."""

    call: str
    region: str
    state: str
    reason: str
    end_time: datetime


@dataclass(frozen=True)
class ClarificationAsked(Event):
    """A question arrived; who asked is neither stored nor told."""

    clarification: str
    call: str
    region: str
    ask_time: datetime


@dataclass(frozen=True)
class ClarificationAnswered(Event):
    """An answer published to all; the asker is never named."""

    clarification: str
    call: str
    region: str
    answer_time: datetime


@dataclass(frozen=True)
class BidReceived(Event):
    """A sealed bid arrived; who bid stays sealed until opening, like the bid itself."""

    bid: str
    call: str
    region: str
    lot: str
    ciphertext_sha256: str
    receive_time: datetime


@dataclass(frozen=True)
class BidWithdrawn(Event):
    bid: str
    call: str
    region: str
    withdraw_time: datetime


@dataclass(frozen=True)
class CallClosed(Event):
    call: str
    region: str
    bid_count: int
    close_time: datetime


@dataclass(frozen=True)
class OpeningShareSubmitted(Event):
    call: str
    region: str
    member: str
    submit_time: datetime


@dataclass(frozen=True)
class BidsOpened(Event):
    call: str
    region: str
    opened: int
    unopenable: int
    open_time: datetime


@dataclass(frozen=True)
class CallAwarded(Event):
    """The award decision was made, with its reasons; it is not yet served, so no standstill runs."""

    call: str
    region: str
    winners: tuple[str, ...]
    """Bid names awarded, ranked within each lot."""
    award_time: datetime


@dataclass(frozen=True)
class AwardDecisionServed(Event):
    """The award decision was served to every bidder; the standstill counts from that day. A
    decision that no bid wins is served too, with no standstill (`standstill_end` None)."""

    call: str
    region: str
    bidders: tuple[str, ...]
    """The business IDs served: every bidder whose bid was opened, ranked or not."""
    served_on: date
    standstill_end: date | None
    serve_time: datetime


@dataclass(frozen=True)
class AppealRecorded(Event):
    call: str
    region: str
    appeal: str
    record_time: datetime


@dataclass(frozen=True)
class AppealResolved(Event):
    call: str
    region: str
    appeal: str
    resolve_time: datetime


@dataclass(frozen=True)
class CallConcluded(Event):
    call: str
    region: str
    framework: str
    conclude_time: datetime


@dataclass(frozen=True)
class CallOffOffered(Event):
    call_off: str
    framework: str
    region: str
    business_id: str
    skipped: tuple[str, ...]
    offer_time: datetime


@dataclass(frozen=True)
class CallOffDecided(Event):
    call_off: str
    framework: str
    region: str
    state: str
    business_id: str
    decide_time: datetime


@dataclass(frozen=True)
class SupplierEligibilityChanged(Event):
    """Tendering learned from the registry that a provider is suspended or reinstated."""

    region: str
    service: str
    business_id: str
    eligible: bool
    change_time: datetime


EVENTS: tuple[type[Event], ...] = (
    CallDrafted,
    CallPublished,
    CallAmended,
    CallEnded,
    ClarificationAsked,
    ClarificationAnswered,
    BidReceived,
    BidWithdrawn,
    CallClosed,
    OpeningShareSubmitted,
    BidsOpened,
    CallAwarded,
    AwardDecisionServed,
    AppealRecorded,
    AppealResolved,
    CallConcluded,
    CallOffOffered,
    CallOffDecided,
    SupplierEligibilityChanged,
)


# -- the call for tenders ---------------------------------------------------------------------------


class CallKind(StrEnum):
    FRAMEWORK = "FRAMEWORK"
    CONTRACT = "CONTRACT"


class CallOffMethod(StrEnum):
    RANKING = "RANKING"
    """Offer to the first-ranked eligible supplier; on decline or silence, the next."""
    MINI_COMPETITION = "MINI_COMPETITION"


class CriterionKind(StrEnum):
    PRICE = "PRICE"
    QUALITY = "QUALITY"


class DeclarationPart(StrEnum):
    """Where the item sits in the European Single Procurement Document."""

    EXCLUSION = "EXCLUSION"
    """Part III: the bidder declares that the ground does not apply."""
    SELECTION = "SELECTION"
    """Part IV: the bidder declares that it meets the criterion."""


class CallState(StrEnum):
    DRAFT = "DRAFT"
    PUBLISHED = "PUBLISHED"
    AMENDED = "AMENDED"
    CLOSED = "CLOSED"
    EVALUATED = "EVALUATED"
    AWARDED = "AWARDED"
    STANDSTILL = "STANDSTILL"
    CONCLUDED = "CONCLUDED"
    CANCELLED = "CANCELLED"
    UNSUCCESSFUL = "UNSUCCESSFUL"


OPEN_FOR_BIDS = (CallState.PUBLISHED, CallState.AMENDED)
ENDED = (CallState.CONCLUDED, CallState.CANCELLED, CallState.UNSUCCESSFUL)
AWARD_DECIDED = (CallState.AWARDED, CallState.STANDSTILL)
"""An award decision stands: appeals against it are recorded and resolved."""


@dataclass(frozen=True)
class Lot:
    lot: str
    title: str
    cpv_codes: tuple[str, ...]
    estimated_value: Decimal
    max_suppliers: int = 1


@dataclass(frozen=True)
class Criterion:
    """An award criterion: price (scored relative to the lowest price) or quality (by scale)."""

    code: str
    kind: CriterionKind
    weight: Decimal
    """Points out of 100 across all criteria."""
    scale_max: int = 0
    """Quality: the top of the scale 0..scale_max a bid's answer is scored on."""
    description: str = ""


@dataclass(frozen=True)
class Declaration:
    code: str
    part: DeclarationPart
    description: str


@dataclass(frozen=True)
class Buyer:
    organisation: str
    cost_share: Decimal = Decimal(100)
    lead: bool = True


@dataclass(frozen=True)
class CommitteeMember:
    member: str
    """The member's token subject: only they may submit their share."""
    public_key: bytes
    """X25519: their share is sealed to it."""


@dataclass(frozen=True)
class FrameworkTerms:
    duration_months: int = 0
    justification: str = ""
    call_off_method: CallOffMethod = CallOffMethod.RANKING
    offer_hours: int = 72
    """How long a ranked supplier has to accept a call-off before it goes to the next."""


@dataclass(frozen=True)
class CallSpec:
    """What an organiser drafts and may amend until the deadline."""

    title: str
    service: str
    kind: CallKind
    lots: tuple[Lot, ...]
    criteria: tuple[Criterion, ...]
    declarations: tuple[Declaration, ...]
    questions_deadline: datetime
    submission_deadline: datetime
    framework: FrameworkTerms
    committee: tuple[CommitteeMember, ...]
    opening_threshold: int
    social_and_health: bool = False
    description: str = ""
    invited: tuple[str, ...] = ()
    """Business IDs that may bid; empty: anyone. A mini-competition invites its framework's
    eligible suppliers of the lot."""
    parent_framework: str = ""
    """For a mini-competition: the framework id it calls off from."""


@dataclass(frozen=True)
class Clarification:
    clarification: str
    question: str
    answer: str = ""
    asked_at: datetime | None = None
    answered_at: datetime | None = None


@dataclass(frozen=True)
class Score:
    """One bid's place in its lot after evaluation."""

    bid: str
    lot: str
    bidder: str
    price: Decimal
    price_points: Decimal
    quality_points: Decimal
    total: Decimal
    rank: int
    """1 = best; 0 = not ranked (excluded)."""
    abnormally_low: bool
    excluded_reason: str = ""
    received_at: datetime | None = None


@dataclass(frozen=True)
class Appeal:
    appeal: str
    kind: str
    """RECTIFICATION (oikaisuvaatimus) or MARKET_COURT."""
    resolved: bool = False


@dataclass
class Call(Aggregate):
    id: str
    region: str
    spec: CallSpec
    state: CallState
    created_at: datetime
    updated_at: datetime
    buyers: tuple[Buyer, ...] = ()
    amendment: int = 0
    amended_at: tuple[datetime, ...] = ()
    published_at: datetime | None = None
    opening_public_key: bytes = b""
    wrapped_private_key: bytes = b""
    sealed_shares: tuple[bytes, ...] = ()
    share_commitments: tuple[str, ...] = ()
    clarifications: tuple[Clarification, ...] = ()
    scores: tuple[Score, ...] = ()
    award_reasons: str = ""
    awarded_at: datetime | None = None
    served_at: datetime | None = None
    """When the award decision was served to every bidder: the standstill counts from that day."""
    standstill_end: date | None = None
    appeals: tuple[Appeal, ...] = ()
    end_reason: str = ""

    @property
    def name(self) -> str:
        return CALL.format(region=self.region, call=self.id)

    def lot(self, lot: str) -> Lot | None:
        return next((candidate for candidate in self.spec.lots if candidate.lot == lot), None)

    @property
    def regime(self) -> Regime:
        total = sum((lot.estimated_value for lot in self.spec.lots), Decimal(0))
        return regime_for(total, self.spec.social_and_health, finnish_date(self.created_at))

    def _require(self, states: Sequence[CallState], action: str) -> None:
        if self.state not in states:
            raise FailedPrecondition(
                f"{self.name} is {self.state}: {action} needs it to be {' or '.join(states)}",
                reason="CALL_STATE",
            )

    def publish(
        self,
        keys_public: bytes,
        wrapped: bytes,
        sealed: Sequence[bytes],
        commitments: Sequence[str],
        now: datetime,
    ) -> None:
        self._require([CallState.DRAFT], "publishing")
        if self.spec.submission_deadline <= now:
            raise InvalidArgument(
                "the submission deadline has passed",
                [FieldViolation("call.submission_deadline", "must be in the future when published")],
            )
        self.state = CallState.PUBLISHED
        self.published_at = self.updated_at = now
        self.opening_public_key = keys_public
        self.wrapped_private_key = wrapped
        self.sealed_shares = tuple(sealed)
        self.share_commitments = tuple(commitments)
        self.record(
            CallPublished(
                self.name,
                self.region,
                self.spec.service,
                str(self.regime),
                self.spec.submission_deadline,
                now,
            )
        )

    def amend(self, spec: CallSpec, invalidated_bids: int, now: datetime) -> None:
        """Changes the published terms; bids made on the old terms no longer count (Prozorro's rule)."""
        self._require(OPEN_FOR_BIDS, "amending")
        if self.spec.committee != spec.committee or self.spec.opening_threshold != spec.opening_threshold:
            raise InvalidArgument(
                "the opening committee is fixed at publication",
                [FieldViolation("call.committee", "cannot change after publication")],
            )
        self.spec = spec
        self.state = CallState.AMENDED
        self.amendment += 1
        self.amended_at = (*self.amended_at, now)
        self.updated_at = now
        self.record(
            CallAmended(
                self.name, self.region, self.amendment, invalidated_bids, spec.submission_deadline, now
            )
        )

    def invites(self, bidder: str) -> None:
        if self.spec.invited and bidder not in self.spec.invited:
            raise FailedPrecondition(
                f"{self.name} is a mini-competition among its framework's suppliers; {bidder} is not one",
                reason="NOT_INVITED",
            )

    def accepts_bids(self, now: datetime) -> None:
        """Refuses a bid (or its withdrawal) after the deadline, or when the call takes none."""
        if self.state != CallState.DRAFT and now >= self.spec.submission_deadline:
            raise FailedPrecondition(
                f"the submission deadline of {self.name} passed at "
                f"{self.spec.submission_deadline.isoformat()}",
                reason="DEADLINE_PASSED",
            )
        if self.state not in OPEN_FOR_BIDS:
            raise FailedPrecondition(f"{self.name} takes no bids: it is {self.state}", reason="CALL_STATE")

    def close(self, bid_count: int, now: datetime) -> bool:
        """At the deadline (a timer): no more bids. False when it was not open (moved, cancelled)."""
        if self.state not in OPEN_FOR_BIDS or now < self.spec.submission_deadline:
            return False
        self.state = CallState.CLOSED
        self.updated_at = now
        self.record(CallClosed(self.name, self.region, bid_count, now))
        if bid_count == 0:
            self.end(CallState.UNSUCCESSFUL, "No bids were received by the deadline.", now)
        return True

    def evaluated(self, scores: Sequence[Score], opened: int, unopenable: int, now: datetime) -> None:
        self._require([CallState.CLOSED], "opening")
        self.scores = tuple(scores)
        self.state = CallState.EVALUATED
        self.updated_at = now
        self.record(BidsOpened(self.name, self.region, opened, unopenable, now))

    def award(self, reasons: str, now: datetime) -> tuple[str, ...]:
        """The award decision with its reasons: the call is AWARDED and waits to be served, since
        the standstill counts from the day the bidders are served, not from the decision."""
        self._require([CallState.EVALUATED], "an award")
        if (violation := check_text(reasons, "reasons", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("the award needs reasons", [violation])
        winners = self.winners()
        # The organiser's reasons stand either way: a decision that nobody wins must be reasoned too.
        self.award_reasons = reasons
        if not winners:
            self.end(CallState.UNSUCCESSFUL, "No bid passed the exclusion and selection checks.", now)
            return ()
        self.awarded_at = self.updated_at = now
        self.state = CallState.AWARDED
        names = tuple(BID.format(region=self.region, call=self.id, bid=s.bid) for s in winners)
        self.record(CallAwarded(self.name, self.region, names, now))
        return names

    def serve_decision(self, now: datetime) -> tuple[str, ...]:
        """Serves the award decision to every bidder whose bid was opened, winners and the rest
        alike, and starts the standstill: it ends 14 days after the day served (moved past a
        weekend or holiday). Returns the business IDs served.

        A decision that no bid wins ended the call UNSUCCESSFUL at once, but it is a reasoned
        decision the bidders may contest like any award, so it is served to them the same way,
        once; it starts no standstill, since nothing is to be concluded."""
        bidders = tuple(sorted({s.bidder for s in self.scores}))
        served_on = finnish_date(now)
        if self.decided_that_no_bid_wins:
            if self.served_at is not None:
                raise FailedPrecondition(
                    f"{self.name}: the decision that no bid wins was served already", reason="CALL_STATE"
                )
            self.served_at = self.updated_at = now
            self.record(AwardDecisionServed(self.name, self.region, bidders, served_on, None, now))
            return bidders
        self._require([CallState.AWARDED], "serving the award decision")
        end = standstill_end(served_on)
        self.served_at = self.updated_at = now
        self.standstill_end = end
        self.state = CallState.STANDSTILL
        self.record(AwardDecisionServed(self.name, self.region, bidders, served_on, end, now))
        return bidders

    @property
    def decided_that_no_bid_wins(self) -> bool:
        """Ended UNSUCCESSFUL by its award decision (reasons given, bids opened), not for want of
        bids or by a cancellation."""
        return self.state == CallState.UNSUCCESSFUL and bool(self.award_reasons) and bool(self.scores)

    def winners(self) -> list[Score]:
        """Per lot the best-ranked bids: up to the lot's supplier cap for a framework, one otherwise."""
        chosen: list[Score] = []
        for lot in self.spec.lots:
            cap = lot.max_suppliers if self.spec.kind == CallKind.FRAMEWORK else 1
            ranked = sorted((s for s in self.scores if s.lot == lot.lot and s.rank > 0), key=lambda s: s.rank)
            chosen.extend(ranked[:cap])
        return chosen

    def record_appeal(self, appeal: Appeal, now: datetime) -> None:
        """A rectification request or appeal against the award decision, once it is made and
        until the call concludes or ends; it holds conclusion until resolved. A decision that no
        bid wins can be contested too, though the call has ended: there is nothing to hold."""
        if not self.decided_that_no_bid_wins:
            self._require(AWARD_DECIDED, "an appeal against its award decision")
        self.appeals = (*self.appeals, appeal)
        self.updated_at = now
        self.record(AppealRecorded(self.name, self.region, appeal.appeal, now))

    def resolve_appeal(self, appeal_id: str, now: datetime) -> None:
        """Only while the decision it contests stands: a call cancelled, concluded or unsuccessful
        for want of bids has no decision left to rectify."""
        if not self.decided_that_no_bid_wins:
            self._require(AWARD_DECIDED, "resolving an appeal against its award decision")
        if not any(a.appeal == appeal_id and not a.resolved for a in self.appeals):
            raise FailedPrecondition(
                f"{self.name} has no pending appeal {appeal_id}", reason="NO_SUCH_APPEAL"
            )
        self.appeals = tuple(
            Appeal(a.appeal, a.kind, True) if a.appeal == appeal_id else a for a in self.appeals
        )
        self.updated_at = now
        self.record(AppealResolved(self.name, self.region, appeal_id, now))

    def may_conclude(self, now: datetime) -> bool:
        """Standstill over and no rectification request or appeal pending."""
        return (
            self.state == CallState.STANDSTILL
            and self.standstill_end is not None
            and now >= start_of_next_day(self.standstill_end)
            and all(a.resolved for a in self.appeals)
        )

    def conclude(self, framework: str, now: datetime) -> None:
        self.state = CallState.CONCLUDED
        self.updated_at = now
        self.record(CallConcluded(self.name, self.region, framework, now))

    def end(self, state: CallState, reason: str, now: datetime) -> None:
        if self.state in ENDED:
            raise FailedPrecondition(f"{self.name} has ended: it is {self.state}", reason="CALL_STATE")
        if (violation := check_text(reason, "reason", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("ending a call needs a reason", [violation])
        self.state = state
        self.end_reason = reason
        self.updated_at = now
        self.record(CallEnded(self.name, self.region, str(state), reason, now))

    def ask(self, clarification_id: str, question: str, now: datetime) -> Clarification:
        self._require(OPEN_FOR_BIDS, "a question")
        if now >= self.spec.questions_deadline:
            raise FailedPrecondition("the deadline for questions has passed", reason="DEADLINE_PASSED")
        if (violation := check_text(question, "question", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("the question is invalid", [violation])
        asked = Clarification(clarification_id, question.strip(), asked_at=now)
        self.clarifications = (*self.clarifications, asked)
        self.updated_at = now
        name = CLARIFICATION.format(region=self.region, call=self.id, clarification=clarification_id)
        self.record(ClarificationAsked(name, self.name, self.region, now))
        return asked

    def answer(self, clarification_id: str, answer: str, now: datetime) -> Clarification:
        self._require(OPEN_FOR_BIDS, "an answer")
        if (violation := check_text(answer, "answer", TEXT_MAX_LENGTH)) is not None:
            raise InvalidArgument("the answer is invalid", [violation])
        found = next((c for c in self.clarifications if c.clarification == clarification_id), None)
        if found is None:
            raise FailedPrecondition(
                f"{self.name} has no question {clarification_id}", reason="NO_SUCH_QUESTION"
            )
        answered = Clarification(found.clarification, found.question, answer.strip(), found.asked_at, now)
        self.clarifications = tuple(answered if c is found else c for c in self.clarifications)
        self.updated_at = now
        name = CLARIFICATION.format(region=self.region, call=self.id, clarification=clarification_id)
        self.record(ClarificationAnswered(name, self.name, self.region, now))
        return answered


def validate_spec(spec: CallSpec, now: datetime) -> CallSpec:  # noqa: PLR0912, PLR0915 - one check per rule
    """Every violation of a call's terms at once, with field paths; returns the spec normalised."""
    require_aware(now)
    violations: list[FieldViolation] = []

    def text(value: str, path: str, limit: int = TITLE_MAX_LENGTH) -> None:
        if (violation := check_text(value, path, limit)) is not None:
            violations.append(violation)

    text(spec.title, "call.title")
    try:
        validate_resource_id(spec.service, "call.service")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if not 1 <= len(spec.lots) <= MAX_LOTS:
        violations.append(FieldViolation("call.lots", f"must list 1 to {MAX_LOTS} lots"))
    seen: set[str] = set()
    for i, lot in enumerate(spec.lots[:MAX_LOTS]):
        path = f"call.lots[{i}]"
        try:
            validate_resource_id(lot.lot, f"{path}.lot")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if lot.lot in seen:
            violations.append(FieldViolation(f"{path}.lot", f"duplicates lot {lot.lot!r}"))
        seen.add(lot.lot)
        text(lot.title, f"{path}.title")
        if not lot.cpv_codes or any(not _is_cpv(code) for code in lot.cpv_codes):
            violations.append(FieldViolation(f"{path}.cpv_codes", "must list CPV codes such as 79600000-0"))
        if lot.estimated_value <= 0:
            violations.append(FieldViolation(f"{path}.estimated_value", "must be more than zero"))
        if not 1 <= lot.max_suppliers <= 100:
            violations.append(FieldViolation(f"{path}.max_suppliers", "must be between 1 and 100"))
    _check_criteria(spec.criteria, violations)
    codes: set[str] = set()
    for i, declaration in enumerate(spec.declarations[:MAX_DECLARATIONS]):
        text(declaration.code, f"call.declarations[{i}].code", 100)
        if declaration.code in codes:
            violations.append(FieldViolation(f"call.declarations[{i}].code", "is a duplicate"))
        codes.add(declaration.code)
        text(declaration.description, f"call.declarations[{i}].description", TEXT_MAX_LENGTH)
    if len(spec.declarations) > MAX_DECLARATIONS:
        violations.append(FieldViolation("call.declarations", f"must list at most {MAX_DECLARATIONS}"))
    if spec.submission_deadline <= now:
        violations.append(FieldViolation("call.submission_deadline", "must be in the future"))
    if not now < spec.questions_deadline <= spec.submission_deadline:
        violations.append(
            FieldViolation(
                "call.questions_deadline", "must be in the future and not after the submission deadline"
            )
        )
    if spec.kind == CallKind.FRAMEWORK:
        max_months = rules_on(finnish_date(now)).framework_max_years * 12
        if spec.framework.duration_months <= 0:
            violations.append(FieldViolation("call.framework.duration_months", "must be more than zero"))
        elif spec.framework.duration_months > max_months and not spec.framework.justification.strip():
            violations.append(
                FieldViolation(
                    "call.framework.justification",
                    f"a framework longer than {max_months} months must record its justification",
                )
            )
        if not 1 <= spec.framework.offer_hours <= 24 * 30:
            violations.append(FieldViolation("call.framework.offer_hours", "must be between 1 and 720"))
    if not 1 <= len(spec.committee) <= MAX_COMMITTEE:
        violations.append(FieldViolation("call.committee", f"must name 1 to {MAX_COMMITTEE} members"))
    elif not 1 <= spec.opening_threshold <= len(spec.committee):
        violations.append(
            FieldViolation("call.opening_threshold", "must be between 1 and the committee's size")
        )
    members: set[str] = set()
    for i, member in enumerate(spec.committee[:MAX_COMMITTEE]):
        text(member.member, f"call.committee[{i}].member", 200)
        if member.member in members:
            violations.append(FieldViolation(f"call.committee[{i}].member", "is named twice"))
        members.add(member.member)
        if len(member.public_key) != 32:
            violations.append(FieldViolation(f"call.committee[{i}].public_key", "must be a raw X25519 key"))
    raise_if_any(violations, "the call is invalid")
    return spec


def _is_cpv(code: str) -> bool:
    body, _, check = code.partition("-")
    return (
        len(body) == 8
        and body.isascii()
        and body.isdigit()
        and (check == "" or (len(check) == 1 and check.isdigit()))
    )


def _check_criteria(criteria: Sequence[Criterion], violations: list[FieldViolation]) -> None:
    if not 1 <= len(criteria) <= MAX_CRITERIA:
        violations.append(FieldViolation("call.criteria", f"must list 1 to {MAX_CRITERIA} criteria"))
        return
    codes: set[str] = set()
    for i, criterion in enumerate(criteria):
        path = f"call.criteria[{i}]"
        if (violation := check_text(criterion.code, f"{path}.code", 100)) is not None:
            violations.append(violation)
        if criterion.code in codes:
            violations.append(FieldViolation(f"{path}.code", "is a duplicate"))
        codes.add(criterion.code)
        if criterion.weight <= 0:
            violations.append(FieldViolation(f"{path}.weight", "must be more than zero"))
        if criterion.kind == CriterionKind.QUALITY and not 1 <= criterion.scale_max <= 100:
            violations.append(FieldViolation(f"{path}.scale_max", "a quality scale must top out at 1 to 100"))
    if sum(1 for c in criteria if c.kind == CriterionKind.PRICE) != 1:
        violations.append(FieldViolation("call.criteria", "must have exactly one price criterion"))
    if sum((c.weight for c in criteria), Decimal(0)) != TOTAL_WEIGHT:
        violations.append(FieldViolation("call.criteria", "weights must sum to 100"))


# -- bids -------------------------------------------------------------------------------------------


class BidState(StrEnum):
    SEALED = "SEALED"
    WITHDRAWN = "WITHDRAWN"
    REPLACED = "REPLACED"
    INVALIDATED = "INVALIDATED"
    """Made on terms since amended."""
    OPENED = "OPENED"
    UNOPENABLE = "UNOPENABLE"


@dataclass(frozen=True)
class BidContent:
    """A bid's plaintext, as the provider's client encodes it before sealing.

    UTF-8 JSON {"price": "<decimal euros>", "quality": {"<criterion>": <level>},
    "declarations": {"<code>": true|false}}; for exclusion grounds true means "the ground
    does not apply to us", for selection criteria "we meet it".
    """

    price: Decimal
    quality: dict[str, int] = field(default_factory=dict)
    declarations: dict[str, bool] = field(default_factory=dict)

    def encode(self) -> bytes:
        document = {"price": str(self.price), "quality": self.quality, "declarations": self.declarations}
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> BidContent:
        document = json.loads(data)
        quality = {str(k): int(v) for k, v in dict(document.get("quality", {})).items()}
        declarations = {str(k): bool(v) for k, v in dict(document.get("declarations", {})).items()}
        return cls(Decimal(str(document["price"])), quality, declarations)


@dataclass
class Bid(Aggregate):
    id: str
    call: str
    region: str
    lot: str
    bidder: str
    """The bidding provider's business ID (a consortium's lead member, with the alliance issue)."""
    public_key: bytes
    sealed: bytes
    signature: bytes
    ciphertext_sha256: str
    received_at: datetime
    amendment: int
    state: BidState = BidState.SEALED
    receipt_signature: bytes = b""
    plaintext_sha256: str = ""
    content: BidContent | None = None

    @property
    def name(self) -> str:
        return BID.format(region=self.region, call=self.call, bid=self.id)

    @property
    def live(self) -> bool:
        return self.state == BidState.SEALED

    def withdraw(self, now: datetime) -> None:
        """The bidder takes its bid back before the deadline. (A bid replaced by a newer one of
        the same bidder for the lot becomes REPLACED in storage, without an event of its own.)"""
        if not self.live:
            raise FailedPrecondition(f"{self.name} is {self.state}", reason="BID_STATE")
        self.state = BidState.WITHDRAWN
        self.record(
            BidWithdrawn(self.name, CALL.format(region=self.region, call=self.call), self.region, now)
        )


class SealedBid(NamedTuple):
    """A live bid as opening reads it: only what opening needs, no aggregate per bid (a call can
    have ten thousand)."""

    id: str
    lot: str
    bidder: str
    public_key: bytes
    sealed: bytes
    signature: bytes
    received_at: datetime


class Opening(NamedTuple):
    """What opening found in one bid: the plaintext's hash and the plaintext itself (the bid's
    JSON exactly as the provider sealed it, so the hash can be checked against it); an empty
    hash and no content when it did not verify, open or parse."""

    bid: str
    plaintext_sha256: str
    content_json: str | None


# -- evaluation -------------------------------------------------------------------------------------

ABNORMALLY_LOW_SHARE = Decimal("0.70")
"""A price below 70 % of the average of the lot's other admissible prices is flagged for an
explanation (directive 2014/24 art. 69); flagged bids stay ranked until the organiser decides."""


def _quantize(value: Decimal) -> Decimal:
    return value.quantize(POINTS, rounding=ROUND_HALF_UP)


def exclusion_reason(
    content: BidContent, declarations: Sequence[Declaration], criteria: Sequence[Criterion]
) -> str:
    """Why a bid cannot be ranked, or "" when it can."""
    for declaration in declarations:
        if not content.declarations.get(declaration.code, False):
            if declaration.part == DeclarationPart.EXCLUSION:
                return f"Exclusion ground {declaration.code} is not declared absent."
            return f"Selection criterion {declaration.code} is not declared met."
    if content.price <= 0:
        return "The price must be more than zero."
    for criterion in criteria:
        if criterion.kind == CriterionKind.QUALITY:
            level = content.quality.get(criterion.code)
            if level is None or not 0 <= level <= criterion.scale_max:
                return (
                    f"Quality criterion {criterion.code} has no answer on its scale 0..{criterion.scale_max}."
                )
    return ""


@dataclass(frozen=True)
class Candidate:
    """An opened bid as evaluation sees it."""

    bid: str
    lot: str
    bidder: str
    received_at: datetime
    content: BidContent | None
    """None when the bid could not be opened."""


def evaluate_lot(lot: str, candidates: Sequence[Candidate], call: CallSpec) -> list[Score]:
    """Scores and ranks one lot's bids, in exact decimal arithmetic.

    Price points = price weight x lowest admissible price / price. Quality points = sum of
    weight x level / scale_max. Each rounded half up to hundredths, the total is their sum.
    Tie rule: the higher total ranks first; then the higher quality points; then the lower
    price; then the earlier final submission (receipt time); then the bid id.
    """
    price_criterion = next(c for c in call.criteria if c.kind == CriterionKind.PRICE)
    quality = [c for c in call.criteria if c.kind == CriterionKind.QUALITY]
    admissible: list[tuple[Candidate, BidContent]] = []
    excluded: list[Score] = []
    for candidate in candidates:
        reason = (
            "The bid could not be opened with the call's key for its lot and bidder."
            if candidate.content is None
            else exclusion_reason(candidate.content, call.declarations, call.criteria)
        )
        if reason or candidate.content is None:
            price = candidate.content.price if candidate.content else Decimal(0)
            excluded.append(
                Score(
                    candidate.bid,
                    lot,
                    candidate.bidder,
                    price,
                    Decimal(0),
                    Decimal(0),
                    Decimal(0),
                    0,
                    False,
                    reason,
                    candidate.received_at,
                )
            )
        else:
            admissible.append((candidate, candidate.content))
    # (sort key, price, price points, quality points, total, abnormally low, candidate)
    scored: list[tuple[tuple[Any, ...], Decimal, Decimal, Decimal, Decimal, bool, Candidate]] = []
    if admissible:
        lowest = min(content.price for _, content in admissible)
        total = sum((content.price for _, content in admissible), Decimal(0))
        scales = [(c.code, c.weight, Decimal(c.scale_max)) for c in quality]
        others = len(admissible) - 1
        for candidate, content in admissible:
            price = content.price
            price_points = _quantize(price_criterion.weight * lowest / price)
            points = Decimal(0)
            for code, weight, scale_max in scales:
                points += weight * content.quality[code] / scale_max
            quality_points = _quantize(points)
            points_total = price_points + quality_points
            low = others > 0 and price < ABNORMALLY_LOW_SHARE * (total - price) / others
            key = (-points_total, -quality_points, price, candidate.received_at, candidate.bid)
            scored.append((key, price, price_points, quality_points, points_total, low, candidate))
    scored.sort(key=itemgetter(0))
    ranked = [
        Score(
            candidate.bid,
            lot,
            candidate.bidder,
            price,
            price_points,
            quality_points,
            points_total,
            rank,
            low,
            "",
            candidate.received_at,
        )
        for rank, (_, price, price_points, quality_points, points_total, low, candidate) in enumerate(
            scored, start=1
        )
    ]
    return ranked + sorted(excluded, key=lambda s: s.bid)


# -- frameworks and call-offs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Supplier:
    lot: str
    business_id: str
    rank: int


@dataclass
class Framework(Aggregate):
    """A framework agreement: the suppliers awarded per lot, with their rank."""

    id: str
    region: str
    call: str
    service: str
    suppliers: tuple[Supplier, ...]
    call_off_method: CallOffMethod
    offer_hours: int
    start: date
    end: date
    created_at: datetime

    @property
    def name(self) -> str:
        return FRAMEWORK.format(region=self.region, framework=self.id)

    def ranked(self, lot: str) -> list[Supplier]:
        return sorted((s for s in self.suppliers if s.lot == lot), key=lambda s: s.rank)


class CallOffState(StrEnum):
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    FAILED = "FAILED"
    """Every eligible supplier declined or let the offer lapse."""


@dataclass
class CallOff(Aggregate):
    """A call-off (hankinta puitejärjestelyn sisällä) by ranking order: offered to the first
    eligible supplier; on decline or silence, to the next."""

    id: str
    region: str
    framework: str
    lot: str
    description: str
    value: Decimal
    state: CallOffState
    offered_to: str
    tried: tuple[str, ...]
    skipped: tuple[str, ...]
    """Suppliers passed over because they were not eligible (suspended) when it was their turn."""
    offer_expires: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return CALL_OFF.format(region=self.region, framework=self.framework, call_off=self.id)

    @property
    def framework_name(self) -> str:
        return FRAMEWORK.format(region=self.region, framework=self.framework)

    def offer_next(self, framework: Framework, suspended: frozenset[str], now: datetime) -> None:
        """Offers to the best-ranked supplier not yet tried and eligible now; FAILED when none is left."""
        skipped = list(self.skipped)
        for supplier in framework.ranked(self.lot):
            if supplier.business_id in self.tried:
                continue
            if supplier.business_id in suspended:
                if supplier.business_id not in skipped:
                    skipped.append(supplier.business_id)
                continue
            self.offered_to = supplier.business_id
            self.tried = (*self.tried, supplier.business_id)
            self.skipped = tuple(skipped)
            self.offer_expires = now + timedelta(hours=framework.offer_hours)
            self.state = CallOffState.OFFERED
            self.updated_at = now
            self.record(
                CallOffOffered(
                    self.name, self.framework_name, self.region, supplier.business_id, self.skipped, now
                )
            )
            return
        self.skipped = tuple(skipped)
        self.offered_to = ""
        self.offer_expires = None
        self.state = CallOffState.FAILED
        self.updated_at = now
        self.record(CallOffDecided(self.name, self.framework_name, self.region, str(self.state), "", now))

    def accept(self, business_id: str, now: datetime) -> None:
        self._require_offered_to(business_id)
        self.state = CallOffState.ACCEPTED
        self.offer_expires = None
        self.updated_at = now
        self.record(
            CallOffDecided(self.name, self.framework_name, self.region, str(self.state), business_id, now)
        )

    def _require_offered_to(self, business_id: str) -> None:
        if self.state != CallOffState.OFFERED or self.offered_to != business_id:
            raise FailedPrecondition(f"{self.name} is not offered to {business_id}", reason="NOT_OFFERED")

"""Alliance and market-failure use cases: one handler per command or query, reached from gRPC
and, for a finding's lapse, from the scheduler's timer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.runtime import access
from services.runtime.auth import Role
from services.runtime.domain import Command, Query
from services.runtime.errors import NotFound, PermissionDenied
from services.tendering import alliance, alliance_ocds, market_failure, sealing
from services.tendering.handlers import OcdsPackages

if TYPE_CHECKING:
    from services.tendering.alliance_store import AllianceUnitOfWork

# -- commands and queries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateAlliance(Command):
    region: str
    spec: alliance.AllianceSpec


@dataclass(frozen=True)
class GetAlliance(Query):
    region: str
    alliance_id: str


@dataclass(frozen=True)
class SubmitConsortiumBid(Command):
    region: str
    alliance_id: str
    consortium: str
    members: tuple[alliance.Member, ...]
    document: bytes
    signatures: tuple[alliance.Signature, ...]


@dataclass(frozen=True)
class ListConsortiumBids(Query):
    region: str
    alliance_id: str


@dataclass(frozen=True)
class ShortlistBids(Command):
    region: str
    alliance_id: str
    bid_ids: tuple[str, ...]
    reasons: str


@dataclass(frozen=True)
class ScoreWorkshops(Command):
    region: str
    alliance_id: str
    scores: tuple[tuple[str, Decimal], ...]
    reasons: str


@dataclass(frozen=True)
class SelectConsortium(Command):
    region: str
    alliance_id: str
    reasons: str


@dataclass(frozen=True)
class DecideInLeadershipGroup(Command):
    region: str
    alliance_id: str
    decision: alliance.Decision


@dataclass(frozen=True)
class RecordCost(Command):
    region: str
    alliance_id: str
    period: str
    amount: Decimal
    description: str


@dataclass(frozen=True)
class ClosePeriod(Command):
    region: str
    alliance_id: str
    period: str
    kpi_results: tuple[tuple[str, Decimal], ...]


@dataclass(frozen=True)
class GetPeriodClosing(Query):
    region: str
    alliance_id: str
    period: str


@dataclass(frozen=True)
class ExportAllianceOcds(Query):
    region: str
    alliance_id: str


@dataclass(frozen=True)
class DeclareMarketFailure(Command):
    region: str
    spec: market_failure.FindingSpec


@dataclass(frozen=True)
class GetMarketFailure(Query):
    region: str
    finding_id: str


@dataclass(frozen=True)
class LiftMarketFailure(Command):
    region: str
    finding_id: str
    reason: str


@dataclass(frozen=True)
class ExpireMarketFailure(Command):
    """Fired by the timer at the end of a finding's validity."""

    region: str
    finding_id: str


@dataclass(frozen=True)
class CreateDirectAward(Command):
    region: str
    spec: market_failure.DirectAwardSpec


# -- alliances -----------------------------------------------------------------------------------------


def _admin(uow: AllianceUnitOfWork, region: str, action: str) -> None:
    access.require(uow.actor, any_of=[access.region_admin(region)], action=action)


async def _alliance(
    uow: AllianceUnitOfWork, region: str, alliance_id: str, *, lock: bool = False
) -> alliance.Alliance:
    found = await (uow.alliances.lock(alliance_id) if lock else uow.alliances.get(alliance_id))
    if found is None or found.region != region:
        name = alliance.ALLIANCE.format(region=region, alliance=alliance_id)
        raise NotFound(f"no alliance {name}", reason="ALLIANCE_NOT_FOUND")
    return found


def _require_party(uow: AllianceUnitOfWork, found: alliance.Alliance, action: str) -> None:
    """The organiser, a buyer's admin, a bidder's member; to anyone else it does not exist."""
    grants = [access.region_admin(found.region)]
    grants += [access.region_admin(b.organisation) for b in found.buyers]
    grants += [access.provider(m.business_id) for b in found.bids for m in b.members]
    actor = uow.actor
    if actor is None or not any(grant.admits(actor) for grant in grants):
        access.require(actor, any_of=grants[:1], action=action)


async def create_alliance(command: CreateAlliance, uow: AllianceUnitOfWork) -> alliance.Alliance:
    _admin(uow, command.region, "tendering an alliance")
    spec = alliance.validate_spec(command.spec, command.region, uow.now)
    created = alliance.Alliance.tender(uuid.uuid4().hex, command.region, spec, uow.now)
    uow.alliances.add(created)
    return created


async def get_alliance(query: GetAlliance, uow: AllianceUnitOfWork) -> alliance.Alliance:
    found = await _alliance(uow, query.region, query.alliance_id)
    _require_party(uow, found, "reading an alliance")
    return found


async def submit_consortium_bid(
    command: SubmitConsortiumBid, uow: AllianceUnitOfWork
) -> alliance.ConsortiumBid:
    """The lead member submits what every member signed; checked whole before anything is kept."""
    actor = uow.actor
    leads = [m.business_id for m in command.members if m.lead]
    # Without exactly one lead the bid is invalid (the model says so); a member may learn that.
    submitters = leads if len(leads) == 1 else [m.business_id for m in command.members]
    if actor is None or actor.role.value != "provider" or actor.organisation not in submitters:
        grants = [access.provider(b) for b in submitters]
        access.require(actor, any_of=grants, action="submitting a consortium bid")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    bid = alliance.ConsortiumBid(
        uuid.uuid4().hex,
        command.consortium,
        command.members,
        command.document,
        command.signatures,
        alliance.Proposal.decode(command.document),
        uow.now,
    )
    found.receive(bid, uow.now, await _enrolled(uow, command.members))
    return bid


async def _enrolled(
    uow: AllianceUnitOfWork, members: Sequence[alliance.Member]
) -> frozenset[tuple[str, str]]:
    """The (business ID, fingerprint) pairs of the members' keys that are live-enrolled for that
    very member: the model refuses a signature by any other key."""
    enrolled = set()
    for member in members[: alliance.MAX_MEMBERS]:
        fingerprint = sealing.key_fingerprint(member.public_key)
        if await uow.bidder_keys.live_owner(fingerprint) == member.business_id:
            enrolled.add((member.business_id, fingerprint))
    return frozenset(enrolled)


async def list_consortium_bids(
    query: ListConsortiumBids, uow: AllianceUnitOfWork
) -> list[alliance.ConsortiumBid]:
    """A provider sees the bids it is a member of; the buyers see every bid, but only after the
    deadline (no early look at a competitor's price)."""
    found = await _alliance(uow, query.region, query.alliance_id)
    actor = uow.actor
    if actor is not None and actor.role is Role.PROVIDER:
        return [b for b in found.bids if actor.organisation in {m.business_id for m in b.members}]
    buyers = [access.region_admin(found.region), *(access.region_admin(b.organisation) for b in found.buyers)]
    access.require(actor, any_of=buyers, action="reading an alliance's bids")
    if uow.now < found.spec.bid_deadline:
        raise PermissionDenied(
            f"the bids of {found.name} are read after the deadline", reason="BIDS_BEFORE_DEADLINE"
        )
    return list(found.bids)


async def shortlist_bids(command: ShortlistBids, uow: AllianceUnitOfWork) -> alliance.Alliance:
    _admin(uow, command.region, "shortlisting an alliance's bids")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    found.shortlist(command.bid_ids, command.reasons, uow.now)
    return found


async def score_workshops(command: ScoreWorkshops, uow: AllianceUnitOfWork) -> alliance.Alliance:
    _admin(uow, command.region, "scoring an alliance's workshops")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    found.score_workshops(dict(command.scores), command.reasons, uow.now)
    return found


async def select_consortium(command: SelectConsortium, uow: AllianceUnitOfWork) -> alliance.Alliance:
    _admin(uow, command.region, "selecting an alliance's consortium")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    found.select(command.reasons, uow.now)
    return found


async def decide_in_leadership_group(
    command: DecideInLeadershipGroup, uow: AllianceUnitOfWork
) -> alliance.Decision:
    """Recorded by the organiser with the approvals of every party; refused without unanimity."""
    _admin(uow, command.region, "recording a leadership-group decision")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    return found.decide(command.decision, uow.now)


async def record_cost(command: RecordCost, uow: AllianceUnitOfWork) -> alliance.CostEntry:
    """A member records its own reimbursable cost."""
    actor = uow.actor
    if actor is None or actor.role.value != "provider":
        access.require(actor, any_of=[], action="recording an alliance cost")
    assert actor is not None
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    winner = found.winner
    if winner is None or actor.organisation not in {m.business_id for m in winner.members}:
        raise PermissionDenied(
            f"only the members of {found.name}'s selected consortium record its costs", reason="NOT_A_MEMBER"
        )
    return found.record_cost(command.period, actor.organisation, command.amount, command.description, uow.now)


async def close_period(command: ClosePeriod, uow: AllianceUnitOfWork) -> alliance.PeriodClosing:
    _admin(uow, command.region, "closing an alliance's contract period")
    found = await _alliance(uow, command.region, command.alliance_id, lock=True)
    return found.close_period(command.period, dict(command.kpi_results), uow.now)


async def get_period_closing(query: GetPeriodClosing, uow: AllianceUnitOfWork) -> alliance.PeriodClosing:
    found = await _alliance(uow, query.region, query.alliance_id)
    _require_party(uow, found, "reading an alliance's statements")
    closing = found.closing(query.period)
    if closing is None:
        raise NotFound(f"period {query.period} of {found.name} is not closed", reason="PERIOD_NOT_CLOSED")
    return closing


async def export_alliance_ocds(query: ExportAllianceOcds, uow: AllianceUnitOfWork) -> OcdsPackages:
    found = await _alliance(uow, query.region, query.alliance_id)
    _require_party(uow, found, "exporting an alliance")
    releases, record = alliance_ocds.packages(found)
    return OcdsPackages(releases, record)


# -- market failure ------------------------------------------------------------------------------------


def _expiry_key(finding: market_failure.Finding) -> str:
    return f"tendering:market-failure:{finding.id}"


async def _finding(uow: AllianceUnitOfWork, region: str, finding_id: str) -> market_failure.Finding:
    found: market_failure.Finding | None = await uow.findings.get(finding_id)
    if found is None or found.region != region:
        name = market_failure.FINDING.format(region=region, finding=finding_id)
        raise NotFound(f"no market-failure finding {name}", reason="FINDING_NOT_FOUND")
    return found


async def declare_market_failure(
    command: DeclareMarketFailure, uow: AllianceUnitOfWork
) -> market_failure.Finding:
    """Records the finding and arms its lapse at the end of its validity."""
    _admin(uow, command.region, "declaring market failure")
    await uow.findings.serialize(command.region)
    spec = market_failure.validate_finding(command.spec, uow.now)
    finding = market_failure.Finding.declare(uuid.uuid4().hex, command.region, spec, uow.now)
    uow.findings.add(finding)
    uow.timers.set(_expiry_key(finding), spec.valid_until, ExpireMarketFailure(command.region, finding.id))
    return finding


async def get_market_failure(query: GetMarketFailure, uow: AllianceUnitOfWork) -> market_failure.Finding:
    return await _finding(uow, query.region, query.finding_id)


async def lift_market_failure(command: LiftMarketFailure, uow: AllianceUnitOfWork) -> market_failure.Finding:
    _admin(uow, command.region, "lifting a market-failure finding")
    await uow.findings.serialize(command.region)
    finding = await _finding(uow, command.region, command.finding_id)
    finding.lift(command.reason, uow.now)
    uow.timers.cancel(_expiry_key(finding))
    return finding


async def expire_market_failure(command: ExpireMarketFailure, uow: AllianceUnitOfWork) -> bool:
    await uow.findings.serialize(command.region)
    finding = await _finding(uow, command.region, command.finding_id)
    return finding.expire(uow.now)


async def create_direct_award(
    command: CreateDirectAward, uow: AllianceUnitOfWork
) -> market_failure.DirectAward:
    """Only under a finding valid now for the service and the municipality; records which."""
    _admin(uow, command.region, "awarding directly")
    await uow.findings.serialize(command.region)
    findings = await uow.findings.active(command.region, command.spec.service)
    award = market_failure.DirectAward.make(uuid.uuid4().hex, command.region, command.spec, findings, uow.now)
    uow.direct_awards.add(award)
    return award


HANDLERS: dict[type[Any], Any] = {
    CreateAlliance: create_alliance,
    GetAlliance: get_alliance,
    SubmitConsortiumBid: submit_consortium_bid,
    ListConsortiumBids: list_consortium_bids,
    ShortlistBids: shortlist_bids,
    ScoreWorkshops: score_workshops,
    SelectConsortium: select_consortium,
    DecideInLeadershipGroup: decide_in_leadership_group,
    RecordCost: record_cost,
    ClosePeriod: close_period,
    GetPeriodClosing: get_period_closing,
    ExportAllianceOcds: export_alliance_ocds,
    DeclareMarketFailure: declare_market_failure,
    GetMarketFailure: get_market_failure,
    LiftMarketFailure: lift_market_failure,
    ExpireMarketFailure: expire_market_failure,
    CreateDirectAward: create_direct_award,
}

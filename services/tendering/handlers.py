"""Tendering use cases: one handler per command or query, reached alike from gRPC, registry
events and the scheduler's timers (deadlines, standstill ends, call-off offers)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.runtime import access
from services.runtime.auth import Role
from services.runtime.domain import Command, Query, check_text, finnish_date
from services.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.tendering import bidder_keys, model, ocds, sealing

if TYPE_CHECKING:
    from services.tendering.store import TenderingUnitOfWork

# -- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateCall(Command):
    region: str
    spec: model.CallSpec


@dataclass(frozen=True)
class PublishCall(Command):
    region: str
    call_id: str


@dataclass(frozen=True)
class AmendCall(Command):
    region: str
    call_id: str
    spec: model.CallSpec


@dataclass(frozen=True)
class CancelCall(Command):
    region: str
    call_id: str
    reason: str


@dataclass(frozen=True)
class AskQuestion(Command):
    region: str
    call_id: str
    question: str


@dataclass(frozen=True)
class AnswerQuestion(Command):
    region: str
    call_id: str
    clarification_id: str
    answer: str


@dataclass(frozen=True)
class SubmitBid(Command):
    region: str
    call_id: str
    lot: str
    public_key: bytes
    sealed: bytes
    signature: bytes
    opening_key_sha256: str


@dataclass(frozen=True)
class WithdrawBid(Command):
    region: str
    call_id: str
    bid_id: str


@dataclass(frozen=True)
class CloseCall(Command):
    """Fired by the timer at the submission deadline."""

    region: str
    call_id: str


@dataclass(frozen=True)
class SubmitOpeningShare(Command):
    region: str
    call_id: str
    share: bytes


@dataclass(frozen=True)
class AwardCall(Command):
    region: str
    call_id: str
    reasons: str


@dataclass(frozen=True)
class ServeAwardDecision(Command):
    """The award decision goes to every bidder; the standstill starts from that day."""

    region: str
    call_id: str


@dataclass(frozen=True)
class RecordAppeal(Command):
    region: str
    call_id: str
    kind: str


@dataclass(frozen=True)
class ResolveAppeal(Command):
    region: str
    call_id: str
    appeal_id: str


@dataclass(frozen=True)
class ConcludeCall(Command):
    """Fired by the timer at the end of the standstill."""

    region: str
    call_id: str


@dataclass(frozen=True)
class CreateCallOff(Command):
    region: str
    framework_id: str
    lot: str
    description: str
    value: Decimal


@dataclass(frozen=True)
class StartMiniCompetition(Command):
    """A call-off by mini-competition: a short sealed round among the framework's eligible
    suppliers of the lot, on the framework's criteria, opened by the same committee."""

    region: str
    framework_id: str
    lot: str
    description: str
    value: Decimal


@dataclass(frozen=True)
class AnswerCallOff(Command):
    region: str
    framework_id: str
    call_off_id: str
    accept: bool


@dataclass(frozen=True)
class LapseCallOffOffer(Command):
    """Fired when a supplier let a call-off offer lapse: it goes to the next."""

    region: str
    framework_id: str
    call_off_id: str
    offered_to: str


@dataclass(frozen=True)
class SetSupplierEligibility(Command):
    """From the registry's ProviderSuspended (eligible False) and ProviderReinstated events."""

    region: str
    service: str
    business_id: str
    eligible: bool
    breach: str = ""


@dataclass(frozen=True)
class EnrolBidderKey(Command):
    """A provider enrols a key it will sign its bids with, proving it holds the key."""

    bidder: str
    public_key: bytes
    proof: bytes


@dataclass(frozen=True)
class RetireBidderKey(Command):
    bidder: str
    fingerprint: str


# -- queries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GetCall(Query):
    region: str
    call_id: str


@dataclass(frozen=True)
class ListCalls(Query):
    region: str
    before: tuple[datetime, str] | None
    limit: int


@dataclass(frozen=True)
class GetBid(Query):
    region: str
    call_id: str
    bid_id: str


@dataclass(frozen=True)
class ListBids(Query):
    region: str
    call_id: str


@dataclass(frozen=True)
class GetFramework(Query):
    region: str
    framework_id: str


@dataclass(frozen=True)
class ListFrameworks(Query):
    region: str
    after: str
    limit: int


@dataclass(frozen=True)
class ListCallOffs(Query):
    region: str
    framework_id: str
    after: str
    limit: int


@dataclass(frozen=True)
class ListBidderKeys(Query):
    bidder: str
    before: tuple[datetime, str] | None
    limit: int


@dataclass(frozen=True)
class ExportOcds(Query):
    region: str
    call_id: str


@dataclass(frozen=True)
class OcdsPackages:
    release_package_json: str
    record_package_json: str


# -- calls ----------------------------------------------------------------------------------------


def _admin(uow: TenderingUnitOfWork, region: str, action: str) -> None:
    access.require(uow.actor, any_of=[access.region_admin(region)], action=action)


def _close_key(call: model.Call) -> str:
    return f"tendering:close:{call.id}"


async def _call(
    uow: TenderingUnitOfWork, region: str, call_id: str, *, lock: bool = False, read_only: bool = False
) -> model.Call:
    """The call; `read_only` gives a shared snapshot the handler must not change (bids, reads)."""
    if read_only:
        call = await uow.calls.snapshot(call_id)
    else:
        call = await (uow.calls.lock(call_id) if lock else uow.calls.get(call_id))
    if call is None or call.region != region:
        raise NotFound(f"no call {model.CALL.format(region=region, call=call_id)}", reason="CALL_NOT_FOUND")
    return call


async def create_call(command: CreateCall, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "drafting a call for tenders")
    spec = model.validate_spec(command.spec, uow.now)
    call = model.Call(
        id=uuid.uuid4().hex,
        region=command.region,
        spec=spec,
        state=model.CallState.DRAFT,
        created_at=uow.now,
        updated_at=uow.now,
        buyers=(model.Buyer(command.region),),
    )
    call.record(model.CallDrafted(call.name, call.region, spec.title, uow.now))
    uow.calls.add(call)
    return call


async def publish_call(command: PublishCall, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "publishing a call for tenders")
    call = await _call(uow, command.region, command.call_id, lock=True)
    model.validate_spec(call.spec, uow.now)
    keys = sealing.create_opening_keys(
        call.name, [m.public_key for m in call.spec.committee], call.spec.opening_threshold
    )
    call.publish(keys.public_key, keys.wrapped_private_key, keys.sealed_shares, keys.commitments, uow.now)
    uow.timers.set(_close_key(call), call.spec.submission_deadline, CloseCall(call.region, call.id))
    return call


async def amend_call(command: AmendCall, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "amending a call for tenders")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.accepts_bids(uow.now)
    spec = model.validate_spec(command.spec, uow.now)
    live = await uow.bids.live(call.id)
    for bid in live:
        bid.state = model.BidState.INVALIDATED
    call.amend(spec, len(live), uow.now)
    uow.timers.set(_close_key(call), spec.submission_deadline, CloseCall(call.region, call.id))
    return call


async def cancel_call(command: CancelCall, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "cancelling a call for tenders")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.end(model.CallState.CANCELLED, command.reason, uow.now)
    uow.timers.cancel(_close_key(call))
    uow.timers.cancel(_conclude_key(call))
    # Shares submitted before a cancel would otherwise stay, and with k of them the key.
    await uow.shares.forget(call.id)
    return call


async def get_call(query: GetCall, uow: TenderingUnitOfWork) -> model.Call:
    call = await _call(uow, query.region, query.call_id)
    if call.published_at is None:
        # A draft is the organiser's alone, and stays so if it is cancelled unpublished; to
        # anyone else it does not exist.
        actor = uow.actor
        if actor is None or not access.region_admin(query.region).admits(actor):
            raise NotFound(f"no call {call.name}", reason="CALL_NOT_FOUND")
    return call


async def list_calls(query: ListCalls, uow: TenderingUnitOfWork) -> list[model.Call]:
    return await uow.calls.listed_page(query.region, query.before, query.limit)


async def ask_question(command: AskQuestion, uow: TenderingUnitOfWork) -> model.Clarification:
    """Anyone signed in may ask; the asker is not stored at all, so it can never be published."""
    if uow.actor is None:
        access.require(None, any_of=[], action="asking a question")
    call = await _call(uow, command.region, command.call_id, lock=True)
    return call.ask(uuid.uuid4().hex, command.question, uow.now)


async def answer_question(command: AnswerQuestion, uow: TenderingUnitOfWork) -> model.Clarification:
    _admin(uow, command.region, "answering a question")
    call = await _call(uow, command.region, command.call_id, lock=True)
    return call.answer(command.clarification_id, command.answer, uow.now)


# -- bids -----------------------------------------------------------------------------------------


def _bidder(uow: TenderingUnitOfWork, action: str) -> str:
    actor = uow.actor
    if actor is None or actor.role.value != "provider":
        access.require(actor, any_of=[], action=action)
    assert actor is not None
    return actor.organisation


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])


async def submit_bid(command: SubmitBid, uow: TenderingUnitOfWork) -> model.Bid:
    """Checks everything that can be checked without opening: the call is open, the lot exists,
    the bid names this call's opening key and its signature verifies; replaces an earlier bid
    of the same bidder for the lot. Stores ciphertext only."""
    bidder = _bidder(uow, "bidding")
    call = await _call(uow, command.region, command.call_id, read_only=True)
    call.accepts_bids(uow.now)
    call.invites(bidder)
    violations: list[FieldViolation] = []
    # Only a key the bidder enrolled says who signed; a key that came with the bid proves
    # nothing, so its signature is not even checked.
    enrolled = await uow.bidder_keys.live_owner(sealing.key_fingerprint(command.public_key)) == bidder
    if not enrolled:
        violations.append(bidder_keys.not_enrolled("bid.public_key", bidder))
    if call.lot(command.lot) is None:
        violations.append(FieldViolation("bid.lot", f"the call has no lot {command.lot!r}"))
    if command.opening_key_sha256 != sealing.key_fingerprint(call.opening_public_key):
        violations.append(
            FieldViolation("bid.opening_key_sha256", "the bid was not sealed to this call's opening key")
        )
    if not 0 < len(command.sealed) <= model.MAX_BID_BYTES:
        violations.append(FieldViolation("bid.sealed_bid", f"must be 1 to {model.MAX_BID_BYTES} bytes"))
    if enrolled:
        try:
            sealing.verify_bid_signature(command.sealed, command.signature, command.public_key)
        except sealing.SealingError as error:
            violations.append(FieldViolation("bid.signature", str(error)))
    if violations:
        raise InvalidArgument(
            "the bid is refused: " + "; ".join(v.description for v in violations),
            violations,
            reason="" if enrolled else bidder_keys.NOT_ENROLLED,
        )
    # An earlier live bid of this bidder for the lot is replaced (no event: the new bid's
    # BidReceived says it), by one prebuilt statement rather than loading the bidder's bids.
    await uow.bids.replace_live(call.id, bidder, command.lot)
    bid_id = uuid.uuid4().hex
    ciphertext_sha256 = sealing.digest(command.sealed)
    bid_name = model.BID.format(region=call.region, call=call.id, bid=bid_id)
    receipt = sealing.Receipt(
        bid_name, call.name, command.lot, bidder, ciphertext_sha256, uow.now.isoformat()
    )
    bid = model.Bid(
        id=bid_id,
        call=call.id,
        region=call.region,
        lot=command.lot,
        bidder=bidder,
        public_key=command.public_key,
        sealed=command.sealed,
        signature=command.signature,
        ciphertext_sha256=ciphertext_sha256,
        received_at=uow.now,
        amendment=call.amendment,
        receipt_signature=sealing.sign_receipt(receipt, uow.receipt_key.private),
    )
    bid.record(model.BidReceived(bid.name, call.name, call.region, command.lot, ciphertext_sha256, uow.now))
    await uow.bids.add(bid)
    return bid


async def _own_bid(uow: TenderingUnitOfWork, region: str, call_id: str, bid_id: str) -> model.Bid:
    bid = await uow.bids.get(bid_id)
    name = model.BID.format(region=region, call=call_id, bid=bid_id)
    if bid is None or (bid.region, bid.call) != (region, call_id):
        raise NotFound(f"no bid {name}", reason="BID_NOT_FOUND")
    return bid


async def withdraw_bid(command: WithdrawBid, uow: TenderingUnitOfWork) -> model.Bid:
    bidder = _bidder(uow, "withdrawing a bid")
    call = await _call(uow, command.region, command.call_id, read_only=True)
    bid = await _own_bid(uow, command.region, command.call_id, command.bid_id)
    if bid.bidder != bidder:
        raise NotFound(f"no bid {bid.name}", reason="BID_NOT_FOUND")
    call.accepts_bids(uow.now)
    bid.withdraw(uow.now)
    return bid


async def get_bid(query: GetBid, uow: TenderingUnitOfWork) -> model.Bid:
    bid = await _own_bid(uow, query.region, query.call_id, query.bid_id)
    call = await _call(uow, query.region, query.call_id)
    _may_read_bids(uow, call, bid.bidder)
    return bid


async def list_bids(query: ListBids, uow: TenderingUnitOfWork) -> list[model.Bid]:
    call = await _call(uow, query.region, query.call_id)
    actor = uow.actor
    if actor is not None and actor.role is Role.PROVIDER:
        return await uow.bids.of_call(call.id, bidder=actor.organisation)
    _may_read_bids(uow, call, None)
    return await uow.bids.of_call(call.id)


def _may_read_bids(uow: TenderingUnitOfWork, call: model.Call, bidder: str | None) -> None:
    """A bidder reads its own bids; the organiser reads bids once they are opened, never before."""
    actor = uow.actor
    if actor is not None and bidder is not None and access.provider(bidder).admits(actor):
        return
    access.require(actor, any_of=[access.region_admin(call.region)], action="reading bids")
    if call.state in (*model.OPEN_FOR_BIDS, model.CallState.DRAFT, model.CallState.CLOSED):
        raise PermissionDenied(f"the bids of {call.name} are sealed until opening", reason="BIDS_SEALED")


# -- bidder keys ------------------------------------------------------------------------------------


def _own_keys(uow: TenderingUnitOfWork, bidder: str, action: str) -> None:
    access.require(uow.actor, any_of=[access.provider(bidder)], action=action)


async def enrol_bidder_key(command: EnrolBidderKey, uow: TenderingUnitOfWork) -> bidder_keys.BidderKey:
    """Idempotent for a key live for the same bidder (the one enrolled, no new event)."""
    _own_keys(uow, command.bidder, "enrolling a bidder key")
    existing = await uow.bidder_keys.lock(sealing.key_fingerprint(command.public_key))
    key, new = bidder_keys.enrol(command.bidder, command.public_key, command.proof, existing, uow.now)
    if new:
        await uow.bidder_keys.add(key)
    return key


async def list_bidder_keys(query: ListBidderKeys, uow: TenderingUnitOfWork) -> list[bidder_keys.BidderKey]:
    _own_keys(uow, query.bidder, "listing bidder keys")
    return await uow.bidder_keys.of_bidder(query.bidder, query.before, query.limit)


async def retire_bidder_key(command: RetireBidderKey, uow: TenderingUnitOfWork) -> bidder_keys.BidderKey:
    """New bids signed with the key are refused from now on; those already in stand."""
    _own_keys(uow, command.bidder, "retiring a bidder key")
    key = await uow.bidder_keys.lock(command.fingerprint)
    if key is None or key.bidder != command.bidder:
        # Another bidder's key does not exist for this one: its name says nothing of who holds it.
        name = bidder_keys.BIDDER_KEY.format(bidder=command.bidder, fingerprint=command.fingerprint)
        raise NotFound(f"no bidder key {name}", reason="BIDDER_KEY_NOT_FOUND")
    key.retire(uow.now)
    return key


# -- closing and opening ---------------------------------------------------------------------------


async def close_call(command: CloseCall, uow: TenderingUnitOfWork) -> bool:
    call = await _call(uow, command.region, command.call_id, lock=True)
    return await _close_if_due(uow, call)


async def _close_if_due(uow: TenderingUnitOfWork, call: model.Call) -> bool:
    if call.state not in model.OPEN_FOR_BIDS:
        return False
    live = await uow.bids.live(call.id)
    return call.close(len(live), uow.now)


async def submit_opening_share(command: SubmitOpeningShare, uow: TenderingUnitOfWork) -> model.Call:
    """A committee member's share, accepted only after the deadline and only when it matches the
    commitment made at publication; the threshold-th share opens every bid at once."""
    actor = access.require(uow.actor, any_of=[access.region_admin(command.region)], action="opening bids")
    call = await _call(uow, command.region, command.call_id, lock=True)
    index = next((i for i, m in enumerate(call.spec.committee) if m.member == actor.subject), None)
    if index is None:
        raise PermissionDenied(
            f"{actor.subject} is not on the opening committee of {call.name}", reason="NOT_ON_COMMITTEE"
        )
    if uow.now < call.spec.submission_deadline:
        raise FailedPrecondition(
            f"the bids of {call.name} stay sealed until {call.spec.submission_deadline.isoformat()}",
            reason="DEADLINE_NOT_PASSED",
        )
    await _close_if_due(uow, call)
    if call.state != model.CallState.CLOSED:
        raise FailedPrecondition(
            f"{call.name} is {call.state}: there is nothing to open", reason="CALL_STATE"
        )
    if not sealing.check_share(command.share, call.share_commitments[index], call.name):
        raise _invalid("share", "is not the share sealed to this member for this call")
    shares = await uow.shares.of_call(call.id)
    if index in shares:
        raise FailedPrecondition(f"{actor.subject} has already submitted its share", reason="SHARE_SUBMITTED")
    shares[index] = command.share
    uow.record(model.OpeningShareSubmitted(call.name, call.region, actor.subject, uow.now))
    if len(shares) < call.spec.opening_threshold:
        await uow.shares.add(call.id, index, command.share, uow.now)
        return call
    await _open_and_evaluate(uow, call, list(shares.values()))
    await uow.shares.forget(call.id)
    return call


async def _open_and_evaluate(uow: TenderingUnitOfWork, call: model.Call, shares: list[bytes]) -> None:
    private = sealing.unwrap_opening_key(call.wrapped_private_key, shares, call.name)
    sealed = await uow.bids.sealed(call.id)
    candidates, openings = await open_bids(call.name, sealed, private)
    await uow.bids.record_opening(openings)
    by_lot: dict[str, list[model.Candidate]] = {lot.lot: [] for lot in call.spec.lots}
    for candidate in candidates:
        by_lot.setdefault(candidate.lot, []).append(candidate)
    scores = [
        score for lot in call.spec.lots for score in model.evaluate_lot(lot.lot, by_lot[lot.lot], call.spec)
    ]
    unopenable = sum(1 for opening in openings if opening.content_json is None)
    call.evaluated(scores, len(sealed) - unopenable, unopenable, uow.now)


async def open_bids(
    call_name: str, bids: Sequence[model.SealedBid], private: Any
) -> tuple[list[model.Candidate], list[model.Opening]]:
    """Opens every bid with the call's private key after checking the bidder's signature again (a
    ciphertext changed in the database since its receipt no longer verifies); a bid that fails
    either is kept, unranked, with its reason. One signature check and one HPKE open per bid,
    nothing else of cost: this loop is the whole opening.

    The bids are opened on worker threads, a share for each core: the event loop goes on serving
    other calls through an opening of thousands of bids (seconds of work), and the signature
    checks, which `cryptography` runs without the GIL, use every core."""
    shares = max(1, min(os.cpu_count() or 1, len(bids) // _BIDS_PER_THREAD_AT_LEAST))
    size = -(-len(bids) // shares) if bids else 0
    opened = await asyncio.gather(
        *(
            asyncio.to_thread(_open_each, call_name, bids[first : first + size], private)
            for first in range(0, len(bids), size or 1)
        )
    )
    candidates = [candidate for part in opened for candidate in part[0]]
    openings = [opening for part in opened for opening in part[1]]
    return candidates, openings


_BIDS_PER_THREAD_AT_LEAST = 64
"""Fewer bids than this are opened on one thread: a thread's hand-off costs more than they do."""


def _open_each(
    call_name: str, bids: Sequence[model.SealedBid], private: Any
) -> tuple[list[model.Candidate], list[model.Opening]]:
    candidates: list[model.Candidate] = []
    openings: list[model.Opening] = []
    for bid in bids:
        content: model.BidContent | None = None
        try:
            sealing.verify_bid_signature(bid.sealed, bid.signature, bid.public_key)
            plaintext = sealing.open_bid(bid.sealed, private, call_name, bid.lot, bid.bidder)
            text = plaintext.decode()
            content = model.BidContent.decode(text)
            openings.append(model.Opening(bid.id, sealing.digest(plaintext), text))
        except (sealing.SealingError, ValueError, KeyError, TypeError, ArithmeticError):
            content = None
            openings.append(model.Opening(bid.id, "", None))
        candidates.append(model.Candidate(bid.id, bid.lot, bid.bidder, bid.received_at, content))
    return candidates, openings


# -- award, standstill, conclusion ------------------------------------------------------------------


def _conclude_key(call: model.Call) -> str:
    return f"tendering:conclude:{call.id}"


async def award_call(command: AwardCall, uow: TenderingUnitOfWork) -> model.Call:
    """The decision alone: no standstill runs until it is served (serve_award_decision)."""
    _admin(uow, command.region, "awarding a call")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.award(command.reasons, uow.now)
    return call


async def serve_award_decision(command: ServeAwardDecision, uow: TenderingUnitOfWork) -> model.Call:
    """Serves the decision to every bidder and arms the conclusion for the day after the
    standstill's last day (appeals still pending then hold it until resolved)."""
    _admin(uow, command.region, "serving an award decision")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.serve_decision(uow.now)
    if call.standstill_end is None:  # a decision that no bid wins: nothing to conclude
        return call
    uow.timers.set(
        _conclude_key(call),
        model.start_of_next_day(call.standstill_end),
        ConcludeCall(call.region, call.id),
    )
    return call


APPEAL_KINDS = ("RECTIFICATION", "MARKET_COURT")


async def record_appeal(command: RecordAppeal, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "recording an appeal")
    if command.kind not in APPEAL_KINDS:
        raise _invalid("kind", f"must be one of {', '.join(APPEAL_KINDS)}")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.record_appeal(model.Appeal(uuid.uuid4().hex, command.kind), uow.now)
    return call


async def resolve_appeal(command: ResolveAppeal, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "resolving an appeal")
    call = await _call(uow, command.region, command.call_id, lock=True)
    call.resolve_appeal(command.appeal_id, uow.now)
    await _conclude_if_due(uow, call)
    return call


async def conclude_call(command: ConcludeCall, uow: TenderingUnitOfWork) -> bool:
    call = await _call(uow, command.region, command.call_id, lock=True)
    return await _conclude_if_due(uow, call)


async def _conclude_if_due(uow: TenderingUnitOfWork, call: model.Call) -> bool:
    if not call.may_conclude(uow.now):
        return False
    start = finnish_date(uow.now)
    months = call.spec.framework.duration_months or 12
    framework = model.Framework(
        id=call.id,
        region=call.region,
        call=call.id,
        service=call.spec.service,
        suppliers=tuple(
            model.Supplier(s.lot, s.bidder, index + 1)
            for lot in call.spec.lots
            for index, s in enumerate(w for w in call.winners() if w.lot == lot.lot)
        ),
        call_off_method=call.spec.framework.call_off_method,
        offer_hours=call.spec.framework.offer_hours,
        start=start,
        end=_add_months(start, months) - timedelta(days=1),
        created_at=uow.now,
    )
    call.conclude(framework.name, uow.now)
    uow.frameworks.add(framework)
    return True


def _add_months(day: Any, months: int) -> Any:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for candidate in (day.day, 30, 29, 28):
        try:
            return day.replace(year=year, month=month, day=candidate)
        except ValueError:
            continue
    raise AssertionError("unreachable")


# -- frameworks and call-offs -----------------------------------------------------------------------


async def _framework(uow: TenderingUnitOfWork, region: str, framework_id: str) -> model.Framework:
    framework: model.Framework | None = await uow.frameworks.get(framework_id)
    if framework is None or framework.region != region:
        name = model.FRAMEWORK.format(region=region, framework=framework_id)
        raise NotFound(f"no framework {name}", reason="FRAMEWORK_NOT_FOUND")
    return framework


def _offer_key(call_off: model.CallOff) -> str:
    return f"tendering:call-off:{call_off.id}"


def _arm_offer(uow: TenderingUnitOfWork, call_off: model.CallOff) -> None:
    if call_off.state == model.CallOffState.OFFERED and call_off.offer_expires is not None:
        lapse = LapseCallOffOffer(call_off.region, call_off.framework, call_off.id, call_off.offered_to)
        uow.timers.set(_offer_key(call_off), call_off.offer_expires, lapse)
    else:
        uow.timers.cancel(_offer_key(call_off))


async def create_call_off(command: CreateCallOff, uow: TenderingUnitOfWork) -> model.CallOff:
    """Offers the call-off to the lot's best-ranked supplier not suspended now; the suspended
    ones are skipped, and say so."""
    _admin(uow, command.region, "calling off from a framework")
    framework = await _framework(uow, command.region, command.framework_id)
    violations: list[FieldViolation] = []
    if not framework.ranked(command.lot):
        violations.append(
            FieldViolation("call_off.lot", f"the framework has no suppliers for lot {command.lot!r}")
        )
    if (
        violation := check_text(command.description, "call_off.description", model.TEXT_MAX_LENGTH)
    ) is not None:
        violations.append(violation)
    if command.value <= 0:
        violations.append(FieldViolation("call_off.value", "must be more than zero"))
    if violations:
        raise InvalidArgument("the call-off is invalid", violations)
    if framework.call_off_method != model.CallOffMethod.RANKING:
        raise FailedPrecondition(
            f"{framework.name} calls off by {framework.call_off_method}", reason="CALL_OFF_METHOD"
        )
    call_off = model.CallOff(
        id=uuid.uuid4().hex,
        region=framework.region,
        framework=framework.id,
        lot=command.lot,
        description=command.description.strip(),
        value=command.value,
        state=model.CallOffState.OFFERED,
        offered_to="",
        tried=(),
        skipped=(),
        offer_expires=None,
        created_at=uow.now,
        updated_at=uow.now,
    )
    call_off.offer_next(
        framework, await uow.suspensions.suspended(framework.region, framework.service), uow.now
    )
    uow.call_offs.add(call_off)
    _arm_offer(uow, call_off)
    return call_off


async def start_mini_competition(command: StartMiniCompetition, uow: TenderingUnitOfWork) -> model.Call:
    _admin(uow, command.region, "calling off from a framework")
    framework = await _framework(uow, command.region, command.framework_id)
    if framework.call_off_method != model.CallOffMethod.MINI_COMPETITION:
        raise FailedPrecondition(
            f"{framework.name} calls off by {framework.call_off_method}", reason="CALL_OFF_METHOD"
        )
    source = await _call(uow, framework.region, framework.call, read_only=True)
    lot = source.lot(command.lot)
    if lot is None or not framework.ranked(command.lot):
        raise _invalid("call_off.lot", f"the framework has no suppliers for lot {command.lot!r}")
    suspended = await uow.suspensions.suspended(framework.region, framework.service)
    invited = tuple(s.business_id for s in framework.ranked(command.lot) if s.business_id not in suspended)
    if not invited:
        raise FailedPrecondition(
            f"no supplier of lot {command.lot} is eligible now", reason="NO_ELIGIBLE_SUPPLIER"
        )
    hours = timedelta(hours=framework.offer_hours)
    spec = model.CallSpec(
        title=command.description,
        service=framework.service,
        kind=model.CallKind.CONTRACT,
        lots=(model.Lot(lot.lot, command.description, lot.cpv_codes, command.value, 1),),
        criteria=source.spec.criteria,
        declarations=source.spec.declarations,
        questions_deadline=uow.now + hours / 2,
        submission_deadline=uow.now + hours,
        framework=model.FrameworkTerms(),
        committee=source.spec.committee,
        opening_threshold=source.spec.opening_threshold,
        social_and_health=source.spec.social_and_health,
        invited=invited,
        parent_framework=framework.id,
    )
    draft = await create_call(CreateCall(command.region, spec), uow)
    return await publish_call(PublishCall(command.region, draft.id), uow)


async def _call_off(
    uow: TenderingUnitOfWork, region: str, framework_id: str, call_off_id: str
) -> model.CallOff:
    call_off: model.CallOff | None = await uow.call_offs.get(call_off_id)
    if call_off is None or (call_off.region, call_off.framework) != (region, framework_id):
        name = model.CALL_OFF.format(region=region, framework=framework_id, call_off=call_off_id)
        raise NotFound(f"no call-off {name}", reason="CALL_OFF_NOT_FOUND")
    return call_off


async def answer_call_off(command: AnswerCallOff, uow: TenderingUnitOfWork) -> model.CallOff:
    bidder = _bidder(uow, "answering a call-off")
    call_off = await _call_off(uow, command.region, command.framework_id, command.call_off_id)
    if command.accept:
        call_off.accept(bidder, uow.now)
    else:
        if call_off.state != model.CallOffState.OFFERED or call_off.offered_to != bidder:
            raise FailedPrecondition(f"{call_off.name} is not offered to {bidder}", reason="NOT_OFFERED")
        await _offer_to_next(uow, call_off)
    _arm_offer(uow, call_off)
    return call_off


async def _offer_to_next(uow: TenderingUnitOfWork, call_off: model.CallOff) -> None:
    framework = await _framework(uow, call_off.region, call_off.framework)
    suspended = await uow.suspensions.suspended(framework.region, framework.service)
    call_off.offer_next(framework, suspended, uow.now)


async def lapse_call_off_offer(command: LapseCallOffOffer, uow: TenderingUnitOfWork) -> bool:
    call_off = await _call_off(uow, command.region, command.framework_id, command.call_off_id)
    if call_off.state != model.CallOffState.OFFERED or call_off.offered_to != command.offered_to:
        return False
    await _offer_to_next(uow, call_off)
    _arm_offer(uow, call_off)
    return True


async def set_supplier_eligibility(command: SetSupplierEligibility, uow: TenderingUnitOfWork) -> bool:
    """Idempotent: a redelivered suspension or reinstatement changes nothing."""
    if command.eligible:
        changed = await uow.suspensions.reinstate(command.region, command.service, command.business_id)
    else:
        changed = await uow.suspensions.suspend(
            command.region, command.service, command.business_id, command.breach, uow.now
        )
    if changed:
        uow.record(
            model.SupplierEligibilityChanged(
                command.region, command.service, command.business_id, command.eligible, uow.now
            )
        )
    return changed


@dataclass(frozen=True)
class FrameworkView:
    """A framework with the suppliers suspended now (skipped by call-offs until reinstated)."""

    framework: model.Framework
    suspended: tuple[str, ...]


async def get_framework(query: GetFramework, uow: TenderingUnitOfWork) -> FrameworkView:
    framework = await _framework(uow, query.region, query.framework_id)
    suspended = await uow.suspensions.suspended(framework.region, framework.service)
    return FrameworkView(framework, tuple(sorted(suspended & {s.business_id for s in framework.suppliers})))


async def list_frameworks(query: ListFrameworks, uow: TenderingUnitOfWork) -> list[model.Framework]:
    return await uow.frameworks.page(query.region, query.after, query.limit)


async def list_call_offs(query: ListCallOffs, uow: TenderingUnitOfWork) -> list[model.CallOff]:
    access.require(
        uow.actor,
        any_of=[access.region_admin(query.region), access.supervisor(query.region)],
        action="listing call-offs",
    )
    await _framework(uow, query.region, query.framework_id)
    return await uow.call_offs.of_framework(query.framework_id, query.after, query.limit)


async def export_ocds(query: ExportOcds, uow: TenderingUnitOfWork) -> OcdsPackages:
    call = await get_call(GetCall(query.region, query.call_id), uow)
    framework = await uow.frameworks.get(call.id) if call.state == model.CallState.CONCLUDED else None
    call_offs = await uow.call_offs.of_framework(call.id, "", 10_000) if framework is not None else []
    releases, record = ocds.packages(call, framework, call_offs)
    return OcdsPackages(releases, record)


HANDLERS: dict[type[Any], Any] = {
    CreateCall: create_call,
    PublishCall: publish_call,
    AmendCall: amend_call,
    CancelCall: cancel_call,
    GetCall: get_call,
    ListCalls: list_calls,
    AskQuestion: ask_question,
    AnswerQuestion: answer_question,
    SubmitBid: submit_bid,
    WithdrawBid: withdraw_bid,
    GetBid: get_bid,
    ListBids: list_bids,
    CloseCall: close_call,
    SubmitOpeningShare: submit_opening_share,
    AwardCall: award_call,
    ServeAwardDecision: serve_award_decision,
    RecordAppeal: record_appeal,
    ResolveAppeal: resolve_appeal,
    ConcludeCall: conclude_call,
    CreateCallOff: create_call_off,
    StartMiniCompetition: start_mini_competition,
    AnswerCallOff: answer_call_off,
    LapseCallOffOffer: lapse_call_off_offer,
    SetSupplierEligibility: set_supplier_eligibility,
    GetFramework: get_framework,
    ListFrameworks: list_frameworks,
    ListCallOffs: list_call_offs,
    ExportOcds: export_ocds,
    EnrolBidderKey: enrol_bidder_key,
    ListBidderKeys: list_bidder_keys,
    RetireBidderKey: retire_bidder_key,
}

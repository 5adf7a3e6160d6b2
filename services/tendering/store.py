"""Tendering storage: calls, frameworks and call-offs as JSON documents beside the columns they
are found by; bids in plain columns (opening reads thousands at once); opening shares, which
exist only after the deadline; and the suspensions learned from the registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Index, bindparam, delete, update
from sqlalchemy import select as core_select
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime import codec
from services.runtime.db import older_than, serialize_on
from services.runtime.fastinsert import TableInserter
from services.runtime.prepared import Prepared
from services.runtime.tables import utc_field
from services.runtime.uow import Context, UnitOfWork
from services.tendering import bidder_keys, model, sealing


class CallRow(SQLModel, table=True):
    """A call for tenders; `document` is the whole aggregate (codec JSON)."""

    __tablename__ = "tendering_calls"
    __table_args__ = (Index("ix_tendering_calls_listing", "region", "listed", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63)
    state: str = Field(max_length=16)
    listed: bool
    created_at: datetime = utc_field()
    document: str
    scores_json: str = "[]"


class FrameworkRow(SQLModel, table=True):
    __tablename__ = "tendering_frameworks"

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    created_at: datetime = utc_field()
    document: str


class CallOffRow(SQLModel, table=True):
    __tablename__ = "tendering_call_offs"

    id: str = Field(primary_key=True, max_length=64)
    framework_id: str = Field(max_length=64, index=True)
    created_at: datetime = utc_field()
    document: str


class BidRow(SQLModel, table=True):
    """A sealed bid: ciphertext only. What opening found is in tendering_bid_openings: a bid with
    a row there is OPENED whatever `state` says (opening 10 000 bids inserts 10 000 small rows
    instead of rewriting 10 000 large ones); `state` keeps the submission's states and
    UNOPENABLE."""

    __tablename__ = "tendering_bids"
    __table_args__ = (Index("ix_tendering_bids_call", "call_id", "bidder", "lot"),)

    id: str = Field(primary_key=True, max_length=64)
    call_id: str = Field(max_length=64)
    region: str = Field(max_length=63)
    lot: str = Field(max_length=63)
    bidder: str = Field(max_length=9)
    public_key: bytes
    sealed: bytes
    signature: bytes
    ciphertext_sha256: str = Field(max_length=64)
    received_at: datetime = utc_field()
    amendment: int
    state: str = Field(max_length=16)
    receipt_signature: bytes


class OpeningRow(SQLModel, table=True):
    """An opened bid's plaintext hash and the plaintext itself (its JSON as the provider sealed
    it), written once at opening by one bulk insert."""

    __tablename__ = "tendering_bid_openings"

    bid_id: str = Field(primary_key=True, max_length=64)
    plaintext_sha256: str = Field(max_length=64)
    content_json: str


class ShareRow(SQLModel, table=True):
    """A committee member's submitted share; accepted only after the deadline."""

    __tablename__ = "tendering_opening_shares"

    call_id: str = Field(primary_key=True, max_length=64)
    member_index: int = Field(primary_key=True)
    share: bytes
    submitted_at: datetime = utc_field()


class SuspensionRow(SQLModel, table=True):
    """A provider suspended in a region for a service, as the registry's events said."""

    __tablename__ = "tendering_suspensions"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    business_id: str = Field(primary_key=True, max_length=9)
    breach: str = Field(max_length=255)
    suspended_at: datetime = utc_field()


class BidderKeyRow(SQLModel, table=True):
    """A key a provider enrolled to sign its bids with; kept after retirement, so a retired key
    is never enrolled again."""

    __tablename__ = "tendering_bidder_keys"
    __table_args__ = (Index("ix_tendering_bidder_keys_bidder", "bidder", "enrolled_at", "fingerprint"),)

    fingerprint: str = Field(primary_key=True, max_length=64)
    bidder: str = Field(max_length=9)
    public_key: bytes
    enrolled_at: datetime = utc_field()
    retired_at: datetime | None = utc_field(default=None)


TENDERING_TABLES = (
    "tendering_calls",
    "tendering_frameworks",
    "tendering_call_offs",
    "tendering_bids",
    "tendering_bid_openings",
    "tendering_opening_shares",
    "tendering_suspensions",
    "tendering_bidder_keys",
)
BIDS = BidRow.__table__  # type: ignore[attr-defined]
CALLS = CallRow.__table__  # type: ignore[attr-defined]
SHARES = ShareRow.__table__  # type: ignore[attr-defined]
SUSPENSIONS = SuspensionRow.__table__  # type: ignore[attr-defined]
OPENINGS = OpeningRow.__table__  # type: ignore[attr-defined]
BIDDER_KEYS = BidderKeyRow.__table__  # type: ignore[attr-defined]
_INSERT_BID = TableInserter(BIDS)
_INSERT_OPENING = TableInserter(OPENINGS)
_BIDS_WITH_OPENINGS = select(BIDS, OPENINGS.c.plaintext_sha256, OPENINGS.c.content_json).select_from(
    BIDS.outerjoin(OPENINGS, OPENINGS.c.bid_id == BIDS.c.id)
)
_UPDATE_BID = update(BIDS).where(BIDS.c.id == bindparam("bid_id"))
_SEALED = str(model.BidState.SEALED)
_NOT_OPENED = OPENINGS.c.bid_id.is_(None)
_REPLACE_LIVE = Prepared(
    update(BIDS)
    .where(
        BIDS.c.call_id == bindparam("live_call"),
        BIDS.c.bidder == bindparam("live_bidder"),
        BIDS.c.lot == bindparam("live_lot"),
        BIDS.c.state == _SEALED,
    )
    .values(state=str(model.BidState.REPLACED))
)
_SEALED_FOR_OPENING = (
    core_select(
        BIDS.c.id,
        BIDS.c.lot,
        BIDS.c.bidder,
        BIDS.c.public_key,
        BIDS.c.sealed,
        BIDS.c.signature,
        BIDS.c.received_at,
    )
    .select_from(BIDS.outerjoin(OPENINGS, OPENINGS.c.bid_id == BIDS.c.id))
    .where(BIDS.c.call_id == bindparam("call_id"), BIDS.c.state == _SEALED, _NOT_OPENED)
)

# -- documents ------------------------------------------------------------------------------------


class DocumentRepository:
    """Aggregates stored whole as canonical JSON; written back when their JSON changed."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork, row_type: Any, kind: Any) -> None:
        self._session = session
        self._uow = uow
        self._row_type = row_type
        self._kind = kind
        self._loaded: dict[str, tuple[Any, dict[str, Any]]] = {}

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        """The row's columns besides id and created_at; subclasses add what they are found by."""
        return {"document": codec.dumps(aggregate)}

    def _decode(self, row: Any) -> Any:
        return codec.loads(self._kind, row.document)

    def _track(self, row: Any) -> Any:
        if row.id in self._loaded:
            return self._loaded[row.id][0]
        aggregate = self._decode(row)
        self._loaded[row.id] = (aggregate, self._columns(aggregate))
        return self._uow.track(aggregate, aggregate.name)

    async def get(self, aggregate_id: str) -> Any:
        if aggregate_id in self._loaded:  # added or read earlier in this unit of work
            return self._loaded[aggregate_id][0]
        row = await self._session.get(self._row_type, aggregate_id)
        return self._track(row) if row is not None else None

    def add(self, aggregate: Any) -> None:
        columns = self._columns(aggregate)
        self._session.add(self._row_type(id=aggregate.id, created_at=aggregate.created_at, **columns))
        self._loaded[aggregate.id] = (aggregate, columns)
        self._uow.track(aggregate, aggregate.name)

    async def save(self) -> None:
        for aggregate_id, (aggregate, written) in self._loaded.items():
            columns = self._columns(aggregate)
            if columns != written:
                row = await self._session.get(self._row_type, aggregate_id)
                assert row is not None
                for name, value in columns.items():
                    setattr(row, name, value)
                self._session.add(row)
                self._loaded[aggregate_id] = (aggregate, columns)


def _scores_json(scores: tuple[model.Score, ...]) -> str:
    """Scores by hand, not by the reflective codec: a call with 10 000 bids has 10 000 of them."""
    return json.dumps(
        [
            [
                s.bid,
                s.lot,
                s.bidder,
                str(s.price),
                str(s.price_points),
                str(s.quality_points),
                str(s.total),
                s.rank,
                s.abnormally_low,
                s.excluded_reason,
                s.received_at.isoformat() if s.received_at else None,
            ]
            for s in scores
        ],
        separators=(",", ":"),
    )


def _scores(text: str) -> tuple[model.Score, ...]:
    return tuple(
        model.Score(
            bid,
            lot,
            bidder,
            Decimal(price),
            Decimal(price_points),
            Decimal(quality_points),
            Decimal(total),
            rank,
            low,
            reason,
            datetime.fromisoformat(received) if received else None,
        )
        for bid, lot, bidder, price, price_points, quality_points, total, rank, low, reason, received in (
            json.loads(text)
        )
    )


class CallCache:
    """Decoded calls by their stored text, shared by a process's units of work: bids arrive by the
    thousand against one call that does not change meanwhile, and decoding it is the cost."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._calls: dict[tuple[str, str], model.Call] = {}

    def decoded(self, document: str, scores_json: str) -> model.Call:
        key = (document, scores_json)
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= self._capacity:
                self._calls.pop(next(iter(self._calls)))
            call = codec.loads(model.Call, document)
            call.scores = _scores(scores_json)
            self._calls[key] = call
        return call


_CALL_SNAPSHOT = Prepared(
    select(CALLS.c.document, CALLS.c.scores_json).where(CALLS.c.id == bindparam("call_id"))
)


class CallRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork, cache: CallCache) -> None:
        super().__init__(session, uow, CallRow, model.Call)
        self._cache = cache

    async def snapshot(self, call_id: str) -> model.Call | None:
        """The call as stored, for reading only: shared, never tracked, so never written back.
        Writers of the same call take turns from here, as with lock()."""
        if not self._uow.read_only:
            await serialize_on(self._session, f"tendering:call:{call_id}")
        row = (await _CALL_SNAPSHOT.execute(self._uow.connection, {"call_id": call_id})).first()
        return None if row is None else self._cache.decoded(row.document, row.scores_json)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        call: model.Call = aggregate
        return {
            "region": call.region,
            "state": str(call.state),
            "listed": call.published_at is not None,  # a draft cancelled unpublished stays private
            "document": codec.dumps(replace(call, scores=())),
            "scores_json": _scores_json(call.scores),
        }

    def _decode(self, row: Any) -> Any:
        call: model.Call = codec.loads(model.Call, row.document)
        call.scores = _scores(row.scores_json)
        return call

    async def lock(self, call_id: str) -> model.Call | None:
        """The call, with writers of the same call taking turns from here (bids, shares)."""
        if not self._uow.read_only:
            await serialize_on(self._session, f"tendering:call:{call_id}")
        call: model.Call | None = await self.get(call_id)
        return call

    async def listed_page(
        self, region: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[model.Call]:
        query = select(CallRow).where(CallRow.region == region, CallRow.listed == True)  # noqa: E712
        if before is not None:
            query = query.where(older_than(CallRow.created_at, CallRow.id, before))
        query = query.order_by(CallRow.created_at.desc(), CallRow.id.desc()).limit(limit)  # type: ignore[attr-defined]
        return [self._track(row) for row in (await self._session.exec(query)).all()]


class FrameworkRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        super().__init__(session, uow, FrameworkRow, model.Framework)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        return {"region": aggregate.region, **super()._columns(aggregate)}

    async def page(self, region: str, after: str, limit: int) -> list[model.Framework]:
        query = (
            select(FrameworkRow)
            .where(FrameworkRow.region == region, FrameworkRow.id > after)
            .order_by(FrameworkRow.id)
            .limit(limit)
        )
        return [self._track(row) for row in (await self._session.exec(query)).all()]


class CallOffRepository(DocumentRepository):
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        super().__init__(session, uow, CallOffRow, model.CallOff)

    def _columns(self, aggregate: Any) -> dict[str, Any]:
        return {"framework_id": aggregate.framework, **super()._columns(aggregate)}

    async def of_framework(self, framework_id: str, after: str, limit: int) -> list[model.CallOff]:
        query = (
            select(CallOffRow)
            .where(CallOffRow.framework_id == framework_id, CallOffRow.id > after)
            .order_by(CallOffRow.id)
            .limit(limit)
        )
        return [self._track(row) for row in (await self._session.exec(query)).all()]


# -- bids -------------------------------------------------------------------------------------------


def bid_from_row(row: Any) -> model.Bid:
    return model.Bid(
        id=row.id,
        call=row.call_id,
        region=row.region,
        lot=row.lot,
        bidder=row.bidder,
        public_key=row.public_key,
        sealed=row.sealed,
        signature=row.signature,
        ciphertext_sha256=row.ciphertext_sha256,
        received_at=row.received_at,
        amendment=row.amendment,
        state=model.BidState.OPENED if row.plaintext_sha256 is not None else model.BidState(row.state),
        receipt_signature=row.receipt_signature,
        plaintext_sha256=row.plaintext_sha256 or "",
        content=None if row.content_json is None else model.BidContent.decode(row.content_json),
    )


def _mutable(bid: model.Bid) -> dict[str, Any]:
    return {"state": str(bid.state)}


class BidRepository:
    """Bids by SQLAlchemy Core: submission and opening are the hot paths."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._loaded: dict[str, tuple[model.Bid, dict[str, Any]]] = {}

    def _track(self, row: Any) -> model.Bid:
        """Keeps the bid to write back if it changes. It reaches the unit of work's event list in
        save(), and only if it recorded events: opening loads thousands, and tracking each one
        would cost a scan of everything tracked before it."""
        if row.id in self._loaded:
            return self._loaded[row.id][0]
        bid = bid_from_row(row)
        self._loaded[bid.id] = (bid, _mutable(bid))
        return bid

    async def _select(self, *conditions: Any) -> list[model.Bid]:
        query = _BIDS_WITH_OPENINGS.where(*conditions).order_by(BIDS.c.received_at, BIDS.c.id)
        return [self._track(row) for row in (await self._uow.connection.execute(query)).all()]

    async def get(self, bid_id: str) -> model.Bid | None:
        found = await self._select(BIDS.c.id == bid_id)
        return found[0] if found else None

    async def of_call(self, call_id: str, *, bidder: str | None = None) -> list[model.Bid]:
        conditions = [BIDS.c.call_id == call_id]
        if bidder is not None:
            conditions.append(BIDS.c.bidder == bidder)
        return await self._select(*conditions)

    async def live(self, call_id: str) -> list[model.Bid]:
        return await self._select(BIDS.c.call_id == call_id, BIDS.c.state == _SEALED, _NOT_OPENED)

    async def replace_live(self, call_id: str, bidder: str, lot: str) -> None:
        """Marks the bidder's live bid for the lot (at most one, before the deadline: none is
        opened yet) REPLACED, found by the (call_id, bidder, lot) index."""
        await _REPLACE_LIVE.execute(
            self._uow.connection, {"live_call": call_id, "live_bidder": bidder, "live_lot": lot}
        )

    async def add(self, bid: model.Bid) -> None:
        row = {
            "id": bid.id,
            "call_id": bid.call,
            "region": bid.region,
            "lot": bid.lot,
            "bidder": bid.bidder,
            "public_key": bid.public_key,
            "sealed": bid.sealed,
            "signature": bid.signature,
            "ciphertext_sha256": bid.ciphertext_sha256,
            "received_at": bid.received_at,
            "amendment": bid.amendment,
            "receipt_signature": bid.receipt_signature,
            **_mutable(bid),
        }
        await _INSERT_BID.insert(self._uow.connection, [row])
        self._loaded[bid.id] = (bid, _mutable(bid))
        self._uow.track(bid, bid.name)

    async def sealed(self, call_id: str) -> list[model.SealedBid]:
        """The call's live bids for opening: one prebuilt Core select of the columns opening
        needs, no join, no aggregate per row."""
        result = await self._uow.connection.execute(_SEALED_FOR_OPENING, {"call_id": call_id})
        return [model.SealedBid(*row) for row in result]

    async def record_opening(self, openings: list[model.Opening]) -> None:
        """Writes what opening found: one bulk insert of the opened bids' hashes and contents
        (which makes them OPENED), and UNOPENABLE on the few that did not open."""
        await _INSERT_OPENING.insert(
            self._uow.connection,
            [
                {"bid_id": o.bid, "plaintext_sha256": o.plaintext_sha256, "content_json": o.content_json}
                for o in openings
                if o.content_json is not None
            ],
        )
        unopenable = [
            {"bid_id": o.bid, "state": str(model.BidState.UNOPENABLE)}
            for o in openings
            if o.content_json is None
        ]
        if unopenable:
            await self._uow.connection.execute(_UPDATE_BID, unopenable)

    async def save(self) -> None:
        changed = []
        for bid_id, (bid, written) in self._loaded.items():
            if bid.__dict__.get("_pending_events"):
                self._uow.track(bid, bid.name)
            current = _mutable(bid)
            if current != written:
                changed.append({"bid_id": bid_id, **current})
                self._loaded[bid_id] = (bid, current)
        if changed:
            await self._uow.connection.execute(_UPDATE_BID, changed)


class ShareRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def of_call(self, call_id: str) -> dict[int, bytes]:
        result = await self._uow.connection.execute(select(SHARES).where(SHARES.c.call_id == call_id))
        return {row.member_index: row.share for row in result.all()}

    async def add(self, call_id: str, member_index: int, share: bytes, now: datetime) -> None:
        await self._uow.connection.execute(
            SHARES.insert().values(call_id=call_id, member_index=member_index, share=share, submitted_at=now)
        )

    async def forget(self, call_id: str) -> None:
        """After opening the shares have done their work; keeping them would keep a key."""
        await self._uow.connection.execute(delete(SHARES).where(SHARES.c.call_id == call_id))


class SuspensionRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def suspended(self, region: str, service: str) -> frozenset[str]:
        result = await self._uow.connection.execute(
            select(SUSPENSIONS.c.business_id).where(
                SUSPENSIONS.c.region == region, SUSPENSIONS.c.service == service
            )
        )
        return frozenset(row.business_id for row in result.all())

    async def suspend(self, region: str, service: str, business_id: str, breach: str, now: datetime) -> bool:
        if business_id in await self.suspended(region, service):
            return False
        await self._uow.connection.execute(
            SUSPENSIONS.insert().values(
                region=region, service=service, business_id=business_id, breach=breach, suspended_at=now
            )
        )
        return True

    async def reinstate(self, region: str, service: str, business_id: str) -> bool:
        result = await self._uow.connection.execute(
            delete(SUSPENSIONS).where(
                SUSPENSIONS.c.region == region,
                SUSPENSIONS.c.service == service,
                SUSPENSIONS.c.business_id == business_id,
            )
        )
        return bool(result.rowcount)


# -- bidder keys ------------------------------------------------------------------------------------

_BIDDER_KEY_COLUMNS = (
    BIDDER_KEYS.c.fingerprint,
    BIDDER_KEYS.c.bidder,
    BIDDER_KEYS.c.public_key,
    BIDDER_KEYS.c.enrolled_at,
    BIDDER_KEYS.c.retired_at,
)
_BIDDER_KEY = Prepared(core_select(*_BIDDER_KEY_COLUMNS).where(BIDDER_KEYS.c.fingerprint == bindparam("fp")))
# Every bid asks this, by the primary key: built once, straight to SQLite (prepared.py). On
# SQLite a bid and a retirement are serialised by the one writer. Elsewhere the bid holds the
# key's row FOR SHARE to its commit: a retirement waits for bids in flight, and a bid behind an
# uncommitted retirement waits for it and then finds the key retired, so no bid signed with a
# key is accepted after the key's retirement commits.
_LIVE_KEY = core_select(BIDDER_KEYS.c.bidder).where(
    BIDDER_KEYS.c.fingerprint == bindparam("fp"), BIDDER_KEYS.c.retired_at.is_(None)
)
_LIVE_KEY_OWNER = Prepared(_LIVE_KEY, elsewhere=_LIVE_KEY.with_for_update(read=True))
_INSERT_BIDDER_KEY = TableInserter(BIDDER_KEYS)
_RETIRE_BIDDER_KEY = update(BIDDER_KEYS).where(BIDDER_KEYS.c.fingerprint == bindparam("fp"))


def _bidder_key(row: Any) -> bidder_keys.BidderKey:
    return bidder_keys.BidderKey(
        row.bidder, bytes(row.public_key), row.fingerprint, row.enrolled_at, row.retired_at
    )


class BidderKeyRepository:
    """Bidders' enrolled keys by SQLAlchemy Core: a bid's submission looks its key up."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow
        self._loaded: dict[str, tuple[bidder_keys.BidderKey, datetime | None]] = {}

    def _track(self, key: bidder_keys.BidderKey) -> bidder_keys.BidderKey:
        known = self._loaded.get(key.fingerprint)
        if known is not None:
            return known[0]
        self._loaded[key.fingerprint] = (key, key.retired_at)
        return self._uow.track(key, key.name)

    async def get(self, fingerprint: str) -> bidder_keys.BidderKey | None:
        """The key with this fingerprint, whoever enrolled it, live or retired."""
        if fingerprint in self._loaded:
            return self._loaded[fingerprint][0]
        row = (await _BIDDER_KEY.execute(self._uow.connection, {"fp": fingerprint})).first()
        return None if row is None else self._track(_bidder_key(row))

    async def lock(self, fingerprint: str) -> bidder_keys.BidderKey | None:
        """As get(), with writers of the same key taking turns from here: two bidders enrolling
        one key at once, or a retirement beside an enrolment, see each other's outcome."""
        if not self._uow.read_only:
            await serialize_on(self._session, f"tendering:bidder-key:{fingerprint}")
        return await self.get(fingerprint)

    async def live_owner(self, fingerprint: str) -> str | None:
        """The bidder the key is live-enrolled for, or None (unknown or retired)."""
        found = await _LIVE_KEY_OWNER.execute(self._uow.connection, {"fp": fingerprint})
        owner: str | None = found.scalar()
        return owner

    async def of_bidder(
        self, bidder: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[bidder_keys.BidderKey]:
        """The bidder's keys, live and retired, newest enrolment first (fingerprint breaking ties)."""
        query = core_select(*_BIDDER_KEY_COLUMNS).where(BIDDER_KEYS.c.bidder == bidder)
        if before is not None:
            query = query.where(older_than(BIDDER_KEYS.c.enrolled_at, BIDDER_KEYS.c.fingerprint, before))
        newest_first = (BIDDER_KEYS.c.enrolled_at.desc(), BIDDER_KEYS.c.fingerprint.desc())
        result = await self._uow.connection.execute(query.order_by(*newest_first).limit(limit))
        return [self._track(_bidder_key(row)) for row in result.all()]

    async def add(self, key: bidder_keys.BidderKey) -> None:
        row = {
            "fingerprint": key.fingerprint,
            "bidder": key.bidder,
            "public_key": key.public_key,
            "enrolled_at": key.enrolled_at,
            "retired_at": key.retired_at,
        }
        await _INSERT_BIDDER_KEY.insert(self._uow.connection, [row])
        self._track(key)

    async def save(self) -> None:
        for fingerprint, (key, retired_at) in self._loaded.items():
            if key.retired_at != retired_at:
                await self._uow.connection.execute(
                    _RETIRE_BIDDER_KEY, {"fp": fingerprint, "retired_at": key.retired_at}
                )
                self._loaded[fingerprint] = (key, key.retired_at)


# -- the unit of work ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptKey:
    """The service's own Ed25519 key for signing bid receipts (it opens nothing)."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return sealing.raw_public(self.private)


class TenderingUnitOfWork(UnitOfWork):
    calls: CallRepository
    bids: BidRepository
    shares: ShareRepository
    frameworks: FrameworkRepository
    call_offs: CallOffRepository
    suspensions: SuspensionRepository
    bidder_keys: BidderKeyRepository

    def __init__(
        self, context: Context, now: datetime, read_only: bool, *, receipt_key: ReceiptKey, cache: CallCache
    ) -> None:
        super().__init__(context, now, read_only=read_only)
        self.receipt_key = receipt_key
        self._cache = cache

    async def bind(self, session: AsyncSession) -> None:
        await super().bind(session)
        self.calls = CallRepository(session, self, self._cache)
        self.bids = BidRepository(self)
        self.shares = ShareRepository(self)
        self.frameworks = FrameworkRepository(session, self)
        self.call_offs = CallOffRepository(session, self)
        self.suspensions = SuspensionRepository(self)
        self.bidder_keys = BidderKeyRepository(session, self)

    async def save(self) -> None:
        await self.calls.save()
        await self.frameworks.save()
        await self.call_offs.save()
        await self.bids.save()
        await self.bidder_keys.save()


def unit_of_work_factory(
    receipt_key: ReceiptKey, cache: CallCache | None = None
) -> Callable[[Context, datetime, bool], TenderingUnitOfWork]:
    shared = cache or CallCache()

    def make(context: Context, now: datetime, read_only: bool) -> TenderingUnitOfWork:
        return TenderingUnitOfWork(context, now, read_only, receipt_key=receipt_key, cache=shared)

    return make

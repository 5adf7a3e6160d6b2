"""The audit trail: one record per state-changing unit of work, each holding the hash of the one
before it, so a changed, deleted or reordered record breaks the chain where it happened."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import connection_of
from services.runtime.fastinsert import TableInserter
from services.runtime.prepared import Prepared
from services.runtime.tables import AuditRecord

GENESIS = "0" * 64
"""The previous hash of the first record."""


@dataclass(frozen=True)
class AuditEntry:
    """What a unit of work did, before it is linked into the chain."""

    recorded_at: datetime
    actor: str
    command: str
    resources: tuple[str, ...]
    events: tuple[tuple[str, str, str], ...]
    """(event id, event type, hex SHA-256 of the payload) per event."""
    correlation_id: str = ""


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: str


EMPTY_CHAIN = ChainHead(0, GENESIS)


def record_hash(  # noqa: PLR0917 - the record's fields, in the order they are hashed
    seq: int,
    prev_hash: str,
    recorded_at: datetime,
    actor: str,
    command: str,
    resources: str,
    events: str,
    correlation_id: str,
) -> str:
    """SHA-256 over the record's fields in a fixed order, the position and the previous hash included."""
    canonical = json.dumps(
        [seq, prev_hash, recorded_at.isoformat(), actor, command, resources, events, correlation_id],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def link(entry: AuditEntry, head: ChainHead) -> dict[str, object]:
    """The audit_log row (column values) for `entry` placed after `head`."""
    seq = head.seq + 1
    resources = json.dumps(list(entry.resources), separators=(",", ":"), ensure_ascii=False)
    events = json.dumps([list(e) for e in entry.events], separators=(",", ":"))
    # Hash what the database will give back: microseconds are all both dialects keep.
    recorded_at = entry.recorded_at
    return dict(
        seq=seq,
        recorded_at=recorded_at,
        actor=entry.actor[:255],
        command=entry.command[:255],
        resources=resources,
        events=events,
        correlation_id=entry.correlation_id[:128],
        prev_hash=head.hash,
        hash=record_hash(
            seq,
            head.hash,
            recorded_at,
            entry.actor[:255],
            entry.command[:255],
            resources,
            events,
            entry.correlation_id[:128],
        ),
    )


AUDIT_LOG = AuditRecord.__table__  # type: ignore[attr-defined]
_APPEND = TableInserter(AUDIT_LOG)


# Read at the start of every write batch: prepared once.
_HEAD = Prepared(sa_select(AUDIT_LOG.c.seq, AUDIT_LOG.c.hash).order_by(AUDIT_LOG.c.seq.desc()).limit(1))


async def chain_head(session: AsyncSession) -> ChainHead:
    row = (await _HEAD.execute(await connection_of(session))).first()
    return ChainHead(row.seq, row.hash) if row is not None else EMPTY_CHAIN


async def append(session: AsyncSession, entry: AuditEntry, head: ChainHead) -> ChainHead:
    """Writes `entry` after `head`; the new head."""
    row = link(entry, head)
    await _APPEND.insert(await connection_of(session), [row])
    return ChainHead(int(row["seq"]), str(row["hash"]))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: how many records held, and the first broken link if any."""

    records: int
    broken_at: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify_records(records: Sequence[AuditRecord], prev: str = GENESIS, first_seq: int = 1) -> Verdict:
    """Checks records in stored order (by seq) as the continuation of a chain ending in `prev`:
    positions without gaps, each hash recomputed from its fields, each previous hash equal
    to the hash of the record before it. `records` on the verdict counts the sound ones."""
    expected_prev, expected_seq = prev, first_seq
    for count, record in enumerate(records):
        if record.seq != expected_seq:
            return Verdict(
                count, record.seq, f"record {record.seq} follows {expected_seq - 1}: records are missing"
            )
        recomputed = record_hash(
            record.seq,
            record.prev_hash,
            record.recorded_at,
            record.actor,
            record.command,
            record.resources,
            record.events,
            record.correlation_id,
        )
        if recomputed != record.hash:
            return Verdict(
                count, record.seq, f"record {record.seq} was changed: its hash does not match its content"
            )
        if record.prev_hash != expected_prev:
            return Verdict(
                count,
                record.seq,
                f"record {record.seq} does not follow record {record.seq - 1}: "
                "the chain was reordered or rewritten",
            )
        expected_prev, expected_seq = record.hash, record.seq + 1
    return Verdict(len(records))


async def verify_chain(session: AsyncSession, page_size: int = 1000) -> Verdict:
    """Checks the whole chain of the service database behind `session`, a page at a time."""
    prev, next_seq, total = GENESIS, 1, 0
    while True:
        rows = list(
            (
                await session.exec(
                    select(AuditRecord)
                    .where(col(AuditRecord.seq) >= next_seq)
                    .order_by(col(AuditRecord.seq))
                    .limit(page_size)
                )
            ).all()
        )
        if not rows:
            return Verdict(total)
        verdict = verify_records(rows, prev, next_seq)
        if not verdict.intact:
            return Verdict(total + verdict.records, verdict.broken_at, verdict.problem)
        total += len(rows)
        prev, next_seq = rows[-1].hash, rows[-1].seq + 1

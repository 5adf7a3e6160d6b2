"""`kasvu deadletters list|replay SERVICE`: the events a service's consumers gave up on, and asking
the service to apply chosen ones again (its leased worker replays them; the inbox keeps each once)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import update
from sqlmodel import col, select

from services.runtime.db import Database, utcnow
from services.runtime.tables import DeadLetter


async def _list(url: str, include_replayed: bool) -> list[DeadLetter]:
    db = Database(url)
    try:
        async with db.read_session() as session:
            query = select(DeadLetter).order_by(col(DeadLetter.id))
            if not include_replayed:
                query = query.where(col(DeadLetter.replayed_at).is_(None))
            return list((await session.exec(query)).all())
    finally:
        await db.dispose()


async def _request_replay(url: str, ids: Sequence[int]) -> int:
    db = Database(url)
    try:
        async with db.writer.begin() as connection:
            result = await connection.execute(
                update(DeadLetter)
                .where(col(DeadLetter.id).in_(list(ids)), col(DeadLetter.replayed_at).is_(None))
                .values(replay_requested_at=utcnow())
            )
            return int(result.rowcount)
    finally:
        await db.dispose()


def list_dead_letters(service: str, url: str, *, include_replayed: bool = False) -> int:
    rows = asyncio.run(_list(url, include_replayed))
    if not rows:
        print(f"{service}: no dead letters")
        return 0
    print(f"{'id':>6}  {'consumer':<24} {'stream seq':>10}  {'event id':<32}  deliveries  error")
    for row in rows:
        state = (
            f" (replayed: {row.replay_outcome})"
            if row.replayed_at
            else (" (replay requested)" if row.replay_requested_at else "")
        )
        print(
            f"{row.id:>6}  {row.consumer:<24} {row.stream_seq:>10}  {row.event_id:<32}  "
            f"{row.deliveries:>10}  {row.error}{state}"
        )
    return 0


def replay_dead_letters(service: str, url: str, ids: Sequence[int]) -> int:
    marked = asyncio.run(_request_replay(url, ids))
    print(f"{service}: replay requested for {marked} dead letter(s); the running service applies them")
    return 0 if marked == len(ids) else 1

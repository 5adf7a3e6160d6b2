"""`kasvu audit verify SERVICE`: recomputes a service's audit chain from its database and names the
first broken link, or prints the head an operator can keep elsewhere to catch truncation later."""

from __future__ import annotations

import asyncio
import sys

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.audit import Verdict, verify_chain
from services.runtime.db import Database
from services.runtime.tables import AuditRecord


async def _service_check(service: str, session: AsyncSession) -> str:
    """A service's own check that what it stores is what its audit chain recorded ("" when so)."""
    if service == "registry":
        from services.registry.store import verify_decisions

        return await verify_decisions(session)
    return ""


async def check(url: str, expect: str = "", service: str = "") -> tuple[Verdict, str]:
    """The verdict on the chain and a line about the expected head ("" when none was given)."""
    db = Database(url)
    try:
        async with db.read_session() as session:
            verdict = await verify_chain(session)
            if verdict.intact and (problem := await _service_check(service, session)):
                return verdict, problem
            if not expect or not verdict.intact:
                return verdict, ""
            seq_text, _, expected_hash = expect.partition(":")
            record = (
                await session.exec(select(AuditRecord).where(col(AuditRecord.seq) == int(seq_text)))
            ).first()
            if record is None:
                return verdict, f"record {seq_text} is missing: the chain was cut short"
            if record.hash != expected_hash:
                return verdict, f"record {seq_text} has another hash than the expected head"
            return verdict, ""
    finally:
        await db.dispose()


async def head(url: str) -> str:
    db = Database(url)
    try:
        async with db.read_session() as session:
            record = (
                await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(1))
            ).first()
            return f"{record.seq}:{record.hash}" if record is not None else "0:"
    finally:
        await db.dispose()


def verify_service(service: str, url: str, *, expect: str = "") -> int:
    if expect and (
        ":" not in expect or not expect.partition(":")[0].isascii() or not expect.partition(":")[0].isdigit()
    ):
        print("--expect must be SEQ:HASH as printed by an earlier run", file=sys.stderr)
        return 2
    verdict, expectation = asyncio.run(check(url, expect, service))
    if not verdict.intact:
        print(f"{service}: audit chain BROKEN at record {verdict.broken_at}: {verdict.problem}")
        print(f"{service}: {verdict.records} records before it are sound")
        return 1
    if expectation:
        print(f"{service}: audit chain BROKEN: {expectation}")
        return 1
    print(f"{service}: audit chain intact, {verdict.records} records; head {asyncio.run(head(url))}")
    return 0

"""Shared builders for the integration tests: business IDs, signed registrations, tokens,
a real gRPC server on a free port, row counts and rich error details."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.rpc import error_details_pb2
from google.type import date_pb2
from grpc_status import rpc_status
from kasvu.registry.v1 import registry_pb2
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from sqlalchemy import text

from services.runtime.auth import Principal, Role, TokenVerifier, generate_keypair, mint_token
from services.runtime.clock import SYSTEM_CLOCK, Clock
from services.runtime.db import Database
from services.runtime.dispatch import Dispatcher, EventTypes
from services.runtime.domain import business_id_check_digit
from services.runtime.grpc_server import EdgeInterceptor
from services.runtime.uow import Context, UnitOfWork
from services.runtime.writer import write_path_for

FINLAND = ZoneInfo("Europe/Helsinki")


def finnish_today() -> date:
    return datetime.now(FINLAND).date()


def proto_date(day: date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


# -- business IDs ---------------------------------------------------------------------------


def business_ids(start: int = 1_234_560) -> Callable[[], str]:
    """A source of distinct, valid business IDs (Y-tunnus) in increasing order."""
    bodies = itertools.count(start)

    def next_id() -> str:
        for number in bodies:
            body = f"{number:07d}"
            digit = business_id_check_digit(body)
            if digit is not None:
                return f"{body}-{digit}"
        raise AssertionError("unreachable")

    return next_id


def with_wrong_check_digit(business_id: str) -> str:
    body, digit = business_id.split("-")
    return f"{body}-{(int(digit) + 1) % 10}"


# -- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """Mints bearer tokens that the server's verifier accepts."""

    private_pem: bytes
    public_key_file: Path

    @classmethod
    def generate(cls, directory: Path) -> Tokens:
        private, public = generate_keypair(directory)
        return cls(private.read_bytes(), public)

    def principal(self, role: Role, organisation: str) -> Principal:
        return Principal(role=role, organisation=organisation, subject=f"{role.value}@{organisation}")

    def metadata(self, role: Role, organisation: str) -> tuple[tuple[str, str], ...]:
        token = mint_token(self.private_pem, self.principal(role, organisation))
        return (("authorization", f"Bearer {token}"),)

    def admin(self, region: str) -> tuple[tuple[str, str], ...]:
        return self.metadata(Role.REGION_ADMIN, region)

    def supervisor(self, region: str) -> tuple[tuple[str, str], ...]:
        return self.metadata(Role.SUPERVISOR, region)

    def provider(self, business_id: str) -> tuple[tuple[str, str], ...]:
        return self.metadata(Role.PROVIDER, business_id)


# -- gRPC -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    tokens: Tokens, add_servicer: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> AsyncIterator[grpc.aio.Channel]:
    """A real grpc.aio server on a free port behind the suite's edge interceptor; yields a channel to it."""
    server = grpc.aio.server(interceptors=[EdgeInterceptor(TokenVerifier(tokens.public_key_file))])
    add_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(grace=None)


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The field paths of the google.rpc.BadRequest carried in the error's status details."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason in the error's status details ("" when there is none)."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


# -- database -------------------------------------------------------------------------------


async def count_rows(db: Database, table: str, where: str = "", **params: Any) -> int:
    """SELECT count(*) on a real table; `where` is a SQL condition with :named parameters."""
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
    async with db.reader.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


async def outbox_counts(db: Database) -> dict[str, int]:
    """Outbox rows per event type."""
    async with db.reader.connect() as connection:
        rows = (
            await connection.execute(text("SELECT event_type, count(*) FROM outbox GROUP BY event_type"))
        ).all()
    return {str(event_type): int(count) for event_type, count in rows}


# -- registry builders ----------------------------------------------------------------------


def declaration(code: str = "prepayment-register") -> registry_pb2.Requirement:
    return registry_pb2.Requirement(
        code=code,
        description="Entered in the prepayment register",
        kind=registry_pb2.REQUIREMENT_KIND_DECLARATION,
    )


def document(code: str = "tax-certificate", max_age_days: int = 90) -> registry_pb2.Requirement:
    return registry_pb2.Requirement(
        code=code,
        description="Tax debt certificate",
        kind=registry_pb2.REQUIREMENT_KIND_DOCUMENT,
        max_age_days=max_age_days,
    )


@dataclass
class ProviderKey:
    """A provider's Ed25519 key with which it commits to terms."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, content_hash: str) -> bytes:
        return self.key.sign(bytes.fromhex(content_hash))


def registration_request(
    terms: registry_pb2.Terms,
    business_id: str,
    evidence: Sequence[registry_pb2.Evidence],
    *,
    key: ProviderKey | None = None,
    signed_hash: str | None = None,
    display_name: str = "Osaajat Oy",
    request_id: str = "",
    terms_name: str | None = None,
) -> registry_pb2.RegisterProviderRequest:
    """A registration against `terms`, signed over its content hash unless `signed_hash` says otherwise."""
    key = key or ProviderKey()
    name = terms_name or terms.name
    parent = name.rsplit("/terms/", 1)[0]
    return registry_pb2.RegisterProviderRequest(
        parent=parent,
        registration=registry_pb2.Registration(
            terms=name,
            business_id=business_id,
            display_name=display_name,
            evidence=list(evidence),
            public_key=key.public_key,
            terms_signature=key.sign(signed_hash or terms.content_hash),
        ),
        request_id=request_id,
    )


def declared(code: str = "prepayment-register") -> registry_pb2.Evidence:
    return registry_pb2.Evidence(requirement_code=code, declared=True)


def issued(code: str, on: date) -> registry_pb2.Evidence:
    return registry_pb2.Evidence(requirement_code=code, issued_on=proto_date(on))


# -- the dispatcher -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def dispatching(
    db: Database,
    *,
    service: str,
    unit_of_work: Callable[[Context, datetime, bool], UnitOfWork],
    event_types: EventTypes,
    handlers: Mapping[type[Any], Any],
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[Dispatcher]:
    """A service's dispatcher over a real database, its write path closed on the way out."""
    write_path = write_path_for(db)
    dispatcher = Dispatcher(
        service=service,
        db=db,
        write_path=write_path,
        unit_of_work=unit_of_work,
        event_types=event_types,
        clock=clock,
    )
    dispatcher.register_all(handlers)
    try:
        yield dispatcher
    finally:
        await write_path.close()


class AlertReader:
    """The alerts of a StreamAlerts call one by one, across the batches the stream carries."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._waiting: list[selfmonitoring_pb2.Alert] = []

    async def next(self, timeout_s: float = 10.0) -> selfmonitoring_pb2.Alert:
        """The next alert; AioRpcError when the stream ends with an error."""
        while not self._waiting:
            response = await asyncio.wait_for(self.call.read(), timeout_s)
            assert response is not grpc.aio.EOF, "the stream ended"
            self._waiting.extend(response.alerts)
        return self._waiting.pop(0)

    def cancel(self) -> None:
        self.call.cancel()

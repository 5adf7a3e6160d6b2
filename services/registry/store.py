"""Registry storage: tables and the translation between rows and the domain model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.registry import model
from services.runtime.db import utc_field, utcnow


class TermsRow(SQLModel, table=True):
    """A published terms version; never updated."""

    __tablename__ = "registry_terms"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    version: int = Field(primary_key=True)
    title: str = Field(max_length=200)
    requirements_json: str
    content_hash: str = Field(max_length=64)
    published_at: datetime = utc_field(default_factory=utcnow)


class RegistrationRow(SQLModel, table=True):
    """A registration and its current decision; the evidence is kept for the record."""

    __tablename__ = "registry_registrations"
    # Serves the public list: admitted providers of a region and service by business ID.
    __table_args__ = (
        Index("ix_registry_registrations_listing", "region", "service", "state", "business_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    service: str = Field(max_length=63)
    terms_version: int
    business_id: str = Field(max_length=9, index=True)
    display_name: str = Field(max_length=200)
    public_key: bytes
    evidence_json: str
    state: str = Field(max_length=16)
    reasons_json: str
    suspended_by_breach: str = Field(default="", max_length=255)
    # Set while the registration is admitted or suspended, NULL otherwise: the unique
    # constraint then allows one active registration per provider, region and service
    # on both SQLite and PostgreSQL (NULLs never collide).
    active_key: str | None = Field(default=None, unique=True, max_length=140)
    created_at: datetime = utc_field()
    updated_at: datetime = utc_field()


REGISTRY_TABLES = ("registry_terms", "registry_registrations")


def terms_from_row(row: TermsRow) -> model.Terms:
    return model.Terms(
        region=row.region,
        service=row.service,
        version=row.version,
        title=row.title,
        requirements=tuple(
            model.Requirement(
                code=r["code"],
                description=r["description"],
                kind=model.RequirementKind(r["kind"]),
                max_age_days=r["max_age_days"],
            )
            for r in json.loads(row.requirements_json)
        ),
    )


def row_from_terms(terms: model.Terms, published_at: datetime) -> TermsRow:
    return TermsRow(
        region=terms.region,
        service=terms.service,
        version=terms.version,
        title=terms.title,
        requirements_json=json.dumps(
            [
                {
                    "code": r.code,
                    "description": r.description,
                    "kind": str(r.kind),
                    "max_age_days": r.max_age_days,
                }
                for r in terms.requirements
            ]
        ),
        content_hash=terms.content_hash,
        published_at=published_at,
    )


def _active_key(registration: model.Registration) -> str | None:
    if registration.state == model.RegistrationState.REJECTED:
        return None
    return f"{registration.region}/{registration.service}/{registration.business_id}"


def _reasons_json(reasons: Sequence[model.Reason]) -> str:
    return json.dumps([{"code": r.code, "subject": r.subject, "message": r.message} for r in reasons])


def row_from_registration(
    registration: model.Registration, public_key: bytes, evidence: Sequence[model.Evidence]
) -> RegistrationRow:
    return RegistrationRow(
        id=registration.id,
        region=registration.region,
        service=registration.service,
        terms_version=registration.terms_version,
        business_id=registration.business_id,
        display_name=registration.display_name,
        public_key=public_key,
        evidence_json=json.dumps(
            [
                {
                    "requirement_code": e.requirement_code,
                    "declared": e.declared,
                    "issued_on": e.issued_on.isoformat() if e.issued_on else None,
                    "document_sha256": e.document_sha256,
                }
                for e in evidence
            ]
        ),
        state=str(registration.state),
        reasons_json=_reasons_json(registration.reasons),
        suspended_by_breach=registration.suspended_by_breach,
        active_key=_active_key(registration),
        created_at=registration.created_at,
        updated_at=registration.updated_at,
    )


def registration_from_row(row: RegistrationRow) -> model.Registration:
    return model.Registration(
        id=row.id,
        region=row.region,
        service=row.service,
        terms_version=row.terms_version,
        business_id=row.business_id,
        display_name=row.display_name,
        state=model.RegistrationState(row.state),
        reasons=[model.Reason(**r) for r in json.loads(row.reasons_json)],
        created_at=row.created_at,
        updated_at=row.updated_at,
        suspended_by_breach=row.suspended_by_breach,
    )


def apply_registration(row: RegistrationRow, registration: model.Registration) -> None:
    """Writes a changed aggregate's state back onto its row."""
    row.state = str(registration.state)
    row.reasons_json = _reasons_json(registration.reasons)
    row.suspended_by_breach = registration.suspended_by_breach
    row.active_key = _active_key(registration)
    row.updated_at = registration.updated_at


def evidence_from_row(row: RegistrationRow) -> list[dict[str, Any]]:
    return list(json.loads(row.evidence_json))


async def latest_terms_version(session: AsyncSession, region: str, service: str) -> int:
    result = await session.exec(
        select(func.max(TermsRow.version)).where(TermsRow.region == region, TermsRow.service == service)
    )
    return int(result.one() or 0)


async def get_terms_row(session: AsyncSession, region: str, service: str, version: int) -> TermsRow | None:
    return await session.get(TermsRow, (region, service, version))


async def active_registrations_of(
    session: AsyncSession, region: str, business_id: str, service: str = ""
) -> Sequence[RegistrationRow]:
    query = select(RegistrationRow).where(
        RegistrationRow.region == region,
        RegistrationRow.business_id == business_id,
        col(RegistrationRow.active_key).is_not(None),
    )
    if service:
        query = query.where(RegistrationRow.service == service)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await session.exec(query)).all()


async def admitted_page(
    session: AsyncSession, region: str, service: str, after_business_id: str, limit: int
) -> Sequence[RegistrationRow]:
    """Keyset pagination by business ID: stable while providers come and go."""
    query = (
        select(RegistrationRow)
        .where(
            RegistrationRow.region == region,
            RegistrationRow.service == service,
            RegistrationRow.state == str(model.RegistrationState.ADMITTED),
            col(RegistrationRow.business_id) > after_business_id,
        )
        .order_by(col(RegistrationRow.business_id))
        .limit(limit)
    )
    return (await session.exec(query)).all()

"""Registry storage: tables, repositories that take and return domain objects, and the
registry's unit of work that carries them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Index, and_, bindparam, delete, false, insert, inspect, or_, update
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.registry import catalogue, model
from services.runtime import codec
from services.runtime.db import serialize_on
from services.runtime.fastinsert import TableInserter
from services.runtime.prepared import Prepared
from services.runtime.tables import AuditRecord, utc_field, utcnow
from services.runtime.uow import Context, UnitOfWork


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
    sections_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    general_terms_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """The version of the region's general part the terms pin; 0: none."""


class GeneralTermsRow(SQLModel, table=True):
    """A published version of a region's general terms; never updated."""

    __tablename__ = "registry_general_terms"

    region: str = Field(primary_key=True, max_length=63)
    version: int = Field(primary_key=True)
    title: str = Field(max_length=200)
    requirements_json: str
    sections_json: str
    content_hash: str = Field(max_length=64)
    published_at: datetime = utc_field()


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
    municipalities_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    languages_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    price: str = Field(default="", max_length=20, sa_column_kwargs={"server_default": ""})
    """Decimal euros as text ("" when not given): exact on both SQLite and PostgreSQL."""
    decisions_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    recommit_deadline: datetime | None = utc_field(default=None)
    lift_time: datetime | None = utc_field(default=None)
    legal_form: str = Field(
        default="UNSPECIFIED", max_length=20, sa_column_kwargs={"server_default": "UNSPECIFIED"}
    )
    qualifications_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    keys_json: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    """Every key the registration has held (hex, added, retired); public_key is the newest live one."""


class MarketFailureRow(SQLModel, table=True):
    """A market-failure finding from tendering's events, as the registry honours it."""

    __tablename__ = "registry_market_failures"
    __table_args__ = (Index("ix_registry_market_failures_scope", "region", "service"),)

    finding: str = Field(primary_key=True, max_length=255)
    region: str = Field(max_length=63)
    service: str = Field(max_length=63)
    municipalities_json: str
    valid_from: datetime = utc_field()
    valid_until: datetime | None = utc_field(default=None)
    lifted_at: datetime | None = utc_field(default=None)


class ListingRow(SQLModel, table=True):
    """The public list as a read model: one row per admitted, unsuspended registration and each
    (municipality, language) it serves, "" standing for "any". Written in the same unit of work
    as the registration's change, so a listing is one index range scan and never joins history."""

    __tablename__ = "registry_listings"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    municipality: str = Field(primary_key=True, max_length=3)
    language: str = Field(primary_key=True, max_length=2)
    business_id: str = Field(primary_key=True, max_length=9)
    registration: str = Field(max_length=64, index=True)
    display_name: str = Field(max_length=200)
    terms_version: int
    municipalities_json: str
    languages_json: str
    price: str = Field(max_length=20)
    admit_time: datetime = utc_field()


class PendingBreachRow(SQLModel, table=True):
    """A breach against a provider with no admission in that scope yet: it takes effect on admission."""

    __tablename__ = "registry_pending_breaches"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    business_id: str = Field(primary_key=True, max_length=9)
    breach: str = Field(primary_key=True, max_length=255)
    received_at: datetime = utc_field()


class ServiceRow(SQLModel, table=True):
    """A service an organiser added to the national catalogue for itself."""

    __tablename__ = "registry_services"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    display_name: str = Field(max_length=200)
    created_at: datetime = utc_field()


class BreachPolicyRow(SQLModel, table=True):
    """A region's breach policy; absent means the default (a serious breach suspends until reinstated)."""

    __tablename__ = "registry_breach_policies"

    region: str = Field(primary_key=True, max_length=63)
    suspending_severities_json: str
    services_json: str
    suspend_days: int
    updated_at: datetime = utc_field()
    reinstate_on_resolution: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ContactDetailsRow(SQLModel, table=True):
    """A provider's contact details: personal data, kept apart from the registrations and the
    public list, read by the provider and the admins of its regions only."""

    __tablename__ = "registry_contact_details"

    business_id: str = Field(primary_key=True, max_length=9)
    contact_person: str = Field(max_length=200)
    email: str = Field(max_length=254)
    phone: str = Field(max_length=16)
    updated_at: datetime = utc_field()


REGISTRY_TABLES = (
    "registry_terms",
    "registry_general_terms",
    "registry_registrations",
    "registry_listings",
    "registry_pending_breaches",
    "registry_breach_policies",
    "registry_market_failures",
    "registry_services",
    "registry_contact_details",
)
LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
PENDING_BREACHES = PendingBreachRow.__table__  # type: ignore[attr-defined]
REGISTRATIONS = RegistrationRow.__table__  # type: ignore[attr-defined]
TERMS = TermsRow.__table__  # type: ignore[attr-defined]
# Statements built once, their values passed at execution: SQLAlchemy then reuses the compiled
# form instead of building and hashing a new statement per row.
_INSERT_REGISTRATION = TableInserter(REGISTRATIONS)
_BY_ID = Prepared(select(REGISTRATIONS).where(REGISTRATIONS.c.id == bindparam("registration_id")))
_ACTIVE = Prepared(select(REGISTRATIONS).where(REGISTRATIONS.c.active_key == bindparam("active_key")))
_REGISTRATION_UPDATES: dict[tuple[str, ...], Prepared] = {}


def _update_registration(columns: tuple[str, ...]) -> Prepared:
    """The UPDATE of a registration's changeable columns, prepared once per set of columns."""
    if (prepared := _REGISTRATION_UPDATES.get(columns)) is None:
        prepared = _REGISTRATION_UPDATES[columns] = Prepared(
            update(REGISTRATIONS)
            .where(REGISTRATIONS.c.id == bindparam("registration_id"))
            .values({name: bindparam(name) for name in columns})
        )
    return prepared


_INSERT_LISTING = TableInserter(LISTINGS)
_REGISTERED_IN = Prepared(
    select(REGISTRATIONS.c.id)
    .where(
        REGISTRATIONS.c.business_id == bindparam("business_id"),
        REGISTRATIONS.c.region == bindparam("region"),
    )
    .limit(1)
)
_NEWER_TERMS = Prepared(
    select(TERMS.c.version)
    .where(
        TERMS.c.region == bindparam("region"),
        TERMS.c.service == bindparam("service"),
        TERMS.c.version > bindparam("version"),
    )
    .limit(1)
)
_PENDING = Prepared(
    select(PENDING_BREACHES.c.breach)
    .where(
        PENDING_BREACHES.c.region == bindparam("region"),
        PENDING_BREACHES.c.service == bindparam("service"),
        PENDING_BREACHES.c.business_id == bindparam("business_id"),
    )
    .order_by(PENDING_BREACHES.c.received_at)
)
_DELETE_LISTING = Prepared(delete(LISTINGS).where(LISTINGS.c.registration == bindparam("registration_id")))
_BREACH_POLICY = Prepared(
    select(BreachPolicyRow.__table__).where(BreachPolicyRow.__table__.c.region == bindparam("region"))  # type: ignore[attr-defined]
)
_LISTING_PAGE = Prepared(
    select(LISTINGS)
    .where(
        LISTINGS.c.region == bindparam("region"),
        LISTINGS.c.service == bindparam("service"),
        LISTINGS.c.municipality == bindparam("municipality"),
        LISTINGS.c.language == bindparam("language"),
        LISTINGS.c.business_id > bindparam("after"),
    )
    .order_by(LISTINGS.c.business_id)
    .limit(bindparam("limit"))
)


# -- rows <-> domain ------------------------------------------------------------------------------


def _requirements_json(requirements: Sequence[model.Requirement]) -> str:
    return json.dumps(
        [
            {
                "code": r.code,
                "description": r.description,
                "kind": str(r.kind),
                "max_age_days": r.max_age_days,
                "decided_by": str(r.decided_by),
                "legal_basis": r.legal_basis,
                "valid_days": r.valid_days,
                "attribute": str(r.attribute),
                "values": list(r.values),
                "price_ceiling": "" if r.price_ceiling is None else str(r.price_ceiling),
            }
            for r in requirements
        ]
    )


def _requirements(text: str) -> tuple[model.Requirement, ...]:
    return tuple(
        model.Requirement(
            code=r["code"],
            description=r["description"],
            kind=model.RequirementKind(r["kind"]),
            max_age_days=r["max_age_days"],
            decided_by=model.Decider(r.get("decided_by", "AUTOMATIC")),
            legal_basis=r.get("legal_basis", ""),
            valid_days=r.get("valid_days", model.DEFAULT_VALID_DAYS),
            attribute=model.Attribute(r.get("attribute", "UNSPECIFIED")),
            values=tuple(r.get("values", ())),
            price_ceiling=Decimal(r["price_ceiling"]) if r.get("price_ceiling") else None,
        )
        for r in json.loads(text)
    )


def _sections_json(sections: Sequence[model.Section]) -> str:
    return json.dumps([{"topic": str(s.topic), "text": s.text} for s in sections], ensure_ascii=False)


def _sections(text: str) -> tuple[model.Section, ...]:
    return tuple(model.Section(model.SectionTopic(s["topic"]), s["text"]) for s in json.loads(text))


def terms_from_row(row: TermsRow, general: model.GeneralTerms | None = None) -> model.Terms:
    """The terms of a row; `general` is the general part the row pins (general_terms_version)."""
    if (general.version if general is not None else 0) != row.general_terms_version:
        raise ValueError(f"terms {row.region}/{row.service}/{row.version} pin another general part")
    return model.Terms(
        region=row.region,
        service=row.service,
        version=row.version,
        title=row.title,
        requirements=_requirements(row.requirements_json),
        published_at=row.published_at,
        sections=_sections(row.sections_json),
        general=general,
    )


def general_terms_from_row(row: GeneralTermsRow) -> model.GeneralTerms:
    return model.GeneralTerms(
        region=row.region,
        version=row.version,
        title=row.title,
        requirements=_requirements(row.requirements_json),
        sections=_sections(row.sections_json),
        published_at=row.published_at,
    )


def _evidence_json(evidence: Sequence[model.Evidence]) -> str:
    return json.dumps(
        [
            {
                "requirement_code": e.requirement_code,
                "declared": e.declared,
                "issued_on": e.issued_on.isoformat() if e.issued_on else None,
                "document_sha256": e.document_sha256,
            }
            for e in evidence
        ]
    )


def _evidence(text: str) -> tuple[model.Evidence, ...]:
    return tuple(
        model.Evidence(
            requirement_code=e["requirement_code"],
            declared=e["declared"],
            issued_on=date.fromisoformat(e["issued_on"]) if e["issued_on"] else None,
            document_sha256=e["document_sha256"],
        )
        for e in json.loads(text)
    )


def keys_json(keys: Sequence[model.RegistrationKey]) -> str:
    """A registration's keys as stored; the migration that introduced them writes the same shape."""
    return json.dumps(
        [
            {
                "public_key": k.public_key.hex(),
                "add_time": k.add_time.isoformat(),
                "retire_time": k.retire_time.isoformat() if k.retire_time else None,
            }
            for k in keys
        ]
    )


def _keys(text: str) -> tuple[model.RegistrationKey, ...]:
    return tuple(
        model.RegistrationKey(
            bytes.fromhex(k["public_key"]),
            datetime.fromisoformat(k["add_time"]),
            datetime.fromisoformat(k["retire_time"]) if k["retire_time"] else None,
        )
        for k in json.loads(text)
    )


def _reasons_json(reasons: Sequence[model.Reason]) -> str:
    return json.dumps([{"code": r.code, "subject": r.subject, "message": r.message} for r in reasons])


def _decisions_json(decisions: Sequence[model.Decision]) -> str:
    return codec.dumps(list(decisions))


def _decisions(text: str) -> list[model.Decision]:
    return codec.loads(list[model.Decision], text)


def decision_resource(registration_id: str, index: int, decision: model.Decision) -> str:
    """How the audit trail names a decision: its place and a digest of its canonical form, so
    `kasvu audit verify registry` finds a stored decision that was altered afterwards."""
    digest = hashlib.sha256(codec.dumps(decision).encode()).hexdigest()
    return f"decision:{registration_id}:{index}:{digest}"


async def verify_decisions(session: AsyncSession) -> str:
    """Every stored decision must be the one the audit chain recorded; "" when all are, else
    what differs. (The chain's own integrity is `services.runtime.audit.verify_chain`'s.) A
    database without the registry's tables holds no decisions to check."""
    if not await session.run_sync(lambda sync: inspect(sync.connection()).has_table(REGISTRATIONS.name)):
        return ""
    audited: set[str] = set()
    for resources in (await session.exec(select(AuditRecord.resources))).all():
        audited.update(r for r in json.loads(resources) if r.startswith("decision:"))
    stored: set[str] = set()
    rows = await session.exec(select(RegistrationRow.id, RegistrationRow.decisions_json))
    for registration_id, decisions_json in rows.all():
        for index, decision in enumerate(_decisions(decisions_json)):
            resource = decision_resource(registration_id, index, decision)
            stored.add(resource)
            if resource not in audited:
                return f"decision {index} of registration {registration_id} differs from the audited one"
    if missing := sorted(audited - stored):
        return f"an audited decision is no longer stored: {missing[0].rsplit(':', 1)[0]}"
    return ""


def _active_key(registration: model.Registration) -> str | None:
    if not registration.active:
        return None
    return f"{registration.region}/{registration.service}/{registration.business_id}"


def registration_from_row(row: Any) -> model.Registration:
    """A registration from its row: a RegistrationRow or a Core row mapping with the same columns."""
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
        public_key=row.public_key,
        evidence=_evidence(row.evidence_json),
        municipalities=tuple(json.loads(row.municipalities_json)),
        languages=tuple(json.loads(row.languages_json)),
        price=Decimal(row.price) if row.price else None,
        decisions=_decisions(row.decisions_json),
        recommit_deadline=row.recommit_deadline,
        lift_time=row.lift_time,
        legal_form=model.LegalForm(row.legal_form),
        qualifications=tuple(json.loads(row.qualifications_json)),
        key_history=_keys(row.keys_json),
    )


def _mutable_columns(registration: model.Registration) -> dict[str, Any]:
    """The columns a registration's decisions change; compared to know whether to write."""
    return {
        "state": str(registration.state),
        "reasons_json": _reasons_json(registration.reasons),
        "suspended_by_breach": registration.suspended_by_breach,
        "active_key": _active_key(registration),
        "updated_at": registration.updated_at,
        "terms_version": registration.terms_version,
        "evidence_json": _evidence_json(registration.evidence),
        "decisions_json": _decisions_json(registration.decisions),
        "recommit_deadline": registration.recommit_deadline,
        "lift_time": registration.lift_time,
        "public_key": registration.public_key,
        "keys_json": keys_json(registration.keys),
        # What a draft's provider may change besides the above (registry-full: drafts).
        "display_name": registration.display_name,
        "municipalities_json": json.dumps(registration.municipalities),
        "languages_json": json.dumps(registration.languages),
        "price": str(registration.price) if registration.price is not None else "",
        "legal_form": str(registration.legal_form),
        "qualifications_json": json.dumps(registration.qualifications),
    }


def _registration_columns(registration: model.Registration, mutable: dict[str, Any]) -> dict[str, Any]:
    """Every column of a new registration's row; `mutable` is its `_mutable_columns`."""
    return {
        "id": registration.id,
        "region": registration.region,
        "service": registration.service,
        "business_id": registration.business_id,
        "created_at": registration.created_at,
        **mutable,
    }


def _listing_rows(registration: model.Registration) -> list[dict[str, Any]]:
    """The read model's rows for a listed registration: every (municipality, language) pair it
    serves, and "" for "any" on either side, so each filter combination is one key prefix."""
    if not registration.listed:
        return []
    admitted = next(
        (d.decide_time for d in reversed(registration.decisions) if d.kind == model.DecisionKind.ADMISSION),
        registration.created_at,
    )
    common = {
        "region": registration.region,
        "service": registration.service,
        "business_id": registration.business_id,
        "registration": registration.id,
        "display_name": registration.display_name,
        "terms_version": registration.terms_version,
        "municipalities_json": json.dumps(registration.municipalities),
        "languages_json": json.dumps(registration.languages),
        "price": str(registration.price) if registration.price is not None else "",
        "admit_time": admitted,
    }
    return [
        {**common, "municipality": municipality, "language": language}
        for municipality in ("", *registration.municipalities)
        for language in ("", *registration.languages)
    ]


# -- repositories ---------------------------------------------------------------------------------


async def _put_row(
    session: AsyncSession, row_type: type[SQLModel], identity: dict[str, Any], values: dict[str, Any]
) -> None:
    """The row that `identity` (its primary key's columns) names gets `values`: added when missing,
    else updated; one row per key, the last write standing."""
    row = await session.get(row_type, tuple(identity.values()))
    if row is None:
        row = row_type(**identity, **values)
    else:
        row.sqlmodel_update(values)
    session.add(row)


class TermsCache:
    """Published terms never change, so every unit of work of a process may share them once read."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._terms: dict[tuple[str, str, int], model.Terms] = {}
        self._general: dict[tuple[str, int], model.GeneralTerms] = {}

    def general(self, key: tuple[str, int]) -> model.GeneralTerms | None:
        return self._general.get(key)

    def put_general(self, general: model.GeneralTerms) -> None:
        if len(self._general) >= self._capacity:
            self._general.pop(next(iter(self._general)))
        self._general[(general.region, general.version)] = general

    def get(self, key: tuple[str, str, int]) -> model.Terms | None:
        return self._terms.get(key)

    def put(self, terms: model.Terms) -> None:
        if len(self._terms) >= self._capacity:
            self._terms.pop(next(iter(self._terms)))
        self._terms[(terms.region, terms.service, terms.version)] = terms


class TermsRepository:
    def __init__(
        self, session: AsyncSession, uow: UnitOfWork, cache: TermsCache, general: GeneralTermsRepository
    ) -> None:
        self._session = session
        self._uow = uow
        self._cache = cache
        self._general = general

    async def latest_version(self, region: str, service: str) -> int:
        """The newest published version; concurrent publishers of the same terms take turns from here."""
        await serialize_on(self._session, f"registry:terms:{region}/{service}")
        return await self.current_version(region, service)

    async def all_of(self, region: str, service: str) -> list[model.Terms]:
        """Every published version, newest first."""
        result = await self._session.exec(
            select(TermsRow)
            .where(TermsRow.region == region, TermsRow.service == service)
            .order_by(col(TermsRow.version).desc())
        )
        return [await self._terms(row) for row in result.all()]

    async def current_version(self, region: str, service: str) -> int:
        """The newest published version, 0 when none; read without taking the publishers' turn."""
        result = await self._session.exec(
            select(func.max(TermsRow.version)).where(TermsRow.region == region, TermsRow.service == service)
        )
        return int(result.one() or 0)

    async def superseded(self, region: str, service: str, version: int) -> bool:
        """Whether a newer version than `version` is published: one indexed probe, on the hot path."""
        result = await _NEWER_TERMS.execute(
            self._uow.connection, {"region": region, "service": service, "version": version}
        )
        return result.first() is not None

    async def get(self, region: str, service: str, version: int) -> model.Terms | None:
        if (cached := self._cache.get((region, service, version))) is not None:
            return cached
        row = await self._session.get(TermsRow, (region, service, version))
        if row is None:
            return None
        terms = await self._terms(row)
        self._cache.put(terms)
        return terms

    async def _terms(self, row: TermsRow) -> model.Terms:
        """The terms of a row with the general part they pin."""
        general = None
        if row.general_terms_version:
            general = await self._general.get(row.region, row.general_terms_version)
        return terms_from_row(row, general)

    async def services_of(self, region: str) -> list[str]:
        """The services the region has published terms for."""
        result = await self._session.exec(
            select(TermsRow.service)
            .where(TermsRow.region == region)
            .distinct()
            .order_by(col(TermsRow.service))
        )
        return list(result.all())

    def add(self, terms: model.Terms) -> None:
        assert terms.published_at is not None, "only published terms are stored"
        self._session.add(
            TermsRow(
                region=terms.region,
                service=terms.service,
                version=terms.version,
                title=terms.title,
                requirements_json=_requirements_json(terms.requirements),
                content_hash=terms.content_hash,
                published_at=terms.published_at,
                sections_json=_sections_json(terms.sections),
                general_terms_version=terms.general.version if terms.general is not None else 0,
            )
        )
        self._uow.track(terms, terms.name)


class GeneralTermsRepository:
    """The versions of each region's general terms, in and out as domain objects."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork, cache: TermsCache) -> None:
        self._session = session
        self._uow = uow
        self._cache = cache

    async def latest_version(self, region: str) -> int:
        """The newest published version, 0 when none. Publishers of the region's general terms
        and of any of its service terms take turns from here, so a service's terms never pin a
        general part that a concurrent publication is replacing."""
        await serialize_on(self._session, f"registry:general-terms:{region}")
        result = await self._session.exec(
            select(func.max(GeneralTermsRow.version)).where(GeneralTermsRow.region == region)
        )
        return int(result.one() or 0)

    async def get(self, region: str, version: int) -> model.GeneralTerms | None:
        if (cached := self._cache.general((region, version))) is not None:
            return cached
        row = await self._session.get(GeneralTermsRow, (region, version))
        if row is None:
            return None
        general = general_terms_from_row(row)
        self._cache.put_general(general)
        return general

    async def page(self, region: str, *, before_version: int, limit: int) -> list[model.GeneralTerms]:
        """Newest first, from the version below `before_version` (0: from the newest)."""
        query = select(GeneralTermsRow).where(GeneralTermsRow.region == region)
        if before_version:
            query = query.where(GeneralTermsRow.version < before_version)
        result = await self._session.exec(query.order_by(col(GeneralTermsRow.version).desc()).limit(limit))
        return [general_terms_from_row(row) for row in result.all()]

    def add(self, general: model.GeneralTerms) -> None:
        assert general.published_at is not None, "only published general terms are stored"
        self._session.add(
            GeneralTermsRow(
                region=general.region,
                version=general.version,
                title=general.title,
                requirements_json=_requirements_json(general.requirements),
                sections_json=_sections_json(general.sections),
                content_hash=general.content_hash,
                published_at=general.published_at,
            )
        )
        self._uow.track(general, general.name)


class RegistrationRepository:
    """Registrations in and out as domain objects, by SQLAlchemy Core: this is the registry's hot
    path, and the ORM's bookkeeping would cost more than SQLite does."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow
        self._loaded: dict[str, tuple[model.Registration, dict[str, Any]]] = {}

    def _track(self, row: Any) -> model.Registration:
        known = self._loaded.get(row.id)
        if known is not None:
            return known[0]
        registration = registration_from_row(row)
        # A read-only unit never writes back, so it needs no snapshot to compare against.
        snapshot = {} if self._uow.read_only else _mutable_columns(registration)
        self._loaded[registration.id] = (registration, snapshot)
        return self._uow.track(registration, registration.name)

    async def _select(self, *conditions: Any, order_by: Any = None, limit: int | None = None) -> list[Any]:
        query = select(REGISTRATIONS).where(*conditions)
        if order_by is not None:
            query = query.order_by(order_by)
        if limit is not None:
            query = query.limit(limit)
        return list((await self._uow.connection.execute(query)).all())

    async def get(self, registration_id: str) -> model.Registration | None:
        row = (await _BY_ID.execute(self._uow.connection, {"registration_id": registration_id})).first()
        return self._track(row) if row is not None else None

    async def active_of(self, region: str, business_id: str, service: str) -> list[model.Registration]:
        """The provider's admitted or suspended registrations; concurrent writers for the same
        provider, region and service take turns from here."""
        if not self._uow.read_only:
            await serialize_on(self._session, f"registry:registration:{region}/{service}/{business_id}")
        result = await _ACTIVE.execute(
            self._uow.connection, {"active_key": f"{region}/{service}/{business_id}"}
        )
        return [self._track(row) for row in result.all()]

    async def add(self, registration: model.Registration) -> None:
        mutable = _mutable_columns(registration)
        await _INSERT_REGISTRATION.insert(
            self._uow.connection, [_registration_columns(registration, mutable)]
        )
        if listing := _listing_rows(registration):
            await _INSERT_LISTING.insert(self._uow.connection, listing)
        self._loaded[registration.id] = (registration, mutable)
        self._uow.track(registration, registration.name)
        self._audit_decisions(registration, 0)

    def _audit_decisions(self, registration: model.Registration, start: int) -> None:
        for index, decision in enumerate(registration.decisions[start:], start):
            self._uow.resources.append(decision_resource(registration.id, index, decision))

    async def listed_page(
        self,
        region: str,
        service: str,
        *,
        municipality: str,
        language: str,
        after_business_id: str,
        limit: int,
    ) -> list[model.Listing]:
        """The public list from its read model; keyset pagination by business ID, stable while
        providers come and go."""
        result = await _LISTING_PAGE.execute(
            self._uow.connection,
            {
                "region": region,
                "service": service,
                "municipality": municipality,
                "language": language,
                "after": after_business_id,
                "limit": limit,
            },
        )
        return [
            model.Listing(
                business_id=row.business_id,
                display_name=row.display_name,
                registration=model.REGISTRATION.format(
                    region=region, service=service, registration=row.registration
                ),
                terms=model.TERMS.format(region=region, service=service, version=row.terms_version),
                admit_time=row.admit_time,
                municipalities=tuple(json.loads(row.municipalities_json)),
                languages=tuple(json.loads(row.languages_json)),
                price=Decimal(row.price) if row.price else None,
            )
            for row in result.all()
        ]

    async def page(
        self,
        *,
        region: str = "",
        service: str = "",
        business_id: str = "",
        state: model.RegistrationState | None = None,
        after: tuple[str, str] = ("", ""),
        limit: int,
    ) -> list[model.Registration]:
        """Registrations by filter, oldest first (creation time, then id) for a stable keyset."""
        conditions = [
            column == value
            for column, value in (
                (REGISTRATIONS.c.region, region),
                (REGISTRATIONS.c.service, service),
                (REGISTRATIONS.c.business_id, business_id),
            )
            if value
        ]
        if state is not None:
            conditions.append(REGISTRATIONS.c.state == str(state))
        if after[1]:
            moment = datetime.fromisoformat(after[0])
            conditions.append(
                or_(
                    REGISTRATIONS.c.created_at > moment,
                    and_(REGISTRATIONS.c.created_at == moment, REGISTRATIONS.c.id > after[1]),
                )
            )
        query = (
            select(REGISTRATIONS)
            .where(*conditions)
            .order_by(REGISTRATIONS.c.created_at, REGISTRATIONS.c.id)
            .limit(limit)
        )
        rows = (await self._uow.connection.execute(query)).all()
        return [self._track(row) for row in rows]

    async def committed_to_older(self, region: str, service: str, version: int) -> list[model.Registration]:
        """Admitted or suspended registrations committed to a version older than `version`."""
        rows = await self._select(
            REGISTRATIONS.c.region == region,
            REGISTRATIONS.c.service == service,
            REGISTRATIONS.c.terms_version < version,
            REGISTRATIONS.c.state.in_(
                [str(model.RegistrationState.ADMITTED), str(model.RegistrationState.SUSPENDED)]
            ),
        )
        return [self._track(row) for row in rows]

    async def municipal(self, region: str, service: str) -> list[model.Registration]:
        """Admitted or suspended registrations of municipalities and their in-house entities."""
        rows = await self._select(
            REGISTRATIONS.c.region == region,
            REGISTRATIONS.c.service == service,
            REGISTRATIONS.c.legal_form.in_([str(f) for f in model.LegalForm if f.municipal]),
            REGISTRATIONS.c.state.in_(
                [str(model.RegistrationState.ADMITTED), str(model.RegistrationState.SUSPENDED)]
            ),
        )
        return [self._track(row) for row in rows]

    async def registered_in(self, region: str, business_id: str) -> bool:
        """Whether the provider has any registration in the region, whatever its state."""
        result = await _REGISTERED_IN.execute(
            self._uow.connection, {"region": region, "business_id": business_id}
        )
        return result.first() is not None

    async def save(self) -> None:
        """Writes back every loaded registration whose decision columns changed, and keeps the
        public list's read model in step with it."""
        for registration_id, (registration, written) in self._loaded.items():
            current = _mutable_columns(registration)
            if current != written:
                self._audit_decisions(registration, len(json.loads(written["decisions_json"])))
                await _update_registration(tuple(current)).execute(
                    self._uow.connection, {"registration_id": registration_id, **current}
                )
                await _DELETE_LISTING.execute(self._uow.connection, {"registration_id": registration_id})
                if listing := _listing_rows(registration):
                    await _INSERT_LISTING.insert(self._uow.connection, listing)
                self._loaded[registration_id] = (registration, current)


class PendingBreachRepository:
    """Breaches against providers not (yet) admitted in the breach's scope."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def remember(self, region: str, service: str, business_id: str, breach: str) -> None:
        key = {"region": region, "service": service, "business_id": business_id, "breach": breach}
        exists = await self._uow.connection.execute(
            select(PENDING_BREACHES.c.breach).where(*(PENDING_BREACHES.c[k] == v for k, v in key.items()))
        )
        if exists.first() is None:
            await self._uow.connection.execute(
                insert(PENDING_BREACHES).values(**key, received_at=self._uow.now)
            )

    async def forget(self, region: str, service: str, business_id: str, breach: str) -> None:
        """A breach that no longer stands (resolved) before the provider was admitted."""
        key = {"region": region, "service": service, "business_id": business_id, "breach": breach}
        await self._uow.connection.execute(
            delete(PENDING_BREACHES).where(*(PENDING_BREACHES.c[k] == v for k, v in key.items()))
        )

    async def take(self, region: str, service: str, business_id: str) -> list[str]:
        """The breaches waiting for this provider's admission, oldest first; they are removed."""
        result = await _PENDING.execute(
            self._uow.connection, {"region": region, "service": service, "business_id": business_id}
        )
        breaches = [row.breach for row in result.all()]
        if breaches:
            await self._uow.connection.execute(
                delete(PENDING_BREACHES).where(
                    PENDING_BREACHES.c.region == region,
                    PENDING_BREACHES.c.service == service,
                    PENDING_BREACHES.c.business_id == business_id,
                )
            )
        return breaches


class BreachPolicyRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def get(self, region: str) -> model.BreachPolicy:
        """Read for every breach the registry consumes: prepared once."""
        row = (await _BREACH_POLICY.execute(self._uow.connection, {"region": region})).first()
        if row is None:
            return model.BreachPolicy(region)
        return model.BreachPolicy(
            region,
            tuple(json.loads(row.suspending_severities_json)),
            tuple(json.loads(row.services_json)),
            row.suspend_days,
            row.reinstate_on_resolution,
        )

    async def put(self, policy: model.BreachPolicy) -> None:
        values: dict[str, Any] = {
            "suspending_severities_json": json.dumps(policy.suspending_severities),
            "services_json": json.dumps(policy.services),
            "suspend_days": policy.suspend_days,
            "reinstate_on_resolution": policy.reinstate_on_resolution,
            "updated_at": self._uow.now,
        }
        await _put_row(self._session, BreachPolicyRow, {"region": policy.region}, values)
        self._uow.resources.append(policy.name)


def _market_failure(row: MarketFailureRow) -> model.MarketFailure:
    return model.MarketFailure(
        finding=row.finding,
        region=row.region,
        service=row.service,
        municipalities=tuple(json.loads(row.municipalities_json)),
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        lifted_at=row.lifted_at,
    )


class MarketFailureRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def of(self, region: str, service: str) -> list[model.MarketFailure]:
        result = await self._session.exec(
            select(MarketFailureRow).where(
                MarketFailureRow.region == region, MarketFailureRow.service == service
            )
        )
        return [_market_failure(row) for row in result.all()]

    async def get(self, finding: str) -> model.MarketFailure | None:
        row = await self._session.get(MarketFailureRow, finding)
        return _market_failure(row) if row is not None else None

    async def put(self, finding: model.MarketFailure) -> None:
        values: dict[str, Any] = {
            "region": finding.region,
            "service": finding.service,
            "municipalities_json": json.dumps(finding.municipalities),
            "valid_from": finding.valid_from,
            "valid_until": finding.valid_until,
            "lifted_at": finding.lifted_at,
        }
        await _put_row(self._session, MarketFailureRow, {"finding": finding.finding}, values)
        self._uow.resources.append(finding.finding)


class ServiceRepository:
    """The national catalogue (data) and each organiser's own services (rows)."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def of(self, region: str) -> list[model.CatalogueService]:
        result = await self._session.exec(
            select(ServiceRow).where(ServiceRow.region == region).order_by(col(ServiceRow.service))
        )
        own = [model.CatalogueService(row.service, row.display_name) for row in result.all()]
        return [*catalogue.NATIONAL_SERVICES, *own]

    async def exists(self, region: str, service: str) -> bool:
        if service in catalogue.NATIONAL_SERVICE_IDS:
            return True
        return await self._session.get(ServiceRow, (region, service)) is not None

    def add(self, region: str, service: model.CatalogueService) -> None:
        self._session.add(
            ServiceRow(
                region=region, service=service.id, display_name=service.display_name, created_at=self._uow.now
            )
        )
        self._uow.resources.append(model.SERVICE.format(region=region, service=service.id))


class ContactDetailsRepository:
    """Providers' contact details; the one repository that reads or writes them."""

    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow

    async def get(self, business_id: str) -> model.ContactDetails | None:
        row = await self._session.get(ContactDetailsRow, business_id)
        if row is None:
            return None
        details = model.ContactDetails(
            business_id=row.business_id,
            contact_person=row.contact_person,
            email=row.email,
            phone=row.phone,
            update_time=row.updated_at,
        )
        return self._uow.track(details)

    async def put(self, details: model.ContactDetails) -> None:
        """Stores the details as they are now; the audit record names them by their resource name."""
        if details.update_time is None:
            raise ValueError(f"{details.name} were never given")
        values: dict[str, Any] = {
            "contact_person": details.contact_person,
            "email": details.email,
            "phone": details.phone,
            "updated_at": details.update_time,
        }
        await _put_row(self._session, ContactDetailsRow, {"business_id": details.business_id}, values)
        self._uow.track(details, details.name)


class RegistryUnitOfWork(UnitOfWork):
    """The registry's unit of work: terms and registrations."""

    terms: TermsRepository
    general_terms: GeneralTermsRepository
    registrations: RegistrationRepository
    pending_breaches: PendingBreachRepository
    breach_policies: BreachPolicyRepository
    market_failures: MarketFailureRepository
    services: ServiceRepository
    contact_details: ContactDetailsRepository

    def __init__(self, context: Context, now: datetime, read_only: bool, *, cache: TermsCache) -> None:
        super().__init__(context, now, read_only=read_only)
        self._cache = cache

    async def bind(self, session: AsyncSession) -> None:
        await super().bind(session)
        self.general_terms = GeneralTermsRepository(session, self, self._cache)
        self.terms = TermsRepository(session, self, self._cache, self.general_terms)
        self.registrations = RegistrationRepository(session, self)
        self.pending_breaches = PendingBreachRepository(self)
        self.breach_policies = BreachPolicyRepository(session, self)
        self.market_failures = MarketFailureRepository(session, self)
        self.services = ServiceRepository(session, self)
        self.contact_details = ContactDetailsRepository(session, self)

    async def save(self) -> None:
        await self.registrations.save()


def unit_of_work_factory(
    cache: TermsCache | None = None,
) -> Callable[[Context, datetime, bool], RegistryUnitOfWork]:
    """The factory the dispatcher calls for every unit of work, sharing one terms cache."""
    shared = cache or TermsCache()

    def make(context: Context, now: datetime, read_only: bool) -> RegistryUnitOfWork:
        return RegistryUnitOfWork(context, now, read_only, cache=shared)

    return make

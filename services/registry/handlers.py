"""Registry use cases: one handler per command, each in one unit of work, reached the same
way from a gRPC call or a NATS event."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kasvu.registry.v1 import events_pb2

from services.registry import model, store
from services.runtime.auth import Principal, Role
from services.runtime.db import Database, IdempotencyKey, UnitOfWork, utcnow
from services.runtime.errors import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.runtime.timestamps import timestamp

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "kasvu.registry.v1"


def subject(event: str, region: str) -> str:
    """Events are addressed by type and region, so consumers can filter by either."""
    return f"{SUBJECT_PREFIX}.{event}.{region}"


def terms_name(region: str, service: str, version: int) -> str:
    return f"regions/{region}/services/{service}/terms/{version}"


def registration_name(region: str, service: str, registration_id: str) -> str:
    return f"regions/{region}/services/{service}/registrations/{registration_id}"


@dataclass(frozen=True)
class PublishTerms:
    region: str
    service: str
    title: str
    requirements: tuple[model.Requirement, ...]
    actor: Principal | None
    request_id: str = ""


@dataclass(frozen=True)
class RegisterProvider:
    region: str
    service: str
    terms_version: int
    business_id: str
    display_name: str
    evidence: tuple[model.Evidence, ...]
    public_key: bytes
    terms_signature: bytes
    actor: Principal | None
    request_id: str = ""


@dataclass(frozen=True)
class SuspendProvider:
    """Suspend a provider in one region after a quality breach there."""

    region: str
    business_id: str
    service: str
    breach: str


@dataclass(frozen=True)
class PublishedTerms:
    terms: model.Terms
    published_at: datetime


def require_role(actor: Principal | None, role: Role, organisation: str, what: str) -> Principal:
    """The tenant check: the caller acts in `role` for exactly `organisation`."""
    if actor is None:
        raise Unauthenticated(f"{what} needs a bearer token")
    if actor.role != role or actor.organisation != organisation:
        raise PermissionDenied(
            f"{what} is for a {role.value} of {organisation}; the token is a {actor.role.value} of "
            f"{actor.organisation}",
            reason="TENANT_MISMATCH",
        )
    return actor


class RegistryHandlers:
    """The registry's use cases over its database."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._after_commit = after_commit
        self._terms_cache: dict[tuple[str, str, int], model.Terms] = {}

    # -- commands ---------------------------------------------------------------------

    async def publish_terms(self, command: PublishTerms) -> PublishedTerms:
        require_role(command.actor, Role.REGION_ADMIN, command.region, "publishing terms")
        scope = f"PublishTerms/{command.region}/{command.service}"
        async with self._db.unit_of_work() as uow:
            known = await uow.idempotent_resource(scope, command.request_id)
            if known is not None:
                version = int(known.rsplit("/", 1)[1])
                return await self._published(uow, command.region, command.service, version)
            version = await store.latest_terms_version(uow.session, command.region, command.service) + 1
            terms = model.new_terms(
                command.region, command.service, version, command.title, command.requirements
            )
            now = self._clock()
            uow.session.add(store.row_from_terms(terms, now))
            name = terms_name(terms.region, terms.service, terms.version)
            uow.remember_idempotency(scope, command.request_id, name)
            uow.emit(
                subject("TermsPublished", terms.region),
                events_pb2.TermsPublished(
                    terms=name,
                    region=terms.region,
                    service=terms.service,
                    content_hash=terms.content_hash,
                    publish_time=timestamp(now),
                ),
            )
            await self._commit(uow, "concurrent publication of the same terms; retry")
        log.info("terms published", extra={"terms": name})
        return PublishedTerms(terms, now)

    async def register_provider(self, command: RegisterProvider) -> store.RegistrationRow:
        business_id = model.validate_business_id(command.business_id, "registration.business_id")
        require_role(command.actor, Role.PROVIDER, business_id, "registering")
        scope = f"RegisterProvider/{command.region}/{command.service}/{business_id}"
        # Everything that only reads or computes happens before the write transaction, which
        # on SQLite is the one thing the registry's requests queue for.
        if (earlier := await self._idempotent_registration(scope, command.request_id)) is not None:
            return earlier
        terms = await self._published_terms(command.region, command.service, command.terms_version)
        registration = model.decide_registration(
            uuid.uuid4().hex,
            terms,
            command.business_id,
            command.display_name,
            command.evidence,
            command.public_key,
            command.terms_signature,
            self._clock(),
        )
        row = store.row_from_registration(registration, command.public_key, command.evidence)
        name = registration_name(registration.region, registration.service, registration.id)
        async with self._db.unit_of_work() as uow:
            known = await uow.idempotent_resource(scope, command.request_id)
            if known is not None:  # a concurrent retry of the same request won
                earlier = await uow.session.get(store.RegistrationRow, known.rsplit("/", 1)[1])
                if earlier is not None:
                    return earlier
            if registration.state != model.RegistrationState.REJECTED:
                active = await store.active_registrations_of(
                    uow.session, command.region, registration.business_id, command.service
                )
                if active:
                    existing = registration_name(command.region, command.service, active[0].id)
                    raise AlreadyExists(
                        f"{registration.business_id} is already registered: {existing}",
                        reason="ALREADY_REGISTERED",
                    )
            uow.session.add(row)
            uow.remember_idempotency(scope, command.request_id, name)
            self._emit_decision(uow, registration, name)
            await self._commit(uow, "a concurrent registration for the same provider won; retry")
        log.info("registration decided", extra={"registration": name, "state": str(registration.state)})
        return row

    async def _idempotent_registration(self, scope: str, request_id: str) -> store.RegistrationRow | None:
        if not request_id:
            return None
        async with self._db.read_session() as session:
            key = await session.get(IdempotencyKey, (scope, request_id))
            if key is None:
                return None
            return await session.get(store.RegistrationRow, key.resource.rsplit("/", 1)[1])

    async def _published_terms(self, region: str, service: str, version: int) -> model.Terms:
        """Published terms never change, so every replica may keep them once read."""
        cache_key = (region, service, version)
        if (cached := self._terms_cache.get(cache_key)) is not None:
            return cached
        async with self._db.read_session() as session:
            row = await store.get_terms_row(session, region, service, version)
        if row is None:
            raise NotFound(
                f"no published terms {terms_name(region, service, version)}", reason="TERMS_NOT_FOUND"
            )
        terms = store.terms_from_row(row)
        self._terms_cache[cache_key] = terms
        return terms

    async def suspend_provider(self, uow: UnitOfWork, command: SuspendProvider) -> int:
        """Suspends the provider's active registrations in the breach's region (for the
        breach's service); returns how many changed. Runs in the caller's unit of work, so
        the consumer's inbox entry commits with the effect."""
        rows = await store.active_registrations_of(
            uow.session, command.region, command.business_id, command.service
        )
        if not rows:
            raise NotFound(
                f"{command.business_id} has no active registration for {command.service} in {command.region}",
                reason="NOT_REGISTERED",
            )
        now = self._clock()
        changed = 0
        for row in rows:
            registration = store.registration_from_row(row)
            if registration.suspend(command.breach, now):
                store.apply_registration(row, registration)
                uow.session.add(row)
                changed += 1
                name = registration_name(row.region, row.service, row.id)
                uow.emit(
                    subject("ProviderSuspended", row.region),
                    events_pb2.ProviderSuspended(
                        registration=name,
                        region=row.region,
                        service=row.service,
                        business_id=row.business_id,
                        breach=command.breach,
                        suspend_time=timestamp(now),
                    ),
                )
                log.info("provider suspended", extra={"registration": name, "breach": command.breach})
        return changed

    # -- queries ----------------------------------------------------------------------

    async def get_terms(self, region: str, service: str, version: int) -> PublishedTerms:
        async with self._db.read_session() as session:
            row = await store.get_terms_row(session, region, service, version)
        if row is None:
            raise NotFound(
                f"no published terms {terms_name(region, service, version)}", reason="TERMS_NOT_FOUND"
            )
        return PublishedTerms(store.terms_from_row(row), row.published_at)

    async def get_registration(
        self, region: str, service: str, registration_id: str, actor: Principal | None
    ) -> store.RegistrationRow:
        if actor is None:
            raise Unauthenticated("reading a registration needs a bearer token")
        async with self._db.read_session() as session:
            row = await session.get(store.RegistrationRow, registration_id)
        name = registration_name(region, service, registration_id)
        if row is None or row.region != region or row.service != service:
            raise NotFound(f"no registration {name}", reason="REGISTRATION_NOT_FOUND")
        own_provider = actor.role == Role.PROVIDER and actor.organisation == row.business_id
        own_region = actor.role in (Role.REGION_ADMIN, Role.SUPERVISOR) and actor.organisation == region
        if not (own_provider or own_region):
            raise PermissionDenied(f"{name} belongs to another organisation", reason="TENANT_MISMATCH")
        return row

    async def list_providers(
        self, region: str, service: str, after_business_id: str, page_size: int
    ) -> Sequence[store.RegistrationRow]:
        async with self._db.read_session() as session:
            return await store.admitted_page(session, region, service, after_business_id, page_size)

    # -- helpers ----------------------------------------------------------------------

    async def _published(self, uow: UnitOfWork, region: str, service: str, version: int) -> PublishedTerms:
        row = await store.get_terms_row(uow.session, region, service, version)
        if row is None:
            raise NotFound(f"no published terms {terms_name(region, service, version)}")
        return PublishedTerms(store.terms_from_row(row), row.published_at)

    def _emit_decision(self, uow: UnitOfWork, registration: model.Registration, name: str) -> None:
        terms = terms_name(registration.region, registration.service, registration.terms_version)
        if registration.state == model.RegistrationState.ADMITTED:
            uow.emit(
                subject("RegistrationAdmitted", registration.region),
                events_pb2.RegistrationAdmitted(
                    registration=name,
                    terms=terms,
                    region=registration.region,
                    service=registration.service,
                    business_id=registration.business_id,
                    admit_time=timestamp(registration.created_at),
                ),
            )
        else:
            uow.emit(
                subject("RegistrationRejected", registration.region),
                events_pb2.RegistrationRejected(
                    registration=name,
                    terms=terms,
                    region=registration.region,
                    service=registration.service,
                    business_id=registration.business_id,
                    reason_codes=[r.code for r in registration.reasons],
                    decide_time=timestamp(registration.created_at),
                ),
            )

    async def _commit(self, uow: UnitOfWork, conflict_message: str) -> None:
        await uow.commit(conflict_message)
        self._after_commit()

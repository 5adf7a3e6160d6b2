"""Registry use cases: one handler per command or query, each `handler(message, uow)`, reached
the same way from a gRPC call or a NATS event through the dispatcher."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.registry import model
from services.runtime import access
from services.runtime.domain import Command, Query
from services.runtime.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from services.registry.store import RegistryUnitOfWork

# -- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishTerms(Command):
    region: str
    service: str
    title: str
    requirements: tuple[model.Requirement, ...]


@dataclass(frozen=True)
class RegisterProvider(Command):
    region: str
    service: str
    terms_version: int
    business_id: str
    display_name: str
    evidence: tuple[model.Evidence, ...]
    public_key: bytes
    terms_signature: bytes


@dataclass(frozen=True)
class SuspendProvider(Command):
    """Suspend a provider in one region, for one service, after a quality breach there."""

    region: str
    business_id: str
    service: str
    breach: str


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GetTerms(Query):
    region: str
    service: str
    version: int


@dataclass(frozen=True)
class GetRegistration(Query):
    region: str
    service: str
    registration_id: str


@dataclass(frozen=True)
class ListProviders(Query):
    region: str
    service: str
    after_business_id: str
    limit: int


# -- handlers -----------------------------------------------------------------------------------


async def publish_terms(command: PublishTerms, uow: RegistryUnitOfWork) -> model.Terms:
    access.require(uow.actor, any_of=[access.region_admin(command.region)], action="publishing terms")
    version = await uow.terms.latest_version(command.region, command.service) + 1
    terms = model.publish_terms(
        command.region, command.service, version, command.title, command.requirements, uow.now
    )
    uow.terms.add(terms)
    return terms


async def register_provider(command: RegisterProvider, uow: RegistryUnitOfWork) -> model.Registration:
    business_id = model.validate_business_id(command.business_id, "registration.business_id")
    access.require(uow.actor, any_of=[access.provider(business_id)], action="registering")
    terms = await _published_terms(uow, command.region, command.service, command.terms_version)
    registration = model.decide_registration(
        uuid.uuid4().hex,
        terms,
        command.business_id,
        command.display_name,
        command.evidence,
        command.public_key,
        command.terms_signature,
        uow.now,
    )
    if registration.active:
        active = await uow.registrations.active_of(command.region, business_id, command.service)
        if active:
            raise AlreadyExists(
                f"{business_id} is already registered: {active[0].name}", reason="ALREADY_REGISTERED"
            )
    await uow.registrations.add(registration)
    return registration


async def suspend_provider(command: SuspendProvider, uow: RegistryUnitOfWork) -> int:
    """Suspends the provider's active registration for the breach's region and service; how many changed."""
    registrations = await uow.registrations.active_of(command.region, command.business_id, command.service)
    if not registrations:
        raise NotFound(
            f"{command.business_id} has no active registration for {command.service} in {command.region}",
            reason="NOT_REGISTERED",
        )
    return sum(registration.suspend(command.breach, uow.now) for registration in registrations)


async def get_terms(query: GetTerms, uow: RegistryUnitOfWork) -> model.Terms:
    return await _published_terms(uow, query.region, query.service, query.version)


async def get_registration(query: GetRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    if uow.actor is None:
        raise Unauthenticated("reading a registration needs a bearer token")
    registration = await uow.registrations.get(query.registration_id)
    name = model.REGISTRATION.format(
        region=query.region, service=query.service, registration=query.registration_id
    )
    if registration is None or (registration.region, registration.service) != (query.region, query.service):
        raise NotFound(f"no registration {name}", reason="REGISTRATION_NOT_FOUND")
    try:
        access.require(
            uow.actor,
            any_of=[
                access.provider(registration.business_id),
                access.region_admin(query.region),
                access.supervisor(query.region),
            ],
            action="reading a registration",
        )
    except PermissionDenied:
        raise PermissionDenied(f"{name} belongs to another organisation", reason="TENANT_MISMATCH") from None
    return registration


async def list_providers(query: ListProviders, uow: RegistryUnitOfWork) -> list[model.Registration]:
    """The public list: admitted, unsuspended providers; no sign-in needed."""
    return await uow.registrations.admitted_page(
        query.region, query.service, query.after_business_id, query.limit
    )


async def _published_terms(uow: RegistryUnitOfWork, region: str, service: str, version: int) -> model.Terms:
    terms = await uow.terms.get(region, service, version)
    if terms is None:
        name = model.TERMS.format(region=region, service=service, version=version)
        raise NotFound(f"no published terms {name}", reason="TERMS_NOT_FOUND")
    return terms


HANDLERS: dict[type[Any], Any] = {
    PublishTerms: publish_terms,
    RegisterProvider: register_provider,
    SuspendProvider: suspend_provider,
    GetTerms: get_terms,
    GetRegistration: get_registration,
    ListProviders: list_providers,
}

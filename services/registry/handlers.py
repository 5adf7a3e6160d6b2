"""Registry use cases: one handler per command or query, each `handler(message, uow)`, reached
the same way from a gRPC call or a NATS event through the dispatcher."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.registry import catalogue, model
from services.runtime import access
from services.runtime.catalog import entry
from services.runtime.domain import Command, Query, ResourcePattern
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

if TYPE_CHECKING:
    from services.registry.store import RegistryUnitOfWork

# -- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishTerms(Command):
    region: str
    service: str
    title: str
    requirements: tuple[model.Requirement, ...]
    recommit_days: int = 0
    """0: the default window of model.DEFAULT_RECOMMIT_DAYS."""
    sections: tuple[model.Section, ...] = ()


@dataclass(frozen=True)
class PublishGeneralTerms(Command):
    region: str
    title: str
    requirements: tuple[model.Requirement, ...]
    sections: tuple[model.Section, ...]
    recommit_days: int = 0
    """For the service terms re-issued on the new general part; 0: model.DEFAULT_RECOMMIT_DAYS."""


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
    municipalities: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    price: Decimal | None = None
    legal_form: model.LegalForm = model.LegalForm.UNSPECIFIED
    qualifications: tuple[str, ...] = ()
    draft: bool = False
    """Keep it as a draft (no signature, nothing decided) until SubmitRegistration."""


@dataclass(frozen=True)
class RecordMarketFailure(Command):
    """Tendering declared market failure for a service in some municipalities of a region."""

    finding: str
    region: str
    service: str
    municipalities: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None = None


@dataclass(frozen=True)
class LiftMarketFailure(Command):
    """A finding was lifted (or ran out): municipal admissions it no longer covers lapse."""

    finding: str
    region: str
    service: str
    lift_time: datetime


@dataclass(frozen=True)
class SuspendProvider(Command):
    """Suspend a provider in one region, for one service, after a quality breach there; remembered
    until admission when the provider is not admitted there yet."""

    region: str
    business_id: str
    service: str
    breach: str
    severity: str = "SERIOUS"
    """WARNING or SERIOUS; the region's breach policy says which suspend."""


@dataclass(frozen=True)
class ReinstateAfterResolution(Command):
    """A breach was resolved in self-monitoring: the registrations it suspended are reinstated
    when the region's breach policy says so."""

    region: str
    business_id: str
    service: str
    breach: str


@dataclass(frozen=True)
class SetBreachPolicy(Command):
    region: str
    suspending_severities: tuple[str, ...]
    services: tuple[str, ...]
    suspend_days: int
    reinstate_on_resolution: bool = False


@dataclass(frozen=True)
class RegistrationCommand(Command):
    """A command on one registration, named by its parts."""

    region: str
    service: str
    registration_id: str


@dataclass(frozen=True)
class DecideRegistration(RegistrationCommand):
    admit: bool
    reasons: tuple[model.Reason, ...]


@dataclass(frozen=True)
class SuspendRegistration(RegistrationCommand):
    reasons: tuple[model.Reason, ...]
    lift_time: datetime | None = None


@dataclass(frozen=True)
class ReinstateRegistration(RegistrationCommand):
    reasons: tuple[model.Reason, ...]


@dataclass(frozen=True)
class RevokeRegistration(RegistrationCommand):
    reasons: tuple[model.Reason, ...]


@dataclass(frozen=True)
class WithdrawRegistration(RegistrationCommand):
    reasons: tuple[model.Reason, ...] = ()
    """Optional: why the provider withdraws."""


@dataclass(frozen=True)
class RecommitRegistration(RegistrationCommand):
    terms_version: int
    terms_signature: bytes
    evidence: tuple[model.Evidence, ...] = ()


@dataclass(frozen=True)
class RenewEvidence(RegistrationCommand):
    evidence: model.Evidence


@dataclass(frozen=True)
class UpdateRegistration(RegistrationCommand):
    """The provider changes its draft; `changes.terms` is unset here and `terms_version` names it."""

    changes: model.DraftChanges
    terms_version: int = 0
    """The new terms version when "terms" is among the changed fields."""


@dataclass(frozen=True)
class SubmitRegistration(RegistrationCommand):
    terms_signature: bytes


@dataclass(frozen=True)
class RotateRegistrationKey(RegistrationCommand):
    public_key: bytes
    key_signature: bytes


@dataclass(frozen=True)
class AddRegistrationKey(RegistrationCommand):
    public_key: bytes
    key_signature: bytes
    possession_signature: bytes


@dataclass(frozen=True)
class RetireRegistrationKey(RegistrationCommand):
    key_fingerprint: str
    key_signature: bytes


@dataclass(frozen=True)
class UpdateContactDetails(Command):
    """The provider sets or changes its contact details (`changes.fields`; none: all of them)."""

    business_id: str
    changes: model.ContactChanges


# Timer commands: set by handlers, fired by the scheduler, never reachable from outside.


@dataclass(frozen=True)
class LiftSuspension(Command):
    registration_id: str
    lift_time: datetime


@dataclass(frozen=True)
class LapseRegistration(Command):
    registration_id: str
    reason_code: str
    subject: str
    terms_version: int = 0
    """For TERMS_NOT_RECOMMITTED: the version the provider had to commit to."""


@dataclass(frozen=True)
class RemindEvidenceRenewal(Command):
    registration_id: str
    requirement_code: str
    expire_time: datetime


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateService(Command):
    region: str
    service: str
    display_name: str


@dataclass(frozen=True)
class ListOrganisers(Query):
    pass


@dataclass(frozen=True)
class ListMunicipalities(Query):
    pass


@dataclass(frozen=True)
class ListServices(Query):
    region: str


@dataclass(frozen=True)
class GetBreachPolicy(Query):
    region: str


@dataclass(frozen=True)
class GetTerms(Query):
    region: str
    service: str
    version: int


@dataclass(frozen=True)
class ListTerms(Query):
    region: str
    service: str


@dataclass(frozen=True)
class GetGeneralTerms(Query):
    region: str
    version: int


@dataclass(frozen=True)
class ListGeneralTerms(Query):
    region: str
    before_version: int
    """0: from the newest."""
    limit: int


@dataclass(frozen=True)
class DiffTerms(Query):
    region: str
    service: str
    version: int
    other_version: int


@dataclass(frozen=True)
class GetRegistration(Query):
    region: str
    service: str
    registration_id: str


@dataclass(frozen=True)
class ListRegistrations(Query):
    """The region's registrations for a service (business_id "" and state None: all)."""

    region: str
    service: str
    state: model.RegistrationState | None
    business_id: str
    after: tuple[str, str]
    limit: int


@dataclass(frozen=True)
class ListProviderRegistrations(Query):
    business_id: str
    after: tuple[str, str]
    limit: int


@dataclass(frozen=True)
class GetContactDetails(Query):
    business_id: str


@dataclass(frozen=True)
class ListProviders(Query):
    region: str
    service: str
    after_business_id: str
    limit: int
    municipality: str = ""
    language: str = ""


# -- handlers -----------------------------------------------------------------------------------


async def list_organisers(query: ListOrganisers, uow: RegistryUnitOfWork) -> list[model.Organiser]:
    return list(catalogue.ORGANISERS)


async def list_municipalities(
    query: ListMunicipalities, uow: RegistryUnitOfWork
) -> list[tuple[str, str, str]]:
    """The official municipality codes with their Finnish and Swedish names, by code; public."""
    return [(code, *names) for code, names in sorted(model.MUNICIPALITIES.items())]


async def list_services(query: ListServices, uow: RegistryUnitOfWork) -> list[model.CatalogueService]:
    _require_organiser(query.region)
    return await uow.services.of(query.region)


async def create_service(command: CreateService, uow: RegistryUnitOfWork) -> model.CatalogueService:
    """An organiser adds a service of its own to the catalogue it publishes terms for."""
    access.require(uow.actor, any_of=[access.region_admin(command.region)], action="adding a service")
    _require_organiser(command.region)
    service = model.new_service(command.service, command.display_name)
    if await uow.services.exists(command.region, service.id):
        raise AlreadyExists(
            f"{model.SERVICE.format(region=command.region, service=service.id)} exists already",
            reason="SERVICE_EXISTS",
        )
    uow.services.add(command.region, service)
    return service


async def publish_terms(command: PublishTerms, uow: RegistryUnitOfWork) -> model.Terms:
    """Publishes the next version, pinning the region's current general part; the one before is
    superseded and its admitted providers get a re-commit window, after which a timer lapses
    those who did not re-commit."""
    access.require(uow.actor, any_of=[access.region_admin(command.region)], action="publishing terms")
    await _require_service(uow, command.region, command.service)
    recommit_days = _recommit_days(command.recommit_days)
    # The general part first, then the service's terms: the order every publisher takes them in.
    general = await _general_terms(
        uow, command.region, await uow.general_terms.latest_version(command.region)
    )
    previous = await uow.terms.latest_version(command.region, command.service)
    terms = model.publish_terms(
        command.region,
        command.service,
        previous + 1,
        command.title,
        command.requirements,
        uow.now,
        sections=command.sections,
        general=general,
    )
    await _supersede_with(terms, recommit_days, uow)
    return terms


async def publish_general_terms(command: PublishGeneralTerms, uow: RegistryUnitOfWork) -> model.GeneralTerms:
    """Publishes the next version of the region's general part and, in the same unit of work,
    re-issues each service's current terms as a new version pinning it: the versions they
    replace are superseded as by any publication, so admitted providers re-commit to the whole
    rulebook within the window or lapse."""
    access.require(uow.actor, any_of=[access.region_admin(command.region)], action="publishing general terms")
    _require_organiser(command.region)
    recommit_days = _recommit_days(command.recommit_days)
    previous = await uow.general_terms.latest_version(command.region)
    current = [
        await _published_terms(
            uow, command.region, service, await uow.terms.latest_version(command.region, service)
        )
        for service in await uow.terms.services_of(command.region)
    ]
    general = model.publish_general_terms(
        command.region,
        previous + 1,
        command.title,
        command.requirements,
        command.sections,
        uow.now,
        services=current,
    )
    uow.general_terms.add(general)
    for terms in current:
        await _supersede_with(model.reissue_terms(terms, general, uow.now), recommit_days, uow)
    return general


def _recommit_days(given: int) -> int:
    recommit_days = given or model.DEFAULT_RECOMMIT_DAYS
    if not 1 <= recommit_days <= model.MAX_RECOMMIT_DAYS:
        description = f"must be between 1 and {model.MAX_RECOMMIT_DAYS} days"
        raise InvalidArgument(f"recommit_days {description}", [FieldViolation("recommit_days", description)])
    return recommit_days


async def _supersede_with(terms: model.Terms, recommit_days: int, uow: RegistryUnitOfWork) -> None:
    """Stores a new terms version; the version before it is superseded, and the providers
    admitted under an older one must re-commit by the deadline or a timer lapses them."""
    uow.terms.add(terms)
    if terms.version == 1:
        return
    older = await _published_terms(uow, terms.region, terms.service, terms.version - 1)
    uow.track(older, older.name)
    deadline = older.supersede(terms, uow.now, recommit_days)
    for registration in await uow.registrations.committed_to_older(
        terms.region, terms.service, terms.version
    ):
        if registration.await_recommitment(deadline):
            uow.timers.set(
                _timer("recommit", registration),
                deadline,
                LapseRegistration(
                    registration.id,
                    model.ReasonCode.TERMS_NOT_RECOMMITTED,
                    terms.name,
                    terms_version=terms.version,
                ),
            )


async def register_provider(command: RegisterProvider, uow: RegistryUnitOfWork) -> model.Registration:
    business_id = model.validate_business_id(command.business_id, "registration.business_id")
    access.require(uow.actor, any_of=[access.provider(business_id)], action="registering")
    await _require_service(uow, command.region, command.service)
    terms = await _current_terms(uow, command.region, command.service, command.terms_version)
    if command.draft:
        return await _draft(command, terms, uow)
    registration = model.decide_registration(
        uuid.uuid4().hex,
        terms,
        command.business_id,
        command.display_name,
        command.evidence,
        command.public_key,
        command.terms_signature,
        uow.now,
        municipalities=command.municipalities,
        languages=command.languages,
        price=command.price,
        legal_form=command.legal_form,
        qualifications=command.qualifications,
        actor=uow.context.who,
    )
    await _check_submission(registration, uow)
    await uow.registrations.add(registration)
    if registration.listed:
        await _after_admission(registration, terms, uow)
    return registration


async def _check_submission(registration: model.Registration, uow: RegistryUnitOfWork) -> None:
    """What a submission needs beyond the registration itself: a market-failure finding for a
    municipal provider, and no other active registration of the provider in the same scope."""
    if registration.legal_form.municipal:
        findings = await uow.market_failures.of(registration.region, registration.service)
        model.require_market_failure(registration.legal_form, registration.municipalities, findings, uow.now)
    if registration.active:
        active = await uow.registrations.active_of(
            registration.region, registration.business_id, registration.service
        )
        if other := [r for r in active if r.id != registration.id]:
            raise AlreadyExists(
                f"{registration.business_id} is already registered: {other[0].name}",
                reason="ALREADY_REGISTERED",
            )


async def _draft(
    command: RegisterProvider, terms: model.Terms, uow: RegistryUnitOfWork
) -> model.Registration:
    """A registration kept as a draft: validated as far as it goes, signed and decided on submission."""
    if command.terms_signature:
        description = "a draft is not signed: sign the terms when submitting it"
        raise InvalidArgument(description, [FieldViolation("registration.terms_signature", description)])
    registration = model.draft_registration(
        uuid.uuid4().hex,
        terms,
        command.business_id,
        command.display_name,
        command.evidence,
        command.public_key,
        uow.now,
        municipalities=command.municipalities,
        languages=command.languages,
        price=command.price,
        legal_form=command.legal_form,
        qualifications=command.qualifications,
        actor=uow.context.who,
    )
    await uow.registrations.add(registration)
    return registration


async def update_registration(command: UpdateRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    """The provider changes its draft; anything but a draft is FAILED_PRECONDITION."""
    registration = await _registration_for(uow, command, grants=None, action="changing a draft")
    _require_draft(registration, "changed")
    if "terms" in command.changes.fields:
        # Moving a draft: only to the current terms. Otherwise its own terms, even superseded
        # meanwhile, validate the change; the submission then asks for the current ones.
        terms = await _current_terms(uow, command.region, command.service, command.terms_version)
    else:
        terms = await _published_terms(uow, command.region, command.service, registration.terms_version)
    registration.update_draft(command.changes, terms, uow.now)
    return registration


def _require_draft(registration: model.Registration, action: str) -> None:
    """Before the terms are read: a registration past its draft is FAILED_PRECONDITION, whatever
    its terms became since."""
    if registration.state != model.RegistrationState.DRAFT:
        raise FailedPrecondition(
            f"registration {registration.name} is {registration.state.value.lower()}: "
            f"only a draft can be {action}",
            reason="NOT_DRAFT",
        )


async def submit_registration(command: SubmitRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    """The provider submits its draft: decided at once, as a registration made in one call."""
    registration = await _registration_for(uow, command, grants=None, action="submitting a registration")
    _require_draft(registration, "submitted")
    terms = await _current_terms(uow, command.region, command.service, registration.terms_version)
    registration.submit(terms, command.terms_signature, uow.context.who, uow.now)
    await _check_submission(registration, uow)
    if registration.listed:
        await _after_admission(registration, terms, uow)
    return registration


async def record_market_failure(command: RecordMarketFailure, uow: RegistryUnitOfWork) -> bool:
    """Remembers the finding; its end of validity is a timer that lifts it."""
    finding = model.MarketFailure(
        command.finding,
        command.region,
        command.service,
        command.municipalities,
        command.valid_from,
        command.valid_until,
    )
    await uow.market_failures.put(finding)
    if command.valid_until is not None:
        uow.timers.set(
            f"registry:market-failure:{command.finding}",
            command.valid_until,
            LiftMarketFailure(command.finding, command.region, command.service, command.valid_until),
        )
    return True


async def lift_market_failure(command: LiftMarketFailure, uow: RegistryUnitOfWork) -> int:
    """Ends the finding and lapses the municipal admissions no other valid finding covers; how many."""
    finding = await uow.market_failures.get(command.finding)
    if finding is None or finding.lifted_at is not None:
        return 0
    await uow.market_failures.put(replace(finding, lifted_at=command.lift_time))
    uow.timers.cancel(f"registry:market-failure:{command.finding}")
    remaining = [
        f
        for f in await uow.market_failures.of(command.region, command.service)
        if f.finding != command.finding
    ]
    lapsed = 0
    for registration in await uow.registrations.municipal(command.region, command.service):
        if model.uncovered(registration.municipalities, remaining, uow.now):
            reason = model.Reason(
                model.ReasonCode.MARKET_FAILURE_LIFTED,
                command.finding,
                f"Market-failure finding {command.finding}, which allowed this provider, was lifted.",
            )
            if registration.lapse(reason, uow.context.who, uow.now, causes=[command.finding]):
                _cancel_timers(registration, uow)
                lapsed += 1
    return lapsed


# Self-monitoring's breach names, as the catalog records them: the registry cites them (a
# suspension names the breach it rests on, which a rectification request asks for) but never
# serves them.
_CITED_BREACH = ResourcePattern(entry("selfmonitoring").resource_name("breaches"))


def _validate_cited_breach(name: str, region: str, field: str = "breach.name") -> None:
    if _CITED_BREACH.parse(name, field)["region"] != region:
        description = f"must be a breach of regions/{region}, where the event was published"
        raise InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])


async def suspend_provider(command: SuspendProvider, uow: RegistryUnitOfWork) -> int:
    """Suspends the provider's admission for the breach's region and service when the region's
    breach policy says so; how many changed.

    A breach against a provider not admitted there (not registered, or still in review) is
    remembered and suspends it when it is admitted.
    """
    # A malformed provider in an event is refused (and recorded as the event's outcome), not stored.
    business_id = model.validate_business_id(command.business_id, "breach.provider")
    _validate_cited_breach(command.breach, command.region)
    policy = await uow.breach_policies.get(command.region)
    if not policy.suspends(command.severity, command.service):
        return 0
    registrations = await uow.registrations.active_of(command.region, business_id, command.service)
    admitted = [r for r in registrations if r.state != model.RegistrationState.IN_REVIEW]
    if not admitted:
        await uow.pending_breaches.remember(command.region, command.service, business_id, command.breach)
        return 0
    return sum([await _suspend_for_breach(r, command.breach, policy, uow) for r in admitted])


async def _suspend_for_breach(
    registration: model.Registration,
    breach: str,
    policy: model.BreachPolicy,
    uow: RegistryUnitOfWork,
    causes: tuple[str, ...] = (),
) -> bool:
    lift_time = policy.lift_time(uow.now)
    changed = registration.suspend(breach, uow.now, actor=uow.context.who, lift_time=lift_time, causes=causes)
    if changed and lift_time is not None:
        uow.timers.set(_timer("lift", registration), lift_time, LiftSuspension(registration.id, lift_time))
    return changed


async def reinstate_after_resolution(command: ReinstateAfterResolution, uow: RegistryUnitOfWork) -> int:
    """Reinstates the provider's registrations the resolved breach suspended, in its region and
    service, when the region's breach policy says so; how many changed. A breach still waiting
    for the provider's admission is forgotten: it no longer stands."""
    business_id = model.validate_business_id(command.business_id, "breach.provider")
    _validate_cited_breach(command.breach, command.region)
    policy = await uow.breach_policies.get(command.region)
    if not policy.reinstate_on_resolution:
        return 0
    await uow.pending_breaches.forget(command.region, command.service, business_id, command.breach)
    reinstated = 0
    for registration in await uow.registrations.active_of(command.region, business_id, command.service):
        if registration.resolve_breach(
            command.breach, uow.context.who, uow.now, causes=[c for c in [uow.context.causation_id] if c]
        ):
            uow.timers.cancel(_timer("lift", registration))
            reinstated += 1
    return reinstated


async def set_breach_policy(command: SetBreachPolicy, uow: RegistryUnitOfWork) -> model.BreachPolicy:
    access.require(
        uow.actor, any_of=[access.region_admin(command.region)], action="setting the breach policy"
    )
    policy = model.new_breach_policy(
        command.region,
        command.suspending_severities,
        command.services,
        command.suspend_days,
        reinstate_on_resolution=command.reinstate_on_resolution,
    )
    await uow.breach_policies.put(policy)
    return policy


async def get_breach_policy(query: GetBreachPolicy, uow: RegistryUnitOfWork) -> model.BreachPolicy:
    return await uow.breach_policies.get(query.region)


async def decide_registration(command: DecideRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    registration = await _registration_for(
        uow, command, grants=[access.region_admin(command.region)], action="deciding a registration"
    )
    registration.decide_review(command.admit, command.reasons, uow.context.who, uow.now)
    if registration.listed:
        terms = await _published_terms(
            uow, registration.region, registration.service, registration.terms_version
        )
        await _after_admission(registration, terms, uow)
    return registration


async def suspend_registration(command: SuspendRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    registration = await _registration_for(
        uow,
        command,
        grants=[access.region_admin(command.region), access.supervisor(command.region)],
        action="suspending a provider",
    )
    model.validate_reasons(command.reasons, "reasons")
    changed = registration.suspend(
        "", uow.now, reasons=command.reasons, actor=uow.context.who, lift_time=command.lift_time
    )
    if not changed:
        raise FailedPrecondition(f"{registration.name} is suspended already", reason="ALREADY_SUSPENDED")
    if command.lift_time is not None:
        uow.timers.set(
            _timer("lift", registration),
            command.lift_time,
            LiftSuspension(registration.id, command.lift_time),
        )
    return registration


async def reinstate_registration(
    command: ReinstateRegistration, uow: RegistryUnitOfWork
) -> model.Registration:
    registration = await _registration_for(
        uow,
        command,
        grants=[access.region_admin(command.region), access.supervisor(command.region)],
        action="reinstating a provider",
    )
    registration.reinstate(command.reasons, uow.context.who, uow.now)
    uow.timers.cancel(_timer("lift", registration))
    return registration


async def revoke_registration(command: RevokeRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    registration = await _registration_for(
        uow, command, grants=[access.region_admin(command.region)], action="revoking an admission"
    )
    registration.revoke(command.reasons, uow.context.who, uow.now)
    _cancel_timers(registration, uow)
    return registration


async def withdraw_registration(command: WithdrawRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    registration = await _registration_for(uow, command, grants=None, action="withdrawing a registration")
    registration.withdraw(uow.context.who, uow.now, command.reasons)
    _cancel_timers(registration, uow)
    return registration


async def recommit_registration(command: RecommitRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    registration = await _registration_for(uow, command, grants=None, action="re-committing to terms")
    terms = await _current_terms(uow, command.region, command.service, command.terms_version)
    registration.recommit(terms, command.evidence, command.terms_signature, uow.context.who, uow.now)
    uow.timers.cancel(_timer("recommit", registration))
    _set_evidence_timers(registration, terms, uow)
    return registration


async def renew_evidence(command: RenewEvidence, uow: RegistryUnitOfWork) -> model.Registration:
    """The provider renews a document before it expires; the admission's expiry and reminder
    timers move to what the evidence now stands until."""
    registration = await _registration_for(uow, command, grants=None, action="renewing evidence")
    terms = await _published_terms(uow, registration.region, registration.service, registration.terms_version)
    registration.renew_evidence(terms, command.evidence, uow.context.who, uow.now)
    _set_evidence_timers(registration, terms, uow)
    return registration


async def rotate_registration_key(
    command: RotateRegistrationKey, uow: RegistryUnitOfWork
) -> model.Registration:
    registration = await _registration_for(uow, command, grants=None, action="rotating a key")
    registration.rotate_key(command.public_key, command.key_signature, uow.now)
    return registration


async def add_registration_key(command: AddRegistrationKey, uow: RegistryUnitOfWork) -> model.Registration:
    """The provider adds a key, authorised as a rotation is: its token, and a live key's signature."""
    registration = await _registration_for(uow, command, grants=None, action="adding a key")
    registration.add_key(command.public_key, command.key_signature, command.possession_signature, uow.now)
    return registration


async def retire_registration_key(
    command: RetireRegistrationKey, uow: RegistryUnitOfWork
) -> model.Registration:
    """The provider retires a key, authorised as a rotation is: its token, and another live key."""
    registration = await _registration_for(uow, command, grants=None, action="retiring a key")
    registration.retire_key(command.key_fingerprint, command.key_signature, uow.now)
    return registration


async def update_contact_details(command: UpdateContactDetails, uow: RegistryUnitOfWork) -> str:
    """The provider sets or changes its contact details, one set for every region. The same
    details again change nothing: no event, no audit record.

    Returns the details' name only: the result is also the stored answer to a retry, and
    personal data is kept in its own table alone, so that erasing it is erasing one row. The
    caller reads the details back after the commit.
    """
    access.require(
        uow.actor, any_of=[access.provider(command.business_id)], action="changing contact details"
    )
    details = await uow.contact_details.get(command.business_id) or model.ContactDetails(command.business_id)
    if details.update(command.changes, uow.now):
        await uow.contact_details.put(details)
    return details.name


async def lift_suspension(command: LiftSuspension, uow: RegistryUnitOfWork) -> bool:
    """The timed end of a suspension; changes nothing when the suspension already ended."""
    registration = await uow.registrations.get(command.registration_id)
    if (
        registration is None
        or registration.state != model.RegistrationState.SUSPENDED
        or registration.lift_time != command.lift_time
    ):
        return False
    reason = model.Reason(
        model.ReasonCode.SUSPENSION_LIFTED,
        registration.name,
        f"The suspension lifted itself at {command.lift_time.isoformat()}, as decided.",
    )
    registration.reinstate([reason], uow.context.who, uow.now, causes=[uow.context.causation_id])
    return True


async def lapse_registration(command: LapseRegistration, uow: RegistryUnitOfWork) -> bool:
    """The end of an admission by a timer: terms not re-committed in time, or evidence expired."""
    registration = await uow.registrations.get(command.registration_id)
    if registration is None:
        return False
    if (
        command.reason_code == model.ReasonCode.TERMS_NOT_RECOMMITTED
        and registration.terms_version >= command.terms_version
    ):
        return False
    if command.reason_code == model.ReasonCode.TERMS_NOT_RECOMMITTED:
        message = f"The provider did not commit to {command.subject} within the re-commit window."
    else:
        message = f"The document for {command.subject!r} expired and was not renewed."
    lapsed = registration.lapse(
        model.Reason(command.reason_code, command.subject, message),
        uow.context.who,
        uow.now,
        causes=[uow.context.causation_id],
    )
    if lapsed:
        _cancel_timers(registration, uow)
    return lapsed


async def remind_evidence_renewal(command: RemindEvidenceRenewal, uow: RegistryUnitOfWork) -> bool:
    registration = await uow.registrations.get(command.registration_id)
    if registration is None:
        return False
    return registration.remind_renewal(command.requirement_code, command.expire_time, uow.now)


async def get_terms(query: GetTerms, uow: RegistryUnitOfWork) -> model.Terms:
    return await _published_terms(uow, query.region, query.service, query.version)


async def list_terms(query: ListTerms, uow: RegistryUnitOfWork) -> list[model.Terms]:
    return await uow.terms.all_of(query.region, query.service)


async def get_general_terms(query: GetGeneralTerms, uow: RegistryUnitOfWork) -> model.GeneralTerms:
    _require_organiser(query.region)
    general = await _general_terms(uow, query.region, query.version)
    if general is None:
        name = model.GENERAL_TERMS.format(region=query.region, version=query.version)
        raise NotFound(f"no published general terms {name}", reason="GENERAL_TERMS_NOT_FOUND")
    return general


async def list_general_terms(query: ListGeneralTerms, uow: RegistryUnitOfWork) -> list[model.GeneralTerms]:
    _require_organiser(query.region)
    return await uow.general_terms.page(query.region, before_version=query.before_version, limit=query.limit)


async def diff_terms(query: DiffTerms, uow: RegistryUnitOfWork) -> model.TermsDiff:
    older = await _published_terms(uow, query.region, query.service, query.other_version)
    newer = await _published_terms(uow, query.region, query.service, query.version)
    return model.diff_terms(older, newer)


async def get_registration(query: GetRegistration, uow: RegistryUnitOfWork) -> model.Registration:
    return await _registration_for(
        uow,
        query,
        grants=[access.region_admin(query.region), access.supervisor(query.region)],
        action="reading a registration",
    )


async def list_registrations(query: ListRegistrations, uow: RegistryUnitOfWork) -> list[model.Registration]:
    access.require(
        uow.actor,
        any_of=[access.region_admin(query.region), access.supervisor(query.region)],
        action="listing a region's registrations",
    )
    return await uow.registrations.page(
        region=query.region,
        service=query.service,
        business_id=query.business_id,
        state=query.state,
        after=query.after,
        limit=query.limit,
    )


async def list_provider_registrations(
    query: ListProviderRegistrations, uow: RegistryUnitOfWork
) -> list[model.Registration]:
    access.require(uow.actor, any_of=[access.provider(query.business_id)], action="listing own registrations")
    return await uow.registrations.page(business_id=query.business_id, after=query.after, limit=query.limit)


async def get_contact_details(query: GetContactDetails, uow: RegistryUnitOfWork) -> model.ContactDetails:
    """The provider's contact details, for the provider and for the admin of a region where it
    has a registration (in any state: that admin already reads the registration itself)."""
    name = model.CONTACT_DETAILS.format(business_id=query.business_id)
    grants = [access.provider(query.business_id)]
    # Only the asking admin's own region is looked up, so that neither the grants nor a refusal
    # tell anyone where else the provider has registered.
    if uow.actor is not None:
        admin = access.region_admin(uow.actor.organisation)
        if admin.admits(uow.actor) and await uow.registrations.registered_in(
            uow.actor.organisation, query.business_id
        ):
            grants.append(admin)
    try:
        access.require(uow.actor, any_of=grants, action="reading contact details")
    except PermissionDenied:
        raise PermissionDenied(
            f"{name}: reading contact details is for the provider and the admins of the regions "
            "where it has registered",
            reason="TENANT_MISMATCH",
        ) from None
    details = await uow.contact_details.get(query.business_id)
    if details is None:
        raise NotFound(f"{name}: the provider has given none", reason="CONTACT_DETAILS_NOT_FOUND")
    return details


async def list_providers(query: ListProviders, uow: RegistryUnitOfWork) -> list[model.Listing]:
    """The public list: admitted, unsuspended providers; no sign-in needed."""
    return await uow.registrations.listed_page(
        query.region,
        query.service,
        municipality=query.municipality,
        language=query.language,
        after_business_id=query.after_business_id,
        limit=query.limit,
    )


# -- shared steps -------------------------------------------------------------------------------


def _timer(kind: str, registration: model.Registration) -> str:
    return f"registry:{kind}:{registration.id}"


def _cancel_timers(registration: model.Registration, uow: RegistryUnitOfWork) -> None:
    for kind in ("lift", "recommit", "evidence", "evidence-reminder"):
        uow.timers.cancel(_timer(kind, registration))


def _set_evidence_timers(
    registration: model.Registration, terms: model.Terms, uow: RegistryUnitOfWork, *, armed: bool = True
) -> None:
    """The admission lapses when its first document expires, with a reminder before. `armed`
    False: no evidence timer can exist yet (a first admission), so there is nothing to cancel."""
    expiry = model.evidence_expiry(terms, registration.evidence)
    if expiry is None:
        if not armed:
            return
        uow.timers.cancel(_timer("evidence", registration))
        uow.timers.cancel(_timer("evidence-reminder", registration))
        return
    code, expires = expiry
    uow.timers.set(
        _timer("evidence", registration),
        expires,
        LapseRegistration(registration.id, model.ReasonCode.EVIDENCE_EXPIRED, code),
    )
    remind_at = max(expires - timedelta(days=model.RENEWAL_REMINDER_DAYS), uow.now)
    uow.timers.set(
        _timer("evidence-reminder", registration),
        remind_at,
        RemindEvidenceRenewal(registration.id, code, expires),
    )


async def _after_admission(
    registration: model.Registration, terms: model.Terms, uow: RegistryUnitOfWork
) -> None:
    """Arms the evidence timers and applies breaches that arrived before the admission."""
    _set_evidence_timers(registration, terms, uow, armed=False)
    pending = await uow.pending_breaches.take(
        registration.region, registration.service, registration.business_id
    )
    if pending:
        policy = await uow.breach_policies.get(registration.region)
        for breach in pending:
            await _suspend_for_breach(registration, breach, policy, uow, causes=("pending-breach",))


async def _registration_for(
    uow: RegistryUnitOfWork,
    command: RegistrationCommand | GetRegistration,
    *,
    grants: list[access.Grant] | None,
    action: str,
) -> model.Registration:
    """The named registration when the actor may act on it: its provider, or one of `grants`
    (None: the provider only). Another organisation's registration is PERMISSION_DENIED."""
    if uow.actor is None:
        raise Unauthenticated(f"{action} needs a bearer token")
    registration = await uow.registrations.get(command.registration_id)
    name = model.REGISTRATION.format(
        region=command.region, service=command.service, registration=command.registration_id
    )
    if registration is None or (registration.region, registration.service) != (
        command.region,
        command.service,
    ):
        raise NotFound(f"no registration {name}", reason="REGISTRATION_NOT_FOUND")
    allowed = [access.provider(registration.business_id)] if grants is None else grants
    if isinstance(command, GetRegistration):
        allowed = [access.provider(registration.business_id), *allowed]
    try:
        access.require(uow.actor, any_of=allowed, action=action)
    except PermissionDenied:
        raise PermissionDenied(f"{name}: {action} is not for this token", reason="TENANT_MISMATCH") from None
    return registration


def _require_organiser(region: str) -> None:
    if region not in catalogue.ORGANISER_IDS:
        raise NotFound(f"no organiser {model.ORGANISER.format(region=region)}", reason="ORGANISER_NOT_FOUND")


async def _require_service(uow: RegistryUnitOfWork, region: str, service: str) -> None:
    """A service outside the national catalogue and the organiser's own is NOT_FOUND. (Organisers
    are not checked here: who acts for which region is the token's business.)"""
    if not await uow.services.exists(region, service):
        name = model.SERVICE.format(region=region, service=service)
        raise NotFound(f"no service {name} in the catalogue", reason="SERVICE_NOT_FOUND")


async def _published_terms(uow: RegistryUnitOfWork, region: str, service: str, version: int) -> model.Terms:
    terms = await uow.terms.get(region, service, version)
    if terms is None:
        name = model.TERMS.format(region=region, service=service, version=version)
        raise NotFound(f"no published terms {name}", reason="TERMS_NOT_FOUND")
    return terms


async def _general_terms(uow: RegistryUnitOfWork, region: str, version: int) -> model.GeneralTerms | None:
    """The named version of the region's general part; None for version 0 (none published)."""
    return await uow.general_terms.get(region, version) if version else None


async def _current_terms(uow: RegistryUnitOfWork, region: str, service: str, version: int) -> model.Terms:
    """The named version when it is the current one; a superseded version is refused, naming the current."""
    terms = await _published_terms(uow, region, service, version)
    if await uow.terms.superseded(region, service, version):
        current = await uow.terms.current_version(region, service)
        name = model.TERMS.format(region=region, service=service, version=current)
        raise FailedPrecondition(
            f"{terms.name} is superseded: register against the current terms {name}",
            reason="TERMS_SUPERSEDED",
        )
    return terms


HANDLERS: dict[type[Any], Any] = {
    PublishTerms: publish_terms,
    PublishGeneralTerms: publish_general_terms,
    RegisterProvider: register_provider,
    UpdateRegistration: update_registration,
    SubmitRegistration: submit_registration,
    ReinstateAfterResolution: reinstate_after_resolution,
    SuspendProvider: suspend_provider,
    RecordMarketFailure: record_market_failure,
    LiftMarketFailure: lift_market_failure,
    SetBreachPolicy: set_breach_policy,
    CreateService: create_service,
    ListOrganisers: list_organisers,
    ListServices: list_services,
    ListMunicipalities: list_municipalities,
    GetBreachPolicy: get_breach_policy,
    DecideRegistration: decide_registration,
    SuspendRegistration: suspend_registration,
    ReinstateRegistration: reinstate_registration,
    RevokeRegistration: revoke_registration,
    WithdrawRegistration: withdraw_registration,
    RecommitRegistration: recommit_registration,
    RotateRegistrationKey: rotate_registration_key,
    AddRegistrationKey: add_registration_key,
    RetireRegistrationKey: retire_registration_key,
    UpdateContactDetails: update_contact_details,
    RenewEvidence: renew_evidence,
    LiftSuspension: lift_suspension,
    LapseRegistration: lapse_registration,
    RemindEvidenceRenewal: remind_evidence_renewal,
    GetTerms: get_terms,
    ListTerms: list_terms,
    GetGeneralTerms: get_general_terms,
    ListGeneralTerms: list_general_terms,
    DiffTerms: diff_terms,
    GetRegistration: get_registration,
    ListRegistrations: list_registrations,
    ListProviderRegistrations: list_provider_registrations,
    ListProviders: list_providers,
    GetContactDetails: get_contact_details,
}

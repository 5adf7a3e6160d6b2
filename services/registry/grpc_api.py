"""Thin gRPC servicer for the registry: proto in, command or query to the dispatcher, domain
object out as proto."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeAlias

import grpc
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc

from services.registry import handlers, model
from services.runtime.dispatch import Dispatcher
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.grpc_server import call_context
from services.runtime.names import PageRequest, foreign_page_token, page
from services.runtime.protoconv import (
    enum_from_proto,
    enum_to_proto,
    from_money,
    from_timestamp,
    money,
    optional_date,
    proto_date,
    timestamp,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_KIND = registry_pb2.DESCRIPTOR.enum_types_by_name["RequirementKind"]
_STATE = registry_pb2.DESCRIPTOR.enum_types_by_name["RegistrationState"]
_DECIDER = registry_pb2.DESCRIPTOR.enum_types_by_name["Decider"]
_LEGAL_FORM = registry_pb2.DESCRIPTOR.enum_types_by_name["LegalForm"]
_ATTRIBUTE = registry_pb2.DESCRIPTOR.enum_types_by_name["Attribute"]
_TOPIC = registry_pb2.DESCRIPTOR.enum_types_by_name["SectionTopic"]


def _requirements_to_proto(requirements: Sequence[model.Requirement]) -> list[registry_pb2.Requirement]:
    return [
        registry_pb2.Requirement(
            code=r.code,
            description=r.description,
            kind=registry_pb2.RequirementKind.ValueType(enum_to_proto(r.kind, _KIND)),
            max_age_days=r.max_age_days,
            decided_by=registry_pb2.Decider.ValueType(enum_to_proto(r.decided_by, _DECIDER)),
            legal_basis=r.legal_basis,
            valid_days=r.valid_days,
            attribute=registry_pb2.Attribute.ValueType(enum_to_proto(r.attribute, _ATTRIBUTE)),
            values=r.values,
            price_ceiling=money(r.price_ceiling) if r.price_ceiling is not None else None,
        )
        for r in requirements
    ]


def _sections_to_proto(sections: Sequence[model.Section]) -> list[registry_pb2.Section]:
    return [
        registry_pb2.Section(
            topic=registry_pb2.SectionTopic.ValueType(enum_to_proto(s.topic, _TOPIC)), text=s.text
        )
        for s in sections
    ]


def terms_to_proto(terms: model.Terms) -> registry_pb2.Terms:
    return registry_pb2.Terms(
        name=terms.name,
        title=terms.title,
        requirements=_requirements_to_proto(terms.requirements),
        version=terms.version,
        content_hash=terms.content_hash,
        publish_time=timestamp(terms.published_at) if terms.published_at else None,
        sections=_sections_to_proto(terms.sections),
        general_terms=terms.general_terms_name,
    )


def general_terms_to_proto(general: model.GeneralTerms) -> registry_pb2.GeneralTerms:
    return registry_pb2.GeneralTerms(
        name=general.name,
        title=general.title,
        requirements=_requirements_to_proto(general.requirements),
        sections=_sections_to_proto(general.sections),
        version=general.version,
        content_hash=general.content_hash,
        publish_time=timestamp(general.published_at) if general.published_at else None,
    )


def registration_to_proto(registration: model.Registration) -> registry_pb2.Registration:
    return registry_pb2.Registration(
        name=registration.name,
        terms=registration.terms_name,
        business_id=registration.business_id,
        display_name=registration.display_name,
        evidence=[
            registry_pb2.Evidence(
                requirement_code=e.requirement_code,
                declared=e.declared,
                issued_on=proto_date(e.issued_on) if e.issued_on else None,
                document_sha256=e.document_sha256,
            )
            for e in registration.evidence
        ],
        public_key=registration.public_key,
        state=registry_pb2.RegistrationState.ValueType(enum_to_proto(registration.state, _STATE)),
        reasons=_reasons_to_proto(registration.reasons),
        create_time=timestamp(registration.created_at),
        update_time=timestamp(registration.updated_at),
        municipalities=registration.municipalities,
        languages=registration.languages,
        price=money(registration.price) if registration.price is not None else None,
        decisions=[
            registry_pb2.Decision(
                kind=str(d.kind),
                state=registry_pb2.RegistrationState.ValueType(enum_to_proto(d.state, _STATE)),
                reasons=_reasons_to_proto(d.reasons),
                causes=d.causes,
                actor=d.actor,
                decide_time=timestamp(d.decide_time),
                terms=model.TERMS.format(
                    region=registration.region, service=registration.service, version=d.terms_version
                ),
                lift_time=timestamp(d.lift_time) if d.lift_time else None,
            )
            for d in registration.decisions
        ],
        recommit_deadline=timestamp(registration.recommit_deadline)
        if registration.recommit_deadline
        else None,
        lift_time=timestamp(registration.lift_time) if registration.lift_time else None,
        legal_form=registry_pb2.LegalForm.ValueType(enum_to_proto(registration.legal_form, _LEGAL_FORM)),
        qualifications=registration.qualifications,
        keys=[
            registry_pb2.RegistrationKey(
                fingerprint=k.fingerprint,
                public_key=k.public_key,
                add_time=timestamp(k.add_time),
                retire_time=timestamp(k.retire_time) if k.retire_time else None,
            )
            for k in registration.keys
        ],
    )


def _reasons_to_proto(reasons: Sequence[model.Reason]) -> list[registry_pb2.DecisionReason]:
    return [registry_pb2.DecisionReason(code=r.code, subject=r.subject, message=r.message) for r in reasons]


def _reasons(reasons: Sequence[registry_pb2.DecisionReason]) -> tuple[model.Reason, ...]:
    return tuple(model.Reason(code=r.code.strip(), subject=r.subject, message=r.message) for r in reasons)


def _evidence(evidence: Sequence[registry_pb2.Evidence], prefix: str) -> tuple[model.Evidence, ...]:
    return tuple(_one_evidence(e, f"{prefix}[{i}]") for i, e in enumerate(evidence))


def _one_evidence(evidence: registry_pb2.Evidence, path: str) -> model.Evidence:
    return model.Evidence(
        requirement_code=evidence.requirement_code,
        declared=evidence.declared,
        issued_on=optional_date(evidence.issued_on, f"{path}.issued_on"),
        document_sha256=evidence.document_sha256,
    )


def _registration_parts(name: str, field: str = "name") -> tuple[str, str, str]:
    parts = model.REGISTRATION.parse(name, field)
    return parts["region"], parts["service"], parts["registration"]


def _terms_of(name: str, field: str, region: str, service: str) -> int:
    """The version of terms `name`, which must belong to the given region and service."""
    terms = model.TERMS.parse(name, field)
    if (terms["region"], terms["service"]) != (region, service):
        raise InvalidArgument(
            f"{field} must be terms of the same region and service",
            [FieldViolation(field, "must be terms of the same region and service")],
        )
    return int(terms["version"])


def _paging(list_name: str, request: Any, query: Mapping[str, object] | None = None) -> PageRequest:
    """The request's paging, its tokens bound to this list as well as to its query."""
    return page(request.page_size, request.page_token, query or {}, listing=f"registry.{list_name}")


def _position(paging: PageRequest) -> tuple[str, str]:
    """Where a page of registrations starts: the creation time and id of the last one before."""
    if not paging.after:
        return "", ""
    return paging.instant("created").isoformat(), paging.text("id")


def _sections(sections: Sequence[registry_pb2.Section], prefix: str) -> tuple[model.Section, ...]:
    return tuple(
        model.Section(
            enum_from_proto(model.SectionTopic, s.topic, _TOPIC, f"{prefix}.sections[{i}].topic"), s.text
        )
        for i, s in enumerate(sections)
    )


def _requirement(r: registry_pb2.Requirement, index: int, prefix: str = "terms") -> model.Requirement:
    path = f"{prefix}.requirements[{index}]"
    return model.Requirement(
        code=r.code.strip(),
        description=r.description,
        kind=enum_from_proto(model.RequirementKind, r.kind, _KIND, f"{path}.kind"),
        max_age_days=r.max_age_days,
        decided_by=model.Decider.PERSON
        if r.decided_by == registry_pb2.DECIDER_PERSON
        else model.Decider.AUTOMATIC,
        legal_basis=r.legal_basis,
        valid_days=r.valid_days,
        attribute=enum_from_proto(model.Attribute, r.attribute, _ATTRIBUTE, f"{path}.attribute"),
        values=tuple(r.values),
        price_ceiling=from_money(r.price_ceiling, f"{path}.price_ceiling")
        if r.HasField("price_ceiling")
        else None,
    )


def _legal_form(registration: registry_pb2.Registration) -> model.LegalForm:
    return enum_from_proto(model.LegalForm, registration.legal_form, _LEGAL_FORM, "registration.legal_form")


def _price(registration: registry_pb2.Registration) -> Decimal | None:
    return from_money(registration.price, "registration.price") if registration.HasField("price") else None


def _draft_changes(request: registry_pb2.UpdateRegistrationRequest) -> model.DraftChanges:
    """The fields the update mask names, or (AIP-134) every updatable field given a value."""
    registration = request.registration
    if request.HasField("update_mask") and request.update_mask.paths:
        fields = tuple(dict.fromkeys(request.update_mask.paths))
    else:
        fields = tuple(
            name
            for name in model.DRAFT_FIELDS
            if (registration.HasField("price") if name == "price" else bool(getattr(registration, name)))
        )
    return model.DraftChanges(
        fields=fields,
        display_name=registration.display_name,
        evidence=_evidence(registration.evidence, "registration.evidence"),
        public_key=registration.public_key,
        municipalities=tuple(registration.municipalities),
        languages=tuple(registration.languages),
        price=_price(registration),
        legal_form=_legal_form(registration),
        qualifications=tuple(registration.qualifications),
    )


def _contact_provider(name: str, field: str) -> str:
    """The business ID of contact details `name`, its check digit verified."""
    return model.validate_business_id(model.CONTACT_DETAILS.parse(name, field)["business_id"], field)


def _contact_changes(request: registry_pb2.UpdateContactDetailsRequest) -> model.ContactChanges:
    """The fields the update mask names, or (AIP-134) every field given a value."""
    given = request.contact_details
    if request.HasField("update_mask") and request.update_mask.paths:
        fields = tuple(dict.fromkeys(request.update_mask.paths))
    else:
        fields = tuple(name for name in model.CONTACT_FIELDS if getattr(given, name))
    return model.ContactChanges(
        fields=fields, contact_person=given.contact_person, email=given.email, phone=given.phone
    )


def contact_details_to_proto(details: model.ContactDetails) -> registry_pb2.ContactDetails:
    return registry_pb2.ContactDetails(
        name=details.name,
        contact_person=details.contact_person,
        email=details.email,
        phone=details.phone,
        update_time=timestamp(details.update_time) if details.update_time else None,
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Maps RegistryService RPCs onto the registry's dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def PublishTerms(
        self, request: registry_pb2.PublishTermsRequest, context: Context
    ) -> registry_pb2.Terms:
        parent = model.SERVICE.parse(request.parent, "parent")
        command = handlers.PublishTerms(
            region=parent["region"],
            service=parent["service"],
            title=request.terms.title,
            requirements=tuple(_requirement(r, i) for i, r in enumerate(request.terms.requirements)),
            recommit_days=request.recommit_days,
            sections=_sections(request.terms.sections, "terms"),
        )
        terms = await self._dispatcher.handle(command, call_context(request.request_id))
        return terms_to_proto(terms)

    async def PublishGeneralTerms(
        self, request: registry_pb2.PublishGeneralTermsRequest, context: Context
    ) -> registry_pb2.GeneralTerms:
        region = model.ORGANISER.parse(request.parent, "parent")["region"]
        given = request.general_terms
        command = handlers.PublishGeneralTerms(
            region=region,
            title=given.title,
            requirements=tuple(_requirement(r, i, "general_terms") for i, r in enumerate(given.requirements)),
            sections=_sections(given.sections, "general_terms"),
            recommit_days=request.recommit_days,
        )
        general = await self._dispatcher.handle(command, call_context(request.request_id))
        return general_terms_to_proto(general)

    async def GetGeneralTerms(
        self, request: registry_pb2.GetGeneralTermsRequest, context: Context
    ) -> registry_pb2.GeneralTerms:
        parts = model.GENERAL_TERMS.parse(request.name, "name")
        query = handlers.GetGeneralTerms(parts["region"], int(parts["version"]))
        return general_terms_to_proto(await self._dispatcher.query(query, call_context()))

    async def ListGeneralTerms(
        self, request: registry_pb2.ListGeneralTermsRequest, context: Context
    ) -> registry_pb2.ListGeneralTermsResponse:
        region = model.ORGANISER.parse(request.parent, "parent")["region"]
        paging = _paging("ListGeneralTerms", request, {"parent": request.parent})
        before = paging.number("before") if paging.after else 0
        query = handlers.ListGeneralTerms(region, before, paging.size + 1)
        found: list[model.GeneralTerms] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        return registry_pb2.ListGeneralTermsResponse(
            general_terms=[general_terms_to_proto(g) for g in listed],
            next_page_token=paging.next_token({"before": str(listed[-1].version)} if more else None),
        )

    async def GetTerms(self, request: registry_pb2.GetTermsRequest, context: Context) -> registry_pb2.Terms:
        parts = model.TERMS.parse(request.name, "name")
        query = handlers.GetTerms(parts["region"], parts["service"], int(parts["version"]))
        return terms_to_proto(await self._dispatcher.query(query, call_context()))

    async def RegisterProvider(
        self, request: registry_pb2.RegisterProviderRequest, context: Context
    ) -> registry_pb2.Registration:
        parent = model.SERVICE.parse(request.parent, "parent")
        registration = request.registration
        command = handlers.RegisterProvider(
            region=parent["region"],
            service=parent["service"],
            terms_version=_terms_of(
                registration.terms, "registration.terms", parent["region"], parent["service"]
            ),
            business_id=registration.business_id,
            display_name=registration.display_name,
            evidence=_evidence(registration.evidence, "registration.evidence"),
            public_key=registration.public_key,
            terms_signature=registration.terms_signature,
            municipalities=tuple(registration.municipalities),
            languages=tuple(registration.languages),
            price=_price(registration),
            legal_form=_legal_form(registration),
            qualifications=tuple(registration.qualifications),
            draft=request.draft,
        )
        decided = await self._dispatcher.handle(command, call_context(request.request_id))
        return registration_to_proto(decided)

    async def UpdateRegistration(
        self, request: registry_pb2.UpdateRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        region, service, registration_id = _registration_parts(request.registration.name, "registration.name")
        changes = _draft_changes(request)
        version = 0
        if "terms" in changes.fields:
            version = _terms_of(request.registration.terms, "registration.terms", region, service)
        command = handlers.UpdateRegistration(
            region, service, registration_id, changes=changes, terms_version=version
        )
        return await self._handle(command, request.request_id)

    async def SubmitRegistration(
        self, request: registry_pb2.SubmitRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.SubmitRegistration(
            *_registration_parts(request.name), terms_signature=request.terms_signature
        )
        return await self._handle(command, request.request_id)

    async def GetRegistration(
        self, request: registry_pb2.GetRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        query = handlers.GetRegistration(*_registration_parts(request.name))
        return registration_to_proto(await self._dispatcher.query(query, call_context()))

    async def ListProviders(
        self, request: registry_pb2.ListProvidersRequest, context: Context
    ) -> registry_pb2.ListProvidersResponse:
        parent = model.SERVICE.parse(request.parent, "parent")
        model.validate_list_filter(request.municipality, request.language)
        paging = _paging(
            "ListProviders",
            request,
            {"parent": request.parent, "municipality": request.municipality, "language": request.language},
        )
        query = handlers.ListProviders(
            parent["region"],
            parent["service"],
            paging.text("after") if paging.after else "",
            paging.size + 1,
            municipality=request.municipality,
            language=request.language,
        )
        found: list[model.Listing] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        return registry_pb2.ListProvidersResponse(
            providers=[
                registry_pb2.AdmittedProvider(
                    business_id=p.business_id,
                    display_name=p.display_name,
                    registration=p.registration,
                    terms=p.terms,
                    admit_time=timestamp(p.admit_time),
                    municipalities=p.municipalities,
                    languages=p.languages,
                    price=money(p.price) if p.price is not None else None,
                )
                for p in listed
            ],
            next_page_token=paging.next_token({"after": listed[-1].business_id} if more else None),
        )

    async def ListTerms(
        self, request: registry_pb2.ListTermsRequest, context: Context
    ) -> registry_pb2.ListTermsResponse:
        parent = model.SERVICE.parse(request.parent, "parent")
        found = await self._dispatcher.query(
            handlers.ListTerms(parent["region"], parent["service"]), call_context()
        )
        return registry_pb2.ListTermsResponse(terms=[terms_to_proto(t) for t in found])

    async def DiffTerms(
        self, request: registry_pb2.DiffTermsRequest, context: Context
    ) -> registry_pb2.TermsDiff:
        parts = model.TERMS.parse(request.name, "name")
        other = _terms_of(request.other, "other", parts["region"], parts["service"])
        query = handlers.DiffTerms(parts["region"], parts["service"], int(parts["version"]), other)
        diff: model.TermsDiff = await self._dispatcher.query(query, call_context())
        return registry_pb2.TermsDiff(
            from_terms=diff.from_terms,
            to_terms=diff.to_terms,
            added=diff.added,
            removed=diff.removed,
            changed=diff.changed,
            title_changed=diff.title_changed,
            changed_topics=[
                registry_pb2.SectionTopic.ValueType(enum_to_proto(t, _TOPIC)) for t in diff.changed_topics
            ],
            from_general_terms=diff.from_general_terms,
            to_general_terms=diff.to_general_terms,
            general_terms_changed=diff.general_terms_changed,
        )

    async def ListRegistrations(
        self, request: registry_pb2.ListRegistrationsRequest, context: Context
    ) -> registry_pb2.ListRegistrationsResponse:
        parent = model.SERVICE.parse(request.parent, "parent")
        business_id = (
            model.validate_business_id(request.business_id, "business_id") if request.business_id else ""
        )
        state = (
            enum_from_proto(model.RegistrationState, request.state, _STATE, "state")
            if request.state
            else None
        )
        paging = _paging(
            "ListRegistrations",
            request,
            {"parent": request.parent, "state": str(request.state), "business_id": business_id},
        )
        query = handlers.ListRegistrations(
            parent["region"], parent["service"], state, business_id, _position(paging), paging.size + 1
        )
        return _registration_page(await self._dispatcher.query(query, call_context()), paging)

    async def ListProviderRegistrations(
        self, request: registry_pb2.ListProviderRegistrationsRequest, context: Context
    ) -> registry_pb2.ListRegistrationsResponse:
        business_id = model.PROVIDER.parse(request.parent, "parent")["business_id"]
        paging = _paging("ListProviderRegistrations", request, {"parent": request.parent})
        query = handlers.ListProviderRegistrations(business_id, _position(paging), paging.size + 1)
        return _registration_page(await self._dispatcher.query(query, call_context()), paging)

    async def DecideRegistration(
        self, request: registry_pb2.DecideRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.DecideRegistration(
            *_registration_parts(request.name), admit=request.admit, reasons=_reasons(request.reasons)
        )
        return await self._handle(command, request.request_id)

    async def SuspendRegistration(
        self, request: registry_pb2.SuspendRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.SuspendRegistration(
            *_registration_parts(request.name),
            reasons=_reasons(request.reasons),
            lift_time=from_timestamp(request.lift_time) if request.HasField("lift_time") else None,
        )
        return await self._handle(command, request.request_id)

    async def ReinstateRegistration(
        self, request: registry_pb2.ReinstateRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.ReinstateRegistration(
            *_registration_parts(request.name), reasons=_reasons(request.reasons)
        )
        return await self._handle(command, request.request_id)

    async def RevokeRegistration(
        self, request: registry_pb2.RevokeRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.RevokeRegistration(
            *_registration_parts(request.name), reasons=_reasons(request.reasons)
        )
        return await self._handle(command, request.request_id)

    async def WithdrawRegistration(
        self, request: registry_pb2.WithdrawRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.WithdrawRegistration(
            *_registration_parts(request.name), reasons=_reasons(request.reasons)
        )
        return await self._handle(command, request.request_id)

    async def RecommitRegistration(
        self, request: registry_pb2.RecommitRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        region, service, registration_id = _registration_parts(request.name)
        command = handlers.RecommitRegistration(
            region,
            service,
            registration_id,
            terms_version=_terms_of(request.terms, "terms", region, service),
            terms_signature=request.terms_signature,
            evidence=_evidence(request.evidence, "evidence"),
        )
        return await self._handle(command, request.request_id)

    async def RenewEvidence(
        self, request: registry_pb2.RenewEvidenceRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.RenewEvidence(
            *_registration_parts(request.name), evidence=_one_evidence(request.evidence, "evidence")
        )
        return await self._handle(command, request.request_id)

    async def ListOrganisers(
        self, request: registry_pb2.ListOrganisersRequest, context: Context
    ) -> registry_pb2.ListOrganisersResponse:
        paging = _paging("ListOrganisers", request)
        found: list[model.Organiser] = await self._dispatcher.query(handlers.ListOrganisers(), call_context())
        start = 0
        if paging.after:
            after = paging.text("after")
            start = next((i + 1 for i, o in enumerate(found) if o.id == after), -1)
            if start < 0:  # not a page this list ended on: do not start over from the first
                raise foreign_page_token()
        listed = found[start : start + paging.size]
        more = start + paging.size < len(found)
        return registry_pb2.ListOrganisersResponse(
            organisers=[
                registry_pb2.Organiser(
                    name=model.ORGANISER.format(region=o.id), display_name=o.display_name, kind=str(o.kind)
                )
                for o in listed
            ],
            next_page_token=paging.next_token({"after": listed[-1].id} if more and listed else None),
        )

    async def ListMunicipalities(
        self, request: registry_pb2.ListMunicipalitiesRequest, context: Context
    ) -> registry_pb2.ListMunicipalitiesResponse:
        paging = _paging("ListMunicipalities", request)
        found: list[tuple[str, str, str]] = await self._dispatcher.query(
            handlers.ListMunicipalities(), call_context()
        )
        after = paging.text("after") if paging.after else ""
        listed = [m for m in found if m[0] > after][: paging.size + 1]
        more = len(listed) > paging.size
        listed = listed[: paging.size]
        return registry_pb2.ListMunicipalitiesResponse(
            municipalities=[
                registry_pb2.Municipality(code=code, finnish_name=finnish, swedish_name=swedish)
                for code, finnish, swedish in listed
            ],
            next_page_token=paging.next_token({"after": listed[-1][0]} if more else None),
        )

    async def ListServices(
        self, request: registry_pb2.ListServicesRequest, context: Context
    ) -> registry_pb2.ListServicesResponse:
        region = model.ORGANISER.parse(request.parent, "parent")["region"]
        found = await self._dispatcher.query(handlers.ListServices(region), call_context())
        return registry_pb2.ListServicesResponse(services=[_service_to_proto(region, s) for s in found])

    async def CreateService(
        self, request: registry_pb2.CreateServiceRequest, context: Context
    ) -> registry_pb2.CatalogueService:
        region = model.ORGANISER.parse(request.parent, "parent")["region"]
        command = handlers.CreateService(region, request.service_id, request.service.display_name)
        created = await self._dispatcher.handle(command, call_context(request.request_id))
        return _service_to_proto(region, created)

    async def GetBreachPolicy(
        self, request: registry_pb2.GetBreachPolicyRequest, context: Context
    ) -> registry_pb2.BreachPolicy:
        region = model.BREACH_POLICY.parse(request.name, "name")["region"]
        return _policy_to_proto(
            await self._dispatcher.query(handlers.GetBreachPolicy(region), call_context())
        )

    async def SetBreachPolicy(
        self, request: registry_pb2.SetBreachPolicyRequest, context: Context
    ) -> registry_pb2.BreachPolicy:
        command = handlers.SetBreachPolicy(
            region=model.BREACH_POLICY.parse(request.name, "name")["region"],
            suspending_severities=tuple(request.suspending_severities),
            services=tuple(request.services),
            suspend_days=request.suspend_days,
            reinstate_on_resolution=request.reinstate_on_resolution,
        )
        return _policy_to_proto(await self._dispatcher.handle(command, call_context(request.request_id)))

    async def RotateRegistrationKey(
        self, request: registry_pb2.RotateRegistrationKeyRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.RotateRegistrationKey(
            *_registration_parts(request.name),
            public_key=request.public_key,
            key_signature=request.key_signature,
        )
        return await self._handle(command, request.request_id)

    async def AddRegistrationKey(
        self, request: registry_pb2.AddRegistrationKeyRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.AddRegistrationKey(
            *_registration_parts(request.name),
            public_key=request.public_key,
            key_signature=request.key_signature,
            possession_signature=request.possession_signature,
        )
        return await self._handle(command, request.request_id)

    async def RetireRegistrationKey(
        self, request: registry_pb2.RetireRegistrationKeyRequest, context: Context
    ) -> registry_pb2.Registration:
        command = handlers.RetireRegistrationKey(
            *_registration_parts(request.name),
            key_fingerprint=request.key_fingerprint,
            key_signature=request.key_signature,
        )
        return await self._handle(command, request.request_id)

    async def GetContactDetails(
        self, request: registry_pb2.GetContactDetailsRequest, context: Context
    ) -> registry_pb2.ContactDetails:
        query = handlers.GetContactDetails(_contact_provider(request.name, "name"))
        return contact_details_to_proto(await self._dispatcher.query(query, call_context()))

    async def UpdateContactDetails(
        self, request: registry_pb2.UpdateContactDetailsRequest, context: Context
    ) -> registry_pb2.ContactDetails:
        business_id = _contact_provider(request.contact_details.name, "contact_details.name")
        command = handlers.UpdateContactDetails(business_id, _contact_changes(request))
        await self._dispatcher.handle(command, call_context(request.request_id))
        # Read back after the commit: the write's answer (kept for retries) names them only.
        details = await self._dispatcher.query(handlers.GetContactDetails(business_id), call_context())
        return contact_details_to_proto(details)

    async def _handle(
        self, command: handlers.RegistrationCommand, request_id: str
    ) -> registry_pb2.Registration:
        return registration_to_proto(await self._dispatcher.handle(command, call_context(request_id)))


def _service_to_proto(region: str, service: model.CatalogueService) -> registry_pb2.CatalogueService:
    return registry_pb2.CatalogueService(
        name=model.SERVICE.format(region=region, service=service.id),
        display_name=service.display_name,
        national=service.national,
    )


def _policy_to_proto(policy: model.BreachPolicy) -> registry_pb2.BreachPolicy:
    return registry_pb2.BreachPolicy(
        name=policy.name,
        suspending_severities=policy.suspending_severities,
        services=policy.services,
        suspend_days=policy.suspend_days,
        reinstate_on_resolution=policy.reinstate_on_resolution,
    )


def _registration_page(
    found: list[model.Registration], paging: PageRequest
) -> registry_pb2.ListRegistrationsResponse:
    listed, more = found[: paging.size], len(found) > paging.size
    last = listed[-1] if listed and more else None
    return registry_pb2.ListRegistrationsResponse(
        registrations=[registration_to_proto(r) for r in listed],
        next_page_token=paging.next_token(
            {"created": last.created_at.isoformat(), "id": last.id} if last is not None else None
        ),
    )

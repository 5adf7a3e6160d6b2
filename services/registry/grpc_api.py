"""Thin gRPC servicer for the registry: proto in, command to a handler, proto out."""

from __future__ import annotations

import json
from datetime import date
from typing import Any, TypeAlias

import grpc
from google.type import date_pb2
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc

from services.registry import handlers, model, store
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.grpc_server import current_principal
from services.runtime.names import decode_page_token, encode_page_token, page_size, parse_name
from services.runtime.timestamps import timestamp

SERVICE_PATTERN = "regions/{region}/services/{service}"
TERMS_PATTERN = SERVICE_PATTERN + "/terms/{version}"
REGISTRATION_PATTERN = SERVICE_PATTERN + "/registrations/{registration}"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _date(value: date_pb2.Date, field: str) -> date | None:
    if value.year == 0 and value.month == 0 and value.day == 0:
        return None
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        raise InvalidArgument(
            f"{field} is not a calendar date", [FieldViolation(field, "is not a calendar date")]
        ) from None


def _version(value: str, field: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise InvalidArgument(
            f"{field} must end in a terms version number",
            [FieldViolation(field, "must end in a terms version number (1, 2, ...)")],
        )
    return int(value)


def _parent(value: str) -> dict[str, str]:
    parts = parse_name(value, SERVICE_PATTERN, "parent")
    for key in ("region", "service"):
        model.validate_resource_id(parts[key], "parent")
    return parts


def terms_to_proto(published: handlers.PublishedTerms) -> registry_pb2.Terms:
    terms = published.terms
    return registry_pb2.Terms(
        name=handlers.terms_name(terms.region, terms.service, terms.version),
        title=terms.title,
        requirements=[
            registry_pb2.Requirement(
                code=r.code,
                description=r.description,
                kind=registry_pb2.RequirementKind.Value(f"REQUIREMENT_KIND_{r.kind}"),
                max_age_days=r.max_age_days,
            )
            for r in terms.requirements
        ],
        version=terms.version,
        content_hash=terms.content_hash,
        publish_time=timestamp(published.published_at),
    )


def registration_to_proto(row: store.RegistrationRow) -> registry_pb2.Registration:
    evidence = []
    for item in store.evidence_from_row(row):
        issued = date.fromisoformat(item["issued_on"]) if item["issued_on"] else None
        evidence.append(
            registry_pb2.Evidence(
                requirement_code=item["requirement_code"],
                declared=item["declared"],
                issued_on=date_pb2.Date(year=issued.year, month=issued.month, day=issued.day)
                if issued
                else None,
                document_sha256=item["document_sha256"],
            )
        )
    return registry_pb2.Registration(
        name=handlers.registration_name(row.region, row.service, row.id),
        terms=handlers.terms_name(row.region, row.service, row.terms_version),
        business_id=row.business_id,
        display_name=row.display_name,
        evidence=evidence,
        public_key=row.public_key,
        state=registry_pb2.RegistrationState.Value(f"REGISTRATION_STATE_{row.state}"),
        reasons=[registry_pb2.DecisionReason(**r) for r in json.loads(row.reasons_json)],
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Maps RegistryService RPCs onto the registry's handlers."""

    def __init__(self, use_cases: handlers.RegistryHandlers) -> None:
        self._use_cases = use_cases

    async def PublishTerms(
        self, request: registry_pb2.PublishTermsRequest, context: Context
    ) -> registry_pb2.Terms:
        parent = _parent(request.parent)
        requirements = tuple(
            model.Requirement(
                code=r.code.strip(),
                description=r.description,
                kind=model.parse_requirement_kind(
                    registry_pb2.RequirementKind.Name(r.kind), f"terms.requirements[{i}].kind"
                ),
                max_age_days=r.max_age_days,
            )
            for i, r in enumerate(request.terms.requirements)
        )
        published = await self._use_cases.publish_terms(
            handlers.PublishTerms(
                region=parent["region"],
                service=parent["service"],
                title=request.terms.title,
                requirements=requirements,
                actor=current_principal(),
                request_id=request.request_id,
            )
        )
        return terms_to_proto(published)

    async def GetTerms(self, request: registry_pb2.GetTermsRequest, context: Context) -> registry_pb2.Terms:
        parts = parse_name(request.name, TERMS_PATTERN, "name")
        version = _version(parts["version"], "name")
        return terms_to_proto(await self._use_cases.get_terms(parts["region"], parts["service"], version))

    async def RegisterProvider(
        self, request: registry_pb2.RegisterProviderRequest, context: Context
    ) -> registry_pb2.Registration:
        parent = _parent(request.parent)
        registration = request.registration
        terms = parse_name(registration.terms, TERMS_PATTERN, "registration.terms")
        if (terms["region"], terms["service"]) != (parent["region"], parent["service"]):
            raise InvalidArgument(
                "registration.terms must be terms of the parent service",
                [FieldViolation("registration.terms", "must be terms of the parent region and service")],
            )
        evidence = tuple(
            model.Evidence(
                requirement_code=e.requirement_code,
                declared=e.declared,
                issued_on=_date(e.issued_on, f"registration.evidence[{i}].issued_on"),
                document_sha256=e.document_sha256,
            )
            for i, e in enumerate(registration.evidence)
        )
        row = await self._use_cases.register_provider(
            handlers.RegisterProvider(
                region=parent["region"],
                service=parent["service"],
                terms_version=_version(terms["version"], "registration.terms"),
                business_id=registration.business_id,
                display_name=registration.display_name,
                evidence=evidence,
                public_key=registration.public_key,
                terms_signature=registration.terms_signature,
                actor=current_principal(),
                request_id=request.request_id,
            )
        )
        return registration_to_proto(row)

    async def GetRegistration(
        self, request: registry_pb2.GetRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        parts = parse_name(request.name, REGISTRATION_PATTERN, "name")
        row = await self._use_cases.get_registration(
            parts["region"], parts["service"], parts["registration"], current_principal()
        )
        return registration_to_proto(row)

    async def ListProviders(
        self, request: registry_pb2.ListProvidersRequest, context: Context
    ) -> registry_pb2.ListProvidersResponse:
        parent = _parent(request.parent)
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token).get("after", "")
        rows = await self._use_cases.list_providers(parent["region"], parent["service"], after, size + 1)
        page, more = rows[:size], len(rows) > size
        return registry_pb2.ListProvidersResponse(
            providers=[
                registry_pb2.AdmittedProvider(
                    business_id=row.business_id,
                    display_name=row.display_name,
                    registration=handlers.registration_name(row.region, row.service, row.id),
                    terms=handlers.terms_name(row.region, row.service, row.terms_version),
                    admit_time=timestamp(row.created_at),
                )
                for row in page
            ],
            next_page_token=encode_page_token({"after": page[-1].business_id}) if more else "",
        )

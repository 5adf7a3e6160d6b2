"""Thin gRPC servicer for the registry: proto in, command or query to the dispatcher, domain
object out as proto."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc

from services.registry import handlers, model
from services.runtime.dispatch import Dispatcher
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.grpc_server import call_context
from services.runtime.names import page
from services.runtime.protoconv import enum_from_proto, enum_to_proto, optional_date, proto_date, timestamp

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_KIND = registry_pb2.DESCRIPTOR.enum_types_by_name["RequirementKind"]
_STATE = registry_pb2.DESCRIPTOR.enum_types_by_name["RegistrationState"]


def terms_to_proto(terms: model.Terms) -> registry_pb2.Terms:
    return registry_pb2.Terms(
        name=terms.name,
        title=terms.title,
        requirements=[
            registry_pb2.Requirement(
                code=r.code,
                description=r.description,
                kind=registry_pb2.RequirementKind.ValueType(enum_to_proto(r.kind, _KIND)),
                max_age_days=r.max_age_days,
            )
            for r in terms.requirements
        ],
        version=terms.version,
        content_hash=terms.content_hash,
        publish_time=timestamp(terms.published_at) if terms.published_at else None,
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
        reasons=[
            registry_pb2.DecisionReason(code=r.code, subject=r.subject, message=r.message)
            for r in registration.reasons
        ],
        create_time=timestamp(registration.created_at),
        update_time=timestamp(registration.updated_at),
    )


def _requirement(r: registry_pb2.Requirement, index: int) -> model.Requirement:
    path = f"terms.requirements[{index}].kind"
    return model.Requirement(
        code=r.code.strip(),
        description=r.description,
        kind=enum_from_proto(model.RequirementKind, r.kind, _KIND, path),
        max_age_days=r.max_age_days,
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
        )
        terms = await self._dispatcher.handle(command, call_context(request.request_id))
        return terms_to_proto(terms)

    async def GetTerms(self, request: registry_pb2.GetTermsRequest, context: Context) -> registry_pb2.Terms:
        parts = model.TERMS.parse(request.name, "name")
        query = handlers.GetTerms(parts["region"], parts["service"], int(parts["version"]))
        return terms_to_proto(await self._dispatcher.query(query, call_context()))

    async def RegisterProvider(
        self, request: registry_pb2.RegisterProviderRequest, context: Context
    ) -> registry_pb2.Registration:
        parent = model.SERVICE.parse(request.parent, "parent")
        registration = request.registration
        terms = model.TERMS.parse(registration.terms, "registration.terms")
        if (terms["region"], terms["service"]) != (parent["region"], parent["service"]):
            raise InvalidArgument(
                "registration.terms must be terms of the parent service",
                [FieldViolation("registration.terms", "must be terms of the parent region and service")],
            )
        command = handlers.RegisterProvider(
            region=parent["region"],
            service=parent["service"],
            terms_version=int(terms["version"]),
            business_id=registration.business_id,
            display_name=registration.display_name,
            evidence=tuple(
                model.Evidence(
                    requirement_code=e.requirement_code,
                    declared=e.declared,
                    issued_on=optional_date(e.issued_on, f"registration.evidence[{i}].issued_on"),
                    document_sha256=e.document_sha256,
                )
                for i, e in enumerate(registration.evidence)
            ),
            public_key=registration.public_key,
            terms_signature=registration.terms_signature,
        )
        decided = await self._dispatcher.handle(command, call_context(request.request_id))
        return registration_to_proto(decided)

    async def GetRegistration(
        self, request: registry_pb2.GetRegistrationRequest, context: Context
    ) -> registry_pb2.Registration:
        parts = model.REGISTRATION.parse(request.name, "name")
        query = handlers.GetRegistration(parts["region"], parts["service"], parts["registration"])
        return registration_to_proto(await self._dispatcher.query(query, call_context()))

    async def ListProviders(
        self, request: registry_pb2.ListProvidersRequest, context: Context
    ) -> registry_pb2.ListProvidersResponse:
        parent = model.SERVICE.parse(request.parent, "parent")
        paging = page(request.page_size, request.page_token, {"parent": request.parent})
        query = handlers.ListProviders(
            parent["region"], parent["service"], paging.after.get("after", ""), paging.size + 1
        )
        found: list[model.Registration] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        return registry_pb2.ListProvidersResponse(
            providers=[
                registry_pb2.AdmittedProvider(
                    business_id=r.business_id,
                    display_name=r.display_name,
                    registration=r.name,
                    terms=r.terms_name,
                    admit_time=timestamp(r.created_at),
                )
                for r in listed
            ],
            next_page_token=paging.next_token({"after": listed[-1].business_id} if more else None),
        )

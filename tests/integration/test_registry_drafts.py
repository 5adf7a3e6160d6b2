# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""Drafts and their submission, automatic attribute checks, the municipality code list and the
breach policy's reinstatement on resolution, over gRPC against real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from kasvu.registry.v1 import events_pb2, registry_pb2
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2

from services.registry.consumers import reinstatement_for
from services.runtime.dispatch import InboxKey
from services.runtime.protoconv import money
from tests.integration.helpers import (
    ProviderKey,
    count_rows,
    declaration,
    declared,
    document,
    error_reason,
    field_violations,
    issued,
    registration_request,
)
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    BREACH,
    PARENT,
    REGION,
    SERVICE,
    START,
    Registry,
    next_business_id,
    payloads,
    refused,
    registry,
)


def draft_request(
    terms: registry_pb2.Terms, business_id: str, key: ProviderKey, **fields: Any
) -> registry_pb2.RegisterProviderRequest:
    """A draft: no signature, and only the fields given."""
    return registry_pb2.RegisterProviderRequest(
        parent=PARENT,
        registration=registry_pb2.Registration(
            terms=terms.name, business_id=business_id, public_key=key.public_key, **fields
        ),
        draft=True,
    )


async def update(
    registry: Registry, draft: registry_pb2.Registration, paths: list[str], **fields: Any
) -> registry_pb2.Registration:
    return await registry.stub.UpdateRegistration(
        registry_pb2.UpdateRegistrationRequest(
            registration=registry_pb2.Registration(name=draft.name, **fields),
            update_mask=FieldMask(paths=paths),
        ),
        metadata=registry.tokens.provider(draft.business_id),
    )


async def submit(
    registry: Registry, draft: registry_pb2.Registration, signature: bytes, business_id: str = ""
) -> registry_pb2.Registration:
    return await registry.stub.SubmitRegistration(
        registry_pb2.SubmitRegistrationRequest(name=draft.name, terms_signature=signature),
        metadata=registry.tokens.provider(business_id or draft.business_id),
    )


def state(registration: registry_pb2.Registration) -> str:
    return registry_pb2.RegistrationState.Name(registration.state).removeprefix("REGISTRATION_STATE_")


# -- drafts -------------------------------------------------------------------------------------


async def test_a_draft_is_completed_submitted_and_decided_with_each_transition_recorded(
    registry, next_business_id
):
    terms = await registry.publish(declaration())
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(terms, business_id, key), metadata=registry.tokens.provider(business_id)
    )
    assert state(draft) == "DRAFT"
    assert [d.kind for d in draft.decisions] == ["DRAFT"]
    assert await registry.listed() == []
    assert await payloads(registry.db, "ProviderRegistered") == []

    changed = await update(
        registry,
        draft,
        ["display_name", "evidence", "municipalities", "languages"],
        display_name="Osaajat Oy",
        evidence=[declared()],
        municipalities=["837"],
        languages=["fi"],
    )
    assert (changed.display_name, list(changed.municipalities), state(changed)) == (
        "Osaajat Oy",
        ["837"],
        "DRAFT",
    )

    submitted = await submit(registry, draft, key.sign(terms.content_hash))

    assert state(submitted) == "ADMITTED"
    assert [(d.kind, d.actor, d.terms) for d in submitted.decisions] == [
        ("DRAFT", f"provider:{business_id}:provider@{business_id}", terms.name),
        ("ADMISSION", f"provider:{business_id}:provider@{business_id}", terms.name),
    ]
    assert await registry.listed(municipality="837", language="fi") == [business_id]
    (updated,) = await payloads(registry.db, "RegistrationDraftUpdated")
    assert list(events_pb2.RegistrationDraftUpdated.FromString(updated).fields) == [
        "display_name",
        "evidence",
        "municipalities",
        "languages",
    ]
    for event_type in ("RegistrationDrafted", "ProviderRegistered", "RegistrationAdmitted"):
        assert len(await payloads(registry.db, event_type)) == 1, event_type


@pytest.mark.parametrize(
    ("issued_days", "wait_days", "code", "reason"),
    [
        (-60, 31, grpc.StatusCode.FAILED_PRECONDITION, "EVIDENCE_TOO_OLD"),  # 91 days old by the submission
        (2, 0, grpc.StatusCode.INVALID_ARGUMENT, "EVIDENCE_FROM_FUTURE"),
    ],
    ids=["aged-past-its-maximum", "from-the-future"],
)
async def test_a_draft_whose_document_is_too_old_or_from_the_future_is_refused_on_submission_stays_a_draft(  # noqa: PLR0917 - fixtures and parameters
    registry, next_business_id, issued_days, wait_days, code, reason
):
    terms = await registry.publish(document("tax-certificate", 90))
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(
            terms,
            business_id,
            key,
            display_name="Osaajat Oy",
            evidence=[issued("tax-certificate", START.date() + timedelta(days=issued_days))],
        ),
        metadata=registry.tokens.provider(business_id),
    )
    registry.clock.advance(timedelta(days=wait_days))
    tables = ("registry_registrations", "outbox", "audit_log", "idempotency_keys")
    before = [await count_rows(registry.db, table) for table in tables]

    async with refused(code) as caught:
        await submit(registry, draft, key.sign(terms.content_hash))

    assert error_reason(caught[0]) == reason
    assert field_violations(caught[0]) == ["registration.evidence[0].issued_on"]
    if reason == "EVIDENCE_TOO_OLD":
        assert "at most 90 days" in (caught[0].details() or "")
    assert [await count_rows(registry.db, table) for table in tables] == before
    kept = await registry.get(draft)
    assert (state(kept), [d.kind for d in kept.decisions]) == ("DRAFT", ["DRAFT"])
    assert await payloads(registry.db, "ProviderRegistered") == []


async def test_submitting_or_changing_what_is_not_a_draft_is_failed_precondition_and_changes_nothing(
    registry, next_business_id
):
    terms = await registry.publish()
    admitted = await registry.register(terms, next_business_id())
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await submit(registry, admitted, b"x" * 64)
    assert error_reason(caught[0]) == "NOT_DRAFT"
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await update(registry, admitted, ["display_name"], display_name="Toinen Oy")
    assert error_reason(caught[0]) == "NOT_DRAFT"

    after = await registry.get(admitted)
    assert (after.display_name, [d.kind for d in after.decisions]) == ("Osaajat Oy", ["ADMISSION"])
    assert await payloads(registry.db, "RegistrationDraftUpdated") == []


async def test_a_signed_draft_or_a_malformed_one_is_refused_naming_the_field_and_nothing_is_stored(
    registry, next_business_id
):
    terms = await registry.publish()
    business_id, key = next_business_id(), ProviderKey()
    signed = draft_request(terms, business_id, key, terms_signature=key.sign(terms.content_hash))
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.RegisterProvider(signed, metadata=registry.tokens.provider(business_id))
    assert field_violations(caught[0]) == ["registration.terms_signature"]

    malformed = draft_request(terms, business_id, key, municipalities=["999"], qualifications=["Not A Code"])
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.RegisterProvider(malformed, metadata=registry.tokens.provider(business_id))
    assert field_violations(caught[0]) == ["registration.municipalities[0]", "registration.qualifications[0]"]
    assert await count_rows(registry.db, "registry_registrations") == 0


async def test_a_draft_submitted_with_a_bad_signature_or_unnamed_stays_a_draft(registry, next_business_id):
    terms = await registry.publish()
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(terms, business_id, key, evidence=[declared()]),
        metadata=registry.tokens.provider(business_id),
    )
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await submit(registry, draft, ProviderKey().sign(terms.content_hash))
    assert field_violations(caught[0]) == ["registration.display_name", "terms_signature"]
    assert state(await registry.get(draft)) == "DRAFT"


async def test_a_draft_on_superseded_terms_is_refused_on_submission_and_moved_to_the_current_terms(
    registry, next_business_id
):
    first = await registry.publish()
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(
            terms=first, business_id=business_id, key=key, display_name="Osaajat Oy", evidence=[declared()]
        ),
        metadata=registry.tokens.provider(business_id),
    )
    second = await registry.publish(title="Rekrytointi 2027")

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await submit(registry, draft, key.sign(first.content_hash))
    assert error_reason(caught[0]) == "TERMS_SUPERSEDED"
    assert second.name in (caught[0].details() or "")

    renamed = await update(registry, draft, ["display_name"], display_name="Osaajat Oyj")
    assert (renamed.display_name, renamed.terms) == ("Osaajat Oyj", first.name)
    async with refused(grpc.StatusCode.FAILED_PRECONDITION):
        await update(registry, draft, ["terms"], terms=first.name)
    moved = await update(registry, draft, ["terms"], terms=second.name)
    assert moved.terms == second.name
    assert state(await submit(registry, draft, key.sign(second.content_hash))) == "ADMITTED"


async def test_another_provider_may_not_change_or_submit_a_draft(registry, next_business_id):
    terms = await registry.publish()
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(terms, business_id, key), metadata=registry.tokens.provider(business_id)
    )
    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await submit(registry, draft, key.sign(terms.content_hash), business_id=next_business_id())
    assert state(await registry.get(draft)) == "DRAFT"


async def test_a_draft_of_a_provider_already_registered_is_refused_on_submission_and_stays_a_draft(
    registry, next_business_id
):
    terms = await registry.publish()
    business_id, key = next_business_id(), ProviderKey()
    draft = await registry.stub.RegisterProvider(
        draft_request(terms, business_id, key, display_name="Osaajat Oy", evidence=[declared()]),
        metadata=registry.tokens.provider(business_id),
    )
    await registry.register(terms, business_id)

    async with refused(grpc.StatusCode.ALREADY_EXISTS):
        await submit(registry, draft, key.sign(terms.content_hash))
    assert state(await registry.get(draft)) == "DRAFT"
    assert len(await payloads(registry.db, "ProviderRegistered")) == 1


async def test_a_provider_withdraws_its_draft(registry, next_business_id):
    terms = await registry.publish()
    business_id = next_business_id()
    draft = await registry.stub.RegisterProvider(
        draft_request(terms, business_id, ProviderKey()), metadata=registry.tokens.provider(business_id)
    )
    withdrawn = await registry.stub.WithdrawRegistration(
        registry_pb2.WithdrawRegistrationRequest(name=draft.name),
        metadata=registry.tokens.provider(business_id),
    )
    assert state(withdrawn) == "WITHDRAWN"


# -- attribute checks ---------------------------------------------------------------------------


def attribute_check(
    code: str, attribute: registry_pb2.Attribute.ValueType, *values: str, ceiling: str = ""
) -> registry_pb2.Requirement:
    return registry_pb2.Requirement(
        code=code,
        description=f"Checked from the registration: {code}",
        kind=registry_pb2.REQUIREMENT_KIND_ATTRIBUTE_CHECK,
        attribute=attribute,
        values=values,
        price_ceiling=money(Decimal(ceiling)) if ceiling else None,
    )


ATTRIBUTE_CHECKS = (
    attribute_check("swedish", registry_pb2.ATTRIBUTE_LANGUAGES, "fi", "sv"),
    attribute_check("area", registry_pb2.ATTRIBUTE_SERVICE_AREA, "837", "536", "604"),
    attribute_check("ceiling", registry_pb2.ATTRIBUTE_PRICE_CEILING, ceiling="85.50"),
    attribute_check("counsellors", registry_pb2.ATTRIBUTE_STAFF_QUALIFICATION, "career-counsellor"),
)


async def register_with(  # noqa: PLR0917 - one argument per attribute
    registry: Registry,
    terms: registry_pb2.Terms,
    business_id: str,
    municipalities: list[str],
    languages: list[str],
    price: str,
    qualifications: list[str],
) -> registry_pb2.Registration:
    request = registration_request(terms, business_id, [])
    request.registration.municipalities.extend(municipalities)
    request.registration.languages.extend(languages)
    request.registration.price.CopyFrom(money(Decimal(price)))
    request.registration.qualifications.extend(qualifications)
    return await registry.stub.RegisterProvider(request, metadata=registry.tokens.provider(business_id))


async def test_automatic_attribute_checks_admit_what_holds_and_reject_with_a_reason_per_requirement(
    registry, next_business_id
):
    terms = await registry.publish(*ATTRIBUTE_CHECKS)
    assert [r.attribute for r in terms.requirements] == [r.attribute for r in ATTRIBUTE_CHECKS]

    admitted = await register_with(
        registry, terms, next_business_id(), ["837", "604"], ["sv", "fi"], "85.50", ["career-counsellor"]
    )
    assert state(admitted) == "ADMITTED"

    rejected = await register_with(registry, terms, next_business_id(), ["837", "091"], ["fi"], "90", [])
    assert state(rejected) == "REJECTED"
    assert [(r.code, r.subject) for r in rejected.reasons] == [
        ("LANGUAGE_NOT_OFFERED", "swedish"),
        ("OUTSIDE_SERVICE_AREA", "area"),
        ("PRICE_ABOVE_CEILING", "ceiling"),
        ("QUALIFICATION_NOT_DECLARED", "counsellors"),
    ]
    (payload,) = await payloads(registry.db, "RegistrationRejected")
    event = events_pb2.RegistrationRejected.FromString(payload)
    assert list(event.reason_subjects) == ["swedish", "area", "ceiling", "counsellors"]


async def test_an_attribute_check_a_person_decides_sends_the_registration_to_review(
    registry, next_business_id
):
    person = attribute_check("counsellors", registry_pb2.ATTRIBUTE_STAFF_QUALIFICATION, "career-counsellor")
    person.decided_by = registry_pb2.DECIDER_PERSON
    terms = await registry.publish(ATTRIBUTE_CHECKS[0], person)

    registration = await register_with(registry, terms, next_business_id(), ["837"], ["fi", "sv"], "1", [])

    assert state(registration) == "IN_REVIEW"


async def test_a_malformed_attribute_check_is_refused_with_its_field_path(registry):
    bad = attribute_check("area", registry_pb2.ATTRIBUTE_SERVICE_AREA, "999")
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.publish(bad, attribute_check("x", registry_pb2.ATTRIBUTE_UNSPECIFIED))
    assert field_violations(caught[0]) == [
        "terms.requirements[0].values[0]",
        "terms.requirements[1].attribute",
    ]
    assert await count_rows(registry.db, "registry_terms") == 0


# -- municipalities -----------------------------------------------------------------------------


async def test_an_unknown_municipality_is_refused_in_a_registration_and_in_the_lists_filter(
    registry, next_business_id
):
    terms = await registry.publish()
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.register(terms, next_business_id(), municipalities=("837", "999"))
    assert field_violations(caught[0]) == ["registration.municipalities[1]"]
    assert await count_rows(registry.db, "registry_registrations") == 0

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.listed(municipality="999")
    assert field_violations(caught[0]) == ["municipality"]


async def test_the_municipalities_are_listed_by_code_with_both_names_without_sign_in(registry):
    first = await registry.stub.ListMunicipalities(registry_pb2.ListMunicipalitiesRequest(page_size=2))
    assert [m.code for m in first.municipalities] == ["005", "009"]
    codes: list[str] = [m.code for m in first.municipalities]
    token = first.next_page_token
    while token:
        page = await registry.stub.ListMunicipalities(
            registry_pb2.ListMunicipalitiesRequest(page_size=100, page_token=token)
        )
        codes.extend(m.code for m in page.municipalities)
        token = page.next_page_token
        if m := next((m for m in page.municipalities if m.code == "091"), None):
            assert (m.finnish_name, m.swedish_name) == ("Helsinki", "Helsingfors")
    assert len(codes) == len(set(codes)) == 309
    assert codes == sorted(codes)


# -- reinstatement when a breach is resolved ----------------------------------------------------


def resolved(business_id: str) -> selfmonitoring_events.BreachResolved:
    return selfmonitoring_events.BreachResolved(
        region=REGION,
        breach=selfmonitoring_pb2.Breach(
            name=BREACH, provider=business_id, service=SERVICE, severity=selfmonitoring_pb2.SEVERITY_SERIOUS
        ),
    )


async def set_policy(registry: Registry, *, reinstate_on_resolution: bool) -> registry_pb2.BreachPolicy:
    return await registry.stub.SetBreachPolicy(
        registry_pb2.SetBreachPolicyRequest(
            name=f"regions/{REGION}/breachPolicy",
            suspending_severities=["SERIOUS"],
            reinstate_on_resolution=reinstate_on_resolution,
        ),
        metadata=registry.tokens.admin(REGION),
    )


async def suspended_by_breach(registry: Registry, business_id: str) -> registry_pb2.Registration:
    from services.registry.consumers import suspension_for

    registration = await registry.register(await registry.publish(), business_id)
    opened = selfmonitoring_events.BreachOpened(region=REGION, breach=resolved(business_id).breach)
    command = suspension_for(opened, "")
    assert command is not None
    assert await registry.dispatcher.handle(command, inbox=InboxKey("registry-breaches", "opened-1")) == 1
    return registration


async def test_a_resolved_breach_reinstates_only_when_the_regions_policy_says_so(registry, next_business_id):
    business_id = next_business_id()
    registration = await suspended_by_breach(registry, business_id)
    assert not (await set_policy(registry, reinstate_on_resolution=False)).reinstate_on_resolution
    command = reinstatement_for(resolved(business_id), "")
    inbox = InboxKey("registry-breach-resolutions", "resolved-1")
    assert await registry.dispatcher.handle(command, inbox=inbox) == 0
    assert await registry.state(registration) == "SUSPENDED"

    assert (await set_policy(registry, reinstate_on_resolution=True)).reinstate_on_resolution
    inbox = InboxKey("registry-breach-resolutions", "resolved-2")
    assert await registry.dispatcher.handle(command, inbox=inbox) == 1

    after = await registry.get(registration)
    assert state(after) == "ADMITTED"
    decision = after.decisions[-1]
    # Called here without the event's envelope; through NATS the event's id follows (test_registry_nats).
    assert (decision.kind, list(decision.causes)) == ("REINSTATEMENT", [BREACH])
    assert [r.code for r in decision.reasons] == ["BREACH_RESOLVED"]
    assert len(await payloads(registry.db, "ProviderReinstated")) == 1

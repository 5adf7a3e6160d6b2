# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""What issue 7 asks of the registry that the other registry tests leave out: revocation and
withdrawal events, the region's and the provider's registration lists, the decision records of
revocation, withdrawal and lapse, the default re-commit window, prices on the public list, an
unknown service, and which states a provider may withdraw from; over gRPC against real SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from kasvu.registry.v1 import events_pb2, registry_pb2

from services.registry import model
from services.runtime.names import next_page_token
from services.runtime.protoconv import from_money, money
from tests.integration.helpers import (
    count_rows,
    declaration,
    declared,
    error_reason,
    field_violations,
    outbox_counts,
    registration_request,
)
from tests.integration.test_registry import OTHER_REGION, publish
from tests.integration.test_registry_drafts import state
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    PARENT,
    REGION,
    SERVICE,
    START,
    Registry,
    audit_after_altering,
    next_business_id,
    payloads,
    reasons,
    refused,
    registry,
    stamp,
)

DISPLAY_NAME = "Osaajat Oy"  # registration_request's default trade name
REASON_MESSAGE = "Repeated late service need assessments."  # reasons()' default message
MAX_PAGES = 20  # more than any list here needs: a token that never advances fails, not hangs


async def revoke(registry: Registry, registration: registry_pb2.Registration) -> registry_pb2.Registration:
    return await registry.stub.RevokeRegistration(
        registry_pb2.RevokeRegistrationRequest(name=registration.name, reasons=reasons("EXCLUSION")),
        metadata=registry.tokens.admin(REGION),
    )


async def withdraw(
    registry: Registry,
    registration: registry_pb2.Registration,
    why: list | None = None,  # type: ignore[type-arg]
) -> registry_pb2.Registration:
    return await registry.stub.WithdrawRegistration(
        registry_pb2.WithdrawRegistrationRequest(name=registration.name, reasons=why or []),
        metadata=registry.tokens.provider(registration.business_id),
    )


async def list_registrations(registry: Registry, page_size: int, *, business_id: str = "") -> list[list[str]]:
    """Every page of the region's registrations for the service, as registration names."""
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await registry.stub.ListRegistrations(
            registry_pb2.ListRegistrationsRequest(
                parent=PARENT, page_size=page_size, page_token=token, business_id=business_id
            ),
            metadata=registry.tokens.admin(REGION),
        )
        pages.append([r.name for r in response.registrations])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < MAX_PAGES, "the pages do not end"


async def list_own(registry: Registry, business_id: str, page_size: int) -> list[list[str]]:
    """Every page of a provider's own registrations, across regions, as registration names."""
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await registry.stub.ListProviderRegistrations(
            registry_pb2.ListProviderRegistrationsRequest(
                parent=f"providers/{business_id}", page_size=page_size, page_token=token
            ),
            metadata=registry.tokens.provider(business_id),
        )
        pages.append([r.name for r in response.registrations])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < MAX_PAGES, "the pages do not end"


def set_fields(message: object) -> set[str]:
    return {descriptor.name for descriptor, _ in message.ListFields()}  # type: ignore[attr-defined]


# -- 1. revocation and withdrawal events ------------------------------------------------------


async def test_revoking_and_withdrawing_write_their_events_naming_identifiers_only(
    registry, next_business_id
):
    terms = await registry.publish()
    revoked = await registry.register(terms, next_business_id())
    withdrawn = await registry.register(terms, next_business_id())
    registry.clock.advance(timedelta(hours=2))

    await revoke(registry, revoked)
    await withdraw(registry, withdrawn, reasons("CLOSING"))

    counts = await outbox_counts(registry.db)
    assert (
        counts["kasvu.registry.v1.ProviderRevoked"],
        counts["kasvu.registry.v1.RegistrationWithdrawn"],
    ) == (
        1,
        1,
    )
    [revoked_payload] = await payloads(registry.db, "ProviderRevoked")
    [withdrawn_payload] = await payloads(registry.db, "RegistrationWithdrawn")
    revocation = events_pb2.ProviderRevoked.FromString(revoked_payload)
    withdrawal = events_pb2.RegistrationWithdrawn.FromString(withdrawn_payload)

    when = START + timedelta(hours=2)
    assert (
        revocation.registration,
        revocation.terms,
        revocation.region,
        revocation.service,
        revocation.business_id,
        list(revocation.reason_codes),
        revocation.revoke_time.ToDatetime(UTC),
    ) == (revoked.name, terms.name, REGION, SERVICE, revoked.business_id, ["EXCLUSION"], when)
    assert (
        withdrawal.registration,
        withdrawal.terms,
        withdrawal.region,
        withdrawal.service,
        withdrawal.business_id,
        list(withdrawal.reason_codes),
        withdrawal.withdraw_time.ToDatetime(UTC),
    ) == (withdrawn.name, terms.name, REGION, SERVICE, withdrawn.business_id, ["CLOSING"], when)
    # Identifiers, codes and times only: no trade name, no free text of the decision's reasons.
    assert set_fields(revocation) == {
        "registration",
        "terms",
        "region",
        "service",
        "business_id",
        "reason_codes",
        "revoke_time",
    }
    assert set_fields(withdrawal) == {
        "registration",
        "terms",
        "region",
        "service",
        "business_id",
        "reason_codes",
        "withdraw_time",
    }
    for payload in (revoked_payload, withdrawn_payload):
        assert DISPLAY_NAME.encode() not in payload
        assert REASON_MESSAGE.encode() not in payload


# -- 2. the region's list: by provider, and paged ---------------------------------------------


async def test_a_region_lists_one_providers_registrations_by_business_id_oldest_first(
    registry, next_business_id
):
    terms = await registry.publish()
    wanted, other = next_business_id(), next_business_id()
    rejected = await registry.register(terms, wanted, evidence=[])
    await registry.register(terms, other)
    registry.clock.advance(timedelta(minutes=5))
    admitted = await registry.register(terms, wanted)  # a rejection does not hold the place

    pages = await list_registrations(registry, 50, business_id=wanted)
    paged = await list_registrations(registry, 1, business_id=wanted)

    assert pages == [[rejected.name, admitted.name]]
    assert paged == [[rejected.name], [admitted.name]]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT):
        await list_registrations(registry, 1, business_id=wanted[:-1] + "x")


async def test_a_region_pages_through_its_registrations_without_repeats_or_gaps(registry, next_business_id):
    terms = await registry.publish()
    registered: list[str] = []
    for round_ in range(3):
        # Several registrations share a creation time within a round; the id breaks the tie.
        for _ in range(3 if round_ < 2 else 1):
            registered.append((await registry.register(terms, next_business_id())).name)
        registry.clock.advance(timedelta(seconds=1))
    elsewhere = await publish(
        registry.stub, registry.tokens, service="career-guidance", requirements=(declaration(),)
    )
    await registry.register(elsewhere, next_business_id())  # another service: not on this list

    for page_size in (1, 2, 3, 4):
        pages = await list_registrations(registry, page_size)
        names = [name for page in pages for name in page]
        assert all(len(page) == page_size for page in pages[:-1]), page_size
        assert 1 <= len(pages[-1]) <= page_size, page_size
        assert len(names) == len(set(names)) == 7, page_size
        assert set(names) == set(registered), page_size
    # Oldest first: the rounds come in the order they were registered.
    one_page = (await list_registrations(registry, 50))[0]
    assert [set(one_page[:3]), set(one_page[3:6]), one_page[6]] == [
        set(registered[:3]),
        set(registered[3:6]),
        registered[6],
    ]


# -- 3. a provider's own registrations, across regions ----------------------------------------


async def test_a_provider_lists_its_own_registrations_across_two_regions_and_no_one_elses(
    registry, next_business_id
):
    here_terms = await registry.publish()
    there_terms = await publish(
        registry.stub, registry.tokens, region=OTHER_REGION, requirements=(declaration(),)
    )
    provider, stranger = next_business_id(), next_business_id()
    there = await registry.register(there_terms, provider)
    await registry.register(there_terms, stranger)
    registry.clock.advance(timedelta(minutes=1))
    here = await registry.register(here_terms, provider)
    await registry.register(here_terms, stranger)

    assert there.name.startswith(f"regions/{OTHER_REGION}/") and here.name.startswith(f"regions/{REGION}/")
    assert await list_own(registry, provider, 50) == [[there.name, here.name]]
    assert await list_own(registry, provider, 1) == [[there.name], [here.name]]
    # The region sees only its own part of the provider's registrations.
    assert await list_registrations(registry, 50, business_id=provider) == [[here.name]]


# -- 4. decision records of revocation, withdrawal and lapse ----------------------------------


async def test_revocation_withdrawal_and_lapse_each_record_who_when_why_and_the_terms_version(
    registry, next_business_id
):
    first = await registry.publish()
    revoked, withdrawn, lapsing = [await registry.register(first, next_business_id()) for _ in range(3)]
    registry.clock.advance(timedelta(days=1))
    decided_at = START + timedelta(days=1)

    revocation = (await revoke(registry, revoked)).decisions[-1]
    withdrawal = (await withdraw(registry, withdrawn, reasons("CLOSING", "Office closes."))).decisions[-1]
    second = await registry.publish(title="Rekrytointi 2027", recommit_days=10)
    registry.clock.advance(timedelta(days=10))
    await registry.run_timers()
    lapsed = await registry.get(lapsing)
    lapse = lapsed.decisions[-1]

    assert (revocation.kind, revocation.state) == ("REVOCATION", registry_pb2.REGISTRATION_STATE_REVOKED)
    assert revocation.actor == f"region_admin:{REGION}:region_admin@{REGION}"
    assert revocation.decide_time.ToDatetime(UTC) == decided_at
    assert [(r.code, r.message) for r in revocation.reasons] == [("EXCLUSION", REASON_MESSAGE)]
    assert revocation.terms == first.name

    assert (withdrawal.kind, withdrawal.state) == ("WITHDRAWAL", registry_pb2.REGISTRATION_STATE_WITHDRAWN)
    provider = withdrawn.business_id
    assert withdrawal.actor == f"provider:{provider}:provider@{provider}"
    assert withdrawal.decide_time.ToDatetime(UTC) == decided_at
    assert withdrawal.terms == first.name
    assert [(r.code, r.message) for r in withdrawal.reasons] == [("CLOSING", "Office closes.")]

    assert (lapse.kind, lapse.state) == ("LAPSE", registry_pb2.REGISTRATION_STATE_LAPSED)
    registration_id = lapsing.name.rsplit("/", 1)[1]
    # What lapsed it: the scheduler's timer, named as the scheduler names it.
    assert lapse.actor == f"system:timer:registry:recommit:{registration_id}"
    assert list(lapse.causes) == [f"timer:registry:recommit:{registration_id}"]
    assert lapse.decide_time.ToDatetime(UTC) == decided_at + timedelta(days=10)
    assert [(r.code, r.subject) for r in lapse.reasons] == [("TERMS_NOT_RECOMMITTED", second.name)]
    assert second.name in lapse.reasons[0].message
    assert lapse.terms == first.name  # the version it was committed to, and did not leave
    for registration, kind in ((revoked, "REVOCATION"), (withdrawn, "WITHDRAWAL"), (lapsing, "LAPSE")):
        decisions = (await registry.get(registration)).decisions
        assert [d.kind for d in decisions] == ["ADMISSION", kind]  # the record is kept, appended to


# -- 5. the default re-commit window ----------------------------------------------------------


async def test_without_a_window_given_providers_have_thirty_days_from_the_new_publication(
    registry, next_business_id
):
    assert model.DEFAULT_RECOMMIT_DAYS == 30
    first = await registry.publish()
    registration = await registry.register(first, next_business_id())
    registry.clock.advance(timedelta(days=3))  # the window runs from the new version, not the old
    second = await registry.publish(title="Rekrytointi 2027")  # recommit_days left unset
    deadline = START + timedelta(days=3 + 30)

    assert second.publish_time.ToDatetime(UTC) == START + timedelta(days=3)
    assert (await registry.get(registration)).recommit_deadline.ToDatetime(UTC) == deadline
    [superseded] = await payloads(registry.db, "TermsSuperseded")
    event = events_pb2.TermsSuperseded.FromString(superseded)
    assert (event.terms, event.superseded_by) == (first.name, second.name)
    assert event.recommit_deadline.ToDatetime(UTC) == deadline

    registry.clock.set(deadline - timedelta(seconds=1))
    await registry.run_timers()
    assert await registry.state(registration) == "ADMITTED"
    registry.clock.set(deadline)
    await registry.run_timers()
    assert await registry.state(registration) == "LAPSED"


# -- 6. prices on the public list -------------------------------------------------------------


async def test_the_public_list_shows_the_price_a_registration_carries_and_none_when_it_has_none(
    registry, next_business_id
):
    terms = await registry.publish()
    priced, unpriced = next_business_id(), next_business_id()
    request = registration_request(terms, priced, [declared()])
    request.registration.price.CopyFrom(money(Decimal("85.50")))
    await registry.stub.RegisterProvider(request, metadata=registry.tokens.provider(priced))
    await registry.register(terms, unpriced)

    listed = await registry.stub.ListProviders(registry_pb2.ListProvidersRequest(parent=PARENT))

    by_id = {p.business_id: p for p in listed.providers}
    assert set(by_id) == {priced, unpriced}
    assert by_id[priced].HasField("price")
    assert by_id[priced].price.currency_code == "EUR"
    assert from_money(by_id[priced].price, "price") == Decimal("85.50")
    assert not by_id[unpriced].HasField("price")


# -- 7. an unknown service --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "service", "draft"),
    [
        pytest.param(REGION, "astrology", False, id="in-no-catalogue"),
        pytest.param(REGION, "astrology", True, id="in-no-catalogue-as-draft"),
        pytest.param(OTHER_REGION, "youth-workshops", False, id="another-regions-own-service"),
    ],
)
async def test_a_registration_naming_an_unknown_service_is_refused_and_nothing_is_stored(
    registry, next_business_id, region, service, draft
):
    await registry.stub.CreateService(
        registry_pb2.CreateServiceRequest(
            parent=f"regions/{REGION}",
            service_id="youth-workshops",
            service=registry_pb2.CatalogueService(display_name="Youth workshops"),
        ),
        metadata=registry.tokens.admin(REGION),
    )
    terms = await registry.publish()
    business_id = next_business_id()
    unknown = f"regions/{region}/services/{service}"
    request = registration_request(
        terms, business_id, [declared()], terms_name=f"{unknown}/terms/1", request_id="unknown-service"
    )
    if draft:
        request.registration.ClearField("terms_signature")
        request.draft = True
    before = await count_rows(registry.db, "outbox")

    async with refused(grpc.StatusCode.NOT_FOUND) as caught:
        await registry.stub.RegisterProvider(request, metadata=registry.tokens.provider(business_id))

    assert error_reason(caught[0]) == "SERVICE_NOT_FOUND"
    assert unknown in (caught[0].details() or "")
    assert await count_rows(registry.db, "registry_registrations") == 0
    assert await count_rows(registry.db, "idempotency_keys") == 0
    assert await count_rows(registry.db, "outbox") == before


# -- 8. which registrations a provider may withdraw -------------------------------------------


async def test_a_provider_withdraws_a_registration_in_review_or_suspended(registry, next_business_id):
    staff = registry_pb2.Requirement(
        code="staff-qualification",
        description="Career counsellors hold a relevant degree",
        kind=registry_pb2.REQUIREMENT_KIND_DECLARATION,
        decided_by=registry_pb2.DECIDER_PERSON,
    )
    in_review = await registry.register(
        await publish(registry.stub, registry.tokens, service="career-guidance", requirements=(staff,)),
        next_business_id(),
        evidence=[declared("staff-qualification")],
    )
    assert state(in_review) == "IN_REVIEW"
    admitted = await registry.register(await registry.publish(), next_business_id())
    suspended = await registry.stub.SuspendRegistration(
        registry_pb2.SuspendRegistrationRequest(
            name=admitted.name, reasons=reasons(), lift_time=stamp(START + timedelta(days=90))
        ),
        metadata=registry.tokens.supervisor(REGION),
    )
    assert state(suspended) == "SUSPENDED"

    from_review = await withdraw(registry, in_review)
    from_suspension = await withdraw(registry, suspended)

    assert (state(from_review), state(from_suspension)) == ("WITHDRAWN", "WITHDRAWN")
    assert [d.kind for d in from_review.decisions] == ["REVIEW", "WITHDRAWAL"]
    assert [d.kind for d in from_suspension.decisions] == ["ADMISSION", "SUSPENSION", "WITHDRAWAL"]
    assert not from_suspension.HasField("lift_time")
    assert await count_rows(registry.db, "timers", "fired_at IS NULL") == 0  # the timed lift is gone
    assert len(await payloads(registry.db, "RegistrationWithdrawn")) == 2
    registry.clock.advance(timedelta(days=91))
    await registry.run_timers()
    assert await registry.state(suspended) == "WITHDRAWN"


async def test_withdrawing_a_rejected_revoked_or_withdrawn_registration_is_refused_and_changes_nothing(
    registry, next_business_id
):
    terms = await registry.publish()
    rejected = await registry.register(terms, next_business_id(), evidence=[])
    revoked = await revoke(registry, await registry.register(terms, next_business_id()))
    withdrawn = await withdraw(registry, await registry.register(terms, next_business_id()))
    assert (state(rejected), state(revoked), state(withdrawn)) == ("REJECTED", "REVOKED", "WITHDRAWN")
    outbox = await outbox_counts(registry.db)

    for registration in (rejected, revoked, withdrawn):
        async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
            await withdraw(registry, registration)
        assert error_reason(caught[0]) == "NOT_ACTIVE", registration.name
        after = await registry.get(registration)
        assert (after.state, after.decisions) == (registration.state, registration.decisions)

    assert await outbox_counts(registry.db) == outbox


async def test_a_withdrawals_reasons_are_in_the_audited_decision_record_and_a_changed_one_is_found(
    registry, next_business_id, database_url
):
    terms = await registry.publish()
    registration = await registry.register(terms, next_business_id())
    withdrawn = await withdraw(registry, registration, reasons("CLOSING", "Office closes."))
    assert [(r.code, r.message) for r in withdrawn.decisions[-1].reasons] == [("CLOSING", "Office closes.")]
    problem = await audit_after_altering(registry, database_url, "Office closes.", "No reason.")
    registration_id = registration.name.rsplit("/", 1)[1]
    assert problem == f"decision 1 of registration {registration_id} differs from the audited one"


@pytest.mark.parametrize(
    ("why", "field"),
    [
        pytest.param(
            [registry_pb2.DecisionReason(code=" ", message="Closing.")], "reasons[0].code", id="blank"
        ),
        pytest.param(
            [registry_pb2.DecisionReason(code="CLOSING", message="x" * 2001)], "reasons[0].message", id="long"
        ),
    ],
)
async def test_a_withdrawal_with_a_malformed_reason_is_refused_and_nothing_is_stored(
    registry, next_business_id, why, field
):
    registration = await registry.register(await registry.publish(), next_business_id())
    before = [await count_rows(registry.db, table) for table in ("outbox", "audit_log", "timers")]

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await withdraw(registry, registration, why)

    assert field_violations(caught[0]) == [field]
    assert [await count_rows(registry.db, table) for table in ("outbox", "audit_log", "timers")] == before
    kept = await registry.get(registration)
    assert (state(kept), [d.kind for d in kept.decisions]) == ("ADMITTED", ["ADMISSION"])


# -- 9. page tokens: each list takes only its own ---------------------------------------------


async def test_every_registry_list_refuses_another_lists_or_a_tampered_page_token_naming_page_token(
    registry, next_business_id
):
    terms = await registry.publish()
    provider, other = next_business_id(), next_business_id()
    await registry.register(terms, provider, evidence=[])  # rejected: the provider has two
    await registry.register(terms, provider)
    await registry.register(terms, other)
    admin, own = registry.tokens.admin(REGION), registry.tokens.provider(provider)
    lists: dict[str, tuple[Any, Any, Any]] = {
        "ListProviders": (
            registry.stub.ListProviders,
            lambda token: registry_pb2.ListProvidersRequest(parent=PARENT, page_size=1, page_token=token),
            (),
        ),
        "ListRegistrations": (
            registry.stub.ListRegistrations,
            lambda token: registry_pb2.ListRegistrationsRequest(parent=PARENT, page_size=1, page_token=token),
            admin,
        ),
        "ListProviderRegistrations": (
            registry.stub.ListProviderRegistrations,
            lambda token: registry_pb2.ListProviderRegistrationsRequest(
                parent=f"providers/{provider}", page_size=1, page_token=token
            ),
            own,
        ),
        "ListOrganisers": (
            registry.stub.ListOrganisers,
            lambda token: registry_pb2.ListOrganisersRequest(page_size=1, page_token=token),
            (),
        ),
        "ListMunicipalities": (
            registry.stub.ListMunicipalities,
            lambda token: registry_pb2.ListMunicipalitiesRequest(page_size=1, page_token=token),
            (),
        ),
    }
    issued: dict[str, str] = {}
    for name, (call, request, metadata) in lists.items():
        first = await call(request(""), metadata=metadata)
        issued[name] = first.next_page_token
        assert issued[name], name
        second = await call(request(issued[name]), metadata=metadata)  # its own token pages on
        assert second != first, name

    # What another list (of this service or another) with the same parent and filters would issue.
    unbound = {
        "ListProviders": next_page_token(
            {"parent": PARENT, "municipality": "", "language": ""}, {"after": provider}
        ),
        "ListProviderRegistrations": next_page_token(
            {"parent": f"providers/{provider}"}, {"created": START.isoformat(), "id": "x"}
        ),
        "ListOrganisers": next_page_token({}, {"after": "pirkanmaa"}),
        "ListMunicipalities": next_page_token({}, {"after": "091"}),
    }
    for name, (call, request, metadata) in lists.items():
        foreign = [token for other_list, token in issued.items() if other_list != name]
        genuine = issued[name]
        tampered = genuine[:-2] + ("A" if genuine[-2] != "A" else "B") + genuine[-1]
        for token in [*foreign, tampered, *([unbound[name]] if name in unbound else [])]:
            async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
                await call(request(token), metadata=metadata)
            assert field_violations(caught[0]) == ["page_token"], name


async def test_the_organisers_list_refuses_a_position_it_never_ended_a_page_on(registry):
    token = next_page_token({"list": "registry.ListOrganisers"}, {"after": "atlantis"})
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.ListOrganisers(registry_pb2.ListOrganisersRequest(page_token=token))
    assert field_violations(caught[0]) == ["page_token"]

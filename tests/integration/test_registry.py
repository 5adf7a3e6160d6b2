"""The provider registry over gRPC against real databases (SQLite file and PostgreSQL)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from kasvu.registry.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import events_pb2 as breach_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from sqlmodel import select

from services.registry import bootstrap, handlers, store
from services.registry.consumers import suspension_for
from services.registry.grpc_api import RegistryServicer
from services.registry.handlers import SuspendProvider
from services.runtime.db import Database, OutboxEvent
from services.runtime.dispatch import DUPLICATE, Dispatcher, InboxKey
from tests.conftest import MigratedDatabases
from tests.integration.helpers import (
    ProviderKey,
    Tokens,
    business_ids,
    count_rows,
    declaration,
    declared,
    dispatching,
    document,
    error_reason,
    field_violations,
    finnish_today,
    issued,
    outbox_counts,
    registration_request,
    serving,
    with_wrong_check_digit,
)

REGION = "pirkanmaa"
OTHER_REGION = "uusimaa"
SERVICE = "recruitment"
PARENT = f"regions/{REGION}/services/{SERVICE}"

TERMS_PUBLISHED = "kasvu.registry.v1.TermsPublished"
ADMITTED = "kasvu.registry.v1.RegistrationAdmitted"
REJECTED = "kasvu.registry.v1.RegistrationRejected"
SUSPENDED = "kasvu.registry.v1.ProviderSuspended"
SUPERSEDED = "kasvu.registry.v1.TermsSuperseded"
REGISTERED = "kasvu.registry.v1.ProviderRegistered"


@pytest.fixture
async def registry_db(database_url: str, migrated_databases: MigratedDatabases) -> AsyncIterator[Database]:
    await migrated_databases.migrate(database_url, bootstrap.MIGRATIONS)
    db = Database(database_url)
    yield db
    await db.dispose()


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens.generate(tmp_path / "keys")


@pytest.fixture
async def use_cases(registry_db: Database) -> AsyncIterator[Dispatcher]:
    async with dispatching(
        registry_db,
        service="registry",
        unit_of_work=store.unit_of_work_factory(),
        event_types=bootstrap.EVENT_TYPES,
        handlers=handlers.HANDLERS,
    ) as dispatcher:
        yield dispatcher


@pytest.fixture
async def stub(tokens: Tokens, use_cases: Dispatcher) -> AsyncIterator[registry_pb2_grpc.RegistryServiceStub]:
    async with serving(
        tokens, registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(use_cases)
    ) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
def next_business_id():  # type: ignore[no-untyped-def]
    return business_ids()


async def publish(
    stub: registry_pb2_grpc.RegistryServiceStub,
    tokens: Tokens,
    *,
    region: str = REGION,
    service: str = SERVICE,
    requirements: tuple[registry_pb2.Requirement, ...] = (),
    title: str = "Rekrytointipalvelut",
    request_id: str = "",
) -> registry_pb2.Terms:
    return await stub.PublishTerms(
        registry_pb2.PublishTermsRequest(
            parent=f"regions/{region}/services/{service}",
            terms=registry_pb2.Terms(
                title=title, requirements=list(requirements or (declaration(), document()))
            ),
            request_id=request_id,
        ),
        metadata=tokens.admin(region),
    )


def good_evidence() -> list[registry_pb2.Evidence]:
    return [declared(), issued("tax-certificate", finnish_today() - timedelta(days=10))]


async def register(
    stub: registry_pb2_grpc.RegistryServiceStub,
    tokens: Tokens,
    terms: registry_pb2.Terms,
    business_id: str,
    *,
    evidence: list[registry_pb2.Evidence] | None = None,
    request_id: str = "",
    key: ProviderKey | None = None,
) -> registry_pb2.Registration:
    request = registration_request(
        terms,
        business_id,
        good_evidence() if evidence is None else evidence,
        request_id=request_id,
        display_name=f"Provider {business_id}",
        key=key,
    )
    return await stub.RegisterProvider(request, metadata=tokens.provider(business_id))


async def suspend(  # noqa: PLR0917
    db: Database, use_cases: Dispatcher, region: str, business_id: str, service: str, breach: str
) -> int:
    changed: int = await use_cases.handle(
        SuspendProvider(region=region, business_id=business_id, service=service, breach=breach)
    )
    return changed


async def state_of(
    stub: registry_pb2_grpc.RegistryServiceStub, tokens: Tokens, registration: registry_pb2.Registration
) -> str:
    current = await stub.GetRegistration(
        registry_pb2.GetRegistrationRequest(name=registration.name),
        metadata=tokens.provider(registration.business_id),
    )
    return registry_pb2.RegistrationState.Name(current.state)


async def listed(stub: registry_pb2_grpc.RegistryServiceStub, parent: str = PARENT) -> list[str]:
    response = await stub.ListProviders(registry_pb2.ListProvidersRequest(parent=parent, page_size=500))
    return [provider.business_id for provider in response.providers]


# -- terms ----------------------------------------------------------------------------------


async def test_publishing_terms_twice_gives_versions_one_and_two_with_distinct_hashes(
    stub, tokens, registry_db
):
    first = await publish(stub, tokens, title="Rekrytointipalvelut 2025")
    second = await publish(stub, tokens, title="Rekrytointipalvelut 2026")

    assert (first.version, second.version) == (1, 2)
    assert first.name == f"{PARENT}/terms/1"
    assert second.name == f"{PARENT}/terms/2"
    assert first.content_hash != second.content_hash
    for published in (first, second):
        fetched = await stub.GetTerms(registry_pb2.GetTermsRequest(name=published.name))
        assert fetched.title == published.title
        assert fetched.content_hash == published.content_hash
        assert [r.code for r in fetched.requirements] == ["prepayment-register", "tax-certificate"]
    assert await count_rows(registry_db, "registry_terms") == 2
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 2, SUPERSEDED: 1}


async def test_admin_of_another_region_may_not_publish_and_nothing_is_stored(stub, tokens, registry_db):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=PARENT, terms=registry_pb2.Terms(title="Rekrytointi", requirements=[declaration()])
            ),
            metadata=tokens.admin(OTHER_REGION),
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_rows(registry_db, "registry_terms") == 0
    assert await count_rows(registry_db, "outbox") == 0


async def test_publishing_without_a_token_is_unauthenticated_and_nothing_is_stored(stub, registry_db):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=PARENT, terms=registry_pb2.Terms(title="Rekrytointi", requirements=[declaration()])
            )
        )

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await count_rows(registry_db, "registry_terms") == 0


async def test_a_provider_token_may_not_publish_terms(stub, tokens, registry_db):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=PARENT, terms=registry_pb2.Terms(title="Rekrytointi", requirements=[declaration()])
            ),
            metadata=tokens.provider("0737546-2"),
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_rows(registry_db, "registry_terms") == 0


@pytest.mark.parametrize(
    ("requirements", "expected_fields"),
    [
        pytest.param(
            [
                registry_pb2.Requirement(
                    code=" ", description="x", kind=registry_pb2.REQUIREMENT_KIND_DECLARATION
                ),
                registry_pb2.Requirement(
                    code="tax",
                    description="x",
                    kind=registry_pb2.REQUIREMENT_KIND_DOCUMENT,
                    max_age_days=5000,
                ),
            ],
            ["terms.requirements[0].code", "terms.requirements[1].max_age_days"],
            id="blank-code-and-too-old-limit",
        ),
        pytest.param(
            [declaration(), registry_pb2.Requirement(code="licence", description="Sector licence")],
            ["terms.requirements[1].kind"],
            id="unspecified-kind",
        ),
        pytest.param([], ["terms.requirements"], id="no-requirements"),
    ],
)
async def test_an_invalid_requirement_is_refused_with_its_field_path_and_nothing_is_stored(
    stub, tokens, registry_db, requirements, expected_fields
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=PARENT, terms=registry_pb2.Terms(title="Rekrytointi", requirements=requirements)
            ),
            metadata=tokens.admin(REGION),
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == expected_fields
    assert await count_rows(registry_db, "registry_terms") == 0
    assert await count_rows(registry_db, "outbox") == 0


async def test_a_retried_publication_returns_the_same_version_and_stores_no_second(stub, tokens, registry_db):
    first = await publish(stub, tokens, request_id="publish-2025-01")
    retry = await publish(stub, tokens, request_id="publish-2025-01")

    assert retry.name == first.name == f"{PARENT}/terms/1"
    assert retry.content_hash == first.content_hash
    assert await count_rows(registry_db, "registry_terms") == 1
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1}
    # A new request id is a new publication.
    assert (await publish(stub, tokens, request_id="publish-2025-02")).version == 2


async def test_get_terms_of_an_unpublished_version_is_not_found(stub, tokens):
    await publish(stub, tokens)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTerms(registry_pb2.GetTermsRequest(name=f"{PARENT}/terms/2"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "TERMS_NOT_FOUND"


# -- registration ---------------------------------------------------------------------------


async def test_a_provider_with_valid_evidence_is_admitted_and_listed(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    business_id = next_business_id()

    registration = await register(stub, tokens, terms, business_id)

    assert registration.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert list(registration.reasons) == []
    assert registration.terms == terms.name
    assert registration.name.startswith(f"{PARENT}/registrations/")
    assert await state_of(stub, tokens, registration) == "REGISTRATION_STATE_ADMITTED"
    assert await listed(stub) == [business_id]
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1, REGISTERED: 1, ADMITTED: 1}


async def test_a_missing_declaration_and_a_missing_certificate_reject_with_reasons_and_an_event(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    business_id = next_business_id()

    registration = await register(stub, tokens, terms, business_id, evidence=[])

    assert registration.state == registry_pb2.REGISTRATION_STATE_REJECTED
    assert [(r.code, r.subject) for r in registration.reasons] == [
        ("REQUIREMENT_NOT_DECLARED", "prepayment-register"),
        ("EVIDENCE_MISSING", "tax-certificate"),
    ]
    assert await listed(stub) == []
    async with registry_db.read_session() as session:
        events = (await session.exec(select(OutboxEvent))).all()
    rejected = [e for e in events if e.event_type == REJECTED]
    assert len(rejected) == 1
    assert rejected[0].subject == f"kasvu.registry.v1.RegistrationRejected.{REGION}"
    payload = events_pb2.RegistrationRejected.FromString(rejected[0].payload)
    assert payload.registration == registration.name
    assert list(payload.reason_codes) == ["REQUIREMENT_NOT_DECLARED", "EVIDENCE_MISSING"]
    assert payload.business_id == business_id

    # A refusal does not block a corrected registration.
    corrected = await register(stub, tokens, terms, business_id)
    assert corrected.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert await listed(stub) == [business_id]


async def stored(db: Database) -> tuple[int, int, int, int]:
    """Registrations, outbox rows, audit records and idempotency keys: what a refusal must not add."""
    return (
        await count_rows(db, "registry_registrations"),
        await count_rows(db, "outbox"),
        await count_rows(db, "audit_log"),
        await count_rows(db, "idempotency_keys"),
    )


@pytest.mark.parametrize(
    ("days", "code", "reason"),
    [
        (-91, grpc.StatusCode.FAILED_PRECONDITION, "EVIDENCE_TOO_OLD"),
        # A future date is the client's mistake, not a state of the registry.
        (1, grpc.StatusCode.INVALID_ARGUMENT, "EVIDENCE_FROM_FUTURE"),
    ],
    ids=["past-its-age", "after-today-in-finland"],
)
async def test_a_document_past_its_age_or_from_the_future_is_refused_naming_it_and_nothing_is_stored(  # noqa: PLR0917 - fixtures and parameters
    stub, tokens, registry_db, next_business_id, days, code, reason
):
    terms = await publish(stub, tokens, requirements=(declaration(), document("tax-certificate", 90)))
    business_id = next_business_id()
    before = await stored(registry_db)
    issued_on = finnish_today() + timedelta(days=days)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(
            stub,
            tokens,
            terms,
            business_id,
            evidence=[declared(), issued("tax-certificate", issued_on)],
            request_id="refused-certificate",
        )

    assert caught.value.code() == code
    assert error_reason(caught.value) == reason
    assert field_violations(caught.value) == ["registration.evidence[1].issued_on"]
    if reason == "EVIDENCE_TOO_OLD":
        details = caught.value.details() or ""
        assert "'tax-certificate'" in details and "at most 90 days" in details and "91 days old" in details
    assert await stored(registry_db) == before
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1}

    # Nothing held the place or the key: the same request id with a fresh certificate admits.
    admitted = await register(stub, tokens, terms, business_id, request_id="refused-certificate")
    assert admitted.state == registry_pb2.REGISTRATION_STATE_ADMITTED


@pytest.mark.parametrize(
    "case",
    ["wrong-check-digit", "signed-other-terms", "unknown-terms-version", "evidence-for-unknown-requirement"],
)
async def test_a_malformed_registration_is_refused_with_the_offending_field_and_writes_nothing(
    stub, tokens, registry_db, next_business_id, case
):
    first = await publish(stub, tokens, title="Rekrytointi v1")
    terms = await publish(stub, tokens, title="Rekrytointi v2")
    business_id = next_business_id()
    token_for = business_id
    if case == "wrong-check-digit":
        request = registration_request(terms, with_wrong_check_digit(business_id), good_evidence())
        expected = (grpc.StatusCode.INVALID_ARGUMENT, ["registration.business_id"])
    elif case == "signed-other-terms":
        request = registration_request(terms, business_id, good_evidence(), signed_hash=first.content_hash)
        expected = (grpc.StatusCode.INVALID_ARGUMENT, ["registration.terms_signature"])
    elif case == "unknown-terms-version":
        request = registration_request(terms, business_id, good_evidence(), terms_name=f"{PARENT}/terms/3")
        expected = (grpc.StatusCode.NOT_FOUND, [])
    else:
        request = registration_request(
            terms, business_id, [*good_evidence(), declared("no-such-requirement")]
        )
        expected = (grpc.StatusCode.INVALID_ARGUMENT, ["registration.evidence[2].requirement_code"])
    before = (
        await count_rows(registry_db, "registry_registrations"),
        await count_rows(registry_db, "outbox"),
        await count_rows(registry_db, "idempotency_keys"),
    )

    request.request_id = f"attempt-{case}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProvider(request, metadata=tokens.provider(token_for))

    assert (caught.value.code(), field_violations(caught.value)) == expected
    if case == "unknown-terms-version":
        assert error_reason(caught.value) == "TERMS_NOT_FOUND"
    after = (
        await count_rows(registry_db, "registry_registrations"),
        await count_rows(registry_db, "outbox"),
        await count_rows(registry_db, "idempotency_keys"),
    )
    assert after == before == (0, 3, 0)  # two publications, one superseding


async def test_a_provider_token_for_another_business_id_is_denied_and_writes_nothing(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    applicant, impostor = next_business_id(), next_business_id()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProvider(
            registration_request(terms, applicant, good_evidence()), metadata=tokens.provider(impostor)
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(caught.value) == "TENANT_MISMATCH"
    assert await count_rows(registry_db, "registry_registrations") == 0
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1}


async def test_registering_without_a_token_is_unauthenticated(stub, tokens, registry_db, next_business_id):
    terms = await publish(stub, tokens)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProvider(registration_request(terms, next_business_id(), good_evidence()))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await count_rows(registry_db, "registry_registrations") == 0


async def test_a_second_registration_for_the_same_provider_region_and_service_already_exists(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    business_id = next_business_id()
    first = await register(stub, tokens, terms, business_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, tokens, terms, business_id)

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.name in caught.value.details()
    assert await count_rows(registry_db, "registry_registrations") == 1
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1, REGISTERED: 1, ADMITTED: 1}


async def test_the_same_request_id_twice_returns_the_same_registration_and_one_row(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    business_id = next_business_id()

    key = ProviderKey()

    first = await register(stub, tokens, terms, business_id, request_id="register-1", key=key)
    retry = await register(stub, tokens, terms, business_id, request_id="register-1", key=key)

    assert retry == first
    assert retry.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert await count_rows(registry_db, "registry_registrations") == 1
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1, REGISTERED: 1, ADMITTED: 1}
    assert await count_rows(registry_db, "audit_log") == 2


async def test_the_same_request_id_with_another_request_is_refused_naming_the_key(
    stub, tokens, registry_db, next_business_id
):
    terms = await publish(stub, tokens)
    business_id = next_business_id()
    await register(stub, tokens, terms, business_id, request_id="register-1")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await register(stub, tokens, terms, business_id, request_id="register-1", evidence=[])

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'register-1'" in (refused.value.details() or "")
    assert field_violations(refused.value) == ["request_id"]
    assert error_reason(refused.value) == "IDEMPOTENCY_KEY_REUSED"
    assert await count_rows(registry_db, "registry_registrations") == 1


async def test_one_tenant_cannot_replay_another_tenants_answer_with_the_same_key(
    stub, tokens, registry_db, next_business_id
):
    first = await publish(stub, tokens, request_id="terms-1")
    other = await publish(stub, tokens, region=OTHER_REGION, request_id="terms-1")

    assert first.name.startswith(f"regions/{REGION}/") and other.name.startswith(f"regions/{OTHER_REGION}/")
    assert await count_rows(registry_db, "registry_terms") == 2


async def test_every_state_change_writes_its_events_and_a_submission_one_more(
    stub, tokens, registry_db, use_cases, next_business_id
):
    terms = await publish(stub, tokens)
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1}

    admitted_id, rejected_id = next_business_id(), next_business_id()
    await register(stub, tokens, terms, admitted_id)
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1, REGISTERED: 1, ADMITTED: 1}

    await register(stub, tokens, terms, rejected_id, evidence=[])
    assert await outbox_counts(registry_db) == {TERMS_PUBLISHED: 1, REGISTERED: 2, ADMITTED: 1, REJECTED: 1}

    assert (
        await suspend(registry_db, use_cases, REGION, admitted_id, SERVICE, "regions/pirkanmaa/breaches/b1")
        == 1
    )
    assert await outbox_counts(registry_db) == {
        TERMS_PUBLISHED: 1,
        REGISTERED: 2,
        ADMITTED: 1,
        REJECTED: 1,
        SUSPENDED: 1,
    }
    assert await count_rows(registry_db, "outbox", "published_at IS NULL") == 6


# -- listing --------------------------------------------------------------------------------


async def test_listing_pages_through_admitted_providers_in_business_id_order_without_repeats_or_gaps(
    stub, tokens, next_business_id
):
    terms = await publish(stub, tokens)
    ids = [next_business_id() for _ in range(7)]
    for business_id in reversed(ids):  # registered out of order
        await register(stub, tokens, terms, business_id)

    pages: list[list[str]] = []
    token = ""
    while True:
        response = await stub.ListProviders(
            registry_pb2.ListProvidersRequest(parent=PARENT, page_size=3, page_token=token)
        )
        pages.append([p.business_id for p in response.providers])
        token = response.next_page_token
        if not token:
            break

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [business_id for page in pages for business_id in page] == sorted(ids)


async def test_a_full_last_page_has_no_next_page_token(stub, tokens, next_business_id):
    terms = await publish(stub, tokens)
    for _ in range(2):
        await register(stub, tokens, terms, next_business_id())
    response = await stub.ListProviders(registry_pb2.ListProvidersRequest(parent=PARENT, page_size=2))
    assert len(response.providers) == 2
    assert response.next_page_token == ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("page_size", "page_token", "field"),
    [
        pytest.param(0, "not a token!", "page_token", id="garbage"),
        pytest.param(0, _b64(b"[1, 2]"), "page_token", id="not-an-object"),
        pytest.param(0, _b64(b'{"after": 5}'), "page_token", id="non-string-position"),
        pytest.param(-1, "", "page_size", id="negative-page-size"),
    ],
)
async def test_a_bad_page_request_is_invalid_argument(stub, page_size, page_token, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListProviders(
            registry_pb2.ListProvidersRequest(parent=PARENT, page_size=page_size, page_token=page_token)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]


async def test_rejected_and_suspended_providers_are_not_listed(
    stub, tokens, registry_db, use_cases, next_business_id
):
    terms = await publish(stub, tokens)
    admitted, rejected, suspended = next_business_id(), next_business_id(), next_business_id()
    await register(stub, tokens, terms, admitted)
    await register(stub, tokens, terms, rejected, evidence=[declared()])
    await register(stub, tokens, terms, suspended)
    assert await listed(stub) == [admitted, suspended]

    await suspend(registry_db, use_cases, REGION, suspended, SERVICE, "regions/pirkanmaa/breaches/b1")

    assert await listed(stub) == [admitted]


# -- suspension -----------------------------------------------------------------------------


async def test_a_breach_suspends_only_the_registration_in_its_region_and_service(
    stub, tokens, registry_db, use_cases, next_business_id
):
    business_id = next_business_id()
    here = await register(stub, tokens, await publish(stub, tokens), business_id)
    elsewhere = await register(stub, tokens, await publish(stub, tokens, region=OTHER_REGION), business_id)
    other_service = await register(
        stub, tokens, await publish(stub, tokens, service="career-guidance"), business_id
    )

    changed = await suspend(
        registry_db, use_cases, REGION, business_id, SERVICE, "regions/pirkanmaa/breaches/b1"
    )

    assert changed == 1
    assert await state_of(stub, tokens, here) == "REGISTRATION_STATE_SUSPENDED"
    assert await state_of(stub, tokens, elsewhere) == "REGISTRATION_STATE_ADMITTED"
    assert await state_of(stub, tokens, other_service) == "REGISTRATION_STATE_ADMITTED"
    suspended = await stub.GetRegistration(
        registry_pb2.GetRegistrationRequest(name=here.name), metadata=tokens.supervisor(REGION)
    )
    assert [(r.code, r.subject) for r in suspended.reasons] == [
        ("QUALITY_BREACH", "regions/pirkanmaa/breaches/b1")
    ]
    assert await listed(stub) == []
    assert await listed(stub, f"regions/{OTHER_REGION}/services/{SERVICE}") == [business_id]


async def test_a_redelivered_breach_changes_nothing_and_emits_no_second_suspension(
    stub, tokens, registry_db, use_cases, next_business_id
):
    business_id = next_business_id()
    registration = await register(stub, tokens, await publish(stub, tokens), business_id)
    breach = "regions/pirkanmaa/breaches/b1"

    assert await suspend(registry_db, use_cases, REGION, business_id, SERVICE, breach) == 1
    first = await stub.GetRegistration(
        registry_pb2.GetRegistrationRequest(name=registration.name), metadata=tokens.provider(business_id)
    )
    assert await suspend(registry_db, use_cases, REGION, business_id, SERVICE, breach) == 0
    second = await stub.GetRegistration(
        registry_pb2.GetRegistrationRequest(name=registration.name), metadata=tokens.provider(business_id)
    )

    assert second == first
    assert (await outbox_counts(registry_db)).get(SUSPENDED) == 1


def _breach_opened(
    business_id: str, severity: selfmonitoring_pb2.Severity.ValueType
) -> breach_events.BreachOpened:
    return breach_events.BreachOpened(
        region=REGION,
        breach=selfmonitoring_pb2.Breach(
            name="regions/pirkanmaa/breaches/b7",
            indicator="regions/pirkanmaa/indicators/need-assessment-14d",
            provider=business_id,
            service=SERVICE,
            severity=severity,
        ),
    )


async def test_under_the_default_policy_warnings_change_nothing_and_serious_breaches_suspend(
    stub, tokens, registry_db, use_cases, next_business_id
):
    business_id = next_business_id()
    registration = await register(stub, tokens, await publish(stub, tokens), business_id)
    subject = f"kasvu.selfmonitoring.v1.BreachOpened.{REGION}"

    warning = suspension_for(_breach_opened(business_id, selfmonitoring_pb2.SEVERITY_WARNING), subject)
    assert warning is not None
    assert await use_cases.handle(warning, inbox=InboxKey("registry-breaches", "event-1")) == 0
    assert await state_of(stub, tokens, registration) == "REGISTRATION_STATE_ADMITTED"
    assert SUSPENDED not in await outbox_counts(registry_db)

    command = suspension_for(_breach_opened(business_id, selfmonitoring_pb2.SEVERITY_SERIOUS), subject)
    assert command is not None
    assert await use_cases.handle(command, inbox=InboxKey("registry-breaches", "event-2")) == 1
    assert await use_cases.handle(command, inbox=InboxKey("registry-breaches", "event-2")) is DUPLICATE
    assert await state_of(stub, tokens, registration) == "REGISTRATION_STATE_SUSPENDED"
    assert (await outbox_counts(registry_db))[SUSPENDED] == 1

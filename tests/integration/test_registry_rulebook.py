# ruff: noqa: F811 - the registry fixtures are test_registry_lifecycle's
"""The rulebook's two parts over gRPC against real SQLite and PostgreSQL: a region's general part
pinned by its services' terms, registration against both parts' requirements, a new general part
that re-issues every service's terms so admitted providers re-commit or lapse by the scheduler,
and malformed parts refused with nothing stored."""

from __future__ import annotations

import json
from datetime import UTC, timedelta

import grpc
import pytest
from kasvu.registry.v1 import events_pb2, registry_pb2
from sqlalchemy import text

from tests.integration.helpers import (
    ProviderKey,
    count_rows,
    declaration,
    declared,
    document,
    error_reason,
    field_violations,
    issued,
    outbox_counts,
)
from tests.integration.test_registry_lifecycle import (  # noqa: F401 - fixtures
    PARENT,
    REGION,
    START,
    Registry,
    next_business_id,
    payloads,
    refused,
    registry,
)

OTHER_SERVICE = "competence-development"
OTHER_PARENT = f"regions/{REGION}/services/{OTHER_SERVICE}"
GENERAL_PARENT = f"regions/{REGION}"
INVOICING = registry_pb2.Section(
    topic=registry_pb2.SECTION_TOPIC_PRICE_AND_INVOICING, text="Invoices monthly, 14 days net."
)
FEEDBACK = registry_pb2.Section(
    topic=registry_pb2.SECTION_TOPIC_FEEDBACK_AND_REPORTING, text="Reports each quarter."
)
TABLES = ("registry_general_terms", "registry_terms", "outbox", "audit_log", "idempotency_keys")


async def publish_general(
    registry: Registry,
    *requirements: registry_pb2.Requirement,
    sections: tuple[registry_pb2.Section, ...] = (INVOICING,),
    title: str = "Yleiset ehdot",
    request_id: str = "",
    recommit_days: int = 0,
) -> registry_pb2.GeneralTerms:
    return await registry.stub.PublishGeneralTerms(
        registry_pb2.PublishGeneralTermsRequest(
            parent=GENERAL_PARENT,
            general_terms=registry_pb2.GeneralTerms(
                title=title, requirements=list(requirements), sections=list(sections)
            ),
            request_id=request_id,
            recommit_days=recommit_days,
        ),
        metadata=registry.tokens.admin(REGION),
    )


async def publish_service(
    registry: Registry,
    parent: str,
    *requirements: registry_pb2.Requirement,
    sections: tuple[registry_pb2.Section, ...] = (),
) -> registry_pb2.Terms:
    return await registry.stub.PublishTerms(
        registry_pb2.PublishTermsRequest(
            parent=parent,
            terms=registry_pb2.Terms(
                title="Palvelu", requirements=list(requirements), sections=list(sections)
            ),
        ),
        metadata=registry.tokens.admin(REGION),
    )


async def rows(registry: Registry) -> list[int]:
    return [await count_rows(registry.db, table) for table in TABLES]


async def test_service_terms_pin_the_general_part_and_registration_must_meet_both_parts(
    registry, next_business_id
):
    general = await publish_general(registry, declaration("prepayment-register"))
    terms = await publish_service(registry, PARENT, document("tax-certificate"), sections=(FEEDBACK,))

    assert general.name == f"{GENERAL_PARENT}/generalTerms/1"
    assert terms.general_terms == general.name
    assert [s.text for s in terms.sections] == [FEEDBACK.text]
    fetched = await registry.stub.GetTerms(
        registry_pb2.GetTermsRequest(name=terms.name), metadata=registry.tokens.provider("0737546-2")
    )
    assert (fetched.general_terms, fetched.content_hash) == (general.name, terms.content_hash)
    [published] = [
        events_pb2.TermsPublished.FromString(p) for p in await payloads(registry.db, "TermsPublished")
    ]
    assert published.general_terms == general.name

    certificate = issued("tax-certificate", START.date() - timedelta(days=5))
    short = await registry.register(terms, next_business_id(), evidence=[certificate])
    assert short.state == registry_pb2.REGISTRATION_STATE_REJECTED
    assert [(r.code, r.subject) for r in short.reasons] == [
        ("REQUIREMENT_NOT_DECLARED", "prepayment-register")
    ]

    met = await registry.register(terms, next_business_id(), evidence=[declared(), certificate])
    assert met.state == registry_pb2.REGISTRATION_STATE_ADMITTED


async def test_a_general_document_past_its_age_is_refused_and_nothing_is_stored(registry, next_business_id):
    await publish_general(registry, document("insurance", max_age_days=30))
    terms = await publish_service(registry, PARENT, declaration())
    before = await count_rows(registry.db, "registry_registrations")

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.register(
            terms,
            next_business_id(),
            evidence=[declared(), issued("insurance", START.date() - timedelta(days=31))],
        )

    assert error_reason(caught[0]) == "EVIDENCE_TOO_OLD"
    assert field_violations(caught[0]) == ["registration.evidence[1].issued_on"]
    assert await count_rows(registry.db, "registry_registrations") == before


async def test_a_new_general_part_reissues_every_services_terms_and_providers_recommit_or_lapse(
    registry, next_business_id
):
    first = await publish_general(registry, declaration("prepayment-register"))
    recruitment = await publish_service(registry, PARENT, document("tax-certificate"), sections=(FEEDBACK,))
    training = await publish_service(registry, OTHER_PARENT, declaration("trainers"))
    certificate = issued("tax-certificate", START.date() - timedelta(days=5))
    keys = {business_id: ProviderKey() for business_id in (next_business_id(), next_business_id())}
    committed, lapsing = [
        await registry.register(recruitment, business_id, evidence=[declared(), certificate], key=key)
        for business_id, key in keys.items()
    ]

    second = await publish_general(
        registry,
        declaration("prepayment-register"),
        sections=(INVOICING, FEEDBACK),
        title="Yleiset ehdot 2027",
    )

    reader = registry.tokens.provider(committed.business_id)
    current = {}
    for parent, before in ((PARENT, recruitment), (OTHER_PARENT, training)):
        listed = await registry.stub.ListTerms(registry_pb2.ListTermsRequest(parent=parent), metadata=reader)
        newest, older = listed.terms
        assert (newest.version, older.version) == (2, 1)
        assert (newest.general_terms, older.general_terms) == (second.name, first.name)
        assert (list(newest.requirements), list(newest.sections), newest.title) == (
            list(before.requirements),
            list(before.sections),
            before.title,
        )
        assert newest.content_hash != before.content_hash
        current[parent] = newest
    diff = await registry.stub.DiffTerms(
        registry_pb2.DiffTermsRequest(name=current[PARENT].name, other=recruitment.name), metadata=reader
    )
    assert (diff.general_terms_changed, diff.from_general_terms, diff.to_general_terms) == (
        True,
        first.name,
        second.name,
    )
    assert list(diff.changed_topics) == [registry_pb2.SECTION_TOPIC_FEEDBACK_AND_REPORTING]
    assert (list(diff.added), list(diff.removed), list(diff.changed)) == ([], [], [])

    waiting = await registry.get(committed)
    assert waiting.recommit_deadline.ToDatetime(UTC) == START + timedelta(days=30)
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.register(recruitment, next_business_id(), evidence=[declared(), certificate])
    assert error_reason(caught[0]) == "TERMS_SUPERSEDED"

    await registry.stub.RecommitRegistration(
        registry_pb2.RecommitRegistrationRequest(
            name=committed.name,
            terms=current[PARENT].name,
            terms_signature=keys[committed.business_id].sign(current[PARENT].content_hash),
        ),
        metadata=reader,
    )
    registry.clock.advance(timedelta(days=30, seconds=1))
    await registry.run_timers()

    assert await registry.state(committed) == "ADMITTED"
    lapsed = await registry.get(lapsing)
    assert lapsed.state == registry_pb2.REGISTRATION_STATE_LAPSED
    assert [(r.code, r.subject) for r in lapsed.reasons] == [("TERMS_NOT_RECOMMITTED", current[PARENT].name)]
    assert await registry.listed() == [committed.business_id]
    counts = await outbox_counts(registry.db)
    assert counts["kasvu.registry.v1.GeneralTermsPublished"] == 2
    assert counts["kasvu.registry.v1.TermsPublished"] == 4
    assert counts["kasvu.registry.v1.TermsSuperseded"] == 2
    published = [
        events_pb2.GeneralTermsPublished.FromString(p)
        for p in await payloads(registry.db, "GeneralTermsPublished")
    ]
    assert sorted(e.general_terms for e in published) == [first.name, second.name]


async def test_publishing_a_general_part_is_audited_and_a_retry_returns_the_first_version(registry):
    await publish_service(registry, PARENT, declaration())
    first = await publish_general(registry, declaration("insurance"), request_id="general-2026")
    retry = await publish_general(registry, declaration("insurance"), request_id="general-2026")

    assert (retry.name, retry.content_hash) == (first.name, first.content_hash)
    assert await count_rows(registry.db, "registry_general_terms") == 1
    assert await count_rows(registry.db, "registry_terms") == 2
    async with registry.db.reader.connect() as connection:
        command, actor, resources = (
            await connection.execute(
                text("SELECT command, actor, resources FROM audit_log ORDER BY seq DESC LIMIT 1")
            )
        ).one()
    assert command == "PublishGeneralTerms"
    assert actor.endswith(REGION)
    assert {first.name, f"{PARENT}/terms/1", f"{PARENT}/terms/2"} <= set(json.loads(resources))


async def test_general_terms_are_got_and_listed_newest_first_in_pages(registry):
    for year in (2025, 2026, 2027):
        await publish_general(registry, declaration("insurance"), title=f"Yleiset ehdot {year}")
    reader = registry.tokens.provider("0737546-2")

    first_page = await registry.stub.ListGeneralTerms(
        registry_pb2.ListGeneralTermsRequest(parent=GENERAL_PARENT, page_size=2), metadata=reader
    )
    second_page = await registry.stub.ListGeneralTerms(
        registry_pb2.ListGeneralTermsRequest(
            parent=GENERAL_PARENT, page_size=2, page_token=first_page.next_page_token
        ),
        metadata=reader,
    )
    assert [g.version for g in first_page.general_terms] == [3, 2]
    assert [g.version for g in second_page.general_terms] == [1]
    assert second_page.next_page_token == ""
    got = await registry.stub.GetGeneralTerms(
        registry_pb2.GetGeneralTermsRequest(name=f"{GENERAL_PARENT}/generalTerms/2"), metadata=reader
    )
    assert (got.title, [s.text for s in got.sections]) == ("Yleiset ehdot 2026", [INVOICING.text])
    async with refused(grpc.StatusCode.NOT_FOUND) as caught:
        await registry.stub.GetGeneralTerms(
            registry_pb2.GetGeneralTermsRequest(name=f"{GENERAL_PARENT}/generalTerms/4"), metadata=reader
        )
    assert error_reason(caught[0]) == "GENERAL_TERMS_NOT_FOUND"
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as foreign:
        await registry.stub.ListGeneralTerms(
            registry_pb2.ListGeneralTermsRequest(
                parent="regions/uusimaa", page_size=2, page_token=first_page.next_page_token
            ),
            metadata=reader,
        )
    assert field_violations(foreign[0]) == ["page_token"]


async def test_only_the_regions_admin_publishes_its_general_part_and_nothing_is_stored(registry):
    before = await rows(registry)
    for metadata in (registry.tokens.admin("uusimaa"), registry.tokens.provider("0737546-2")):
        async with refused(grpc.StatusCode.PERMISSION_DENIED):
            await registry.stub.PublishGeneralTerms(
                registry_pb2.PublishGeneralTermsRequest(
                    parent=GENERAL_PARENT,
                    general_terms=registry_pb2.GeneralTerms(title="Yleiset", sections=[INVOICING]),
                ),
                metadata=metadata,
            )
    assert await rows(registry) == before


@pytest.mark.parametrize(
    ("general_terms", "expected"),
    [
        pytest.param(
            registry_pb2.GeneralTerms(title="Yleiset", sections=[registry_pb2.Section(text="Whatever")]),
            ["general_terms.sections[0].topic"],
            id="no-topic",
        ),
        pytest.param(
            registry_pb2.GeneralTerms(
                title="Yleiset",
                sections=[registry_pb2.Section(topic=registry_pb2.SectionTopic.ValueType(99), text="x")],
            ),
            ["general_terms.sections[0].topic"],
            id="unknown-topic",
        ),
        pytest.param(
            registry_pb2.GeneralTerms(
                title="Yleiset", sections=[INVOICING, registry_pb2.Section(topic=INVOICING.topic, text="  ")]
            ),
            ["general_terms.sections[1].text"],
            id="empty-text",
        ),
        pytest.param(
            registry_pb2.GeneralTerms(title="Yleiset", sections=[INVOICING] * 51),
            ["general_terms.sections"],
            id="too-many-sections",
        ),
        pytest.param(
            registry_pb2.GeneralTerms(
                title="Yleiset", requirements=[declaration("insurance"), declaration("insurance")]
            ),
            ["general_terms.requirements[1].code"],
            id="duplicate-codes",
        ),
        pytest.param(
            registry_pb2.GeneralTerms(title="Yleiset", requirements=[declaration("prepayment-register")]),
            ["general_terms.requirements[0].code"],
            id="code-of-a-service-part",
        ),
        pytest.param(registry_pb2.GeneralTerms(title="Yleiset"), ["general_terms"], id="empty"),
    ],
)
async def test_a_malformed_general_part_is_refused_naming_the_field_and_nothing_is_stored(
    registry, general_terms, expected
):
    await publish_service(registry, PARENT, declaration("prepayment-register"))
    before = await rows(registry)

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.PublishGeneralTerms(
            registry_pb2.PublishGeneralTermsRequest(parent=GENERAL_PARENT, general_terms=general_terms),
            metadata=registry.tokens.admin(REGION),
        )

    assert field_violations(caught[0]) == expected
    assert await rows(registry) == before


@pytest.mark.parametrize(
    ("requirements", "sections", "expected"),
    [
        pytest.param(
            [declaration("insurance")], [], ["terms.requirements[0].code"], id="code-of-the-general-part"
        ),
        pytest.param(
            [declaration()],
            [FEEDBACK, registry_pb2.Section(text="x")],
            ["terms.sections[1].topic"],
            id="no-topic",
        ),
        pytest.param(
            [declaration()],
            [registry_pb2.Section(topic=FEEDBACK.topic)],
            ["terms.sections[0].text"],
            id="empty",
        ),
        pytest.param([declaration()], [FEEDBACK] * 51, ["terms.sections"], id="too-many-sections"),
    ],
)
async def test_a_malformed_service_part_is_refused_naming_the_field_and_nothing_is_stored(
    registry, requirements, sections, expected
):
    await publish_general(registry, declaration("insurance"))
    before = await rows(registry)

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await publish_service(registry, PARENT, *requirements, sections=tuple(sections))

    assert field_violations(caught[0]) == expected
    assert await rows(registry) == before

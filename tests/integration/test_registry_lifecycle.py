"""The registration lifecycle over gRPC against real databases: review, superseded terms and
re-commitment, suspension decisions with timed lifts, reinstatement, revocation, withdrawal,
evidence expiry, breaches that wait for admission, and the public list's filters."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kasvu.registry.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from kasvu.tendering.v1 import events_pb2 as tendering_events
from sqlalchemy import text
from sqlmodel import col, select

from kasvuctl.audit import check
from services.registry import bootstrap, handlers, store
from services.registry.consumers import market_failure_declared, market_failure_lifted
from services.registry.grpc_api import RegistryServicer
from services.runtime.clock import ManualClock
from services.runtime.db import Database, OutboxEvent
from services.runtime.dispatch import Dispatcher, InboxKey, Refused
from services.runtime.worker import Scheduler, Worker
from services.runtime.writer import write_path_for
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
    issued,
    outbox_counts,
    registration_request,
    serving,
)

REGION = "pirkanmaa"
SERVICE = "recruitment"
PARENT = f"regions/{REGION}/services/{SERVICE}"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BREACH = f"regions/{REGION}/breaches/b1"


@dataclass
class Registry:
    """The registry over gRPC, its database, its dispatcher and a clock the test moves."""

    stub: registry_pb2_grpc.RegistryServiceStub
    db: Database
    dispatcher: Dispatcher
    clock: ManualClock
    tokens: Tokens

    async def run_timers(self) -> None:
        """One scheduler round, by a worker built afresh: as after a restart of the registry."""
        write_path = write_path_for(self.db)
        try:
            worker = Worker(
                write_path, service="registry", jobs=[Scheduler(self.db, self.dispatcher)], holder="test"
            )
            assert await worker.run_once()
        finally:
            await write_path.close()

    async def publish(
        self, *requirements: registry_pb2.Requirement, title: str = "Rekrytointi", recommit_days: int = 0
    ) -> registry_pb2.Terms:
        return await self.stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=PARENT,
                terms=registry_pb2.Terms(title=title, requirements=list(requirements or (declaration(),))),
                recommit_days=recommit_days,
            ),
            metadata=self.tokens.admin(REGION),
        )

    async def register(
        self,
        terms: registry_pb2.Terms,
        business_id: str,
        *,
        evidence: list[registry_pb2.Evidence] | None = None,
        municipalities: tuple[str, ...] = (),
        languages: tuple[str, ...] = (),
        key: ProviderKey | None = None,
    ) -> registry_pb2.Registration:
        request = registration_request(
            terms, business_id, [declared()] if evidence is None else evidence, key=key
        )
        request.registration.municipalities.extend(municipalities)
        request.registration.languages.extend(languages)
        return await self.stub.RegisterProvider(request, metadata=self.tokens.provider(business_id))

    async def get(self, registration: registry_pb2.Registration) -> registry_pb2.Registration:
        return await self.stub.GetRegistration(
            registry_pb2.GetRegistrationRequest(name=registration.name),
            metadata=self.tokens.provider(registration.business_id),
        )

    async def state(self, registration: registry_pb2.Registration) -> str:
        return registry_pb2.RegistrationState.Name((await self.get(registration)).state).removeprefix(
            "REGISTRATION_STATE_"
        )

    async def listed(self, municipality: str = "", language: str = "") -> list[str]:
        response = await self.stub.ListProviders(
            registry_pb2.ListProvidersRequest(
                parent=PARENT, page_size=500, municipality=municipality, language=language
            )
        )
        return [p.business_id for p in response.providers]


@pytest.fixture
async def registry(
    database_url: str, tmp_path: Path, migrated_databases: MigratedDatabases
) -> AsyncIterator[Registry]:
    await migrated_databases.migrate(database_url, bootstrap.MIGRATIONS)
    db = Database(database_url)
    clock = ManualClock(START)
    tokens = Tokens.generate(tmp_path / "keys")
    try:
        async with (
            dispatching(
                db,
                service="registry",
                unit_of_work=store.unit_of_work_factory(),
                event_types=bootstrap.EVENT_TYPES,
                handlers=handlers.HANDLERS,
                clock=clock,
            ) as dispatcher,
            serving(
                tokens, registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(dispatcher)
            ) as channel,
        ):
            yield Registry(registry_pb2_grpc.RegistryServiceStub(channel), db, dispatcher, clock, tokens)
    finally:
        await db.dispose()


@pytest.fixture
def next_business_id():  # type: ignore[no-untyped-def]
    return business_ids(2_345_670)


def reasons(code: str = "QUALITY", message: str = "Repeated late service need assessments.") -> list:  # type: ignore[type-arg]
    return [registry_pb2.DecisionReason(code=code, subject=BREACH, message=message)]


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


async def payloads(db: Database, event_type: str) -> list[bytes]:
    async with db.read_session() as session:
        rows = await session.exec(
            select(OutboxEvent).where(col(OutboxEvent.event_type) == f"kasvu.registry.v1.{event_type}")
        )
        return [row.payload for row in rows.all()]


@contextlib.asynccontextmanager
async def refused(code: grpc.StatusCode) -> AsyncIterator[list[grpc.aio.AioRpcError]]:
    caught: list[grpc.aio.AioRpcError] = []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        yield caught
    assert error.value.code() == code, error.value.details()
    caught.append(error.value)


# -- terms ----------------------------------------------------------------------------------


async def test_a_registration_against_superseded_terms_is_refused_naming_the_current_version(
    registry, next_business_id
):
    first = await registry.publish(title="Rekrytointi 2026")
    await registry.publish(title="Rekrytointi 2027")

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.register(first, next_business_id())

    assert error_reason(caught[0]) == "TERMS_SUPERSEDED"
    assert f"{PARENT}/terms/2" in (caught[0].details() or "")
    assert await count_rows(registry.db, "registry_registrations") == 0


async def test_terms_are_listed_newest_first_and_diffed_by_requirement(registry):
    await registry.publish(declaration("prepayment-register"), document("tax-certificate"))
    await registry.publish(
        declaration("prepayment-register"), document("tax-certificate", 60), declaration("ins")
    )

    reader = registry.tokens.provider("0737546-2")
    listed = await registry.stub.ListTerms(registry_pb2.ListTermsRequest(parent=PARENT), metadata=reader)
    diff = await registry.stub.DiffTerms(
        registry_pb2.DiffTermsRequest(name=f"{PARENT}/terms/2", other=f"{PARENT}/terms/1"), metadata=reader
    )

    assert [t.version for t in listed.terms] == [2, 1]
    assert (list(diff.added), list(diff.removed), list(diff.changed)) == (["ins"], [], ["tax-certificate"])
    assert (diff.from_terms, diff.to_terms) == (f"{PARENT}/terms/1", f"{PARENT}/terms/2")


async def test_providers_who_do_not_recommit_in_the_window_lapse_and_those_who_do_stay(
    registry, next_business_id
):
    first = await registry.publish()
    keys = {business_id: ProviderKey() for business_id in (next_business_id(), next_business_id())}
    committed, lapsing = [
        await registry.register(first, business_id, key=key) for business_id, key in keys.items()
    ]
    second = await registry.publish(title="Rekrytointi 2027", recommit_days=30)

    waiting = await registry.get(committed)
    assert waiting.recommit_deadline.ToDatetime(UTC) == START + timedelta(days=30)
    recommitted = await registry.stub.RecommitRegistration(
        registry_pb2.RecommitRegistrationRequest(
            name=committed.name,
            terms=second.name,
            terms_signature=keys[committed.business_id].sign(second.content_hash),
        ),
        metadata=registry.tokens.provider(committed.business_id),
    )
    assert recommitted.terms == second.name
    assert not recommitted.HasField("recommit_deadline")

    registry.clock.advance(timedelta(days=30, seconds=1))
    await registry.run_timers()

    assert await registry.state(committed) == "ADMITTED"
    lapsed = await registry.get(lapsing)
    assert registry_pb2.RegistrationState.Name(lapsed.state) == "REGISTRATION_STATE_LAPSED"
    assert [(r.code, r.subject) for r in lapsed.reasons] == [("TERMS_NOT_RECOMMITTED", second.name)]
    assert lapsed.decisions[-1].kind == "LAPSE"
    assert await registry.listed() == [committed.business_id]
    assert await outbox_counts(registry.db) == {
        "kasvu.registry.v1.TermsPublished": 2,
        "kasvu.registry.v1.TermsSuperseded": 1,
        "kasvu.registry.v1.ProviderRegistered": 2,
        "kasvu.registry.v1.RegistrationAdmitted": 2,
        "kasvu.registry.v1.RegistrationRecommitted": 1,
        "kasvu.registry.v1.RegistrationLapsed": 1,
    }


async def test_a_recommitment_signed_by_another_key_is_refused_and_changes_nothing(
    registry, next_business_id
):
    first = await registry.publish()
    registration = await registry.register(first, next_business_id())
    second = await registry.publish(title="Rekrytointi 2027")

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.RecommitRegistration(
            registry_pb2.RecommitRegistrationRequest(
                name=registration.name,
                terms=second.name,
                terms_signature=ProviderKey().sign(second.content_hash),
            ),
            metadata=registry.tokens.provider(registration.business_id),
        )

    assert field_violations(caught[0]) == ["terms_signature"]
    assert (await registry.get(registration)).terms == first.name


# -- review ---------------------------------------------------------------------------------


async def test_a_person_decided_requirement_puts_the_registration_in_review_until_the_admin_admits(
    registry, next_business_id
):
    staff = registry_pb2.Requirement(
        code="staff-qualification",
        description="Career counsellors hold a relevant degree",
        kind=registry_pb2.REQUIREMENT_KIND_DECLARATION,
        decided_by=registry_pb2.DECIDER_PERSON,
        legal_basis="569/2009 5 §",
    )
    terms = await registry.publish(staff)
    registration = await registry.register(
        terms, next_business_id(), evidence=[declared("staff-qualification")]
    )
    assert registration.state == registry_pb2.REGISTRATION_STATE_IN_REVIEW
    assert await registry.listed() == []

    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await registry.stub.DecideRegistration(
            registry_pb2.DecideRegistrationRequest(name=registration.name, admit=True),
            metadata=registry.tokens.provider(registration.business_id),
        )
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.DecideRegistration(
            registry_pb2.DecideRegistrationRequest(name=registration.name, admit=False),
            metadata=registry.tokens.admin(REGION),
        )
    assert field_violations(caught[0]) == ["reasons"]

    admitted = await registry.stub.DecideRegistration(
        registry_pb2.DecideRegistrationRequest(name=registration.name, admit=True),
        metadata=registry.tokens.admin(REGION),
    )

    assert admitted.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert [d.kind for d in admitted.decisions] == ["REVIEW", "ADMISSION"]
    assert admitted.decisions[-1].actor.startswith(f"region_admin:{REGION}:")
    assert await registry.listed() == [registration.business_id]


# -- suspension -----------------------------------------------------------------------------


async def test_a_timed_suspension_is_a_decision_record_and_lifts_itself_after_a_restart(
    registry, next_business_id
):
    registration = await registry.register(await registry.publish(), next_business_id())
    lift = START + timedelta(days=90)

    suspended = await registry.stub.SuspendRegistration(
        registry_pb2.SuspendRegistrationRequest(
            name=registration.name, reasons=reasons(), lift_time=stamp(lift)
        ),
        metadata=registry.tokens.supervisor(REGION),
    )
    assert suspended.state == registry_pb2.REGISTRATION_STATE_SUSPENDED
    decision = suspended.decisions[-1]
    assert (decision.kind, decision.terms, decision.lift_time.ToDatetime(UTC)) == (
        "SUSPENSION",
        registration.terms,
        lift,
    )
    assert [(r.code, r.message) for r in decision.reasons] == [
        ("QUALITY", "Repeated late service need assessments.")
    ]
    assert decision.actor.startswith(f"supervisor:{REGION}:")
    assert await registry.listed() == []

    registry.clock.set(lift - timedelta(seconds=1))
    await registry.run_timers()
    assert await registry.state(registration) == "SUSPENDED"

    registry.clock.set(lift)
    await registry.run_timers()
    lifted = await registry.get(registration)
    assert lifted.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert [r.code for r in lifted.decisions[-1].reasons] == ["SUSPENSION_LIFTED"]
    assert lifted.decisions[-1].causes[0].startswith("timer:registry:lift:")
    assert await registry.listed() == [registration.business_id]
    [payload] = await payloads(registry.db, "ProviderReinstated")
    assert list(events_pb2.ProviderReinstated.FromString(payload).reason_codes) == ["SUSPENSION_LIFTED"]


async def test_a_lift_date_in_the_past_is_refused_and_nothing_is_stored(registry, next_business_id):
    registration = await registry.register(await registry.publish(), next_business_id())
    before = await count_rows(registry.db, "outbox")

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.SuspendRegistration(
            registry_pb2.SuspendRegistrationRequest(
                name=registration.name, reasons=reasons(), lift_time=stamp(START - timedelta(days=1))
            ),
            metadata=registry.tokens.supervisor(REGION),
        )

    assert field_violations(caught[0]) == ["lift_time"]
    assert await registry.state(registration) == "ADMITTED"
    assert await count_rows(registry.db, "outbox") == before
    assert await count_rows(registry.db, "timers") == 0


async def test_reinstating_a_provider_that_is_not_suspended_is_refused(registry, next_business_id):
    registration = await registry.register(await registry.publish(), next_business_id())

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await registry.stub.ReinstateRegistration(
            registry_pb2.ReinstateRegistrationRequest(name=registration.name, reasons=reasons("CORRECTED")),
            metadata=registry.tokens.admin(REGION),
        )

    assert error_reason(caught[0]) == "NOT_SUSPENDED"
    assert len((await registry.get(registration)).decisions) == 1


async def test_a_manual_reinstatement_ends_the_suspension_and_cancels_its_timed_lift(
    registry, next_business_id
):
    registration = await registry.register(await registry.publish(), next_business_id())
    await registry.stub.SuspendRegistration(
        registry_pb2.SuspendRegistrationRequest(
            name=registration.name, reasons=reasons(), lift_time=stamp(START + timedelta(days=90))
        ),
        metadata=registry.tokens.supervisor(REGION),
    )

    reinstated = await registry.stub.ReinstateRegistration(
        registry_pb2.ReinstateRegistrationRequest(name=registration.name, reasons=reasons("CORRECTED")),
        metadata=registry.tokens.admin(REGION),
    )

    assert reinstated.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert [d.kind for d in reinstated.decisions] == ["ADMISSION", "SUSPENSION", "REINSTATEMENT"]
    assert await count_rows(registry.db, "timers", "fired_at IS NULL") == 0


async def test_a_breach_against_a_provider_not_yet_registered_suspends_it_on_admission(
    registry, next_business_id
):
    business_id = next_business_id()
    changed = await registry.dispatcher.handle(
        handlers.SuspendProvider(region=REGION, business_id=business_id, service=SERVICE, breach=BREACH)
    )
    assert changed == 0

    registration = await registry.register(await registry.publish(), business_id)

    assert registration.state == registry_pb2.REGISTRATION_STATE_SUSPENDED
    assert [d.kind for d in registration.decisions] == ["ADMISSION", "SUSPENSION"]
    assert list(registration.decisions[-1].causes) == [BREACH, "pending-breach"]
    assert await registry.listed() == []
    assert await count_rows(registry.db, "registry_pending_breaches") == 0


# -- revocation and withdrawal --------------------------------------------------------------


async def test_a_revoked_provider_leaves_the_list_and_a_withdrawn_one_may_register_again(
    registry, next_business_id
):
    terms = await registry.publish()
    revoked_id, withdrawn_id = next_business_id(), next_business_id()
    revoked = await registry.register(terms, revoked_id)
    withdrawn = await registry.register(terms, withdrawn_id)

    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await registry.stub.RevokeRegistration(
            registry_pb2.RevokeRegistrationRequest(name=revoked.name, reasons=reasons("EXCLUSION")),
            metadata=registry.tokens.provider(revoked_id),
        )
    await registry.stub.RevokeRegistration(
        registry_pb2.RevokeRegistrationRequest(name=revoked.name, reasons=reasons("EXCLUSION")),
        metadata=registry.tokens.admin(REGION),
    )
    await registry.stub.WithdrawRegistration(
        registry_pb2.WithdrawRegistrationRequest(name=withdrawn.name),
        metadata=registry.tokens.provider(withdrawn_id),
    )

    assert (await registry.state(revoked), await registry.state(withdrawn)) == ("REVOKED", "WITHDRAWN")
    assert await registry.listed() == []
    again = await registry.register(terms, withdrawn_id)
    assert again.state == registry_pb2.REGISTRATION_STATE_ADMITTED


# -- evidence expiry ------------------------------------------------------------------------


async def test_expiring_evidence_sends_a_reminder_30_days_before_and_then_lapses_the_admission(
    registry, next_business_id
):
    certificate = registry_pb2.Requirement(
        code="tax-certificate",
        description="Tax debt certificate",
        kind=registry_pb2.REQUIREMENT_KIND_DOCUMENT,
        valid_days=100,
    )
    terms = await registry.publish(certificate)
    issued_on = START.date() - timedelta(days=10)
    registration = await registry.register(
        terms, next_business_id(), evidence=[issued("tax-certificate", issued_on)]
    )
    assert registration.state == registry_pb2.REGISTRATION_STATE_ADMITTED

    registry.clock.advance(timedelta(days=61))  # 29 days before the expiry: the reminder is due
    await registry.run_timers()
    [reminder] = await payloads(registry.db, "EvidenceRenewalDue")
    assert events_pb2.EvidenceRenewalDue.FromString(reminder).requirement_code == "tax-certificate"
    assert await registry.state(registration) == "ADMITTED"

    registry.clock.advance(timedelta(days=30))
    await registry.run_timers()
    lapsed = await registry.get(registration)
    assert lapsed.state == registry_pb2.REGISTRATION_STATE_LAPSED
    assert [(r.code, r.subject) for r in lapsed.reasons] == [("EVIDENCE_EXPIRED", "tax-certificate")]
    timer = f"timer:registry:evidence:{registration.name.rsplit('/', 1)[1]}"
    lapse = lapsed.decisions[-1]
    assert (lapse.kind, lapse.actor, list(lapse.causes)) == ("LAPSE", f"system:{timer}", [timer])


# -- lists ----------------------------------------------------------------------------------


async def test_the_public_list_filters_by_municipality_and_language_and_admitted_events_name_them(
    registry, next_business_id
):
    terms = await registry.publish()
    tampere_fi, tampere_sv, nokia_fi = next_business_id(), next_business_id(), next_business_id()
    await registry.register(terms, tampere_fi, municipalities=("837",), languages=("fi", "en"))
    await registry.register(terms, tampere_sv, municipalities=("837", "536"), languages=("sv",))
    await registry.register(terms, nokia_fi, municipalities=("536",), languages=("fi",))

    assert await registry.listed() == [tampere_fi, tampere_sv, nokia_fi]
    assert await registry.listed(municipality="837") == [tampere_fi, tampere_sv]
    assert await registry.listed(language="fi") == [tampere_fi, nokia_fi]
    assert await registry.listed(municipality="536", language="fi") == [nokia_fi]
    assert await registry.listed(municipality="091") == []
    first = await registry.stub.ListProviders(
        registry_pb2.ListProvidersRequest(parent=PARENT, municipality="837", page_size=1)
    )
    assert [(p.business_id, list(p.municipalities), list(p.languages)) for p in first.providers] == [
        (tampere_fi, ["837"], ["fi", "en"])
    ]
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:  # the token is bound to its filter
        await registry.stub.ListProviders(
            registry_pb2.ListProvidersRequest(
                parent=PARENT, municipality="536", page_size=1, page_token=first.next_page_token
            )
        )
    assert field_violations(caught[0]) == ["page_token"]
    admitted = [
        events_pb2.RegistrationAdmitted.FromString(p)
        for p in await payloads(registry.db, "RegistrationAdmitted")
    ]
    assert {(e.business_id, tuple(e.municipalities), tuple(e.languages)) for e in admitted} == {
        (tampere_fi, ("837",), ("fi", "en")),
        (tampere_sv, ("837", "536"), ("sv",)),
        (nokia_fi, ("536",), ("fi",)),
    }


@pytest.mark.parametrize(
    ("municipalities", "languages", "field"),
    [
        pytest.param(("Tampere",), (), "registration.municipalities[0]", id="municipality-name"),
        pytest.param(("837", "837"), (), "registration.municipalities[1]", id="repeated-municipality"),
        pytest.param((), ("fin",), "registration.languages[0]", id="three-letter-language"),
    ],
)
async def test_a_malformed_service_area_is_refused_naming_the_field(
    registry, next_business_id, municipalities, languages, field
):
    terms = await registry.publish()
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.register(terms, next_business_id(), municipalities=municipalities, languages=languages)
    assert field_violations(caught[0]) == [field]
    assert await count_rows(registry.db, "registry_registrations") == 0


async def test_a_region_lists_its_registrations_by_state_and_a_provider_its_own_across_regions(
    registry, next_business_id
):
    terms = await registry.publish()
    admitted_id, rejected_id = next_business_id(), next_business_id()
    admitted = await registry.register(terms, admitted_id)
    await registry.register(terms, rejected_id, evidence=[])

    by_state = await registry.stub.ListRegistrations(
        registry_pb2.ListRegistrationsRequest(parent=PARENT, state=registry_pb2.REGISTRATION_STATE_REJECTED),
        metadata=registry.tokens.admin(REGION),
    )
    own = await registry.stub.ListProviderRegistrations(
        registry_pb2.ListProviderRegistrationsRequest(parent=f"providers/{admitted_id}"),
        metadata=registry.tokens.provider(admitted_id),
    )

    assert [r.business_id for r in by_state.registrations] == [rejected_id]
    assert [r.name for r in own.registrations] == [admitted.name]
    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await registry.stub.ListRegistrations(
            registry_pb2.ListRegistrationsRequest(parent=PARENT), metadata=registry.tokens.admin("uusimaa")
        )
    async with refused(grpc.StatusCode.PERMISSION_DENIED):
        await registry.stub.ListProviderRegistrations(
            registry_pb2.ListProviderRegistrationsRequest(parent=f"providers/{admitted_id}"),
            metadata=registry.tokens.provider(rejected_id),
        )


async def test_the_regions_breach_policy_decides_which_severities_suspend_where_and_for_how_long(
    registry, next_business_id
):
    terms = await registry.publish()
    business_id = next_business_id()
    registration = await registry.register(terms, business_id)
    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.SetBreachPolicy(
            registry_pb2.SetBreachPolicyRequest(
                name=f"regions/{REGION}/breachPolicy", suspending_severities=["MILD"], suspend_days=-1
            ),
            metadata=registry.tokens.admin(REGION),
        )
    assert field_violations(caught[0]) == ["suspending_severities[0]", "suspend_days"]
    policy = await registry.stub.SetBreachPolicy(
        registry_pb2.SetBreachPolicyRequest(
            name=f"regions/{REGION}/breachPolicy",
            suspending_severities=["WARNING", "SERIOUS"],
            services=[SERVICE],
            suspend_days=90,
        ),
        metadata=registry.tokens.admin(REGION),
    )
    assert (list(policy.suspending_severities), policy.suspend_days) == (["WARNING", "SERIOUS"], 90)

    elsewhere = handlers.SuspendProvider(REGION, business_id, "career-guidance", BREACH, "WARNING")
    assert await registry.dispatcher.handle(elsewhere) == 0
    here = handlers.SuspendProvider(REGION, business_id, SERVICE, BREACH, "WARNING")
    assert await registry.dispatcher.handle(here) == 1

    suspended = await registry.get(registration)
    assert suspended.lift_time.ToDatetime(UTC) == START + timedelta(days=90)
    registry.clock.advance(timedelta(days=90))
    await registry.run_timers()
    assert await registry.state(registration) == "ADMITTED"


# -- market failure -------------------------------------------------------------------------


def _declared(
    finding: str, municipalities: tuple[str, ...], valid_until: datetime | None = None
) -> tendering_events.MarketFailureDeclared:
    event = tendering_events.MarketFailureDeclared(
        finding=finding,
        region=REGION,
        service=SERVICE,
        municipalities=list(municipalities),
        declare_time=stamp(START - timedelta(days=1)),
    )
    if valid_until is not None:
        event.valid_until.CopyFrom(stamp(valid_until))
    return event


async def register_municipal(
    registry: Registry, terms: registry_pb2.Terms, business_id: str, municipalities: tuple[str, ...]
) -> registry_pb2.Registration:
    request = registration_request(terms, business_id, [declared()])
    request.registration.municipalities.extend(municipalities)
    request.registration.legal_form = registry_pb2.LEGAL_FORM_MUNICIPAL_IN_HOUSE
    return await registry.stub.RegisterProvider(request, metadata=registry.tokens.provider(business_id))


async def test_a_municipal_provider_registers_only_where_a_market_failure_finding_covers_its_area(
    registry, next_business_id
):
    terms = await registry.publish()
    in_house = next_business_id()
    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await register_municipal(registry, terms, in_house, ("837",))
    assert error_reason(caught[0]) == "NO_MARKET_FAILURE"

    finding = f"regions/{REGION}/marketFailures/f1"
    command = market_failure_declared(_declared(finding, ("837",)), f"{finding}.{REGION}")
    await registry.dispatcher.handle(command)

    async with refused(grpc.StatusCode.FAILED_PRECONDITION) as caught:
        await register_municipal(registry, terms, in_house, ("837", "536"))  # Nokia is not covered
    assert "536" in (caught[0].details() or "")
    assert await count_rows(registry.db, "registry_registrations") == 0

    admitted = await register_municipal(registry, terms, in_house, ("837",))
    assert admitted.state == registry_pb2.REGISTRATION_STATE_ADMITTED
    assert admitted.legal_form == registry_pb2.LEGAL_FORM_MUNICIPAL_IN_HOUSE

    lifted = tendering_events.MarketFailureLifted(
        finding=finding, region=REGION, service=SERVICE, municipalities=["837"], lift_time=stamp(START)
    )
    assert await registry.dispatcher.handle(market_failure_lifted(lifted, "")) == 1

    after = await registry.get(admitted)
    assert after.state == registry_pb2.REGISTRATION_STATE_LAPSED
    assert [(r.code, r.subject) for r in after.reasons] == [("MARKET_FAILURE_LIFTED", finding)]
    assert await registry.listed() == []


async def test_a_finding_that_runs_out_lapses_municipal_admissions_by_the_scheduler(
    registry, next_business_id
):
    terms = await registry.publish()
    finding = f"regions/{REGION}/marketFailures/f2"
    until = START + timedelta(days=180)
    await registry.dispatcher.handle(market_failure_declared(_declared(finding, ("837",), until), ""))
    municipal = await register_municipal(registry, terms, next_business_id(), ("837",))
    private = await registry.register(terms, next_business_id(), municipalities=("837",))

    registry.clock.set(until)
    await registry.run_timers()

    assert (await registry.state(municipal), await registry.state(private)) == ("LAPSED", "ADMITTED")
    lapse = (await registry.get(municipal)).decisions[-1]
    assert (lapse.kind, lapse.actor) == ("LAPSE", f"system:timer:registry:market-failure:{finding}")


# -- audit ----------------------------------------------------------------------------------


async def test_audit_verify_passes_on_a_clean_history_and_fails_when_a_stored_decision_is_altered(
    registry, next_business_id, database_url
):
    registration = await registry.register(await registry.publish(), next_business_id())
    await registry.stub.SuspendRegistration(
        registry_pb2.SuspendRegistrationRequest(name=registration.name, reasons=reasons()),
        metadata=registry.tokens.supervisor(REGION),
    )
    problem = await audit_after_altering(
        registry, database_url, "Repeated late service need assessments.", "No reason."
    )
    assert problem == (
        f"decision 1 of registration {registration.name.rsplit('/', 1)[1]} differs from the audited one"
    )


async def audit_after_altering(registry: Registry, database_url: str, old: str, new: str) -> str:
    """Checks that `kasvu audit verify registry` passes, replaces `old` with `new` in the stored
    decisions, and returns what the check then finds (the chain itself stays intact)."""
    verdict, problem = await check(database_url, service="registry")
    assert verdict.intact and problem == ""
    async with registry.db.writer.begin() as connection:
        await connection.execute(
            text("UPDATE registry_registrations SET decisions_json = replace(decisions_json, :old, :new)"),
            {"old": old, "new": new},
        )
    verdict, problem = await check(database_url, service="registry")
    assert verdict.intact  # the chain itself is untouched
    return problem


# -- organisers and catalogue ---------------------------------------------------------------


async def test_organisers_and_the_service_catalogue_are_listed_and_a_region_adds_its_own(registry):
    organisers = await registry.stub.ListOrganisers(registry_pb2.ListOrganisersRequest())
    assert len([o for o in organisers.organisers if o.kind == "REGION"]) == 18
    assert [o.name for o in organisers.organisers if o.kind == "JOINT_MUNICIPAL_AUTHORITY"] == [
        "regions/uusimaa-joint-authority"
    ]

    created = await registry.stub.CreateService(
        registry_pb2.CreateServiceRequest(
            parent=f"regions/{REGION}",
            service_id="youth-workshops",
            service=registry_pb2.CatalogueService(display_name="Youth workshops"),
        ),
        metadata=registry.tokens.admin(REGION),
    )
    services = await registry.stub.ListServices(registry_pb2.ListServicesRequest(parent=f"regions/{REGION}"))
    elsewhere = await registry.stub.ListServices(registry_pb2.ListServicesRequest(parent="regions/kainuu"))

    assert created.name == f"regions/{REGION}/services/youth-workshops"
    assert [s.name.rsplit("/", 1)[1] for s in services.services if s.national] == [
        "recruitment",
        "competence-development",
        "career-guidance",
        "business-development",
        "internationalisation",
        "integration",
    ]
    assert [s.name for s in services.services if not s.national] == [created.name]
    assert created.name not in [s.name for s in elsewhere.services]


@pytest.mark.parametrize(
    ("parent", "reason"),
    [
        (f"regions/{REGION}/services/astrology", "SERVICE_NOT_FOUND"),
    ],
)
async def test_terms_for_an_unknown_service_are_refused_and_nothing_is_stored(registry, parent, reason):
    region = parent.split("/")[1]
    async with refused(grpc.StatusCode.NOT_FOUND) as caught:
        await registry.stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent=parent, terms=registry_pb2.Terms(title="Terms", requirements=[declaration()])
            ),
            metadata=registry.tokens.admin(region),
        )
    assert error_reason(caught[0]) == reason
    assert await count_rows(registry.db, "registry_terms") == 0


async def test_a_provider_rotates_its_key_with_the_old_one_and_then_commits_with_the_new(
    registry, next_business_id
):
    old, new = ProviderKey(), ProviderKey()
    first = await registry.publish()
    registration = await registry.register(first, next_business_id(), key=old)
    provider = registry.tokens.provider(registration.business_id)

    async with refused(grpc.StatusCode.INVALID_ARGUMENT) as caught:
        await registry.stub.RotateRegistrationKey(
            registry_pb2.RotateRegistrationKeyRequest(
                name=registration.name, public_key=new.public_key, key_signature=new.key.sign(new.public_key)
            ),
            metadata=provider,
        )
    assert field_violations(caught[0]) == ["key_signature"]

    rotated = await registry.stub.RotateRegistrationKey(
        registry_pb2.RotateRegistrationKeyRequest(
            name=registration.name, public_key=new.public_key, key_signature=old.key.sign(new.public_key)
        ),
        metadata=provider,
    )
    assert rotated.public_key == new.public_key
    # Both keys stay on the record: the old one retired at the rotation, the new one live.
    assert [(k.public_key, k.HasField("retire_time")) for k in rotated.keys] == [
        (old.public_key, True),
        (new.public_key, False),
    ]
    assert rotated.keys[0].fingerprint == hashlib.sha256(old.public_key).hexdigest()
    assert rotated.keys[0].retire_time == rotated.keys[1].add_time

    second = await registry.publish(title="Rekrytointi 2027")
    for key, code in ((old, grpc.StatusCode.INVALID_ARGUMENT), (new, grpc.StatusCode.OK)):
        request = registry_pb2.RecommitRegistrationRequest(
            name=registration.name, terms=second.name, terms_signature=key.sign(second.content_hash)
        )
        if code == grpc.StatusCode.OK:
            assert (await registry.stub.RecommitRegistration(request, metadata=provider)).terms == second.name
        else:
            async with refused(code):
                await registry.stub.RecommitRegistration(request, metadata=provider)


async def test_a_breach_event_naming_a_malformed_provider_is_refused_and_nothing_is_remembered(registry):
    command = handlers.SuspendProvider(REGION, "not-a-business-id-at-all", SERVICE, BREACH)

    outcome = await registry.dispatcher.handle(command, inbox=InboxKey("registry-breaches", "event-9"))

    assert isinstance(outcome, Refused)
    assert [v.field for v in outcome.error.violations] == ["breach.provider"]  # type: ignore[attr-defined]
    assert await count_rows(registry.db, "registry_pending_breaches") == 0


@pytest.mark.parametrize(
    ("breach", "why"),
    [
        ("", "no name at all: the fault run's trigger"),
        ("b1", "not a resource name"),
        ("regions/uusimaa/breaches/b1", "a breach of another region"),
        (f"regions/{REGION}/breaches/nul\x00byte", "a NUL, which PostgreSQL cannot store"),
    ],
)
async def test_a_breach_event_citing_no_valid_breach_of_its_region_is_refused_and_suspends_nothing(
    registry, next_business_id, breach: str, why: str
):
    business_id = next_business_id()
    registration = await registry.register(await registry.publish(), business_id)
    command = handlers.SuspendProvider(REGION, business_id, SERVICE, breach)

    outcome = await registry.dispatcher.handle(command, inbox=InboxKey("registry-breaches", "event-10"))

    assert isinstance(outcome, Refused), why
    assert [v.field for v in outcome.error.violations] == ["breach.name"], why  # type: ignore[attr-defined]
    assert await count_rows(registry.db, "registry_pending_breaches") == 0
    assert await registry.state(registration) == "ADMITTED"

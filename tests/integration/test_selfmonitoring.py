"""Self-monitoring over gRPC against real databases (SQLite file and PostgreSQL) and, for the
alert stream, a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kasvu.registry.v1 import events_pb2 as registry_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from kasvuctl.natsauth import ADMIN_USER
from services.runtime import catalog, envelope
from services.runtime.bus import OutboxRelay, StreamSpec, connect, declare_stream
from services.runtime.clock import FINLAND, ManualClock
from services.runtime.clock import Clock as RuntimeClock
from services.runtime.db import Database
from services.runtime.migrate import upgrade_async
from services.runtime.names import next_page_token
from services.runtime.settings import Settings
from services.runtime.worker import Scheduler, Worker
from services.runtime.writer import write_path_for
from services.selfmonitoring import bootstrap, consumers, handlers, store
from services.selfmonitoring.alerts import AlertFeed
from services.selfmonitoring.grpc_api import SelfMonitoringServicer
from tests.conftest import MigratedDatabases, NatsServer
from tests.integration.helpers import (
    AlertReader,
    Tokens,
    business_ids,
    count_rows,
    dispatching,
    error_reason,
    field_violations,
    finnish_today,
    outbox_counts,
    proto_date,
    serving,
)

REGION = "pirkanmaa"
OTHER_REGION = "uusimaa"
INDICATOR_ID = "need-assessment-14d"
INDICATOR = f"regions/{REGION}/indicators/{INDICATOR_ID}"
BREACH_OPENED = "kasvu.selfmonitoring.v1.BreachOpened"
WARNING_RAISED = "kasvu.selfmonitoring.v1.WarningRaised"
WARNING_CLEARED = "kasvu.selfmonitoring.v1.WarningCleared"
INDICATOR_CREATED = "kasvu.selfmonitoring.v1.IndicatorCreated"
STREAM = StreamSpec(catalog.entry("selfmonitoring").stream, catalog.entry("selfmonitoring").subjects)


class Clock(RuntimeClock):
    """A settable clock handed to the dispatcher, so a test can move "today"; each reading
    moves it on by `step`."""

    def __init__(self, at: datetime | None = None, step: timedelta = timedelta(0)) -> None:
        self.at = at or datetime.now(UTC)
        self.step = step

    def now(self) -> datetime:
        current = self.at
        self.at += self.step
        return current

    @property
    def day(self) -> date:
        """Today in Finland, without moving the clock."""
        return self.at.astimezone(FINLAND).date()


@pytest.fixture
async def sm_db(database_url: str, migrated_databases: MigratedDatabases) -> AsyncIterator[Database]:
    await migrated_databases.migrate(database_url, bootstrap.MIGRATIONS)
    db = Database(database_url)
    yield db
    await db.dispose()


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens.generate(tmp_path / "keys")


@pytest.fixture
def clock() -> Clock:
    # Noon in Helsinki: the Finnish date is the same all through the test.
    return Clock(datetime(2025, 3, 14, 10, 0, tzinfo=UTC))


def _no_bus():  # type: ignore[no-untyped-def]
    raise AssertionError("this test has no NATS")


@contextlib.asynccontextmanager
async def self_monitoring(
    db: Database,
    tokens: Tokens,
    clock: RuntimeClock | None = None,
    alerts: AlertFeed | None = None,
    after_commit: Callable[[], None] = lambda: None,
) -> AsyncIterator[selfmonitoring_pb2_grpc.SelfMonitoringServiceStub]:
    async with dispatching(
        db,
        service="selfmonitoring",
        unit_of_work=store.unit_of_work_factory(),
        event_types=bootstrap.EVENT_TYPES,
        handlers=handlers.HANDLERS,
        clock=clock or RuntimeClock(),
    ) as dispatcher:
        dispatcher.after_commit = after_commit
        servicer = SelfMonitoringServicer(dispatcher, alerts or AlertFeed(_no_bus))
        async with serving(
            tokens, selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server, servicer
        ) as channel:
            yield selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel)


@pytest.fixture
async def stub(
    sm_db: Database, tokens: Tokens, clock: Clock
) -> AsyncIterator[selfmonitoring_pb2_grpc.SelfMonitoringServiceStub]:
    async with self_monitoring(sm_db, tokens, clock) as service:
        yield service


def indicator(
    *,
    minimum_sample: int = 3,
    minimum_share: float = 0.8,
    deadline_days: int = 14,
    window_days: int = 90,
    severity: selfmonitoring_pb2.Severity.ValueType = selfmonitoring_pb2.SEVERITY_SERIOUS,
    display_name: str = "Service need assessed within 14 days",
) -> selfmonitoring_pb2.Indicator:
    return selfmonitoring_pb2.Indicator(
        display_name=display_name,
        service="recruitment",
        share_within_deadline=selfmonitoring_pb2.ShareWithinDeadline(
            deadline_days=deadline_days, minimum_share=minimum_share
        ),
        window_days=window_days,
        minimum_sample=minimum_sample,
        severity=severity,
    )


async def create(
    stub: selfmonitoring_pb2_grpc.SelfMonitoringServiceStub,
    tokens: Tokens,
    definition: selfmonitoring_pb2.Indicator | None = None,
    region: str = REGION,
    indicator_id: str = INDICATOR_ID,
) -> selfmonitoring_pb2.Indicator:
    return await stub.CreateIndicator(
        selfmonitoring_pb2.CreateIndicatorRequest(
            parent=f"regions/{region}", indicator_id=indicator_id, indicator=definition or indicator()
        ),
        metadata=tokens.admin(region),
    )


def observation(
    observation_id: str, provider: str, completed_on: date, days_taken: int, case_key: str = ""
) -> selfmonitoring_pb2.Observation:
    return selfmonitoring_pb2.Observation(
        observation_id=observation_id,
        provider=provider,
        case_key=case_key or f"case-{observation_id}",
        started_on=proto_date(completed_on - timedelta(days=days_taken)),
        completed_on=proto_date(completed_on),
    )


async def record(
    stub: selfmonitoring_pb2_grpc.SelfMonitoringServiceStub,
    tokens: Tokens,
    item: selfmonitoring_pb2.Observation,
    parent: str = INDICATOR,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> selfmonitoring_pb2.RecordObservationResponse:
    return await stub.RecordObservation(
        selfmonitoring_pb2.RecordObservationRequest(parent=parent, observation=item),
        metadata=metadata or tokens.admin(REGION),
    )


# -- indicators -----------------------------------------------------------------------------


async def test_a_region_admin_defines_an_indicator_that_reads_back_unchanged(stub, tokens, sm_db):
    created = await create(stub, tokens)

    assert created.name == INDICATOR
    fetched = await stub.GetIndicator(selfmonitoring_pb2.GetIndicatorRequest(name=INDICATOR))
    assert fetched == created
    assert fetched.share_within_deadline.minimum_share == pytest.approx(0.8)
    assert fetched.severity == selfmonitoring_pb2.SEVERITY_SERIOUS
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 1


@pytest.mark.parametrize(
    ("who", "code"),
    [
        pytest.param(
            ("admin", OTHER_REGION), grpc.StatusCode.PERMISSION_DENIED, id="admin-of-another-region"
        ),
        pytest.param(("supervisor", REGION), grpc.StatusCode.PERMISSION_DENIED, id="supervisor"),
        pytest.param(("provider", "0737546-2"), grpc.StatusCode.PERMISSION_DENIED, id="provider"),
        pytest.param(None, grpc.StatusCode.UNAUTHENTICATED, id="no-token"),
    ],
)
async def test_only_the_region_own_admin_may_define_indicators(stub, tokens, sm_db, who, code):
    metadata = getattr(tokens, who[0])(who[1]) if who else None
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateIndicator(
            selfmonitoring_pb2.CreateIndicatorRequest(
                parent=f"regions/{REGION}", indicator_id=INDICATOR_ID, indicator=indicator()
            ),
            metadata=metadata,
        )

    assert caught.value.code() == code
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 0


@pytest.mark.parametrize(
    ("indicator_id", "definition", "expected_fields"),
    [
        pytest.param(
            "Bad_Id",
            selfmonitoring_pb2.Indicator(
                display_name=" ",
                service="Recruitment",
                share_within_deadline=selfmonitoring_pb2.ShareWithinDeadline(
                    deadline_days=0, minimum_share=1.5
                ),
                window_days=0,
                minimum_sample=0,
                severity=selfmonitoring_pb2.SEVERITY_WARNING,
            ),
            [
                "indicator_id",
                "indicator.service",
                "indicator.display_name",
                "indicator.share_within_deadline.deadline_days",
                "indicator.share_within_deadline.minimum_share",
                "indicator.window_days",
                "indicator.minimum_sample",
            ],
            id="every-value-wrong",
        ),
        pytest.param(
            INDICATOR_ID,
            indicator(minimum_share=float("nan")),
            ["indicator.share_within_deadline.minimum_share"],
            id="nan-share",
        ),
        pytest.param(
            INDICATOR_ID,
            indicator(severity=selfmonitoring_pb2.SEVERITY_UNSPECIFIED),
            ["indicator.severity"],
            id="no-severity",
        ),
    ],
)
async def test_invalid_indicator_values_are_refused_with_their_field_paths(  # noqa: PLR0917
    stub, tokens, sm_db, indicator_id, definition, expected_fields
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, tokens, definition, indicator_id=indicator_id)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == expected_fields
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 0


async def test_recreating_the_same_definition_is_idempotent_but_a_different_one_already_exists(
    stub, tokens, sm_db
):
    first = await create(stub, tokens)
    again = await create(stub, tokens)
    assert again == first

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, tokens, indicator(minimum_share=0.9))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "INDICATOR_EXISTS"

    fetched = await stub.GetIndicator(selfmonitoring_pb2.GetIndicatorRequest(name=INDICATOR))
    assert fetched.share_within_deadline.minimum_share == pytest.approx(0.8)
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 1


# -- observations and breaches --------------------------------------------------------------


async def test_a_breach_opens_once_when_the_sample_is_reached_with_too_few_cases_on_time(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens, indicator(minimum_sample=3, minimum_share=0.8))
    provider = business_ids()()
    today = clock.day

    first = await record(stub, tokens, observation("o1", provider, today - timedelta(days=3), days_taken=30))
    second = await record(stub, tokens, observation("o2", provider, today - timedelta(days=2), days_taken=20))
    assert (first.recorded, first.sample_size, first.breach) == (True, 1, "")
    assert (second.recorded, second.sample_size, second.breach) == (True, 2, "")
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 0
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1}

    third = await record(stub, tokens, observation("o3", provider, today, days_taken=14))
    assert third.recorded
    assert third.sample_size == 3
    assert third.value == pytest.approx(1 / 3)  # the deadline day itself counts as on time
    assert third.breach.startswith(f"regions/{REGION}/breaches/")
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 1
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1, BREACH_OPENED: 1}

    for index in range(4, 7):
        later = await record(stub, tokens, observation(f"o{index}", provider, today, days_taken=40))
        assert later.breach == third.breach
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 1
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1, BREACH_OPENED: 1}

    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=third.breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.provider, breach.service, breach.indicator) == (provider, "recruitment", INDICATOR)
    assert (breach.sample_size, breach.threshold) == (3, pytest.approx(0.8))
    assert breach.value == pytest.approx(1 / 3)
    assert breach.state == selfmonitoring_pb2.BREACH_STATE_OPEN


async def test_a_share_at_the_threshold_or_outside_the_window_opens_no_breach(stub, tokens, sm_db, clock):
    await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5, window_days=30))
    provider = business_ids()()
    today = clock.day
    # Two late cases completed before the window: they do not count.
    for index in range(2):
        await record(stub, tokens, observation(f"old{index}", provider, today - timedelta(days=31), 40))
    on_time = await record(stub, tokens, observation("in1", provider, today, days_taken=1))
    late = await record(stub, tokens, observation("in2", provider, today, days_taken=30))

    assert (on_time.sample_size, late.sample_size) == (1, 2)
    assert late.value == pytest.approx(0.5)
    assert late.breach == ""
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 0


async def test_the_same_observation_twice_is_recorded_once(stub, tokens, sm_db, clock):
    await create(stub, tokens)
    provider = business_ids()()
    item = observation("o1", provider, clock.day, days_taken=3)

    first = await record(stub, tokens, item)
    again = await record(stub, tokens, item)

    assert (first.recorded, again.recorded) == (True, False)
    assert again.sample_size == 1
    assert await count_rows(sm_db, "selfmonitoring_observations") == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"completed_in_days": 1}, "observation.completed_on", id="completed-in-the-future"),
        pytest.param({"case_key": "131052-308T"}, "observation.case_key", id="identity-code-as-case-key"),
        pytest.param({"provider": "0737546-3"}, "observation.provider", id="wrong-check-digit"),
    ],
)
async def test_an_invalid_observation_is_refused_with_its_field_and_stores_nothing(  # noqa: PLR0917
    stub, tokens, sm_db, clock, change, field
):
    await create(stub, tokens)
    completed = clock.day + timedelta(days=change.get("completed_in_days", 0))
    item = observation(
        "o1",
        change.get("provider", "0737546-2"),
        completed,
        days_taken=3,
        case_key=change.get("case_key", ""),
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, item)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]
    assert await count_rows(sm_db, "selfmonitoring_observations") == 0


async def test_a_provider_records_its_own_cases_but_not_another_providers(stub, tokens, sm_db, clock):
    await create(stub, tokens)
    next_id = business_ids()
    own, other = next_id(), next_id()

    mine = await record(stub, tokens, observation("o1", own, clock.day, 3), metadata=tokens.provider(own))
    assert mine.recorded
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, observation("o2", other, clock.day, 3), metadata=tokens.provider(own))

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_rows(sm_db, "selfmonitoring_observations") == 1
    assert await count_rows(sm_db, "selfmonitoring_observations", "provider = :p", p=other) == 0


async def test_recording_for_an_unknown_indicator_is_not_found(stub, tokens, sm_db, clock):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(
            stub,
            tokens,
            observation("o1", "0737546-2", clock.day, 3),
            parent=f"regions/{REGION}/indicators/no-such-indicator",
        )

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "INDICATOR_NOT_FOUND"
    assert await count_rows(sm_db, "selfmonitoring_observations") == 0


async def test_a_repeated_observation_never_reports_a_breach_that_was_not_stored(sm_db, tokens, clock):
    """When the window has moved on since an observation was first recorded, recording it again
    must not answer with the name of a breach that the service then never stores."""
    async with self_monitoring(sm_db, tokens, clock) as stub:
        await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5, window_days=10))
        provider = business_ids()()
        day0 = clock.day
        for index in range(2):
            await record(stub, tokens, observation(f"good{index}", provider, day0 - timedelta(days=8), 1))
        for index in range(2):
            result = await record(stub, tokens, observation(f"late{index}", provider, day0, 30))
        assert (result.value, result.breach) == (pytest.approx(0.5), "")

        clock.at += timedelta(days=5)  # the on-time cases leave the 10-day window
        repeated = await record(stub, tokens, observation("late0", provider, day0, 30))

        assert not repeated.recorded
        breaches = await count_rows(sm_db, "selfmonitoring_breaches")
        assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1} | (
            {BREACH_OPENED: breaches} if breaches else {}
        )
        if repeated.breach:
            fetched = await stub.GetBreach(
                selfmonitoring_pb2.GetBreachRequest(name=repeated.breach), metadata=tokens.supervisor(REGION)
            )
            assert fetched.provider == provider
        else:
            assert breaches == 0


async def _open_breaches(stub, tokens, today: date, count: int) -> list[str]:
    """One breach per provider on an indicator that breaches on the first late case."""
    await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.9))
    next_id = business_ids()
    names = []
    for index in range(count):
        result = await record(stub, tokens, observation(f"o{index}", next_id(), today, days_taken=30))
        assert result.breach
        names.append(result.breach)
    return names


@pytest.mark.parametrize(
    "step",
    [pytest.param(timedelta(minutes=1), id="distinct-times"), pytest.param(timedelta(0), id="same-instant")],
)
async def test_breaches_list_newest_first_across_pages_without_repeats_or_gaps(sm_db, tokens, step):
    clock = Clock(datetime(2025, 3, 14, 10, 0, tzinfo=UTC), step=step)
    async with self_monitoring(sm_db, tokens, clock) as stub:
        opened = await _open_breaches(stub, tokens, clock.day, 5)

        pages: list[list[str]] = []
        token = ""
        while True:
            response = await stub.ListBreaches(
                selfmonitoring_pb2.ListBreachesRequest(
                    parent=f"regions/{REGION}", page_size=2, page_token=token
                ),
                metadata=tokens.supervisor(REGION),
            )
            pages.append([breach.name for breach in response.breaches])
            token = response.next_page_token
            if not token:
                break

    listed = [name for page in pages for name in page]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert len(set(listed)) == 5
    assert set(listed) == set(opened)
    if step:
        assert listed == list(reversed(opened))
    else:
        assert listed == sorted(opened, reverse=True)  # ties broken by id, descending


@pytest.mark.parametrize(
    ("list_name", "position"),
    [
        ("ListProgrammes", {"version": "1"}),
        ("ListIndicators", {"id": "a"}),
        ("ListAlerts", {"created_at": "2026-03-14T10:00:00+00:00", "id": "a"}),
    ],
)
async def test_a_page_token_bound_to_the_parent_but_not_to_the_list_is_invalid_argument(
    stub, tokens, list_name, position
):
    # Three lists share the parent regions/{region} and pages of the same shapes: a token
    # another list issued, or one bound to the parent only, must not page this one.
    parent = f"regions/{REGION}"
    method = getattr(stub, list_name)
    request = getattr(selfmonitoring_pb2, f"{list_name}Request")
    supervisor = tokens.supervisor(REGION)
    own = next_page_token({"list": f"selfmonitoring.{list_name}", "parent": parent}, position)
    await method(request(parent=parent, page_token=own), metadata=supervisor)  # its own pages on
    others = [f"selfmonitoring.{n}" for n in ("ListProgrammes", "ListIndicators", "ListAlerts")]
    for bound in [{"parent": parent}, *({"list": o, "parent": parent} for o in others if list_name not in o)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(
                request(parent=parent, page_token=next_page_token(bound, position)), metadata=supervisor
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bound
        assert field_violations(caught.value) == ["page_token"], bound
        assert "another query" in (caught.value.details() or ""), bound


@pytest.mark.parametrize(
    "position",
    [{"opened_at": "yesterday", "id": "b"}, {"opened_at": "2025-03-14T10:00:00", "id": "b"}, {"id": "b"}],
    ids=["not-an-instant", "no-time-zone", "no-instant"],
)
async def test_a_page_token_with_a_forged_position_is_invalid_argument(stub, tokens, position):
    # The token's checksum tells damage from a token the service wrote, not forgery: anyone can
    # compute it, so the position inside is checked as any client input is.
    query = {"parent": f"regions/{REGION}", "state": "0", "severity": "0", "provider": ""}
    forged = next_page_token({"list": "selfmonitoring.ListBreaches", **query}, position)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListBreaches(
            selfmonitoring_pb2.ListBreachesRequest(parent=f"regions/{REGION}", page_token=forged),
            metadata=tokens.supervisor(REGION),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["page_token"]
    # Refused for its position, not as a token of another query: the query it names is this one's.
    assert "another query" not in (caught.value.details() or "")


async def test_breaches_are_only_for_the_region_own_supervisors(stub, tokens, clock):
    [name] = await _open_breaches(stub, tokens, clock.day, 1)
    request = selfmonitoring_pb2.GetBreachRequest(name=name)

    assert (await stub.GetBreach(request, metadata=tokens.supervisor(REGION))).name == name
    for metadata in (
        tokens.supervisor(OTHER_REGION),
        tokens.admin(OTHER_REGION),
        tokens.provider("0737546-2"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetBreach(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListBreaches(
            selfmonitoring_pb2.ListBreachesRequest(parent=f"regions/{REGION}"),
            metadata=tokens.supervisor(OTHER_REGION),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBreach(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_another_regions_supervisor_may_not_stream_alerts(stub, tokens):
    call = stub.StreamAlerts(
        selfmonitoring_pb2.StreamAlertsRequest(parent=f"regions/{REGION}"),
        metadata=tokens.supervisor(OTHER_REGION),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- observation sources (issue 6, item 7) ---------------------------------------------------

BREACH_RESOLVED = "kasvu.selfmonitoring.v1.BreachResolved"
REGION_CASE_DATA = selfmonitoring_pb2.OBSERVATION_SOURCE_REGION_CASE_DATA
PROVIDER_REPORT = selfmonitoring_pb2.OBSERVATION_SOURCE_PROVIDER_REPORT


def sourced(item: selfmonitoring_pb2.Observation, source: int) -> selfmonitoring_pb2.Observation:
    copy = selfmonitoring_pb2.Observation()
    copy.CopyFrom(item)
    copy.source = source  # type: ignore[assignment]
    return copy


@pytest.mark.parametrize(
    "source",
    [
        selfmonitoring_pb2.OBSERVATION_SOURCE_REGION_CASE_DATA,
        selfmonitoring_pb2.OBSERVATION_SOURCE_CUSTOMER_FEEDBACK,
        selfmonitoring_pb2.OBSERVATION_SOURCE_COMPLAINT,
        selfmonitoring_pb2.OBSERVATION_SOURCE_AUDIT_FINDING,
    ],
)
async def test_a_provider_may_not_record_the_regions_own_sources(stub, tokens, sm_db, clock, source):
    await create(stub, tokens)
    provider = business_ids()()
    item = sourced(observation("o1", provider, clock.day, 3), source)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, item, metadata=tokens.provider(provider))

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_rows(sm_db, "selfmonitoring_observations") == 0


async def test_a_providers_report_can_neither_claim_nor_mask_the_regions_observation(
    stub, tokens, sm_db, clock
):
    """The provider reports case-1 as on time first; the region's own late case-1 still counts."""
    await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5))
    provider = business_ids()()

    claimed = await record(
        stub, tokens, observation("case-1", provider, clock.day, 3), metadata=tokens.provider(provider)
    )
    own = await record(
        stub, tokens, sourced(observation("case-1", provider, clock.day, 30), REGION_CASE_DATA)
    )

    assert (claimed.recorded, own.recorded) == (True, True)
    assert own.sample_size == 2
    # The provider's report weighs half: 0.5 on time of 1.5 in all, below the 0.5 threshold.
    assert own.value == pytest.approx(1 / 3)
    assert own.breach
    sources = await count_rows(sm_db, "selfmonitoring_observations", "observation_id = 'case-1'")
    assert sources == 2


async def test_the_same_observation_id_with_other_content_is_refused_naming_the_field(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens)
    provider = business_ids()()
    await record(stub, tokens, observation("o1", provider, clock.day, 3))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, observation("o1", provider, clock.day, 30))

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "OBSERVATION_CONFLICT"
    assert field_violations(caught.value) == ["observation.started_on"]
    assert await count_rows(sm_db, "selfmonitoring_observations") == 1
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 0


# -- hysteresis, late data, metric kinds ------------------------------------------------------


async def test_a_breach_resolves_only_past_the_recovery_share_and_then_a_new_one_can_open(
    stub, tokens, sm_db, clock
):
    definition = indicator(minimum_sample=2, minimum_share=0.5)
    definition.share_within_deadline.recovery_share = 0.75
    await create(stub, tokens, definition)
    provider = business_ids()()
    day = clock.day
    opened = [await record(stub, tokens, observation(f"late{i}", provider, day, 30)) for i in range(2)][-1]
    assert opened.breach

    values = []
    for index in range(6):
        result = await record(stub, tokens, observation(f"ok{index}", provider, day, 1))
        values.append((round(result.value, 2), result.breach))
    # At 0.5 and 0.67 (back at the threshold, not yet at recovery) the breach stays open.
    assert values[:5] == [
        (0.33, opened.breach),
        (0.5, opened.breach),
        (0.6, opened.breach),
        (0.67, opened.breach),
        (0.71, opened.breach),
    ]
    assert values[5] == (0.75, "")
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1, BREACH_OPENED: 1, BREACH_RESOLVED: 1}
    resolved = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=opened.breach), metadata=tokens.supervisor(REGION)
    )
    assert resolved.state == selfmonitoring_pb2.BREACH_STATE_RESOLVED
    assert resolved.value == pytest.approx(0.75)
    assert resolved.recovery_threshold == pytest.approx(0.75)
    assert resolved.HasField("resolve_time")

    for index in range(6):
        again = await record(stub, tokens, observation(f"late-again{index}", provider, day, 30))
    assert again.breach and again.breach != opened.breach
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 2


async def test_a_late_observation_lands_in_the_window_of_the_day_it_happened(stub, tokens, sm_db, clock):
    await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5, window_days=30))
    provider = business_ids()()
    day = clock.day

    # Arriving today, out of order: one from 40 days ago (outside the window), one from 10.
    outside = await record(stub, tokens, observation("old", provider, day - timedelta(days=40), 30))
    inside = await record(stub, tokens, observation("recent", provider, day - timedelta(days=10), 30))
    earlier = await record(stub, tokens, observation("earlier", provider, day - timedelta(days=20), 30))

    assert (outside.sample_size, inside.sample_size, earlier.sample_size) == (0, 1, 2)
    assert earlier.breach
    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=earlier.breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.window_start, breach.window_end) == (
        proto_date(day - timedelta(days=29)),
        proto_date(day),
    )


def measured(
    kind: selfmonitoring_pb2.MetricKind.ValueType, threshold: float, recovery: float = 0.0
) -> selfmonitoring_pb2.Indicator:
    return selfmonitoring_pb2.Indicator(
        display_name="Measured",
        service="recruitment",
        measure=selfmonitoring_pb2.Measure(
            kind=kind, breach_threshold=threshold, recovery_threshold=recovery
        ),
        window_days=90,
        minimum_sample=4,
        severity=selfmonitoring_pb2.SEVERITY_WARNING,
    )


def valued(observation_id: str, provider: str, day: date, value: float) -> selfmonitoring_pb2.Observation:
    return selfmonitoring_pb2.Observation(
        observation_id=observation_id,
        provider=provider,
        case_key=f"customer-{observation_id}",
        completed_on=proto_date(day),
        value=value,
    )


@pytest.mark.parametrize(
    ("kind", "threshold", "values", "expected"),
    [
        pytest.param(
            selfmonitoring_pb2.METRIC_KIND_RATE, 0.5, [1, 0, 0, 0], 0.25, id="rate-outcome-in-3-months"
        ),
        pytest.param(selfmonitoring_pb2.METRIC_KIND_MEAN, 3.5, [4, 3, 3, 2], 3.0, id="mean-satisfaction"),
        pytest.param(
            selfmonitoring_pb2.METRIC_KIND_COUNT_PER_100_CUSTOMERS,
            20.0,
            [0, 1, 0, 2],
            75.0,
            id="complaints-per-100",
        ),
    ],
)
async def test_each_metric_kind_breaches_past_its_threshold_once_the_sample_is_reached(  # noqa: PLR0917
    stub, tokens, sm_db, clock, kind, threshold, values, expected
):
    created = await create(stub, tokens, measured(kind, threshold))
    assert created.kind == kind
    provider = business_ids()()
    results = [
        await record(stub, tokens, valued(f"o{i}", provider, clock.day, value))
        for i, value in enumerate(values)
    ]

    assert [r.breach for r in results[:3]] == ["", "", ""]
    assert results[3].value == pytest.approx(expected)
    assert results[3].breach
    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=results[3].breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.value, breach.threshold) == (pytest.approx(expected), pytest.approx(threshold))


async def test_a_value_that_does_not_fit_the_metric_is_refused(stub, tokens, sm_db, clock):
    await create(stub, tokens, measured(selfmonitoring_pb2.METRIC_KIND_RATE, 0.5))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, valued("o1", business_ids()(), clock.day, 0.5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["observation.value"]
    assert await count_rows(sm_db, "selfmonitoring_observations") == 0


# -- client-streaming ingestion --------------------------------------------------------------


async def test_a_client_stream_reports_each_bad_record_and_takes_the_rest(stub, tokens, sm_db, clock):
    await create(stub, tokens, indicator(minimum_sample=3, minimum_share=0.8))
    next_id = business_ids()
    provider, other = next_id(), next_id()
    day = clock.day
    requests = [
        selfmonitoring_pb2.RecordObservationsRequest(parent=INDICATOR, observation=item)
        for item in (
            observation("s0", provider, day, 30),
            observation("s1", provider, day + timedelta(days=1), 30),  # in the future
            observation("s2", provider, day, 30),
            observation("s0", provider, day, 30),  # a repeat: a duplicate, not an error
            observation("s0", provider, day, 1),  # the same id, other content
            observation("s3", "0737546-3", day, 30),  # a bad business ID
        )
    ]
    requests.append(
        selfmonitoring_pb2.RecordObservationsRequest(
            parent=f"regions/{REGION}/indicators/missing", observation=observation("s4", other, day, 30)
        )
    )
    requests.append(
        selfmonitoring_pb2.RecordObservationsRequest(
            parent="bad", observation=observation("s5", other, day, 1)
        )
    )
    requests.append(
        selfmonitoring_pb2.RecordObservationsRequest(
            parent=INDICATOR, observation=observation("s6", provider, day, 30)
        )
    )

    response = await stub.RecordObservations(iter(requests), metadata=tokens.admin(REGION))

    assert (response.recorded, response.duplicates) == (3, 1)
    assert [(r.index, r.code, list(r.fields)) for r in response.rejected] == [
        (1, "INVALID_ARGUMENT", ["observation.completed_on"]),
        (4, "ALREADY_EXISTS", ["observation.started_on"]),
        (5, "INVALID_ARGUMENT", ["observation.provider"]),
        (6, "NOT_FOUND", []),
        (7, "INVALID_ARGUMENT", ["parent"]),
    ]
    assert len(response.opened_breaches) == 1
    assert await count_rows(sm_db, "selfmonitoring_observations") == 3
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1, BREACH_OPENED: 1}


async def test_a_stream_message_may_carry_many_observations_each_reported_by_its_place(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens, indicator(minimum_sample=50))
    provider = business_ids()()
    many = [observation(f"m{i}", provider, clock.day, 1) for i in range(5)]
    many[3] = observation("m3", provider, clock.day + timedelta(days=2), 1)  # in the future
    requests = [
        selfmonitoring_pb2.RecordObservationsRequest(
            parent=INDICATOR, observation=observation("a", provider, clock.day, 1)
        ),
        selfmonitoring_pb2.RecordObservationsRequest(parent=INDICATOR, observations=many),
        selfmonitoring_pb2.RecordObservationsRequest(
            parent=INDICATOR, observation=observation("z", provider, clock.day, 1)
        ),
    ]

    response = await stub.RecordObservations(iter(requests), metadata=tokens.admin(REGION))

    assert response.recorded == 6
    assert [(r.index, r.observation_id) for r in response.rejected] == [(4, "m3")]


async def test_a_batch_of_many_providers_finds_its_repeats_windows_and_open_breaches_in_one_go(
    stub, tokens, sm_db, clock
):
    # More ids, scope keys and open keys than SQLite takes bound parameters in one IN list.
    await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.5))
    next_id = business_ids()
    providers = [next_id() for _ in range(600)]
    late = [observation(f"late-{p}", p, clock.day, 30) for p in providers]
    on_time = [observation(f"on-time-{p}", p, clock.day, 1) for p in providers]

    first = await stub.RecordObservations(
        iter([selfmonitoring_pb2.RecordObservationsRequest(parent=INDICATOR, observations=late)]),
        metadata=tokens.admin(REGION),
    )
    again = await stub.RecordObservations(
        iter([selfmonitoring_pb2.RecordObservationsRequest(parent=INDICATOR, observations=late + on_time)]),
        metadata=tokens.admin(REGION),
    )

    assert (first.recorded, len(first.opened_breaches)) == (600, 600)
    assert (again.recorded, again.duplicates, again.rejected) == (600, 600, [])
    assert sorted(again.resolved_breaches) == sorted(first.opened_breaches)
    assert await count_rows(sm_db, "selfmonitoring_breaches", "open_key IS NULL") == 600


async def test_breaches_list_by_state_severity_and_provider_and_indicators_list_by_id(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.5))
    await create(stub, tokens, indicator(), indicator_id="another")
    next_id = business_ids()
    resolved, still_open = next_id(), next_id()
    await record(stub, tokens, observation("r0", resolved, clock.day, 30))
    await record(stub, tokens, observation("r1", resolved, clock.day, 1))
    kept = await record(stub, tokens, observation("o0", still_open, clock.day, 30))
    supervisor = tokens.supervisor(REGION)

    async def listing(**filters: Any) -> selfmonitoring_pb2.ListBreachesResponse:
        response: selfmonitoring_pb2.ListBreachesResponse = await stub.ListBreaches(
            selfmonitoring_pb2.ListBreachesRequest(parent=f"regions/{REGION}", **filters), metadata=supervisor
        )
        return response

    assert [b.name for b in (await listing(state=selfmonitoring_pb2.BREACH_STATE_OPEN)).breaches] == [
        kept.breach
    ]
    assert [b.provider for b in (await listing(state=selfmonitoring_pb2.BREACH_STATE_RESOLVED)).breaches] == [
        resolved
    ]
    assert [b.provider for b in (await listing(provider=still_open)).breaches] == [still_open]
    assert (await listing(severity=selfmonitoring_pb2.SEVERITY_WARNING)).breaches == []
    assert len((await listing(severity=selfmonitoring_pb2.SEVERITY_SERIOUS)).breaches) == 2

    first = await stub.ListIndicators(
        selfmonitoring_pb2.ListIndicatorsRequest(parent=f"regions/{REGION}", page_size=1)
    )
    rest = await stub.ListIndicators(
        selfmonitoring_pb2.ListIndicatorsRequest(
            parent=f"regions/{REGION}", page_size=1, page_token=first.next_page_token
        )
    )
    assert [i.name for i in [*first.indicators, *rest.indicators]] == [
        f"regions/{REGION}/indicators/another",
        INDICATOR,
    ]
    assert rest.next_page_token == ""


# -- programmes ------------------------------------------------------------------------------

PROGRAMME_CREATED = "kasvu.selfmonitoring.v1.ProgrammeCreated"
PROGRAMME_PUBLISHED = "kasvu.selfmonitoring.v1.ProgrammePublished"


async def draft(stub, tokens, *, catalogue: str = "recruitment", indicators=(), request_id: str = ""):  # type: ignore[no-untyped-def]
    return await stub.CreateProgramme(
        selfmonitoring_pb2.CreateProgrammeRequest(
            parent=f"regions/{REGION}",
            programme=selfmonitoring_pb2.Programme(
                display_name="Omavalvontaohjelma", indicators=list(indicators)
            ),
            default_catalogue_service=catalogue,
            request_id=request_id,
        ),
        metadata=tokens.admin(REGION),
    )


async def test_a_programme_with_the_default_catalogue_is_published_and_then_readable_by_anyone(
    stub, tokens, sm_db, clock
):
    drafted = await draft(stub, tokens)
    name = f"regions/{REGION}/programmes/1"

    assert (drafted.name, drafted.version, drafted.state) == (
        name,
        1,
        selfmonitoring_pb2.PROGRAMME_STATE_DRAFT,
    )
    assert [item.indicator.rsplit("/", 1)[1] for item in drafted.indicators] == [
        "need-assessment-14d",
        "reassessment-3m",
        "customer-satisfaction",
        "complaints-per-100",
        "outcome-3m",
        "language-fi-sv",
        "equal-treatment",
    ]
    assert all(item.risk for item in drafted.indicators)
    assert [(p.severity, p.action) for p in drafted.policies] == [
        (selfmonitoring_pb2.SEVERITY_WARNING, selfmonitoring_pb2.POLICY_ACTION_CORRECTIVE_ACTION),
        (selfmonitoring_pb2.SEVERITY_SERIOUS, selfmonitoring_pb2.POLICY_ACTION_SUSPENSION_REQUEST),
    ]
    complaints = await stub.GetIndicator(
        selfmonitoring_pb2.GetIndicatorRequest(name=f"regions/{REGION}/indicators/complaints-per-100")
    )
    assert complaints.measure.kind == selfmonitoring_pb2.METRIC_KIND_COUNT_PER_100_CUSTOMERS
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetProgramme(selfmonitoring_pb2.GetProgrammeRequest(name=name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # a draft is not public

    published = await stub.PublishProgramme(
        selfmonitoring_pb2.PublishProgrammeRequest(name=name), metadata=tokens.admin(REGION)
    )
    again = await stub.PublishProgramme(
        selfmonitoring_pb2.PublishProgrammeRequest(name=name), metadata=tokens.admin(REGION)
    )
    public = await stub.GetProgramme(selfmonitoring_pb2.GetProgrammeRequest(name=name))

    assert published.state == selfmonitoring_pb2.PROGRAMME_STATE_PUBLISHED
    assert published.publication_date == proto_date(clock.day)
    assert again == published == public
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 7, PROGRAMME_CREATED: 1, PROGRAMME_PUBLISHED: 1}


async def test_a_region_indicator_under_a_default_id_is_kept_and_listed_once(stub, tokens, sm_db):
    own = await create(stub, tokens, indicator(minimum_share=0.7))
    drafted = await draft(
        stub,
        tokens,
        indicators=[selfmonitoring_pb2.WatchedIndicator(indicator=own.name, risk="Our own risk")],
    )

    assert [item.indicator for item in drafted.indicators].count(own.name) == 1
    assert drafted.indicators[-1].risk == "Our own risk"
    kept = await stub.GetIndicator(selfmonitoring_pb2.GetIndicatorRequest(name=own.name))
    assert kept.share_within_deadline.minimum_share == pytest.approx(0.7)


async def test_a_programme_may_name_a_default_indicator_its_own_catalogue_defines(stub, tokens, sm_db):
    named = f"regions/{REGION}/indicators/need-assessment-14d"
    drafted = await draft(
        stub, tokens, indicators=[selfmonitoring_pb2.WatchedIndicator(indicator=named, risk="Our own risk")]
    )

    assert [item.indicator for item in drafted.indicators].count(named) == 1
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 7


async def test_a_programme_naming_an_undefined_indicator_or_a_bad_policy_is_refused_with_its_fields(
    stub, tokens, sm_db
):
    missing = selfmonitoring_pb2.WatchedIndicator(indicator=f"regions/{REGION}/indicators/nothing", risk="r")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await draft(stub, tokens, catalogue="", indicators=[missing])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert field_violations(caught.value) == ["programme.indicators[0].indicator"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateProgramme(
            selfmonitoring_pb2.CreateProgrammeRequest(
                parent=f"regions/{REGION}",
                programme=selfmonitoring_pb2.Programme(
                    display_name=" ",
                    policies=[
                        selfmonitoring_pb2.SeverityPolicy(
                            severity=selfmonitoring_pb2.SEVERITY_WARNING,
                            action=selfmonitoring_pb2.POLICY_ACTION_CORRECTIVE_ACTION,
                        )
                    ],
                ),
            ),
            metadata=tokens.admin(REGION),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [
        "programme.display_name",
        "programme.indicators",
        "programme.policies[0].corrective_action_days",
    ]
    assert await count_rows(sm_db, "selfmonitoring_programmes") == 0


async def test_versions_number_up_and_the_public_list_shows_only_published_ones(stub, tokens, sm_db):
    first = await draft(stub, tokens)
    second = await draft(stub, tokens, request_id="second")
    retried = await draft(stub, tokens, request_id="second")
    assert (first.version, second.version, retried.version) == (1, 2, 2)
    await stub.PublishProgramme(
        selfmonitoring_pb2.PublishProgrammeRequest(name=first.name), metadata=tokens.admin(REGION)
    )

    public = await stub.ListProgrammes(selfmonitoring_pb2.ListProgrammesRequest(parent=f"regions/{REGION}"))
    supervised = await stub.ListProgrammes(
        selfmonitoring_pb2.ListProgrammesRequest(parent=f"regions/{REGION}", page_size=1),
        metadata=tokens.supervisor(REGION),
    )

    assert [p.name for p in public.programmes] == [first.name]
    assert [p.name for p in supervised.programmes] == [second.name]
    assert supervised.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishProgramme(
            selfmonitoring_pb2.PublishProgrammeRequest(name=first.name), metadata=tokens.supervisor(REGION)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- alerts: listed, acknowledged, linked to their evidence ------------------------------------


async def test_a_supervisor_lists_and_acknowledges_alerts_each_linking_to_its_breach_and_evidence(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5))
    provider = business_ids()()
    for index in range(2):
        opened = await record(stub, tokens, observation(f"late{index}", provider, clock.day, 30))
    for index in range(2):
        await record(stub, tokens, observation(f"ok{index}", provider, clock.day, 1))
    supervisor = tokens.supervisor(REGION)

    listed = await stub.ListAlerts(
        selfmonitoring_pb2.ListAlertsRequest(parent=f"regions/{REGION}"), metadata=supervisor
    )
    assert [(a.kind, a.breach.name) for a in listed.alerts] == [
        (selfmonitoring_pb2.ALERT_KIND_RESOLVED, opened.breach),
        (selfmonitoring_pb2.ALERT_KIND_OPENED, opened.breach),
    ]
    first = listed.alerts[1]
    assert first.evidence == f"{opened.breach}/observations"
    assert not first.HasField("acknowledge_time")

    acknowledged = await stub.AcknowledgeAlert(
        selfmonitoring_pb2.AcknowledgeAlertRequest(name=first.name), metadata=supervisor
    )
    again = await stub.AcknowledgeAlert(
        selfmonitoring_pb2.AcknowledgeAlertRequest(name=first.name), metadata=supervisor
    )
    assert acknowledged.HasField("acknowledge_time")
    assert acknowledged.acknowledged_by
    assert again == acknowledged
    assert (await outbox_counts(sm_db))["kasvu.selfmonitoring.v1.AlertAcknowledged"] == 1

    evidence = await stub.ListBreachObservations(
        selfmonitoring_pb2.ListBreachObservationsRequest(parent=opened.breach, page_size=3),
        metadata=supervisor,
    )
    rest = await stub.ListBreachObservations(
        selfmonitoring_pb2.ListBreachObservationsRequest(
            parent=opened.breach, page_size=3, page_token=evidence.next_page_token
        ),
        metadata=supervisor,
    )
    ids = [o.observation_id for o in [*evidence.observations, *rest.observations]]
    assert sorted(ids) == ["late0", "late1", "ok0", "ok1"]
    assert all(o.source == REGION_CASE_DATA for o in evidence.observations)

    for metadata in (tokens.supervisor(OTHER_REGION), tokens.provider(provider)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AcknowledgeAlert(
                selfmonitoring_pb2.AcknowledgeAlertRequest(name=first.name), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AcknowledgeAlert(
            selfmonitoring_pb2.AcknowledgeAlertRequest(name=f"regions/{REGION}/alerts/nothing-opened"),
            metadata=supervisor,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- the deadline sweep ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def with_scheduler(db: Database, tokens: Tokens, clock: RuntimeClock):  # type: ignore[no-untyped-def]
    """The service and its scheduler (the worker job that fires timers), on one clock."""
    async with dispatching(
        db,
        service="selfmonitoring",
        unit_of_work=store.unit_of_work_factory(),
        event_types=bootstrap.EVENT_TYPES,
        handlers=handlers.HANDLERS,
        clock=clock,
    ) as dispatcher:
        worker = Worker(dispatcher.write_path, service="selfmonitoring", jobs=[Scheduler(db, dispatcher)])
        servicer = SelfMonitoringServicer(dispatcher, AlertFeed(_no_bus))
        async with serving(
            tokens, selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server, servicer
        ) as channel:
            yield selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel), worker, dispatcher


def pending(observation_id: str, provider: str, started_on: date) -> selfmonitoring_pb2.Observation:
    """Job search started on started_on; no assessment yet."""
    return selfmonitoring_pb2.Observation(
        observation_id=observation_id,
        provider=provider,
        case_key=f"case-{observation_id}",
        started_on=proto_date(started_on),
    )


async def test_fourteen_days_without_an_assessment_opens_a_breach_with_no_new_observation(sm_db, tokens):
    clock = ManualClock(datetime(2025, 3, 14, 10, 0, tzinfo=UTC))
    async with with_scheduler(sm_db, tokens, clock) as (stub, worker, _):
        await create(stub, tokens, indicator(minimum_sample=2, minimum_share=0.5))
        provider = business_ids()()
        day = date(2025, 3, 14)
        waiting = [
            await record(stub, tokens, pending(f"p{i}", provider, day - timedelta(days=13))) for i in range(2)
        ]
        assert [(w.recorded, w.sample_size, w.breach) for w in waiting] == [(True, 0, ""), (True, 0, "")]
        # A third case is assessed in time: it completes its pending case and counts on time.
        await record(stub, tokens, pending("p2", provider, day - timedelta(days=13)))
        completed = await record(stub, tokens, observation("p2", provider, day, days_taken=13))
        assert (completed.recorded, completed.sample_size, completed.value) == (True, 1, 1.0)

        clock.advance(timedelta(days=1))  # the 14th day: still within the deadline
        await worker.run_once()
        assert await count_rows(sm_db, "selfmonitoring_breaches") == 0

        clock.advance(timedelta(days=1))  # the deadline has passed: nothing new arrived
        await worker.run_once()

        [breach] = (
            await stub.ListBreaches(
                selfmonitoring_pb2.ListBreachesRequest(parent=f"regions/{REGION}"),
                metadata=tokens.supervisor(REGION),
            )
        ).breaches
        assert (breach.provider, breach.sample_size) == (provider, 3)
        assert breach.value == pytest.approx(1 / 3)
        assert await count_rows(sm_db, "selfmonitoring_pending_cases", "counted_on IS NOT NULL") == 2

        # The late assessment arrives afterwards: stored, but not counted a second time.
        late = await record(stub, tokens, observation("p0", provider, day + timedelta(days=2), days_taken=15))
        assert (late.recorded, late.sample_size) == (True, 3)
        await worker.run_once()
        assert await count_rows(sm_db, "selfmonitoring_breaches") == 1


async def test_a_case_started_and_completed_in_one_stream_message_leaves_no_pending_case(
    stub, tokens, sm_db, clock
):
    await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.5))
    provider = business_ids()()
    started = clock.day - timedelta(days=3)
    both = [pending("p0", provider, started), observation("p0", provider, clock.day, days_taken=3)]

    response = await stub.RecordObservations(
        iter([selfmonitoring_pb2.RecordObservationsRequest(parent=INDICATOR, observations=both)]),
        metadata=tokens.admin(REGION),
    )

    assert (response.recorded, response.duplicates, response.rejected) == (2, 0, [])
    assert await count_rows(sm_db, "selfmonitoring_pending_cases") == 0
    assert await count_rows(sm_db, "selfmonitoring_observations") == 1


async def test_a_pending_case_is_only_for_a_share_within_a_deadline_and_needs_its_start(
    stub, tokens, sm_db, clock
):
    await create(
        stub, tokens, measured(selfmonitoring_pb2.METRIC_KIND_MEAN, 3.0), indicator_id="satisfaction"
    )
    await create(stub, tokens)
    provider = business_ids()()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(
            stub,
            tokens,
            pending("p0", provider, clock.day),
            parent=f"regions/{REGION}/indicators/satisfaction",
        )
    assert field_violations(caught.value) == ["observation.completed_on"]
    without_start = selfmonitoring_pb2.Observation(observation_id="p1", provider=provider, case_key="c")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, without_start)
    assert field_violations(caught.value) == ["observation.started_on"]
    assert await count_rows(sm_db, "selfmonitoring_pending_cases") == 0


# -- corrective actions and escalation ------------------------------------------------------

BREACH_ESCALATED = "kasvu.selfmonitoring.v1.BreachEscalated"


async def programme_in_force(stub, tokens) -> None:  # type: ignore[no-untyped-def]
    """A WARNING indicator under the default policies: corrective action within 30 days,
    escalation of a breach recurring within 90."""
    created = await create(
        stub,
        tokens,
        indicator(minimum_sample=1, minimum_share=0.5, severity=selfmonitoring_pb2.SEVERITY_WARNING),
    )
    await publish_watching(stub, tokens, created.name)


async def publish_watching(stub, tokens, indicator_name: str) -> None:  # type: ignore[no-untyped-def]
    """A programme watching one indicator, under the default policies, published."""
    drafted = await draft(
        stub,
        tokens,
        catalogue="",
        indicators=[selfmonitoring_pb2.WatchedIndicator(indicator=indicator_name, risk="Slow")],
    )
    await stub.PublishProgramme(
        selfmonitoring_pb2.PublishProgrammeRequest(name=drafted.name), metadata=tokens.admin(REGION)
    )


async def test_an_unanswered_corrective_action_is_escalated_to_a_suspension_request_when_its_deadline_passes(
    sm_db, tokens
):
    clock = ManualClock(datetime(2025, 3, 14, 10, 0, tzinfo=UTC))
    async with with_scheduler(sm_db, tokens, clock) as (stub, worker, _):
        await programme_in_force(stub, tokens)
        provider = business_ids()()
        opened = await record(stub, tokens, observation("late", provider, date(2025, 3, 14), 30))
        [action] = (
            await stub.ListCorrectiveActions(
                selfmonitoring_pb2.ListCorrectiveActionsRequest(parent=f"regions/{REGION}"),
                metadata=tokens.provider(provider),
            )
        ).corrective_actions
        assert (action.breach, action.state) == (
            opened.breach,
            selfmonitoring_pb2.CORRECTIVE_ACTION_STATE_REQUESTED,
        )
        assert action.due_date == proto_date(date(2025, 4, 13))

        clock.advance(timedelta(days=30))  # the last day to respond
        await worker.run_once()
        assert BREACH_ESCALATED not in await outbox_counts(sm_db)
        clock.advance(timedelta(days=1))
        await worker.run_once()

        breach = await stub.GetBreach(
            selfmonitoring_pb2.GetBreachRequest(name=opened.breach), metadata=tokens.supervisor(REGION)
        )
        assert breach.severity == selfmonitoring_pb2.SEVERITY_SERIOUS
        assert (await outbox_counts(sm_db))[BREACH_ESCALATED] == 1
        alerts = await stub.ListAlerts(
            selfmonitoring_pb2.ListAlertsRequest(parent=f"regions/{REGION}"),
            metadata=tokens.supervisor(REGION),
        )
        assert [a.kind for a in alerts.alerts] == [
            selfmonitoring_pb2.ALERT_KIND_ESCALATED,
            selfmonitoring_pb2.ALERT_KIND_OPENED,
        ]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RespondToCorrectiveAction(
                selfmonitoring_pb2.RespondToCorrectiveActionRequest(name=action.name, response="Too late"),
                metadata=tokens.provider(provider),
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_response_in_time_stops_the_escalation_and_only_the_provider_may_respond(sm_db, tokens):
    clock = ManualClock(datetime(2025, 3, 14, 10, 0, tzinfo=UTC))
    async with with_scheduler(sm_db, tokens, clock) as (stub, worker, _):
        await programme_in_force(stub, tokens)
        next_id = business_ids()
        provider, other = next_id(), next_id()
        await record(stub, tokens, observation("late", provider, date(2025, 3, 14), 30))
        name = (
            (
                await stub.ListCorrectiveActions(
                    selfmonitoring_pb2.ListCorrectiveActionsRequest(parent=f"regions/{REGION}"),
                    metadata=tokens.supervisor(REGION),
                )
            )
            .corrective_actions[0]
            .name
        )
        request = selfmonitoring_pb2.RespondToCorrectiveActionRequest(
            name=name, response="Two more counsellors"
        )
        for metadata in (tokens.provider(other), tokens.supervisor(REGION)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RespondToCorrectiveAction(request, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (
            await stub.ListCorrectiveActions(
                selfmonitoring_pb2.ListCorrectiveActionsRequest(parent=f"regions/{REGION}"),
                metadata=tokens.provider(other),
            )
        ).corrective_actions == []

        responded = await stub.RespondToCorrectiveAction(request, metadata=tokens.provider(provider))
        assert responded.state == selfmonitoring_pb2.CORRECTIVE_ACTION_STATE_RESPONDED
        clock.advance(timedelta(days=40))
        await worker.run_once()

        counts = await outbox_counts(sm_db)
        assert BREACH_ESCALATED not in counts
        assert counts["kasvu.selfmonitoring.v1.CorrectiveActionResponded"] == 1


async def test_a_breach_recurring_within_the_period_is_escalated_at_once(stub, tokens, sm_db, clock):
    await programme_in_force(stub, tokens)
    provider = business_ids()()
    first = await record(stub, tokens, observation("late0", provider, clock.day, 30))
    await record(stub, tokens, observation("ok0", provider, clock.day, 1))  # 0.5: resolved
    assert await count_rows(sm_db, "selfmonitoring_breaches", "state = 'RESOLVED'") == 1

    for index in range(1, 3):
        again = await record(stub, tokens, observation(f"late{index}", provider, clock.day, 30))

    assert again.breach and again.breach != first.breach
    recurred = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=again.breach), metadata=tokens.supervisor(REGION)
    )
    assert recurred.severity == selfmonitoring_pb2.SEVERITY_SERIOUS
    assert (await outbox_counts(sm_db))[BREACH_ESCALATED] == 1
    # The first breach got a corrective-action request; the recurrence went straight to escalation.
    assert await count_rows(sm_db, "selfmonitoring_corrective_actions") == 1


# -- the registry's events: equal availability, breaches before admission ---------------------


def admitted(
    business_id: str, municipalities: list[str], languages: list[str]
) -> registry_events.RegistrationAdmitted:
    return registry_events.RegistrationAdmitted(
        registration=f"regions/{REGION}/services/recruitment/registrations/{business_id}",
        region=REGION,
        service="recruitment",
        business_id=business_id,
        municipalities=municipalities,
        languages=languages,
    )


async def test_the_equal_availability_view_counts_admitted_and_active_providers_per_municipality_and_language(
    sm_db, tokens, clock
):
    async with with_scheduler(sm_db, tokens, clock) as (stub, _, dispatcher):
        next_id = business_ids()
        first, second = next_id(), next_id()
        for event in (
            admitted(first, ["tampere", "nokia"], ["fi"]),
            admitted(second, ["tampere"], ["fi", "sv"]),
        ):
            command = consumers.admission(event, f"kasvu.registry.v1.RegistrationAdmitted.{REGION}")
            assert command is not None
            await dispatcher.handle(command)
        suspended = registry_events.ProviderSuspended(
            region=REGION, service="recruitment", business_id=second
        )
        command = consumers.suspension(suspended, f"kasvu.registry.v1.ProviderSuspended.{REGION}")
        assert command is not None
        await dispatcher.handle(command)

        report = await stub.GetAvailabilityReport(
            selfmonitoring_pb2.GetAvailabilityReportRequest(name=f"regions/{REGION}/availabilityReport")
        )

    assert [(c.municipality, c.language, c.admitted_providers, c.active_providers) for c in report.cells] == [
        ("nokia", "fi", 1, 1),
        ("tampere", "fi", 2, 1),
        ("tampere", "sv", 1, 0),
    ]


async def test_a_serious_breach_opened_before_its_provider_registered_takes_effect_on_admission(
    sm_db, tokens, clock
):
    async with with_scheduler(sm_db, tokens, clock) as (stub, _, dispatcher):
        await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.9))
        provider = business_ids()()
        opened = await record(stub, tokens, observation("late", provider, clock.day, 30))
        assert opened.breach

        command = consumers.admission(admitted(provider, ["tampere"], ["fi"]), "")
        assert command is not None
        assert await dispatcher.handle(command) == 1

    assert (await outbox_counts(sm_db))[BREACH_ESCALATED] == 1


async def test_an_indicator_report_without_observations_is_empty(stub, tokens, sm_db):
    report = await stub.GetIndicatorReport(
        selfmonitoring_pb2.GetIndicatorReportRequest(name=f"regions/{REGION}/indicatorReport"),
        metadata=tokens.supervisor(REGION),
    )
    assert list(report.values) == []


async def test_the_indicator_report_gives_each_providers_value_over_the_window(stub, tokens, sm_db, clock):
    await create(stub, tokens, indicator(minimum_sample=5))
    next_id = business_ids()
    slow, quick = next_id(), next_id()
    await record(stub, tokens, observation("s0", slow, clock.day, 30))
    await record(stub, tokens, observation("s1", slow, clock.day, 1))
    await record(
        stub, tokens, observation("q0", quick, clock.day - timedelta(days=100), 30)
    )  # before the window
    await record(stub, tokens, observation("q1", quick, clock.day, 1))

    report = await stub.GetIndicatorReport(
        selfmonitoring_pb2.GetIndicatorReportRequest(name=f"regions/{REGION}/indicatorReport"),
        metadata=tokens.supervisor(REGION),
    )

    assert [(v.provider, v.service, round(v.value, 2), v.sample_size) for v in report.values] == sorted(
        [(slow, "recruitment", 0.5, 2), (quick, "recruitment", 1.0, 1)]
    )
    assert report.values[0].window_end == proto_date(clock.day)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetIndicatorReport(
            selfmonitoring_pb2.GetIndicatorReportRequest(name=f"regions/{REGION}/indicatorReport"),
            metadata=tokens.provider(slow),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- the alert stream (SQLite and a real nats-server) ---------------------------------------


async def _next_alert(reader: AlertReader) -> selfmonitoring_pb2.Alert:
    return await reader.next(10.0)


async def _wait_until_published(db: Database) -> None:
    for _ in range(250):
        if await count_rows(db, "outbox", "published_at IS NULL") == 0:
            return
        await asyncio.sleep(0.02)
    pytest.fail("the outbox relay never published")


async def _wait_until_subscribed(js) -> None:  # type: ignore[no-untyped-def]
    """The alert feed has subscribed once its ordered consumer exists on the stream."""
    for _ in range(250):
        if (await js.stream_info(STREAM.name)).state.consumer_count >= 1:
            return
        await asyncio.sleep(0.02)
    pytest.fail("the alert stream never subscribed")


async def test_a_supervisor_stream_receives_new_breaches_and_resumes_after_a_sequence(
    tmp_path, tokens, nats_server
):
    url = f"sqlite+aiosqlite:///{tmp_path / 'selfmonitoring.db'}"
    await upgrade_async(url, bootstrap.MIGRATIONS)
    db = Database(url)
    nc = await connect(nats_server.url, "selfmonitoring-test")
    js = nc.jetstream()
    await declare_stream(js, STREAM, replicas=1)
    write_path = write_path_for(db)
    worker = Worker(write_path, service="selfmonitoring", jobs=[OutboxRelay(db, write_path, js)], poll_s=0.2)
    stop = asyncio.Event()
    relay_task = asyncio.create_task(worker.run(stop))
    supervisor = tokens.supervisor(REGION)
    parent = f"regions/{REGION}"
    next_id = business_ids()
    try:
        async with self_monitoring(
            db, tokens, alerts=AlertFeed(lambda: js), after_commit=worker.wake
        ) as stub:
            await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.9))
            earlier = await record(stub, tokens, observation("o0", next_id(), finnish_today(), 30))
            await _wait_until_published(db)
            published_before = (await js.stream_info(STREAM.name)).state.last_seq

            live = AlertReader(
                stub.StreamAlerts(selfmonitoring_pb2.StreamAlertsRequest(parent=parent), metadata=supervisor)
            )
            await _wait_until_subscribed(js)
            opened = await record(stub, tokens, observation("o1", next_id(), finnish_today(), 30))
            alert = await _next_alert(live)
            live.cancel()

            # Only what opened after subscribing: the earlier breach is not part of the live feed.
            assert earlier.breach and earlier.breach != opened.breach
            assert alert.breach.name == opened.breach
            assert alert.sequence == published_before + 1

            replay = AlertReader(
                stub.StreamAlerts(
                    selfmonitoring_pb2.StreamAlertsRequest(parent=parent, resume_after=alert.sequence - 1),
                    metadata=supervisor,
                )
            )
            again = await _next_alert(replay)
            replay.cancel()
            assert (again.sequence, again.breach.name) == (alert.sequence, opened.breach)

            resumed = AlertReader(
                stub.StreamAlerts(
                    selfmonitoring_pb2.StreamAlertsRequest(parent=parent, resume_after=alert.sequence),
                    metadata=supervisor,
                )
            )
            await _wait_until_subscribed(js)
            later = await record(stub, tokens, observation("o2", next_id(), finnish_today(), 30))
            following = await _next_alert(resumed)
            resumed.cancel()
            # The alert already seen is not delivered again: the next one is the later breach.
            assert following.breach.name == later.breach
            assert following.sequence == alert.sequence + 1
    finally:
        stop.set()
        await relay_task
        await write_path.close()
        await nc.close()
        await db.dispose()


async def test_a_filtered_stream_sees_only_its_provider_and_severity_and_resolutions_too(
    tmp_path, tokens, nats_server
):
    url = f"sqlite+aiosqlite:///{tmp_path / 'selfmonitoring.db'}"
    await upgrade_async(url, bootstrap.MIGRATIONS)
    db = Database(url)
    nc = await connect(nats_server.url, "selfmonitoring-test")
    js = nc.jetstream()
    await declare_stream(js, STREAM, replicas=1)
    write_path = write_path_for(db)
    worker = Worker(write_path, service="selfmonitoring", jobs=[OutboxRelay(db, write_path, js)], poll_s=0.2)
    stop = asyncio.Event()
    relay_task = asyncio.create_task(worker.run(stop))
    next_id = business_ids()
    watched, other = next_id(), next_id()
    try:
        async with self_monitoring(
            db, tokens, alerts=AlertFeed(lambda: js), after_commit=worker.wake
        ) as stub:
            await create(stub, tokens, indicator(minimum_sample=1, minimum_share=0.5))
            live = AlertReader(
                stub.StreamAlerts(
                    selfmonitoring_pb2.StreamAlertsRequest(
                        parent=f"regions/{REGION}",
                        provider=watched,
                        severity=selfmonitoring_pb2.SEVERITY_SERIOUS,
                    ),
                    metadata=tokens.supervisor(REGION),
                )
            )
            await _wait_until_subscribed(js)
            await record(stub, tokens, observation("x0", other, finnish_today(), 30))
            opened = await record(stub, tokens, observation("w0", watched, finnish_today(), 30))
            for index in range(2):
                await record(stub, tokens, observation(f"w-ok{index}", watched, finnish_today(), 1))

            first, second = await _next_alert(live), await _next_alert(live)
            live.cancel()

            assert [(a.kind, a.breach.name) for a in (first, second)] == [
                (selfmonitoring_pb2.ALERT_KIND_OPENED, opened.breach),
                (selfmonitoring_pb2.ALERT_KIND_RESOLVED, opened.breach),
            ]
            assert second.breach.state == selfmonitoring_pb2.BREACH_STATE_RESOLVED
            assert second.breach.value == pytest.approx(0.5)  # back at the threshold: no hysteresis set
            assert first.breach.value == pytest.approx(0.0)
            assert second.sequence > first.sequence
            assert first.evidence == f"{opened.breach}/observations"
    finally:
        stop.set()
        await relay_task
        await write_path.close()
        await nc.close()
        await db.dispose()


# -- warning and breach thresholds -----------------------------------------------------------


def warned(threshold: float, warning: float, recovery: float) -> selfmonitoring_pb2.Indicator:
    """An outcome rate that warns below `warning` and breaches below `threshold` (serious)."""
    definition = measured(selfmonitoring_pb2.METRIC_KIND_RATE, threshold, recovery)
    definition.measure.warning_threshold = warning
    definition.severity = selfmonitoring_pb2.SEVERITY_SERIOUS
    return definition


async def test_a_value_past_the_warning_threshold_raises_a_warning_alert_and_no_suspension_request(
    stub, tokens, sm_db, clock
):
    created = await create(stub, tokens, warned(0.5, 0.75, 0.8))
    assert created.measure.HasField("warning_threshold")
    assert created.measure.warning_threshold == pytest.approx(0.75)
    provider = business_ids()()
    outcomes = [1, 1, 1, 0]  # 0.75: at the warning threshold, nothing yet
    results = [
        await record(stub, tokens, valued(f"o{i}", provider, clock.day, v)) for i, v in enumerate(outcomes)
    ]
    assert await count_rows(sm_db, "selfmonitoring_breaches") == 0
    results.append(await record(stub, tokens, valued("o4", provider, clock.day, 0)))  # 0.6
    assert results[-1].breach == ""  # a warning is not a breach
    assert await outbox_counts(sm_db) == {INDICATOR_CREATED: 1, WARNING_RAISED: 1}

    supervisor = tokens.supervisor(REGION)
    listed = await stub.ListAlerts(
        selfmonitoring_pb2.ListAlertsRequest(parent=f"regions/{REGION}"), metadata=supervisor
    )
    (alert,) = listed.alerts
    assert alert.kind == selfmonitoring_pb2.ALERT_KIND_WARNING_RAISED
    warning = alert.breach
    assert warning.warning
    assert warning.severity == selfmonitoring_pb2.SEVERITY_WARNING  # though the indicator is serious
    assert (warning.value, warning.threshold, warning.sample_size) == (pytest.approx(0.6), 0.75, 5)
    assert (warning.window_start, warning.window_end) == (
        proto_date(clock.day - timedelta(days=89)),
        proto_date(clock.day),
    )
    acknowledged = await stub.AcknowledgeAlert(
        selfmonitoring_pb2.AcknowledgeAlertRequest(name=alert.name), metadata=supervisor
    )
    assert acknowledged.HasField("acknowledge_time")

    # Past the breach threshold as well: a (serious) breach opens; the warning stays open.
    for index in range(2):
        breached = await record(stub, tokens, valued(f"bad{index}", provider, clock.day, 0))  # 3/7
    assert breached.breach
    counts = await outbox_counts(sm_db)
    assert (counts[WARNING_RAISED], counts[BREACH_OPENED]) == (1, 1)

    # Back to 0.8 (13 more outcomes: 16/20): the breach resolves and the warning clears.
    for index in range(13):
        last = await record(stub, tokens, valued(f"good{index}", provider, clock.day, 1))
    assert last.breach == ""
    counts = await outbox_counts(sm_db)
    assert (counts[BREACH_RESOLVED], counts[WARNING_CLEARED]) == (1, 1)
    cleared = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=warning.name), metadata=supervisor
    )
    assert cleared.state == selfmonitoring_pb2.BREACH_STATE_RESOLVED
    assert cleared.value == pytest.approx(0.8)


async def test_a_warning_asks_no_corrective_action_under_the_programme_in_force(stub, tokens, sm_db, clock):
    definition = indicator(minimum_sample=2, minimum_share=0.4, severity=selfmonitoring_pb2.SEVERITY_WARNING)
    definition.share_within_deadline.warning_share = 0.8
    created = await create(stub, tokens, definition)
    await publish_watching(stub, tokens, created.name)
    provider = business_ids()()
    await record(stub, tokens, observation("on-time", provider, clock.day, 1))
    await record(stub, tokens, observation("late", provider, clock.day, 30))  # 0.5: a warning only
    assert (await outbox_counts(sm_db)).get(WARNING_RAISED) == 1
    assert await count_rows(sm_db, "selfmonitoring_corrective_actions") == 0
    await record(stub, tokens, observation("later", provider, clock.day, 30))  # 0.33: a breach
    assert await count_rows(sm_db, "selfmonitoring_corrective_actions") == 1


@pytest.mark.parametrize(
    ("metric", "field"),
    [
        pytest.param(
            warned(0.75, 0.5, 0.8), "indicator.measure.warning_threshold", id="warning-below-a-rate-breach"
        ),
        pytest.param(
            warned(0.5, 0.75, 0.6), "indicator.measure.recovery_threshold", id="recovery-before-the-warning"
        ),
    ],
)
async def test_thresholds_out_of_order_are_refused_with_their_field_and_nothing_is_stored(
    stub, tokens, sm_db, metric, field
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, tokens, metric)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]
    assert await count_rows(sm_db, "selfmonitoring_indicators") == 0


# -- scopes ----------------------------------------------------------------------------------

REGION_BREACH_OPENED = "kasvu.selfmonitoring.v1.RegionBreachOpened"
REGION_BREACH_RESOLVED = "kasvu.selfmonitoring.v1.RegionBreachResolved"


def in_municipality(item: selfmonitoring_pb2.Observation, code: str) -> selfmonitoring_pb2.Observation:
    item.municipality = code
    return item


async def test_a_municipality_scoped_indicator_groups_every_providers_cases_and_alerts_only_the_region(
    stub, tokens, sm_db, clock
):
    definition = indicator(minimum_sample=4, minimum_share=0.75)  # SERIOUS
    definition.scope = selfmonitoring_pb2.SCOPE_MUNICIPALITY
    created = await create(stub, tokens, definition)
    assert created.scope == selfmonitoring_pb2.SCOPE_MUNICIPALITY
    await publish_watching(stub, tokens, created.name)
    new_provider = business_ids()
    providers = [new_provider() for _ in range(4)]
    # Tampere (837): two late of four, each case with another provider; Helsinki (091): all on time.
    for index, provider in enumerate(providers):
        late = 30 if index % 2 else 1
        tampere = await record(
            stub, tokens, in_municipality(observation(f"t{index}", provider, clock.day, late), "837")
        )
        await record(stub, tokens, in_municipality(observation(f"h{index}", provider, clock.day, 1), "091"))
    assert tampere.value == pytest.approx(0.5)
    assert tampere.breach

    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=tampere.breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.scope, breach.scope_key, breach.provider) == (
        selfmonitoring_pb2.SCOPE_MUNICIPALITY,
        "837",
        "",
    )
    assert breach.sample_size == 4
    counts = await outbox_counts(sm_db)
    assert counts.get(REGION_BREACH_OPENED) == 1
    assert BREACH_OPENED not in counts  # nothing the registry would read as a suspension request
    assert await count_rows(sm_db, "selfmonitoring_corrective_actions") == 0
    listed = await stub.ListAlerts(
        selfmonitoring_pb2.ListAlertsRequest(parent=f"regions/{REGION}"), metadata=tokens.supervisor(REGION)
    )
    assert [(a.kind, a.breach.scope_key) for a in listed.alerts] == [
        (selfmonitoring_pb2.ALERT_KIND_OPENED, "837")
    ]
    evidence = await stub.ListBreachObservations(
        selfmonitoring_pb2.ListBreachObservationsRequest(parent=tampere.breach),
        metadata=tokens.supervisor(REGION),
    )
    assert sorted(o.observation_id for o in evidence.observations) == ["t0", "t1", "t2", "t3"]
    assert {o.municipality for o in evidence.observations} == {"837"}

    for index in range(4):
        last = await record(
            stub, tokens, in_municipality(observation(f"t-ok{index}", providers[0], clock.day, 1), "837")
        )
    assert last.breach == ""
    assert (await outbox_counts(sm_db)).get(REGION_BREACH_RESOLVED) == 1


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        (selfmonitoring_pb2.SCOPE_MUNICIPALITY, "observation.municipality"),
        (selfmonitoring_pb2.SCOPE_SERVICE, "observation.service"),
        (selfmonitoring_pb2.SCOPE_PROVIDER, "observation.provider"),
    ],
)
async def test_an_observation_missing_its_scope_key_is_refused_with_the_field_and_nothing_stored(  # noqa: PLR0917
    stub, tokens, sm_db, clock, scope, field
):
    definition = indicator()
    definition.scope = scope
    await create(stub, tokens, definition)
    item = observation("o1", "", clock.day, 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, item)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]
    assert await count_rows(sm_db, "selfmonitoring_observations") == 0


async def test_region_and_service_scoped_indicators_take_observations_without_a_provider(
    stub, tokens, sm_db, clock
):
    whole = measured(selfmonitoring_pb2.METRIC_KIND_MEAN, 3.5)
    whole.scope = selfmonitoring_pb2.SCOPE_REGION
    await create(stub, tokens, whole, indicator_id="satisfaction")
    per_service = measured(selfmonitoring_pb2.METRIC_KIND_MEAN, 3.5)
    per_service.scope = selfmonitoring_pb2.SCOPE_SERVICE
    await create(stub, tokens, per_service, indicator_id="satisfaction-per-service")
    region_parent = f"regions/{REGION}/indicators/satisfaction"
    service_parent = f"regions/{REGION}/indicators/satisfaction-per-service"
    for index, score in enumerate([3, 3, 3, 3]):
        feedback = valued(f"f{index}", "", clock.day, score)
        regional = await record(stub, tokens, feedback, parent=region_parent)
        feedback.service = "training" if index % 2 else "recruitment"
        per = await record(stub, tokens, feedback, parent=service_parent)
    assert regional.breach  # the region's mean of 4 scores of 3
    assert per.breach == ""  # two scores per service: below the minimum sample
    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=regional.breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.scope, breach.scope_key, breach.provider) == (selfmonitoring_pb2.SCOPE_REGION, "", "")
    report = await stub.GetIndicatorReport(
        selfmonitoring_pb2.GetIndicatorReportRequest(name=f"regions/{REGION}/indicatorReport"),
        metadata=tokens.supervisor(REGION),
    )
    keys = sorted((v.indicator.rsplit("/", 1)[-1], v.scope_key, v.sample_size) for v in report.values)
    assert keys == [
        ("satisfaction", "", 4),
        ("satisfaction-per-service", "recruitment", 2),
        ("satisfaction-per-service", "training", 2),
    ]


# -- the registry's lifecycle through real NATS ----------------------------------------------


@contextlib.asynccontextmanager
async def signed_in_nats(server: NatsServer, user: str) -> AsyncIterator[Any]:
    client = await nats.connect(server.url, allow_reconnect=False, **server.access(user).connect_options())
    try:
        yield client
    finally:
        await client.close()


async def _publish_registry_event(js, event, event_id: str) -> None:  # type: ignore[no-untyped-def]
    full_name = event.DESCRIPTOR.full_name
    await js.publish(
        f"{full_name}.{REGION}",
        event.SerializeToString(),
        headers={envelope.MSG_ID: event_id, envelope.EVENT_TYPE: full_name},
    )


async def test_the_availability_view_follows_the_registrys_whole_lifecycle_through_nats(
    sm_db, tokens, clock, secured_nats_server
):
    registry_entry = catalog.entry("registry")
    async with signed_in_nats(secured_nats_server, "registry") as registry:
        await declare_stream(
            registry.jetstream(), StreamSpec(registry_entry.stream, registry_entry.subjects), 1
        )
        js = registry.jetstream()
        next_id = business_ids()
        names = ["reinstated", "lapsed", "revoked", "withdrawn", "suspended", "late-withdrawn"]
        ids = {name: next_id() for name in names}
        t0 = datetime(2025, 3, 1, tzinfo=UTC)

        def at(days: int) -> Timestamp:
            stamp = Timestamp()
            stamp.FromDatetime(t0 + timedelta(days=days))
            return stamp

        def change(kind, name: str, time_field: str, days: int):  # type: ignore[no-untyped-def]
            return kind(region=REGION, service="recruitment", business_id=ids[name], **{time_field: at(days)})

        events = []
        for name in names[:-1]:
            admission = admitted(ids[name], ["837"], ["fi"])
            admission.admit_time.CopyFrom(at(0))
            events.append(admission)
        events += [
            change(registry_events.ProviderSuspended, "reinstated", "suspend_time", 1),
            change(registry_events.ProviderReinstated, "reinstated", "reinstate_time", 2),
            change(registry_events.RegistrationLapsed, "lapsed", "lapse_time", 1),
            change(registry_events.ProviderRevoked, "revoked", "revoke_time", 1),
            change(registry_events.RegistrationWithdrawn, "withdrawn", "withdraw_time", 1),
            change(registry_events.ProviderSuspended, "suspended", "suspend_time", 1),
            # Published before the admission it follows: a later change is not undone by it.
            change(registry_events.RegistrationWithdrawn, "late-withdrawn", "withdraw_time", 2),
        ]
        late_admission = admitted(ids["late-withdrawn"], ["837"], ["fi"])
        late_admission.admit_time.CopyFrom(at(1))
        events.append(late_admission)
        for index, event in enumerate(events):
            await _publish_registry_event(js, event, f"registry-event-{index}")

    settings = Settings(service="selfmonitoring")
    async with with_scheduler(sm_db, tokens, clock) as (stub, _, dispatcher):
        # Self-monitoring's own NATS user: the catalog grants it exactly these durables.
        async with signed_in_nats(secured_nats_server, "selfmonitoring") as client:
            followers = [
                bootstrap.following(followed, dispatcher, settings)(client.jetstream())
                for followed in consumers.REGISTRY_EVENTS
            ]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(follower.run(stop)) for follower in followers]
            try:
                async with signed_in_nats(secured_nats_server, ADMIN_USER) as admin:
                    await _all_consumed(admin.jetstream(), registry_entry.stream, len(events))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        report = await stub.GetAvailabilityReport(
            selfmonitoring_pb2.GetAvailabilityReportRequest(name=f"regions/{REGION}/availabilityReport")
        )

    # Admitted: the reinstated one (active again) and the suspended one (not active); the
    # lapsed, revoked and withdrawn ones count nowhere.
    assert [(c.municipality, c.language, c.admitted_providers, c.active_providers) for c in report.cells] == [
        ("837", "fi", 2, 1)
    ]


async def _all_consumed(js, stream: str, published: int) -> None:  # type: ignore[no-untyped-def]
    """Until the followers together have acknowledged every event published."""
    for _ in range(300):
        if await _acked_counts(js, stream) == published:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the registry's events were not all consumed")


async def _acked_counts(js, stream: str) -> int:  # type: ignore[no-untyped-def]
    total = 0
    for followed in consumers.REGISTRY_EVENTS:
        try:
            info = await js.consumer_info(stream, followed.durable)
        except Exception:
            return -1
        if info.num_ack_pending or info.num_pending:
            return -1
        total += int(info.ack_floor.consumer_seq or 0) if info.ack_floor is not None else 0
    return total


# -- equal treatment -------------------------------------------------------------------------


def grouped(
    observation_id: str, provider: str, day: date, value: float, group: str
) -> selfmonitoring_pb2.Observation:
    item = valued(observation_id, provider, day, value)
    item.group = group
    return item


async def test_equal_treatment_breaches_when_a_sampled_groups_rate_falls_below_a_share_of_the_overall_rate(
    stub, tokens, sm_db, clock
):
    definition = measured(
        selfmonitoring_pb2.METRIC_KIND_EQUAL_TREATMENT, 0.8, 0.9
    )  # minimum sample 4 per group
    await create(stub, tokens, definition, indicator_id="equal-treatment")
    parent = f"regions/{REGION}/indicators/equal-treatment"
    provider = business_ids()()

    async def outcome(
        observation_id: str, value: float, group: str
    ) -> selfmonitoring_pb2.RecordObservationResponse:
        return await record(
            stub, tokens, grouped(observation_id, provider, clock.day, value, group), parent=parent
        )

    for index in range(4):
        await outcome(f"a{index}", 1, "lang-fi")
    for index in range(2):  # a group too small to say anything: counts in the overall rate only
        await outcome(f"c{index}", 0, "age-18-24")
    results = [await outcome(f"b{index}", value, "age-55-plus") for index, value in enumerate([1, 0, 0, 0])]
    assert [r.breach for r in results[:3]] == ["", "", ""]
    # age-55-plus: 1 of 4 (0.25) against 5 of 10 overall (0.5): a share of 0.5 < 0.8.
    assert results[3].value == pytest.approx(0.5)
    assert results[3].breach
    breach = await stub.GetBreach(
        selfmonitoring_pb2.GetBreachRequest(name=results[3].breach), metadata=tokens.supervisor(REGION)
    )
    assert (breach.group, breach.value, breach.threshold, breach.sample_size) == (
        "age-55-plus",
        pytest.approx(0.5),
        pytest.approx(0.8),
        4,
    )

    # Hysteresis: past 0.8 (0.86) the breach stays open; at 0.93 (>= 0.9) it resolves.
    shares = [await outcome(f"b-more{index}", 1, "age-55-plus") for index in range(3)]
    assert [(round(r.value, 2), bool(r.breach)) for r in shares] == [
        (0.73, True),
        (0.86, True),
        (0.93, False),
    ]
    assert (await outbox_counts(sm_db)).get(BREACH_RESOLVED) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stub, tokens, valued("no-group", provider, clock.day, 1), parent=parent)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["observation.group"]

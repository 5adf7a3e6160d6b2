"""The gRPC edge every service shares: malformed messages, bad tokens and NUL characters are the
client's mistake and get a clear status, never INTERNAL; an unexpected failure is INTERNAL without
its text; and a status with thousands of violations still reaches the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from services.registry import bootstrap, handlers, store
from services.registry.grpc_api import RegistryServicer
from services.runtime.db import Database
from services.runtime.migrate import upgrade_async
from tests.integration.helpers import Tokens, dispatching, field_violations, serving

LIST_PROVIDERS = "/kasvu.registry.v1.RegistryService/ListProviders"


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    await upgrade_async(url, bootstrap.MIGRATIONS)
    db = Database(url)
    tokens = Tokens.generate(tmp_path / "keys")
    async with (
        dispatching(
            db,
            service="registry",
            unit_of_work=store.unit_of_work_factory(),
            event_types=bootstrap.EVENT_TYPES,
            handlers=handlers.HANDLERS,
        ) as dispatcher,
        serving(
            tokens, registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryServicer(dispatcher)
        ) as channel,
    ):
        yield channel
    await db.dispose()


async def test_a_request_that_is_not_protobuf_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(LIST_PROVIDERS, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\xff\xff\xff\xff not a message", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (refused.value.details() or "")


async def test_a_forged_token_is_unauthenticated(channel: grpc.aio.Channel) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListProviders(
            registry_pb2.ListProvidersRequest(parent="regions/pirkanmaa/services/recruitment"),
            metadata=(("authorization", "Bearer not.a.jwt"),),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


class BrokenAlerts(selfmonitoring_pb2_grpc.SelfMonitoringServiceServicer):
    """A stream that fails part-way with an unexpected error, as a bug or a lost connection would."""

    async def StreamAlerts(self, request, context):
        yield selfmonitoring_pb2.StreamAlertsResponse(alerts=[selfmonitoring_pb2.Alert(sequence=1)])
        raise RuntimeError("connection to 10.0.0.7 lost; password hunter2")


async def test_a_stream_that_fails_unexpectedly_is_internal_without_the_exception_text(
    tmp_path: Path,
) -> None:
    tokens = Tokens.generate(tmp_path / "keys")
    servicer = BrokenAlerts()  # type: ignore[abstract]
    async with serving(
        tokens, selfmonitoring_pb2_grpc.add_SelfMonitoringServiceServicer_to_server, servicer
    ) as ch:
        stub = selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(ch)
        call = stub.StreamAlerts(
            selfmonitoring_pb2.StreamAlertsRequest(parent="regions/pirkanmaa"), timeout=5
        )
        received: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for response in call:
                received.extend(alert.sequence for alert in response.alerts)
    assert received == [1]
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error"


async def test_a_nul_character_in_any_text_field_is_refused_naming_it(channel: grpc.aio.Channel) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListProviders(
            registry_pb2.ListProvidersRequest(
                parent="regions/pirkanmaa/services/recruitment", page_token="a\0b"
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["page_token"]


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        (registry_pb2.Terms(title="a\0b"), "terms.title"),
        (
            registry_pb2.Terms(
                requirements=[registry_pb2.Requirement(code="ok"), registry_pb2.Requirement(code="x\0")]
            ),
            "terms.requirements[1].code",
        ),
        (
            registry_pb2.Terms(requirements=[registry_pb2.Requirement(values=["ok", "\0"])]),
            "terms.requirements[0].values[1]",
        ),
    ],
)
async def test_a_nul_character_deep_in_repeated_and_nested_fields_is_found(
    channel: grpc.aio.Channel, terms: registry_pb2.Terms, field: str
) -> None:
    # Every request gets a quick check for NUL before the one that names the fields: both
    # must see repeated messages, nested messages and repeated text.
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(parent="regions/pirkanmaa/services/recruitment", terms=terms),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == [field]


async def test_thousands_of_violations_still_reach_the_caller_as_invalid_argument(
    channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    # Each blank requirement is two violations: the status listing them all would exceed what
    # a gRPC client accepts in trailers (it would see RESOURCE_EXHAUSTED about metadata).
    tokens = Tokens.generate(tmp_path / "keys")  # the channel's pair: an existing pair is kept
    blank = registry_pb2.Requirement(
        code=" ", description=" ", kind=registry_pb2.REQUIREMENT_KIND_DECLARATION
    )
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PublishTerms(
            registry_pb2.PublishTermsRequest(
                parent="regions/pirkanmaa/services/recruitment",
                terms=registry_pb2.Terms(title="x" * 100_000, requirements=[blank] * 2000),
            ),
            metadata=tokens.admin("pirkanmaa"),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = field_violations(refused.value)
    assert listed[0] == "terms.title" and 10 < len(listed) < 4001
    assert "more violations not listed" in (refused.value.details() or "")

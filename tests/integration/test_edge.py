"""The gRPC edge every service shares: malformed messages and bad tokens are the client's
mistake and get a clear status, never INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc

from services.registry import bootstrap, handlers, store
from services.registry.grpc_api import RegistryServicer
from services.runtime.db import Database
from services.runtime.migrate import upgrade_async
from tests.integration.helpers import Tokens, dispatching, serving

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

"""The suite as real processes: nats-server, the four services, SQLite files or PostgreSQL.

Each suite has a nats-server of its own; they share the session's NATS users (`nats_users`),
whose passwords take a moment to hash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kasvuctl.localsuite import LocalSuite
from kasvuctl.natsauth import NatsAuth
from services.runtime.catalog import CATALOG
from tests.conftest import new_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def suite(
    request: pytest.FixtureRequest, tmp_path: Path, nats_users: NatsAuth
) -> AsyncIterator[LocalSuite]:
    urls: dict[str, str] = {}
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        urls = {service.name: new_postgres_database(server, service.name) for service in CATALOG}
    running = LocalSuite(tmp_path / "suite", database_urls=urls, auth=nats_users)
    try:
        await running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
async def sqlite_suite(tmp_path: Path, nats_users: NatsAuth) -> AsyncIterator[LocalSuite]:
    # Unacknowledged events come back after 2 s instead of 30, so crash tests see the redelivery.
    running = LocalSuite(tmp_path / "suite", extra_env={"KASVU_CONSUMER_ACK_WAIT_S": "2"}, auth=nats_users)
    try:
        await running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def module_suite(tmp_path_factory: pytest.TempPathFactory, nats_users: NatsAuth) -> Iterator[LocalSuite]:
    """One suite (SQLite) shared by a module's tests, which keep apart by region."""
    running = LocalSuite(tmp_path_factory.mktemp("suite") / "suite", auth=nats_users)
    try:
        asyncio.run(running.start())
        yield running
    finally:
        running.stop()

"""A crash at the worst moments loses nothing and doubles nothing: the registry killed
before it consumes a breach, or right after committing the suspension but before
acknowledging the event; self-monitoring killed after publishing but before marking."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.api import ConsumerInfo

from kasvuctl.localsuite import LocalSuite
from tests.e2e.flows import Api

pytestmark = pytest.mark.e2e

PROVIDER = "0737546-2"
SUSPENDED = "REGISTRATION_STATE_SUSPENDED"


async def subject_count(suite: LocalSuite, stream: str, subject: str) -> int:
    """How many messages the stream holds on a subject (JetStream's own count)."""
    connection = await suite.connect_nats()
    try:
        info = await connection.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await connection.close()


async def wait_for_count(
    suite: LocalSuite, stream: str, subject: str, expected: int, timeout_s: float = 20
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (count := await subject_count(suite, stream, subject)) < expected:
        assert asyncio.get_running_loop().time() < deadline, f"{subject}: {count} of {expected} messages"
        await asyncio.sleep(0.1)


async def wait_for_exit(suite: LocalSuite, name: str, timeout_s: float = 20) -> int:
    process = suite.processes[name]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process.poll() is None:
        assert asyncio.get_running_loop().time() < deadline, f"{name} did not crash"
        await asyncio.sleep(0.05)
    suite.processes.pop(name)
    return process.returncode


async def admitted_provider(api: Api) -> str:
    terms = await api.publish_terms("pirkanmaa")
    response = await api.register(
        "pirkanmaa", api.registration_body(terms, PROVIDER, Ed25519PrivateKey.generate()), PROVIDER
    )
    assert response.json()["state"] == "REGISTRATION_STATE_ADMITTED", response.text
    return str(response.json()["name"])


async def restart(suite: LocalSuite, name: str, overrides: dict[str, str] | None = None) -> None:
    suite.stop_process(name)
    suite.start_service(name, overrides)
    await suite.wait_ready(name)


def inbox_rows(suite: LocalSuite) -> list[tuple[str, str]]:
    with sqlite3.connect(suite.data_dir / "registry.db") as db:
        return list(db.execute("SELECT consumer, outcome FROM inbox"))


async def breach_consumer(suite: LocalSuite) -> ConsumerInfo:
    connection = await suite.connect_nats()
    try:
        return await connection.jetstream().consumer_info("KASVU_SELFMONITORING", "registry-breaches")
    finally:
        await connection.close()


async def wait_until_settled(suite: LocalSuite, timeout_s: float = 20) -> ConsumerInfo:
    """Until the registry has acknowledged every breach event (redeliveries included)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await breach_consumer(suite)
        if (
            info.num_ack_pending == 0
            and info.num_pending == 0
            and info.delivered
            and info.delivered.stream_seq >= 1
        ):
            return info
        assert asyncio.get_running_loop().time() < deadline, f"breach events not settled: {info}"
        await asyncio.sleep(0.1)


async def assert_exactly_one_suspension(suite: LocalSuite, api: Api, registration: str) -> ConsumerInfo:
    await api.wait_for_state(registration, PROVIDER, SUSPENDED)
    await wait_for_count(suite, "KASVU_REGISTRY", "kasvu.registry.v1.ProviderSuspended.pirkanmaa", 1)
    settled = await wait_until_settled(suite)
    await asyncio.sleep(1.0)  # a second relay pass would show up by now
    assert await subject_count(suite, "KASVU_REGISTRY", "kasvu.registry.v1.ProviderSuspended.pirkanmaa") == 1
    assert (
        await subject_count(suite, "KASVU_SELFMONITORING", "kasvu.selfmonitoring.v1.BreachOpened.pirkanmaa")
        == 1
    )
    assert inbox_rows(suite) == [("registry-breaches", "applied")]
    return settled


async def crash_at(suite: LocalSuite, api: Api, service: str, crash_point: str) -> str:
    """An admitted provider, an indicator, then `service` restarted to die at `crash_point`
    when the provider breaches; returns the registration once the service has died."""
    registration = await admitted_provider(api)
    indicator = await api.create_indicator("pirkanmaa")
    # The restart must not catch the set-up's own events (self-monitoring also follows the
    # registry's admissions now): the crash point is for the breach's event alone.
    await outbox_drained(suite, service)
    await restart(suite, service, {"KASVU_CRASH_POINT": crash_point})
    await api.breach_until_opened("pirkanmaa", indicator, PROVIDER)
    assert await wait_for_exit(suite, service) == 137
    return registration


async def outbox_drained(suite: LocalSuite, service: str, timeout_s: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    with sqlite3.connect(suite.data_dir / f"{service}.db") as db:
        while db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]:
            assert asyncio.get_running_loop().time() < deadline, f"{service}'s outbox never drained"
            await asyncio.sleep(0.05)


async def start_again(suite: LocalSuite, service: str) -> None:
    suite.start_service(service)
    await suite.wait_ready(service)


async def test_registry_killed_before_consuming_the_breach_suspends_exactly_once(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        registration = await admitted_provider(api)
        indicator = await api.create_indicator("pirkanmaa")

        sqlite_suite.kill("registry")
        await api.breach_until_opened("pirkanmaa", indicator, PROVIDER)
        await wait_for_count(
            sqlite_suite, "KASVU_SELFMONITORING", "kasvu.selfmonitoring.v1.BreachOpened.pirkanmaa", 1
        )

        await start_again(sqlite_suite, "registry")
        await assert_exactly_one_suspension(sqlite_suite, api, registration)


async def test_registry_crashing_after_commit_before_ack_suspends_exactly_once(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        # Dies holding an unacknowledged event.
        registration = await crash_at(sqlite_suite, api, "registry", "consumer_after_commit")
        assert (
            await subject_count(sqlite_suite, "KASVU_REGISTRY", "kasvu.registry.v1.ProviderSuspended.>") == 0
        )

        await start_again(sqlite_suite, "registry")
        settled = await assert_exactly_one_suspension(sqlite_suite, api, registration)
        # The one breach event was delivered twice (before and after the crash) and the
        # inbox turned the second delivery away.
        assert settled.delivered is not None
        assert settled.delivered.consumer_seq == 2


async def test_selfmonitoring_crashing_between_publish_and_mark_publishes_the_breach_once(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        # Dies having published the breach event but not marked it published.
        registration = await crash_at(sqlite_suite, api, "selfmonitoring", "relay_after_publish")

        await start_again(
            sqlite_suite, "selfmonitoring"
        )  # the relay publishes the row again, same Nats-Msg-Id
        with sqlite3.connect(sqlite_suite.data_dir / "selfmonitoring.db") as db:
            # The crashed process still holds the relay lease (10 s TTL); its successor
            # relays once the lease lapses, so allow for the whole TTL and then some.
            for _ in range(300):
                if db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0] == 0:
                    break
                await asyncio.sleep(0.1)
            assert db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0] == 0
        await assert_exactly_one_suspension(sqlite_suite, api, registration)

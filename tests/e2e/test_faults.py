"""Faults the suite survives quickly and without echoes, on real processes: a SIGKILL in the
middle of write batches, a consumer killed holding a fetched event, and NATS going away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kasvuctl.localsuite import LocalSuite
from tests.e2e.flows import Api
from tests.e2e.test_crash import (
    PROVIDER,
    SUSPENDED,
    admitted_provider,
    assert_exactly_one_suspension,
    outbox_drained,
    restart,
    subject_count,
    wait_for_count,
    wait_for_exit,
)
from tests.integration.helpers import business_ids

pytestmark = pytest.mark.e2e

BREACH_OPENED = "kasvu.selfmonitoring.v1.BreachOpened.pirkanmaa"


async def health(suite: LocalSuite, service: str, entry: str) -> int:
    async with grpc.aio.insecure_channel(suite.address(service)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=entry), timeout=2.0
        )
    return int(reply.status)


async def eventually(check, what: str, within: float = 20.0) -> Any:  # type: ignore[no-untyped-def]
    """The first truthy answer of `check`, polled until `within` seconds have passed."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        try:
            if answer := await check():
                return answer
        except (grpc.aio.AioRpcError, httpx.HTTPError, AssertionError):
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {within} s: {what}")


async def register_under_load(
    api: Api,
    terms: dict[str, object],
    providers: list[str],
    *,
    interrupt_after: int,
    interrupt: Callable[[], Awaitable[None]],
    in_flight: int = 32,
) -> list[tuple[str, str]]:
    """Registers `providers` through the gateway, `in_flight` at a time, and runs `interrupt` once
    `interrupt_after` are acknowledged; returns the acknowledged (business ID, registration)."""
    key = Ed25519PrivateKey.generate()
    acknowledged: list[tuple[str, str]] = []
    enough = asyncio.Event()
    waiting = iter(providers)

    async def register() -> None:
        for business_id in waiting:
            try:
                response = await api.register(
                    "pirkanmaa", api.registration_body(terms, business_id, key), business_id
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                acknowledged.append((business_id, str(response.json()["name"])))
                if len(acknowledged) >= interrupt_after:
                    enough.set()

    async def interrupt_when_enough() -> None:
        await enough.wait()
        await interrupt()

    await asyncio.gather(interrupt_when_enough(), *(register() for _ in range(in_flight)))
    return acknowledged


async def test_a_sigkill_in_the_middle_of_write_batches_loses_no_acknowledged_registration(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        terms = await api.publish_terms("pirkanmaa")
        next_id = business_ids(4_000_000)
        providers = [next_id() for _ in range(600)]

        async def kill() -> None:
            sqlite_suite.kill("registry")  # SIGKILL while batches are being written

        acknowledged = await register_under_load(api, terms, providers, interrupt_after=150, interrupt=kill)
        assert 150 <= len(acknowledged) < len(providers)

        sqlite_suite.start_service("registry")
        await sqlite_suite.wait_ready("registry")
        # Read from the database itself: the gateway's channel may still be backing off from
        # the killed process, and what is asked here is what was committed.
        with sqlite3.connect(sqlite_suite.data_dir / "registry.db") as db:
            states = dict(db.execute("SELECT id, state FROM registry_registrations").fetchall())
            stored = db.execute(
                "SELECT count(*), count(DISTINCT business_id) FROM registry_registrations"
            ).fetchone()
        for _, name in acknowledged:
            assert states.get(name.rsplit("/", 1)[1]) == "ADMITTED", f"acknowledged {name} was lost"
        # Nothing half-written: every stored registration is whole and one per provider.
        assert stored[0] == stored[1] >= len(acknowledged)
    assert await asyncio.to_thread(_verify_audit, sqlite_suite) == 0


def _verify_audit(suite: LocalSuite) -> int:
    from kasvuctl.cli import main as kasvu

    return kasvu(
        ["audit", "verify", "registry", "--database-url", f"sqlite:///{suite.data_dir / 'registry.db'}"]
    )


@pytest.fixture
async def default_suite(tmp_path: Path) -> AsyncIterator[LocalSuite]:
    """The suite on its shipped settings (the default ack wait, not the crash tests' shorter one)."""
    running = LocalSuite(tmp_path / "suite")
    try:
        await running.start()
        yield running
    finally:
        running.stop()


async def test_a_registry_killed_holding_a_fetched_breach_applies_it_within_five_seconds_of_restarting(
    default_suite: LocalSuite,
) -> None:
    suite = default_suite
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10.0) as client:
        api = Api(suite, client)
        registration = await admitted_provider(api)
        indicator = await api.create_indicator("pirkanmaa")
        await restart(suite, "registry", {"KASVU_CRASH_POINT": "consumer_after_fetch"})
        await api.breach_until_opened("pirkanmaa", indicator, PROVIDER)
        assert await wait_for_exit(suite, "registry") == 137

        suite.start_service("registry")
        await suite.wait_ready("registry")
        ready = time.monotonic()
        await api.wait_for_state(registration, PROVIDER, SUSPENDED, timeout_s=10)
        assert time.monotonic() - ready <= 5.0


@pytest.fixture
async def long_lease_suite(tmp_path: Path) -> AsyncIterator[LocalSuite]:
    """Leases of 30 s: a restarted replica that had to wait for its own dead lease would be slow
    by far more than the 5 s it is allowed."""
    running = LocalSuite(
        tmp_path / "suite", extra_env={"KASVU_CONSUMER_ACK_WAIT_S": "2", "KASVU_LEASE_TTL_S": "30"}
    )
    try:
        await running.start()
        yield running
    finally:
        running.stop()


async def test_selfmonitoring_killed_holding_its_lease_and_a_breach_sends_it_within_five_s_of_restarting(
    long_lease_suite: LocalSuite,
) -> None:
    suite = long_lease_suite
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10.0) as client:
        api = Api(suite, client)
        registration = await admitted_provider(api)
        indicator = await api.create_indicator("pirkanmaa")
        await outbox_drained(suite, "selfmonitoring")
        # With NATS away the breach commits but cannot leave: it is in the outbox when the
        # process dies, and the dead process holds the relay's lease for most of 30 s more.
        suite.stop_process("nats")
        await api.breach_until_opened("pirkanmaa", indicator, PROVIDER)
        with sqlite3.connect(suite.data_dir / "selfmonitoring.db") as db:
            unsent = db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
            held_for_s = db.execute(
                "SELECT (julianday(expires_at) - julianday('now')) * 86400 FROM leases"
            ).fetchone()[0]
        assert unsent >= 1
        assert held_for_s > 10
        suite.kill("selfmonitoring")

        suite.start_nats()
        await eventually(
            lambda: _status_is(suite, "registry", "kasvu.bus", health_pb2.HealthCheckResponse.SERVING),
            "the registry's events flowing again",
        )
        suite.start_service("selfmonitoring")
        await suite.wait_ready("selfmonitoring")
        ready = time.monotonic()
        await wait_for_count(suite, "KASVU_SELFMONITORING", BREACH_OPENED, 1, timeout_s=15)
        assert time.monotonic() - ready <= 5.0
        await assert_exactly_one_suspension(suite, api, registration)


async def test_while_nats_is_away_services_take_writes_report_events_not_flowing_and_catch_up(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        sqlite_suite.stop_process("nats")
        await eventually(
            lambda: _status_is(
                sqlite_suite, "registry", "kasvu.bus", health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            "the registry reports events not flowing",
        )
        # A registry started while NATS is down takes writes too.
        await restart_without_waiting_for_the_bus(sqlite_suite, "registry")
        assert await health(sqlite_suite, "registry", "") == health_pb2.HealthCheckResponse.SERVING
        assert (
            await health(sqlite_suite, "registry", "kasvu.bus") == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        terms = await api.publish_terms("pirkanmaa")
        assert terms["name"]
        # The backlog is reported while it waits: depth and age, not just "not flowing".
        backlog = await eventually(
            lambda: _reported_backlog(sqlite_suite, "registry"), "the registry reports its outbox backlog"
        )
        assert backlog["outbox_depth"] >= 1 and backlog["outbox_age_s"] > 0
        assert backlog["level"] == "WARNING" and backlog["alert"] is True

        sqlite_suite.start_nats()
        await eventually(
            lambda: _status_is(sqlite_suite, "registry", "kasvu.bus", health_pb2.HealthCheckResponse.SERVING),
            "the registry reports events flowing again",
        )
        await eventually(
            lambda: _has_messages(sqlite_suite, "kasvu.registry.v1.TermsPublished.pirkanmaa"),
            "the terms published while NATS was away reached the stream",
        )
        assert (
            await subject_count(sqlite_suite, "KASVU_REGISTRY", "kasvu.registry.v1.TermsPublished.pirkanmaa")
            == 1
        )


async def _reported_backlog(suite: LocalSuite, service: str) -> dict[str, Any] | None:
    """The last "events not flowing" log line of `service` that counts a waiting event."""
    for line in reversed(suite.log_text(service).splitlines()):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("message") == "events not flowing" and entry.get("outbox_depth", 0) >= 1:
                return dict(entry)
    return None


async def _status_is(suite: LocalSuite, service: str, entry: str, status: int) -> bool:
    return await health(suite, service, entry) == status


async def _has_messages(suite: LocalSuite, subject: str) -> bool:
    return await subject_count(suite, "KASVU_REGISTRY", subject) >= 1


async def restart_without_waiting_for_the_bus(suite: LocalSuite, service: str) -> None:
    suite.stop_process(service)
    suite.start_service(service)
    await eventually(
        lambda: _status_is(suite, service, "", health_pb2.HealthCheckResponse.SERVING), f"{service} serving"
    )


async def test_events_of_writes_committed_up_to_a_sigterm_are_on_the_stream_when_the_service_has_exited(
    sqlite_suite: LocalSuite,
) -> None:
    suite = sqlite_suite
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10.0) as client:
        api = Api(suite, client)
        terms = await api.publish_terms("pirkanmaa")
        next_id = business_ids(5_000_000)
        exit_codes: list[int | None] = []

        async def terminate() -> None:
            # SIGTERM while registrations are in flight; returns once the process has exited.
            exit_codes.append(await asyncio.to_thread(suite.stop_process, "registry"))

        await register_under_load(
            api, terms, [next_id() for _ in range(300)], interrupt_after=40, interrupt=terminate, in_flight=16
        )
    assert exit_codes == [0]
    with sqlite3.connect(suite.data_dir / "registry.db") as db:
        unsent = db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
        written = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert unsent == 0
    connection = await suite.connect_nats()
    try:
        on_stream = (await connection.jetstream().stream_info("KASVU_REGISTRY")).state.messages
    finally:
        await connection.close()
    assert on_stream == written

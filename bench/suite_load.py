"""The suite's own figures: registrations over gRPC and HTTP, and breach -> suspension latency."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import aiohttp
import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.type import date_pb2
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from bench.cpu import CpuTally
from bench.hops import BreachTiming
from bench.load import Load, closed_loop, timed_repeat
from bench.stats import median
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from services.runtime.domain import business_id_check_digit

REGION = "pirkanmaa"
SERVICE = "recruitment"
SERVICE_PARENT = f"regions/{REGION}/services/{SERVICE}"
REQUIREMENT = "prepayment-register"
FINLAND = ZoneInfo("Europe/Helsinki")

Metadata = tuple[tuple[str, str], ...]


def business_ids(first_body: int = 1_000_000) -> Iterator[str]:
    """Distinct valid Finnish business IDs from sequential 7-digit bodies."""
    for number in itertools.count(first_body):
        body = f"{number:07d}"
        check = business_id_check_digit(body)
        if check is not None:
            yield f"{body}-{check}"


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Provider:
    business_id: str
    token: str
    registration: str = ""


@dataclass
class Fixture:
    """What the measurements share: the suite, its channels, terms, a signing key and providers."""

    suite: LocalSuite
    registry: registry_pb2_grpc.RegistryServiceStub
    selfmonitoring: selfmonitoring_pb2_grpc.SelfMonitoringServiceStub
    admin: Metadata
    terms: registry_pb2.Terms
    public_key: bytes
    signature: bytes
    ids: Iterator[str] = field(default_factory=business_ids)
    admitted: list[Provider] = field(default_factory=list)

    def providers(self, count: int) -> list[Provider]:
        """Fresh providers with their tokens minted now, so minting stays out of the timings."""
        return [
            Provider(bid, self.suite.token(Role.PROVIDER, bid)) for bid in itertools.islice(self.ids, count)
        ]

    def registration(self, business_id: str) -> registry_pb2.Registration:
        return registry_pb2.Registration(
            terms=self.terms.name,
            business_id=business_id,
            display_name=f"Bench {business_id}",
            evidence=[registry_pb2.Evidence(requirement_code=REQUIREMENT, declared=True)],
            public_key=self.public_key,
            terms_signature=self.signature,
        )


async def prepare(
    suite: LocalSuite, registry_channel: grpc.aio.Channel, selfmonitoring_channel: grpc.aio.Channel
) -> Fixture:
    """Publishes terms with one declaration requirement; one key pair signs for every provider,
    which keeps client CPU low (the registry checks a signature against the key sent with it)."""
    registry = registry_pb2_grpc.RegistryServiceStub(registry_channel)
    admin = bearer(suite.token(Role.REGION_ADMIN, REGION))
    terms = await registry.PublishTerms(
        registry_pb2.PublishTermsRequest(
            parent=SERVICE_PARENT,
            terms=registry_pb2.Terms(
                title="Rekrytointi",
                requirements=[
                    registry_pb2.Requirement(
                        code=REQUIREMENT,
                        description="In the prepayment register",
                        kind=registry_pb2.REQUIREMENT_KIND_DECLARATION,
                    )
                ],
            ),
        ),
        metadata=admin,
    )
    key = Ed25519PrivateKey.generate()
    public_key = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Fixture(
        suite=suite,
        registry=registry,
        selfmonitoring=selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(selfmonitoring_channel),
        admin=admin,
        terms=terms,
        public_key=public_key,
        signature=key.sign(bytes.fromhex(terms.content_hash)),
    )


def _provider_count(load: Load) -> int:
    if load.count is None:
        raise ValueError("a registration load needs a count: each call registers a new provider")
    return load.count


async def register_grpc_rps(fixture: Fixture, load: Load, *, tally: CpuTally | None = None) -> float:
    """Median registrations per second over gRPC; admitted providers are kept for the breach figure.

    With `tally`, the CPU the timed loops spend and the registrations they make are added to it.
    """
    rates = []
    for _ in range(load.repeats):
        providers = fixture.providers(_provider_count(load))

        async def call(index: int, providers: Sequence[Provider] = providers) -> None:
            provider = providers[index]
            reply = await fixture.registry.RegisterProvider(
                registry_pb2.RegisterProviderRequest(
                    parent=SERVICE_PARENT, registration=fixture.registration(provider.business_id)
                ),
                metadata=bearer(provider.token),
                timeout=30,
            )
            if reply.state != registry_pb2.REGISTRATION_STATE_ADMITTED:
                raise RuntimeError(f"{provider.business_id} not admitted: {reply}")
            provider.registration = reply.name

        rates.append(await timed_repeat(call, load, tally))
        # Cut short by the time cap, some were never registered.
        fixture.admitted.extend(provider for provider in providers if provider.registration)
    return median(rates)


def registration_json(fixture: Fixture, business_id: str) -> dict[str, object]:
    """The proto3 JSON form of a registration: bytes fields as base64."""
    return {
        "terms": fixture.terms.name,
        "businessId": business_id,
        "displayName": f"Bench {business_id}",
        "evidence": [{"requirementCode": REQUIREMENT, "declared": True}],
        "publicKey": base64.b64encode(fixture.public_key).decode(),
        "termsSignature": base64.b64encode(fixture.signature).decode(),
    }


async def register_http_rps(fixture: Fixture, load: Load, *, tally: CpuTally | None = None) -> float:
    """Median registrations per second through the HTTP gateway, one connection per call in flight.

    The client is aiohttp: httpx spent about 6 ms of CPU per request here, so on two cores
    the figure measured the client; aiohttp spends about 0.5 ms, near the gRPC client's share
    of the echo baseline. With `tally`, as for gRPC.
    """
    url = f"{fixture.suite.gateway_url}/v1/{SERVICE_PARENT}/registrations"
    rates = []
    connector = aiohttp.TCPConnector(limit=load.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        for _ in range(load.repeats):
            providers = fixture.providers(_provider_count(load))
            bodies = [json.dumps(registration_json(fixture, provider.business_id)) for provider in providers]

            async def call(
                index: int, providers: Sequence[Provider] = providers, bodies: Sequence[str] = bodies
            ) -> None:
                headers = {
                    "Authorization": f"Bearer {providers[index].token}",
                    "Content-Type": "application/json",
                }
                async with client.post(url, data=bodies[index], headers=headers) as response:
                    text = await response.text()
                    if (
                        response.status != 200
                        or json.loads(text).get("state") != "REGISTRATION_STATE_ADMITTED"
                    ):
                        raise RuntimeError(f"HTTP registration failed: {response.status} {text}")

            rates.append(await timed_repeat(call, load, tally))
    return median(rates)


async def create_strict_indicator(fixture: Fixture) -> str:
    """An indicator one late case breaches: sample of one, every case within 14 days, serious."""
    indicator: selfmonitoring_pb2.Indicator = await fixture.selfmonitoring.CreateIndicator(
        selfmonitoring_pb2.CreateIndicatorRequest(
            parent=f"regions/{REGION}",
            indicator_id="bench-need-assessment-14d",
            indicator=selfmonitoring_pb2.Indicator(
                display_name="Need assessed within 14 days",
                service=SERVICE,
                share_within_deadline=selfmonitoring_pb2.ShareWithinDeadline(
                    deadline_days=14, minimum_share=1.0
                ),
                window_days=90,
                minimum_sample=1,
                severity=selfmonitoring_pb2.SEVERITY_SERIOUS,
            ),
        ),
        metadata=fixture.admin,
    )
    return indicator.name


def proto_date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


async def breach_to_suspension(
    fixture: Fixture, count: int, concurrency: int, max_seconds: float, poll_interval_s: float = 0.002
) -> list[BreachTiming]:
    """Per provider: one late observation, then poll its registration until SUSPENDED.

    The figure's clock starts when RecordObservation returns (the observation is accepted)
    and stops at the first read that shows the suspension. Wall-clock instants are kept
    beside it, for the hop-by-hop breakdown against the servers' own timestamps.
    """
    if len(fixture.admitted) < count:
        raise RuntimeError(f"need {count} admitted providers, have {len(fixture.admitted)}")
    indicator = await create_strict_indicator(fixture)
    # completed_on must not be in the future in Finland, whatever the machine's zone.
    completed = dt.datetime.now(FINLAND).date()
    started = completed - dt.timedelta(days=30)
    timings: list[BreachTiming] = []

    async def one(index: int) -> None:
        provider = fixture.admitted[index]
        sent_at = time.time()
        reply = await fixture.selfmonitoring.RecordObservation(
            selfmonitoring_pb2.RecordObservationRequest(
                parent=indicator,
                observation=selfmonitoring_pb2.Observation(
                    observation_id=f"bench-{provider.business_id}",
                    provider=provider.business_id,
                    case_key=f"case-{index}",
                    started_on=proto_date(started),
                    completed_on=proto_date(completed),
                ),
            ),
            metadata=fixture.admin,
            timeout=30,
        )
        accepted = time.perf_counter()
        timing = BreachTiming(reply.breach, sent_at=sent_at, accepted_at=time.time())
        deadline = accepted + 30
        while time.perf_counter() < deadline:
            read_sent_at = time.time()
            registration = await fixture.registry.GetRegistration(
                registry_pb2.GetRegistrationRequest(name=provider.registration),
                metadata=fixture.admin,
                timeout=30,
            )
            if registration.state == registry_pb2.REGISTRATION_STATE_SUSPENDED:
                timing.latency_ms = (time.perf_counter() - accepted) * 1000
                timing.read_sent_at, timing.seen_at = read_sent_at, time.time()
                timings.append(timing)
                return
            await asyncio.sleep(poll_interval_s)
        raise TimeoutError(f"{provider.registration} not suspended within 30 s")

    await closed_loop(one, concurrency=concurrency, count=count, duration_s=max_seconds)
    return timings

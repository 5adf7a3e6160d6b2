"""`kasvu demo`: plays the whole loop against a running suite through the gateway's HTTP API.

A region publishes terms, a provider signs them and is admitted in two regions, the
region defines a quality indicator, late cases open a breach, the provider is
suspended in that region only, and a supervisor's live alert stream reports it.

By default the demo talks to `kasvu run` (gateway at KASVU_HTTP_ADDRESS) and mints
its tokens with the private key in the data dir; `--local` starts a throwaway suite
of its own instead. Each run works in two regions of its own (`demo-<run id>` and
`demo-<run id>-other`, printed at the start) with a fresh business ID, so it never writes
into a user's own regions and can be repeated against the same suite. Nothing printed is
personal data: the provider is a company, cases are pseudonymous keys, tokens are never shown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.runtime.auth import PRIVATE_KEY_NAME, Principal, Role, mint_token
from services.runtime.domain import business_id_check_digit
from services.runtime.settings import Settings

REGION_PREFIX = "demo"
SERVICE = "recruitment"
INDICATOR_ID = "need-assessment-14d"
ADMITTED = "REGISTRATION_STATE_ADMITTED"
SUSPENDED = "REGISTRATION_STATE_SUSPENDED"
# Late enough to miss the 14-day deadline whatever the time zone of the clock.
LATE_CASE_DAYS = 30
MAX_OBSERVATIONS = 10
SUSPENSION_WAIT_S = 30.0
ALERT_WAIT_S = 15.0
# The gateway answers 200 once the backend accepts the stream, a moment before the
# subscription is certain to be live; alerts published in between would be missed.
STREAM_SETTLE_S = 0.5
FINLAND = ZoneInfo("Europe/Helsinki")

Json = dict[str, Any]
T = TypeVar("T")


# Terms with a declaration and a document requirement, as the demo (and the e2e tests) publish them.
EXAMPLE_TERMS: dict[str, object] = {
    "title": "Rekrytointi- ja työnvälityspalvelut",
    "requirements": [
        {
            "code": "prepayment-register",
            "description": "Entered in the prepayment register",
            "kind": "REQUIREMENT_KIND_DECLARATION",
        },
        {
            "code": "liability-insurance",
            "description": "Liability insurance certificate",
            "kind": "REQUIREMENT_KIND_DOCUMENT",
            "maxAgeDays": 90,
        },
    ],
}


class DemoError(Exception):
    """A step failed; the message says which and why, and is printed as is."""


def default_gateway(settings: Settings) -> str:
    address = settings.http_address
    return address if "://" in address else f"http://{address}"


def fresh_business_id() -> str:
    """A valid Finnish business ID (Y-tunnus) no earlier run is likely to have used."""
    while True:
        body = f"{secrets.randbelow(10_000_000):07d}"
        check = business_id_check_digit(body)
        if check is not None:  # bodies with remainder 1 are never issued
            return f"{body}-{check}"


def today_in_finland() -> date:
    # The suite judges deadlines by Finnish calendar days, so the demo's dates do too.
    return datetime.now(FINLAND).date()


def as_date(day: date) -> Json:
    return {"year": day.year, "month": day.month, "day": day.day}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def short_state(state: str) -> str:
    return state.removeprefix("REGISTRATION_STATE_")


class Steps:
    """Prints numbered steps, flushed at once so a slow step shows where it is."""

    def __init__(self) -> None:
        self.number = 0

    def step(self, text: str) -> None:
        self.number += 1
        print(f"{self.number}. {text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"   {text}", flush=True)


def _error_text(response: httpx.Response) -> str:
    try:
        return json.dumps(response.json(), indent=2, ensure_ascii=False)
    except ValueError:
        return response.text or "(empty body)"


@dataclass
class Gateway:
    """The gateway's HTTP API, calling as whichever principal a step needs."""

    client: httpx.AsyncClient
    private_key_pem: bytes

    def auth(self, role: Role, organisation: str) -> dict[str, str]:
        principal = Principal(role=role, organisation=organisation, subject="kasvu-demo")
        token = mint_token(self.private_key_pem, principal, ttl=timedelta(minutes=15))
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_: tuple[Role, str] | None = None,
        body: Json | None = None,
        params: dict[str, str] | None = None,
    ) -> Json:
        headers = self.auth(*as_) if as_ else {}
        with _reachable(str(self.client.base_url)):
            response = await self.client.request(method, path, json=body, params=params, headers=headers)
        if response.status_code != 200:
            raise DemoError(
                f"{method} {path} failed with HTTP {response.status_code}:\n{_error_text(response)}"
            )
        data = response.json()
        if not isinstance(data, dict):
            raise DemoError(f"{method} {path} answered with unexpected JSON: {data!r}")
        return data

    async def publish_terms(self, region: str) -> Json:
        body = EXAMPLE_TERMS
        return await self.call(
            "POST",
            f"/v1/regions/{region}/services/{SERVICE}/terms",
            as_=(Role.REGION_ADMIN, region),
            body=body,
        )

    async def register(self, region: str, terms: Json, business_id: str, key: Ed25519PrivateKey) -> Json:
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        # The provider signs the hash of exactly the terms version it accepts.
        signature = key.sign(bytes.fromhex(str(terms["contentHash"])))
        body = {
            "terms": terms["name"],
            "businessId": business_id,
            "displayName": "Demo Rekry Oy",
            "evidence": [
                {"requirementCode": "prepayment-register", "declared": True},
                {
                    "requirementCode": "liability-insurance",
                    "issuedOn": as_date(today_in_finland() - timedelta(days=10)),
                },
            ],
            "publicKey": b64(public),
            "termsSignature": b64(signature),
        }
        return await self.call(
            "POST",
            f"/v1/regions/{region}/services/{SERVICE}/registrations",
            as_=(Role.PROVIDER, business_id),
            body=body,
        )

    async def listed(self, region: str) -> list[str]:
        # No token: the list of admitted providers is public.
        data = await self.call("GET", f"/v1/regions/{region}/services/{SERVICE}/providers")
        return [str(p["businessId"]) for p in data.get("providers", [])]

    async def registration(self, name: str, business_id: str) -> Json:
        return await self.call("GET", f"/v1/{name}", as_=(Role.PROVIDER, business_id))

    async def create_indicator(self, region: str) -> Json:
        # The same definition every run; a retried create returns the existing indicator.
        body = {
            "displayName": "Service-need assessment within 14 days of job-search start",
            "service": SERVICE,
            "shareWithinDeadline": {"deadlineDays": 14, "minimumShare": 0.8},
            "windowDays": 90,
            "minimumSample": 3,
            "severity": "SEVERITY_SERIOUS",
        }
        return await self.call(
            "POST",
            f"/v1/regions/{region}/indicators",
            as_=(Role.REGION_ADMIN, region),
            body=body,
            params={"indicatorId": INDICATOR_ID},
        )

    async def observe_late_case(
        self, region: str, indicator: str, business_id: str, observation_id: str, case_key: str
    ) -> Json:
        completed = today_in_finland()
        body = {
            "observationId": observation_id,
            "provider": business_id,
            "caseKey": case_key,
            "startedOn": as_date(completed - timedelta(days=LATE_CASE_DAYS)),
            "completedOn": as_date(completed),
        }
        return await self.call(
            "POST", f"/v1/{indicator}/observations", as_=(Role.REGION_ADMIN, region), body=body
        )


@contextlib.contextmanager
def _reachable(url: str) -> Iterator[None]:
    """Turns "nothing listens there" into the hint a user needs."""
    try:
        yield
    except httpx.TransportError as e:
        raise DemoError(
            f"cannot reach the gateway at {url} ({type(e).__name__}): is `make run` running? "
            "Or run `kasvu demo --local` to start a suite just for the demo."
        ) from e


async def read_sse(response: httpx.Response) -> AsyncIterator[tuple[str, str, Json]]:
    """Yields (event type, id, data) for each Server-Sent Event; comments are keepalives."""
    event, event_id, data = "message", "", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield event, event_id, json.loads(data)
            event, event_id, data = "message", "", ""


@dataclass
class AlertWatch:
    """A supervisor's alert stream read in the background; alerts land in a queue."""

    api: Gateway
    region: str
    opened: asyncio.Event
    alerts: asyncio.Queue[Json]

    async def run(self) -> None:
        headers = self.api.auth(Role.SUPERVISOR, self.region)
        path = f"/v1/regions/{self.region}/alerts:stream"
        # No read timeout: the stream is quiet between alerts, apart from keepalives.
        timeout = httpx.Timeout(10.0, read=None)
        with _reachable(str(self.api.client.base_url)):
            async with self.api.client.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise DemoError(
                        f"GET {path} failed with HTTP {response.status_code}:\n{_error_text(response)}"
                    )
                self.opened.set()
                async for event, _, data in read_sse(response):
                    if event == "error":
                        raise DemoError(
                            f"the alert stream ended with an error:\n{json.dumps(data, indent=2)}"
                        )
                    await self.alerts.put(data)


async def _until(task: asyncio.Task[None], waiting: Awaitable[T], timeout_s: float, what: str) -> T:
    """Awaits `waiting` unless the background task fails first, which is then the error."""
    waiter = asyncio.ensure_future(waiting)
    try:
        done, _ = await asyncio.wait({waiter, task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return waiter.result()
        if task in done:
            task.result()  # raises the stream's own error, if it had one
            raise DemoError(f"the alert stream closed before an {what}")
        raise DemoError(f"no {what} within {timeout_s:.0f} s")
    finally:
        waiter.cancel()


def _reason(reason: Json) -> str:
    text = f"{reason.get('code')}: {reason.get('message', '')}"
    subject = str(reason.get("subject", ""))
    # The message usually names the breach already; say it once.
    return text if subject in text else f"{text} ({subject})"


@dataclass
class Demo:
    """One run of the loop; each phase prints its steps and keeps what later ones need."""

    api: Gateway
    steps: Steps
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    region: str = ""
    other_region: str = ""
    business_id: str = field(default_factory=fresh_business_id)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    registration: str = ""
    breach: str = ""

    def __post_init__(self) -> None:
        # Regions of this run alone, so the demo never writes into a user's own regions.
        self.region = self.region or f"{REGION_PREFIX}-{self.run_id}"
        self.other_region = self.other_region or f"{self.region}-other"

    async def admit(self) -> None:
        terms = await self.api.publish_terms(self.region)
        self.steps.step(
            f"Region {self.region} published terms for service {SERVICE!r}: {terms['name']} "
            f"(content hash {str(terms['contentHash'])[:16]}...)"
        )
        registration = await self.api.register(self.region, terms, self.business_id, self.key)
        if registration.get("state") != ADMITTED:
            raise DemoError(
                f"expected ADMITTED in {self.region}, the registration is {registration.get('state')}"
            )
        self.registration = str(registration["name"])
        self.steps.step(
            f"Provider {self.business_id} signed the terms' content hash with a fresh Ed25519 key "
            f"and registered in {self.region}: {short_state(ADMITTED)}"
        )
        other_terms = await self.api.publish_terms(self.other_region)
        other = await self.api.register(self.other_region, other_terms, self.business_id, self.key)
        if other.get("state") != ADMITTED:
            raise DemoError(
                f"expected ADMITTED in {self.other_region}, the registration is {other.get('state')}"
            )
        self.steps.detail(
            f"{self.other_region} published its terms too; {self.business_id} registered there: "
            f"{short_state(ADMITTED)}"
        )

        listed = await self.api.listed(self.region)
        if self.business_id not in listed:
            raise DemoError(f"{self.business_id} is missing from {self.region}'s public provider list")
        self.steps.step(
            f"{self.region}'s public provider list (no token) shows {self.business_id} "
            f"among {len(listed)} admitted provider(s)"
        )

    async def open_breach(self) -> None:
        indicator = await self.api.create_indicator(self.region)
        share = indicator["shareWithinDeadline"]
        self.steps.step(
            f"Region {self.region} defined indicator {indicator['name']}: service-need assessment within "
            f"{share['deadlineDays']} days, minimum share {share['minimumShare']}, window "
            f"{indicator['windowDays']} days, minimum sample {indicator['minimumSample']}, "
            f"{str(indicator['severity']).removeprefix('SEVERITY_')}"
        )
        self.steps.step(
            f"Region {self.region} records late cases of {self.business_id} until a breach opens:"
        )
        for n in range(1, MAX_OBSERVATIONS + 1):
            # Per-run ids: a rerun's observations are new ones, not retries of the last run's.
            result = await self.api.observe_late_case(
                self.region,
                str(indicator["name"]),
                self.business_id,
                f"demo-{self.run_id}-{n}",
                f"case-{self.run_id}-{n}",
            )
            # proto3 JSON leaves out zero values, so a share of 0.0 has no "value" at all.
            value, sample = float(result.get("value", 0.0)), int(result.get("sampleSize", 0))
            self.steps.detail(
                f"late case {n} ({LATE_CASE_DAYS} days to assessment): "
                f"value {value:.2f} over a sample of {sample}"
            )
            if result.get("breach"):
                self.breach = str(result["breach"])
                self.steps.detail(f"breach opened: {self.breach} (value {value:.2f}, sample size {sample})")
                return
        raise DemoError(f"no breach opened after {MAX_OBSERVATIONS} late cases")

    async def see_suspension(self) -> None:
        deadline = time.monotonic() + SUSPENSION_WAIT_S
        # The registry suspends on the breach event from NATS, so this takes a moment.
        while (current := await self.api.registration(self.registration, self.business_id))[
            "state"
        ] != SUSPENDED:
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"{self.registration} is still {current['state']} after {SUSPENSION_WAIT_S:.0f} s; "
                    "the registry should have suspended it on the breach"
                )
            await asyncio.sleep(0.1)
        reasons = "; ".join(_reason(r) for r in current.get("reasons", []))
        self.steps.step(
            f"Registration in {self.region} is {short_state(SUSPENDED)}, reason: {reasons or '(none given)'}"
        )

        here, there = await self.api.listed(self.region), await self.api.listed(self.other_region)
        if self.business_id in here:
            raise DemoError(f"{self.business_id} is suspended but still on {self.region}'s list")
        if self.business_id not in there:
            raise DemoError(f"{self.business_id} is missing from {self.other_region}'s list")
        self.steps.step(
            f"{self.business_id} is gone from {self.region}'s public list but still on "
            f"{self.other_region}'s: a breach suspends only where it happened"
        )

    def show_alert(self, alert: Json) -> None:
        found = alert["breach"]
        severity = str(found.get("severity", "")).removeprefix("SEVERITY_")
        self.steps.step(
            f"The supervisor's stream received alert #{alert.get('sequence')}: {severity} breach "
            f"{found['name']} by {found.get('provider')} on {found.get('service')}, "
            f"value {float(found.get('value', 0.0)):.2f} below threshold "
            f"{float(found.get('threshold', 0.0)):.2f}, sample size {found.get('sampleSize')}"
        )

    async def our_alert(self, alerts: asyncio.Queue[Json]) -> Json:
        # Other alerts may flow on a shared suite; wait for this run's breach.
        while True:
            alert = await alerts.get()
            if alert.get("breach", {}).get("name") == self.breach:
                return alert


async def play(gateway_url: str, private_key_pem: bytes) -> None:
    """The loop, step by step; raises DemoError when a step does not go as it should."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15.0) as client:
        api = Gateway(client, private_key_pem)
        demo = Demo(api, Steps())
        print(
            f"This run uses regions of its own, {demo.region} and {demo.other_region}; "
            "no other region's data is touched.",
            flush=True,
        )
        await demo.admit()

        watch = AlertWatch(api, demo.region, asyncio.Event(), asyncio.Queue())
        stream = asyncio.create_task(watch.run())
        try:
            await _until(stream, watch.opened.wait(), 10.0, "answer from the alert stream")
            await asyncio.sleep(STREAM_SETTLE_S)
            demo.steps.step(
                f"A supervisor of {demo.region} opened the live alert stream (SSE) in the background"
            )

            await demo.open_breach()
            await demo.see_suspension()
            alert = await _until(
                stream, demo.our_alert(watch.alerts), ALERT_WAIT_S, f"alert for {demo.breach}"
            )
            demo.show_alert(alert)
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, DemoError):
                await stream


def _private_key(data_dir: Path | None) -> bytes:
    settings = Settings()
    path = (
        data_dir / "keys" / PRIVATE_KEY_NAME if data_dir is not None else settings.resolved_private_key_file()
    )
    try:
        return path.read_bytes()
    except OSError as e:
        raise DemoError(
            f"cannot read the token private key {path} ({e.strerror}): run the demo with the "
            "data dir `kasvu run` uses (--data-dir or KASVU_DATA_DIR), or use --local"
        ) from e


async def _play_local() -> None:
    # Imported here: only --local needs the process machinery (and grpc).
    from kasvuctl.localsuite import LocalSuite

    with tempfile.TemporaryDirectory(prefix="kasvu-demo-") as tmp:
        suite = LocalSuite(Path(tmp) / "suite")
        print(f"Starting a local suite in {suite.data_dir} ...", flush=True)
        try:
            await suite.start()
            print(f"Suite up, gateway at {suite.gateway_url}", flush=True)
            await play(suite.gateway_url, suite.private_key())
        except (RuntimeError, TimeoutError) as e:
            raise DemoError(f"the local suite did not start: {e}") from e
        finally:
            # Synchronous on purpose: the processes must be gone before the temp dir is.
            suite.stop()


def build_parser() -> argparse.ArgumentParser:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="kasvu demo",
        description="Walk through the Kasvu loop against a running suite, through its HTTP gateway.",
    )
    parser.add_argument(
        "--gateway",
        default=default_gateway(settings),
        metavar="URL",
        help="the gateway's base URL (default: from KASVU_HTTP_ADDRESS, %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the suite's data dir, for the token private key (default: {settings.data_dir})",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="start a throwaway suite in a temp dir, run the demo against it, then stop it",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.local:
            asyncio.run(_play_local())
        else:
            asyncio.run(play(args.gateway.rstrip("/"), _private_key(args.data_dir)))
    except DemoError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    print("Demo complete.", flush=True)
    return 0

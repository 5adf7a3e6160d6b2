"""Self-monitoring's figures (issue 8): observation ingestion with live evaluation against a bare
JetStream publish_async loop, the alert stream's fan-out, and how evaluation cost grows.

Each function takes a started LocalSuite (or its NATS URL) and returns figures under the
issue's keys; `selfmonitoring_figures` runs them all:

    ingest_obs_per_s, ingest_vs_jetstream, alert_fanout_p99_ms, alert_fanout_dropped,
    evaluation_10x_vs_1x
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2
from kasvu.selfmonitoring.v1 import events_pb2, selfmonitoring_pb2, selfmonitoring_pb2_grpc
from nats.js.api import StorageType, StreamConfig

from bench.stats import median, percentile, ratio
from bench.suite_load import FINLAND, REGION, SERVICE, bearer, business_ids
from kasvuctl.localsuite import LocalSuite
from services.runtime import catalog
from services.runtime.auth import Principal, Role, mint_token
from services.runtime.dispatch import subject_for

INDICATORS = 10
PROVIDERS = 200
INGEST_ROUNDS = 3
JETSTREAM_STREAM = "BENCH_PUBLISH_ASYNC"
JETSTREAM_SUBJECT = "bench.publish_async"


def _today() -> dt.date:
    return dt.datetime.now(FINLAND).date()


def _date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


async def _define_indicators(
    stub: selfmonitoring_pb2_grpc.SelfMonitoringServiceStub, admin: tuple[tuple[str, str], ...], count: int
) -> list[str]:
    """`count` fresh share-within-deadline indicators, so each run starts from empty windows."""
    run = uuid.uuid4().hex[:8]
    names = []
    for index in range(count):
        created = await stub.CreateIndicator(
            selfmonitoring_pb2.CreateIndicatorRequest(
                parent=f"regions/{REGION}",
                indicator_id=f"bench-{run}-{index}",
                indicator=selfmonitoring_pb2.Indicator(
                    display_name=f"Bench indicator {index}",
                    service=SERVICE,
                    share_within_deadline=selfmonitoring_pb2.ShareWithinDeadline(
                        deadline_days=14, minimum_share=0.5, recovery_share=0.6
                    ),
                    window_days=90,
                    minimum_sample=20,
                    severity=selfmonitoring_pb2.SEVERITY_WARNING,
                ),
            ),
            metadata=admin,
        )
        names.append(created.name)
    return names


PER_MESSAGE = 500
"""Observations per stream message (one indicator each): the stream's per-message cost is
paid once for them all."""


def _observations(
    indicators: list[str], providers: list[str], count: int, prefix: str
) -> Iterator[selfmonitoring_pb2.RecordObservationsRequest]:
    """Mostly on time (so few breaches open), spread over indicators, providers and 60 days."""
    today = _today()
    for first in range(0, count, PER_MESSAGE):
        observations = []
        for index in range(first, min(first + PER_MESSAGE, count)):
            completed = today - dt.timedelta(days=index % 60)
            taken = 30 if index % 10 == 0 else 3
            observations.append(
                selfmonitoring_pb2.Observation(
                    observation_id=f"{prefix}-{index}",
                    provider=providers[index % len(providers)],
                    case_key=f"k{index}",
                    started_on=_date(completed - dt.timedelta(days=taken)),
                    completed_on=_date(completed),
                )
            )
        message = first // PER_MESSAGE
        yield selfmonitoring_pb2.RecordObservationsRequest(
            parent=indicators[message % len(indicators)], observations=observations
        )


async def _ingest_seconds(
    stub: selfmonitoring_pb2_grpc.SelfMonitoringServiceStub,
    admin: tuple[tuple[str, str], ...],
    indicators: list[str],
    count: int,
    streams: int,
) -> float:
    """Seconds to ingest `count` observations over `streams` concurrent client streams."""
    providers = list(itertools.islice(business_ids(7_000_000), PROVIDERS))
    run = uuid.uuid4().hex[:8]
    per_stream = count // streams

    async def one(stream: int) -> int:
        requests = list(_observations(indicators, providers, per_stream, f"{run}-{stream}"))
        response = await stub.RecordObservations(iter(requests), metadata=admin, timeout=600)
        if response.rejected:
            raise RuntimeError(f"the bench's observations were refused: {response.rejected[0]}")
        return response.recorded

    started = time.perf_counter()
    recorded = sum(await asyncio.gather(*(one(index) for index in range(streams))))
    elapsed = time.perf_counter() - started
    if recorded != per_stream * streams:
        raise RuntimeError(f"recorded {recorded} of {per_stream * streams}")
    return elapsed


async def ingest_obs_per_s(suite: LocalSuite, count: int = 50_000, streams: int = 2) -> float:
    """Observations per second through RecordObservations with 10 indicators evaluating live."""
    async with grpc.aio.insecure_channel(suite.address("selfmonitoring")) as channel:
        stub = selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel)
        admin = bearer(suite.token(Role.REGION_ADMIN, REGION))
        indicators = await _define_indicators(stub, admin, INDICATORS)
        return count / await _ingest_seconds(stub, admin, indicators, count, streams)


async def evaluation_10x_vs_1x(suite: LocalSuite, base: int = 5_000) -> float:
    """Time for 10x the observations over the time for 1x, on the same indicators and after a
    history of 1x: at most 11 when evaluation never rescans history."""
    async with grpc.aio.insecure_channel(suite.address("selfmonitoring")) as channel:
        stub = selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel)
        admin = bearer(suite.token(Role.REGION_ADMIN, REGION))
        indicators = await _define_indicators(stub, admin, INDICATORS)
        # A history first, so both runs meet windows as full as they get: an evaluation reads
        # each touched provider's day buckets in its window (at most a bucket a day), so on
        # fresh indicators the 1x would meet sparser windows than the 10x after it.
        await _ingest_seconds(stub, admin, indicators, base, 1)
        # Medians (three of the short run, two of the long one): a single half-second timing
        # on two shared cores moved the ratio between 7 and 14 from run to run.
        once = median([await _ingest_seconds(stub, admin, indicators, base, 1) for _ in range(3)])
        tenfold = median([await _ingest_seconds(stub, admin, indicators, base * 10, 1) for _ in range(2)])
        return tenfold / once


async def jetstream_publish_async_per_s(suite: LocalSuite, count: int = 50_000, window: int = 1000) -> float:
    """Messages per second of a bare JetStream publish_async loop (acks awaited per window)."""
    nc = await suite.connect_nats()
    try:
        js = nc.jetstream(publish_async_max_pending=window)
        await js.add_stream(
            StreamConfig(name=JETSTREAM_STREAM, subjects=[JETSTREAM_SUBJECT], storage=StorageType.FILE)
        )
        payload = b"x" * 120  # about an observation's size
        started = time.perf_counter()
        for index in range(count):
            await js.publish_async(JETSTREAM_SUBJECT, payload)
            if index % window == window - 1:
                await js.publish_async_completed()
        await js.publish_async_completed()
        elapsed = time.perf_counter() - started
        await js.delete_stream(JETSTREAM_STREAM)
        return count / elapsed
    finally:
        await nc.close()


FANOUT_PROCESSES = 2
"""Processes the fan-out's subscribers are spread over, so the bench client (200 streams
reading up to 100 000 alerts a second) is not what limits the figure."""


@dataclass
class Followed:
    """What one subscriber saw: distinct alerts (by publish index), repeats, alerts out of
    order, and how often the server ended its stream (it then resumed, as a client should)."""

    received: int = 0
    repeats: int = 0
    out_of_order: int = 0
    resumed: int = 0
    ended: str = "OK"


SUBSCRIBE = "subscribe"
"""The first argument of `python -m bench.selfmonitoring_load` in a subscribers' process."""
RESUMABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


async def _follow(
    address: str,
    token: str,
    expected: int,
    subscribed: asyncio.Event,
    latencies: list[float],
) -> Followed:
    """One subscriber on its own connection: reads alerts until `expected` distinct ones came
    (or it is cancelled), recording each delivery's latency (publish -> here, in ms); resumes
    after the last sequence it saw when the server ends its stream for falling behind."""
    followed = Followed()
    seen: set[int] = set()
    last_index, last_sequence = -1, None
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, like a real client
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = selfmonitoring_pb2_grpc.SelfMonitoringServiceStub(channel)
        while followed.received < expected:
            request = selfmonitoring_pb2.StreamAlertsRequest(parent=f"regions/{REGION}")
            if last_sequence is not None:
                request.resume_after = last_sequence
            call = stub.StreamAlerts(request, metadata=bearer(token))
            try:
                await call.initial_metadata()
                subscribed.set()
                while followed.received < expected:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return followed
                    now = time.time()
                    for alert in response.alerts:
                        latencies.append((now - alert.breach.open_time.ToNanoseconds() / 1e9) * 1000)
                        last_sequence = alert.sequence
                        index = alert.breach.sample_size
                        if index in seen:
                            followed.repeats += 1
                            continue
                        followed.out_of_order += index < last_index
                        seen.add(index)
                        last_index = index
                        followed.received += 1
            except grpc.aio.AioRpcError as error:
                followed.ended = error.code().name
                if error.code() not in RESUMABLE:
                    return followed
                followed.resumed += 1
            except asyncio.CancelledError:
                return followed
            finally:
                call.cancel()
    return followed


def _sse_fields(event: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in event.split("\n"):
        name, _, value = line.partition(":")
        fields[name] = fields.get(name, "") + value.strip()
    return fields


async def _follow_sse(
    gateway: str,
    token: str,
    expected: int,
    subscribed: asyncio.Event,
    latencies: list[float],
) -> Followed:
    """As `_follow`, through the gateway's Server-Sent Events (gateway -> gRPC server stream),
    resuming with Last-Event-ID after a final `event: error` that says to (429, 503)."""
    followed = Followed()
    seen: set[int] = set()
    last_index, last_id = -1, ""
    url = f"{gateway}/v1/regions/{REGION}/alerts:stream"
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as client:
        while followed.received < expected:
            headers = {"Authorization": f"Bearer {token}", **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code != 200:
                        followed.ended = str(response.status_code)
                        return followed
                    subscribed.set()
                    buffer = ""
                    async for chunk in response.aiter_text():
                        buffer += chunk
                        *events, buffer = buffer.split("\n\n")
                        for event in events:
                            fields = _sse_fields(event)
                            if fields.get("event") == "error":
                                followed.ended = json.loads(fields["data"])["error"]["status"]
                                break
                            if "data" not in fields:
                                continue  # a keep-alive comment
                            breach = json.loads(fields["data"])["breach"]
                            sent = dt.datetime.fromisoformat(breach["openTime"]).timestamp()
                            latencies.append((time.time() - sent) * 1000)
                            last_id = fields.get("id", last_id)
                            index = int(breach.get("sampleSize", 0))
                            if index in seen:
                                followed.repeats += 1
                                continue
                            followed.out_of_order += index < last_index
                            seen.add(index)
                            last_index = index
                            followed.received += 1
                        if followed.ended != "OK" or followed.received >= expected:
                            break
            except asyncio.CancelledError:
                return followed
            if followed.ended not in ("OK", *(code.name for code in RESUMABLE)):
                return followed
            if followed.ended != "OK":
                followed.resumed += 1
                followed.ended = "OK"
    return followed


FOLLOWERS = {"grpc": _follow, "sse": _follow_sse}
"""How a subscriber connects: straight to self-monitoring's gRPC, or SSE through the gateway."""


async def _subscribers_process(via: str, target: str, tokens: list[str], expected: int) -> None:
    """The child's side: a subscriber per token; prints "subscribed" once every stream is live,
    and one JSON line of results after `expected` alerts each or when stdin closes."""
    latencies: list[float] = []
    subscribed = [asyncio.Event() for _ in tokens]
    follow = FOLLOWERS[via]
    tasks = [
        asyncio.create_task(follow(target, token, expected, subscribed[index], latencies))
        for index, token in enumerate(tokens)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in subscribed)), 120)
    print("subscribed", flush=True)
    stdin_closed = asyncio.create_task(asyncio.to_thread(sys.stdin.read))
    await asyncio.wait([stdin_closed, asyncio.gather(*tasks)], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    followed = [dataclasses.asdict(one) for one in await asyncio.gather(*tasks)]
    print(json.dumps({"followed": followed, "latencies": [round(x, 2) for x in latencies]}), flush=True)
    os._exit(0)  # the stdin reader thread may still be blocked


async def alert_fanout(
    suite: LocalSuite,
    *,
    subscribers: int = 200,
    rate: int = 500,
    seconds: float = 10.0,
    grace_s: float = 10.0,
    processes: int = FANOUT_PROCESSES,
    via: str = "grpc",
) -> dict[str, float]:
    """`subscribers` live alert streams (each on its own connection, spread over `processes`
    client processes; `via` "grpc" to self-monitoring or "sse" through the gateway, each SSE
    subscriber its own supervisor, as the gateway caps streams per caller) while `rate` alerts
    a second are published onto the self-monitoring stream for `seconds`: p99 delivery in ms
    (publish -> the client) and the number of (subscriber, alert) deliveries missing after a
    grace period, repeats not counted."""
    total = int(rate * seconds)
    if via == "sse":
        target = suite.gateway_url
        tokens = [
            mint_token(suite.private_key(), Principal(Role.SUPERVISOR, REGION, f"bench-{index}"))
            for index in range(subscribers)
        ]
    else:
        target = suite.address("selfmonitoring")
        tokens = [suite.token(Role.SUPERVISOR, REGION)] * subscribers
    with tempfile.TemporaryDirectory(prefix="kasvu-bench-fanout-") as scratch:
        children = []
        for index in range(processes):
            share = tokens[index::processes]
            tokens_file = Path(scratch) / f"tokens-{index}.json"
            tokens_file.write_text(json.dumps(share))
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.selfmonitoring_load",
                    SUBSCRIBE,
                    via,
                    target,
                    str(tokens_file),
                    str(total),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=2**26,
                )
            )
        return await _measure_fanout(
            suite, children, subscribers=subscribers, total=total, rate=rate, grace_s=grace_s
        )


async def _measure_fanout(
    suite: LocalSuite,
    children: list[asyncio.subprocess.Process],
    *,
    subscribers: int,
    total: int,
    rate: int,
    grace_s: float,
) -> dict[str, float]:
    """Publishes once every subscribers' process has subscribed, then gathers their figures."""
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 150)
            if line.strip() != b"subscribed":
                raise RuntimeError(f"a subscriber process failed to subscribe: {line!r}")
        published_s = await _publish_alerts(suite, total, rate)
        outputs = await asyncio.gather(*(_result(child, grace_s) for child in children))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
    latencies = [latency for output in outputs for latency in output["latencies"]]
    followed = [Followed(**one) for output in outputs for one in output["followed"]]
    delivered = sum(one.received for one in followed)
    return {
        "alert_fanout_p99_ms": percentile(latencies, 99) if latencies else float("inf"),
        "alert_fanout_p50_ms": percentile(latencies, 50) if latencies else float("inf"),
        "alert_fanout_dropped": float(subscribers * total - delivered),
        "alert_fanout_repeats": float(sum(one.repeats for one in followed)),
        "alert_fanout_out_of_order": float(sum(one.out_of_order for one in followed)),
        "alert_fanout_resumed": float(sum(one.resumed for one in followed)),
        "alert_fanout_subscribers": float(subscribers),
        "alert_fanout_rate": float(rate),
        "alert_fanout_published_per_s": total / published_s,
        "alert_fanout_complete_subscribers": float(sum(one.received >= total for one in followed)),
    }


async def _result(child: asyncio.subprocess.Process, grace_s: float) -> dict[str, Any]:
    """The child's results once its subscribers have everything, or after `grace_s` anyway."""
    assert child.stdin is not None and child.stdout is not None
    reading = asyncio.ensure_future(child.stdout.readline())
    done, _ = await asyncio.wait([reading], timeout=grace_s)
    if not done:
        child.stdin.close()  # stop: report what arrived so far
    line = await asyncio.wait_for(reading, 60)
    await child.wait()
    result: dict[str, Any] = json.loads(line)
    return result


async def _publish_alerts(suite: LocalSuite, total: int, rate: int) -> float:
    """Publishes `total` alerts at `rate` a second; the seconds it took."""
    nc = await suite.connect_nats()
    try:
        js = nc.jetstream()
        subject = subject_for(ALERT_EVENT.DESCRIPTOR.full_name, REGION)
        stream = catalog.entry("selfmonitoring").stream
        started = time.perf_counter()
        for index in range(total):
            await _publish_alert(js, subject, stream, index)
            lag = started + (index + 1) / rate - time.perf_counter()
            if lag > 0:
                await asyncio.sleep(lag)
        return time.perf_counter() - started
    finally:
        await nc.close()


ALERT_EVENT = events_pb2.WarningRaised
"""What the fan-out publishes: an alert for supervisors that no other service consumes. With
BreachOpened, the registry's consumer (on the same two cores) took half a core during the
run, and its work was measured as the fan-out's latency."""


async def _publish_alert(js: nats.js.JetStreamContext, subject: str, stream: str, index: int) -> None:
    """A synthetic warning with its send time."""
    sent = Timestamp()
    sent.GetCurrentTime()
    event = ALERT_EVENT(
        breach=selfmonitoring_pb2.Breach(
            name=f"regions/{REGION}/breaches/bench{uuid.uuid4().hex}",
            indicator=f"regions/{REGION}/indicators/bench",
            provider="1000001-4",
            service=SERVICE,
            severity=selfmonitoring_pb2.SEVERITY_WARNING,
            value=0.1,
            threshold=0.5,
            sample_size=index,
            state=selfmonitoring_pb2.BREACH_STATE_OPEN,
            open_time=sent,
            warning=True,
        ),
        region=REGION,
    )
    await js.publish(
        subject,
        event.SerializeToString(),
        stream=stream,
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Kasvu-Event-Type": ALERT_EVENT.DESCRIPTOR.full_name},
    )


async def selfmonitoring_figures(suite: LocalSuite, *, quick: bool = False) -> dict[str, float]:
    """Every self-monitoring figure, under the issue's keys (small counts when `quick`)."""
    results: dict[str, float] = {}
    # Rounds of the baseline and the ingestion in turn, so a noisy spell of the machine falls
    # on both; each figure is the median of its rounds.
    rounds, count = (1, 2_000) if quick else (INGEST_ROUNDS, 50_000)
    baseline, ingested = [], []
    for _ in range(rounds):
        baseline.append(await jetstream_publish_async_per_s(suite, count=count))
        ingested.append(await ingest_obs_per_s(suite, count=count))
    results["jetstream_publish_async_per_s"] = median(baseline)
    results["ingest_obs_per_s"] = median(ingested)
    results["ingest_rounds"] = rounds
    results["ingest_vs_jetstream"] = ratio(
        results["ingest_obs_per_s"], results["jetstream_publish_async_per_s"]
    )
    results["evaluation_10x_vs_1x"] = await evaluation_10x_vs_1x(suite, base=200 if quick else 5_000)
    if quick:
        results.update(await alert_fanout(suite, subscribers=5, rate=50, seconds=1.0, grace_s=5.0))
    else:
        results.update(await alert_fanout(suite))
    return results


async def _alone(quick: bool) -> None:
    """Every self-monitoring figure on a LocalSuite of its own, printed as JSON."""
    with tempfile.TemporaryDirectory(prefix="kasvu-bench-sm-") as data_dir:
        suite = LocalSuite(Path(data_dir))
        try:
            await suite.start()
            print(json.dumps(await selfmonitoring_figures(suite, quick=quick), indent=2))
        finally:
            suite.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == [SUBSCRIBE]:
        # A subscribers' process of alert_fanout: grpc|sse, target, tokens file, alerts expected each.
        via, target, tokens_file, expected = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
        asyncio.run(_subscribers_process(via, target, json.loads(tokens_file.read_text()), expected))
    else:
        asyncio.run(_alone(quick="--quick" in sys.argv))
